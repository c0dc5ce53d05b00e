//! Rules over the daily rollups, from readings to pages: eight simulated
//! days run through the embedded engine (hourly, daily, fleet), the rules
//! evaluated on the last day flag exactly the terminals and the cohort the
//! data was built to have, and the alerter raises their alerts, silences
//! them like any other, and resolves them when a later day is clean.

use tillwatch_alerter::Alerter;
use tillwatch_config::AlertingConfig;
use tillwatch_domain::connectivity::SilencePolicy;
use tillwatch_domain::{
    AppPerformance, Battery, BootId, Connectivity, DeviceId, MerchantId, NetworkType, Reading,
    Signal, StoreId, UtcMillis,
};
use tillwatch_meta::testing::TestDatabase;
use tillwatch_meta::{AlertFilter, AlertState, MetaStore, SilenceRecord};
use tillwatch_rollups::embedded::Embedded;
use tillwatch_rollups::findings::{
    self, BATTERY_HEALTH, CHRONIC_POOR_CONNECTIVITY, COHORT_REGRESSION,
};
use tillwatch_rollups::jobs;
use tillwatch_scheduler::{Executor, Grain, Partition};
use tillwatch_storage::{Lake, Staging, StoredReading};

/// 2026-11-13T00:00Z: day 0 of eight.
const DAY0: i64 = 1_795_132_800_000 - 7 * 86_400_000;
const DAY: i64 = 86_400_000;
const MIN: i64 = 60_000;

/// What a terminal reports on a day: every 2 minutes from 12:00 to 13:00.
struct Day {
    rssi: i32,
    health: u32,
    firmware: &'static str,
    crashes_every: Option<u64>,
}

fn profile(device: &str, day: i64) -> Day {
    let normal = Day {
        rssi: -60,
        health: 90,
        firmware: "2.0",
        crashes_every: None,
    };
    match device {
        // Weak signal on days 3, 5 and 7: three of the last seven.
        "t-weak" if [3, 5, 7].contains(&day) => Day {
            rssi: -95,
            ..normal
        },
        // Weak on two days only: not flagged.
        "t-flaky" if [2, 6].contains(&day) => Day {
            rssi: -95,
            ..normal
        },
        // Health 80 all week, 72 on the last day: a fall of 8 points.
        "t-aging" => Day {
            health: if day == 7 { 72 } else { 80 },
            ..normal
        },
        "t-old" => Day {
            health: 60,
            ..normal
        },
        // The 2.1 cohort crashes now and then, and four times as often on
        // the last day.
        "t-new-1" | "t-new-2" => Day {
            firmware: "2.1",
            crashes_every: Some(if day == 7 { 5 } else { 20 }),
            ..normal
        },
        _ => normal,
    }
}

const DEVICES: [&str; 7] = [
    "t-good", "t-weak", "t-flaky", "t-aging", "t-old", "t-new-1", "t-new-2",
];

fn write_days(lake: &Lake) {
    let merchant = MerchantId::new("m-1").unwrap();
    let store = StoreId::new("s-1").unwrap();
    let mut staging = Staging::new();
    for device in DEVICES {
        let id = DeviceId::new(device).unwrap();
        let mut seq = 0;
        for day in 0..8 {
            let p = profile(device, day);
            for m in (0..60).step_by(2) {
                let at = DAY0 + day * DAY + 12 * 60 * MIN + m * MIN;
                let signals = [
                    Signal::Battery(Battery {
                        level_pct: 80,
                        charging: false,
                        temperature_celsius: 30.0,
                        voltage_mv: 4000,
                        health_pct: p.health,
                        cycle_count: 100,
                    }),
                    Signal::Connectivity(Connectivity {
                        network_type: NetworkType::Cellular,
                        rssi_dbm: p.rssi,
                        payment_host_latency_ms: 200,
                        disconnects: 0,
                        carrier_or_ssid: "net".into(),
                    }),
                    Signal::AppPerformance(AppPerformance {
                        app_version: "4.1".into(),
                        firmware_version: p.firmware.into(),
                        transactions: 5,
                        transaction_latency_avg_ms: 900,
                        transaction_latency_max_ms: 2000,
                        startup_ms: None,
                        crashes: u32::from(
                            p.crashes_every
                                .is_some_and(|n| (m as u64 / 2).is_multiple_of(n)),
                        ),
                        hangs: 0,
                        memory_used_kib: 1000,
                        cpu_pct: 5.0,
                    }),
                ];
                for signal in signals {
                    seq += 1;
                    let reading = Reading {
                        device_id: id.clone(),
                        boot_id: BootId(1),
                        seq,
                        sampled_at: UtcMillis(at),
                        signal,
                    };
                    staging.push_reading(StoredReading {
                        reading: &reading,
                        merchant_id: &merchant,
                        store_id: Some(&store),
                        received_at: UtcMillis(at),
                    });
                }
            }
        }
    }
    for part in staging.finish() {
        let path = lake.file_path(part.table, part.hour, "f.parquet");
        lake.write_part(&part, &path).unwrap();
    }
}

