//! The embedded engine: DataFusion over the Parquet lake, for standalone
//! mode. A partition's output is one Parquet file,
//! `lake/<job>/date=…/hour=…/part.parquet`, put in place whole
//! ([`Lake::put`]: on disk a synced temp file renamed over the previous
//! one, in object storage one PUT): readers see the old output or the new,
//! never a mix, and a run killed half way leaves the old output as it was.

use std::path::PathBuf;
use std::sync::Arc;

use arrow::record_batch::RecordBatch;
use datafusion::datasource::MemTable;
use datafusion::datasource::file_format::options::ReadOptions;
use datafusion::datasource::listing::{ListingTable, ListingTableConfig, ListingTableUrl};
use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::prelude::{ParquetReadOptions, SessionConfig, SessionContext};
use tillwatch_domain::{HourPartition, Kind};
use tillwatch_scheduler::{Executor, JobError, JobSpec, Output, Partition, RunFuture};
use tillwatch_storage::{Lake, OutputGrain, Table, schema};

use crate::jobs::{
    DEVICE_HEALTH_DAILY, DEVICE_HEALTH_DAILY_SQL, DEVICE_HEALTH_HOURLY, DEVICE_HEALTH_HOURLY_SQL,
    FLEET_HEALTH_DAILY, FLEET_HEALTH_DAILY_SQL, RAW_COMPACTION,
};
use crate::side::{self, LocalDay, NoSideInputs, SideInputs};

pub struct Embedded {
    lake: Lake,
    side: Arc<dyn SideInputs>,
}

fn raw_table(name: &str) -> Option<Table> {
    Kind::ALL
        .into_iter()
        .map(Table::Reading)
        .find(|t| t.name() == name)
}

