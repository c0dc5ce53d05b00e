//! What operators do with jobs: backfill and clear a range (optionally with
//! everything downstream), follow a backfill's progress, ask where a
//! partition came from and what depends on it; and the scheduler's own
//! loop, which the backfill shares.
//!
//! A backfill or clear marks its partitions in the metadata store
//! ([`MetaStore::request_runs`]); the planner then runs them like any other
//! due partition (upstream first, inputs complete, the run window open), and
//! a claim still decides who runs each one. So a backfill driven from the
//! command line and a scheduler service running at the same time share the
//! work and never run one partition twice.

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use tillwatch_meta::{JobPartitionRow, JobRunRow, MetaError, MetaStore};

use crate::interval::Partition;

/// An operator's reason for a pause or a mark, trimmed, or what is wrong
/// with it: it is shown to everyone, so it must say something, briefly.
pub fn reason(text: &str) -> Result<&str, &'static str> {
    let text = text.trim();
    if text.is_empty() || text.chars().count() > 500 {
        return Err("say why, in 1 to 500 characters: it is shown with who did it");
    }
    Ok(text)
}
use crate::job::{Catalog, Input};
use crate::plan::Task;
use crate::runner::{Ran, Runner};

/// What the scheduler knows about the raw data at one moment.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Every reading sampled before this has arrived (up to lateness).
    pub watermark_ms: i64,
    /// (raw table, hour) → fingerprint of its files; absent means no files.
    pub fingerprints: HashMap<(String, i64), String>,
    /// Each gateway's watermark record, and whether it stalled (left out
    /// of `watermark_ms`).
    pub writers: Vec<crate::watermark::WriterWatermark>,
}

impl Snapshot {
    pub fn fingerprint(&self, table: &str, hour: Partition) -> String {
        self.fingerprints
            .get(&(table.to_string(), hour.start_ms))
            .cloned()
            .unwrap_or_default()
    }
}

/// One partition of one job.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Target {
    pub job: String,
    pub partition: Partition,
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.job, self.partition)
    }
}

/// Why a backfill or clear range names nothing to run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RangeError {
    #[error("no job {job:?}; the jobs are {}", known.join(", "))]
    UnknownJob { job: String, known: Vec<String> },
    #[error("the range is empty: --to must come after --from")]
    Empty,
}

/// The partitions a backfill or clear of `job` over `[from_ms, to_ms)`
/// covers, upstream first and each job's oldest first: the job's own
/// partitions overlapping the range and, with `downstream`, every
/// downstream job's partitions (of its own grain) overlapping it. Each job
/// keeps to its start and end dates, and only partitions that have ended
/// by `now_ms` are taken.
pub fn targets(
    catalog: &Catalog,
    job: &str,
    from_ms: i64,
    to_ms: i64,
    downstream: bool,
    now_ms: i64,
) -> Result<Vec<Target>, RangeError> {
    let root = catalog.job(job).ok_or_else(|| RangeError::UnknownJob {
        job: job.to_string(),
        known: catalog.jobs().iter().map(|j| j.name.clone()).collect(),
    })?;
    if to_ms <= from_ms {
        return Err(RangeError::Empty);
    }
    let mut jobs = vec![root];
    if downstream {
        jobs.extend(catalog.downstream(job));
    }
    let mut out = Vec::new();
    for j in jobs {
        // Only the job's life up to now can hold a partition: walking just
        // that keeps a range of any width (year 1 to 9999) cheap.
        let lo = from_ms.max(j.start_ms);
        let hi = to_ms.min(now_ms).min(j.end_ms.unwrap_or(i64::MAX));
        let mut p = Partition::containing(j.grain, lo);
        while p.start_ms < hi {
            if p.start_ms >= j.start_ms
                && p.end_ms() <= now_ms
                && j.end_ms.is_none_or(|end| p.end_ms() <= end)
            {
                out.push(Target {
                    job: j.name.clone(),
                    partition: p,
                });
            }
            p = p.next();
        }
    }
    Ok(out)
}

