//! The planner on an injected clock: schedules and catch-up, the 24 → 1
//! dependency of a daily job on its hours, lateness against the ingest
//! watermark, the run window, retries with backoff, timeouts, and late
//! data re-running exactly the affected partitions and their downstream.

use std::collections::HashMap;

use tillwatch_scheduler::{
    Catalog, Grain, Input, JobSpec, Partition, PartitionRecord, Reason, RunWindow, Status, Task,
    World, plan,
};

const HOUR: i64 = 3_600_000;
const MIN: i64 = 60_000;
/// 2026-11-20T00:00Z.
const DAY0: i64 = 1_795_132_800_000;

/// A job of the test's catalog: from DAY0, as many partitions at once as
/// the plan offers.
fn job(name: &str, grain: Grain, input: Input) -> JobSpec {
    let mut j = JobSpec::new(name, grain, vec![input]);
    j.start_ms = DAY0;
    j.concurrency = 100;
    j
}

fn hourly() -> JobSpec {
    job(
        "device_health_hourly",
        Grain::Hour,
        Input::Source("battery".into()),
    )
}

fn daily() -> JobSpec {
    job(
        "device_health_daily",
        Grain::Day,
        Input::Job("device_health_hourly".into()),
    )
}

fn fleet() -> JobSpec {
    job(
        "fleet_health_daily",
        Grain::Day,
        Input::Job("device_health_daily".into()),
    )
}

type States = HashMap<(String, Partition), PartitionRecord>;

fn run_plan(
    catalog: &Catalog,
    states: &States,
    now: i64,
    files: &HashMap<Partition, String>,
) -> Vec<Task> {
    let fp = |_: &str, hour: Partition| files.get(&hour).cloned().unwrap_or_else(|| "v1".into());
    plan(
        catalog,
        &World {
            now_ms: now,
            watermark_ms: now - 2 * MIN,
            states,
            source_fingerprint: &fp,
        },
    )
}

fn succeed(states: &mut States, task: &Task, output: &str) {
    states.insert(
        (task.job.clone(), task.partition),
        PartitionRecord {
            status: Status::Succeeded,
            attempts: task.attempt,
            next_attempt_ms: None,
            started_ms: None,
            lease_until_ms: None,
            inputs_fingerprint: Some(task.inputs_fingerprint.clone()),
            output_fingerprint: Some(output.into()),
            forced: false,
            code: None,
        },
    );
}

/// Runs every planned task to success, repeatedly, until nothing is due;
/// returns what ran.
fn settle(
    catalog: &Catalog,
    states: &mut States,
    now: i64,
    files: &HashMap<Partition, String>,
) -> Vec<Task> {
    let mut ran = Vec::new();
    loop {
        let tasks = run_plan(catalog, states, now, files);
        if tasks.is_empty() {
            return ran;
        }
        for t in &tasks {
            // Output changes when the input does.
            succeed(states, t, &t.inputs_fingerprint);
        }
        ran.extend(tasks);
    }
}

fn keys(tasks: &[Task]) -> Vec<String> {
    tasks
        .iter()
        .map(|t| format!("{} {}", t.job, t.partition))
        .collect()
}

#[test]
fn hours_run_once_their_data_is_late_enough_and_days_wait_for_all_24() {
    let catalog = Catalog::new(vec![hourly(), daily()]).unwrap();
    let mut states = States::new();
    let files = HashMap::new();
    // 00:04 on day 0: the watermark (00:02) has not passed 00:00 + 5 min lateness.
    assert!(run_plan(&catalog, &states, DAY0 + 4 * MIN, &files).is_empty());
    // 00:07: watermark 00:05 passes; the first hour runs.
    let tasks = run_plan(&catalog, &states, DAY0 + HOUR + 7 * MIN, &files);
    assert_eq!(keys(&tasks), ["device_health_hourly 2026-11-20T00"]);
    assert_eq!((tasks[0].attempt, tasks[0].reason), (1, Reason::Scheduled));
    // Through the day: 23 hours done, the daily waits for the 24th.
    let ran = settle(&catalog, &mut states, DAY0 + 23 * HOUR + 30 * MIN, &files);
    assert_eq!(ran.len(), 23);
    assert!(ran.iter().all(|t| t.job == "device_health_hourly"));
    let ran = settle(&catalog, &mut states, DAY0 + 24 * HOUR + 10 * MIN, &files);
    assert_eq!(
        keys(&ran),
        [
            "device_health_hourly 2026-11-20T23",
            "device_health_daily 2026-11-20"
        ]
    );
}

