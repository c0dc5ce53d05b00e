//! The embedded engine's hourly rollup, checked against values computed
//! here from the readings written into the lake: exact for counts, sums,
//! minima, maxima and means, within a stated tolerance for quantiles. A
//! re-run replaces the partition (same rows, same fingerprint), and readings
//! of other hours are not counted.

use arrow::array::{Array, AsArray};
use arrow::datatypes::Float64Type;
use tillwatch_domain::{
    AppPerformance, Battery, BootId, Connectivity, DeviceId, MerchantId, NetworkType,
    PaymentHealth, Reading, Signal, StoreId, UtcMillis,
};
use tillwatch_rollups::embedded::Embedded;
use tillwatch_scheduler::{Grain, Partition};
use tillwatch_storage::{Lake, Staging, StoredReading, read_file};

const MIN: i64 = 60_000;
/// 2026-11-20T13:00Z.
const HOUR_START: i64 = 1_795_132_800_000 + 13 * 3_600_000;

struct Fleet {
    readings: Vec<(String, Reading)>,
}

impl Fleet {
    /// Three terminals, one reading of each kind a minute for the hour,
    /// plus readings just before and after it.
    fn new() -> Fleet {
        Fleet::minutes(HOUR_START, -2..62)
    }

    /// Readings at these minutes from `from`.
    fn minutes(from: i64, minutes: std::ops::Range<i64>) -> Fleet {
        let mut readings = Vec::new();
        for d in 0..3u32 {
            let device = format!("t-{d}");
            let id = DeviceId::new(&device).unwrap();
            for m in minutes.clone() {
                let at = from + m * MIN + i64::from(d) * 1000;
                let seq = (m + 2).max(0) as u64 * 4;
                let r = |seq: u64, signal: Signal| Reading {
                    device_id: id.clone(),
                    boot_id: BootId(7),
                    seq,
                    sampled_at: UtcMillis(at),
                    signal,
                };
                readings.push((
                    device.clone(),
                    r(
                        seq,
                        Signal::Battery(Battery {
                            level_pct: (90 - d as i64 * 10 - m.rem_euclid(60) / 3 - m / 600)
                                .clamp(0, 100) as u32,
                            charging: d == 0 && (30..40).contains(&m.rem_euclid(60)),
                            temperature_celsius: 25.0 + (m % 7) as f32,
                            voltage_mv: 4000,
                            health_pct: 90,
                            cycle_count: 10,
                        }),
                    ),
                ));
                readings.push((
                    device.clone(),
                    r(
                        seq + 1,
                        Signal::Connectivity(Connectivity {
                            network_type: NetworkType::Wifi,
                            rssi_dbm: -60 - (m % 20) as i32 - d as i32,
                            payment_host_latency_ms: 100 + m.rem_euclid(10) as u32 * 20,
                            disconnects: u32::from(m % 15 == 0),
                            carrier_or_ssid: "shop".into(),
                        }),
                    ),
                ));
                readings.push((
                    device.clone(),
                    r(
                        seq + 2,
                        Signal::AppPerformance(AppPerformance {
                            app_version: "4.1".into(),
                            firmware_version: "2.0".into(),
                            transactions: m.rem_euclid(4) as u32,
                            transaction_latency_avg_ms: if m % 4 == 0 {
                                0
                            } else {
                                800 + m.rem_euclid(9) as u32 * 50
                            },
                            transaction_latency_max_ms: 2000,
                            startup_ms: None,
                            crashes: u32::from(d == 2 && m == 10),
                            hangs: u32::from(m == 20),
                            memory_used_kib: 1000,
                            cpu_pct: 5.0,
                        }),
                    ),
                ));
                readings.push((
                    device.clone(),
                    r(
                        seq + 3,
                        Signal::PaymentHealth(PaymentHealth {
                            offline_queue_len: if d == 1 { m.rem_euclid(5) as u32 } else { 0 },
                            offline_queue_oldest_age_s: if d == 1 {
                                m.rem_euclid(5) as u32 * 60
                            } else {
                                0
                            },
                            tamper_detected: false,
                            printer_paper_low: false,
                        }),
                    ),
                ));
            }
        }
        Fleet { readings }
    }

