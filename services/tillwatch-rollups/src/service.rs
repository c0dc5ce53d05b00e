//! The scheduler service: the configured jobs, the metadata store, the
//! engine and the lake's watermark and fingerprints, in one loop.

use std::future::Future;
use std::sync::Arc;

use tillwatch_config::Config;
use tillwatch_domain::{Kind, UtcMillis};
use tillwatch_meta::MetaStore;
use tillwatch_scheduler::{Clock, Partition, Runner, Snapshot, ops};
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

/// The lake's raw data as the planner sees it: the ingest watermark and
/// every raw hour's fingerprint. Blocking (directory listings). A lake that
/// cannot be listed (a bucket that does not answer) gives a snapshot with
/// nothing due, never one where hours look empty and their rollups rerun
/// over nothing.
pub fn lake_snapshot(lake: &Lake) -> Snapshot {
    let mut fingerprints = std::collections::HashMap::new();
    for kind in Kind::ALL {
        let table = Table::Reading(kind);
        match lake.try_fingerprints(table) {
            Ok(hours) => {
                for (hour, fp) in hours {
                    fingerprints.insert((table.name().to_string(), hour.start().0), fp);
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not list the lake; nothing is due this tick");
                return Snapshot {
                    watermark_ms: i64::MIN,
                    fingerprints: Default::default(),
                };
            }
        }
    }
    Snapshot {
        watermark_ms: lake.watermark().unwrap_or(i64::MIN),
        fingerprints,
    }
}

/// [`lake_snapshot`] off the async workers.
pub async fn snapshot(lake: Lake) -> Snapshot {
    tokio::task::spawn_blocking(move || lake_snapshot(&lake))
        .await
        .unwrap_or_default()
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
    ops::run_loop(
        &runner,
        || snapshot(lake.clone()),
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
