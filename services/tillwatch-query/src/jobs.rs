//! The jobs, as `tillwatch jobs` and the jobs page see them: each job's
//! settings and partitions by status, the ingest watermark and what is due
//! now, runs with their logs, a partition's lineage, and the progress of a
//! range. Also the one change the jobs API makes: marking a range to run
//! again (the running scheduler does the work).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use schemars::JsonSchema;
use serde::Serialize;
use tillwatch_meta::{JobPause, JobRunRow};
use tillwatch_scheduler::{Input, Partition, Progress, Reason, Runner, Snapshot, Target, ops};

use crate::QueryError;

/// Where the ingest watermark and the raw tables' fingerprints come from
/// (the lake, read by the rollups crate): the jobs answers need them and
/// this crate reads no lake listings of its own.
pub trait Snapshots: Send + Sync {
    fn snapshot<'a>(
        &'a self,
        runner: &'a Runner,
    ) -> Pin<Box<dyn Future<Output = Snapshot> + Send + 'a>>;
}

/// The jobs of one scheduler catalog over its metadata store. Cheap to
/// clone.
#[derive(Clone)]
pub struct JobQueries {
    runner: Arc<std::sync::RwLock<Arc<Runner>>>,
    reload: Option<Reload>,
    /// The job declarations refused when the jobs were last loaded.
    refused: Arc<std::sync::RwLock<Vec<String>>>,
    snapshots: Arc<dyn Snapshots>,
    stall_after: std::time::Duration,
}

/// A new runner, and the declarations refused, when the jobs changed
/// since the last call (the teams' declarations on disk); `None` when they
/// did not.
pub type Reload = Arc<dyn Fn() -> Option<(Arc<Runner>, Vec<String>)> + Send + Sync>;

/// A job's input: a raw table or another job.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum JobInput {
    Source(String),
    Job(String),
}

/// How many of a job's partitions are in each state.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct PartitionCounts {
    pub succeeded: usize,
    pub failed: usize,
    pub running: usize,
    pub queued: usize,
    /// Succeeded on inputs that have changed since: due again.
    pub stale: usize,
}

/// A job and its settings.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct JobInfo {
    pub name: String,
    /// The team that owns it.
    pub owner: String,
    /// What its output holds.
    pub description: String,
    /// The fingerprint of its code (SQL, inputs, grain) now; each run
    /// records the one it ran with.
    pub code: Option<String>,
    /// `hour`, `day`, `week` or `month`.
    pub grain: &'static str,
    pub schedule: String,
    pub start_ms: i64,
    pub end_ms: Option<i64>,
    /// Runs missed partitions from `start_ms` on.
    pub catch_up: bool,
    pub lateness_ms: i64,
    pub timeout_ms: i64,
    pub retries: u32,
    pub concurrency: usize,
    /// Runs only in a daily window.
    pub window: bool,
    /// Set while an operator has it paused: none of its partitions start.
    pub paused: Option<Paused>,
    /// The receivers told of its failures and missed SLAs; empty: every
    /// receiver.
    pub notify: Vec<String>,
    /// How long its output is kept (a team's `keep`, `[retention]` for
    /// the product's tables); `null`: for good.
    pub output_kept_ms: Option<i64>,
    pub inputs: Vec<JobInput>,
    pub partitions: PartitionCounts,
}

/// Who paused a job, when and why.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct Paused {
    pub at_ms: i64,
    pub by: String,
    pub reason: String,
}

impl From<JobPause> for Paused {
    fn from(p: JobPause) -> Paused {
        Paused {
            at_ms: p.paused_at_ms,
            by: p.paused_by,
            reason: p.reason,
        }
    }
}

/// A partition the scheduler would start now, and why.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct DueRun {
    pub job: String,
    pub partition: String,
    /// `scheduled`, `retry`, `timed_out`, `stale` or `forced`.
    pub reason: &'static str,
    pub attempt: u32,
}

/// A gateway's ingest watermark.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct WriterState {
    /// The gateway's client id.
    pub writer: String,
    pub watermark_ms: i64,
    /// Too far behind the clock: left out of the ingest watermark, so it no
    /// longer holds the rollups back.
    pub stalled: bool,
}

