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
use tillwatch_scheduler::{Executor, Grain, JobError, JobSpec, Output, Partition, RunFuture};
use tillwatch_storage::Lake;
use tillwatch_storage::clickhouse_ddl::quote_ident;
use tracing::debug;

use crate::embedded::Embedded;
use crate::jobs;
use crate::side::{self, NoSideInputs, SideInputs};

/// The side tables (migration 008), one partition per interval as the
/// rollup tables.
const ONLINE: &str = "rollup_minutes_online";
const DEVICES: &str = "rollup_devices";
const ZONE_HOURS: &str = "rollup_zone_hours";
/// Migration 009.
const ATTRIBUTION: &str = "rollup_attribution";

pub struct ClickHouseEngine {
    ch: ClickHouse,
    lake: Embedded,
    /// Held while partitions are filled from the lake or a source's import
    /// lands, so two runs do not stage one partition into one staging
    /// partition together (see `fill_from_lake`).
    fills: tokio::sync::Mutex<()>,
}

/// The partition of a rollup table that holds `partition`: hours or days
/// since 1970, as `PARTITION BY intDiv(toUInt32(…), 3600 | 86400)` makes them.
pub fn partition_id(partition: Partition) -> i64 {
    match partition.grain {
        Grain::Hour => partition.start_ms.div_euclid(3_600_000),
        // (Weeks and months are team jobs' grains, which run on the
        // embedded engine: their first day.)
        Grain::Day | Grain::Week | Grain::Month => partition.start_ms.div_euclid(86_400_000),
    }
}

/// The columns a job's rows are sorted by in its Parquet file, as the
/// DataFusion statements sort them.
fn sort_key(job: &str) -> &'static str {
    match job {
        jobs::FLEET_HEALTH_DAILY => "merchant_id, store_id, firmware_version, app_version, model",
        // A terminal that moved during the day has a row per store.
        jobs::DEVICE_HEALTH_DAILY => "device_id, store_id",
        _ => "device_id",
    }
}