    fn write(&self, lake: &Lake) {
        let merchant = MerchantId::new("m-1").unwrap();
        let store = StoreId::new("s-1").unwrap();
        let mut staging = Staging::new();
        for (_, r) in &self.readings {
            staging.push_reading(StoredReading {
                reading: r,
                merchant_id: &merchant,
                store_id: Some(&store),
                received_at: r.sampled_at,
            });
        }
        // Two files per hour, as two gateway flushes would leave.
        for (i, part) in staging.finish().into_iter().enumerate() {
            let path = lake.file_path(part.table, part.hour, &format!("f{i}.parquet"));
            lake.write_part(&part, &path).unwrap();
        }
    }

    /// The hour's readings of one device.
    fn in_hour(&self, device: &str) -> Vec<&Reading> {
        self.readings
            .iter()
            .filter(|(d, r)| {
                d == device
                    && r.sampled_at.0 >= HOUR_START
                    && r.sampled_at.0 < HOUR_START + 60 * MIN
            })
            .map(|(_, r)| r)
            .collect()
    }
}

fn column_f64(batch: &arrow::record_batch::RecordBatch, name: &str) -> Vec<Option<f64>> {
    let col = batch
        .column_by_name(name)
        .unwrap_or_else(|| panic!("column {name}"));
    let col = arrow::compute::cast(col, &arrow::datatypes::DataType::Float64).unwrap();
    let col = col.as_primitive::<Float64Type>();
    (0..col.len())
        .map(|i| (!col.is_null(i)).then(|| col.value(i)))
        .collect()
}

