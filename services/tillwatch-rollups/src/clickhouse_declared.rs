//! A team's declared job on ClickHouse: its `<job>.clickhouse.sql` runs
//! inside the server as the built-in rollups do (stage, read back into the
//! lake, swap the partition), into a table of its own that the scheduler
//! lays out from the job's DataFusion plan.
//!
//! The table `<job>` (and `<job>_staging`, of the same structure) has the
//! planned output columns and one more, `_partition DateTime`, the start of
//! the partition a row belongs to (`PARTITION BY toUInt32(_partition)`), so
//! a reader in ClickHouse selects a partition with `WHERE _partition = …`.
//! When the SQL's columns change, the table follows at the next run: new
//! columns are added (older partitions read their defaults), columns no
//! longer given are dropped and changed types are converted, so the table
//! always has the columns the lake's newest files have.
//!
//! Which jobs run there: [`on_clickhouse`]. The lake's file has exactly the
//! columns and types of the DataFusion plan, whichever engine ran it, so a
//! reader on either engine sees the same partition.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Cursor;
use std::sync::Arc;

use arrow::array::ArrayRef;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::record_batch::RecordBatch;
use tillwatch_scheduler::{JobError, JobSpec, Output, Partition};
use tillwatch_storage::clickhouse_ddl::quote_ident;

use crate::clickhouse::ClickHouseEngine;
use crate::declared::DeclaredJob;

/// The column holding each row's partition start.
pub const PARTITION_COLUMN: &str = "_partition";

/// Why a job runs on the embedded engine when the rollups run on
/// ClickHouse (or, with a `.clickhouse.sql` only, cannot run), or `None`
/// when it runs on ClickHouse too: it needs a `.clickhouse.sql`, a
/// UTC grain (a store-local day's side tables are the embedded engine's),
/// and every input in ClickHouse (raw tables, the product's rollups,
/// sources, which land there too, and teams' jobs that run there).
/// `jobs` in any order; the answer for every team's SQL job, by name.
pub fn on_clickhouse(jobs: &[DeclaredJob]) -> BTreeMap<String, Option<String>> {
    let by_name: BTreeMap<&str, &DeclaredJob> = jobs.iter().map(|j| (j.name.as_str(), j)).collect();
    let mut answers: BTreeMap<String, Option<String>> = BTreeMap::new();
    fn why_not(
        name: &str,
        by_name: &BTreeMap<&str, &DeclaredJob>,
        answers: &mut BTreeMap<String, Option<String>>,
        seen: &mut BTreeSet<String>,
    ) -> Option<String> {
        if let Some(answer) = answers.get(name) {
            return answer.clone();
        }
        let Some(job) = by_name.get(name) else {
            return Some(format!("{name} is not a job it knows"));
        };
        if !seen.insert(name.to_string()) {
            return Some("its inputs form a cycle".into());
        }
        let answer = if job.sql.clickhouse.is_none() {
            Some(format!("it has no {name}.clickhouse.sql"))
        } else if job.store_local_day() {
            Some(
                "its day is the stores' local day, whose side tables are the embedded engine's"
                    .into(),
            )
        } else {
            job.declaration.inputs.iter().find_map(|input| {
                if crate::jobs::RAW_TABLES.contains(&input.as_str()) {
                    return None;
                }
                let Some(upstream) = by_name.get(input.as_str()) else {
                    return Some(format!("it reads {input}, which is not in ClickHouse"));
                };
                if upstream.is_product_rollup() {
                    return None;
                }
                if let Some(source) = &upstream.declaration.source {
                    // A source lands in its ClickHouse table as it lands in
                    // the lake; the merchant directory's feed in the
                    // directory's own tables.
                    return source.feeds.is_some().then(|| {
                        format!(
                            "it reads {input}, the merchant directory's source, \
                             which has no ClickHouse table of its own"
                        )
                    });
                }
                why_not(input, by_name, answers, seen).map(|why| {
                    format!("it reads {input}, which runs on the embedded engine ({why})")
                })
            })
        };
        answers.insert(name.to_string(), answer.clone());
        answer
    }
    for job in jobs {
        if job.declaration.builtin || job.is_product_rollup() || job.declaration.source.is_some() {
            continue;
        }
        why_not(&job.name, &by_name, &mut answers, &mut BTreeSet::new());
    }
    answers.retain(|name, _| {
        by_name.get(name.as_str()).is_some_and(|j| {
            !j.declaration.builtin && !j.is_product_rollup() && j.declaration.source.is_none()
        })
    });
    answers
}

