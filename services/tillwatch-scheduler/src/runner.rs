//! The runner: plans from the store's state, claims each due partition
//! (so two schedulers never run one twice), runs it through an
//! [`Executor`] under the job's timeout, and records the outcome with its
//! lineage: the input partitions read, each with its fingerprint.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tillwatch_meta::{Claim, JobRunRow, MetaError, MetaStore};

use crate::error::JobError;
use crate::interval::{Grain, Partition};
use crate::job::{Catalog, Input, JobSpec};
use crate::plan::{PartitionRecord, Reason, Status, Task, World, plan, plan_with_backlog};

/// What a run wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct Output {
    pub rows: u64,
    /// Changes exactly when the output does: downstream runs again then.
    pub fingerprint: String,
    /// What the engine has to say of the run, a line each (the plan a
    /// declared job's SQL ran with, rows skipped by an import), kept on
    /// the run's record for its log.
    pub messages: Vec<String>,
}

pub type RunFuture<'a> = Pin<Box<dyn Future<Output = Result<Output, JobError>> + Send + 'a>>;

/// What [`Executor::empty_output`] wrote, if it wrote anything.
pub type EmptyFuture<'a> =
    Pin<Box<dyn Future<Output = Result<Option<Output>, JobError>> + Send + 'a>>;

/// Runs one partition of one job: an engine, or a test's stand-in.
pub trait Executor: Send + Sync {
    fn run<'a>(&'a self, job: &'a JobSpec, partition: Partition) -> RunFuture<'a>;

    /// Makes sure `partition` of `job` has an output, for a partition
    /// marked succeeded that never recorded one: one with the job's
    /// columns and no rows, so what reads it reads nothing for it rather
    /// than failing on a missing file. Its messages say what was done.
    /// `None` when the job has no such output (the default).
    fn empty_output<'a>(&'a self, _job: &'a JobSpec, _partition: Partition) -> EmptyFuture<'a> {
        Box::pin(async { Ok(None) })
    }
}

/// A source of time: the wall clock in production, injected in tests.
pub type Clock = Arc<dyn Fn() -> i64 + Send + Sync>;

/// One run this runner started, and how it ended.
#[derive(Debug, Clone)]
pub struct Ran {
    pub task: Task,
    pub run_id: String,
    pub result: Result<Output, JobError>,
    /// How long the run took, on the monotonic clock.
    pub took: Duration,
}

pub struct Runner {
    catalog: Catalog,
    store: MetaStore,
    executor: Arc<dyn Executor>,
    /// This scheduler's name, on its claims and runs.
    name: String,
    clock: Clock,
    /// How long a claim holds unrenewed; renewed every third of it.
    lease_ms: i64,
    /// Runs claimed and not yet recorded as finished.
    active: Mutex<HashSet<String>>,
}

/// How long a claim holds unless the runner is told otherwise (the
/// scheduler sets `scheduler.lease`).
const DEFAULT_LEASE: Duration = Duration::from_secs(30);

type Key = (String, Partition);

