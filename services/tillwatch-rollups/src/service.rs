//! The scheduler service: the configured jobs, the metadata store, the
//! engine and the lake's watermark and fingerprints, in one loop.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;

use tillwatch_config::Config;
use tillwatch_domain::{Kind, UtcMillis};
use tillwatch_meta::MetaStore;
use tillwatch_scheduler::{Clock, Partition, Runner, Snapshot, ingest_watermark};
use tillwatch_storage::{Lake, Table};

use tillwatch_clickhouse::ClickHouse;
use tillwatch_config::{RollupEngine, RollupRulesConfig, SourceFeed};
use tillwatch_scheduler::{EmptyFuture, Executor, JobError, JobSpec, Output, RunFuture};

use crate::clickhouse::ClickHouseEngine;
use crate::directory::Directory;
use crate::embedded::Embedded;
use crate::findings;
use crate::retention::RETENTION;

#[derive(Debug, thiserror::Error)]
pub enum SchedulerError {
    #[error("invalid configuration:\n  - {}", .0.join("\n  - "))]
    Config(Vec<String>),
    #[error(transparent)]
    Meta(#[from] tillwatch_meta::MetaError),
    #[error("the lake: {0}")]
    Lake(#[from] tillwatch_storage::LakeError),
}

/// The lake's raw data as the planner sees it at `now_ms`: the ingest
/// watermark (the slowest gateway's, leaving out gateways whose record is
/// more than `stall_after` behind: see `tillwatch_scheduler::watermark`)
/// and every raw hour's fingerprint. Blocking (listings). A lake that
/// cannot be listed (a bucket that does not answer) gives a snapshot with
/// nothing due, never one where hours look empty and their rollups rerun
/// over nothing.
pub fn lake_snapshot(lake: &Lake, now_ms: i64, stall_after: std::time::Duration) -> Snapshot {
    let nothing_due = |e: &dyn std::fmt::Display| {
        tracing::warn!(error = %e, "could not list the lake; nothing is due this tick");
        Snapshot {
            watermark_ms: i64::MIN,
            ..Snapshot::default()
        }
    };
    let mut fingerprints = std::collections::HashMap::new();
    for kind in Kind::ALL {
        let table = Table::Reading(kind);
        match lake.try_fingerprints(table) {
            Ok(hours) => {
                for (hour, fp) in hours {
                    fingerprints.insert((table.name().to_string(), hour.start().0), fp);
                }
            }
            Err(e) => return nothing_due(&e),
        }
    }
    let records = match lake.watermarks() {
        Ok(records) => records,
        Err(e) => return nothing_due(&e),
    };
    let stall_ms = i64::try_from(stall_after.as_millis()).unwrap_or(i64::MAX);
    let (watermark_ms, writers) = ingest_watermark(&records, now_ms, stall_ms);
    Snapshot {
        watermark_ms,
        fingerprints,
        writers,
    }
}

/// The source the hourly rollup reads beside the raw tables: which store
/// each terminal belongs to, from the registry's history of its identity.
/// Its fingerprint per hour changes when that hour's attribution does (a
/// terminal's first info arriving after its readings, a move learnt late),
/// so the hour rolls up again by itself.
pub const DEVICE_ATTRIBUTES: &str = "device_attributes";

/// What the planner sees: [`lake_snapshot`] (off the async workers), and
/// each hour's attribution fingerprint from the metadata store, from the
/// first job's start on. A store that cannot be read gives a snapshot with
/// nothing due, like a lake that cannot be listed.
pub async fn snapshot(runner: &Runner, lake: Lake, stall_after: std::time::Duration) -> Snapshot {
    let now_ms = runner.now();
    let mut snap = tokio::task::spawn_blocking(move || lake_snapshot(&lake, now_ms, stall_after))
        .await
        .unwrap_or_else(|_| Snapshot {
            watermark_ms: i64::MIN,
            ..Snapshot::default()
        });
    let first_job = runner
        .catalog()
        .jobs()
        .iter()
        .map(|j| j.start_ms)
        .min()
        .unwrap_or(0);
    match runner.store().attribution_inputs().await {
        Ok(inputs) => {
            // The hours any terminal reported in, from the first job's start.
            let from_ms = inputs
                .spans
                .iter()
                .map(|s| s.1)
                .min()
                .unwrap_or(0)
                .max(first_job);
            let to_ms = inputs.spans.iter().map(|s| s.2).max().unwrap_or(0) + 1;
            let fingerprints = tokio::task::spawn_blocking(move || {
                crate::side::attribution_fingerprints(&inputs, from_ms, to_ms)
            })
            .await
            .unwrap_or_default();
            for (hour, fp) in fingerprints {
                snap.fingerprints
                    .insert((DEVICE_ATTRIBUTES.to_string(), hour), fp);
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "could not read the devices' identity history; nothing is due this tick");
            return Snapshot {
                watermark_ms: i64::MIN,
                ..Snapshot::default()
            };
        }
    }
    snap
}

/// Every job's executor: the source jobs here, the rollups on their
/// engine, and after a daily rollup the rules over it.
struct Jobs {
    /// The teams' declared jobs among them.
    loaded: crate::catalog::Loaded,
    rollups: Arc<dyn Executor>,
    /// When the rollups run on ClickHouse: the engine, and for each team's
    /// SQL job why it runs on the embedded engine instead (`None`: it runs
    /// there too; see [`crate::clickhouse_declared::on_clickhouse`]).
    clickhouse: Option<(ClickHouseEngine, BTreeMap<String, Option<String>>)>,
    /// The teams' jobs' output columns, planned once for this load (a job
    /// that did not plan is planned again when asked: its source's
    /// database may answer now).
    planned: tokio::sync::Mutex<BTreeMap<String, arrow::datatypes::SchemaRef>>,
    directory: Directory,
    store: MetaStore,
    lake: Embedded,
    rules: RollupRulesConfig,
    clock: Clock,
    retention: tillwatch_config::RetentionConfig,
    lake_root: Lake,
}

impl Jobs {
    /// The output columns of a team's SQL job, as its DataFusion SQL plans
    /// against what it reads (a source's columns as its database describes
    /// them), or, for a job with ClickHouse SQL only, as the server answers
    /// for its statement over `partition`.
    async fn planned(
        &self,
        job: &str,
        partition: Partition,
    ) -> Result<arrow::datatypes::SchemaRef, JobError> {
        // The lock is held for lookups only: describing a source or asking
        // the server waits on the network, and other runs must not wait on
        // it (two runs may plan at once; the answers are the same).
        if let Some(schema) = self.planned.lock().await.get(job).cloned() {
            return Ok(schema);
        }
        let declared = &self.loaded.declared;
        let upstream = self.upstream_of(job);
        // What is not planned here: sources, and jobs with ClickHouse SQL only.
        let (mut known, mut unknown) = if upstream.iter().any(|d| d.declaration.source.is_some()) {
            crate::source::describe_all(declared).await
        } else {
            Default::default()
        };
        for d in upstream.iter().filter(|d| d.clickhouse_only()) {
            if let Some(schema) = self.planned.lock().await.get(&d.name).cloned() {
                known.insert(d.name.clone(), schema);
                continue;
            }
            let (Some((engine, _)), Some(spec)) =
                (&self.clickhouse, self.loaded.catalog.job(&d.name))
            else {
                unknown.push((d.name.clone(), "it runs on ClickHouse only".into()));
                continue;
            };
            match engine.statement_columns(spec, d, partition).await {
                Ok(schema) => {
                    known.insert(d.name.clone(), schema);
                }
                Err(e) => unknown.push((d.name.clone(), e.to_string())),
            }
        }
        let (schemas, problems) = crate::declared::plan(declared, &known).await;
        let mut cache = self.planned.lock().await;
        for (name, schema) in known.into_iter().chain(schemas) {
            cache.entry(name).or_insert(schema);
        }
        cache.get(job).cloned().ok_or_else(|| {
            let mut why: Vec<String> = problems
                .iter()
                .filter(|p| p.job_name() == Some(job))
                .map(|p| p.to_string())
                .collect();
            why.extend(
                unknown
                    .iter()
                    .map(|(input, e)| format!("the columns of {input}: {e}")),
            );
            JobError::query(format!(
                "the SQL of {job} does not plan{}",
                if why.is_empty() {
                    String::new()
                } else {
                    format!(": {}", why.join("; "))
                }
            ))
        })
    }

    /// `job`'s declaration and those of everything it reads, directly or
    /// through other jobs.
    fn upstream_of(&self, job: &str) -> Vec<&crate::declared::DeclaredJob> {
        let declared = &self.loaded.declared;
        let mut found = Vec::new();
        let mut todo = vec![job];
        let mut seen = std::collections::BTreeSet::new();
        while let Some(name) = todo.pop() {
            if !seen.insert(name) {
                continue;
            }
            if let Some(d) = declared.iter().find(|d| d.name == name) {
                todo.extend(d.declaration.inputs.iter().map(String::as_str));
                found.push(d);
            }
        }
        found
    }

    /// Evaluates the rules that read `job`'s `day` and saves what they
    /// found. A failure fails the run, which is retried like any other.
    async fn evaluate_rules(&self, job: &str, day: Partition) -> Result<(), JobError> {
        for rule in findings::rules_after(job) {
            let Some(found) = findings::evaluate(&self.lake, &self.rules, rule, day).await? else {
                continue;
            };
            let saved = self
                .store
                .save_findings(rule, day.start_ms, (self.clock)(), &found)
                .await
                .map_err(|e| JobError::write(format_args!("the findings of {rule}"), e))?;
            tracing::debug!(rule, day = %day, found = found.len(), saved, "rollup rule evaluated");
        }
        Ok(())
    }
}

impl Executor for Jobs {
    fn run<'a>(&'a self, job: &'a JobSpec, partition: Partition) -> RunFuture<'a> {
        Box::pin(async move {
            if job.name == RETENTION {
                return crate::retention::run(
                    &self.retention,
                    &self.lake_root,
                    self.clickhouse.as_ref().map(|(engine, _)| engine.client()),
                    &crate::retention::TeamOutput::of(self.loaded.catalog.jobs()),
                    &self.store,
                    partition,
                )
                .await;
            }
            if let Some(declared) = self.loaded.team_job(&job.name) {
                if let Some(source) = &declared.declaration.source {
                    let rows = crate::source::fetch(&job.name, source, partition).await?;
                    let fetched = format!(
                        "the source's query returned {} row(s){}",
                        rows.num_rows(),
                        match &source.cursor {
                            Some(c) => format!(" with {c} in {partition}"),
                            None => " (a snapshot)".into(),
                        }
                    );
                    let mut output = match source.feeds {
                        Some(SourceFeed::MerchantDirectory) => {
                            self.directory.apply(&job.name, partition, &rows).await?
                        }
                        None => {
                            let mut output = self
                                .lake
                                .write(&job.name, partition, vec![rows.clone()])
                                .await?;
                            if let Some((engine, _)) = &self.clickhouse {
                                output
                                    .messages
                                    .extend(engine.land_source(&job.name, partition, &rows).await?);
                            }
                            output
                        }
                    };
                    output.messages.insert(0, fetched);
                    return Ok(output);
                }
                let mut embedded_because = None;
                if let Some((engine, on_clickhouse)) = &self.clickhouse {
                    match on_clickhouse.get(&job.name) {
                        Some(None) => {
                            let schema = self.planned(&job.name, partition).await?;
                            let mut filled = Vec::new();
                            for input in &declared.declaration.inputs {
                                if let (Some(_), Some(up)) =
                                    (self.loaded.team_job(input), self.loaded.catalog.job(input))
                                {
                                    let partitions = job.input_partitions(partition, up.grain);
                                    filled.extend(engine.fill_from_lake(input, &partitions).await?);
                                }
                            }
                            let mut output = engine
                                .run_declared(job, declared, schema, partition)
                                .await?;
                            output.messages.splice(0..0, filled);
                            return Ok(output);
                        }
                        Some(Some(why)) => embedded_because = Some(why),
                        None => {}
                    }
                }
                let grain_of = |name: &str| self.loaded.catalog.job(name).map(|j| j.grain);
                let mut output = self
                    .lake
                    .run_declared(job, declared, &grain_of, partition)
                    .await?;
                if let Some(why) = embedded_because {
                    output.messages.insert(
                        0,
                        format!("ran on the embedded engine, not ClickHouse: {why}"),
                    );
                }
                return Ok(output);
            }
            let output = self.rollups.run(job, partition).await?;
            self.evaluate_rules(&job.name, partition).await?;
            Ok(output)
        })
    }

    /// A team's SQL job or a product rollup: the columns its SQL gives
    /// (planned over empty inputs), no rows, in the lake; a file already
    /// there (a run that wrote and then failed) is kept. Sources and the
    /// lake's upkeep have none.
    fn empty_output<'a>(&'a self, job: &'a JobSpec, partition: Partition) -> EmptyFuture<'a> {
        Box::pin(async move {
            let Some(declared) = self.loaded.declared.iter().find(|d| d.name == job.name) else {
                return Ok(None);
            };
            if declared.declaration.source.is_some() || declared.declaration.builtin {
                return Ok(None);
            }
            let path = self.lake.output_path(&job.name, partition);
            if self.lake.exists(&path).await? {
                return Ok(Some(Output {
                    rows: 0,
                    fingerprint: format!("marked-{}-{}", job.name, partition),
                    messages: vec![format!(
                        "it never recorded an output; the file a failed run left at {} is kept",
                        path.display()
                    )],
                }));
            }
            let schema = if declared.is_product_rollup() {
                Embedded::output_schema(&job.name).await?
            } else {
                self.planned(&job.name, partition).await?
            };
            let empty = arrow::record_batch::RecordBatch::new_empty(schema);
            let mut output = self.lake.write(&job.name, partition, vec![empty]).await?;
            output.messages.push(format!(
                "it never wrote an output: one with its columns and no rows was written at {}, \
                 so what reads it sees no rows for it",
                path.display()
            ));
            Ok(Some(output))
        })
    }
}

/// The ClickHouse client when the rollups run there: `engine = "clickhouse"`,
/// or `"auto"` with `clickhouse.url` set. `None` means the embedded engine.
pub fn engine(config: &Config) -> Option<ClickHouse> {
    match config.scheduler.engine {
        RollupEngine::Embedded => None,
        RollupEngine::Auto | RollupEngine::Clickhouse => {
            ClickHouse::from_config(&config.clickhouse)
        }
    }
}

/// The lake and a runner over the configured jobs and `store` (opened
/// with [`MetaStore::open`]), as the scheduler and the `jobs` commands use
/// them.
pub fn open(
    config: &Config,
    store: MetaStore,
    clock: Clock,
) -> Result<(Runner, Lake), SchedulerError> {
    open_with_refused(config, store, clock).map(|(runner, lake, _)| (runner, lake))
}

/// [`open`], and the teams' declarations refused, each problem with its
/// file and line (each is also logged as a warning).
pub fn open_with_refused(
    config: &Config,
    store: MetaStore,
    clock: Clock,
) -> Result<(Runner, Lake, Vec<String>), SchedulerError> {
    let receivers = config.alerting.receiver_names();
    let ch = engine(config);
    let loaded = crate::catalog::load(
        &config.scheduler,
        &config.retention,
        &receivers,
        ch.is_some(),
        clock(),
    )
    .map_err(SchedulerError::Config)?;
    for problem in &loaded.refused {
        tracing::warn!(%problem, "a job declaration was refused; the other jobs run");
    }
    let refused = loaded.refused_text();
    let catalog = loaded.catalog.clone();
    let lake = Lake::from_config(config)?;
    // Minutes online and the stores' time zones come from the store.
    let side: Arc<dyn crate::side::SideInputs> = Arc::new(store.clone());
    let rollups: Arc<dyn Executor> = match &ch {
        Some(ch) => Arc::new(ClickHouseEngine::with_side_inputs(
            ch.clone(),
            lake.clone(),
            side.clone(),
        )),
        None => Arc::new(Embedded::with_side_inputs(lake.clone(), side.clone())),
    };
    // The teams' jobs follow the rollups onto ClickHouse where they can.
    let clickhouse = ch.as_ref().map(|ch| {
        let on_clickhouse = crate::clickhouse_declared::on_clickhouse(&loaded.declared);
        for (job, why) in &on_clickhouse {
            match why {
                None => tracing::info!(job, "a team's job runs on ClickHouse"),
                Some(why) => tracing::info!(job, %why, "a team's job runs on the embedded engine"),
            }
        }
        (
            ClickHouseEngine::with_side_inputs(ch.clone(), lake.clone(), side.clone()),
            on_clickhouse,
        )
    });
    let directory = Directory {
        store: store.clone(),
        lake: Embedded::new(lake.clone()),
        clickhouse: ch,
        clock: clock.clone(),
    };
    let executor = Arc::new(Jobs {
        loaded,
        rollups,
        clickhouse,
        planned: tokio::sync::Mutex::new(BTreeMap::new()),
        directory,
        store: store.clone(),
        // The teams' store-local days read the terminals' zones.
        lake: Embedded::with_side_inputs(lake.clone(), side),
        rules: config.alerting.rollup_rules.clone(),
        clock: clock.clone(),
        retention: config.retention.clone(),
        lake_root: lake.clone(),
    });
    let name = config
        .scheduler
        .name
        .clone()
        .unwrap_or_else(|| tillwatch_config::process_name("scheduler"));
    Ok((
        Runner::new(catalog, store, executor, &name, clock).with_lease(config.scheduler.lease),
        lake,
        refused,
    ))
}

/// The lake's snapshot (ingest watermark, raw tables' fingerprints) for
/// the jobs answers of `tillwatch-query`.
struct LakeSnapshots {
    lake: Lake,
    stall_after: std::time::Duration,
}

impl tillwatch_query::jobs::Snapshots for LakeSnapshots {
    fn snapshot<'a>(
        &'a self,
        runner: &'a Runner,
    ) -> std::pin::Pin<Box<dyn Future<Output = tillwatch_scheduler::Snapshot> + Send + 'a>> {
        Box::pin(snapshot(runner, self.lake.clone(), self.stall_after))
    }
}

