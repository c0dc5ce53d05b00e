//! The scheduler service: the configured jobs, the metadata store, the
//! engine and the lake's watermark and fingerprints, in one loop.

use std::future::Future;
use std::sync::Arc;

use tillwatch_config::Config;
use tillwatch_domain::{Kind, UtcMillis};
use tillwatch_meta::MetaStore;
use tillwatch_scheduler::{Clock, Partition, Runner, Snapshot, ingest_watermark, ops};
use tillwatch_storage::{Lake, Table};

use tillwatch_clickhouse::ClickHouse;
use tillwatch_config::{RollupEngine, RollupRulesConfig};
use tillwatch_scheduler::{Executor, JobSpec, RunFuture};

use crate::clickhouse::ClickHouseEngine;
use crate::directory::{Directory, MERCHANT_DIRECTORY};
use crate::embedded::Embedded;
use crate::findings;

#[derive(Debug, thiserror::Error)]
pub enum SchedulerError {
    #[error("invalid configuration:\n  - {}", .0.join("\n  - "))]
    Config(Vec<String>),
    #[error(transparent)]
    Meta(#[from] tillwatch_meta::MetaError),
    #[error("data_dir {path}: {source}")]
    DataDir {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
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
    rollups: Arc<dyn Executor>,
    directory: Option<Directory>,
    store: MetaStore,
    lake: Embedded,
    rules: RollupRulesConfig,
    clock: Clock,
}

impl Jobs {
    /// Evaluates the rules that read `job`'s `day` and saves what they
    /// found. A failure fails the run, which is retried like any other.
    async fn evaluate_rules(&self, job: &str, day: Partition) -> Result<(), String> {
        for rule in findings::rules_after(job) {
            let Some(found) = findings::evaluate(&self.lake, &self.rules, rule, day).await? else {
                continue;
            };
            let saved = self
                .store
                .save_findings(rule, day.start_ms, (self.clock)(), &found)
                .await
                .map_err(|e| format!("saving the findings of {rule}: {e}"))?;
            tracing::info!(rule, day = %day, found = found.len(), saved, "rollup rule evaluated");
        }
        Ok(())
    }
}

impl Executor for Jobs {
    fn run<'a>(&'a self, job: &'a JobSpec, partition: Partition) -> RunFuture<'a> {
        Box::pin(async move {
            if job.name == MERCHANT_DIRECTORY {
                return match &self.directory {
                    Some(d) => d.import(partition).await,
                    None => Err("[scheduler.merchant_directory] is not configured".into()),
                };
            }
            let output = self.rollups.run(job, partition).await?;
            self.evaluate_rules(&job.name, partition).await?;
            Ok(output)
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

/// The store, the lake and a runner over the configured jobs, as the
/// scheduler and the `jobs` commands use them.
pub async fn open(config: &Config, clock: Clock) -> Result<(Runner, Lake), SchedulerError> {
    let catalog =
        crate::catalog::catalog(&config.scheduler, clock()).map_err(SchedulerError::Config)?;
    let url = config.metadata_url();
    if url.starts_with("sqlite:") {
        std::fs::create_dir_all(&config.data_dir).map_err(|source| SchedulerError::DataDir {
            path: config.data_dir.clone(),
            source,
        })?;
    }
    let store = MetaStore::connect(&url).await?;
    store.migrate().await?;
    let lake = Lake::from_config(config)?;
    let ch = engine(config);
    // Minutes online and the stores' time zones come from the store.
    let side: Arc<dyn crate::side::SideInputs> = Arc::new(store.clone());
    let rollups: Arc<dyn Executor> = match &ch {
        Some(ch) => Arc::new(ClickHouseEngine::with_side_inputs(
            ch.clone(),
            lake.clone(),
            side,
        )),
        None => Arc::new(Embedded::with_side_inputs(lake.clone(), side)),
    };
    let directory = config
        .scheduler
        .merchant_directory
        .clone()
        .map(|source| Directory {
            source,
            store: store.clone(),
            lake: Embedded::new(lake.clone()),
            clickhouse: ch,
            clock: clock.clone(),
        });
    let executor = Arc::new(Jobs {
        rollups,
        directory,
        store: store.clone(),
        lake: Embedded::new(lake.clone()),
        rules: config.alerting.rollup_rules.clone(),
        clock: clock.clone(),
    });
    let name = config
        .scheduler
        .name
        .clone()
        .unwrap_or_else(|| tillwatch_config::process_name("scheduler"));
    Ok((
        Runner::new(catalog, store, executor, &name, clock).with_lease(config.scheduler.lease),
        lake,
    ))
}

/// The rule the alerter pages with when a gateway's watermark stalls.
pub const INGEST_WATERMARK_STALLED: &str = "ingest_watermark_stalled";

/// Tells of gateways whose ingest watermark stalled or advances again: a
/// warning (and a note when it is back), the metrics, and the
/// `ingest_watermark_stalled` findings the alerter turns into alerts that
/// fire and resolve like any other.
struct StallWatch {
    store: MetaStore,
    /// The stalled gateways last told of; `None` until the store has
    /// taken a first report (so a restarted scheduler reports afresh).
    told: std::sync::Mutex<Option<std::collections::BTreeSet<String>>>,
}

impl StallWatch {
    async fn observe(&self, snap: &Snapshot, now_ms: i64, stall_after: std::time::Duration) {
        use crate::metrics as m;
        let lag = |at: i64| (now_ms.saturating_sub(at)) as f64 / 1000.0;
        if snap.watermark_ms != i64::MIN {
            metrics::gauge!(m::WATERMARK_LAG).set(lag(snap.watermark_ms));
        }
        for w in &snap.writers {
            metrics::gauge!(m::WRITER_LAG, "writer" => w.writer.clone()).set(lag(w.at_ms));
        }
        let stalled: std::collections::BTreeSet<String> = snap
            .writers
            .iter()
            .filter(|w| w.stalled)
            .map(|w| w.writer.clone())
            .collect();
        metrics::gauge!(m::WRITERS_STALLED).set(stalled.len() as f64);
        let told = self
            .told
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        if told.as_ref() == Some(&stalled) {
            return;
        }
        for w in snap.writers.iter().filter(|w| w.stalled) {
            if told.as_ref().is_none_or(|t| !t.contains(&w.writer)) {
                tracing::warn!(
                    writer = %w.writer,
                    watermark_ms = w.at_ms,
                    "gateway {} has not advanced its ingest watermark for more than {:?} \
                     (scheduler.watermark_stall_after); the rollups no longer wait for it, and \
                     what it delivers later is late data. If it was taken away for good, run \
                     `tillwatch gateway retire {}`",
                    w.writer,
                    stall_after,
                    w.writer
                );
            }
        }
        for writer in told.iter().flatten().filter(|w| !stalled.contains(*w)) {
            tracing::info!(%writer, "gateway {writer}'s ingest watermark advances again; the rollups wait for it again");
        }
        let findings: Vec<tillwatch_meta::FindingRecord> = snap
            .writers
            .iter()
            .filter(|w| w.stalled)
            .map(|w| tillwatch_meta::FindingRecord {
                rule: INGEST_WATERMARK_STALLED.into(),
                subject: format!("gateway:{}", w.writer),
                scope: "gateway".into(),
                labels: [("gateway".to_string(), w.writer.clone())].into(),
                summary: format!(
                    "gateway {} has not advanced its ingest watermark since {}; the rollups no longer wait for it",
                    w.writer,
                    jiff::Timestamp::from_millisecond(w.at_ms)
                        .map(|t| t.strftime("%Y-%m-%d %H:%M:%S UTC").to_string())
                        .unwrap_or_else(|_| w.at_ms.to_string())
                ),
                value: lag(w.at_ms),
                day_ms: now_ms,
            })
            .collect();
        match self
            .store
            .save_findings(INGEST_WATERMARK_STALLED, now_ms, now_ms, &findings)
            .await
        {
            Ok(_) => {
                *self
                    .told
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(stalled);
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot record the stalled gateways; retrying next tick")
            }
        }
    }
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
pub async fn job_queries(
    config: &Config,
) -> Result<tillwatch_query::jobs::JobQueries, SchedulerError> {
    let (runner, lake) = open(config, wall_clock()).await?;
    let stall_after = config.scheduler.watermark_stall_after;
    Ok(tillwatch_query::jobs::JobQueries::new(
        Arc::new(runner),
        Arc::new(LakeSnapshots { lake, stall_after }),
        stall_after,
    ))
}

pub fn wall_clock() -> Clock {
    Arc::new(|| UtcMillis::now().0)
}

/// Runs the scheduler until `shutdown` resolves.
pub async fn run_scheduler(
    config: &Config,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), SchedulerError> {
    let (runner, lake) = open(config, wall_clock()).await?;
    tracing::info!(
        jobs = runner.catalog().jobs().len(),
        engine = if engine(config).is_some() { "clickhouse" } else { "embedded" },
        tick = ?config.scheduler.tick,
        "scheduler running"
    );
    crate::metrics::describe();
    let stall_after = config.scheduler.watermark_stall_after;
    let watch = StallWatch {
        store: runner.store().clone(),
        told: Default::default(),
    };
    let observed = || async {
        let snap = snapshot(&runner, lake.clone(), stall_after).await;
        watch.observe(&snap, runner.now(), stall_after).await;
        snap
    };
    ops::run_loop(
        &runner,
        observed,
        config.scheduler.tick,
        shutdown,
        |ran| match &ran.result {
            Ok(out) => tracing::info!(
                job = %ran.task.job,
                partition = %ran.task.partition,
                reason = ?ran.task.reason,
                rows = out.rows,
                "run succeeded"
            ),
            Err(e) => tracing::warn!(
                job = %ran.task.job,
                partition = %ran.task.partition,
                attempt = ran.task.attempt,
                error = %e,
                "run failed"
            ),
        },
    )
    .await?;
    Ok(())
}

/// A partition key from the command line or the API: `2026-11-22` or
/// `2026-11-22T06`.
pub fn parse_partition(text: &str) -> Result<Partition, String> {
    Partition::parse_key(text).ok_or_else(|| {
        format!("{text:?} is not a partition: give a day (2026-11-22) or an hour (2026-11-22T06)")
    })
}
