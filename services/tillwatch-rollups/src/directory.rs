//! The merchant directory: the rows of the source job that `feeds =
//! "merchant-directory"` (a declared source, or `[scheduler.merchant_directory]`
//! in the operator's config, which stands for one named `merchant_directory`)
//! are the merchants and stores (names, time zones, opening hours), so the
//! dashboards and the alerter know store hours without anyone typing them
//! in.
//!
//! Each run reads the whole directory ([`crate::source::fetch`]) and
//! - upserts merchants and stores into the metadata store in one
//!   transaction (the alerter picks changed stores up on its next sweep;
//!   stores that left the directory keep their last entry),
//! - writes the snapshot to the lake as the job's partition
//!   (`lake/<job>/<hour>/`),
//! - and, with the ClickHouse engine, replaces the `merchant_directory`
//!   table's contents (the latest snapshot) atomically.
//!
//! A row with an unknown time zone or unreadable hours is skipped and
//! reported; a query that returns columns Tillwatch does not read, or no
//! rows at all, fails the run with a message that says so.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, RecordBatch, StringArray, TimestampMillisecondArray};
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use tillwatch_clickhouse::ClickHouse;
use tillwatch_domain::hours::{WeeklyHours, time_zone};
use tillwatch_domain::{MerchantId, StoreId};
use tillwatch_meta::{MerchantRecord, MetaStore, StoreRecord};
use tillwatch_scheduler::{JobError, Output, Partition};

use crate::embedded::Embedded;
use crate::side::{put_nullable, put_string};

pub const MERCHANT_DIRECTORY: &str = "merchant_directory";

/// The columns the query may return; the first two are required.
pub const COLUMNS: [&str; 6] = [
    "merchant_id",
    "store_id",
    "merchant_name",
    "store_name",
    "time_zone",
    "hours",
];

/// What is wrong with the directory's answer: the query's shape, or one
/// row (which is skipped and reported).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DirectoryError {
    #[error("the query returned no rows; check the merchant directory source's query")]
    NoRows,
    #[error(
        "the query returns a column {0:?}; the columns read are {columns} (rename with AS)",
        columns = COLUMNS.join(", ")
    )]
    UnknownColumn(String),
    #[error("the query returns no {0} column")]
    MissingColumn(&'static str),
    #[error("column {column}: {detail} (cast it to text in the query: {column}::text)")]
    NotText { column: String, detail: String },
    /// One row's field does not hold what it must.
    #[error("store {merchant_id}/{store_id}: {field} {detail}")]
    BadRow {
        merchant_id: String,
        store_id: String,
        field: &'static str,
        detail: String,
    },
    #[error("every row of the merchant directory was skipped: {rows}", rows = join(.0))]
    AllSkipped(Vec<DirectoryError>),
}

fn join(errors: &[DirectoryError]) -> String {
    let texts: Vec<String> = errors.iter().map(ToString::to_string).collect();
    texts.join("; ")
}

impl From<DirectoryError> for JobError {
    fn from(e: DirectoryError) -> JobError {
        JobError::input(e)
    }
}

/// One store row as the source gave it, checked.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Entry {
    pub merchant_id: String,
    pub store_id: String,
    pub merchant_name: Option<String>,
    pub store_name: Option<String>,
    pub time_zone: Option<String>,
    pub hours: Option<String>,
}

impl Entry {
    /// Checks ids, time zone and hours; the error names the row and field.
    pub fn check(self) -> Result<Entry, DirectoryError> {
        let bad = |field: &'static str, detail: String| DirectoryError::BadRow {
            merchant_id: self.merchant_id.clone(),
            store_id: self.store_id.clone(),
            field,
            detail,
        };
        MerchantId::new(&self.merchant_id).map_err(|e| bad("merchant_id", e.to_string()))?;
        StoreId::new(&self.store_id).map_err(|e| bad("store_id", e.to_string()))?;
        if let Some(tz) = &self.time_zone {
            time_zone(tz).map_err(|e| bad("time_zone", e.to_string()))?;
        }
        if let Some(h) = &self.hours {
            WeeklyHours::parse(h).map_err(|e| bad("hours", format!("{h:?}: {e}")))?;
        }
        Ok(self)
    }
}