fn json_str(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

impl Runner {
    pub fn new(
        catalog: Catalog,
        store: MetaStore,
        executor: Arc<dyn Executor>,
        name: &str,
        clock: Clock,
    ) -> Runner {
        Runner {
            catalog,
            store,
            executor,
            name: name.to_string(),
            clock,
            lease_ms: DEFAULT_LEASE.as_millis() as i64,
            active: Mutex::new(HashSet::new()),
        }
    }

    /// Claims hold for `lease` unrenewed (at least 3 ms).
    pub fn with_lease(mut self, lease: Duration) -> Runner {
        self.lease_ms = (lease.as_millis() as i64).max(3);
        self
    }

    pub fn store(&self) -> &MetaStore {
        &self.store
    }

    /// The time on this runner's clock.
    pub fn now(&self) -> i64 {
        (self.clock)()
    }

    /// Records the runs a round was still running when it was dropped (the
    /// scheduler is stopping) as failed, due again at once, so the next
    /// scheduler retries them without waiting for their lease to expire.
    /// Their outputs were never replaced: the engines write whole or not at
    /// all.
    pub async fn release_active(&self) -> Result<usize, MetaError> {
        let active: Vec<String> = self
            .active
            .lock()
            .expect("never poisoned")
            .drain()
            .collect();
        let now = (self.clock)();
        for run_id in &active {
            self.store
                .finish_run(
                    run_id,
                    now,
                    Err(("the scheduler stopped during the run", Some(now))),
                )
                .await?;
        }
        Ok(active.len())
    }

    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    /// The recorded partitions, as the planner wants them, with the run
    /// each last had (a claim must name it).
    pub async fn states(
        &self,
    ) -> Result<(HashMap<Key, PartitionRecord>, HashMap<Key, String>), MetaError> {
        let mut states = HashMap::new();
        let mut runs = HashMap::new();
        for row in self.store.job_partitions().await? {
            let (Some(grain), Some(status)) = (
                Grain::parse(&row.grain),
                match row.status.as_str() {
                    "queued" => Some(Status::Queued),
                    "running" => Some(Status::Running),
                    "succeeded" => Some(Status::Succeeded),
                    "failed" => Some(Status::Failed),
                    _ => None,
                },
            ) else {
                continue;
            };
            let key = (
                row.job.clone(),
                Partition {
                    grain,
                    start_ms: row.start_ms,
                },
            );
            if let Some(run) = row.run_id {
                runs.insert(key.clone(), run);
            }
            states.insert(
                key,
                PartitionRecord {
                    status,
                    attempts: row.attempts.max(0) as u32,
                    next_attempt_ms: row.next_attempt_ms,
                    started_ms: row.started_ms,
                    lease_until_ms: row.lease_until_ms,
                    inputs_fingerprint: row.inputs_fingerprint,
                    output_fingerprint: row.output_fingerprint,
                    forced: row.forced_ms.is_some(),
                    code: row.code,
                },
            );
        }
        Ok((states, runs))
    }

    /// The input partitions a task reads, as JSON, each with its
    /// fingerprint now.
    fn lineage(
        &self,
        job: &JobSpec,
        partition: Partition,
        states: &HashMap<Key, PartitionRecord>,
        source_fingerprint: &dyn Fn(&str, Partition) -> String,
    ) -> String {
        let mut items = Vec::new();
        for input in &job.inputs {
            match input {
                Input::Source(table) => {
                    for hour in job.input_partitions(partition, Grain::Hour) {
                        items.push(format!(
                            "{{\"source\":{},\"partition\":\"{hour}\",\"fingerprint\":{}}}",
                            json_str(table),
                            json_str(&source_fingerprint(table, hour))
                        ));
                    }
                }
                Input::Job(up) => {
                    let Some(upstream) = self.catalog.job(up) else {
                        continue;
                    };
                    for q in job.input_partitions(partition, upstream.grain) {
                        let fp = states
                            .get(&(up.clone(), q))
                            .and_then(|r| r.output_fingerprint.clone())
                            .unwrap_or_default();
                        items.push(format!(
                            "{{\"job\":{},\"partition\":\"{q}\",\"fingerprint\":{}}}",
                            json_str(up),
                            json_str(&fp)
                        ));
                    }
                }
            }
        }
        format!("[{}]", items.join(","))
    }

    /// What would start now, without starting it.
    pub async fn due(
        &self,
        watermark_ms: i64,
        source_fingerprint: &(dyn Fn(&str, Partition) -> String + Sync),
    ) -> Result<Vec<Task>, MetaError> {
        let (states, _) = self.states().await?;
        Ok(plan(
            &self.catalog,
            &World {
                now_ms: (self.clock)(),
                watermark_ms,
                states: &states,
                source_fingerprint,
            },
        ))
    }

    /// Records `partition` of `job` as succeeded without running it (an
    /// operator's decision: the hour's source was really empty, a failure
    /// that cannot be fixed and must not hold its downstream), as a run
    /// with reason `marked` and `note` (who and why) in its history. The
    /// partition keeps its output if it had one; its readers run on it as
    /// it is. Refused (`Ok(Err(why))`) while it runs or while its inputs are
    /// not complete.
    pub async fn mark_succeeded(
        &self,
        job: &str,
        partition: Partition,
        note: &str,
        watermark_ms: i64,
        source_fingerprint: &(dyn Fn(&str, Partition) -> String + Sync),
    ) -> Result<Result<String, String>, MetaError> {
        let Some(spec) = self.catalog.job(job) else {
            return Ok(Err(format!("no job {job:?}")));
        };
        if partition.grain != spec.grain {
            return Ok(Err(format!(
                "{job} has {} partitions, not {}",
                spec.grain.as_str(),
                partition.grain.as_str()
            )));
        }
        let now = (self.clock)();
        if partition.end_ms() > now {
            return Ok(Err(format!("{partition} has not ended yet")));
        }
        let (states, runs) = self.states().await?;
        let key = (job.to_string(), partition);
        let record = states.get(&key);
        if record.is_some_and(|r| r.status == Status::Running) {
            return Ok(Err(format!("{job} {partition} is running now")));
        }
        let fingerprint = {
            let world = World {
                now_ms: now,
                watermark_ms,
                states: &states,
                source_fingerprint,
            };
            crate::plan::inputs_fingerprint_now(&self.catalog, &world, spec, partition)
        };
        let Some(fingerprint) = fingerprint else {
            return Ok(Err(format!(
                "the inputs of {job} {partition} are not complete yet (an upstream partition \
                 has not succeeded, or its hours are not past the ingest watermark)"
            )));
        };
        // Its readers see a new output (and run on it) unless it keeps one.
        let kept = record.and_then(|r| r.output_fingerprint.clone());
        let run = JobRunRow {
            run_id: format!("{job}/{partition}/marked/{now}/{}", self.name),
            job: job.to_string(),
            partition_key: partition.key(),
            attempt: 1,
            reason: "marked".into(),
            scheduler: self.name.clone(),
            started_ms: now,
            finished_ms: None,
            status: "running".into(),
            error: None,
            rows_written: None,
            inputs: self.lineage(spec, partition, &states, source_fingerprint),
            inputs_fingerprint: fingerprint,
            output_fingerprint: None,
            code: spec.code.clone(),
            note: Some(note.to_string()),
            messages: None,
        };
        let won = self
            .store
            .claim_partition(&Claim {
                job,
                partition_key: &run.partition_key,
                grain: partition.grain.as_str(),
                start_ms: partition.start_ms,
                expected_run_id: runs.get(&key).map(String::as_str),
                run: &run,
                lease_until_ms: now + self.lease_ms,
            })
            .await?;
        if !won {
            return Ok(Err(format!(
                "{job} {partition} changed meanwhile (a scheduler started it); try again"
            )));
        }
        // Held by the claim: nothing runs it while the empty output is
        // written.
        let (output, said) = match kept {
            Some(kept) => (kept, "it keeps the output it had".to_string()),
            None => match self.executor.empty_output(spec, partition).await {
                Ok(Some(empty)) => (empty.fingerprint, empty.messages.join("\n")),
                Ok(None) => (
                    format!("marked-{now}"),
                    "it never wrote an output: a job that reads its files fails naming the \
                     missing file until it runs (clear it) or that job's partition is marked too"
                        .to_string(),
                ),
                Err(e) => (
                    format!("marked-{now}"),
                    format!(
                        "it never wrote an output, and writing an empty one failed ({e}): a job \
                         that reads its files fails naming the missing file until it runs"
                    ),
                ),
            },
        };
        self.store
            .finish_run(&run.run_id, now, Ok((0, output.as_str(), said)))
            .await?;
        Ok(Ok(run.run_id))
    }

    /// One round: plans, claims and runs what is due (concurrently), and
    /// records each outcome. Returns the runs this runner started.
    pub async fn step(
        &self,
        watermark_ms: i64,
        source_fingerprint: &(dyn Fn(&str, Partition) -> String + Sync),
    ) -> Result<Vec<Ran>, MetaError> {
        self.step_only(watermark_ms, source_fingerprint, &|_| true)
            .await
    }

    /// A round that starts only the planned tasks `wanted` accepts (a
    /// backfill driving its own partitions).
    pub async fn step_only(
        &self,
        watermark_ms: i64,
        source_fingerprint: &(dyn Fn(&str, Partition) -> String + Sync),
        wanted: &(dyn Fn(&Task) -> bool + Sync),
    ) -> Result<Vec<Ran>, MetaError> {
        let now = (self.clock)();
        let (states, runs) = self.states().await?;
        let (tasks, backlog) = plan_with_backlog(
            &self.catalog,
            &World {
                now_ms: now,
                watermark_ms,
                states: &states,
                source_fingerprint,
            },
        );
        for (job, due) in backlog {
            let owner = self
                .catalog
                .job(&job)
                .map(|j| j.owner.clone())
                .unwrap_or_default();
            metrics::gauge!(crate::process::PARTITIONS_DUE, "job" => job, "owner" => owner)
                .set(due as f64);
        }
        // A paused job starts nothing until it is resumed.
        let paused: std::collections::HashSet<String> = self
            .store
            .paused_jobs()
            .await?
            .into_iter()
            .map(|p| p.job)
            .collect();
        let mut claimed = Vec::new();
        for task in tasks
            .into_iter()
            .filter(|t| wanted(t) && !paused.contains(&t.job))
        {
            let Some(job) = self.catalog.job(&task.job) else {
                continue;
            };
            let key = (task.job.clone(), task.partition);
            let started = (self.clock)();
            let run = JobRunRow {
                run_id: format!(
                    "{}/{}/{}/{started}/{}",
                    task.job, task.partition, task.attempt, self.name
                ),
                job: task.job.clone(),
                partition_key: task.partition.key(),
                attempt: i64::from(task.attempt),
                reason: Reason::as_str(task.reason).into(),
                scheduler: self.name.clone(),
                started_ms: started,
                finished_ms: None,
                status: "running".into(),
                error: None,
                rows_written: None,
                inputs: self.lineage(job, task.partition, &states, source_fingerprint),
                inputs_fingerprint: task.inputs_fingerprint.clone(),
                output_fingerprint: None,
                code: job.code.clone(),
                note: None,
                messages: None,
            };
            let won = self
                .store
                .claim_partition(&Claim {
                    job: &task.job,
                    partition_key: &run.partition_key,
                    grain: task.partition.grain.as_str(),
                    start_ms: task.partition.start_ms,
                    expected_run_id: runs.get(&key).map(String::as_str),
                    run: &run,
                    lease_until_ms: started + self.lease_ms,
                })
                .await?;
            if won {
                self.active
                    .lock()
                    .expect("never poisoned")
                    .insert(run.run_id.clone());
                claimed.push((task, run.run_id, job));
            }
        }
        // The claims are renewed while the runs go on; a run whose claim
        // is gone (or cannot be renewed in time) is stopped, so it never
        // runs beside the scheduler that took its partition over.
        let (lost_tx, lost_rx) = tokio::sync::watch::channel(HashSet::<String>::new());
        let runs = futures_util::future::join_all(claimed.iter().map(|(task, run_id, job)| {
            let timeout = Duration::from_millis(job.timeout_ms.max(0) as u64);
            let run = self.executor.run(job, task.partition);
            let mut lost = lost_rx.clone();
            async move {
                let began = std::time::Instant::now();
                let result = tokio::select! {
                    result = tokio::time::timeout(timeout, run) => match result {
                        Ok(result) => result,
                        Err(_) => Err(JobError::TimedOut(timeout)),
                    },
                    _ = lost.wait_for(|l| l.contains(run_id.as_str())) => Err(JobError::ClaimLost),
                };
                (result, began.elapsed())
            }
        }));
        let run_ids: Vec<String> = claimed.iter().map(|(_, id, _)| id.clone()).collect();
        let results = tokio::select! {
            results = runs => results,
            never = self.renew_claims(&run_ids, &lost_tx) => match never {},
        };
        let mut ran = Vec::new();
        for ((task, run_id, job), (result, took)) in claimed.into_iter().zip(results) {
            let finished = (self.clock)();
            let error = result.as_ref().err().map(JobError::to_string);
            let outcome = match (&result, &error) {
                (Ok(out), _) => Ok((
                    out.rows as i64,
                    out.fingerprint.as_str(),
                    out.messages.join("\n"),
                )),
                (Err(_), error) => {
                    let retry_at = (task.attempt <= job.retries)
                        .then(|| finished + job.backoff_ms(task.attempt + 1));
                    Err((error.as_deref().unwrap_or_default(), retry_at))
                }
            };
            self.store.finish_run(&run_id, finished, outcome).await?;
            self.active.lock().expect("never poisoned").remove(&run_id);
            ran.push(Ran {
                task,
                run_id,
                result,
                took,
            });
        }
        Ok(ran)
    }

    /// Renews the claims of `run_ids` every third of the lease, for as
    /// long as it is polled; marks in `lost` the runs whose claim is gone,
    /// and every run once the claims could not be renewed before they
    /// lapse.
    async fn renew_claims(
        &self,
        run_ids: &[String],
        lost: &tokio::sync::watch::Sender<HashSet<String>>,
    ) -> std::convert::Infallible {
        let every = Duration::from_millis((self.lease_ms / 3) as u64);
        let mut held_until = (self.clock)() + self.lease_ms;
        // The claims still held; a lost one is stopped and not renewed again.
        let mut live = run_ids.to_vec();
        loop {
            tokio::time::sleep(every).await;
            let now = (self.clock)();
            match self.store.renew_leases(&live, now + self.lease_ms).await {
                Ok(gone) => {
                    held_until = now + self.lease_ms;
                    if !gone.is_empty() {
                        tracing::warn!(runs = ?gone, "claims taken over by another scheduler; stopping those runs");
                        live.retain(|id| !gone.contains(id));
                        lost.send_modify(|l| l.extend(gone));
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot renew the claims on running partitions");
                    if now + every.as_millis() as i64 >= held_until {
                        lost.send_modify(|l| l.extend(live.drain(..)));
                    }
                }
            }
        }
    }
}