#[tokio::test]
async fn the_hourly_rollup_matches_the_readings() {
    let dir = tempfile::tempdir().unwrap();
    let lake = Lake::new(dir.path().join("lake"));
    let fleet = Fleet::new();
    fleet.write(&lake);
    let engine = Embedded::new(lake.clone());
    let partition = Partition::containing(Grain::Hour, HOUR_START);
    let out = engine.device_health_hourly(partition).await.unwrap();
    assert_eq!(out.rows, 3);
    let path = engine.output_path("device_health_hourly", partition);
    assert!(
        path.ends_with("device_health_hourly/date=2026-11-20/hour=13/part.parquet"),
        "{}",
        path.display()
    );
    let batches = read_file(&path).unwrap();
    let batch = arrow::compute::concat_batches(&batches[0].schema(), &batches).unwrap();
    assert_eq!(batch.num_rows(), 3);

    let ids: Vec<String> = {
        let col = batch.column_by_name("device_id").unwrap();
        let col = arrow::compute::cast(col, &arrow::datatypes::DataType::Utf8).unwrap();
        col.as_string::<i32>()
            .iter()
            .map(|s| s.unwrap().to_string())
            .collect()
    };
    assert_eq!(ids, ["t-0", "t-1", "t-2"]);
    let f = |name: &str| column_f64(&batch, name);
    for (row, device) in ids.iter().enumerate() {
        let rs = fleet.in_hour(device);
        let battery: Vec<&Battery> = rs
            .iter()
            .filter_map(|r| match &r.signal {
                Signal::Battery(b) => Some(b),
                _ => None,
            })
            .collect();
        let conn: Vec<&Connectivity> = rs
            .iter()
            .filter_map(|r| match &r.signal {
                Signal::Connectivity(c) => Some(c),
                _ => None,
            })
            .collect();
        let app: Vec<&AppPerformance> = rs
            .iter()
            .filter_map(|r| match &r.signal {
                Signal::AppPerformance(a) => Some(a),
                _ => None,
            })
            .collect();
        let pay: Vec<&PaymentHealth> = rs
            .iter()
            .filter_map(|r| match &r.signal {
                Signal::PaymentHealth(p) => Some(p),
                _ => None,
            })
            .collect();
        assert_eq!(battery.len(), 60, "this hour only");
        let levels: Vec<f64> = battery.iter().map(|b| f64::from(b.level_pct)).collect();
        assert_eq!(
            f("battery_min_pct")[row],
            levels.iter().cloned().reduce(f64::min)
        );
        let mean = levels.iter().sum::<f64>() / levels.len() as f64;
        assert!((f("battery_avg_pct")[row].unwrap() - mean).abs() < 1e-9);
        assert_eq!(f("battery_last_pct")[row], levels.last().copied());
        let charging = battery.iter().filter(|b| b.charging).count() as f64 * 60.0 / 60.0;
        assert!(
            (f("charging_minutes")[row].unwrap() - charging).abs() < 1e-9,
            "{device}"
        );
        let hottest = battery
            .iter()
            .map(|b| f64::from(b.temperature_celsius))
            .reduce(f64::max);
        assert_eq!(f("temperature_max_celsius")[row], hottest);
        assert_eq!(
            f("rssi_min_dbm")[row],
            conn.iter().map(|c| f64::from(c.rssi_dbm)).reduce(f64::min)
        );
        assert_eq!(
            f("disconnects")[row],
            Some(conn.iter().map(|c| f64::from(c.disconnects)).sum())
        );
        assert_eq!(
            f("transactions")[row],
            Some(app.iter().map(|a| f64::from(a.transactions)).sum())
        );
        assert_eq!(
            f("crashes")[row],
            Some(app.iter().map(|a| f64::from(a.crashes)).sum())
        );
        assert_eq!(
            f("hangs")[row],
            Some(app.iter().map(|a| f64::from(a.hangs)).sum())
        );
        assert_eq!(
            f("offline_queue_max")[row],
            pay.iter()
                .map(|p| f64::from(p.offline_queue_len))
                .reduce(f64::max)
        );
        for kind in [
            "battery_readings",
            "connectivity_readings",
            "app_readings",
            "payment_readings",
        ] {
            assert_eq!(f(kind)[row], Some(60.0), "{kind}");
        }
        // Quantiles: within 5 % of the exact value (t-digest estimates).
        let mut lat: Vec<f64> = conn
            .iter()
            .map(|c| f64::from(c.payment_host_latency_ms))
            .collect();
        lat.sort_by(f64::total_cmp);
        let exact_p95 = lat[(0.95 * (lat.len() - 1) as f64).round() as usize];
        let p95 = f("host_latency_p95_ms")[row].unwrap();
        assert!(
            (p95 - exact_p95).abs() <= 0.05 * exact_p95,
            "{device}: p95 {p95} vs {exact_p95}"
        );
        let mut weighted: Vec<(f64, f64)> = app
            .iter()
            .filter(|a| a.transactions > 0)
            .map(|a| {
                (
                    f64::from(a.transaction_latency_avg_ms),
                    f64::from(a.transactions),
                )
            })
            .collect();
        weighted.sort_by(|a, b| a.0.total_cmp(&b.0));
        let total: f64 = weighted.iter().map(|w| w.1).sum();
        let mut seen = 0.0;
        let exact_p50 = weighted
            .iter()
            .find(|w| {
                seen += w.1;
                seen >= 0.5 * total
            })
            .unwrap()
            .0;
        let p50 = f("txn_latency_p50_ms")[row].unwrap();
        assert!(
            (p50 - exact_p50).abs() <= 0.05 * exact_p50,
            "{device}: txn p50 {p50} vs {exact_p50}"
        );
    }

    // Re-run: the partition is replaced, not appended to.
    let again = engine.device_health_hourly(partition).await.unwrap();
    assert_eq!(again, out, "same rows, same fingerprint");
    let files: Vec<_> = std::fs::read_dir(path.parent().unwrap()).unwrap().collect();
    assert_eq!(files.len(), 1, "one file per partition");

    // An hour without readings is a partition with no rows.
    let empty = Partition::containing(Grain::Hour, HOUR_START + 5 * 3_600_000);
    assert_eq!(engine.device_health_hourly(empty).await.unwrap().rows, 0);
}

