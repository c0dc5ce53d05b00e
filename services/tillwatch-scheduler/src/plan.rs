//! The planner: from the catalog, the clock, the ingest watermark and the
//! recorded state of every partition, the partitions that should start now.
//!
//! A partition of a job starts when all of these hold:
//! - it lies within the job's start and end, is not frozen (its inputs are
//!   about to be deleted by retention), and its schedule has fired at
//!   or after the partition's end (so `@hourly` runs an hour after it ends,
//!   a `30 2 * * *` daily job at 02:30 after the day);
//! - its data is complete: for a raw table, the ingest watermark has passed
//!   the partition's end plus the job's lateness; for another job, every
//!   overlapping partition of it has succeeded (a daily partition needs its
//!   day's 24 hourly ones) and none of them is about to run again;
//! - the job's run window (if any) is open now;
//! - it has never run (and catch-up allows it: without catch-up only the
//!   newest such partition starts), or its last attempt failed and the
//!   backoff has passed with retries left, or it ran too long (timeout) or
//!   its scheduler stopped renewing the claim (it died), or
//!   it succeeded on inputs that have changed since (stale: late data; and
//!   from the job's `rerun_from_ms` on, its code counts as an input), or
//!   it failed every retry and its job's code has changed since (a fix), or
//!   an operator asked for it again (a backfill or clear: forced, which
//!   needs neither the schedule nor changed inputs, but still complete
//!   inputs and an open window);
//! - the job has fewer than `concurrency` partitions running.
//!
//! Oldest partitions go first. The same world always gives the same plan.

use std::collections::{HashMap, HashSet};

use crate::interval::Partition;
use crate::job::{Catalog, Input, JobSpec};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Never ran; asked for by a backfill or clear.
    Queued,
    Running,
    Succeeded,
    Failed,
}

/// What is recorded of one partition of one job.
#[derive(Debug, Clone, PartialEq)]
pub struct PartitionRecord {
    pub status: Status,
    /// Attempts in the current round (a stale re-run starts a new round).
    pub attempts: u32,
    /// Failed: not before this.
    pub next_attempt_ms: Option<i64>,
    /// Running: since when.
    pub started_ms: Option<i64>,
    /// Running: until when its scheduler's claim holds (it renews the
    /// claim while it runs; a scheduler that died stops renewing).
    pub lease_until_ms: Option<i64>,
    /// The fingerprint of the inputs the last success (or the current
    /// attempt) read.
    pub inputs_fingerprint: Option<String>,
    /// The fingerprint of what the last success wrote: downstream jobs'
    /// inputs.
    pub output_fingerprint: Option<String>,
    /// An operator asked for it to run again.
    pub forced: bool,
    /// The code fingerprint of its last run, when recorded.
    pub code: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// Never ran.
    Scheduled,
    /// The previous attempt failed.
    Retry,
    /// The previous attempt ran past the job's timeout.
    TimedOut,
    /// The previous attempt's scheduler stopped renewing its claim: it died
    /// or lost the metadata store mid-run.
    LeaseExpired,
    /// Succeeded before, but its inputs changed since.
    Stale,
    /// Asked for by a backfill or clear.
    Forced,
    /// Failed every retry, and the job's code has changed since: a fix
    /// gets a new round.
    CodeChanged,
    /// Succeeded recently, and its job looks again at such partitions
    /// (see [`crate::Recheck`]).
    Recheck,
}

impl Reason {
    /// `scheduled`, `retry`, `timed_out`, `lease_expired`, `stale` or
    /// `forced`, as runs record it.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Scheduled => "scheduled",
            Reason::Retry => "retry",
            Reason::TimedOut => "timed_out",
            Reason::LeaseExpired => "lease_expired",
            Reason::Stale => "stale",
            Reason::Forced => "forced",
            Reason::CodeChanged => "code_changed",
            Reason::Recheck => "recheck",
        }
    }
}

/// One partition to start.
#[derive(Debug, Clone, PartialEq)]
pub struct Task {
    pub job: String,
    pub partition: Partition,
    /// 1 for the first attempt of a round.
    pub attempt: u32,
    pub reason: Reason,
    /// Record it with the run: it is what the run reads.
    pub inputs_fingerprint: String,
}

