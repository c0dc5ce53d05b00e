//! The scheduler process: rounds of the [`Runner`] every tick over the
//! snapshot its caller gives (the lake's watermark and fingerprints), each
//! run logged, and the gateways whose ingest watermark stalled told of (a
//! warning, the metrics, and findings the alerter pages on).
//!
//! `writer` labels are gateway client ids: one per gateway of the
//! deployment, a set the operator configures. Device, merchant and store
//! ids never become labels.

use std::future::Future;
use std::time::Duration;

use tillwatch_meta::{FindingRecord, MetaError, MetaStore};

use crate::ops::{self, Snapshot};
use crate::runner::Runner;

use metrics::{Unit, describe_gauge};

/// How far the ingest watermark the rollups wait for is behind the clock.
pub const WATERMARK_LAG: &str = "tillwatch_scheduler_ingest_watermark_lag_seconds";
/// How far each gateway's own watermark record is behind the clock.
pub const WRITER_LAG: &str = "tillwatch_scheduler_ingest_writer_lag_seconds";
/// Gateways whose watermark stalled and no longer holds the rollups back.
pub const WRITERS_STALLED: &str = "tillwatch_scheduler_ingest_writers_stalled";

/// Finished runs, by job and status (`succeeded`, `failed`).
pub const RUNS: &str = "tillwatch_scheduler_runs_total";
/// How long runs took, by job.
pub const RUN_DURATION: &str = "tillwatch_scheduler_run_duration_seconds";
/// Partitions each job could run now (started ones included): its
/// backlog, set every round.
pub const PARTITIONS_DUE: &str = "tillwatch_scheduler_partitions_due";

/// How far each job's newest succeeded partition ends behind the ingest
/// watermark, by job and owner.
pub const JOB_LAG: &str = "tillwatch_scheduler_job_lag_seconds";