/// Marks `targets` to run again (see [`MetaStore::request_runs`]).
pub async fn request(store: &MetaStore, targets: &[Target], at_ms: i64) -> Result<(), MetaError> {
    let keys: Vec<(String, String, &'static str, i64)> = targets
        .iter()
        .map(|t| {
            (
                t.job.clone(),
                t.partition.key(),
                t.partition.grain.as_str(),
                t.partition.start_ms,
            )
        })
        .collect();
    let borrowed: Vec<(&str, &str, &str, i64)> = keys
        .iter()
        .map(|(j, k, g, s)| (j.as_str(), k.as_str(), *g, *s))
        .collect();
    store.request_runs(&borrowed, at_ms).await
}

/// Where one requested partition stands.
#[derive(Debug, Clone, PartialEq)]
pub enum Progress {
    /// Not started since it was requested (inputs incomplete, upstream
    /// first, the window closed, or no room).
    Waiting,
    Running,
    Succeeded {
        rows: Option<i64>,
    },
    /// Failed with no retries left.
    Failed {
        error: String,
    },
}

impl Progress {
    pub fn finished(&self) -> bool {
        matches!(self, Progress::Succeeded { .. } | Progress::Failed { .. })
    }
}

/// How each of `targets`, requested at `since_ms`, stands now.
pub async fn progress(
    store: &MetaStore,
    catalog: &Catalog,
    targets: &[Target],
    since_ms: i64,
) -> Result<Vec<Progress>, MetaError> {
    let mut rows: HashMap<(String, String), JobPartitionRow> = HashMap::new();
    for row in store.job_partitions().await? {
        rows.insert((row.job.clone(), row.partition_key.clone()), row);
    }
    let mut out = Vec::with_capacity(targets.len());
    for t in targets {
        let Some(row) = rows.get(&(t.job.clone(), t.partition.key())) else {
            out.push(Progress::Waiting);
            continue;
        };
        let ran_since = row.forced_ms.is_none() && row.started_ms.is_some_and(|s| s >= since_ms);
        let retries = catalog.job(&t.job).map_or(0, |j| j.retries);
        out.push(match row.status.as_str() {
            _ if !ran_since => Progress::Waiting,
            "running" => Progress::Running,
            "succeeded" => {
                let run = match &row.run_id {
                    Some(id) => store.job_run(id).await?,
                    None => None,
                };
                Progress::Succeeded {
                    rows: run.and_then(|r| r.rows_written),
                }
            }
            "failed" if row.attempts > i64::from(retries) => {
                let run = match &row.run_id {
                    Some(id) => store.job_run(id).await?,
                    None => None,
                };
                Progress::Failed {
                    error: run.and_then(|r| r.error).unwrap_or_default(),
                }
            }
            _ => Progress::Running,
        });
    }
    Ok(out)
}

/// Runs rounds that start only `targets` until every one has finished,
/// reporting each run as it ends. Between rounds that started nothing (the
/// work is another scheduler's, or waits for its window or its inputs) it
/// waits `poll` and looks again.
pub async fn drive<F, Fut>(
    runner: &Runner,
    targets: &[Target],
    since_ms: i64,
    snapshot: F,
    poll: Duration,
    mut on_run: impl FnMut(&Ran, &[Progress]),
) -> Result<Vec<Progress>, MetaError>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Snapshot>,
{
    let wanted: std::collections::HashSet<(String, Partition)> = targets
        .iter()
        .map(|t| (t.job.clone(), t.partition))
        .collect();
    loop {
        let states = progress(runner.store(), runner.catalog(), targets, since_ms).await?;
        if states.iter().all(Progress::finished) {
            return Ok(states);
        }
        let snap = snapshot().await;
        let ran = runner
            .step_only(
                snap.watermark_ms,
                &|table, hour| snap.fingerprint(table, hour),
                &|t: &Task| wanted.contains(&(t.job.clone(), t.partition)),
            )
            .await?;
        if ran.is_empty() {
            tokio::time::sleep(poll).await;
            continue;
        }
        let states = progress(runner.store(), runner.catalog(), targets, since_ms).await?;
        for r in &ran {
            on_run(r, &states);
        }
    }
}

/// Where a partition came from and what depends on it.
#[derive(Debug, Clone)]
pub struct Lineage {
    pub target: Target,
    pub record: Option<JobPartitionRow>,
    /// Every run of it, newest first; each names the input partitions it
    /// read and their fingerprints.
    pub runs: Vec<JobRunRow>,
    /// The run whose output is there now.
    pub current: Option<JobRunRow>,
    /// The partitions of downstream jobs that read it, directly or not,
    /// with their status (`None`: never ran).
    pub downstream: Vec<(Target, Option<String>)>,
}

pub async fn lineage(
    store: &MetaStore,
    catalog: &Catalog,
    target: &Target,
) -> Result<Lineage, MetaError> {
    let key = target.partition.key();
    // The partitions first, then the runs: a run that finishes between the
    // two reads is then among the runs (so the output there now has its
    // run) while the record still says running, never the other way round
    // (a record that succeeded with no succeeded run to show for it).
    let rows = store.job_partitions().await?;
    let runs = store.job_runs(Some(&target.job), Some(&key), 1000).await?;
    let record = rows
        .iter()
        .find(|r| r.job == target.job && r.partition_key == key)
        .cloned();
    let current = runs.iter().find(|r| r.status == "succeeded").cloned();
    // Each downstream job's partitions that read this one or another
    // downstream partition, job by job (the catalog is upstream first).
    let mut reached: Vec<Target> = vec![target.clone()];
    let mut downstream = Vec::new();
    for job in catalog.downstream(&target.job) {
        let mut found: Vec<Partition> = Vec::new();
        for up in &reached {
            if !job
                .inputs
                .iter()
                .any(|i| matches!(i, Input::Job(j) if *j == up.job))
            {
                continue;
            }
            for p in job.reading(up.partition) {
                if !found.contains(&p) {
                    found.push(p);
                }
            }
        }
        found.sort();
        for p in found {
            let t = Target {
                job: job.name.clone(),
                partition: p,
            };
            let status = rows
                .iter()
                .find(|r| r.job == job.name && r.partition_key == p.key())
                .map(|r| r.status.clone());
            reached.push(t.clone());
            downstream.push((t, status));
        }
    }
    Ok(Lineage {
        target: target.clone(),
        record,
        runs,
        current,
        downstream,
    })
}

/// The scheduler's loop: a round every `tick` until `shutdown` resolves.
/// A round that fails (the metadata store is down) is logged and tried
/// again on the next tick. On shutdown, a round still running is dropped
/// and its runs are released for the next scheduler to retry at once.
pub async fn run_loop<F, Fut>(
    runner: &Runner,
    snapshot: F,
    tick: Duration,
    shutdown: impl Future<Output = ()>,
    mut on_run: impl FnMut(&Ran),
) -> Result<(), MetaError>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Snapshot>,
{
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let round = async {
            let snap = snapshot().await;
            runner
                .step(snap.watermark_ms, &|table, hour| {
                    snap.fingerprint(table, hour)
                })
                .await
        };
        // A round that ran something is followed by another at once: a
        // catch-up or backfill proceeds at the speed of the runs, not one
        // round per tick.
        let mut busy = false;
        tokio::select! {
            result = round => match result {
                Ok(ran) => {
                    busy = !ran.is_empty();
                    ran.iter().for_each(&mut on_run);
                }
                Err(e) => tracing::warn!(error = %e, "scheduler round failed; trying again next tick"),
            },
            () = &mut shutdown => {
                let released = runner.release_active().await?;
                if released > 0 {
                    tracing::info!(released, "stopped during runs; they are released for a retry");
                }
                return Ok(());
            }
        }
        if busy {
            continue;
        }
        tokio::select! {
            () = tokio::time::sleep(tick) => {}
            () = &mut shutdown => return Ok(()),
        }
    }
}
