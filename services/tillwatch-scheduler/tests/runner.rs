//! The runner against the metadata store, on SQLite and on PostgreSQL,
//! with an injected clock and a test executor that records what it ran:
//! two schedulers never run a partition twice, a failure retries after its
//! backoff, a dead scheduler's run is taken over after its timeout, a live
//! one keeps its claim by renewing it (and stops if it is taken), late
//! data re-runs exactly the affected partitions (read from the run
//! history), and each run records the input partitions it read.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};

use tillwatch_meta::testing::TestDatabase;
use tillwatch_meta::{Claim, JobRunRow, MetaStore};
use tillwatch_scheduler::{
    Catalog, Executor, Grain, Input, JobError, JobSpec, Output, Partition, Progress, RunFuture,
    Runner, Snapshot, ops,
};

const HOUR: i64 = 3_600_000;
const MIN: i64 = 60_000;
/// 2026-11-20T00:00Z.
const DAY0: i64 = 1_795_132_800_000;

#[derive(Default)]
struct Recorder {
    calls: Mutex<Vec<(String, Partition)>>,
    /// Fail this many times first, per partition key.
    failures: Mutex<HashMap<String, u32>>,
}

impl Executor for Recorder {
    fn run<'a>(&'a self, job: &'a JobSpec, partition: Partition) -> RunFuture<'a> {
        Box::pin(async move {
            let n = {
                let mut calls = self.calls.lock().unwrap();
                calls.push((job.name.clone(), partition));
                calls
                    .iter()
                    .filter(|c| c.0 == job.name && c.1 == partition)
                    .count()
            };
            tokio::task::yield_now().await;
            if let Some(left) = self.failures.lock().unwrap().get_mut(&partition.key())
                && *left > 0
            {
                *left -= 1;
                return Err(JobError::input("injected failure"));
            }
            // A new output each run: downstream follows every re-run.
            Ok(Output {
                rows: 10,
                fingerprint: format!("{}-{partition}-{n}", job.name),
                messages: Vec::new(),
            })
        })
    }
}

fn catalog() -> Catalog {
    let mut hourly = JobSpec::new(
        "device_health_hourly",
        Grain::Hour,
        vec![Input::Source("battery".into())],
    );
    hourly.start_ms = DAY0;
    hourly.concurrency = 8;
    hourly.timeout_ms = 10 * MIN;
    let mut daily = JobSpec::new(
        "device_health_daily",
        Grain::Day,
        vec![Input::Job("device_health_hourly".into())],
    );
    daily.start_ms = DAY0;
    Catalog::new(vec![hourly, daily]).unwrap()
}

struct Setup {
    store: MetaStore,
    clock: Arc<AtomicI64>,
    executor: Arc<Recorder>,
}

impl Setup {
    async fn new(url: &str, now: i64) -> Setup {
        let store = MetaStore::connect(url).await.unwrap();
        store.migrate().await.unwrap();
        Setup {
            store,
            clock: Arc::new(AtomicI64::new(now)),
            executor: Arc::new(Recorder::default()),
        }
    }

    async fn runner(&self, url: &str, name: &str) -> Runner {
        self.runner_of(catalog(), url, name).await
    }

    async fn runner_of(&self, catalog: Catalog, url: &str, name: &str) -> Runner {
        let clock = self.clock.clone();
        Runner::new(
            catalog,
            MetaStore::connect(url).await.unwrap(),
            self.executor.clone(),
            name,
            Arc::new(move || clock.load(Ordering::SeqCst)),
        )
    }

    fn at(&self, t: i64) {
        self.clock.store(t, Ordering::SeqCst);
    }

    fn now(&self) -> i64 {
        self.clock.load(Ordering::SeqCst)
    }

    /// `<scheduler> <status>` of each run of `partition`, newest first.
    async fn runs_of(&self, partition: &str) -> Vec<String> {
        self.store
            .job_runs(None, Some(partition), 10)
            .await
            .unwrap()
            .into_iter()
            .map(|r| format!("{} {}", r.scheduler, r.status))
            .collect()
    }
}

fn unchanged(_: &str, _: Partition) -> String {
    "v1".into()
}

