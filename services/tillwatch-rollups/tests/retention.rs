//! Retention on a virtual clock, through the scheduler as configured
//! (`service::open`): the `retention` job deletes the lake's days older
//! than each table keeps and prunes superseded run records, and no rollup
//! ever runs again over days that retention deleted: their outputs stay as
//! they were.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use tillwatch_config::{Config, RollupEngine};
use tillwatch_domain::{
    Battery, BootId, DeadLetter, DeviceId, MerchantId, Reading, Signal, StoreId, UtcMillis,
};
use tillwatch_meta::MetaStore;
use tillwatch_meta::testing::TestDatabase;
use tillwatch_rollups::jobs;
use tillwatch_rollups::retention::RETENTION;
use tillwatch_rollups::service;
use tillwatch_scheduler::Runner;
use tillwatch_storage::{Lake, Staging, StoredReading};

const MIN: i64 = 60_000;
const HOUR: i64 = 60 * MIN;
const DAY: i64 = 24 * HOUR;
/// 2026-11-20T00:00Z.
const DAY0: i64 = 1_795_132_800_000;
const DAYS: Duration = Duration::from_secs(86_400);

/// t-1's battery every 10 minutes of `day` (days after DAY0), in `file`.
fn write_day(lake: &Lake, day: i64, minutes: impl Iterator<Item = i64>, file: &str) {
    let merchant = MerchantId::new("m-1").unwrap();
    let store = StoreId::new("s-1").unwrap();
    let readings: Vec<Reading> = minutes
        .map(|m| Reading {
            device_id: DeviceId::new("t-1").unwrap(),
            boot_id: BootId(1),
            seq: (day * 1440 + m) as u64,
            sampled_at: UtcMillis(DAY0 + day * DAY + m * MIN),
            signal: Signal::Battery(Battery::healthy(70, false)),
        })
        .collect();
    let mut staging = Staging::new();
    for r in &readings {
        staging.push_reading(StoredReading {
            reading: r,
            merchant_id: &merchant,
            store_id: Some(&store),
            received_at: r.sampled_at,
        });
    }
    if day == 0 && file == "a.parquet" {
        staging.push_dead_letter(&DeadLetter {
            received_at: UtcMillis(DAY0 + 5 * MIN),
            topic: "tw/v1/m-1/t-1/telemetry".into(),
            merchant_id: Some("m-1".into()),
            device_id: Some("t-1".into()),
            reason_code: "decode",
            reason: "not protobuf".into(),
            payload: b"junk".to_vec(),
        });
    }
    for part in staging.finish() {
        let path = lake.file_path(part.table, part.hour, file);
        lake.write_part(&part, &path).unwrap();
    }
}

/// Rounds until nothing is due, at the clock's time with the gateways'
/// watermark there too.
async fn settle(runner: &Runner, lake: &Lake, now: i64) {
    lake.write_watermark("gw-1", now).unwrap();
    loop {
        let snap = service::snapshot(runner, lake.clone(), Duration::from_secs(3600)).await;
        let ran = runner
            .step(snap.watermark_ms, &|t, p| snap.fingerprint(t, p))
            .await
            .unwrap();
        for r in &ran {
            assert!(
                r.result.is_ok(),
                "{} {}: {:?}",
                r.task.job,
                r.task.partition,
                r.result
            );
        }
        if ran.is_empty() {
            return;
        }
    }
}