#[tokio::test]
async fn the_daily_rollup_from_24_hours_matches_the_days_readings() {
    let dir = tempfile::tempdir().unwrap();
    let lake = Lake::new(dir.path().join("lake"));
    let day = Partition::containing(Grain::Day, HOUR_START);
    let fleet = Fleet::minutes(day.start_ms, 0..24 * 60);
    fleet.write(&lake);
    let engine = Embedded::new(lake.clone());
    let err = engine
        .device_health_daily(&tillwatch_rollups::jobs::device_health_daily(), day)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, tillwatch_scheduler::JobError::Input(m) if m.contains("has no output")),
        "the day needs its hours first: {err}"
    );
    for hour in day.covering(Grain::Hour) {
        engine.device_health_hourly(hour).await.unwrap();
    }
    let out = engine
        .device_health_daily(&tillwatch_rollups::jobs::device_health_daily(), day)
        .await
        .unwrap();
    assert_eq!(out.rows, 3);
    let path = engine.output_path("device_health_daily", day);
    assert!(
        path.ends_with("device_health_daily/date=2026-11-20/part.parquet"),
        "{}",
        path.display()
    );
    let batches = read_file(&path).unwrap();
    let batch = arrow::compute::concat_batches(&batches[0].schema(), &batches).unwrap();
    let f = |name: &str| column_f64(&batch, name);
    for (row, device) in ["t-0", "t-1", "t-2"].iter().enumerate() {
        let all: Vec<&Reading> = fleet
            .readings
            .iter()
            .filter(|(d, _)| d == device)
            .map(|(_, r)| r)
            .collect();
        let levels: Vec<f64> = all
            .iter()
            .filter_map(|r| match &r.signal {
                Signal::Battery(b) => Some(f64::from(b.level_pct)),
                _ => None,
            })
            .collect();
        assert_eq!(levels.len(), 1440);
        assert_eq!(
            f("battery_min_pct")[row],
            levels.iter().cloned().reduce(f64::min)
        );
        let mean = levels.iter().sum::<f64>() / levels.len() as f64;
        assert!(
            (f("battery_avg_pct")[row].unwrap() - mean).abs() < 1e-9,
            "weighted by readings"
        );
        assert_eq!(f("battery_last_pct")[row], levels.last().copied());
        let sum = |pick: &dyn Fn(&Signal) -> Option<f64>| {
            all.iter().filter_map(|r| pick(&r.signal)).sum::<f64>()
        };
        assert_eq!(
            f("transactions")[row],
            Some(sum(&|s| match s {
                Signal::AppPerformance(a) => Some(f64::from(a.transactions)),
                _ => None,
            }))
        );
        assert_eq!(
            f("crashes")[row],
            Some(sum(&|s| match s {
                Signal::AppPerformance(a) => Some(f64::from(a.crashes)),
                _ => None,
            }))
        );
        assert_eq!(
            f("disconnects")[row],
            Some(sum(&|s| match s {
                Signal::Connectivity(c) => Some(f64::from(c.disconnects)),
                _ => None,
            }))
        );
        assert_eq!(
            f("charging_minutes")[row],
            Some(if *device == "t-0" { 240.0 } else { 0.0 })
        );
        assert_eq!(f("hours_reported")[row], Some(24.0));
        assert_eq!(f("payment_readings")[row], Some(1440.0));
        let mut lat: Vec<f64> = all
            .iter()
            .filter_map(|r| match &r.signal {
                Signal::Connectivity(c) => Some(f64::from(c.payment_host_latency_ms)),
                _ => None,
            })
            .collect();
        lat.sort_by(f64::total_cmp);
        let exact = lat[(0.95 * (lat.len() - 1) as f64).round() as usize];
        let p95 = f("host_latency_p95_ms")[row].unwrap();
        assert!(
            (p95 - exact).abs() <= 0.10 * exact,
            "{device}: day p95 {p95} vs {exact}"
        );
    }
}