/// The jobs page.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct JobsOverview {
    /// Every reading sampled before this has arrived; `null` before any
    /// gateway recorded one.
    pub watermark_ms: Option<i64>,
    pub watermark_stall_after_ms: i64,
    pub writers: Vec<WriterState>,
    pub jobs: Vec<JobInfo>,
    pub due: Vec<DueRun>,
    /// Teams' job declarations the scheduler refused, each problem with
    /// its file and line (the other jobs run).
    pub refused: Vec<String>,
}

/// One input partition a run read.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct RunInput {
    /// The raw table, for a source input.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// The upstream job, for a job input.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub job: Option<String>,
    pub partition: String,
    /// Empty for an input partition that held nothing.
    pub fingerprint: String,
}

/// A run of a job's partition.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct Run {
    /// What it did, in order, a line each.
    pub log: Vec<String>,
    pub run_id: String,
    pub job: String,
    pub partition: String,
    pub attempt: i64,
    /// `scheduled`, `retry`, `timed_out`, `lease_expired`, `stale`,
    /// `forced`, `code_changed`, or `marked` (recorded by an operator, not
    /// run).
    pub reason: String,
    /// Who marked it and why, for a `marked` run.
    pub note: Option<String>,
    /// The scheduler process that ran it.
    pub scheduler: String,
    pub started_ms: i64,
    pub finished_ms: Option<i64>,
    /// `running`, `succeeded` or `failed`.
    pub status: String,
    pub error: Option<String>,
    /// Rows written, once succeeded.
    pub rows: Option<i64>,
    pub inputs: Vec<RunInput>,
    pub inputs_fingerprint: String,
    pub output_fingerprint: Option<String>,
    /// The fingerprint of the job's code (declaration and SQL) it ran.
    pub code: Option<String>,
}

impl From<&JobRunRow> for Run {
    fn from(r: &JobRunRow) -> Run {
        Run {
            log: run_log(r),
            run_id: r.run_id.clone(),
            job: r.job.clone(),
            partition: r.partition_key.clone(),
            attempt: r.attempt,
            reason: r.reason.clone(),
            note: r.note.clone(),
            scheduler: r.scheduler.clone(),
            started_ms: r.started_ms,
            finished_ms: r.finished_ms,
            status: r.status.clone(),
            error: r.error.clone(),
            rows: r.rows_written,
            inputs: r
                .input_list()
                .into_iter()
                .map(|i| RunInput {
                    source: i.source,
                    job: i.job,
                    partition: i.partition,
                    fingerprint: i.fingerprint,
                })
                .collect(),
            inputs_fingerprint: r.inputs_fingerprint.clone(),
            output_fingerprint: r.output_fingerprint.clone(),
            code: r.code.clone(),
        }
    }
}

/// Runs, newest first.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct RunList {
    pub runs: Vec<Run>,
}

/// A partition of a job.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct PartitionRef {
    pub job: String,
    pub partition: String,
}

impl From<&Target> for PartitionRef {
    fn from(t: &Target) -> PartitionRef {
        PartitionRef {
            job: t.job.clone(),
            partition: t.partition.key(),
        }
    }
}

/// A downstream partition and its status.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct Downstream {
    pub job: String,
    pub partition: String,
    /// `null`: it never ran.
    pub status: Option<String>,
}

/// What is behind a partition and what reads it.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct Lineage {
    pub job: String,
    pub partition: String,
    /// `null` until it has been claimed.
    pub status: Option<String>,
    pub output_fingerprint: Option<String>,
    /// The run whose output is there now.
    pub current_run: Option<Run>,
    /// Every run of it, newest first.
    pub runs: Vec<Run>,
    /// The partitions of downstream jobs that read it, directly or not.
    pub downstream: Vec<Downstream>,
}

/// A range asked to run again.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct RangeRequest {
    /// Only what would run: nothing was marked.
    pub dry_run: bool,
    /// When it was marked; `null` for a dry run.
    pub requested_ms: Option<i64>,
    /// The partitions, upstream first.
    pub partitions: Vec<PartitionRef>,
}