/// What the planner knows of the world.
pub struct World<'a> {
    pub now_ms: i64,
    /// All raw readings sampled before this have arrived (up to lateness).
    pub watermark_ms: i64,
    pub states: &'a HashMap<(String, Partition), PartitionRecord>,
    /// The fingerprint of a raw table's hour (its files as they are now).
    pub source_fingerprint: &'a dyn Fn(&str, Partition) -> String,
}

fn fnv(parts: &[String]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for b in part.bytes().chain([0u8]) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    format!("{h:016x}")
}

/// The inputs' fingerprint, or `None` while they are not complete.
fn inputs_fingerprint(
    job: &JobSpec,
    partition: Partition,
    catalog: &Catalog,
    world: &World,
    planned: &HashSet<(String, Partition)>,
) -> Option<String> {
    let mut parts = Vec::new();
    for input in &job.inputs {
        match input {
            Input::Source(table) => {
                if world.watermark_ms < partition.end_ms() + job.lateness_ms {
                    return None;
                }
                for hour in job.input_partitions(partition, crate::Grain::Hour) {
                    parts.push(format!(
                        "{table}/{hour}={}",
                        (world.source_fingerprint)(table, hour)
                    ));
                }
            }
            Input::Job(up) => {
                let upstream = catalog.job(up)?;
                for q in job.input_partitions(partition, upstream.grain) {
                    let key = (up.clone(), q);
                    if planned.contains(&key) {
                        return None;
                    }
                    let record = world.states.get(&key)?;
                    if record.status != Status::Succeeded {
                        return None;
                    }
                    parts.push(format!(
                        "{up}/{q}={}",
                        record.output_fingerprint.as_deref().unwrap_or("")
                    ));
                }
            }
        }
    }
    if let (Some(code), Some(from)) = (&job.code, job.rerun_from_ms)
        && partition.start_ms >= from
    {
        parts.push(format!("code={code}"));
    }
    Some(fnv(&parts))
}

/// The fingerprint `partition` of `job` would run with now, or `None`
/// while its inputs are not complete (a source hour not yet past the
/// watermark, an upstream partition not succeeded).
pub fn inputs_fingerprint_now(
    catalog: &Catalog,
    world: &World,
    job: &JobSpec,
    partition: Partition,
) -> Option<String> {
    inputs_fingerprint(job, partition, catalog, world, &HashSet::new())
}

/// Whether a partition's run is going on now: running, within its
/// timeout, its claim renewed.
fn running_now(r: &PartitionRecord, job: &JobSpec, now_ms: i64) -> bool {
    r.status == Status::Running
        && r.started_ms.is_none_or(|s| now_ms - s < job.timeout_ms)
        && r.lease_until_ms.is_none_or(|l| now_ms <= l)
}

/// What should start now, upstream jobs first, each job's oldest first.
pub fn plan(catalog: &Catalog, world: &World) -> Vec<Task> {
    plan_with_backlog(catalog, world).0
}

