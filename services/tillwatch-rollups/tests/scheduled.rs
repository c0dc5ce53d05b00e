//! The scheduler running the rollups on the embedded engine over a real
//! lake, with the lake's own hour fingerprints: a day compacts and rolls
//! up its 24 hours, then the day, then the fleet; a terminal's late backlog
//! landing in one hour re-runs exactly that hour's compaction and rollup,
//! its day and the fleet day (read from the run history), and the day's
//! output changes with it.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use tillwatch_domain::{
    Battery, BootId, DeviceId, HourPartition, Kind, MerchantId, Reading, Signal, StoreId, UtcMillis,
};
use tillwatch_meta::MetaStore;
use tillwatch_meta::testing::TestDatabase;
use tillwatch_rollups::embedded::Embedded;
use tillwatch_rollups::jobs;
use tillwatch_scheduler::{Catalog, Partition, Runner};
use tillwatch_storage::{Lake, Staging, StoredReading, Table};

const MIN: i64 = 60_000;
/// 2026-11-20T00:00Z.
const DAY0: i64 = 1_795_132_800_000;

fn write_battery(
    lake: &Lake,
    device: &str,
    minutes: impl Iterator<Item = i64>,
    level: u32,
    file: &str,
) {
    let merchant = MerchantId::new("m-1").unwrap();
    let store = StoreId::new("s-1").unwrap();
    let readings: Vec<Reading> = minutes
        .map(|m| Reading {
            device_id: DeviceId::new(device).unwrap(),
            boot_id: BootId(1),
            seq: m as u64,
            sampled_at: UtcMillis(DAY0 + m * MIN),
            signal: Signal::Battery(Battery::healthy(level, false)),
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
    for part in staging.finish() {
        let path = lake.file_path(part.table, part.hour, file);
        lake.write_part(&part, &path).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_data_reruns_its_hour_day_and_fleet_day_on_the_embedded_engine() {
    let dir = tempfile::tempdir().unwrap();
    let lake = Lake::new(dir.path().join("lake"));
    // Two terminals report every 10 minutes all day; a third's 13:xx
    // readings are still in its offline backlog.
    write_battery(&lake, "t-1", (0..1440).step_by(10), 70, "a.parquet");
    write_battery(&lake, "t-2", (0..1440).step_by(10), 60, "a.parquet");
    write_battery(
        &lake,
        "t-3",
        (0..1440).step_by(10).filter(|m| !(780..840).contains(m)),
        50,
        "a.parquet",
    );

    let db = TestDatabase::sqlite();
    let store = MetaStore::connect(&db.url).await.unwrap();
    store.migrate().await.unwrap();
    let mut specs = vec![
        jobs::raw_compaction(),
        jobs::device_health_hourly(),
        jobs::device_health_daily(),
        jobs::fleet_health_daily(),
    ];
    for s in &mut specs {
        s.start_ms = DAY0;
        s.end_ms = Some(DAY0 + 24 * 3_600_000);
        s.concurrency = 4;
    }
    let clock = Arc::new(AtomicI64::new(DAY0 + 24 * 3_600_000 + 30 * MIN));
    let now = clock.clone();
    let engine = Arc::new(Embedded::new(lake.clone()));
    let runner = Runner::new(
        Catalog::new(specs).unwrap(),
        store.clone(),
        engine.clone(),
        "scheduler-1",
        Arc::new(move || now.load(Ordering::SeqCst)),
    );
    // The raw tables' files; no terminal has sent info (attribution).
    let fingerprint = |table: &str, hour: Partition| {
        Kind::ALL
            .into_iter()
            .map(Table::Reading)
            .find(|t| t.name() == table)
            .map(|table| lake.hour_fingerprint(table, HourPartition(hour.start_ms / 3_600_000)))
            .unwrap_or_default()
    };
    let watermark = clock.load(Ordering::SeqCst);
    loop {
        let ran = runner.step(watermark, &fingerprint).await.unwrap();
        assert!(ran.iter().all(|r| r.result.is_ok()), "{ran:?}");
        if ran.is_empty() {
            break;
        }
    }
    let runs = store.job_runs(None, None, 1000).await.unwrap();
    assert_eq!(
        runs.len(),
        24 + 24 + 1 + 1,
        "compaction and hourly per hour, then the day"
    );
    let day = Partition::parse_key("2026-11-20").unwrap();
    let before = std::fs::read(engine.output_path(jobs::DEVICE_HEALTH_DAILY, day)).unwrap();

    // t-3 comes back and replays 13:00-13:50.
    write_battery(&lake, "t-3", (780..840).step_by(10), 50, "late.parquet");
    clock.fetch_add(10 * MIN, Ordering::SeqCst);
    loop {
        let ran = runner.step(watermark, &fingerprint).await.unwrap();
        if ran.is_empty() {
            break;
        }
    }
    let runs = store.job_runs(None, None, 1000).await.unwrap();
    let mut reruns: Vec<String> = runs
        .iter()
        .filter(|r| r.reason == "stale")
        .map(|r| format!("{} {}", r.job, r.partition_key))
        .collect();
    reruns.sort();
    assert_eq!(
        reruns,
        [
            "device_health_daily 2026-11-20",
            "device_health_hourly 2026-11-20T13",
            "fleet_health_daily 2026-11-20",
            "raw_compaction 2026-11-20T13",
        ]
    );
    assert_eq!(runs.len(), 50 + 4, "nothing else ran");
    // The late file was compacted into the hour: one file, no reading twice.
    let hour = HourPartition((DAY0 + 13 * 60 * MIN) / 3_600_000);
    assert_eq!(
        lake.hour_files(Table::Reading(Kind::Battery), hour).len(),
        1
    );
    let after = std::fs::read(engine.output_path(jobs::DEVICE_HEALTH_DAILY, day)).unwrap();
    assert_ne!(before, after, "t-3's day now counts its 13:00 readings");
}