/// The ClickHouse type of a planned column, or `None` for a type the
/// table cannot hold as the lake does.
fn clickhouse_type(field: &Field) -> Option<String> {
    let base = match field.data_type() {
        DataType::Boolean => "UInt8",
        DataType::Int8 => "Int8",
        DataType::Int16 => "Int16",
        DataType::Int32 => "Int32",
        DataType::Int64 => "Int64",
        DataType::UInt8 => "UInt8",
        DataType::UInt16 => "UInt16",
        DataType::UInt32 => "UInt32",
        DataType::UInt64 => "UInt64",
        DataType::Float32 => "Float32",
        DataType::Float64 => "Float64",
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => "String",
        DataType::Timestamp(_, _) => "DateTime",
        DataType::Date32 | DataType::Date64 => "Date",
        _ => return None,
    };
    Some(if field.is_nullable() {
        format!("Nullable({base})")
    } else {
        base.to_string()
    })
}

/// How a column is read back over JSON (`expression AS name`) and the
/// Arrow type it arrives as before it is cast to the planned one.
fn wire(field: &Field) -> (String, DataType) {
    let name = quote_ident(field.name());
    match field.data_type() {
        DataType::Timestamp(unit, _) => {
            let per_second = match unit {
                TimeUnit::Second => 1,
                TimeUnit::Millisecond => 1_000,
                TimeUnit::Microsecond => 1_000_000,
                TimeUnit::Nanosecond => 1_000_000_000,
            };
            (
                format!("toInt64(toUInt32({name})) * {per_second} AS {name}"),
                DataType::Int64,
            )
        }
        DataType::Boolean => (name, DataType::UInt8),
        DataType::Date32 | DataType::Date64 => {
            (format!("toString({name}) AS {name}"), DataType::Utf8)
        }
        DataType::LargeUtf8 | DataType::Utf8View => (name, DataType::Utf8),
        other => (name, other.clone()),
    }
}

/// The statement with its parameters: `{database}`, the partition's
/// interval as `{start_s}`/`{end_s}` (seconds) and `{start_ms}`/`{end_ms}`,
/// and what the job reads, widened by its margins, as `{from_s}`/`{to_s}`.
pub fn bind(sql: &str, database: &str, job: &JobSpec, partition: Partition) -> String {
    let seconds = |ms: i64| ms.div_euclid(1000).to_string();
    sql.replace("{database}", &quote_ident(database))
        .replace("{start_s}", &seconds(partition.start_ms))
        .replace("{end_s}", &seconds(partition.end_ms()))
        .replace("{start_ms}", &partition.start_ms.to_string())
        .replace("{end_ms}", &partition.end_ms().to_string())
        .replace(
            "{from_s}",
            &seconds(partition.start_ms - job.reads_before_ms),
        )
        .replace("{to_s}", &seconds(partition.end_ms() + job.reads_after_ms))
}

/// The tables a ClickHouse statement names in `{database}`, each with the
/// 1-based line it is first named on.
pub fn tables_named(sql: &str) -> Vec<(String, usize)> {
    let mut found: Vec<(String, usize)> = Vec::new();
    for (i, line) in sql.lines().enumerate() {
        for (at, _) in line.match_indices("{database}.") {
            let rest = &line[at + "{database}.".len()..];
            let name: String = match rest.strip_prefix('`') {
                Some(quoted) => quoted.split('`').next().unwrap_or("").to_string(),
                None => rest
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect(),
            };
            if !name.is_empty() && !found.iter().any(|(n, _)| *n == name) {
                found.push((name, i + 1));
            }
        }
    }
    found
}

/// The columns of a job's ClickHouse table for output columns `schema`:
/// `_partition` first, then each column with its ClickHouse type.
fn table_columns(job: &str, schema: &Schema) -> Result<Vec<(String, String)>, JobError> {
    let mut wanted = vec![(PARTITION_COLUMN.to_string(), "DateTime".to_string())];
    for field in schema.fields() {
        let ty = clickhouse_type(field).ok_or_else(|| {
            JobError::query(format!(
                "column {:?} of {job} is {}, which its ClickHouse table cannot hold: \
                 cast it in the SQL (to a number, text, timestamp or date)",
                field.name(),
                field.data_type()
            ))
        })?;
        wanted.push((field.name().clone(), ty));
    }
    Ok(wanted)
}

/// The lake file's type for a column ClickHouse gives as `ch_type`, for a
/// job whose columns are the server's (a `.clickhouse.sql` only), and
/// whether it is nullable; `None` for a type the lake does not take as it
/// comes (a decimal, an array, a UUID: the SQL casts it).
pub(crate) fn arrow_type(ch_type: &str) -> Option<(DataType, bool)> {
    fn unwrap<'a>(t: &'a str, wrapper: &str) -> Option<&'a str> {
        t.strip_prefix(wrapper)
            .and_then(|rest| rest.strip_prefix('('))
            .and_then(|rest| rest.strip_suffix(')'))
    }
    let mut t = ch_type.trim();
    let mut nullable = false;
    loop {
        if let Some(inner) = unwrap(t, "LowCardinality") {
            t = inner;
        } else if let Some(inner) = unwrap(t, "Nullable") {
            t = inner;
            nullable = true;
        } else {
            break;
        }
    }
    let data_type = match t {
        "UInt8" => DataType::UInt8,
        "UInt16" => DataType::UInt16,
        "UInt32" => DataType::UInt32,
        "UInt64" => DataType::UInt64,
        "Int8" => DataType::Int8,
        "Int16" => DataType::Int16,
        "Int32" => DataType::Int32,
        "Int64" => DataType::Int64,
        "Float32" => DataType::Float32,
        "Float64" => DataType::Float64,
        "String" => DataType::Utf8,
        "Date" => DataType::Date32,
        "DateTime" => DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
        other if other.starts_with("DateTime(") => {
            DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into()))
        }
        other
            if other.starts_with("FixedString(")
                || other.starts_with("Enum8(")
                || other.starts_with("Enum16(") =>
        {
            DataType::Utf8
        }
        _ => return None,
    };
    Some((data_type, nullable))
}