/// [`plan`], and for every job how many of its partitions could run now
/// but for its concurrency or run window (those started included): its
/// backlog.
pub fn plan_with_backlog(
    catalog: &Catalog,
    world: &World,
) -> (Vec<Task>, std::collections::BTreeMap<String, usize>) {
    let mut backlog = std::collections::BTreeMap::new();
    let mut tasks = Vec::new();
    // Partitions that will (re)run: their downstream waits for them.
    let mut planned: HashSet<(String, Partition)> = HashSet::new();
    for job in catalog.jobs() {
        // A partition is not rewritten while a run reads it (compaction
        // would delete the files an hourly run is reading): it waits for
        // that run, whose input is then stale.
        let readers: Vec<&JobSpec> = catalog
            .jobs()
            .iter()
            .filter(|r| {
                r.inputs
                    .iter()
                    .any(|i| matches!(i, Input::Job(up) if *up == job.name))
            })
            .collect();
        let being_read = |p: Partition| {
            readers.iter().any(|r| {
                r.reading(p).into_iter().any(|q| {
                    world
                        .states
                        .get(&(r.name.clone(), q))
                        .is_some_and(|rec| running_now(rec, r, world.now_ms))
                })
            })
        };
        let until = job.end_ms.unwrap_or(i64::MAX).min(world.now_ms);
        let mut running = 0usize;
        let mut candidates: Vec<Task> = Vec::new();
        let mut new_ones: Vec<Task> = Vec::new();
        let mut newest_recorded: Option<Partition> = None;
        for partition in Partition::range(job.grain, job.start_ms, until) {
            if partition.start_ms < job.start_ms || job.frozen(partition, world.now_ms) {
                continue;
            }
            let key = (job.name.clone(), partition);
            let record = world.states.get(&key);
            if record.is_some() {
                newest_recorded = Some(partition);
            }
            let waiting_upstream = job.inputs.iter().any(|i| match i {
                Input::Job(up) => catalog.job(up).is_some_and(|u| {
                    job.input_partitions(partition, u.grain)
                        .into_iter()
                        .any(|q| planned.contains(&(up.clone(), q)))
                }),
                Input::Source(_) => false,
            });
            if let Some(r) = record
                && running_now(r, job, world.now_ms)
            {
                running += 1;
                planned.insert(key);
                continue;
            }
            if waiting_upstream {
                // It will be stale once its upstream re-runs.
                if record.is_some() {
                    planned.insert(key);
                }
                continue;
            }
            let forced = record.is_some_and(|r| r.forced && r.status != Status::Running);
            let due = job
                .schedule
                .next_at_or_after(partition.end_ms())
                .is_some_and(|at| at <= world.now_ms);
            if !due && !forced {
                continue;
            }
            let Some(fingerprint) = inputs_fingerprint(job, partition, catalog, world, &planned)
            else {
                continue;
            };
            let task = |attempt, reason| Task {
                job: job.name.clone(),
                partition,
                attempt,
                reason,
                inputs_fingerprint: fingerprint.clone(),
            };
            match record {
                None => new_ones.push(task(1, Reason::Scheduled)),
                Some(_) if forced => candidates.push(task(1, Reason::Forced)),
                Some(r) => match r.status {
                    // Only ever forced.
                    Status::Queued => {}
                    Status::Running => {
                        // Past its timeout, or its scheduler is gone:
                        // counts as a failed attempt.
                        let reason = if r.lease_until_ms.is_some_and(|l| world.now_ms > l)
                            && r.started_ms
                                .is_some_and(|s| world.now_ms - s < job.timeout_ms)
                        {
                            Reason::LeaseExpired
                        } else {
                            Reason::TimedOut
                        };
                        if r.attempts <= job.retries {
                            candidates.push(task(r.attempts + 1, reason));
                        }
                    }
                    Status::Failed => {
                        if r.attempts <= job.retries
                            && r.next_attempt_ms.is_none_or(|t| t <= world.now_ms)
                        {
                            candidates.push(task(r.attempts + 1, Reason::Retry));
                        } else if r.attempts <= job.retries {
                            // Will retry: downstream waits.
                            planned.insert(key);
                        } else if job.code.is_some() && r.code.is_some() && r.code != job.code {
                            candidates.push(task(1, Reason::CodeChanged));
                        }
                    }
                    Status::Succeeded => {
                        if r.inputs_fingerprint.as_deref() != Some(fingerprint.as_str()) {
                            candidates.push(task(1, Reason::Stale));
                        } else if job.recheck.is_some_and(|c| {
                            world.now_ms - partition.end_ms() < c.within_ms
                                && r.started_ms.is_some_and(|s| world.now_ms - s >= c.every_ms)
                        }) {
                            candidates.push(task(1, Reason::Recheck));
                        }
                    }
                },
            }
        }
        if !job.catch_up {
            // Only the newest, and never one older than what already ran.
            new_ones.retain(|t| newest_recorded.is_none_or(|n| t.partition > n));
            if new_ones.len() > 1 {
                new_ones.drain(..new_ones.len() - 1);
            }
        }
        candidates.extend(new_ones);
        candidates.sort_by_key(|t| t.partition);
        // Every candidate holds its downstream back, started now or not.
        for t in &candidates {
            planned.insert((t.job.clone(), t.partition));
        }
        backlog.insert(job.name.clone(), candidates.len());
        if job.window.as_ref().is_some_and(|w| !w.allows(world.now_ms)) {
            continue;
        }
        let room = job.concurrency.saturating_sub(running);
        tasks.extend(
            candidates
                .into_iter()
                .filter(|t| !being_read(t.partition))
                .take(room),
        );
    }
    (tasks, backlog)
}