/// Turns the query's rows into entries: the good ones, and a message for
/// each row skipped. Fails on a column Tillwatch does not read, a required
/// one missing, a value that cannot be read as text, or no rows.
pub fn entries(batch: &RecordBatch) -> Result<(Vec<Entry>, Vec<DirectoryError>), DirectoryError> {
    if batch.num_rows() == 0 {
        return Err(DirectoryError::NoRows);
    }
    let schema = batch.schema();
    for field in schema.fields() {
        if !COLUMNS.contains(&field.name().as_str()) {
            return Err(DirectoryError::UnknownColumn(field.name().clone()));
        }
    }
    for required in &COLUMNS[..2] {
        if schema.column_with_name(required).is_none() {
            return Err(DirectoryError::MissingColumn(required));
        }
    }
    // Each column read as text (a numeric id becomes its digits).
    let mut texts: Vec<Option<StringArray>> = Vec::new();
    for name in COLUMNS {
        let Some((i, _)) = schema.column_with_name(name) else {
            texts.push(None);
            continue;
        };
        let column = arrow::compute::cast(batch.column(i), &DataType::Utf8).map_err(|e| {
            DirectoryError::NotText {
                column: name.to_string(),
                detail: e.to_string(),
            }
        })?;
        let column = column
            .as_any()
            .downcast_ref::<StringArray>()
            .cloned()
            .ok_or_else(|| DirectoryError::NotText {
                column: name.to_string(),
                detail: "not read as text".into(),
            })?;
        texts.push(Some(column));
    }
    let text = |c: usize, row: usize| -> Option<String> {
        let column = texts[c].as_ref()?;
        if column.is_null(row) {
            return None;
        }
        Some(column.value(row).trim().to_string()).filter(|s| !s.is_empty())
    };
    let mut good = Vec::new();
    let mut skipped = Vec::new();
    for row in 0..batch.num_rows() {
        let entry = Entry {
            merchant_id: text(0, row).unwrap_or_default(),
            store_id: text(1, row).unwrap_or_default(),
            merchant_name: text(2, row),
            store_name: text(3, row),
            time_zone: text(4, row),
            hours: text(5, row),
        };
        match entry.check() {
            Ok(e) => good.push(e),
            Err(problem) => skipped.push(problem),
        }
    }
    good.sort();
    good.dedup_by(|a, b| a.merchant_id == b.merchant_id && a.store_id == b.store_id);
    Ok((good, skipped))
}

/// The snapshot as the lake's Parquet rows.
pub fn batch(partition: Partition, entries: &[Entry]) -> RecordBatch {
    let text = |f: &dyn Fn(&Entry) -> Option<&str>| -> ArrayRef {
        Arc::new(entries.iter().map(f).collect::<StringArray>())
    };
    let schema = Schema::new(vec![
        Field::new(
            "hour",
            DataType::Timestamp(TimeUnit::Millisecond, None),
            false,
        ),
        Field::new("merchant_id", DataType::Utf8, false),
        Field::new("store_id", DataType::Utf8, false),
        Field::new("merchant_name", DataType::Utf8, true),
        Field::new("store_name", DataType::Utf8, true),
        Field::new("time_zone", DataType::Utf8, true),
        Field::new("hours", DataType::Utf8, true),
    ]);
    RecordBatch::try_new(
        Arc::new(schema),
        vec![
            Arc::new(TimestampMillisecondArray::from(vec![
                partition.start_ms;
                entries.len()
            ])),
            text(&|e| Some(e.merchant_id.as_str())),
            text(&|e| Some(e.store_id.as_str())),
            text(&|e| e.merchant_name.as_deref()),
            text(&|e| e.store_name.as_deref()),
            text(&|e| e.time_zone.as_deref()),
            text(&|e| e.hours.as_deref()),
        ],
    )
    .expect("the columns match the schema")
}