fn put_varint(out: &mut Vec<u8>, mut n: u64) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

/// The rows of `batch` as RowBinary for the table [`table_columns`] lays
/// out: `_partition` (`start_s`), then each column as its ClickHouse type
/// (`Nullable` ones with their null flag). A timestamp before 1970 or
/// after 2106, or a date after 2149, does not fit ClickHouse's `DateTime`
/// or `Date`: an error naming the column and row, never a wrapped value.
fn row_binary(job: &str, batch: &RecordBatch, start_s: u32) -> Result<Vec<u8>, JobError> {
    use arrow::array::{Array, AsArray};
    use arrow::datatypes::{
        Date32Type, Float32Type, Float64Type, Int8Type, Int16Type, Int32Type, Int64Type,
        TimestampMillisecondType, UInt8Type, UInt16Type, UInt32Type, UInt64Type,
    };
    let out_of_range = |column: &str, row: usize, what: &str| {
        JobError::query(format!(
            "{job}: column {column:?}, row {}: {what}, which ClickHouse's table cannot hold",
            row + 1
        ))
    };
    let columns: Vec<(&Field, arrow::array::ArrayRef)> = batch
        .schema_ref()
        .fields()
        .iter()
        .map(|f| f.as_ref())
        .zip(batch.columns().iter().cloned())
        .collect::<Vec<_>>();
    // Timestamps of any unit and zone as milliseconds, once.
    let columns: Vec<(&Field, arrow::array::ArrayRef)> = columns
        .into_iter()
        .map(|(f, c)| match f.data_type() {
            DataType::Timestamp(unit, _) if *unit != TimeUnit::Millisecond => {
                arrow::compute::cast(&c, &DataType::Timestamp(TimeUnit::Millisecond, None))
                    .map(|c| (f, c))
            }
            _ => Ok((f, c)),
        })
        .collect::<Result<_, _>>()
        .map_err(|e| JobError::query(format!("{job}: {e}")))?;
    let mut out = Vec::with_capacity(batch.num_rows() * 16 * (columns.len() + 1));
    for row in 0..batch.num_rows() {
        out.extend_from_slice(&start_s.to_le_bytes());
        for (field, column) in &columns {
            macro_rules! number {
                ($t:ty) => {
                    out.extend_from_slice(&column.as_primitive::<$t>().value(row).to_le_bytes())
                };
            }
            if field.is_nullable() {
                if column.is_null(row) {
                    out.push(1);
                    continue;
                }
                out.push(0);
            }
            match field.data_type() {
                DataType::Boolean => out.push(u8::from(column.as_boolean().value(row))),
                // Numbers: the same-named ClickHouse types, little-endian
                // as RowBinary has them.
                DataType::Int8 => number!(Int8Type),
                DataType::Int16 => number!(Int16Type),
                DataType::Int32 => number!(Int32Type),
                DataType::Int64 => number!(Int64Type),
                DataType::UInt8 => number!(UInt8Type),
                DataType::UInt16 => number!(UInt16Type),
                DataType::UInt32 => number!(UInt32Type),
                DataType::UInt64 => number!(UInt64Type),
                DataType::Float32 => number!(Float32Type),
                DataType::Float64 => number!(Float64Type),
                DataType::Utf8 => {
                    let text = column.as_string::<i32>().value(row).as_bytes();
                    put_varint(&mut out, text.len() as u64);
                    out.extend_from_slice(text);
                }
                DataType::Timestamp(_, _) => {
                    let ms = column.as_primitive::<TimestampMillisecondType>().value(row);
                    let seconds = u32::try_from(ms.div_euclid(1000)).map_err(|_| {
                        out_of_range(field.name(), row, &format!("the time {ms} ms since 1970"))
                    })?;
                    out.extend_from_slice(&seconds.to_le_bytes());
                }
                DataType::Date32 => {
                    let days = column.as_primitive::<Date32Type>().value(row);
                    let days = u16::try_from(days).map_err(|_| {
                        out_of_range(
                            field.name(),
                            row,
                            &format!("the date {days} days from 1970"),
                        )
                    })?;
                    out.extend_from_slice(&days.to_le_bytes());
                }
                other => {
                    return Err(JobError::query(format!(
                        "{job}: column {:?} is {other}, which is not sent to ClickHouse",
                        field.name()
                    )));
                }
            }
        }
    }
    Ok(out)
}