#[tokio::test]
async fn a_daily_partition_counts_each_terminals_local_day_and_its_minutes_online() {
    use std::sync::Arc;
    use tillwatch_rollups::side::{DeviceFacts, FixedSideInputs, OnlineTime};

    let dir = tempfile::tempdir().unwrap();
    let lake = Lake::new(dir.path().join("lake"));
    let day = Partition::containing(Grain::Day, HOUR_START);
    // Readings from 3 h before the UTC day to 3 h after it.
    let fleet = Fleet::minutes(day.start_ms - 180 * MIN, 0..30 * 60);
    fleet.write(&lake);
    // t-0's store is in Berlin (UTC+1 in November), t-1's in São Paulo
    // (UTC-3); t-2 has no zone and counts the UTC day.
    let h = |n: i64| day.start_ms + n * 3_600_000;
    let online = |device: &str, minutes: f64, expected: Option<f64>| OnlineTime {
        device_id: device.into(),
        minutes_online: minutes,
        readings_expected: expected,
    };
    let side = FixedSideInputs {
        online: [
            (
                h(5),
                vec![online("t-0", 42.5, Some(43.0)), online("t-2", 60.0, None)],
            ),
            (h(6), vec![online("t-0", 60.0, Some(60.0))]),
        ]
        .into(),
        devices: vec![
            DeviceFacts {
                device_id: "t-0".into(),
                time_zone: Some("Europe/Berlin".into()),
                model: Some("A920".into()),
            },
            DeviceFacts {
                device_id: "t-1".into(),
                time_zone: Some("America/Sao_Paulo".into()),
                model: None,
            },
        ],
        ..FixedSideInputs::default()
    };
    let engine = Embedded::with_side_inputs(lake.clone(), Arc::new(side));
    let mut job = tillwatch_rollups::jobs::device_health_daily();
    job.reads_before_ms = 2 * 3_600_000;
    job.reads_after_ms = 3 * 3_600_000;
    for hour in job.input_partitions(day, Grain::Hour) {
        engine.device_health_hourly(hour).await.unwrap();
    }
    let hourly = read_file(&engine.output_path(
        "device_health_hourly",
        Partition::containing(Grain::Hour, h(5)),
    ))
    .unwrap();
    assert_eq!(
        column_f64(&hourly[0], "minutes_online"),
        [Some(42.5), None, Some(60.0)],
        "minutes online from the state history; none without one"
    );
    assert_eq!(
        column_f64(&hourly[0], "readings_expected"),
        [Some(43.0), None, None]
    );

    assert_eq!(engine.device_health_daily(&job, day).await.unwrap().rows, 3);
    let batches = read_file(&engine.output_path("device_health_daily", day)).unwrap();
    let batch = arrow::compute::concat_batches(&batches[0].schema(), &batches).unwrap();
    let f = |name: &str| column_f64(&batch, name);
    let windows = [(h(-1), h(23)), (h(3), h(27)), (h(0), h(24))];
    for (row, (device, (from, to))) in ["t-0", "t-1", "t-2"].iter().zip(windows).enumerate() {
        let local: Vec<&Reading> = fleet
            .readings
            .iter()
            .filter(|(d, r)| d == device && r.sampled_at.0 >= from && r.sampled_at.0 < to)
            .map(|(_, r)| r)
            .collect();
        let transactions: u32 = local
            .iter()
            .filter_map(|r| match &r.signal {
                Signal::AppPerformance(a) => Some(a.transactions),
                _ => None,
            })
            .sum();
        let last_level = local.iter().rev().find_map(|r| match &r.signal {
            Signal::Battery(b) => Some(f64::from(b.level_pct)),
            _ => None,
        });
        assert_eq!(f("hours_reported")[row], Some(24.0), "{device}");
        assert_eq!(f("battery_readings")[row], Some(1440.0), "{device}");
        assert_eq!(
            f("transactions")[row],
            Some(f64::from(transactions)),
            "{device}"
        );
        assert_eq!(f("battery_last_pct")[row], last_level, "{device}");
    }
    assert_eq!(f("minutes_online"), [Some(102.5), None, Some(60.0)]);
    assert_eq!(f("readings_expected"), [Some(103.0), None, None]);
    let models = batch.column_by_name("model").unwrap().as_string::<i32>();
    assert_eq!(
        (0..3)
            .map(|i| models.is_valid(i).then(|| models.value(i)))
            .collect::<Vec<_>>(),
        [Some("A920"), None, None]
    );
}