#[test]
fn catch_up_runs_every_missed_partition_oldest_first_and_without_only_the_newest() {
    let mut states = States::new();
    let now = DAY0 + 3 * 24 * HOUR + 30 * MIN;
    let catalog = Catalog::new(vec![hourly()]).unwrap();
    let tasks = run_plan(&catalog, &states, now, &HashMap::new());
    assert_eq!(tasks.len(), 72);
    assert_eq!(tasks[0].partition.key(), "2026-11-20T00");
    let mut one_at_a_time = hourly();
    one_at_a_time.concurrency = 2;
    let catalog = Catalog::new(vec![one_at_a_time]).unwrap();
    assert_eq!(
        keys(&run_plan(&catalog, &states, now, &HashMap::new())),
        [
            "device_health_hourly 2026-11-20T00",
            "device_health_hourly 2026-11-20T01"
        ]
    );
    let mut no_catch_up = hourly();
    no_catch_up.catch_up = false;
    let catalog = Catalog::new(vec![no_catch_up]).unwrap();
    let tasks = run_plan(&catalog, &states, now, &HashMap::new());
    assert_eq!(keys(&tasks), ["device_health_hourly 2026-11-22T23"]);
    succeed(&mut states, &tasks[0], "x");
    assert!(
        run_plan(&catalog, &states, now, &HashMap::new()).is_empty(),
        "older ones skipped"
    );
}

#[test]
fn a_run_window_holds_starts_until_it_opens() {
    let mut nightly = daily();
    nightly.inputs = vec![Input::Source("battery".into())];
    nightly.window = Some(RunWindow::parse("daily 02:00-05:00", "Europe/Berlin").unwrap());
    let catalog = Catalog::new(vec![nightly]).unwrap();
    let states = States::new();
    // 00:30 UTC on day 1 is 01:30 in Berlin: closed.
    assert!(
        run_plan(
            &catalog,
            &states,
            DAY0 + 24 * HOUR + 30 * MIN,
            &HashMap::new()
        )
        .is_empty()
    );
    // 01:10 UTC is 02:10 in Berlin: open.
    let tasks = run_plan(
        &catalog,
        &states,
        DAY0 + 25 * HOUR + 10 * MIN,
        &HashMap::new(),
    );
    assert_eq!(keys(&tasks), ["device_health_daily 2026-11-20"]);
    // 04:10 UTC is 05:10: closed again.
    assert!(
        run_plan(
            &catalog,
            &states,
            DAY0 + 28 * HOUR + 10 * MIN,
            &HashMap::new()
        )
        .is_empty()
    );
}