/// A team job's ClickHouse statement, or the error that it has none.
fn statement(declared: &DeclaredJob) -> Result<&str, JobError> {
    let name = &declared.name;
    declared
        .sql
        .clickhouse
        .as_deref()
        .ok_or_else(|| JobError::query(format!("{name} has no {name}.clickhouse.sql")))
}

fn ch_err(
    step: &str,
    job: &str,
    partition: Partition,
) -> impl Fn(tillwatch_clickhouse::ChError) -> JobError {
    let context = format!("{step} for {job} {partition} on ClickHouse");
    move |e| JobError::Query(format!("{context}: {e}"))
}

impl ClickHouseEngine {
    /// The columns of `table` in the database, name to type; empty when
    /// there is no such table.
    async fn columns_of(&self, table: &str) -> Result<BTreeMap<String, String>, JobError> {
        let ch = self.client();
        let bytes = ch
            .client()
            .query("SELECT name, type FROM system.columns WHERE database = ? AND table = ?")
            .bind(ch.database())
            .bind(table)
            .fetch_bytes("JSONEachRow")
            .map_err(|e| JobError::read(format_args!("the columns of {table}"), e))?
            .collect()
            .await
            .map_err(|e| JobError::read(format_args!("the columns of {table}"), e))?;
        let mut columns = BTreeMap::new();
        for line in bytes.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            let row: BTreeMap<String, String> = serde_json::from_slice(line)
                .map_err(|e| JobError::read(format_args!("the columns of {table}"), e))?;
            if let (Some(name), Some(ty)) = (row.get("name"), row.get("type")) {
                columns.insert(name.clone(), ty.clone());
            }
        }
        Ok(columns)
    }

    /// Makes `<job>` and `<job>_staging` hold exactly `wanted` (see the
    /// module's notes); says what it changed.
    async fn lay_out(
        &self,
        job: &str,
        wanted: &[(String, String)],
        partition: Partition,
    ) -> Result<Vec<String>, JobError> {
        let ch = self.client();
        let fail = |step: &'static str| ch_err(step, job, partition);
        let target = ch.table(job);
        let staging_name = format!("{job}_staging");
        let staging = ch.table(&staging_name);
        let mut changed = Vec::new();
        let existing = self.columns_of(job).await?;
        if existing.is_empty() {
            let columns: Vec<String> = wanted
                .iter()
                .map(|(n, t)| format!("{} {t}", quote_ident(n)))
                .collect();
            ch.execute(&format!(
                "CREATE TABLE IF NOT EXISTS {target} ({}) ENGINE = MergeTree \
                 PARTITION BY toUInt32({p}) ORDER BY {p}",
                columns.join(", "),
                p = quote_ident(PARTITION_COLUMN)
            ))
            .await
            .map_err(fail("creating its table"))?;
            changed.push(format!("created the table {target}"));
        } else {
            for (name, ty) in wanted {
                let alter = match existing.get(name) {
                    None => format!("ADD COLUMN {} {ty}", quote_ident(name)),
                    Some(had) if had != ty => format!("MODIFY COLUMN {} {ty}", quote_ident(name)),
                    Some(_) => continue,
                };
                ch.execute(&format!("ALTER TABLE {target} {alter}"))
                    .await
                    .map_err(fail("changing its table's columns"))?;
                changed.push(format!("{target}: {alter}"));
            }
            for name in existing.keys() {
                if !wanted.iter().any(|(n, _)| n == name) {
                    let alter = format!("DROP COLUMN {}", quote_ident(name));
                    ch.execute(&format!("ALTER TABLE {target} {alter}"))
                        .await
                        .map_err(fail("changing its table's columns"))?;
                    changed.push(format!("{target}: {alter}"));
                }
            }
        }
        let staged = self.columns_of(&staging_name).await?;
        let same =
            staged.len() == wanted.len() && wanted.iter().all(|(n, t)| staged.get(n) == Some(t));
        if !same {
            ch.execute(&format!("DROP TABLE IF EXISTS {staging}"))
                .await
                .map_err(fail("replacing its staging table"))?;
            ch.execute(&format!("CREATE TABLE {staging} AS {target}"))
                .await
                .map_err(fail("creating its staging table"))?;
        }
        Ok(changed)
    }

    /// Swaps `<job>_staging`'s partition `partition` into `<job>` and
    /// clears it from staging.
    async fn swap_in(&self, job: &str, partition: Partition) -> Result<(), JobError> {
        let ch = self.client();
        let fail = |step: &'static str| ch_err(step, job, partition);
        let id = partition.start_ms.div_euclid(1000);
        let staging = ch.table(&format!("{job}_staging"));
        ch.execute(&format!(
            "ALTER TABLE {} REPLACE PARTITION {id} FROM {staging}",
            ch.table(job)
        ))
        .await
        .map_err(fail("replacing the partition"))?;
        ch.execute(&format!("ALTER TABLE {staging} DROP PARTITION {id}"))
            .await
            .map_err(fail("clearing the staging partition"))
    }

    /// Lands a source's imported partition (`rows`, already in the lake)
    /// in its ClickHouse table `<job>`, laid out from the rows' columns as
    /// a team's job's table is, so jobs on ClickHouse read it as
    /// `{database}.<job>` with `_partition`. A partition imported again
    /// replaces the one before. Not while partitions are filled from the
    /// lake (which stage theirs the same way). Says what it did.
    pub async fn land_source(
        &self,
        job: &str,
        partition: Partition,
        rows: &RecordBatch,
    ) -> Result<Vec<String>, JobError> {
        let _one_at_a_time = self.one_fill_at_a_time().await;
        self.land(job, partition, rows).await
    }

    /// [`Self::land_source`] without waiting its turn.
    async fn land(
        &self,
        job: &str,
        partition: Partition,
        rows: &RecordBatch,
    ) -> Result<Vec<String>, JobError> {
        let ch = self.client();
        let fail = |step: &'static str| ch_err(step, job, partition);
        let wanted = table_columns(job, rows.schema_ref())?;
        let mut messages = self.lay_out(job, &wanted, partition).await?;
        let start_s = u32::try_from(partition.start_ms.div_euclid(1000)).map_err(|_| {
            JobError::query(format!(
                "{job} {partition} is outside ClickHouse's time range"
            ))
        })?;
        let staging_name = format!("{job}_staging");
        ch.drop_partition_if_any(&staging_name, &start_s.to_string())
            .await
            .map_err(fail("clearing the staging partition"))?;
        if rows.num_rows() > 0 {
            let names: Vec<String> = wanted.iter().map(|(n, _)| quote_ident(n)).collect();
            ch.insert_row_binary(
                &staging_name,
                &names.join(", "),
                row_binary(job, rows, start_s)?.into(),
            )
            .await
            .map_err(fail("inserting its rows"))?;
        }
        self.swap_in(job, partition).await?;
        messages.insert(
            0,
            format!(
                "landed in ClickHouse: {} row(s) in {} partition {start_s} ({PARTITION_COLUMN} = {partition})",
                rows.num_rows(),
                ch.table(job)
            ),
        );
        Ok(messages)
    }

    /// Lands in ClickHouse the partitions of a team's job or source
    /// `input` in `partitions` that its table lacks but the lake holds:
    /// those written before the rollups ran on ClickHouse (or before the
    /// input did), which a job on ClickHouse reading them would otherwise
    /// read as empty. A file whose columns are no longer the table's is
    /// not landed: the run fails, naming the partition to re-run. Fills
    /// happen one at a time in this engine. Says what it landed.
    pub async fn fill_from_lake(
        &self,
        input: &str,
        partitions: &[Partition],
    ) -> Result<Vec<String>, JobError> {
        let present = async || -> Result<BTreeSet<i64>, JobError> {
            Ok(self
                .client()
                .numbered_partitions(input)
                .await
                .map_err(|e| JobError::read(format_args!("the partitions of {input}"), e))?
                .into_iter()
                .collect())
        };
        let missing = |present: &BTreeSet<i64>| {
            partitions
                .iter()
                .filter(|p| !present.contains(&p.start_ms.div_euclid(1000)))
                .copied()
                .collect::<Vec<Partition>>()
        };
        if missing(&present().await?).is_empty() {
            return Ok(Vec::new());
        }
        // One fill at a time, and what another run filled meanwhile is
        // there now: two runs staging one partition together would double
        // its rows.
        let _one_at_a_time = self.one_fill_at_a_time().await;
        let mut messages = Vec::new();
        // The table's columns, read once (empty until the table exists).
        let mut existing = self.columns_of(input).await?;
        for partition in missing(&present().await?) {
            let Some(rows) = self.lake().read_output(input, partition).await? else {
                continue;
            };
            if rows.num_rows() == 0 {
                // Nothing to land: the table reads it as empty already.
                continue;
            }
            // A file a run on ClickHouse wrote has every column nullable;
            // its table has the plan's: a column without nulls fits either.
            let rows = fit_nullability(rows, &existing);
            let wanted: BTreeMap<String, String> = table_columns(input, rows.schema_ref())?
                .into_iter()
                .collect();
            if !existing.is_empty() && existing != wanted {
                // What `jobs backfill --from/--to` takes: an hour or a day.
                let at = match partition.grain {
                    tillwatch_scheduler::Grain::Hour => partition.key(),
                    _ => Partition::containing(tillwatch_scheduler::Grain::Day, partition.start_ms)
                        .key(),
                };
                return Err(JobError::input(format!(
                    "{input} {partition} is in the lake but not in ClickHouse, and its file's \
                     columns are not its table's now: run it again (tillwatch jobs backfill \
                     {input} --from {at} --to {at})"
                )));
            }
            self.land(input, partition, &rows).await?;
            if existing.is_empty() {
                existing = wanted;
            }
            messages.push(format!(
                "filled from the lake: {input} {partition} ({} row(s)), written before it \
                 was in ClickHouse",
                rows.num_rows()
            ));
        }
        Ok(messages)
    }

    /// The columns of a job with a `.clickhouse.sql` only, as the server
    /// answers for its statement over `partition` (no rows read): the
    /// columns of its table and of the lake's file.
    pub async fn statement_columns(
        &self,
        job: &JobSpec,
        declared: &DeclaredJob,
        partition: Partition,
    ) -> Result<SchemaRef, JobError> {
        let name = job.name.as_str();
        let sql = statement(declared)?;
        let select = bind(sql, self.client().database(), job, partition);
        let what = format!("the columns of {name}'s statement");
        let mut fields = Vec::new();
        for (column, ch_type) in columns_of_query(self.client().client(), &select, &what).await? {
            let (data_type, nullable) = arrow_type(&ch_type).ok_or_else(|| {
                JobError::query(format!(
                    "column {column:?} of {name} is {ch_type}, which the lake's file does not \
                     take: cast it in the SQL (to a number, String, DateTime or Date)"
                ))
            })?;
            fields.push(Field::new(column, data_type, nullable));
        }
        Ok(Arc::new(Schema::new(fields)))
    }

    /// Runs a team's job for one partition on ClickHouse; `schema` is its
    /// DataFusion plan's output, the columns of its table and lake file.
    pub async fn run_declared(
        &self,
        job: &JobSpec,
        declared: &DeclaredJob,
        schema: SchemaRef,
        partition: Partition,
    ) -> Result<Output, JobError> {
        let name = job.name.as_str();
        let sql = statement(declared)?;
        let ch = self.client();
        let fail = |step: &'static str| ch_err(step, name, partition);
        let wanted = table_columns(name, &schema)?;
        let mut messages = self.lay_out(name, &wanted, partition).await?;
        let staging_name = format!("{name}_staging");
        let staging = ch.table(&staging_name);
        let start_s = partition.start_ms.div_euclid(1000);
        let id = start_s.to_string();
        ch.drop_partition_if_any(&staging_name, &id)
            .await
            .map_err(fail("clearing the staging partition"))?;
        let names: Vec<String> = schema
            .fields()
            .iter()
            .map(|f| quote_ident(f.name()))
            .collect();
        let select = bind(sql, ch.database(), job, partition);
        ch.execute(&format!(
            "INSERT INTO {staging} ({p}, {cols})\nSELECT toDateTime({start_s}, 'UTC') AS {p}, {cols} FROM (\n{select}\n)",
            p = quote_ident(PARTITION_COLUMN),
            cols = names.join(", "),
        ))
        .await
        .map_err(fail("INSERT … SELECT"))?;
        let batches = self.read_back(name, &staging, &schema, partition).await?;
        let mut output = self.lake().write(name, partition, batches).await?;
        self.swap_in(name, partition).await?;
        messages.insert(
            0,
            format!(
                "ran on ClickHouse: {} row(s) into {} partition {id} ({PARTITION_COLUMN} = {partition})",
                output.rows,
                ch.table(name)
            ),
        );
        messages.push("the statement (ClickHouse, parameters bound):".into());
        messages.extend(select.lines().map(|l| format!("  {l}")));
        output.messages.extend(messages);
        Ok(output)
    }

    /// The staged partition as Arrow batches of the planned columns (each
    /// nullable: what comes back is checked by the cast, not by the
    /// planner's guess at nullability), in a stable order.
    async fn read_back(
        &self,
        job: &str,
        staging: &str,
        schema: &Schema,
        partition: Partition,
    ) -> Result<Vec<RecordBatch>, JobError> {
        let rows = format!(
            "SELECT * FROM {staging} WHERE {} = toDateTime({}, 'UTC')",
            quote_ident(PARTITION_COLUMN),
            partition.start_ms.div_euclid(1000),
        );
        select_as(
            self.client().client(),
            &rows,
            schema,
            &format!("back {job} {partition} from ClickHouse"),
        )
        .await
    }
}