fn fnv(bytes: &[u8]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// How a partition's output is written: Snappy, in row groups of 2,048
/// rows. The per-terminal outputs are sorted by device id, so each row
/// group's min/max statistics cover a narrow id range and a reader looking
/// for one terminal (the device page's series) skips the others.
pub fn output_properties() -> parquet::file::properties::WriterProperties {
    parquet::file::properties::WriterProperties::builder()
        .set_compression(parquet::basic::Compression::SNAPPY)
        .set_max_row_group_row_count(Some(2048))
        .build()
}

fn encode(
    schema: arrow::datatypes::SchemaRef,
    batches: &[RecordBatch],
) -> Result<Vec<u8>, parquet::errors::ParquetError> {
    let mut bytes = Vec::new();
    let mut writer =
        parquet::arrow::ArrowWriter::try_new(&mut bytes, schema, Some(output_properties()))?;
    for b in batches {
        writer.write(b)?;
    }
    writer.close()?;
    Ok(bytes)
}

impl Embedded {
    /// Over the lake alone: minutes online unknown, every day a UTC day.
    pub fn new(lake: Lake) -> Embedded {
        Embedded::with_side_inputs(lake, Arc::new(NoSideInputs))
    }

    /// Over the lake and the metadata the rollups read beside it (see
    /// [`crate::side`]).
    pub fn with_side_inputs(lake: Lake, side: Arc<dyn SideInputs>) -> Embedded {
        Embedded { lake, side }
    }

    pub fn side_inputs(&self) -> &Arc<dyn SideInputs> {
        &self.side
    }

    /// Registers a batch as an in-memory table.
    fn register_batch(
        ctx: &SessionContext,
        name: &str,
        batch: RecordBatch,
    ) -> Result<(), JobError> {
        let table =
            MemTable::try_new(batch.schema(), vec![vec![batch]]).map_err(JobError::query)?;
        ctx.register_table(name, Arc::new(table))
            .map_err(JobError::query)?;
        Ok(())
    }

    /// The local day of `day` as the daily job reads it.
    pub async fn local_day(&self, job: &JobSpec, day: Partition) -> Result<LocalDay, JobError> {
        let devices = self.side.devices().await?;
        let local = side::local_day(
            day,
            day.start_ms - job.reads_before_ms,
            day.end_ms() + job.reads_after_ms,
            devices,
        );
        side::warn_once(&local.warnings);
        Ok(local)
    }

    /// Whether a file is at `path` in the lake.
    pub async fn exists(&self, path: &std::path::Path) -> Result<bool, JobError> {
        let lake = self.lake.clone();
        let path = path.to_path_buf();
        let what = path.display().to_string();
        tokio::task::spawn_blocking(move || lake.exists(&path))
            .await
            .map_err(|e| JobError::read(&what, e))?
            .map_err(|e| JobError::read(&what, e))
    }

    /// Where a job's partition lives in the lake.
    pub fn output_path(&self, job: &str, partition: Partition) -> PathBuf {
        let hour = HourPartition(partition.start_ms.div_euclid(3_600_000));
        let grain = match partition.grain {
            tillwatch_scheduler::Grain::Hour => OutputGrain::Hour,
            // A week or a month under the date it starts on.
            tillwatch_scheduler::Grain::Day
            | tillwatch_scheduler::Grain::Week
            | tillwatch_scheduler::Grain::Month => OutputGrain::Day,
        };
        self.lake.output_path(job, hour, grain)
    }

    /// A DataFusion session: two partitions (this is a background job,
    /// not a query service), strings read from Parquet as plain `Utf8`, so
    /// every job's files have one schema whichever engine or input wrote
    /// them, and the jobs' quantile aggregate ([`crate::quantile`]).
    pub fn context() -> SessionContext {
        let ctx = SessionContext::new_with_config(
            SessionConfig::new().with_target_partitions(2).set_bool(
                "datafusion.execution.parquet.schema_force_view_types",
                false,
            ),
        );
        ctx.register_udaf(crate::quantile::udaf());
        ctx
    }

    /// [`Embedded::context`] that can read the lake's locations: for a lake
    /// in object storage, its store is registered with the session.
    pub fn session(&self) -> SessionContext {
        let ctx = Self::context();
        if let Some((url, store)) = self.lake.object_store() {
            let url = ObjectStoreUrl::parse(&url).expect("the lake's store URL parses");
            ctx.register_object_store(url.as_ref(), store);
        }
        ctx
    }

    /// Registers one raw table holding just `partition`'s hour: the files
    /// [`Lake::hour_files`] lists, so a compaction in progress is never
    /// read twice.
    async fn register_hour(
        &self,
        ctx: &SessionContext,
        name: &str,
        partition: Partition,
    ) -> Result<(), JobError> {
        self.register_hours(ctx, name, &[partition]).await
    }

    /// Registers one raw table holding just the hours of `hours`.
    async fn register_hours(
        &self,
        ctx: &SessionContext,
        name: &str,
        hours: &[Partition],
    ) -> Result<(), JobError> {
        let table =
            raw_table(name).ok_or_else(|| JobError::input(format!("no raw table {name:?}")))?;
        let mut files = Vec::new();
        for partition in hours {
            let partition = *partition;
            let hour = HourPartition(partition.start_ms.div_euclid(3_600_000));
            let lake = self.lake.clone();
            let found = tokio::task::spawn_blocking(move || lake.hour_files(table, hour))
                .await
                .map_err(|e| {
                    JobError::read(format!("the lake's {name} files for {partition}"), e)
                })?;
            files.extend(found);
        }
        let partition = hours.first().map(ToString::to_string).unwrap_or_default();
        let schema = schema(table);
        if files.is_empty() {
            let empty = MemTable::try_new(schema, vec![vec![]]).map_err(JobError::query)?;
            ctx.register_table(name, Arc::new(empty))
                .map_err(JobError::query)?;
            return Ok(());
        }
        let paths: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
        register_parquet(ctx, name, paths, Some(schema))
            .await
            .map_err(|e| JobError::read(format_args!("{name} {partition}"), e))
    }

    /// Compacts one hour of every raw table. The output's fingerprint is
    /// the compacted hour's, so a second run that finds nothing to do
    /// leaves the hourly rollup alone.
    pub async fn raw_compaction(&self, partition: Partition) -> Result<Output, JobError> {
        let lake = self.lake.clone();
        tokio::task::spawn_blocking(move || {
            let hour = HourPartition(partition.start_ms.div_euclid(3_600_000));
            let mut rows = 0;
            let mut fingerprints = String::new();
            for kind in Kind::ALL {
                let table = Table::Reading(kind);
                let done = lake.compact_hour(table, hour).map_err(|e| {
                    JobError::write(format_args!("{} {partition} (compacting)", table.name()), e)
                })?;
                rows += done.rows_out;
                fingerprints.push_str(&lake.hour_fingerprint(table, hour));
                fingerprints.push(';');
            }
            Ok(Output {
                rows,
                fingerprint: fnv(fingerprints.as_bytes()),
                messages: Vec::new(),
            })
        })
        .await
        .map_err(|e| JobError::write(format_args!("the compaction of {partition}"), e))?
    }

    /// The rows of a job's partition in the lake, as one batch; `None`
    /// when it has no file there.
    pub async fn read_output(
        &self,
        job: &str,
        partition: Partition,
    ) -> Result<Option<RecordBatch>, JobError> {
        let path = self.output_path(job, partition);
        if !self.exists(&path).await? {
            return Ok(None);
        }
        let lake = self.lake.clone();
        let what = path.display().to_string();
        let batches = tokio::task::spawn_blocking(move || lake.read_file(&path))
            .await
            .map_err(|e| JobError::read(&what, e))?
            .map_err(|e| JobError::read(&what, e))?;
        let Some(first) = batches.first() else {
            return Err(JobError::read(&what, "the file holds no schema"));
        };
        arrow::compute::concat_batches(&first.schema(), &batches)
            .map(Some)
            .map_err(|e| JobError::read(&what, e))
    }

    /// Writes `batches` as the job's partition in the lake, replacing it.
    pub async fn write(
        &self,
        job: &str,
        partition: Partition,
        batches: Vec<RecordBatch>,
    ) -> Result<Output, JobError> {
        let schema = batches
            .first()
            .map(|b| b.schema())
            .ok_or_else(|| JobError::query("the query gave no schema"))?;
        let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
        let bytes = encode(schema, &batches)
            .map_err(|e| JobError::write(format_args!("{job} {partition}"), e))?;
        let path = self.output_path(job, partition);
        let fingerprint = fnv(&bytes);
        let lake = self.lake.clone();
        tokio::task::spawn_blocking(move || {
            lake.put(&path, bytes)
                .map_err(|e| JobError::write(path.display(), e))
        })
        .await
        .map_err(|e| JobError::write(format_args!("{job} {partition}"), e))??;
        Ok(Output {
            rows: rows as u64,
            fingerprint,
            messages: Vec::new(),
        })
    }

    /// Runs a statement and writes its result as the job's partition.
    async fn query_into(
        &self,
        ctx: SessionContext,
        sql: &str,
        job: &str,
        partition: Partition,
    ) -> Result<Output, JobError> {
        let sql = sql.replace("{start_ms}", &partition.start_ms.to_string());
        let frame = ctx.sql(&sql).await.map_err(JobError::query)?;
        let schema = frame.schema().inner().clone();
        let mut batches = frame.collect().await.map_err(JobError::query)?;
        if batches.is_empty() {
            batches.push(RecordBatch::new_empty(schema));
        }
        self.write(job, partition, batches).await
    }

    /// Runs a team's declared job (see [`crate::declared`]) for one
    /// partition: each raw table it reads holds the hours its interval
    /// (widened by its read margins) covers, each job it reads the outputs
    /// of the partitions overlapping it, registered under the input's
    /// name; a store-local day also gets the terminals' zones and each
    /// zone's hours ([`crate::declared::LOCAL_DAY_TABLES`]); its SQL runs
    /// with `{start_ms}` and `{end_ms}` bound, as one query that can change
    /// nothing, and its result is the partition.
    pub async fn run_declared(
        &self,
        job: &JobSpec,
        declared: &crate::declared::DeclaredJob,
        grain_of: &(dyn Fn(&str) -> Option<tillwatch_scheduler::Grain> + Sync),
        partition: Partition,
    ) -> Result<Output, JobError> {
        let sql = declared.sql.datafusion.as_deref().ok_or_else(|| {
            JobError::query(format!(
                "{} has no {}.datafusion.sql: it runs only on ClickHouse",
                job.name, job.name
            ))
        })?;
        let ctx = self.session();
        for input in &declared.declaration.inputs {
            if raw_table(input).is_some() {
                let hours = job.input_partitions(partition, tillwatch_scheduler::Grain::Hour);
                self.register_hours(&ctx, input, &hours).await?;
                continue;
            }
            let grain = grain_of(input)
                .ok_or_else(|| JobError::input(format!("{input} is no job the scheduler runs")))?;
            let mut files = Vec::new();
            for up in job.input_partitions(partition, grain) {
                let path = self.output_path(input, up);
                if !self.exists(&path).await? {
                    return Err(JobError::input(format!(
                        "{input} {up} has no output at {}",
                        path.display()
                    )));
                }
                files.push(path.display().to_string());
            }
            register_parquet(&ctx, input, files, None)
                .await
                .map_err(|e| JobError::read(format_args!("{input} for {partition}"), e))?;
        }
        let mut messages = Vec::new();
        if declared.store_local_day() {
            let local = self.local_day(job, partition).await?;
            messages.extend(local.warnings.iter().map(|(_, text)| text.clone()));
            let (devices, zone_hours) = side::local_day_batches(&local);
            let [d, z] = crate::declared::LOCAL_DAY_TABLES;
            Self::register_batch(&ctx, d, devices)?;
            Self::register_batch(&ctx, z, zone_hours)?;
        }
        let sql = crate::declared::bind(sql, partition.start_ms, partition.end_ms());
        let frame = ctx
            .sql_with_options(&sql, crate::declared::query_only())
            .await
            .map_err(JobError::query)?;
        let schema = frame.schema().inner().clone();
        // The plan it runs with, optimised, for the run's log.
        let plan = frame
            .clone()
            .into_optimized_plan()
            .map(|p| p.display_indent().to_string())
            .unwrap_or_else(|e| format!("(no plan: {e})"));
        let mut batches = frame.collect().await.map_err(JobError::query)?;
        if batches.is_empty() {
            batches.push(RecordBatch::new_empty(schema));
        }
        let mut output = self.write(&job.name, partition, batches).await?;
        output.messages.extend(messages);
        output
            .messages
            .push("the plan (DataFusion, optimised):".into());
        output
            .messages
            .extend(plan.lines().map(|l| format!("  {l}")));
        Ok(output)
    }

    /// Runs `device_health_daily` for one day: each terminal's hours of
    /// its local day (see [`crate::side`]), from the hourly partitions the
    /// job reads.
    pub async fn device_health_daily(
        &self,
        job: &JobSpec,
        partition: Partition,
    ) -> Result<Output, JobError> {
        let ctx = self.session();
        let mut files = Vec::new();
        for hour in job.input_partitions(partition, tillwatch_scheduler::Grain::Hour) {
            let path = self.output_path(DEVICE_HEALTH_HOURLY, hour);
            if !self.exists(&path).await? {
                return Err(JobError::input(format!(
                    "{DEVICE_HEALTH_HOURLY} {hour} has no output at {}",
                    path.display()
                )));
            }
            files.push(path.display().to_string());
        }
        let frame = ctx
            .read_parquet(files, ParquetReadOptions::default())
            .await
            .map_err(|e| {
                JobError::read(format_args!("{DEVICE_HEALTH_HOURLY} for {partition}"), e)
            })?;
        ctx.register_table("hourly", frame.into_view())
            .map_err(JobError::query)?;
        let local = self.local_day(job, partition).await?;
        let (devices, zone_hours) = side::local_day_batches(&local);
        Self::register_batch(&ctx, "devices", devices)?;
        Self::register_batch(&ctx, "zone_hours", zone_hours)?;
        self.query_into(
            ctx,
            DEVICE_HEALTH_DAILY_SQL.datafusion,
            DEVICE_HEALTH_DAILY,
            partition,
        )
        .await
    }

    /// Runs `fleet_health_daily` for one UTC day from its device rollup.
    pub async fn fleet_health_daily(&self, partition: Partition) -> Result<Output, JobError> {
        let ctx = self.session();
        let path = self.output_path(DEVICE_HEALTH_DAILY, partition);
        if !self.exists(&path).await? {
            return Err(JobError::input(format!(
                "{DEVICE_HEALTH_DAILY} {partition} has no output at {}",
                path.display()
            )));
        }
        ctx.register_parquet(
            "daily",
            path.display().to_string(),
            ParquetReadOptions::default(),
        )
        .await
        .map_err(|e| JobError::read(path.display(), e))?;
        self.query_into(
            ctx,
            FLEET_HEALTH_DAILY_SQL.datafusion,
            FLEET_HEALTH_DAILY,
            partition,
        )
        .await
    }

    /// Runs `device_health_hourly` for one hour.
    pub async fn device_health_hourly(&self, partition: Partition) -> Result<Output, JobError> {
        let ctx = self.session();
        for name in crate::jobs::RAW_TABLES {
            self.register_hour(&ctx, name, partition).await?;
        }
        let online = self.side.online_time(partition).await?;
        Self::register_batch(&ctx, "online", side::online_batch(&online))?;
        let attribution = side::hour_attribution(&self.side.attribution().await?, partition);
        Self::register_batch(&ctx, "attribution", side::attribution_batch(&attribution))?;
        self.query_into(
            ctx,
            DEVICE_HEALTH_HOURLY_SQL.datafusion,
            DEVICE_HEALTH_HOURLY,
            partition,
        )
        .await
    }

    /// The Arrow schema of a built-in job's output, planned over empty
    /// inputs: the columns of its Parquet files whichever engine ran it.
    pub async fn output_schema(job: &str) -> Result<arrow::datatypes::SchemaRef, JobError> {
        let ctx = Self::context();
        let empty = |schema: arrow::datatypes::SchemaRef| -> Result<Arc<MemTable>, JobError> {
            MemTable::try_new(schema, vec![vec![]])
                .map(Arc::new)
                .map_err(JobError::query)
        };
        for name in crate::jobs::RAW_TABLES {
            let table = raw_table(name).expect("the raw tables are the lake's");
            ctx.register_table(name, empty(schema(table))?)
                .map_err(JobError::query)?;
        }
        Self::register_batch(&ctx, "online", side::online_batch(&[]))?;
        Self::register_batch(&ctx, "attribution", side::attribution_batch(&[]))?;
        let (devices, zone_hours) = side::local_day_batches(&LocalDay {
            devices: Vec::new(),
            zone_hours: Vec::new(),
            warnings: Vec::new(),
        });
        Self::register_batch(&ctx, "devices", devices)?;
        Self::register_batch(&ctx, "zone_hours", zone_hours)?;
        let plan = |sql: &str| sql.replace("{start_ms}", "0");
        let hourly = ctx
            .sql(&plan(DEVICE_HEALTH_HOURLY_SQL.datafusion))
            .await
            .map_err(JobError::query)?
            .schema()
            .inner()
            .clone();
        if job == DEVICE_HEALTH_HOURLY {
            return Ok(hourly);
        }
        ctx.register_table("hourly", empty(hourly)?)
            .map_err(JobError::query)?;
        let daily = ctx
            .sql(&plan(DEVICE_HEALTH_DAILY_SQL.datafusion))
            .await
            .map_err(JobError::query)?
            .schema()
            .inner()
            .clone();
        match job {
            DEVICE_HEALTH_DAILY => Ok(daily),
            FLEET_HEALTH_DAILY => {
                ctx.register_table("daily", empty(daily)?)
                    .map_err(JobError::query)?;
                Ok(ctx
                    .sql(&plan(FLEET_HEALTH_DAILY_SQL.datafusion))
                    .await
                    .map_err(JobError::query)?
                    .schema()
                    .inner()
                    .clone())
            }
            other => Err(JobError::UnknownJob {
                engine: "embedded",
                job: other.to_string(),
            }),
        }
    }
}

impl Executor for Embedded {
    fn run<'a>(&'a self, job: &'a JobSpec, partition: Partition) -> RunFuture<'a> {
        Box::pin(async move {
            match job.name.as_str() {
                RAW_COMPACTION => self.raw_compaction(partition).await,
                DEVICE_HEALTH_HOURLY => self.device_health_hourly(partition).await,
                DEVICE_HEALTH_DAILY => self.device_health_daily(job, partition).await,
                FLEET_HEALTH_DAILY => self.fleet_health_daily(partition).await,
                other => Err(JobError::UnknownJob {
                    engine: "embedded",
                    job: other.to_string(),
                }),
            }
        })
    }
}

/// Registers Parquet `files` as table `name` (under that name, so plans
/// show it), with `schema` or the one the files give.
async fn register_parquet(
    ctx: &SessionContext,
    name: &str,
    files: Vec<String>,
    schema: Option<arrow::datatypes::SchemaRef>,
) -> datafusion::error::Result<()> {
    let urls = files
        .iter()
        .map(ListingTableUrl::parse)
        .collect::<datafusion::error::Result<Vec<_>>>()?;
    let options = ParquetReadOptions::default()
        .to_listing_options(&ctx.copied_config(), ctx.copied_table_options());
    let config = ListingTableConfig::new_with_multi_paths(urls).with_listing_options(options);
    let config = match schema {
        Some(schema) => config.with_schema(schema),
        None => config.infer_schema(&ctx.state()).await?,
    };
    let table = ListingTable::try_new(config)?
        .with_cache(ctx.runtime_env().cache_manager.get_file_statistic_cache());
    ctx.register_table(name, Arc::new(table))?;
    Ok(())
}