/// Registers descriptions with the installed recorder. Idempotent.
fn describe() {
    metrics::describe_counter!(RUNS, Unit::Count, "Finished job runs, by job and status");
    metrics::describe_histogram!(
        RUN_DURATION,
        Unit::Seconds,
        "How long job runs took, by job"
    );
    describe_gauge!(
        PARTITIONS_DUE,
        Unit::Count,
        "Partitions each job could run now, started ones included (its backlog), by job"
    );
    describe_gauge!(
        JOB_LAG,
        Unit::Seconds,
        "How far each job's newest succeeded partition ends behind the ingest watermark, by job and owner"
    );
    describe_gauge!(
        WATERMARK_LAG,
        Unit::Seconds,
        "How far the ingest watermark (the slowest advancing gateway's) is behind the clock"
    );
    describe_gauge!(
        WRITER_LAG,
        Unit::Seconds,
        "How far each gateway's ingest watermark record is behind the clock, by writer"
    );
    describe_gauge!(
        WRITERS_STALLED,
        Unit::Count,
        "Gateways whose watermark has not advanced for scheduler.watermark_stall_after and no longer hold the rollups back"
    );
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
        use crate::process as m;
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
        let findings: Vec<FindingRecord> = snap
            .writers
            .iter()
            .filter(|w| w.stalled)
            .map(|w| FindingRecord {
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

/// The rule a job's partition that failed its last retry raises.
pub const JOB_FAILED: &str = "job_failed";
/// The rule a job's partition not done within its SLA raises.
pub const JOB_SLA_MISSED: &str = "job_sla_missed";

/// How far back partitions are checked against their job's SLA: older
/// ones that never succeeded are the failures' and backlog's business.
const SLA_LOOKBACK_MS: i64 = 2 * 86_400_000;

/// Tells the alerter of jobs' partitions that failed their last retry
/// (`job_failed`) and of those not done within their job's SLA
/// (`job_sla_missed`), as findings labelled with the job, its owner and
/// the partition. A partition that succeeds later leaves the set, and its
/// alert resolves. Findings are saved only when a set changes.
struct JobWatch {
    store: MetaStore,
    told: std::sync::Mutex<std::collections::BTreeMap<&'static str, Vec<String>>>,
}

impl JobWatch {
    fn finding(
        rule: &str,
        job: &crate::job::JobSpec,
        partition: &str,
        summary: String,
        value: f64,
        now_ms: i64,
    ) -> FindingRecord {
        let mut labels: std::collections::BTreeMap<String, String> = [
            ("job".to_string(), job.name.clone()),
            ("owner".to_string(), job.owner.clone()),
            ("partition".to_string(), partition.to_string()),
        ]
        .into();
        if !job.notify.is_empty() {
            // The receivers that deliver it (see the alerter's delivery).
            labels.insert(
                tillwatch_meta::NOTIFY_LABEL.to_string(),
                job.notify.join(","),
            );
        }
        FindingRecord {
            rule: rule.into(),
            subject: format!("job:{}/{partition}", job.name),
            scope: "job".into(),
            labels,
            summary,
            value,
            day_ms: now_ms,
        }
    }

    async fn observe(&self, runner: &Runner, now_ms: i64, watermark_ms: i64) {
        let rows = match runner.store().job_partitions().await {
            Ok(rows) => rows,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the jobs' partitions; job alerts wait a tick");
                return;
            }
        };
        // A paused job is late on purpose: its SLA waits until it resumes.
        let paused: std::collections::HashSet<String> = match runner.store().paused_jobs().await {
            Ok(p) => p.into_iter().map(|p| p.job).collect(),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the paused jobs; job alerts wait a tick");
                return;
            }
        };
        let mut failed = Vec::new();
        let mut late = Vec::new();
        for job in runner.catalog().jobs() {
            let mine: std::collections::HashMap<&str, &tillwatch_meta::JobPartitionRow> = rows
                .iter()
                .filter(|r| r.job == job.name)
                .map(|r| (r.partition_key.as_str(), r))
                .collect();
            let newest_done = mine
                .values()
                .filter(|r| r.status == "succeeded")
                .filter_map(|r| r.partition_key.parse::<crate::Partition>().ok())
                .map(|p| p.end_ms())
                .max();
            if let Some(end) = newest_done
                && watermark_ms != i64::MIN
            {
                metrics::gauge!(JOB_LAG, "job" => job.name.clone(), "owner" => job.owner.clone())
                    .set((watermark_ms.saturating_sub(end)).max(0) as f64 / 1000.0);
            }
            for r in mine.values() {
                if r.status == "failed" && r.attempts > i64::from(job.retries) {
                    let error = match &r.run_id {
                        Some(id) => runner
                            .store()
                            .job_run(id)
                            .await
                            .ok()
                            .flatten()
                            .and_then(|run| run.error)
                            .unwrap_or_default(),
                        None => String::new(),
                    };
                    failed.push(Self::finding(
                        JOB_FAILED,
                        job,
                        &r.partition_key,
                        format!(
                            "job {} (owner {}) failed {} after {} attempts: {error}",
                            job.name, job.owner, r.partition_key, r.attempts
                        ),
                        r.attempts as f64,
                        now_ms,
                    ));
                }
            }
            if (job.sla_ms.is_none() && job.sla_at.is_none()) || paused.contains(&job.name) {
                continue;
            }
            let until = job.end_ms.unwrap_or(i64::MAX).min(now_ms);
            let from = job.start_ms.max(now_ms.saturating_sub(SLA_LOOKBACK_MS));
            for partition in crate::Partition::range(job.grain, from, until) {
                let Some(deadline) = job.sla_deadline(partition) else {
                    continue;
                };
                if partition.start_ms < job.start_ms
                    || deadline > now_ms
                    || job.frozen(partition, now_ms)
                {
                    continue;
                }
                let key = partition.key();
                if mine
                    .get(key.as_str())
                    .is_some_and(|r| r.status == "succeeded")
                {
                    continue;
                }
                let behind = (now_ms - deadline) as f64 / 1000.0;
                late.push(Self::finding(
                    JOB_SLA_MISSED,
                    job,
                    &key,
                    format!(
                        "job {} (owner {}) has not finished {key} {}",
                        job.name,
                        job.owner,
                        job.sla_text()
                    ),
                    behind,
                    now_ms,
                ));
            }
        }
        for (rule, findings) in [(JOB_FAILED, failed), (JOB_SLA_MISSED, late)] {
            let subjects: Vec<String> = findings.iter().map(|f| f.subject.clone()).collect();
            let same = self
                .told
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .get(rule)
                == Some(&subjects);
            if same {
                continue;
            }
            match self
                .store
                .save_findings(rule, now_ms, now_ms, &findings)
                .await
            {
                Ok(_) => {
                    self.told
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .insert(rule, subjects);
                }
                Err(e) => {
                    tracing::warn!(error = %e, rule, "cannot record the jobs' findings; retrying next tick")
                }
            }
        }
    }
}

/// How the process runs: a round every `tick`; a gateway whose watermark
/// is `stall_after` behind no longer holds the rollups back.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    pub tick: Duration,
    pub stall_after: Duration,
}

/// Runs `runner` until `shutdown` resolves, each round over `snapshot()`.
pub async fn run<F, Fut>(
    runner: &Runner,
    snapshot: F,
    settings: Settings,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), MetaError>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Snapshot>,
{
    describe();
    for job in runner.catalog().jobs() {
        for status in ["succeeded", "failed"] {
            metrics::counter!(RUNS, "job" => job.name.clone(), "owner" => job.owner.clone(), "status" => status)
                .increment(0);
        }
    }
    let owner_of = |job: &str| {
        runner
            .catalog()
            .job(job)
            .map(|j| j.owner.clone())
            .unwrap_or_default()
    };
    let watch = StallWatch {
        store: runner.store().clone(),
        told: Default::default(),
    };
    let jobs = JobWatch {
        store: runner.store().clone(),
        told: Default::default(),
    };
    let observed = || async {
        let snap = snapshot().await;
        watch
            .observe(&snap, runner.now(), settings.stall_after)
            .await;
        jobs.observe(runner, runner.now(), snap.watermark_ms).await;
        snap
    };
    ops::run_loop(runner, observed, settings.tick, shutdown, |ran| {
        let status = if ran.result.is_ok() {
            "succeeded"
        } else {
            "failed"
        };
        let owner = owner_of(&ran.task.job);
        metrics::counter!(RUNS, "job" => ran.task.job.clone(), "owner" => owner.clone(), "status" => status)
            .increment(1);
        metrics::histogram!(RUN_DURATION, "job" => ran.task.job.clone(), "owner" => owner)
            .record(ran.took.as_secs_f64());
        log_run(ran);
    })
    .await
}

fn log_run(ran: &crate::runner::Ran) {
    match &ran.result {
        // Routine; failures are warnings.
        Ok(out) => tracing::debug!(
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
    }
}