/// `rows` with each column as nullable as the table's column of its name
/// (`existing`: name to ClickHouse type), where its values allow.
fn fit_nullability(rows: RecordBatch, existing: &BTreeMap<String, String>) -> RecordBatch {
    let fields: Vec<Field> = rows
        .schema()
        .fields()
        .iter()
        .zip(rows.columns())
        .map(|(f, column)| match existing.get(f.name()) {
            Some(t) if t.starts_with("Nullable(") => f.as_ref().clone().with_nullable(true),
            Some(_) if column.null_count() == 0 => f.as_ref().clone().with_nullable(false),
            _ => f.as_ref().clone(),
        })
        .collect();
    RecordBatch::try_new(Arc::new(Schema::new(fields)), rows.columns().to_vec()).unwrap_or(rows)
}

/// The rows of the query `rows` as Arrow batches of `schema`'s columns
/// (each nullable), sorted by every column for a stable output: read as
/// JSON (see [`wire`]) and cast to the schema's types.
pub(crate) async fn select_as(
    client: &clickhouse::Client,
    rows: &str,
    schema: &Schema,
    what: &str,
) -> Result<Vec<RecordBatch>, JobError> {
    let (columns, wire_types): (Vec<String>, Vec<DataType>) =
        schema.fields().iter().map(|f| wire(f)).unzip();
    let order: Vec<String> = schema
        .fields()
        .iter()
        .map(|f| quote_ident(f.name()))
        .collect();
    let sql = format!(
        "SELECT {} FROM ({rows}) ORDER BY {}",
        columns.join(", "),
        order.join(", ")
    );
    let back = |e: &dyn std::fmt::Display| JobError::read(what, e);
    let bytes = client
        .clone()
        .with_setting("output_format_json_quote_64bit_integers", "0")
        // As written: a `?` in a team's query is text, not a placeholder.
        .query_raw(&sql)
        .fetch_bytes("JSONEachRow")
        .map_err(|e| back(&e))?
        .collect()
        .await
        .map_err(|e| back(&e))?;
    let wire_schema = Arc::new(Schema::new(
        schema
            .fields()
            .iter()
            .zip(&wire_types)
            .map(|(f, t)| Field::new(f.name(), t.clone(), true))
            .collect::<Vec<_>>(),
    ));
    let relaxed = Arc::new(Schema::new(
        schema
            .fields()
            .iter()
            .map(|f| Field::new(f.name(), f.data_type().clone(), true))
            .collect::<Vec<_>>(),
    ));
    let reader = arrow::json::ReaderBuilder::new(wire_schema)
        .with_batch_size(65_536)
        .build(Cursor::new(bytes))
        .map_err(|e| back(&e))?;
    let mut batches = Vec::new();
    for batch in reader {
        let batch = batch.map_err(|e| back(&e))?;
        let columns = batch
            .columns()
            .iter()
            .zip(relaxed.fields())
            .map(|(c, f)| arrow::compute::cast(c, f.data_type()))
            .collect::<Result<Vec<ArrayRef>, _>>()
            .map_err(|e| back(&e))?;
        batches.push(RecordBatch::try_new(relaxed.clone(), columns).map_err(|e| back(&e))?);
    }
    if batches.is_empty() {
        batches.push(RecordBatch::new_empty(relaxed));
    }
    Ok(batches)
}