/// The jobs' answers over the configured metadata store and lake (the
/// jobs API of a process that serves HTTP).
pub fn job_queries(
    config: &Config,
    store: MetaStore,
) -> Result<tillwatch_query::jobs::JobQueries, SchedulerError> {
    let (runner, lake, refused) = open_with_refused(config, store.clone(), wall_clock())?;
    let stall_after = config.scheduler.watermark_stall_after;
    let queries = tillwatch_query::jobs::JobQueries::new(
        Arc::new(runner),
        Arc::new(LakeSnapshots { lake, stall_after }),
        stall_after,
    );
    if config.scheduler.jobs_dir.is_empty() {
        return Ok(queries);
    }
    // The teams' declarations change on disk: the answers follow them as
    // the scheduler does, within a tick (at most a second). Each change is
    // loaded (and its SQL planned) on a blocking thread here, never on a
    // request: a request takes the newest load there is.
    let every = config.scheduler.tick.min(std::time::Duration::from_secs(1));
    let mut changes = crate::declared::watch_stamp(config.scheduler.jobs_dir.clone(), every);
    let (tx, loads) = tokio::sync::watch::channel(None::<(Arc<Runner>, Vec<String>)>);
    let config = config.clone();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                () = tx.closed() => return,
                changed = changes.changed() => if changed.is_err() { return },
            }
            changes.borrow_and_update();
            let (config, store) = (config.clone(), store.clone());
            let loaded = tokio::task::spawn_blocking(move || {
                open_with_refused(&config, store, wall_clock())
            })
            .await;
            match loaded {
                Ok(Ok((runner, _, refused))) => {
                    tx.send_replace(Some((Arc::new(runner), refused)));
                }
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "could not load the changed job declarations")
                }
                Err(e) => tracing::warn!(error = %e, "loading the changed job declarations failed"),
            }
        }
    });
    let loads = std::sync::Mutex::new(loads);
    Ok(queries.with_reload(
        Arc::new(move || {
            let mut loads = loads
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if !loads.has_changed().unwrap_or(false) {
                return None;
            }
            loads.borrow_and_update().clone()
        }),
        refused,
    ))
}

pub fn wall_clock() -> Clock {
    Arc::new(|| UtcMillis::now().0)
}