fn subjects(found: &[tillwatch_meta::FindingRecord]) -> Vec<&str> {
    found.iter().map(|f| f.subject.as_str()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_over_the_rollups_page_like_live_rules() {
    let dir = tempfile::tempdir().unwrap();
    let lake = Lake::new(dir.path().join("lake"));
    write_days(&lake);
    let engine = Embedded::new(lake.clone());
    let (hourly, daily, fleet) = (
        jobs::device_health_hourly(),
        jobs::device_health_daily(),
        jobs::fleet_health_daily(),
    );
    for day in 0..8 {
        let d = Partition::containing(Grain::Day, DAY0 + day * DAY);
        for hour in d.covering(Grain::Hour) {
            engine.run(&hourly, hour).await.unwrap();
        }
        engine.run(&daily, d).await.unwrap();
        engine.run(&fleet, d).await.unwrap();
    }

    let mut config = AlertingConfig::default();
    config.rules.battery_forecast.enabled = false;
    config.rollup_rules.cohort_regression.min_transactions = 100;
    let rules = &config.rollup_rules;
    let last = Partition::containing(Grain::Day, DAY0 + 7 * DAY);
    let eval = |rule: &'static str| {
        let engine = &engine;
        async move {
            findings::evaluate(engine, rules, rule, last)
                .await
                .unwrap()
                .expect("enabled")
        }
    };
    let poor = eval(CHRONIC_POOR_CONNECTIVITY).await;
    assert_eq!(subjects(&poor), ["t-weak"], "{poor:?}");
    assert!(
        poor[0].summary.contains("3 of the last 7 days"),
        "{}",
        poor[0].summary
    );
    let battery = eval(BATTERY_HEALTH).await;
    assert_eq!(subjects(&battery), ["t-aging", "t-old"], "{battery:?}");
    assert!(
        battery[0].summary.contains("from 80% to 72%"),
        "{}",
        battery[0].summary
    );
    let cohorts = eval(COHORT_REGRESSION).await;
    assert_eq!(subjects(&cohorts), ["cohort:2.1/4.1"], "{cohorts:?}");
    assert!(cohorts[0].value >= 2.0, "{cohorts:?}");
    assert_eq!(cohorts[0].labels["firmware_version"], "2.1");

    // The findings reach the alerter through the metadata store.
    let db = TestDatabase::sqlite();
    let store = MetaStore::connect(&db.url).await.unwrap();
    store.migrate().await.unwrap();
    let now = DAY0 + 8 * DAY + 3_600_000;
    store
        .create_silence(&SilenceRecord {
            silence_id: "s1".into(),
            matchers: vec!["device_id=t-old".into()],
            starts_at_ms: now - 1,
            ends_at_ms: now + DAY,
            created_by: "support".into(),
            comment: "battery swap booked".into(),
            created_at_ms: now - 1,
        })
        .await
        .unwrap();
    for (rule, found) in [
        (CHRONIC_POOR_CONNECTIVITY, &poor),
        (BATTERY_HEALTH, &battery),
        (COHORT_REGRESSION, &cohorts),
    ] {
        assert!(
            store
                .save_findings(rule, last.start_ms, now, found)
                .await
                .unwrap()
        );
    }
    // An older day evaluated later (a backfill) does not replace them.
    assert!(
        !store
            .save_findings(BATTERY_HEALTH, last.start_ms - DAY, now, &[])
            .await
            .unwrap()
    );
    let mut alerter = Alerter::open(
        store.clone(),
        SilencePolicy::default(),
        &config,
        "http://tillwatch.test",
        UtcMillis(now),
    )
    .await
    .unwrap();
    let open = store.alerts(AlertFilter::Open, 100).await.unwrap();
    let mut fired: Vec<(String, String, bool)> = open
        .iter()
        .map(|a| {
            (
                a.rule.clone(),
                a.subject.clone(),
                a.notify == Some(AlertState::Firing),
            )
        })
        .collect();
    fired.sort();
    assert_eq!(
        fired,
        [
            (BATTERY_HEALTH.into(), "t-aging".into(), true),
            (BATTERY_HEALTH.into(), "t-old".into(), false),
            (CHRONIC_POOR_CONNECTIVITY.into(), "t-weak".into(), true),
            (COHORT_REGRESSION.into(), "cohort:2.1/4.1".into(), true),
        ],
        "every finding fires; the silenced one does not page"
    );
    let old = open.iter().find(|a| a.subject == "t-old").unwrap();
    assert_eq!(old.silenced_by.as_deref(), Some("silence:s1"));
    let weak = open.iter().find(|a| a.subject == "t-weak").unwrap();
    assert_eq!(weak.labels["severity"], "warning");
    assert!(weak.annotations["summary"].contains("3 of the last 7"));

    // A clean next day resolves the connectivity alert, nothing else.
    let later = now + DAY;
    assert!(
        store
            .save_findings(CHRONIC_POOR_CONNECTIVITY, last.start_ms + DAY, later, &[])
            .await
            .unwrap()
    );
    alerter.tick(UtcMillis(later)).await.unwrap();
    let weak = store
        .alerts(AlertFilter::All, 100)
        .await
        .unwrap()
        .into_iter()
        .find(|a| a.subject == "t-weak")
        .unwrap();
    assert_eq!(weak.state, AlertState::Resolved);
    assert_eq!(store.alerts(AlertFilter::Open, 100).await.unwrap().len(), 3);
}