/// The columns the query `rows` gives, as the server answers (no rows
/// read), each with its ClickHouse type.
pub(crate) async fn columns_of_query(
    client: &clickhouse::Client,
    rows: &str,
    what: &str,
) -> Result<Vec<(String, String)>, JobError> {
    let bytes = client
        .query_raw(&format!("SELECT * FROM (\n{rows}\n) LIMIT 0"))
        .fetch_bytes("JSONCompact")
        .map_err(|e| JobError::read(what, e))?
        .collect()
        .await
        .map_err(|e| JobError::read(what, e))?;
    let answer: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|e| JobError::read(what, e))?;
    let meta = answer["meta"]
        .as_array()
        .ok_or_else(|| JobError::read(what, "the server gave no columns"))?;
    meta.iter()
        .map(
            |column| match (column["name"].as_str(), column["type"].as_str()) {
                (Some(name), Some(ty)) => Ok((name.to_string(), ty.to_string())),
                _ => Err(JobError::read(what, "a column without a name or type")),
            },
        )
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_follows_the_rollups_onto_clickhouse_only_with_all_it_reads() {
        let dir = tempfile::tempdir().unwrap();
        let team = dir.path().join("t");
        std::fs::create_dir_all(&team).unwrap();
        let job = |name: &str, extra: &str, inputs: &str, sql: &[&str]| {
            std::fs::write(
                team.join(format!("{name}.toml")),
                format!("description = \"x\"\ngrain = \"hour\"\n{extra}inputs = [{inputs}]\n"),
            )
            .unwrap();
            for engine in sql {
                std::fs::write(team.join(format!("{name}.{engine}.sql")), "SELECT 1").unwrap();
            }
        };
        let both = ["datafusion", "clickhouse"];
        job(
            "raw_reader",
            "",
            "\"payment_health\", \"device_health_hourly\"",
            &both,
        );
        job("downstream", "", "\"raw_reader\"", &both);
        job("embedded_only", "", "\"battery\"", &["datafusion"]);
        job("reads_embedded", "", "\"embedded_only\"", &both);
        job("further", "", "\"reads_embedded\"", &both);
        std::fs::write(
            team.join("imported.toml"),
            "description = \"x\"\ngrain = \"hour\"\n[source]\nurl_env = \"X\"\nquery = \"SELECT 1\"\n",
        )
        .unwrap();
        job("reads_source", "", "\"imported\"", &both);
        job("server_only", "", "\"battery\"", &["clickhouse"]);
        job("reads_server_only", "", "\"server_only\"", &both);
        job(
            "server_only_on_embedded",
            "",
            "\"embedded_only\"",
            &["clickhouse"],
        );
        std::fs::write(
            team.join("shops.toml"),
            "description = \"x\"\ngrain = \"hour\"\n[source]\nurl_env = \"X\"\nquery = \"SELECT 1\"\nfeeds = \"merchant-directory\"\n",
        )
        .unwrap();
        job("reads_directory", "", "\"shops\"", &both);
        std::fs::write(
            team.join("local.toml"),
            "description = \"x\"\ngrain = \"day\"\nday = \"store-local\"\ninputs = [\"battery\"]\n",
        )
        .unwrap();
        for engine in both {
            std::fs::write(team.join(format!("local.{engine}.sql")), "SELECT 1").unwrap();
        }
        let (jobs, problems) = crate::declared::load_dir(dir.path());
        assert!(problems.is_empty(), "{problems:?}");
        let mut all = crate::declared::builtin();
        all.extend(jobs);
        let on = on_clickhouse(&all);
        let why = |name: &str| {
            on.get(name)
                .unwrap_or_else(|| panic!("{name}: {on:?}"))
                .clone()
        };
        assert_eq!(why("raw_reader"), None);
        assert_eq!(why("downstream"), None);
        assert_eq!(
            why("embedded_only").unwrap(),
            "it has no embedded_only.clickhouse.sql"
        );
        assert_eq!(
            why("reads_embedded").unwrap(),
            "it reads embedded_only, which runs on the embedded engine (it has no embedded_only.clickhouse.sql)"
        );
        assert!(
            why("further")
                .unwrap()
                .starts_with("it reads reads_embedded, which runs on the embedded engine")
        );
        assert_eq!(
            why("reads_source"),
            None,
            "a source lands in ClickHouse too"
        );
        assert_eq!(why("server_only"), None);
        assert_eq!(why("reads_server_only"), None);
        assert!(
            why("server_only_on_embedded")
                .unwrap()
                .starts_with("it reads embedded_only, which runs on the embedded engine")
        );
        assert_eq!(
            why("reads_directory").unwrap(),
            "it reads shops, the merchant directory's source, which has no ClickHouse table of its own"
        );
        assert!(why("local").unwrap().contains("local day"));
        assert!(!on.contains_key("imported"), "a source is not a SQL job");
        assert!(
            !on.contains_key("device_health_hourly"),
            "the product's own rollups decide themselves"
        );
    }

    #[test]
    fn the_tables_a_statement_names() {
        let sql = "SELECT h.device_id\nFROM {database}.device_health_hourly AS h\n\
                   JOIN {database}.`payment_health` p ON 1\nJOIN {database}.device_health_hourly x ON 1";
        assert_eq!(
            tables_named(sql),
            vec![
                ("device_health_hourly".to_string(), 2),
                ("payment_health".to_string(), 3)
            ]
        );
    }

    #[test]
    fn the_servers_column_types_become_the_lake_files() {
        let ts = DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into()));
        assert_eq!(arrow_type("UInt64"), Some((DataType::UInt64, false)));
        assert_eq!(arrow_type("Nullable(Int64)"), Some((DataType::Int64, true)));
        assert_eq!(
            arrow_type("LowCardinality(Nullable(String))"),
            Some((DataType::Utf8, true))
        );
        assert_eq!(arrow_type("DateTime('UTC')"), Some((ts.clone(), false)));
        assert_eq!(arrow_type("Nullable(DateTime)"), Some((ts, true)));
        assert_eq!(arrow_type("Date"), Some((DataType::Date32, false)));
        assert_eq!(
            arrow_type("Enum8('a' = 1, 'b' = 2)"),
            Some((DataType::Utf8, false))
        );
        assert_eq!(arrow_type("Decimal(18, 2)"), None);
        assert_eq!(arrow_type("Array(UInt8)"), None);
        // And back: the table holds what the lake's file does.
        for ch_type in ["Nullable(Int64)", "String", "DateTime", "Date", "Float64"] {
            let (t, nullable) = arrow_type(ch_type).unwrap();
            assert_eq!(
                clickhouse_type(&Field::new("c", t, nullable)).as_deref(),
                Some(ch_type)
            );
        }
    }

    #[test]
    fn columns_take_clickhouse_types_and_come_back_as_planned() {
        let ts = Field::new(
            "hour",
            DataType::Timestamp(TimeUnit::Nanosecond, Some("UTC".into())),
            false,
        );
        assert_eq!(clickhouse_type(&ts).as_deref(), Some("DateTime"));
        assert_eq!(
            wire(&ts),
            (
                "toInt64(toUInt32(`hour`)) * 1000000000 AS `hour`".to_string(),
                DataType::Int64
            )
        );
        let n = Field::new("n", DataType::Utf8View, true);
        assert_eq!(clickhouse_type(&n).as_deref(), Some("Nullable(String)"));
        let odd = Field::new("l", DataType::new_list(DataType::Int64, true), true);
        assert_eq!(clickhouse_type(&odd), None);
    }
}