async fn two_schedulers_never_run_a_partition_twice(url: &str) {
    let s = Setup::new(url, DAY0 + 24 * HOUR + 30 * MIN).await;
    let a = s.runner(url, "scheduler-a").await;
    let b = s.runner(url, "scheduler-b").await;
    let watermark = s.now();
    loop {
        let (ra, rb) = tokio::join!(a.step(watermark, &unchanged), b.step(watermark, &unchanged));
        let (ra, rb) = (ra.unwrap(), rb.unwrap());
        if ra.is_empty() && rb.is_empty() {
            break;
        }
    }
    let calls = s.executor.calls.lock().unwrap().clone();
    let mut counts: HashMap<(String, Partition), usize> = HashMap::new();
    for c in &calls {
        *counts.entry(c.clone()).or_default() += 1;
    }
    assert_eq!(counts.len(), 25, "24 hours and their day");
    assert!(counts.values().all(|n| *n == 1), "{counts:?}");
    let runs = s.store.job_runs(None, None, 100).await.unwrap();
    assert_eq!(runs.len(), 25);
    assert!(runs.iter().all(|r| r.status == "succeeded"));
}

async fn failures_retry_after_backoff_and_runs_record_their_inputs(url: &str) {
    let s = Setup::new(url, DAY0 + 24 * HOUR + 30 * MIN).await;
    s.executor
        .failures
        .lock()
        .unwrap()
        .insert("2026-11-20T05".into(), 1);
    let runner = s.runner(url, "scheduler-a").await;
    let watermark = s.now();
    while !runner.step(watermark, &unchanged).await.unwrap().is_empty() {}
    let failed = s
        .store
        .job_runs(Some("device_health_hourly"), Some("2026-11-20T05"), 10)
        .await
        .unwrap();
    assert_eq!(failed.len(), 1);
    assert_eq!(
        (failed[0].status.as_str(), failed[0].error.as_deref()),
        ("failed", Some("injected failure"))
    );
    assert!(
        s.store
            .job_runs(Some("device_health_daily"), None, 10)
            .await
            .unwrap()
            .is_empty(),
        "the day waits for its failed hour"
    );
    // 29 s on: still backing off. 30 s on: attempt 2, then the day.
    s.at(s.now() + 29_000);
    assert!(runner.step(watermark, &unchanged).await.unwrap().is_empty());
    s.at(s.now() + 1_000);
    let ran = runner.step(watermark, &unchanged).await.unwrap();
    assert_eq!(ran.len(), 1);
    assert_eq!(ran[0].task.attempt, 2);
    let ran = runner.step(watermark, &unchanged).await.unwrap();
    assert_eq!(ran[0].task.job, "device_health_daily");
    let day = &s
        .store
        .job_runs(Some("device_health_daily"), None, 10)
        .await
        .unwrap()[0];
    let inputs: Vec<serde_json::Value> = serde_json::from_str(&day.inputs).unwrap();
    assert_eq!(inputs.len(), 24);
    assert_eq!(inputs[5]["job"], "device_health_hourly");
    assert_eq!(inputs[5]["partition"], "2026-11-20T05");
    assert_eq!(
        inputs[5]["fingerprint"], "device_health_hourly-2026-11-20T05-2",
        "its second run's output"
    );
}

fn dead_run(started: i64) -> JobRunRow {
    JobRunRow {
        run_id: "dead-run".into(),
        job: "device_health_hourly".into(),
        partition_key: "2026-11-20T00".into(),
        attempt: 1,
        reason: "scheduled".into(),
        scheduler: "scheduler-a".into(),
        started_ms: started,
        finished_ms: None,
        status: "running".into(),
        error: None,
        rows_written: None,
        inputs: "[]".into(),
        inputs_fingerprint: "x".into(),
        output_fingerprint: None,
        code: None,
        note: None,
        messages: None,
    }
}

/// A fresh claim of 2026-11-20T00 for `run`, leased for ten minutes from
/// `now`.
fn first_hour(run: &JobRunRow, now: i64) -> Claim<'_> {
    Claim {
        job: "device_health_hourly",
        partition_key: "2026-11-20T00",
        grain: "hour",
        start_ms: DAY0,
        expected_run_id: None,
        run,
        lease_until_ms: now + 10 * MIN,
    }
}