#[test]
fn failures_retry_after_a_doubling_backoff_until_retries_run_out() {
    let mut job = hourly();
    job.start_ms = DAY0 + 10 * HOUR;
    job.end_ms = Some(DAY0 + 11 * HOUR);
    let catalog = Catalog::new(vec![job.clone(), daily()]).unwrap();
    let mut states = States::new();
    let mut now = DAY0 + 11 * HOUR + 10 * MIN;
    let key = (
        "device_health_hourly".to_string(),
        Partition::containing(Grain::Hour, DAY0 + 10 * HOUR),
    );
    let mut attempts = Vec::new();
    for _ in 0..10 {
        let tasks = run_plan(&catalog, &states, now, &HashMap::new());
        if let Some(t) = tasks.first() {
            attempts.push((t.attempt, (now - (DAY0 + 11 * HOUR + 10 * MIN)) / 1000));
            // It fails; the runner records when it may try again.
            states.insert(
                key.clone(),
                PartitionRecord {
                    status: Status::Failed,
                    attempts: t.attempt,
                    next_attempt_ms: Some(now + job.backoff_ms(t.attempt + 1)),
                    started_ms: None,
                    lease_until_ms: None,
                    inputs_fingerprint: None,
                    output_fingerprint: None,
                    forced: false,
                    code: Some("v1".into()),
                },
            );
        }
        now += 30_000;
    }
    // Attempt 1 at once, then after 30 s, 60 s, 120 s (on the 30 s ticks).
    assert_eq!(attempts, [(1, 0), (2, 30), (3, 90), (4, 210)]);
    assert!(
        run_plan(&catalog, &states, now + 3_600_000, &HashMap::new()).is_empty(),
        "retries used up"
    );
    // The job's code is what failed: nothing. A fix (new code): a new round.
    let with_code = |code: &str| {
        let mut j = job.clone();
        j.code = Some(code.into());
        Catalog::new(vec![j, daily()]).unwrap()
    };
    assert!(run_plan(&with_code("v1"), &states, now, &HashMap::new()).is_empty());
    let fixed = run_plan(&with_code("v2"), &states, now, &HashMap::new());
    assert_eq!(fixed.len(), 1, "{fixed:?}");
    assert_eq!(
        (fixed[0].attempt, fixed[0].reason),
        (1, Reason::CodeChanged)
    );
}

#[test]
fn a_run_past_its_timeout_is_tried_again() {
    let mut states = States::new();
    let p = Partition::containing(Grain::Hour, DAY0);
    let running = PartitionRecord {
        status: Status::Running,
        attempts: 1,
        next_attempt_ms: None,
        started_ms: Some(DAY0 + HOUR + 10 * MIN),
        lease_until_ms: None,
        inputs_fingerprint: None,
        output_fingerprint: None,
        forced: false,
        code: None,
    };
    states.insert(("device_health_hourly".into(), p), running);
    let mut one = hourly();
    one.end_ms = Some(DAY0 + HOUR);
    let catalog_one = Catalog::new(vec![one]).unwrap();
    assert!(
        run_plan(
            &catalog_one,
            &states,
            DAY0 + HOUR + 30 * MIN,
            &HashMap::new()
        )
        .is_empty()
    );
    let tasks = run_plan(
        &catalog_one,
        &states,
        DAY0 + HOUR + 41 * MIN,
        &HashMap::new(),
    );
    assert_eq!((tasks[0].attempt, tasks[0].reason), (2, Reason::TimedOut));
}

/// What late data in 2026-11-20T13 re-runs: the hour, its day and the
/// fleet's day.
const LATE_13H_RERUNS: [&str; 3] = [
    "device_health_hourly 2026-11-20T13",
    "device_health_daily 2026-11-20",
    "fleet_health_daily 2026-11-20",
];

#[test]
fn late_data_reruns_exactly_the_hour_its_day_and_the_fleet_day() {
    let catalog = Catalog::new(vec![hourly(), daily(), fleet()]).unwrap();
    let mut states = States::new();
    let mut files = HashMap::new();
    let now = DAY0 + 2 * 24 * HOUR + 30 * MIN;
    let first = settle(&catalog, &mut states, now, &files);
    assert_eq!(first.len(), 48 + 2 + 2);
    assert!(
        settle(&catalog, &mut states, now, &files).is_empty(),
        "nothing re-runs unchanged"
    );

    // A terminal replays its offline backlog into 2026-11-20T13.
    files.insert(Partition::parse_key("2026-11-20T13").unwrap(), "v2".into());
    let rerun = settle(&catalog, &mut states, now + 5 * MIN, &files);
    assert_eq!(keys(&rerun), LATE_13H_RERUNS);
    assert!(rerun.iter().all(|t| t.reason == Reason::Stale));
}