/// A team's daily job with `day = "store-local"`: its SQL joins the raw
/// readings to `devices` and `zone_hours`, planned at load (with the
/// tables of a local day beside its inputs) and run over the hours around
/// the UTC day; each terminal's sum is over its own local day.
#[tokio::test]
async fn a_teams_store_local_day_sums_each_terminals_own_day() {
    use std::sync::Arc;
    use tillwatch_rollups::declared;
    use tillwatch_rollups::side::{DeviceFacts, FixedSideInputs};

    let dir = tempfile::tempdir().unwrap();
    let lake = Lake::new(dir.path().join("lake"));
    let day = Partition::containing(Grain::Day, HOUR_START);
    let fleet = Fleet::minutes(day.start_ms - 180 * MIN, 0..30 * 60);
    fleet.write(&lake);
    let jobs = dir.path().join("jobs/finance");
    std::fs::create_dir_all(&jobs).unwrap();
    std::fs::write(
        jobs.join("local_takings_daily.toml"),
        "description = \"Transactions per terminal and store-local day\"\n\
         grain = \"day\"\nday = \"store-local\"\ninputs = [\"app_performance\"]\n",
    )
    .unwrap();
    std::fs::write(
        jobs.join("local_takings_daily.datafusion.sql"),
        "SELECT to_timestamp_millis({start_ms}) AS day, a.device_id,\n\
         \x20      sum(a.transactions) AS transactions, count(*) AS readings\n\
         FROM app_performance a\n\
         LEFT JOIN devices d ON d.device_id = a.device_id\n\
         JOIN zone_hours z ON z.zone = coalesce(d.zone, '') AND z.hour = date_trunc('hour', a.sampled_at)\n\
         GROUP BY a.device_id ORDER BY a.device_id\n",
    )
    .unwrap();
    let (loaded, problems) = declared::load_dir(&dir.path().join("jobs"));
    assert_eq!(problems, []);
    let mut all = declared::builtin();
    all.extend(loaded);
    let (schemas, problems) = declared::plan(&all, &Default::default()).await;
    assert_eq!(problems, [], "the SQL plans with devices and zone_hours");
    let columns: Vec<String> = schemas["local_takings_daily"]
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    assert_eq!(columns, ["day", "device_id", "transactions", "readings"]);

    let job_file = all
        .iter()
        .find(|j| j.name == "local_takings_daily")
        .unwrap();
    assert!(job_file.store_local_day());
    let mut job = job_file.spec();
    job.reads_before_ms = 2 * 3_600_000;
    job.reads_after_ms = 3 * 3_600_000;
    // t-0 in Berlin (UTC+1), t-1 in São Paulo (UTC-3), t-2 without a zone.
    let side = FixedSideInputs {
        devices: vec![
            DeviceFacts {
                device_id: "t-0".into(),
                time_zone: Some("Europe/Berlin".into()),
                model: None,
            },
            DeviceFacts {
                device_id: "t-1".into(),
                time_zone: Some("America/Sao_Paulo".into()),
                model: None,
            },
        ],
        ..FixedSideInputs::default()
    };
    let engine = Embedded::with_side_inputs(lake.clone(), Arc::new(side));
    let grain_of = |_: &str| None;
    let output = engine
        .run_declared(&job, job_file, &grain_of, day)
        .await
        .unwrap();
    assert_eq!(output.rows, 3);
    let batches = read_file(&engine.output_path("local_takings_daily", day)).unwrap();
    let batch = arrow::compute::concat_batches(&batches[0].schema(), &batches).unwrap();
    let h = |n: i64| day.start_ms + n * 3_600_000;
    let windows = [(h(-1), h(23)), (h(3), h(27)), (h(0), h(24))];
    for (row, (device, (from, to))) in ["t-0", "t-1", "t-2"].iter().zip(windows).enumerate() {
        let apps: Vec<u32> = fleet
            .readings
            .iter()
            .filter(|(d, r)| d == device && r.sampled_at.0 >= from && r.sampled_at.0 < to)
            .filter_map(|(_, r)| match &r.signal {
                Signal::AppPerformance(a) => Some(a.transactions),
                _ => None,
            })
            .collect();
        assert_eq!(apps.len(), 1440, "{device}: a whole local day of minutes");
        let sum: u32 = apps.iter().sum();
        assert_eq!(
            column_f64(&batch, "transactions")[row],
            Some(f64::from(sum)),
            "{device}"
        );
        assert_eq!(
            column_f64(&batch, "readings")[row],
            Some(1440.0),
            "{device}"
        );
    }

    // A job of that day whose read margins do not reach São Paulo's
    // evening says so in its run log.
    job.reads_after_ms = 0;
    let output = engine
        .run_declared(&job, job_file, &grain_of, day)
        .await
        .unwrap();
    assert!(
        output
            .messages
            .iter()
            .any(|m| m.contains("America/Sao_Paulo") && m.contains("not counted")),
        "{:?}",
        output.messages
    );
}