async fn a_dead_schedulers_run_is_taken_over_after_its_timeout(url: &str) {
    let s = Setup::new(url, DAY0 + HOUR + 30 * MIN).await;
    // Scheduler A claims 2026-11-20T00 and dies without a word.
    let started = s.now();
    let claimed = s
        .store
        .claim_partition(&first_hour(&dead_run(started), started))
        .await
        .unwrap();
    assert!(claimed);
    // Anyone else planning from before A's claim loses the race.
    let rival = JobRunRow {
        run_id: "rival-run".into(),
        scheduler: "scheduler-c".into(),
        ..dead_run(started)
    };
    let lost = s
        .store
        .claim_partition(&first_hour(&rival, started))
        .await
        .unwrap();
    assert!(!lost, "a partition is claimed once");
    let b = s.runner(url, "scheduler-b").await;
    let watermark = s.now();
    s.at(started + 9 * MIN);
    assert!(
        b.step(watermark, &unchanged).await.unwrap().is_empty(),
        "A's lease holds"
    );
    s.at(started + 10 * MIN + 1);
    let ran = b.step(watermark, &unchanged).await.unwrap();
    assert_eq!(ran.len(), 1);
    assert_eq!(
        (ran[0].task.attempt, ran[0].task.partition.key().as_str()),
        (2, "2026-11-20T00")
    );
    // A wakes up and reports: too late, its claim is gone.
    assert!(
        !s.store
            .finish_run("dead-run", s.now(), Ok((1, "stale-output", String::new())))
            .await
            .unwrap()
    );
    assert_eq!(
        s.runs_of("2026-11-20T00").await,
        ["scheduler-b succeeded", "scheduler-a abandoned"]
    );
}

/// Runs that last until the test lets them go (or until they are stopped).
#[derive(Default)]
struct Held {
    release: tokio::sync::Notify,
    started: AtomicI64,
    stopped: AtomicI64,
}

struct CountsDrop<'a>(&'a AtomicI64, bool);

