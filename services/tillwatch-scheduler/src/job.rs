//! Job definitions: what a job reads, its grain, when it may run, how it
//! retries; and the catalog that checks them together (unknown inputs,
//! cycles) and orders them upstream first.

use std::collections::{BTreeMap, BTreeSet};

use croner::Cron;
use jiff::Timestamp;
use jiff::tz::TimeZone;
use tillwatch_domain::hours::{HoursError, TimeZoneError, WeeklyHours, time_zone};

use crate::interval::{Grain, Partition};

/// Why a schedule or run window's text is not one.
#[derive(Debug, thiserror::Error)]
pub enum SettingError {
    #[error(
        "{text:?} is not a cron schedule (five fields, or @hourly, @daily, @weekly, @monthly): {source}"
    )]
    Cron {
        text: String,
        #[source]
        source: croner::errors::CronError,
    },
    #[error(transparent)]
    Hours(#[from] HoursError),
    #[error(transparent)]
    TimeZone(#[from] TimeZoneError),
    #[error("{0:?} is not a time of day like 06:30")]
    TimeOfDay(String),
}

/// A time of day in a time zone by which each partition should be done:
/// "done by 06:00 Europe/Berlin" (the first such time at or after the
/// partition's end).
#[derive(Debug, Clone)]
pub struct SlaAt {
    text: String,
    time: jiff::civil::Time,
    tz: TimeZone,
}

impl SlaAt {
    pub fn parse(text: &str, tz: &str) -> Result<SlaAt, SettingError> {
        let bad = || SettingError::TimeOfDay(text.to_string());
        let (h, m) = text.trim().split_once(':').ok_or_else(bad)?;
        let (h, m): (i8, i8) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
        let time = jiff::civil::Time::new(h, m, 0, 0).map_err(|_| bad())?;
        Ok(SlaAt {
            text: format!("{} {}", time.strftime("%H:%M"), tz),
            time,
            tz: time_zone(tz)?,
        })
    }

    /// `06:00 Europe/Berlin`.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The first time of day at or after `end_ms`, in the zone (a time a
    /// DST change skips is taken as the zone gives it).
    pub fn deadline_after(&self, end_ms: i64) -> Option<i64> {
        let end = Timestamp::from_millisecond(end_ms)
            .ok()?
            .to_zoned(self.tz.clone());
        let mut day = end.date();
        for _ in 0..3 {
            let at = day
                .to_datetime(self.time)
                .to_zoned(self.tz.clone())
                .ok()?
                .timestamp()
                .as_millisecond();
            if at >= end_ms {
                return Some(at);
            }
            day = day.tomorrow().ok()?;
        }
        None
    }
}

/// When a job's partitions are considered: a cron expression (five fields,
/// or `@hourly`, `@daily`, `@weekly`, `@monthly`) in a time zone. A
/// partition is due at the first firing at or after its end plus the job's
/// lateness.
#[derive(Debug, Clone)]
pub struct Schedule {
    text: String,
    cron: Cron,
    tz: TimeZone,
}

impl Schedule {
    pub fn parse(text: &str, tz: &str) -> Result<Schedule, SettingError> {
        let cron: Cron = text.parse().map_err(|source| SettingError::Cron {
            text: text.to_string(),
            source,
        })?;
        Ok(Schedule {
            text: text.to_string(),
            cron,
            tz: time_zone(tz)?,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The first firing at or after `at_ms`.
    pub fn next_at_or_after(&self, at_ms: i64) -> Option<i64> {
        // Cron works in whole seconds: start from the next one.
        let ceil_ms = (at_ms + 999).div_euclid(1000) * 1000;
        let t = Timestamp::from_millisecond(ceil_ms)
            .ok()?
            .to_zoned(self.tz.clone());
        let next = self.cron.find_next_occurrence(&t, true).ok()?;
        Some(next.timestamp().as_millisecond())
    }
}

/// Hours in which a job may start, in a time zone (e.g. 02:00-05:00).
#[derive(Debug, Clone)]
pub struct RunWindow {
    pub hours: WeeklyHours,
    pub tz: TimeZone,
}

impl RunWindow {
    pub fn parse(hours: &str, tz: &str) -> Result<RunWindow, SettingError> {
        Ok(RunWindow {
            hours: WeeklyHours::parse(hours)?,
            tz: time_zone(tz)?,
        })
    }

    pub fn allows(&self, at_ms: i64) -> bool {
        self.hours.is_open(at_ms, &self.tz)
    }
}

/// What a job reads.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Input {
    /// A raw lake table (hourly partitions), complete up to the ingest
    /// watermark.
    Source(String),
    /// Another job's output.
    Job(String),
}

#[derive(Debug, Clone)]
pub struct JobSpec {
    pub name: String,
    /// The team that owns it.
    pub owner: String,
    /// What its output holds, in a sentence (from its declaration).
    pub description: String,
    pub grain: Grain,
    pub inputs: Vec<Input>,
    pub schedule: Schedule,
    /// No partition starting before this.
    pub start_ms: i64,
    /// No partition ending after this.
    pub end_ms: Option<i64>,
    /// Run every missed partition since `start_ms` (true), or only the
    /// newest due one (false).
    pub catch_up: bool,
    pub window: Option<RunWindow>,
    /// How long after a partition's end its data may still arrive.
    pub lateness_ms: i64,
    pub timeout_ms: i64,
    /// Attempts after the first.
    pub retries: u32,
    pub retry_base_ms: i64,
    pub retry_max_ms: i64,
    /// Most partitions of this job running at once.
    pub concurrency: usize,
    /// How far before its own interval a partition reads its inputs
    /// (0 for most jobs; a store-local day reads the hours of the zones
    /// ahead of UTC before the UTC day).
    pub reads_before_ms: i64,
    /// How far after its own interval it reads them (the zones behind UTC).
    pub reads_after_ms: i64,
    /// How long retention keeps this job's inputs and output (the
    /// shortest of them), when something deletes them: partitions whose
    /// reads begin within a day of that age never run again (see
    /// [`JobSpec::frozen`]).
    pub kept_ms: Option<i64>,
    /// How long retention keeps this job's own output (a team's `keep`,
    /// or `[retention]`'s age for the product's tables); `None`: for good.
    pub output_kept_ms: Option<i64>,
    /// A fingerprint of the job's code (what it reads and how): recorded
    /// on every run.
    pub code: Option<String>,
    /// Partitions starting at or after this run again when `code` changes
    /// (the code is part of their inputs' fingerprint); older ones, and
    /// every one when this is unset, keep what the old code wrote until
    /// their inputs change.
    pub rerun_from_ms: Option<i64>,
    /// Each partition should have succeeded within this of its interval's
    /// end; one that has not raises a `job_sla_missed` finding.
    pub sla_ms: Option<i64>,
    /// Each partition should have succeeded by this time of day after its
    /// end (with `sla_ms` too, the earlier deadline counts).
    pub sla_at: Option<SlaAt>,
    /// The receivers told of its job alerts, by name; empty: every one.
    pub notify: Vec<String>,
    /// Looks again at recent partitions that succeeded (see [`Recheck`]).
    pub recheck: Option<Recheck>,
}

/// For a job whose input the planner cannot fingerprint (a source's
/// database, where rows may land late): a succeeded partition that ended
/// less than `within_ms` ago runs again once its last run started
/// `every_ms` ago or more. What reads it runs again only when that run's
/// output differs, so a look that finds nothing new costs one import.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recheck {
    pub within_ms: i64,
    pub every_ms: i64,
}

impl JobSpec {
    /// Defaults for a job: hourly partitions of an hour's grain, every hour;
    /// no catch-up limit; 5 min lateness; 3 retries from 30 s to 10 min.
    pub fn new(name: &str, grain: Grain, inputs: Vec<Input>) -> JobSpec {
        let schedule = grain.schedule();
        JobSpec {
            name: name.to_string(),
            owner: "tillwatch".into(),
            description: String::new(),
            grain,
            inputs,
            schedule: Schedule::parse(schedule, "UTC").expect("built-in schedules parse"),
            start_ms: 0,
            end_ms: None,
            catch_up: true,
            window: None,
            lateness_ms: 5 * 60_000,
            timeout_ms: 30 * 60_000,
            retries: 3,
            retry_base_ms: 30_000,
            retry_max_ms: 10 * 60_000,
            concurrency: 1,
            reads_before_ms: 0,
            reads_after_ms: 0,
            kept_ms: None,
            output_kept_ms: None,
            code: None,
            rerun_from_ms: None,
            sla_ms: None,
            sla_at: None,
            notify: Vec::new(),
            recheck: None,
        }
    }

    /// When `partition` should have succeeded by, if the job has an SLA:
    /// the earlier of `sla_ms` after its end and the next `sla_at`.
    pub fn sla_deadline(&self, partition: Partition) -> Option<i64> {
        let end = partition.end_ms();
        let within = self.sla_ms.map(|sla| end.saturating_add(sla));
        let at = self.sla_at.as_ref().and_then(|a| a.deadline_after(end));
        match (within, at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The SLA as people say it: `within 30m`, `by 06:00 Europe/Berlin`.
    pub fn sla_text(&self) -> String {
        let within = self.sla_ms.map(|sla| {
            format!(
                "within {} of its end",
                humantime::format_duration(std::time::Duration::from_millis(sla.max(0) as u64))
            )
        });
        let at = self.sla_at.as_ref().map(|a| format!("by {}", a.as_str()));
        match (within, at) {
            (Some(w), Some(a)) => format!("{w} and {a}"),
            (w, a) => w.or(a).unwrap_or_default(),
        }
    }

    /// Whether `partition` is past running at `now_ms`: it reads days that
    /// retention deletes today or tomorrow (whole UTC days older than
    /// `kept_ms` go), so a run could only read what is half gone and
    /// overwrite a good output with a partial one. Such a partition keeps
    /// what it has; none of it is scheduled, retried or re-run.
    pub fn frozen(&self, partition: Partition, now_ms: i64) -> bool {
        const DAY_MS: i64 = 86_400_000;
        let Some(kept) = self.kept_ms else {
            return false;
        };
        let horizon = now_ms
            .div_euclid(DAY_MS)
            .saturating_mul(DAY_MS)
            .saturating_sub(kept)
            .saturating_add(DAY_MS);
        partition.start_ms.saturating_sub(self.reads_before_ms) < horizon
    }

    /// The partitions of `grain` that `partition` of this job reads: those
    /// overlapping its interval widened by the read margins.
    pub fn input_partitions(&self, partition: Partition, grain: Grain) -> Vec<Partition> {
        Partition::overlapping(
            grain,
            partition.start_ms - self.reads_before_ms,
            partition.end_ms() + self.reads_after_ms,
        )
    }

    /// The partitions of this job that read `upstream` (of any grain): the
    /// inverse of [`JobSpec::input_partitions`].
    pub fn reading(&self, upstream: Partition) -> Vec<Partition> {
        Partition::overlapping(
            self.grain,
            upstream.start_ms - self.reads_after_ms,
            upstream.end_ms() + self.reads_before_ms,
        )
    }

    /// Wait before attempt `attempt` (2, 3, …): the base doubling each
    /// time, capped at the maximum.
    pub fn backoff_ms(&self, attempt: u32) -> i64 {
        let doublings = attempt.saturating_sub(2).min(30);
        (self.retry_base_ms.saturating_mul(1 << doublings)).min(self.retry_max_ms)
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum CatalogError {
    #[error("job {job:?} reads {input:?}, which is no job")]
    UnknownInput { job: String, input: String },
    #[error("jobs depend on each other in a cycle: {0}")]
    Cycle(String),
    #[error("job {0:?} is defined twice")]
    Duplicate(String),
}

/// Every job, upstream first.
#[derive(Debug, Clone)]
pub struct Catalog {
    jobs: Vec<JobSpec>,
}

impl Catalog {
    pub fn new(jobs: Vec<JobSpec>) -> Result<Catalog, CatalogError> {
        let mut by_name: BTreeMap<String, JobSpec> = BTreeMap::new();
        for job in jobs {
            if by_name.contains_key(&job.name) {
                return Err(CatalogError::Duplicate(job.name));
            }
            by_name.insert(job.name.clone(), job);
        }
        for job in by_name.values() {
            for input in &job.inputs {
                if let Input::Job(up) = input
                    && !by_name.contains_key(up)
                {
                    return Err(CatalogError::UnknownInput {
                        job: job.name.clone(),
                        input: up.clone(),
                    });
                }
            }
        }
        // Depth-first topological order, reporting a cycle by its path.
        fn visit(
            name: &str,
            by_name: &BTreeMap<String, JobSpec>,
            done: &mut BTreeSet<String>,
            path: &mut Vec<String>,
            order: &mut Vec<String>,
        ) -> Result<(), CatalogError> {
            if done.contains(name) {
                return Ok(());
            }
            if let Some(at) = path.iter().position(|p| p == name) {
                let mut cycle = path[at..].to_vec();
                cycle.push(name.to_string());
                return Err(CatalogError::Cycle(cycle.join(" -> ")));
            }
            path.push(name.to_string());
            for input in &by_name[name].inputs {
                if let Input::Job(up) = input {
                    visit(up, by_name, done, path, order)?;
                }
            }
            path.pop();
            done.insert(name.to_string());
            order.push(name.to_string());
            Ok(())
        }
        let mut done = BTreeSet::new();
        let mut order = Vec::new();
        for name in by_name.keys() {
            visit(name, &by_name, &mut done, &mut Vec::new(), &mut order)?;
        }
        Ok(Catalog {
            jobs: order
                .into_iter()
                .map(|n| by_name.remove(&n).expect("ordered from the map"))
                .collect(),
        })
    }

    /// Upstream first.
    pub fn jobs(&self) -> &[JobSpec] {
        &self.jobs
    }

    pub fn job(&self, name: &str) -> Option<&JobSpec> {
        self.jobs.iter().find(|j| j.name == name)
    }

    /// Jobs reading `name`'s output, directly or not, upstream first.
    pub fn downstream(&self, name: &str) -> Vec<&JobSpec> {
        let mut reached: BTreeSet<&str> = BTreeSet::from([name]);
        let mut out = Vec::new();
        for job in &self.jobs {
            if job
                .inputs
                .iter()
                .any(|i| matches!(i, Input::Job(up) if reached.contains(up.as_str())))
            {
                reached.insert(&job.name);
                out.push(job);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(name: &str, grain: Grain, inputs: &[&str]) -> JobSpec {
        JobSpec::new(
            name,
            grain,
            inputs.iter().map(|i| Input::Job(i.to_string())).collect(),
        )
    }

    fn ms(text: &str) -> i64 {
        text.parse::<Timestamp>().unwrap().as_millisecond()
    }

    #[test]
    fn an_sla_by_a_time_of_day_is_the_next_such_time_after_the_partition() {
        let mut hourly = job("h", Grain::Hour, &[]);
        hourly.sla_at = Some(SlaAt::parse("06:00", "Europe/Berlin").unwrap());
        let hour = |key: &str| key.parse::<Partition>().unwrap();
        // 06:00 in Berlin is 05:00Z in November: an hour ending at 04:00Z
        // is due that morning, one ending at 06:00Z the next.
        assert_eq!(
            hourly.sla_deadline(hour("2026-11-20T03")),
            Some(ms("2026-11-20T05:00:00Z"))
        );
        assert_eq!(
            hourly.sla_deadline(hour("2026-11-20T05")),
            Some(ms("2026-11-21T05:00:00Z"))
        );
        // In summer, 06:00 in Berlin is 04:00Z.
        assert_eq!(
            hourly.sla_deadline(hour("2026-07-01T02")),
            Some(ms("2026-07-01T04:00:00Z"))
        );
        // With a span too, the earlier deadline counts.
        hourly.sla_ms = Some(30 * 60_000);
        assert_eq!(
            hourly.sla_deadline(hour("2026-11-20T05")),
            Some(ms("2026-11-20T06:30:00Z"))
        );
        assert_eq!(
            hourly.sla_text(),
            "within 30m of its end and by 06:00 Europe/Berlin"
        );
        let mut daily = job("d", Grain::Day, &[]);
        daily.sla_at = Some(SlaAt::parse("7:30", "UTC").unwrap());
        assert_eq!(
            daily.sla_deadline("2026-11-20".parse().unwrap()),
            Some(ms("2026-11-21T07:30:00Z"))
        );
        assert_eq!(
            job("none", Grain::Hour, &[]).sla_deadline(hour("2026-11-20T05")),
            None
        );
        for bad in ["25:00", "06:61", "6", "six:00", ""] {
            assert!(
                matches!(SlaAt::parse(bad, "UTC"), Err(SettingError::TimeOfDay(_))),
                "{bad}"
            );
        }
        assert!(matches!(
            SlaAt::parse("06:00", "Mars/Olympus"),
            Err(SettingError::TimeZone(_))
        ));
    }

    #[test]
    fn the_catalog_orders_upstream_first_and_refuses_cycles_and_unknown_inputs() {
        let catalog = Catalog::new(vec![
            job("fleet_daily", Grain::Day, &["device_daily"]),
            job("device_daily", Grain::Day, &["device_hourly"]),
            job("device_hourly", Grain::Hour, &[]),
        ])
        .unwrap();
        let names: Vec<_> = catalog.jobs().iter().map(|j| j.name.as_str()).collect();
        assert_eq!(names, ["device_hourly", "device_daily", "fleet_daily"]);
        let down: Vec<_> = catalog
            .downstream("device_hourly")
            .iter()
            .map(|j| j.name.as_str())
            .collect();
        assert_eq!(down, ["device_daily", "fleet_daily"]);
        assert_eq!(
            Catalog::new(vec![
                job("a", Grain::Hour, &["b"]),
                job("b", Grain::Hour, &["a"])
            ])
            .unwrap_err(),
            CatalogError::Cycle("a -> b -> a".into())
        );
        assert!(matches!(
            Catalog::new(vec![job("a", Grain::Hour, &["nope"])]),
            Err(CatalogError::UnknownInput { .. })
        ));
    }

    #[test]
    fn schedules_fire_in_their_zone_and_backoff_doubles_to_its_cap() {
        let hourly = Schedule::parse("@hourly", "UTC").unwrap();
        assert_eq!(hourly.next_at_or_after(3_600_000), Some(3_600_000));
        assert_eq!(hourly.next_at_or_after(3_600_001), Some(7_200_000));
        // 02:30 every day in Berlin (UTC+1 in winter): 01:30 UTC.
        let nightly = Schedule::parse("30 2 * * *", "Europe/Berlin").unwrap();
        assert_eq!(nightly.next_at_or_after(0), Some(90 * 60_000));
        assert!(
            Schedule::parse("61 * * * *", "UTC")
                .unwrap_err()
                .to_string()
                .contains("61 * * * *")
        );
        let j = job("a", Grain::Hour, &[]);
        assert_eq!(
            (2..7).map(|a| j.backoff_ms(a)).collect::<Vec<_>>(),
            [30_000, 60_000, 120_000, 240_000, 480_000]
        );
        assert_eq!(j.backoff_ms(8), 600_000);
    }
}