/// A team's weekly job: its partition `2026-W47` reads the 168 hours of
/// Monday to Sunday (UTC) and lands under the Monday's date.
#[tokio::test]
async fn a_teams_weekly_job_reads_its_seven_days() {
    use tillwatch_rollups::declared;

    let dir = tempfile::tempdir().unwrap();
    let lake = Lake::new(dir.path().join("lake"));
    let week: Partition = "2026-W47".parse().unwrap();
    assert_eq!(week.grain, Grain::Week);
    // From an hour before the Monday to an hour after the next.
    let fleet = Fleet::minutes(week.start_ms - 60 * MIN, 0..(7 * 24 + 2) * 60);
    fleet.write(&lake);
    let jobs = dir.path().join("jobs/finance");
    std::fs::create_dir_all(&jobs).unwrap();
    std::fs::write(
        jobs.join("takings_weekly.toml"),
        "description = \"Transactions per terminal and ISO week\"\n\
         grain = \"week\"\ninputs = [\"app_performance\"]\n",
    )
    .unwrap();
    std::fs::write(
        jobs.join("takings_weekly.datafusion.sql"),
        "SELECT to_timestamp_millis({start_ms}) AS week, device_id, sum(transactions) AS transactions\n\
         FROM app_performance\n\
         GROUP BY device_id ORDER BY device_id\n",
    )
    .unwrap();
    let (loaded, problems) = declared::load_dir(&dir.path().join("jobs"));
    assert_eq!(problems, []);
    let mut all = declared::builtin();
    all.extend(loaded);
    assert_eq!(declared::plan(&all, &Default::default()).await.1, []);
    let job_file = all.iter().find(|j| j.name == "takings_weekly").unwrap();
    let job = job_file.spec();
    assert_eq!(job.grain, Grain::Week);
    assert_eq!(job.input_partitions(week, Grain::Hour).len(), 168);

    let engine = Embedded::new(lake.clone());
    let output = engine
        .run_declared(&job, job_file, &|_: &str| None, week)
        .await
        .unwrap();
    assert_eq!(output.rows, 3);
    let path = engine.output_path("takings_weekly", week);
    assert!(
        path.to_string_lossy().contains("date=2026-11-16"),
        "{}",
        path.display()
    );
    let batches = read_file(&path).unwrap();
    let batch = arrow::compute::concat_batches(&batches[0].schema(), &batches).unwrap();
    for (row, device) in ["t-0", "t-1", "t-2"].iter().enumerate() {
        let sum: u32 = fleet
            .readings
            .iter()
            .filter(|(d, r)| {
                d == device && r.sampled_at.0 >= week.start_ms && r.sampled_at.0 < week.end_ms()
            })
            .filter_map(|(_, r)| match &r.signal {
                Signal::AppPerformance(a) => Some(a.transactions),
                _ => None,
            })
            .sum();
        assert!(sum > 0);
        assert_eq!(
            column_f64(&batch, "transactions")[row],
            Some(f64::from(sum)),
            "{device}"
        );
    }
}