#[test]
fn a_store_local_day_reads_and_waits_for_the_hours_of_its_time_zones() {
    // Stores from UTC-5 to UTC+2: a day reads from 2 h before to 5 h after
    // its UTC day.
    let mut local = daily();
    local.reads_before_ms = 2 * HOUR;
    local.reads_after_ms = 5 * HOUR;
    let mut hours = hourly();
    hours.start_ms = DAY0 - 2 * HOUR;
    let catalog = Catalog::new(vec![hours, local.clone(), fleet()]).unwrap();
    let day = Partition::parse_key("2026-11-20").unwrap();
    let read = local.input_partitions(day, Grain::Hour);
    assert_eq!(read.len(), 2 + 24 + 5);
    assert_eq!(read[0].key(), "2026-11-19T22");
    assert_eq!(read[30].key(), "2026-11-21T04");
    assert_eq!(
        local.reading(Partition::parse_key("2026-11-20T23").unwrap()),
        [day, day.next()],
        "late hours of a day are early hours of the next for zones ahead"
    );

    let mut states = States::new();
    let mut files = HashMap::new();
    // At 00:30 after the UTC day, the zones behind UTC are still open.
    let ran = settle(&catalog, &mut states, DAY0 + 24 * HOUR + 30 * MIN, &files);
    assert!(ran.iter().all(|t| t.job == "device_health_hourly"));
    let ran = settle(&catalog, &mut states, DAY0 + 29 * HOUR + 10 * MIN, &files);
    assert_eq!(
        keys(&ran)[ran.len() - 3..],
        [
            "device_health_hourly 2026-11-21T04",
            "device_health_daily 2026-11-20",
            "fleet_health_daily 2026-11-20"
        ]
    );

    // Late data at midday re-runs one day; near midnight, the two days
    // whose zones hold that hour.
    let now = DAY0 + 2 * 24 * HOUR + 6 * HOUR;
    settle(&catalog, &mut states, now, &files);
    files.insert(Partition::parse_key("2026-11-20T13").unwrap(), "v2".into());
    let rerun = settle(&catalog, &mut states, now + 5 * MIN, &files);
    assert_eq!(keys(&rerun), LATE_13H_RERUNS);
    files.insert(Partition::parse_key("2026-11-20T23").unwrap(), "v2".into());
    let rerun = settle(&catalog, &mut states, now + 5 * MIN, &files);
    assert_eq!(
        keys(&rerun),
        [
            "device_health_hourly 2026-11-20T23",
            "device_health_daily 2026-11-20",
            "device_health_daily 2026-11-21",
            "fleet_health_daily 2026-11-20",
            "fleet_health_daily 2026-11-21"
        ]
    );
}

#[test]
fn hours_that_retention_deletes_never_run_again_and_newer_ones_still_do() {
    const DAY: i64 = 24 * HOUR;
    let mut h = hourly();
    h.kept_ms = Some(3 * DAY);
    let mut d = daily();
    d.kept_ms = Some(3 * DAY);
    let catalog = Catalog::new(vec![h, d]).unwrap();
    let mut states = States::new();
    let mut files = HashMap::new();
    // Day 2, 00:30: days 0 and 1 are all within the three days kept.
    let first = settle(&catalog, &mut states, DAY0 + 2 * DAY + 30 * MIN, &files);
    assert_eq!(first.len(), 48 + 2);

    // Day 3, 00:30: retention deletes nothing yet (days before day 0) but
    // day 0 goes tomorrow; its hours and its day are frozen.
    let now = DAY0 + 3 * DAY + 30 * MIN;
    // Retention deleting day 0 changes its hours' fingerprints, and a
    // late reading lands in day 1.
    for hour in 0..24 {
        files.insert(
            Partition::containing(Grain::Hour, DAY0 + hour * HOUR),
            "gone".into(),
        );
    }
    files.insert(Partition::parse_key("2026-11-21T05").unwrap(), "v2".into());
    let rerun = settle(&catalog, &mut states, now, &files);
    let ran = keys(&rerun);
    assert!(
        ran.iter().all(|k| !k.contains("2026-11-20")),
        "nothing of day 0 ran again: {ran:?}"
    );
    assert!(ran.contains(&"device_health_hourly 2026-11-21T05".to_string()));
    assert!(ran.contains(&"device_health_daily 2026-11-21".to_string()));
    // Day 2's hours, newly due, ran as ever.
    assert!(ran.contains(&"device_health_hourly 2026-11-22T23".to_string()));
}