/// The snapshot as RowBinary for the `merchant_directory` table.
fn row_binary(partition: Partition, entries: &[Entry]) -> Vec<u8> {
    let mut out = Vec::new();
    let hour = u32::try_from(partition.start_ms.div_euclid(1000)).unwrap_or(0);
    for e in entries {
        out.extend_from_slice(&hour.to_le_bytes());
        put_string(&mut out, &e.merchant_id);
        put_string(&mut out, &e.store_id);
        put_nullable(&mut out, e.merchant_name.as_deref());
        put_nullable(&mut out, e.store_name.as_deref());
        put_nullable(&mut out, e.time_zone.as_deref());
        put_nullable(&mut out, e.hours.as_deref());
    }
    out
}

/// Where the directory goes: the metadata store, the lake and (with the
/// ClickHouse engine) its `merchant_directory` table.
pub struct Directory {
    pub store: MetaStore,
    pub lake: Embedded,
    pub clickhouse: Option<ClickHouse>,
    pub clock: tillwatch_scheduler::Clock,
}

impl Directory {
    /// One import's rows, from source job `job` (see the module docs).
    pub async fn apply(
        &self,
        job: &str,
        partition: Partition,
        rows: &RecordBatch,
    ) -> Result<Output, JobError> {
        let (entries, skipped) = entries(rows)?;
        for problem in &skipped {
            tracing::warn!(%problem, "merchant directory row skipped");
        }
        if entries.is_empty() {
            return Err(DirectoryError::AllSkipped(skipped).into());
        }
        let now = (self.clock)();
        let mut merchants: Vec<MerchantRecord> = Vec::new();
        for e in &entries {
            if merchants
                .last()
                .is_none_or(|m| m.merchant_id != e.merchant_id)
            {
                merchants.push(MerchantRecord {
                    merchant_id: e.merchant_id.clone(),
                    name: e.merchant_name.clone(),
                    updated_at_ms: now,
                });
            }
        }
        let stores: Vec<StoreRecord> = entries
            .iter()
            .map(|e| StoreRecord {
                merchant_id: e.merchant_id.clone(),
                store_id: e.store_id.clone(),
                name: e.store_name.clone(),
                time_zone: e.time_zone.clone(),
                hours: e.hours.clone(),
                updated_at_ms: now,
            })
            .collect();
        let mut output = self
            .lake
            .write(job, partition, vec![batch(partition, &entries)])
            .await?;
        if let Some(ch) = &self.clickhouse {
            let staging = format!("{MERCHANT_DIRECTORY}_staging");
            let fail = |e: tillwatch_clickhouse::ChError| {
                JobError::query(format_args!("ClickHouse {MERCHANT_DIRECTORY}: {e}"))
            };
            let clear = format!("ALTER TABLE {} DROP PARTITION tuple()", ch.table(&staging));
            ch.execute(&clear).await.map_err(fail)?;
            ch.insert_row_binary(
                &staging,
                "hour, merchant_id, store_id, merchant_name, store_name, time_zone, hours",
                row_binary(partition, &entries).into(),
            )
            .await
            .map_err(fail)?;
            ch.execute(&format!(
                "ALTER TABLE {} REPLACE PARTITION tuple() FROM {}",
                ch.table(MERCHANT_DIRECTORY),
                ch.table(&staging)
            ))
            .await
            .map_err(fail)?;
            ch.execute(&clear).await.map_err(fail)?;
        }
        self.store
            .import_directory(&merchants, &stores)
            .await
            .map_err(|e| JobError::write("the merchant directory to the metadata store", e))?;
        tracing::info!(
            stores = entries.len(),
            merchants = merchants.len(),
            skipped = skipped.len(),
            "merchant directory imported"
        );
        output.messages.push(format!(
            "merchant directory: {} store(s) of {} merchant(s) imported, {} row(s) skipped",
            entries.len(),
            merchants.len(),
            skipped.len()
        ));
        output
            .messages
            .extend(skipped.iter().map(|p| format!("skipped: {p}")));
        Ok(output)
    }
}