/// Where a partition of a range stands.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct PartitionProgress {
    pub job: String,
    pub partition: String,
    /// `waiting`, `running`, `succeeded` or `failed`.
    pub state: &'static str,
    pub rows: Option<i64>,
    pub error: Option<String>,
}

/// Where a range stands.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct RangeProgress {
    /// Succeeded or failed.
    pub finished: usize,
    pub total: usize,
    pub partitions: Vec<PartitionProgress>,
}

/// A run's log: what it did, in order, from its record.
fn run_log(r: &JobRunRow) -> Vec<String> {
    let at = |ms: i64| {
        jiff::Timestamp::from_millisecond(ms)
            .map(|t| t.strftime("%Y-%m-%d %H:%M:%S").to_string() + "Z")
            .unwrap_or_else(|_| ms.to_string())
    };
    let inputs = r.input_list();
    let empty = inputs.iter().filter(|i| i.fingerprint.is_empty()).count();
    if let Some(note) = &r.note {
        // Recorded by hand: nothing ran.
        let mut log = vec![
            format!("{} {} {note}", at(r.started_ms), r.partition_key),
            format!(
                "{} over {} input partition(s), inputs fingerprint {}; output fingerprint {}",
                at(r.started_ms),
                inputs.len(),
                r.inputs_fingerprint,
                r.output_fingerprint.as_deref().unwrap_or("-")
            ),
        ];
        log.extend(
            r.messages
                .iter()
                .flat_map(|m| m.lines().map(str::to_string)),
        );
        return log;
    }
    let mut log = vec![
        format!(
            "{} {} started by {} (attempt {}, {})",
            at(r.started_ms),
            r.partition_key,
            r.scheduler,
            r.attempt,
            r.reason
        ),
        format!(
            "{} reading {} input partition(s), {} of them empty; inputs fingerprint {}",
            at(r.started_ms),
            inputs.len(),
            empty,
            if r.inputs_fingerprint.is_empty() {
                "-"
            } else {
                &r.inputs_fingerprint
            }
        ),
    ];
    if let Some(code) = &r.code {
        log.push(format!("{} running code {code}", at(r.started_ms)));
    }
    if let Some(end) = r.finished_ms {
        let took = humantime::format_duration(std::time::Duration::from_millis(
            end.saturating_sub(r.started_ms).max(0) as u64,
        ));
        if let Some(messages) = &r.messages {
            log.extend(messages.lines().map(str::to_string));
        }
        log.push(match (r.status.as_str(), &r.error) {
            ("succeeded", _) => format!(
                "{} succeeded in {took}: {} row(s) written, output fingerprint {}",
                at(end),
                r.rows_written.unwrap_or(0),
                r.output_fingerprint.as_deref().unwrap_or("-")
            ),
            (_, Some(e)) => format!("{} {} after {took}: {e}", at(end), r.status),
            (status, None) => format!("{} {status} after {took}", at(end)),
        });
    } else {
        log.push("still running".to_string());
    }
    log
}

/// A partition key (`2026-11-22` or `2026-11-22T06`) for `param`.
pub fn partition(param: &'static str, text: &str) -> Result<Partition, QueryError> {
    text.parse()
        .map_err(|e: tillwatch_scheduler::PartitionKeyError| {
            QueryError::invalid(param, e.to_string())
        })
}

fn limit(value: Option<u32>, max: u32) -> Result<u32, QueryError> {
    let v = value.unwrap_or(50);
    if (1..=max).contains(&v) {
        Ok(v)
    } else {
        Err(QueryError::invalid(
            "limit",
            format!("must be 1 to {max}, not {v}"),
        ))
    }
}

impl JobQueries {
    pub fn new(
        runner: Arc<Runner>,
        snapshots: Arc<dyn Snapshots>,
        stall_after: std::time::Duration,
    ) -> JobQueries {
        JobQueries {
            runner: Arc::new(std::sync::RwLock::new(runner)),
            reload: None,
            refused: Arc::default(),
            snapshots,
            stall_after,
        }
    }