fn err(step: &str, job: &str, partition: Partition) -> impl Fn(ChError) -> JobError {
    let context = format!("{step} for {job} {partition} on ClickHouse");
    move |e| JobError::Query(format!("{context}: {e}"))
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
    /// Over the lake alone (see [`Embedded::new`]).
    pub fn new(ch: ClickHouse, lake: Lake) -> ClickHouseEngine {
        ClickHouseEngine::with_side_inputs(ch, lake, Arc::new(NoSideInputs))
    }

    /// With the metadata the rollups read beside the lake.
    pub fn with_side_inputs(
        ch: ClickHouse,
        lake: Lake,
        side: Arc<dyn SideInputs>,
    ) -> ClickHouseEngine {
        ClickHouseEngine {
            ch,
            lake: Embedded::with_side_inputs(lake, side),
            fills: tokio::sync::Mutex::new(()),
        }
    }

    /// The server it runs on.
    pub fn client(&self) -> &ClickHouse {
        &self.ch
    }

    /// Taken while partitions are filled from the lake or a source lands.
    pub(crate) async fn one_fill_at_a_time(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.fills.lock().await
    }

    /// The lake it writes each partition's file to.
    pub(crate) fn lake(&self) -> &Embedded {
        &self.lake
    }

    /// The `SELECT` of a job for one interval, ready to send.
    pub fn select(&self, job: &JobSpec, partition: Partition) -> Result<String, JobError> {
        let sql = jobs::sql(&job.name).ok_or_else(|| JobError::UnknownJob {
            engine: "ClickHouse",
            job: job.name.clone(),
        })?;
        let seconds = |ms: i64| ms.div_euclid(1000).to_string();
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
            )
            .replace(
                "{from_s}",
                &seconds(partition.start_ms - job.reads_before_ms),
            )
            .replace("{to_s}", &seconds(partition.end_ms() + job.reads_after_ms)))
    }

    /// Fills the side tables the job reads for `partition` (their
    /// partition for this interval, cleared first if a killed run left
    /// one); returns the tables to clear after the run.
    async fn side_inputs(
        &self,
        job: &JobSpec,
        partition: Partition,
    ) -> Result<Vec<&'static str>, JobError> {
        let id = partition_id(partition);
        // Clears what a killed run may have left, fills the interval's
        // partition, and says whether there is anything to clear after.
        let fill = |table: &'static str, columns: &'static str, rows: Vec<u8>| async move {
            let fail = err("filling the side inputs", &job.name, partition);
            self.ch
                .drop_partition_if_any(table, &id.to_string())
                .await
                .map_err(&fail)?;
            if rows.is_empty() {
                return Ok::<_, JobError>(None);
            }
            self.ch
                .insert_row_binary(table, columns, rows.into())
                .await
                .map_err(&fail)?;
            Ok(Some(table))
        };
        match job.name.as_str() {
            jobs::DEVICE_HEALTH_HOURLY => {
                let sides = self.lake.side_inputs();
                let online = sides.online_time(partition).await?;
                let rows = side::online_row_binary(partition, &online);
                let columns = "hour, device_id, minutes_online, readings_expected";
                let attribution = side::hour_attribution(&sides.attribution().await?, partition);
                let attributed = side::attribution_row_binary(partition, &attribution);
                let filled = [
                    fill(ONLINE, columns, rows).await?,
                    fill(
                        ATTRIBUTION,
                        "hour, device_id, merchant_id, store_id",
                        attributed,
                    )
                    .await?,
                ];
                Ok(filled.into_iter().flatten().collect())
            }
            jobs::DEVICE_HEALTH_DAILY => {
                let local = self.lake.local_day(job, partition).await?;
                let (devices, hours) = side::local_day_row_binary(partition, &local);
                let filled = [
                    fill(DEVICES, "day, device_id, zone, model", devices).await?,
                    fill(ZONE_HOURS, "day, zone, hour", hours).await?,
                ];
                Ok(filled.into_iter().flatten().collect())
            }
            _ => Ok(Vec::new()),
        }
    }

    /// Reads one staged interval back as Arrow batches of the job's lake
    /// schema.
    async fn staged(
        &self,
        job: &str,
        staging: &str,
        partition: Partition,
    ) -> Result<Vec<RecordBatch>, JobError> {
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
            .map_err(|e| JobError::read(format_args!("back {job} {partition}"), e))?
            .collect()
            .await
            .map_err(|e| JobError::read(format_args!("back {job} {partition}"), e))?;
        let relaxed = relaxed(&schema);
        let reader = arrow::json::ReaderBuilder::new(relaxed.clone())
            .with_batch_size(65_536)
            .build(Cursor::new(bytes))
            .map_err(|e| JobError::read(format_args!("back {job} {partition} (decoding)"), e))?;
        let mut batches = reader
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| JobError::read(format_args!("back {job} {partition} (decoding)"), e))?;
        if batches.is_empty() {
            batches.push(RecordBatch::new_empty(relaxed));
        }
        Ok(batches)
    }

    /// Runs a built-in job for one interval (steps 1-5 above).
    pub async fn run_job(&self, spec: &JobSpec, partition: Partition) -> Result<Output, JobError> {
        let job = spec.name.as_str();
        if job == jobs::RAW_COMPACTION {
            // The lake's upkeep; ClickHouse merges its own parts.
            return self.lake.raw_compaction(partition).await;
        }
        let mut steps = StepTimer::new();
        let select = self.select(spec, partition)?;
        let sides = self.side_inputs(spec, partition).await?;
        steps.lap("side_inputs");
        let target = self.ch.table(job);
        let staging = self.ch.table(&format!("{job}_staging"));
        let id = partition_id(partition);
        let clear = format!("ALTER TABLE {staging} DROP PARTITION {id}");
        self.ch
            .drop_partition_if_any(&format!("{job}_staging"), &id.to_string())
            .await
            .map_err(err("clearing the staging partition", job, partition))?;
        steps.lap("clear");
        self.ch
            .execute(&format!("INSERT INTO {staging}\n{select}"))
            .await
            .map_err(err("INSERT … SELECT", job, partition))?;
        steps.lap("insert_select");
        let batches = self.staged(job, &staging, partition).await?;
        steps.lap("read_back");
        let output = self.lake.write(job, partition, batches).await?;
        steps.lap("lake_write");
        self.ch
            .execute(&format!(
                "ALTER TABLE {target} REPLACE PARTITION {id} FROM {staging}"
            ))
            .await
            .map_err(err("replacing the partition", job, partition))?;
        steps.lap("replace");
        self.ch.execute(&clear).await.map_err(err(
            "clearing the staging partition",
            job,
            partition,
        ))?;
        for table in sides {
            self.ch
                .execute(&format!(
                    "ALTER TABLE {} DROP PARTITION {id}",
                    self.ch.table(table)
                ))
                .await
                .map_err(err("clearing the side inputs", job, partition))?;
        }
        steps.lap("cleanup");
        debug!(job, %partition, steps = %steps, "ClickHouse run");
        Ok(output)
    }
}

/// Wall time per step of one run, for the debug log.
struct StepTimer {
    last: std::time::Instant,
    laps: Vec<(&'static str, std::time::Duration)>,
}

impl StepTimer {
    fn new() -> StepTimer {
        StepTimer {
            last: std::time::Instant::now(),
            laps: Vec::new(),
        }
    }

    fn lap(&mut self, step: &'static str) {
        let now = std::time::Instant::now();
        self.laps.push((step, now - self.last));
        self.last = now;
    }
}

impl std::fmt::Display for StepTimer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, (step, took)) in self.laps.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            write!(f, "{step}={:.3}s", took.as_secs_f64())?;
        }
        Ok(())
    }
}

impl Executor for ClickHouseEngine {
    fn run<'a>(&'a self, job: &'a JobSpec, partition: Partition) -> RunFuture<'a> {
        Box::pin(self.run_job(job, partition))
    }
}