fn days_of(lake: &Lake, table: &str) -> Vec<String> {
    lake.subdirectories(&lake.root().join(table)).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_deletes_old_days_and_nothing_reruns_over_them() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config {
        data_dir: dir.path().to_path_buf(),
        ..Config::default()
    };
    config.scheduler.engine = RollupEngine::Embedded;
    config.scheduler.start = "2026-11-20".into();
    config.scheduler.local_day_utc_offsets = [0, 0];
    config.retention.raw = 4 * DAYS;
    config.retention.dead_letter = 2 * DAYS;
    config.retention.hourly_rollups = 4 * DAYS;
    config.retention.daily_rollups = 30 * DAYS;
    config.retention.job_runs = 2 * DAYS;
    config.validate().unwrap();
    let db = TestDatabase::sqlite();
    let store = MetaStore::connect(&db.url).await.unwrap();
    store.migrate().await.unwrap();
    let clock = Arc::new(AtomicI64::new(DAY0 + 3 * DAY + 30 * MIN));
    let now = clock.clone();
    let (runner, lake) = service::open(
        &config,
        store.clone(),
        Arc::new(move || now.load(Ordering::SeqCst)),
    )
    .unwrap();
    for day in 0..3 {
        write_day(&lake, day, (0..1440).step_by(10), "a.parquet");
    }

    assert_eq!(days_of(&lake, "dead_letter"), ["date=2026-11-20"]);

    // Day 3, 00:30: days 0-2 roll up; retention (for day 2) deletes the
    // dead letters of day 0 (kept two days) and no readings (kept four).
    settle(&runner, &lake, clock.load(Ordering::SeqCst)).await;
    let daily = tillwatch_rollups::embedded::Embedded::new(lake.clone());
    let day_output = |d: i64| {
        let p = tillwatch_scheduler::Partition::containing(
            tillwatch_scheduler::Grain::Day,
            DAY0 + d * DAY,
        );
        std::fs::read(daily.output_path(jobs::DEVICE_HEALTH_DAILY, p)).unwrap()
    };
    let before: Vec<Vec<u8>> = (0..3).map(day_output).collect();
    let raw_days = ["date=2026-11-20", "date=2026-11-21", "date=2026-11-22"];
    assert_eq!(days_of(&lake, "battery"), raw_days);
    assert!(days_of(&lake, "dead_letter").is_empty());

    // A late backlog lands in day 2's 13:00: its hour, day and fleet day
    // run again, so their first runs are superseded.
    write_day(
        &lake,
        2,
        (780..840).step_by(10).map(|m| m + 1),
        "late.parquet",
    );
    clock.fetch_add(10 * MIN, Ordering::SeqCst);
    settle(&runner, &lake, clock.load(Ordering::SeqCst)).await;
    let runs = store.job_runs(None, None, 10_000).await.unwrap();
    let superseded = runs
        .iter()
        .filter(|r| r.job == jobs::RAW_COMPACTION && r.partition_key == "2026-11-22T13")
        .count();
    assert_eq!(superseded, 2);
    let before_2 = day_output(2);

    // Day 6, 00:30: retention (for day 5) deletes raw and hourly days
    // before day 2.
    clock.store(DAY0 + 6 * DAY + 30 * MIN, Ordering::SeqCst);
    settle(&runner, &lake, clock.load(Ordering::SeqCst)).await;
    assert_eq!(days_of(&lake, "battery"), ["date=2026-11-22"]);
    let hourly = days_of(&lake, jobs::DEVICE_HEALTH_HOURLY);
    assert!(
        !hourly.contains(&"date=2026-11-20".to_string())
            && !hourly.contains(&"date=2026-11-21".to_string())
            && hourly.contains(&"date=2026-11-22".to_string()),
        "{hourly:?}"
    );
    // The daily outputs (kept 30 days) are untouched: nothing re-ran over
    // the deleted hours (days 0-2 are frozen now: within a day of going).
    assert_eq!(day_output(0), before[0]);
    assert_eq!(day_output(1), before[1]);
    assert_eq!(day_output(2), before_2);
    let runs = store.job_runs(None, None, 10_000).await.unwrap();
    let retention: Vec<_> = runs.iter().filter(|r| r.job == RETENTION).collect();
    assert!(
        retention
            .iter()
            .any(|r| r.partition_key == "2026-11-25" && r.rows_written.unwrap_or(0) > 0),
        "{retention:?}"
    );

    // Day 7, 00:30: raw day 2 goes too, and so do the run records older
    // than two days that no partition points at (the superseded ones).
    clock.store(DAY0 + 7 * DAY + 30 * MIN, Ordering::SeqCst);
    settle(&runner, &lake, clock.load(Ordering::SeqCst)).await;
    assert!(days_of(&lake, "battery").is_empty());
    let runs = store.job_runs(None, None, 10_000).await.unwrap();
    assert_eq!(
        runs.iter()
            .filter(|r| r.job == jobs::RAW_COMPACTION && r.partition_key == "2026-11-22T13")
            .count(),
        1,
        "the superseded run is pruned, the current one kept"
    );
    let reran_old: Vec<String> = runs
        .iter()
        .filter(|r| r.reason != "scheduled" && r.job != RETENTION)
        .filter(|r| r.started_ms > DAY0 + 4 * DAY)
        .map(|r| format!("{} {} {}", r.job, r.partition_key, r.reason))
        .collect();
    assert!(
        reran_old.is_empty(),
        "re-ran after retention: {reran_old:?}"
    );
    for d in 0..2 {
        assert_eq!(day_output(d), before[d as usize]);
    }
    assert_eq!(day_output(2), before_2);
}