#[test]
fn a_partition_is_not_rewritten_while_a_run_reads_it() {
    let catalog = Catalog::new(vec![hourly(), daily(), fleet()]).unwrap();
    let mut states = States::new();
    let mut files = HashMap::new();
    let now = DAY0 + 2 * 24 * HOUR + 30 * MIN;
    settle(&catalog, &mut states, now, &files);

    // The first day's rollup is running (reading its 24 hours) when late
    // data lands in one of them.
    let day = Partition::parse_key("2026-11-20").unwrap();
    let key = ("device_health_daily".to_string(), day);
    let mut running = states[&key].clone();
    running.status = Status::Running;
    running.started_ms = Some(now);
    running.lease_until_ms = Some(now + 10 * MIN);
    states.insert(key.clone(), running);
    let hour = Partition::parse_key("2026-11-20T13").unwrap();
    files.insert(hour, "v2".into());
    let tasks = run_plan(&catalog, &states, now + MIN, &files);
    assert!(
        !keys(&tasks).contains(&format!("device_health_hourly {hour}")),
        "the hour waits for the day reading it: {:?}",
        keys(&tasks)
    );

    // Once the day's run is over, the hour runs, then the day again.
    let mut done = states[&key].clone();
    done.status = Status::Succeeded;
    done.lease_until_ms = None;
    states.insert(key, done);
    let rerun = settle(&catalog, &mut states, now + 2 * MIN, &files);
    assert_eq!(keys(&rerun), LATE_13H_RERUNS);
}

/// A weekly job over a daily one runs once its seven days have: on the
/// Monday after, not before; a monthly one over the weekly runs when the
/// month (and every week touching it) is done; late data in one hour
/// re-runs that hour, its day, its week and its month, nothing else.
#[test]
fn weeks_and_months_wait_for_their_days_and_late_data_reaches_them() {
    // DAY0 is Friday 2026-11-20; the ISO week of 2026-11-23 is W48.
    let mut weekly = job(
        "weekly",
        Grain::Week,
        Input::Job("device_health_daily".into()),
    );
    let mut monthly = job("monthly", Grain::Month, Input::Job("weekly".into()));
    weekly.start_ms = Partition::parse_key("2026-W48").unwrap().start_ms;
    monthly.start_ms = Partition::parse_key("2026-12").unwrap().start_ms;
    let catalog = Catalog::new(vec![hourly(), daily(), weekly, monthly]).unwrap();
    let mut states = States::new();
    let files = HashMap::new();
    let w48 = Partition::parse_key("2026-W48").unwrap();

    // Sunday evening: six days of W48 are done, the week is not.
    let ran = settle(&catalog, &mut states, w48.end_ms() - 3 * HOUR, &files);
    assert!(
        keys(&ran).iter().all(|k| !k.starts_with("weekly")),
        "{:?}",
        keys(&ran)
    );
    // Monday 01:00: Sunday's day ran, then the week.
    let ran = settle(&catalog, &mut states, w48.end_ms() + HOUR, &files);
    let weeks: Vec<String> = keys(&ran)
        .into_iter()
        .filter(|k| k.starts_with("weekly") || k.starts_with("monthly"))
        .collect();
    assert_eq!(weeks, ["weekly 2026-W48"]);

    // December's weeks: W49 to W53 (the last from 2026-12-28 into 2027);
    // the month waits for W53, which ends on 2027-01-04.
    let dec = Partition::parse_key("2026-12").unwrap();
    let ran = settle(&catalog, &mut states, dec.end_ms() + HOUR, &files);
    assert!(
        keys(&ran).iter().all(|k| !k.starts_with("monthly")),
        "{:?}",
        keys(&ran)
    );
    let w53 = Partition::parse_key("2026-W53").unwrap();
    let ran = settle(&catalog, &mut states, w53.end_ms() + HOUR, &files);
    assert!(
        keys(&ran).contains(&"monthly 2026-12".to_string()),
        "{:?}",
        keys(&ran)
    );

    // Late data in one hour of 2026-12-10 (W50).
    let later = w53.end_ms() + 2 * HOUR;
    settle(&catalog, &mut states, later, &HashMap::new());
    let late_hour = Partition::parse_key("2026-12-10T05").unwrap();
    let files = HashMap::from([(late_hour, "v2".to_string())]);
    let ran = settle(&catalog, &mut states, later, &files);
    assert_eq!(
        keys(&ran),
        [
            "device_health_hourly 2026-12-10T05",
            "device_health_daily 2026-12-10",
            "weekly 2026-W50",
            "monthly 2026-12"
        ]
    );
}

