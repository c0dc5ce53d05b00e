//! The ClickHouse engine: each run is an `INSERT … SELECT` inside the
//! server, so rollups scale with the ClickHouse cluster rather than with the
//! scheduler's machine.
//!
//! A run of `job` over one interval:
//! 1. clears that interval's partition of `<job>_staging` (left over from a
//!    run that was killed),
//! 2. `INSERT INTO <job>_staging SELECT …` (the job's ClickHouse SQL),
//! 3. reads the staged rows back and writes them to the lake as the job's
//!    Parquet partition (the embedded engine's file, replaced atomically),
//! 4. `ALTER TABLE <job> REPLACE PARTITION <interval> FROM <job>_staging`,
//!    which swaps the interval whole: readers see the previous rows or the
//!    new ones, never both and never a part,
//! 5. clears the staged partition.
//!
//! A run killed at any step leaves the previous output in place, in
//! ClickHouse and in the lake; the retry starts again from step 1.

use std::io::Cursor;
use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use tillwatch_clickhouse::{ChError, ClickHouse};
use tillwatch_scheduler::{Executor, Grain, JobSpec, Output, Partition, RunFuture};
use tillwatch_storage::Lake;
use tillwatch_storage::clickhouse_ddl::quote_ident;

use crate::embedded::Embedded;
use crate::jobs;

pub struct ClickHouseEngine {
    ch: ClickHouse,
    lake: Embedded,
}

/// The partition of a rollup table that holds `partition`: hours or days
/// since 1970, as `PARTITION BY intDiv(toUInt32(…), 3600 | 86400)` makes them.
pub fn partition_id(partition: Partition) -> i64 {
    match partition.grain {
        Grain::Hour => partition.start_ms.div_euclid(3_600_000),
        Grain::Day => partition.start_ms.div_euclid(86_400_000),
    }
}

/// The columns a job's rows are sorted by in its Parquet file, as the
/// DataFusion statements sort them.
fn sort_key(job: &str) -> &'static str {
    if job == jobs::FLEET_HEALTH_DAILY {
        "merchant_id, store_id, firmware_version, app_version"
    } else {
        "device_id"
    }
}

fn err(step: &str, job: &str, partition: Partition) -> impl Fn(ChError) -> String {
    let context = format!("{step} for {job} {partition} on ClickHouse");
    move |e| format!("{context}: {e}")
}

/// `schema` with every column nullable: what comes back over JSON is
/// checked by the types, not by the planner's guess at nullability.
fn relaxed(schema: &Schema) -> SchemaRef {
    Arc::new(Schema::new(
        schema
            .fields()
            .iter()
            .map(|f| Field::new(f.name(), f.data_type().clone(), true))
            .collect::<Vec<_>>(),
    ))
}

impl ClickHouseEngine {
    pub fn new(ch: ClickHouse, lake: Lake) -> ClickHouseEngine {
        ClickHouseEngine {
            ch,
            lake: Embedded::new(lake),
        }
    }

    /// The `SELECT` of a job for one interval, ready to send.
    pub fn select(&self, job: &str, partition: Partition) -> Result<String, String> {
        let sql = jobs::sql(job).ok_or_else(|| format!("no built-in job {job:?}"))?;
        Ok(sql
            .clickhouse
            .replace("{database}", &quote_ident(self.ch.database()))
            .replace(
                "{start_s}",
                &(partition.start_ms.div_euclid(1000)).to_string(),
            )
            .replace(
                "{end_s}",
                &(partition.end_ms().div_euclid(1000)).to_string(),
            ))
    }

    /// Reads one staged interval back as Arrow batches of the job's lake
    /// schema.
    async fn staged(
        &self,
        job: &str,
        staging: &str,
        partition: Partition,
    ) -> Result<Vec<RecordBatch>, String> {
        let schema = Embedded::output_schema(job).await?;
        let time = schema.field(0).name().clone();
        let columns: Vec<String> = schema
            .fields()
            .iter()
            .map(|f| match f.data_type() {
                // Exact milliseconds, not a formatted date.
                DataType::Timestamp(_, _) => format!(
                    "toInt64(toUInt32({n})) * 1000 AS {n}",
                    n = quote_ident(f.name())
                ),
                _ => quote_ident(f.name()),
            })
            .collect();
        // The filter sits in a subquery: ClickHouse aliases are query-wide,
        // and the time column's alias (milliseconds) would shadow it.
        let sql = format!(
            "SELECT {} FROM (SELECT * FROM {staging} WHERE {} = toDateTime({}, 'UTC')) ORDER BY {}",
            columns.join(", "),
            quote_ident(&time),
            partition.start_ms.div_euclid(1000),
            sort_key(job)
        );
        let bytes = self
            .ch
            .client()
            .clone()
            .with_setting("output_format_json_quote_64bit_integers", "0")
            .query(&sql)
            .fetch_bytes("JSONEachRow")
            .map_err(|e| format!("reading back {job} {partition}: {e}"))?
            .collect()
            .await
            .map_err(|e| format!("reading back {job} {partition}: {e}"))?;
        let relaxed = relaxed(&schema);
        let reader = arrow::json::ReaderBuilder::new(relaxed.clone())
            .with_batch_size(65_536)
            .build(Cursor::new(bytes))
            .map_err(|e| format!("decoding {job} {partition}: {e}"))?;
        let mut batches = reader
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("decoding {job} {partition}: {e}"))?;
        if batches.is_empty() {
            batches.push(RecordBatch::new_empty(relaxed));
        }
        Ok(batches)
    }

    /// Runs a built-in job for one interval (steps 1-5 above).
    pub async fn run_job(&self, job: &str, partition: Partition) -> Result<Output, String> {
        if job == jobs::RAW_COMPACTION {
            // The lake's upkeep; ClickHouse merges its own parts.
            return self.lake.raw_compaction(partition).await;
        }
        let select = self.select(job, partition)?;
        let target = self.ch.table(job);
        let staging = self.ch.table(&format!("{job}_staging"));
        let id = partition_id(partition);
        let clear = format!("ALTER TABLE {staging} DROP PARTITION {id}");
        self.ch.execute(&clear).await.map_err(err(
            "clearing the staging partition",
            job,
            partition,
        ))?;
        self.ch
            .execute(&format!("INSERT INTO {staging}\n{select}"))
            .await
            .map_err(err("INSERT … SELECT", job, partition))?;
        let batches = self.staged(job, &staging, partition).await?;
        let output = self.lake.write(job, partition, batches).await?;
        self.ch
            .execute(&format!(
                "ALTER TABLE {target} REPLACE PARTITION {id} FROM {staging}"
            ))
            .await
            .map_err(err("replacing the partition", job, partition))?;
        self.ch.execute(&clear).await.map_err(err(
            "clearing the staging partition",
            job,
            partition,
        ))?;
        Ok(output)
    }
}

impl Executor for ClickHouseEngine {
    fn run<'a>(&'a self, job: &'a JobSpec, partition: Partition) -> RunFuture<'a> {
        Box::pin(self.run_job(&job.name, partition))
    }
}