impl Drop for CountsDrop<'_> {
    fn drop(&mut self) {
        if !self.1 {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
}

impl Executor for Held {
    fn run<'a>(&'a self, job: &'a JobSpec, partition: Partition) -> RunFuture<'a> {
        Box::pin(async move {
            let mut dropped = CountsDrop(&self.stopped, false);
            self.started.fetch_add(1, Ordering::SeqCst);
            self.release.notified().await;
            dropped.1 = true;
            Ok(Output {
                rows: 1,
                fingerprint: format!("{}-{partition}", job.name),
                messages: Vec::new(),
            })
        })
    }
}

/// Polls `check` until it holds, failing after 20 s.
async fn until<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !check().await {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

async fn a_long_run_keeps_its_claim_and_a_run_whose_claim_is_taken_stops(url: &str) {
    let s = Setup::new(url, DAY0 + HOUR + 30 * MIN).await;
    let mut hourly = JobSpec::new(
        "device_health_hourly",
        Grain::Hour,
        vec![Input::Source("battery".into())],
    );
    hourly.start_ms = DAY0;
    hourly.end_ms = Some(DAY0 + HOUR);
    hourly.timeout_ms = 24 * HOUR;
    let catalog = Catalog::new(vec![hourly]).unwrap();
    let held = Arc::new(Held::default());
    let clock = s.clock.clone();
    let lease = std::time::Duration::from_millis(300);
    let a = Runner::new(
        catalog.clone(),
        MetaStore::connect(url).await.unwrap(),
        held.clone(),
        "scheduler-a",
        Arc::new(move || clock.load(Ordering::SeqCst)),
    )
    .with_lease(lease);
    let b = s.runner_of(catalog, url, "scheduler-b").await;
    let watermark = s.now();
    let store = s.store.clone();
    let lease_until = || async {
        store.job_partitions().await.unwrap()[0]
            .lease_until_ms
            .unwrap_or(i64::MIN)
    };
    let check = async {
        until("A to start its run", || async {
            held.started.load(Ordering::SeqCst) == 1
        })
        .await;
        // An hour of the injected clock passes: far beyond the lease, which
        // A keeps renewing while it runs.
        s.at(s.now() + HOUR);
        let renewed_past = s.now();
        until("A to renew its claim", || async {
            lease_until().await > renewed_past
        })
        .await;
        assert!(
            b.step(watermark, &unchanged).await.unwrap().is_empty(),
            "a live scheduler's claim holds however long its run takes"
        );
        // Another scheduler takes the partition over anyway (as one would
        // after A lost the store for longer than its lease): A's next
        // renewal finds the claim gone and stops its run.
        let run_id = store.job_partitions().await.unwrap()[0].run_id.clone();
        let later = lease_until().await + 1;
        let rival = JobRunRow {
            run_id: "rival-run".into(),
            scheduler: "scheduler-c".into(),
            partition_key: "2026-11-20T00".into(),
            attempt: 2,
            ..dead_run(later)
        };
        assert!(
            store
                .claim_partition(&Claim {
                    job: "device_health_hourly",
                    partition_key: "2026-11-20T00",
                    grain: "hour",
                    start_ms: DAY0,
                    expected_run_id: run_id.as_deref(),
                    run: &rival,
                    lease_until_ms: later + HOUR,
                })
                .await
                .unwrap()
        );
    };
    let (ran, ()) = tokio::join!(a.step(watermark, &unchanged), check);
    let ran = ran.unwrap();
    assert_eq!(ran.len(), 1);
    let error = ran[0].result.as_ref().unwrap_err();
    assert_eq!(error, &JobError::ClaimLost);
    assert!(error.to_string().contains("claim"), "{error}");
    assert_eq!(
        held.stopped.load(Ordering::SeqCst),
        1,
        "A's run was stopped, not left running beside the new owner"
    );
    assert_eq!(
        s.runs_of("2026-11-20T00").await,
        ["scheduler-c running", "scheduler-a abandoned"]
    );
}

async fn late_data_reruns_the_hour_and_its_day_only(url: &str) {
    let s = Setup::new(url, DAY0 + 24 * HOUR + 30 * MIN).await;
    let runner = s.runner(url, "scheduler-a").await;
    let watermark = s.now();
    while !runner.step(watermark, &unchanged).await.unwrap().is_empty() {}
    assert_eq!(s.store.job_runs(None, None, 100).await.unwrap().len(), 25);
    // A backlog replayed into 13:00 changes that hour's files.
    let late = |_: &str, hour: Partition| {
        if hour.key() == "2026-11-20T13" {
            "v2".into()
        } else {
            "v1".into()
        }
    };
    s.at(s.now() + 10 * MIN);
    while !runner.step(watermark, &late).await.unwrap().is_empty() {}
    let runs = s.store.job_runs(None, None, 100).await.unwrap();
    let reruns: Vec<_> = runs
        .iter()
        .filter(|r| r.reason == "stale")
        .map(|r| format!("{} {}", r.job, r.partition_key))
        .collect();
    assert_eq!(
        reruns,
        [
            "device_health_daily 2026-11-20",
            "device_health_hourly 2026-11-20T13"
        ]
    );
    assert_eq!(runs.len(), 27, "nothing else ran");
}

fn with_fleet() -> Catalog {
    let mut jobs = catalog().jobs().to_vec();
    let mut fleet = JobSpec::new(
        "fleet_health_daily",
        Grain::Day,
        vec![Input::Job("device_health_daily".into())],
    );
    fleet.start_ms = DAY0;
    jobs.push(fleet);
    Catalog::new(jobs).unwrap()
}

/// A week's backfill with its downstream jobs, driven from one process
/// while a scheduler runs beside it: every partition of the range runs
/// exactly once more, each day after its 24 hours and each fleet day after
/// its device day, and nothing outside the range runs.
async fn a_backfilled_week_runs_downstream_in_order_beside_a_scheduler(url: &str) {
    let s = Setup::new(url, DAY0 + 8 * 24 * HOUR + 30 * MIN).await;
    let scheduler = s.runner_of(with_fleet(), url, "scheduler-a").await;
    let backfill = s.runner_of(with_fleet(), url, "backfill").await;
    let watermark = s.now();
    // The snapshot below knows no files: every hour's fingerprint is "".
    let fingerprint = |_: &str, _: Partition| String::new();
    while !scheduler
        .step(watermark, &fingerprint)
        .await
        .unwrap()
        .is_empty()
    {}
    let before = s.executor.calls.lock().unwrap().len();
    assert_eq!(before, 8 * 24 + 8 + 8, "eight whole days ran first");

    let from = Partition::parse_key("2026-11-21").unwrap();
    let to = Partition::parse_key("2026-11-27").unwrap();
    let targets = ops::targets(
        backfill.catalog(),
        "device_health_hourly",
        from.start_ms,
        to.end_ms(),
        true,
        s.now(),
    )
    .unwrap();
    assert_eq!(targets.len(), 7 * 24 + 7 + 7);
    assert_eq!(targets[0].to_string(), "device_health_hourly 2026-11-21T00");
    assert_eq!(
        targets[7 * 24].to_string(),
        "device_health_daily 2026-11-21"
    );
    assert_eq!(
        targets.last().unwrap().to_string(),
        "fleet_health_daily 2026-11-27"
    );
    // Without --downstream, only the hours; a range that has not ended yet
    // is clipped to what has.
    assert_eq!(
        ops::targets(
            backfill.catalog(),
            "device_health_hourly",
            from.start_ms,
            to.end_ms(),
            false,
            s.now()
        )
        .unwrap()
        .len(),
        7 * 24
    );
    assert!(ops::targets(backfill.catalog(), "nope", 0, 1, false, s.now()).is_err());

    s.at(s.now() + MIN);
    let since = s.now();
    ops::request(backfill.store(), &targets, since)
        .await
        .unwrap();
    let done = std::sync::atomic::AtomicBool::new(false);
    let snapshot = || async {
        Snapshot {
            watermark_ms: watermark,
            ..Snapshot::default()
        }
    };
    let (states, ()) = tokio::join!(
        async {
            let states = ops::drive(
                &backfill,
                &targets,
                since,
                snapshot,
                std::time::Duration::from_millis(5),
                |_, _| {},
            )
            .await
            .unwrap();
            done.store(true, Ordering::SeqCst);
            states
        },
        async {
            while !done.load(Ordering::SeqCst) {
                scheduler.step(watermark, &fingerprint).await.unwrap();
                tokio::task::yield_now().await;
            }
        }
    );
    assert!(
        states
            .iter()
            .all(|p| matches!(p, Progress::Succeeded { rows: Some(10) })),
        "{states:?}"
    );
    let calls = s.executor.calls.lock().unwrap()[before..].to_vec();
    let mut seen = std::collections::HashSet::new();
    for c in &calls {
        assert!(seen.insert(c.clone()), "{c:?} ran twice");
    }
    assert_eq!(calls.len(), targets.len(), "nothing outside the range ran");
    let index = |job: &str, p: Partition| {
        calls
            .iter()
            .position(|c| c.0 == job && c.1 == p)
            .unwrap_or_else(|| panic!("{job} {p} did not run"))
    };
    for day in Partition::range(Grain::Day, from.start_ms, to.end_ms()) {
        let daily = index("device_health_daily", day);
        for hour in day.covering(Grain::Hour) {
            assert!(
                index("device_health_hourly", hour) < daily,
                "{day} before {hour}"
            );
        }
        assert!(daily < index("fleet_health_daily", day));
    }
    let runs = s.store.job_runs(None, None, 1000).await.unwrap();
    assert_eq!(
        runs.iter().filter(|r| r.reason == "forced").count(),
        targets.len()
    );
    // Asked again, the scheduler alone has nothing to do: nothing is stale.
    assert!(
        scheduler
            .step(watermark, &fingerprint)
            .await
            .unwrap()
            .is_empty()
    );
}

macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $name() {
                    let db = super::TestDatabase::sqlite();
                    super::$name(&db.url).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test]
                async fn $name() {
                    let db = super::TestDatabase::postgres().await;
                    super::$name(&db.url).await;
                    db.drop_it().await;
                }
            )*
        }
    };
}

on_both_backends!(
    two_schedulers_never_run_a_partition_twice,
    failures_retry_after_backoff_and_runs_record_their_inputs,
    a_dead_schedulers_run_is_taken_over_after_its_timeout,
    a_long_run_keeps_its_claim_and_a_run_whose_claim_is_taken_stops,
    late_data_reruns_the_hour_and_its_day_only,
    a_backfilled_week_runs_downstream_in_order_beside_a_scheduler,
);