/// A source whose database may take late rows: its recent partitions are
/// imported again every `every_ms` while they ended less than `within_ms`
/// ago, older ones never; what reads it runs again only for the hour whose
/// rows changed.
#[test]
fn a_rechecked_source_looks_again_at_recent_hours_and_only_changes_run_downstream() {
    let mut source = JobSpec::new("refunds", Grain::Hour, Vec::new());
    source.start_ms = DAY0;
    source.concurrency = 100;
    source.recheck = Some(tillwatch_scheduler::Recheck {
        within_ms: 3 * HOUR,
        every_ms: 10 * MIN,
    });
    let reader = job(
        "refunds_by_device",
        Grain::Hour,
        Input::Job("refunds".into()),
    );
    let catalog = Catalog::new(vec![source, reader]).unwrap();
    let mut states = States::new();
    let files = HashMap::new();
    // Each run to success, started at `at`.
    let run_all = |states: &mut States, tasks: &[Task], at: i64| {
        for task in tasks {
            succeed(states, task, &task.inputs_fingerprint);
            states
                .get_mut(&(task.job.clone(), task.partition))
                .unwrap()
                .started_ms = Some(at);
        }
    };
    let t = DAY0 + 5 * HOUR + MIN;
    let mut ran = Vec::new();
    loop {
        let tasks = run_plan(&catalog, &states, t, &files);
        if tasks.is_empty() {
            break;
        }
        run_all(&mut states, &tasks, t);
        ran.extend(tasks);
    }
    assert_eq!(ran.len(), 10, "{:?}", keys(&ran));

    // Not again before ten minutes.
    assert!(run_plan(&catalog, &states, t + 9 * MIN, &files).is_empty());

    // Eleven minutes on: the hours that ended less than three hours ago.
    let now = t + 11 * MIN;
    let tasks = run_plan(&catalog, &states, now, &files);
    let hour = |h: i64| Partition::containing(Grain::Hour, DAY0 + h * HOUR);
    assert_eq!(
        keys(&tasks),
        [2, 3, 4].map(|h| format!("refunds {}", hour(h)))
    );
    assert!(tasks.iter().all(|t| t.reason == Reason::Recheck));
    // Hour 4 got a late row; the others are as they were.
    for task in &tasks {
        let before = states[&(task.job.clone(), task.partition)]
            .output_fingerprint
            .clone()
            .unwrap();
        let output = if task.partition == hour(4) {
            "with the late row".to_string()
        } else {
            before
        };
        succeed(&mut states, task, &output);
        states
            .get_mut(&(task.job.clone(), task.partition))
            .unwrap()
            .started_ms = Some(now);
    }
    let tasks = run_plan(&catalog, &states, now, &files);
    assert_eq!(keys(&tasks), [format!("refunds_by_device {}", hour(4))]);
    assert_eq!(tasks[0].reason, Reason::Stale);
}