    /// Asks `reload` before each answer whether the jobs changed;
    /// `refused` are the declarations refused by the first load.
    pub fn with_reload(mut self, reload: Reload, refused: Vec<String>) -> JobQueries {
        self.reload = Some(reload);
        self.refused = Arc::new(std::sync::RwLock::new(refused));
        self
    }

    /// The runner over the jobs as they are now.
    fn runner(&self) -> Arc<Runner> {
        if let Some(reload) = &self.reload
            && let Some((new, refused)) = reload()
        {
            *self
                .runner
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = new;
            *self
                .refused
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = refused;
        }
        self.runner
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    fn known(&self, job: &str) -> Result<(), QueryError> {
        let runner = self.runner();
        if runner.catalog().job(job).is_some() {
            return Ok(());
        }
        let names: Vec<&str> = runner
            .catalog()
            .jobs()
            .iter()
            .map(|j| j.name.as_str())
            .collect();
        Err(QueryError::NotFound(format!(
            "no job {job:?}; the jobs are {}",
            names.join(", ")
        )))
    }

    /// Jobs, settings, partitions by status, the ingest watermark, what is
    /// due now and why.
    pub async fn overview(&self) -> Result<JobsOverview, QueryError> {
        let runner = self.runner();
        let runner = &runner;
        let snap = self.snapshots.snapshot(runner).await;
        let rows = runner.store().job_partitions().await?;
        let due = runner
            .due(snap.watermark_ms, &|t, p| snap.fingerprint(t, p))
            .await?;
        let mut paused: std::collections::HashMap<String, Paused> = runner
            .store()
            .paused_jobs()
            .await?
            .into_iter()
            .map(|p| (p.job.clone(), p.into()))
            .collect();
        let jobs = runner
            .catalog()
            .jobs()
            .iter()
            .map(|job| {
                let count = |status: &str| {
                    rows.iter()
                        .filter(|r| r.job == job.name && r.status == status)
                        .count()
                };
                JobInfo {
                    name: job.name.clone(),
                    owner: job.owner.clone(),
                    description: job.description.clone(),
                    code: job.code.clone(),
                    grain: job.grain.as_str(),
                    schedule: job.schedule.as_str().to_string(),
                    start_ms: job.start_ms,
                    end_ms: job.end_ms,
                    catch_up: job.catch_up,
                    lateness_ms: job.lateness_ms,
                    timeout_ms: job.timeout_ms,
                    retries: job.retries,
                    concurrency: job.concurrency,
                    window: job.window.is_some(),
                    paused: paused.remove(&job.name),
                    notify: job.notify.clone(),
                    output_kept_ms: job.output_kept_ms,
                    inputs: job
                        .inputs
                        .iter()
                        .map(|i| match i {
                            Input::Source(t) => JobInput::Source(t.clone()),
                            Input::Job(j) => JobInput::Job(j.clone()),
                        })
                        .collect(),
                    partitions: PartitionCounts {
                        succeeded: count("succeeded"),
                        failed: count("failed"),
                        running: count("running"),
                        queued: count("queued"),
                        stale: due
                            .iter()
                            .filter(|t| t.job == job.name && t.reason == Reason::Stale)
                            .count(),
                    },
                }
            })
            .collect();
        Ok(JobsOverview {
            watermark_ms: (snap.watermark_ms != i64::MIN).then_some(snap.watermark_ms),
            watermark_stall_after_ms: i64::try_from(self.stall_after.as_millis())
                .unwrap_or(i64::MAX),
            writers: snap
                .writers
                .iter()
                .map(|w| WriterState {
                    writer: w.writer.clone(),
                    watermark_ms: w.at_ms,
                    stalled: w.stalled,
                })
                .collect(),
            jobs,
            due: due
                .iter()
                .map(|t| DueRun {
                    job: t.job.clone(),
                    partition: t.partition.key(),
                    reason: t.reason.as_str(),
                    attempt: t.attempt,
                })
                .collect(),
            refused: self
                .refused
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone(),
        })
    }

    /// A job's runs (of one partition), newest first; `limit` 1 to 10,000
    /// (default 50).
    pub async fn job_runs(
        &self,
        job: &str,
        partition: Option<&str>,
        limit: Option<u32>,
    ) -> Result<RunList, QueryError> {
        self.known(job)?;
        if let Some(p) = partition {
            self::partition("partition", p)?;
        }
        let limit = self::limit(limit, 10_000)?;
        let runs = self
            .runner()
            .store()
            .job_runs(Some(job), partition, limit)
            .await?;
        Ok(RunList {
            runs: runs.iter().map(Run::from).collect(),
        })
    }

    /// Runs of every job (or one), newest first, of one status (`running`,
    /// `succeeded` or `failed`) if given; `limit` 1 to 1,000 (default 50).
    pub async fn runs(
        &self,
        job: Option<&str>,
        owner: Option<&str>,
        status: Option<&str>,
        limit: Option<u32>,
    ) -> Result<RunList, QueryError> {
        if let Some(job) = job {
            self.known(job)?;
        }
        let runner = self.runner();
        let owned = |name: &str| {
            owner.is_none_or(|o| runner.catalog().job(name).is_some_and(|j| j.owner == o))
        };
        if let Some(status) = status
            && !["running", "succeeded", "failed"].contains(&status)
        {
            return Err(QueryError::invalid(
                "status",
                format!("{status:?} is not running, succeeded or failed"),
            ));
        }
        let limit = self::limit(limit, 1000)?;
        // Newest first, filtered here: read more while a status or owner
        // filter leaves the page short.
        let mut fetch = limit;
        let found = loop {
            let runs = runner.store().job_runs(job, None, fetch).await?;
            let exhausted = runs.len() < fetch as usize;
            let found: Vec<Run> = runs
                .iter()
                .filter(|r| status.is_none_or(|st| st == r.status) && owned(&r.job))
                .take(limit as usize)
                .map(Run::from)
                .collect();
            if found.len() == limit as usize || exhausted || fetch >= 50_000 {
                break found;
            }
            fetch = fetch.saturating_mul(8).min(50_000);
        };
        Ok(RunList { runs: found })
    }

    /// The runs and inputs behind a partition, and its downstream.
    pub async fn lineage(&self, job: &str, partition: &str) -> Result<Lineage, QueryError> {
        self.known(job)?;
        let target = Target {
            job: job.to_string(),
            partition: self::partition("partition", partition)?,
        };
        let l = ops::lineage(self.runner().store(), self.runner().catalog(), &target).await?;
        Ok(Lineage {
            job: l.target.job.clone(),
            partition: l.target.partition.key(),
            status: l.record.as_ref().map(|r| r.status.clone()),
            output_fingerprint: l.record.as_ref().and_then(|r| r.output_fingerprint.clone()),
            current_run: l.current.as_ref().map(Run::from),
            runs: l.runs.iter().map(Run::from).collect(),
            downstream: l
                .downstream
                .iter()
                .map(|(t, status)| Downstream {
                    job: t.job.clone(),
                    partition: t.partition.key(),
                    status: status.clone(),
                })
                .collect(),
        })
    }

    /// The partitions of `job` (and downstream) from the partition `from`
    /// through `to` that have ended within the job's life.
    fn targets(
        &self,
        job: &str,
        from: &str,
        to: &str,
        downstream: bool,
    ) -> Result<Vec<Target>, QueryError> {
        self.known(job)?;
        let first = self::partition("from", from)?;
        let last = self::partition("to", to)?;
        if last.end_ms() <= first.start_ms {
            return Err(QueryError::invalid(
                "to",
                format!("{last} comes before from {first}"),
            ));
        }
        ops::targets(
            self.runner().catalog(),
            job,
            first.start_ms,
            last.end_ms(),
            downstream,
            self.runner().now(),
        )
        .map_err(|e| QueryError::invalid("from", e.to_string()))
    }

    /// Pauses `job` (see [`Paused`]); a paused job stays paused with its
    /// first reason. The reason must say something.
    pub async fn pause(&self, job: &str, by: &str, reason: &str) -> Result<Paused, QueryError> {
        self.known(job)?;
        let reason = ops::reason(reason).map_err(|e| QueryError::invalid("reason", e))?;
        let runner = self.runner();
        runner
            .store()
            .pause_job(&JobPause {
                job: job.to_string(),
                paused_at_ms: runner.now(),
                paused_by: by.to_string(),
                reason: reason.to_string(),
            })
            .await?;
        let pause = runner
            .store()
            .paused_jobs()
            .await?
            .into_iter()
            .find(|p| p.job == job)
            .ok_or_else(|| QueryError::NotFound(format!("{job} was resumed meanwhile")))?;
        Ok(pause.into())
    }

    /// Marks `partition` of `job` succeeded without running it (see
    /// `Runner::mark_succeeded`), by `by` for `reason`: the run it recorded.
    pub async fn mark_succeeded(
        &self,
        job: &str,
        partition: &str,
        by: &str,
        reason: &str,
    ) -> Result<Run, QueryError> {
        self.known(job)?;
        let partition = self::partition("partition", partition)?;
        let reason = ops::reason(reason).map_err(|e| QueryError::invalid("reason", e))?;
        let runner = self.runner();
        let snap = self.snapshots.snapshot(&runner).await;
        let run_id = runner
            .mark_succeeded(
                job,
                partition,
                &format!("marked succeeded by {by}: {reason}"),
                snap.watermark_ms,
                &|t, p| snap.fingerprint(t, p),
            )
            .await?
            .map_err(|why| QueryError::invalid("partition", why))?;
        let run = runner
            .store()
            .job_run(&run_id)
            .await?
            .ok_or_else(|| QueryError::NotFound(format!("run {run_id}")))?;
        Ok(Run::from(&run))
    }

    /// Resumes `job`; whether it was paused.
    pub async fn resume(&self, job: &str) -> Result<bool, QueryError> {
        self.known(job)?;
        Ok(self.runner().store().resume_job(job).await?)
    }

    /// Marks the range to run again (upstream first), or with `dry_run`
    /// only says what would run.
    pub async fn request_range(
        &self,
        job: &str,
        from: &str,
        to: &str,
        downstream: bool,
        dry_run: bool,
    ) -> Result<RangeRequest, QueryError> {
        let targets = self.targets(job, from, to, downstream)?;
        let partitions = targets.iter().map(PartitionRef::from).collect();
        if dry_run {
            return Ok(RangeRequest {
                dry_run,
                requested_ms: None,
                partitions,
            });
        }
        if targets.is_empty() {
            return Err(QueryError::invalid(
                "from",
                format!(
                    "nothing to run: no partition of {job} in that range has ended within the job's start and end"
                ),
            ));
        }
        let now = self.runner().now();
        ops::request(self.runner().store(), &targets, now).await?;
        Ok(RangeRequest {
            dry_run,
            requested_ms: Some(now),
            partitions,
        })
    }

    /// Where each partition of a range stands, counting runs started from
    /// `since_ms` on.
    pub async fn progress(
        &self,
        job: &str,
        from: &str,
        to: &str,
        downstream: bool,
        since_ms: i64,
    ) -> Result<RangeProgress, QueryError> {
        let targets = self.targets(job, from, to, downstream)?;
        let states = ops::progress(
            self.runner().store(),
            self.runner().catalog(),
            &targets,
            since_ms,
        )
        .await?;
        let finished = states.iter().filter(|p| p.finished()).count();
        let partitions = targets
            .iter()
            .zip(&states)
            .map(|(t, p)| {
                let (state, rows, error) = match p {
                    Progress::Waiting => ("waiting", None, None),
                    Progress::Running => ("running", None, None),
                    Progress::Succeeded { rows } => ("succeeded", *rows, None),
                    Progress::Failed { error } => ("failed", None, Some(error.clone())),
                };
                PartitionProgress {
                    job: t.job.clone(),
                    partition: t.partition.key(),
                    state,
                    rows,
                    error,
                }
            })
            .collect();
        Ok(RangeProgress {
            finished,
            total: targets.len(),
            partitions,
        })
    }
}
