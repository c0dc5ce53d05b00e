//! The two rollup engines over the same simulated day: DataFusion over the
//! lake and `INSERT … SELECT` inside a real ClickHouse (Debian's 18.16 here)
//! give the same hourly, daily and fleet rows. Counts, sums, minima, maxima
//! and strings must be equal; means equal to 1e-9 (floating-point
//! summation order); quantiles within [`QUANTILE_TOLERANCE`] of each other
//! (both engines estimate them with t-digests, which differ in detail).
//!
//! The day: terminals in two merchants and four stores (one store unknown),
//! two firmware cohorts and an upgrade at noon, one terminal offline for
//! three hours, one without payment readings for two, charging spells,
//! crashes: the edges where NULLs and missing kinds meet the aggregates.
//! Terminals' stores lie in three zones (Berlin, New York, none: UTC), so
//! the daily rollup counts each terminal's local day; half the terminals
//! have a state history giving minutes online.

use std::path::{Path, PathBuf};

use arrow::array::{Array, AsArray};
use arrow::datatypes::{DataType, Float64Type, Int64Type};
use tillwatch_clickhouse::{ClickHouse, Settings};
use tillwatch_domain::{
    AppPerformance, Battery, BootId, Connectivity, DeviceId, MerchantId, NetworkType,
    PaymentHealth, Reading, Signal, StoreId, UtcMillis,
};
use tillwatch_integration_tests::{ClickHouseServer, grafana, workspace_root};
use tillwatch_rollups::clickhouse::ClickHouseEngine;
use tillwatch_rollups::embedded::Embedded;
use tillwatch_rollups::jobs;
use tillwatch_rollups::side::{DeviceFacts, FixedSideInputs, OnlineTime};
use tillwatch_scheduler::{Executor, Grain, JobSpec, Partition};
use tillwatch_storage::{Lake, Staging, StoredReading, read_file};

/// 2026-11-20T00:00Z.
const DAY: i64 = 1_795_132_800_000;
const MIN: i64 = 60_000;
const DEVICES: u32 = 16;
/// Quantile estimates of the two engines agree within 15% of the larger:
/// both are t-digests, interpolated differently, over as few as 30
/// readings an hour here (the largest difference seen is 12.9%).
const QUANTILE_TOLERANCE: f64 = 0.15;

/// A small deterministic generator, so a failure can be replayed.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// The simulated day, written to `lake` as gateway flushes would (two
/// files per table-hour).
fn write_day(lake: &Lake) -> usize {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut staging = [Staging::new(), Staging::new()];
    let mut rows = 0;
    for d in 0..DEVICES {
        let device = DeviceId::new(&format!("t-{d:02}")).unwrap();
        let merchant = MerchantId::new(&format!("m-{}", d % 2)).unwrap();
        let store = StoreId::new(&format!("s-{}", d % 4)).unwrap();
        let mut level: i64 = 100 - i64::from(d);
        let mut seq = 0u64;
        for m in (0..24 * 60).step_by(2) {
            let hour = m / 60;
            if d == 7 && (3..6).contains(&hour) {
                continue; // offline
            }
            let at = DAY + m * MIN + i64::from(d) * 777;
            let charging = d % 5 == 0 && (18..20).contains(&hour);
            level = if charging {
                (level + 2).min(100)
            } else {
                (level - rng.below(2) as i64).max(0)
            };
            let firmware = if d % 3 == 0 || (d == 5 && hour >= 12) {
                "2.1"
            } else {
                "2.0"
            };
            let mut signals = vec![
                Signal::Battery(Battery {
                    level_pct: level as u32,
                    charging,
                    temperature_celsius: 20.0 + rng.below(150) as f32 / 10.0,
                    voltage_mv: 4000,
                    health_pct: 95 - d - u32::from(hour >= 20),
                    cycle_count: 10,
                }),
                Signal::Connectivity(Connectivity {
                    network_type: NetworkType::Wifi,
                    rssi_dbm: -50 - rng.below(45) as i32,
                    payment_host_latency_ms: 80 + rng.below(400) as u32,
                    disconnects: u32::from(rng.below(20) == 0),
                    carrier_or_ssid: "shop".into(),
                }),
                Signal::AppPerformance(AppPerformance {
                    app_version: if d % 2 == 0 { "4.1" } else { "4.2" }.into(),
                    firmware_version: firmware.into(),
                    transactions: rng.below(5) as u32,
                    transaction_latency_avg_ms: 300 + rng.below(1200) as u32,
                    transaction_latency_max_ms: 3000,
                    startup_ms: None,
                    crashes: u32::from(firmware == "2.1" && rng.below(40) == 0),
                    hangs: u32::from(rng.below(90) == 0),
                    memory_used_kib: 1000,
                    cpu_pct: 5.0,
                }),
            ];
            if !(d == 8 && (10..12).contains(&hour)) {
                signals.push(Signal::PaymentHealth(PaymentHealth {
                    offline_queue_len: rng.below(4) as u32,
                    offline_queue_oldest_age_s: rng.below(600) as u32,
                    tamper_detected: false,
                    printer_paper_low: false,
                }));
            }
            for signal in signals {
                seq += 1;
                let reading = Reading {
                    device_id: device.clone(),
                    boot_id: BootId(1),
                    seq,
                    sampled_at: UtcMillis(at),
                    signal,
                };
                staging[(m / 2 % 2) as usize].push_reading(StoredReading {
                    reading: &reading,
                    merchant_id: &merchant,
                    store_id: (d != 3).then_some(&store),
                    received_at: UtcMillis(at + 500),
                });
                rows += 1;
            }
        }
    }
    for (i, s) in staging.into_iter().enumerate() {
        for part in s.finish() {
            let path = lake.file_path(part.table, part.hour, &format!("flush-{i}.parquet"));
            lake.write_part(&part, &path).unwrap();
        }
    }
    rows
}

#[derive(Debug, Clone, PartialEq)]
enum Value {
    Null,
    Num(f64),
    Text(String),
}

/// A Parquet output as (column names, rows of values).
fn table(path: &Path) -> (Vec<(String, DataType)>, Vec<Vec<Value>>) {
    let batches = read_file(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let schema = batches[0].schema();
    let columns = schema
        .fields()
        .iter()
        .map(|f| (f.name().clone(), f.data_type().clone()))
        .collect();
    let mut rows = Vec::new();
    for batch in &batches {
        for r in 0..batch.num_rows() {
            let row = batch
                .columns()
                .iter()
                .map(|col| {
                    if col.is_null(r) {
                        return Value::Null;
                    }
                    match col.data_type() {
                        DataType::Utf8 => Value::Text(col.as_string::<i32>().value(r).to_string()),
                        DataType::Timestamp(_, _) => {
                            let c = arrow::compute::cast(col, &DataType::Int64).unwrap();
                            Value::Num(c.as_primitive::<Int64Type>().value(r) as f64)
                        }
                        _ => {
                            let c = arrow::compute::cast(col, &DataType::Float64).unwrap();
                            Value::Num(c.as_primitive::<Float64Type>().value(r))
                        }
                    }
                })
                .collect();
            rows.push(row);
        }
    }
    (columns, rows)
}

fn is_quantile(column: &str) -> bool {
    ["median", "_p50", "_p95", "_p99"]
        .iter()
        .any(|q| column.contains(q))
}

fn is_exact(t: &DataType) -> bool {
    !matches!(t, DataType::Float32 | DataType::Float64)
}

/// Compares one partition of one job; returns the largest relative
/// quantile difference seen.
fn compare(job: &str, partition: Partition, embedded: &Path, clickhouse: &Path) -> f64 {
    let (cols_e, rows_e) = table(embedded);
    let (cols_c, rows_c) = table(clickhouse);
    assert_eq!(cols_e, cols_c, "{job} {partition}: the engines' columns");
    assert_eq!(
        rows_e.len(),
        rows_c.len(),
        "{job} {partition}: the engines' row counts"
    );
    assert!(!rows_e.is_empty(), "{job} {partition} has rows");
    let mut worst: f64 = 0.0;
    for (re, rc) in rows_e.iter().zip(&rows_c) {
        for ((name, ty), (e, c)) in cols_e.iter().zip(re.iter().zip(rc)) {
            let at = format!("{job} {partition} {name} (row {:?})", re[1]);
            match (e, c) {
                (Value::Num(a), Value::Num(b)) if !is_exact(ty) => {
                    let scale = a.abs().max(b.abs()).max(1e-9);
                    let diff = (a - b).abs() / scale;
                    if is_quantile(name) {
                        worst = worst.max(diff);
                        assert!(
                            diff <= QUANTILE_TOLERANCE,
                            "{at}: {a} vs {b}, more than {QUANTILE_TOLERANCE} apart"
                        );
                    } else {
                        assert!(diff <= 1e-9, "{at}: {a} vs {b}");
                    }
                }
                _ => assert_eq!(e, c, "{at}: embedded vs ClickHouse"),
            }
        }
    }
    worst
}

async fn run(engine: &dyn Executor, job: &JobSpec, partition: Partition) -> u64 {
    engine
        .run(job, partition)
        .await
        .unwrap_or_else(|e| panic!("{} {partition}: {e}", job.name))
        .rows
}

const HOUR: i64 = 60 * MIN;

/// Terminal `d`'s store's time zone.
fn zone_of(d: u32) -> Option<&'static str> {
    match d % 4 {
        1 => Some("Europe/Berlin"),
        2 => Some("America/New_York"),
        _ => None,
    }
}

/// Minutes online of terminal `d` in hour `h` of the day, from its state
/// history: the even terminals have one.
fn online_minutes(d: u32, h: i64) -> Option<f64> {
    d.is_multiple_of(2)
        .then(|| ((i64::from(d) * 7 + h * 13) % 61) as f64 + 0.25)
}

/// The readings expected of it then: every other one has a known cadence.
fn readings_expected(d: u32, h: i64) -> Option<f64> {
    online_minutes(d, h)
        .filter(|_| d.is_multiple_of(4))
        .map(|m| (m / 2.0).round())
}

fn side_inputs() -> FixedSideInputs {
    let mut side = FixedSideInputs::default();
    for h in 0..24 {
        let rows = (0..DEVICES)
            .filter_map(|d| {
                Some(OnlineTime {
                    device_id: format!("t-{d:02}"),
                    minutes_online: online_minutes(d, h)?,
                    readings_expected: readings_expected(d, h),
                })
            })
            .collect();
        side.online.insert(DAY + h * HOUR, rows);
    }
    // Who each terminal belongs to, from the registry's history: the
    // stores the readings name, except that t-03 moved to s-9 at 12:20,
    // t-05's registry names another store than its readings (the registry
    // wins), and t-09 never sent its info (its readings' store stays).
    let version = |d: u32, from: i64, store: String| tillwatch_meta::AttributeVersion {
        device_id: format!("t-{d:02}"),
        valid_from_ms: from,
        merchant_id: format!("m-{}", d % 2),
        store_id: Some(store),
        model: None,
        serial: None,
        firmware_version: None,
        app_version: None,
        time_zone: None,
        recorded_at_ms: from,
    };
    for d in (0..DEVICES).filter(|d| *d != 9) {
        let store = if d == 5 {
            "s-5x".to_string()
        } else {
            format!("s-{}", d % 4)
        };
        side.attribution
            .versions
            .push(version(d, DAY - 2 * HOUR, store));
        side.attribution
            .spans
            .push((format!("t-{d:02}"), DAY - 2 * HOUR, DAY + 30 * HOUR));
    }
    side.attribution
        .versions
        .push(version(3, DAY + 12 * HOUR + 20 * MIN, "s-9".into()));
    side.attribution
        .spans
        .push(("t-09".into(), DAY - 2 * HOUR, DAY + 30 * HOUR));
    side.devices = (0..DEVICES)
        .map(|d| DeviceFacts {
            device_id: format!("t-{d:02}"),
            time_zone: zone_of(d).map(String::from),
            // Two models, and one terminal the registry does not know.
            model: (d != 9).then(|| if d < 8 { "A920" } else { "P2" }.to_string()),
        })
        .collect();
    side
}

fn output(lake: &Path, job: &str, partition: Partition) -> PathBuf {
    Embedded::new(Lake::new(lake)).output_path(job, partition)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_engines_give_the_same_rollups_for_a_simulated_day() {
    let server = ClickHouseServer::start();
    let dir = tempfile::tempdir().unwrap();
    let raw = Lake::new(dir.path().join("lake"));
    let readings = write_day(&raw);

    let ch = ClickHouse::new(Settings {
        url: server.url(),
        database: "roll".into(),
        user: "default".into(),
        password: None,
        insert_timeout: std::time::Duration::from_secs(60),
        cluster: None,
    });
    tillwatch_clickhouse::migrate(&ch, None).await.unwrap();
    let day = chrono::NaiveDate::from_ymd_opt(2026, 11, 20).unwrap();
    let loaded = tillwatch_clickhouse::backfill(&ch, &raw, day, day, 200_000, |_| {})
        .await
        .unwrap();
    assert_eq!(
        server.scalar(
            "SELECT (SELECT count() FROM roll.battery) + (SELECT count() FROM roll.connectivity) \
             + (SELECT count() FROM roll.app_performance) + (SELECT count() FROM roll.payment_health)"
        ),
        readings as u64,
        "the day is in ClickHouse as in the lake ({loaded:?})"
    );

    // The embedded engine writes beside the raw data; the ClickHouse
    // engine's lake copy goes to a lake of its own. Both read the same
    // minutes online and time zones.
    let side = std::sync::Arc::new(side_inputs());
    let embedded = Embedded::with_side_inputs(raw.clone(), side.clone());
    let ch_lake = dir.path().join("ch-lake");
    let clickhouse =
        ClickHouseEngine::with_side_inputs(ch.clone(), Lake::new(&ch_lake), side.clone());
    let engines: [(&dyn Executor, &Path); 2] =
        [(&embedded, raw.root()), (&clickhouse, ch_lake.as_path())];

    let day_partition = Partition::containing(Grain::Day, DAY);
    let hours = day_partition.covering(Grain::Hour);
    let (hourly, mut daily, fleet) = (
        jobs::device_health_hourly(),
        jobs::device_health_daily(),
        jobs::fleet_health_daily(),
    );
    // Stores from UTC-5 to UTC+1.
    daily.reads_before_ms = HOUR;
    daily.reads_after_ms = 5 * HOUR;
    let mut hourly_rows = [0u64; 2];
    for (i, (engine, _)) in engines.iter().enumerate() {
        for hour in daily.input_partitions(day_partition, Grain::Hour) {
            hourly_rows[i] += run(*engine, &hourly, hour).await;
        }
        run(*engine, &daily, day_partition).await;
        run(*engine, &fleet, day_partition).await;
    }
    // 16 terminals for 24 hours, one of them offline for three.
    assert_eq!(hourly_rows, [16 * 24 - 3, 16 * 24 - 3]);

    let mut worst: f64 = 0.0;
    for hour in &hours {
        let job = jobs::DEVICE_HEALTH_HOURLY;
        worst = worst.max(compare(
            job,
            *hour,
            &output(raw.root(), job, *hour),
            &output(&ch_lake, job, *hour),
        ));
    }
    for job in [jobs::DEVICE_HEALTH_DAILY, jobs::FLEET_HEALTH_DAILY] {
        worst = worst.max(compare(
            job,
            day_partition,
            &output(raw.root(), job, day_partition),
            &output(&ch_lake, job, day_partition),
        ));
    }
    eprintln!("largest quantile difference between the engines: {worst:.4}");

    // Each terminal's day is its zone's, and its minutes online are those
    // of the hours it reported in that day.
    let (columns, rows) = table(&output(
        raw.root(),
        jobs::DEVICE_HEALTH_DAILY,
        day_partition,
    ));
    let col = |name: &str| columns.iter().position(|(c, _)| c == name).unwrap();
    // t-03 moved at 12:20: its hours until 12:00 count for s-3, the rest
    // for s-9, one row each; the registry's store wins over the readings'.
    let stores_of = |device: &str| -> Vec<(Value, Value)> {
        rows.iter()
            .filter(|r| r[col("device_id")] == Value::Text(device.into()))
            .map(|r| (r[col("store_id")].clone(), r[col("hours_reported")].clone()))
            .collect()
    };
    assert_eq!(
        stores_of("t-03"),
        [
            (Value::Text("s-3".into()), Value::Num(12.0)),
            (Value::Text("s-9".into()), Value::Num(12.0))
        ]
    );
    assert_eq!(stores_of("t-05")[0].0, Value::Text("s-5x".into()));
    assert_eq!(
        stores_of("t-09")[0].0,
        Value::Text("s-1".into()),
        "no info: the readings' store"
    );
    // Every other terminal has one row; the mover's two add up to its day.
    let mut per_device: std::collections::BTreeMap<String, Vec<Value>> = Default::default();
    for row in &rows {
        let Value::Text(device) = &row[col("device_id")] else {
            panic!("a device id")
        };
        match per_device.get_mut(device) {
            None => {
                per_device.insert(device.clone(), row.clone());
            }
            Some(merged) => {
                for name in ["hours_reported", "minutes_online", "readings_expected"] {
                    merged[col(name)] = match (&merged[col(name)], &row[col(name)]) {
                        (Value::Num(a), Value::Num(b)) => Value::Num(a + b),
                        (Value::Null, b) => b.clone(),
                        (a, _) => a.clone(),
                    };
                }
            }
        }
    }
    assert_eq!(per_device.len(), DEVICES as usize);
    for (d, row) in per_device.values().enumerate() {
        let d = d as u32;
        assert_eq!(row[col("device_id")], Value::Text(format!("t-{d:02}")));
        let (from, to) = match zone_of(d) {
            Some("Europe/Berlin") => (0, 23),
            Some("America/New_York") => (5, 24),
            _ => (0, 24),
        };
        let reported: Vec<i64> = (from..to)
            .filter(|h| !(d == 7 && (3..6).contains(h)))
            .collect();
        assert_eq!(
            row[col("hours_reported")],
            Value::Num(reported.len() as f64),
            "t-{d:02}"
        );
        // SQL's SUM over the reported hours: null when none has a value.
        let sum = |per_hour: fn(u32, i64) -> Option<f64>| {
            let values: Vec<f64> = reported.iter().filter_map(|h| per_hour(d, *h)).collect();
            if values.is_empty() {
                Value::Null
            } else {
                Value::Num(values.iter().sum())
            }
        };
        assert_eq!(row[col("minutes_online")], sum(online_minutes), "t-{d:02}");
        assert_eq!(
            row[col("readings_expected")],
            sum(readings_expected),
            "t-{d:02}"
        );
    }

    // What the ClickHouse tables hold is what the lake copy holds.
    let rows_as_in_the_lake = || {
        assert_eq!(
            server.scalar("SELECT count() FROM roll.device_health_hourly"),
            hourly_rows[1]
        );
        assert_eq!(
            server.scalar("SELECT count() FROM roll.device_health_daily"),
            17,
            "a row per terminal, two for the one that moved"
        );
    };
    rows_as_in_the_lake();
    assert_eq!(
        server.scalar("SELECT count() FROM roll.fleet_health_daily"),
        table(&output(&ch_lake, jobs::FLEET_HEALTH_DAILY, day_partition))
            .1
            .len() as u64
    );
    assert_eq!(
        server.scalar("SELECT count() FROM roll.device_health_daily WHERE hours_reported = 21"),
        1,
        "the terminal that was offline for three hours"
    );

    // A run killed half way leaves the previous output intact: here, as a
    // kill after the INSERT … SELECT and before the swap would, junk in the
    // staging partition of hour 5 and a half-written hidden file beside
    // the embedded engine's output.
    let hour5 = tillwatch_rollups::clickhouse::partition_id(hours[5]);
    let checksum =
        "SELECT count(), sum(transactions), sum(battery_readings) FROM roll.device_health_hourly";
    let before = server.q(checksum);
    server.q(&format!(
        "INSERT INTO roll.device_health_hourly_staging (hour, device_id, merchant_id, disconnects, transactions, \
         crashes, hangs, battery_readings, connectivity_readings, app_readings, payment_readings) \
         VALUES (toDateTime({}, 'UTC'), 'junk', 'm-x', 0, 999999, 0, 0, 0, 0, 0, 0)",
        hours[5].start_ms / 1000
    ));
    assert_eq!(
        server.q(checksum),
        before,
        "the killed run's rows are not visible"
    );
    let embedded_file = output(raw.root(), jobs::DEVICE_HEALTH_HOURLY, hours[5]);
    let embedded_before = std::fs::read(&embedded_file).unwrap();
    std::fs::write(
        embedded_file.with_file_name(".part.parquet.tmp"),
        &embedded_before[..100],
    )
    .unwrap();
    run(&embedded, &daily, day_partition).await;
    assert_eq!(std::fs::read(&embedded_file).unwrap(), embedded_before);
    assert!(hour5 > 0);

    // The retry replaces its interval: nothing doubles, nothing of the
    // killed run shows, the staging table is left empty.
    run(&clickhouse, &hourly, hours[5]).await;
    run(&clickhouse, &daily, day_partition).await;
    rows_as_in_the_lake();
    assert_eq!(
        server.scalar("SELECT count() FROM roll.device_health_hourly_staging"),
        0
    );
    assert_eq!(server.q(checksum), before);

    a_teams_job_runs_on_clickhouse_as_on_the_embedded_engine(
        &server,
        &embedded,
        &clickhouse,
        (raw.root(), &ch_lake),
        &hours,
        dir.path(),
    )
    .await;

    // A partition of the team's job that is in the lake but not in its
    // ClickHouse table (written before the job ran there), needed by two
    // readers at once: it is landed from the lake's file once, rows as
    // in the file, not twice. One written before the SQL's columns
    // changed is not landed: the error names the backfill to run.
    let team_rows = |hour: Partition| {
        server.scalar(&format!(
            "SELECT count() FROM roll.offline_risk_hourly WHERE _partition = toDateTime({})",
            hour.start_ms / 1000
        ))
    };
    let in_file: u64 = read_file(&output(&ch_lake, "offline_risk_hourly", hours[11]))
        .unwrap()
        .iter()
        .map(|b| b.num_rows() as u64)
        .sum();
    assert!(in_file > 0 && team_rows(hours[11]) == in_file);
    let queue_sum = || {
        server.q(&format!(
            "SELECT sum(transactions), sum(longest_queue), groupArray(device_id) \
             FROM (SELECT * FROM roll.offline_risk_hourly WHERE _partition = toDateTime({}) \
             ORDER BY device_id)",
            hours[11].start_ms / 1000
        ))
    };
    let values_before = queue_sum();
    for hour in [hours[10], hours[11]] {
        server.q(&format!(
            "ALTER TABLE roll.offline_risk_hourly DROP PARTITION {}",
            hour.start_ms / 1000
        ));
    }
    let needed = [hours[11]];
    let (a, b) = tokio::join!(
        clickhouse.fill_from_lake("offline_risk_hourly", &needed),
        clickhouse.fill_from_lake("offline_risk_hourly", &needed),
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(team_rows(hours[11]), in_file, "{a:?} {b:?}");
    assert_eq!(
        queue_sum(),
        values_before,
        "the same values as the run put there"
    );
    let filled = a
        .iter()
        .chain(&b)
        .filter(|m| m.starts_with("filled from the lake: offline_risk_hourly"))
        .count();
    assert_eq!(filled, 1, "{a:?} {b:?}");
    let old_columns = clickhouse
        .fill_from_lake("offline_risk_hourly", &[hours[10]])
        .await
        .unwrap_err()
        .to_string();
    let at = hours[10].key();
    assert!(
        old_columns.contains(&format!(
            "its file's columns are not its table's now: run it again (tillwatch jobs backfill \
             offline_risk_hourly --from {at} --to {at})"
        )),
        "{old_columns}"
    );
    assert_eq!(team_rows(hours[10]), 0);

    // Every ClickHouse query of the provisioned Grafana dashboards (panels
    // and template variables), with the plugin's macros replaced as Grafana
    // would for the simulated day, runs here and returns rows.
    let panels: Vec<(String, String)> = grafana::queries(&workspace_root().join("dashboards"))
        .into_iter()
        .filter(|q| q.datasource == "grafana-clickhouse-datasource")
        .map(|q| {
            let vars = [("database", "roll"), ("device", "t-05")];
            (
                format!("{} / {}", q.dashboard, q.title),
                grafana::render(&q.text, DAY / 1000, DAY / 1000 + 86_400, &vars),
            )
        })
        .collect();
    // Each panel's rows, sorted (a panel orders by time only, so rows of
    // one time may come in any order).
    let answers = |what: &str| -> Vec<String> {
        panels
            .iter()
            .map(|(title, sql)| {
                let rows = server
                    .query(sql)
                    .unwrap_or_else(|e| panic!("{title} ({what}): {e}\n{sql}"));
                assert!(!rows.trim().is_empty(), "{title} returns no rows:\n{sql}");
                let mut lines: Vec<&str> = rows.lines().collect();
                lines.sort_unstable();
                lines.join("\n")
            })
            .collect()
    };
    let before = answers("as loaded");
    assert!(
        panels.len() >= 15,
        "{} ClickHouse queries in the dashboards",
        panels.len()
    );

    // By value: the readings-per-hour panel counts every reading of the
    // day once.
    let (_, per_hour) = panels
        .iter()
        .zip(&before)
        .find(|((title, _), _)| title.contains("Readings per hour"))
        .map(|((title, _), rows)| (title, rows))
        .expect("the fleet dashboard's readings panel");
    let counted: u64 = per_hour
        .lines()
        .map(|l| l.rsplit('\t').next().unwrap().parse::<u64>().unwrap())
        .sum();
    assert_eq!(counted, readings as u64);

    // Every reading of t-05 delivered a second time (a message redelivered
    // to another gateway, a backfill repeated), with merges stopped so the
    // copies stay: each panel answers as before, every reading once.
    for table in [
        "battery",
        "connectivity",
        "app_performance",
        "payment_health",
    ] {
        server.q(&format!("SYSTEM STOP MERGES roll.{table}"));
        server.q(&format!(
            "INSERT INTO roll.{table} SELECT * FROM roll.{table} WHERE device_id = 't-05'"
        ));
    }
    assert_eq!(
        server.scalar("SELECT count() FROM roll.battery WHERE device_id = 't-05'"),
        2 * server.scalar("SELECT count() FROM roll.battery FINAL WHERE device_id = 't-05'"),
        "the copies are there"
    );
    let after = answers("with every reading of t-05 twice");
    for (((title, _), was), is) in panels.iter().zip(&before).zip(&after) {
        assert!(
            was == is,
            "{title} counts a redelivered reading twice: {} rows before, {} after; first before: {:?}, after: {:?}",
            was.lines().count(),
            is.lines().count(),
            was.lines().next(),
            is.lines().next()
        );
    }

    // Retention with hourly rollups kept one day and daily ones two: run
    // for the simulated day itself it keeps every hour of it; run for the
    // day after, the day's hours go from ClickHouse's hourly table and its
    // side tables, and the daily rows stay. The team's job above (two
    // hours of the day in the lake, one in its table) declares `keep =
    // "1d"` and goes with them; a team's job that never ran on ClickHouse
    // has no table there, which is no error.
    let team_hours = [hours[10], hours[11]];
    let team_outputs = [
        tillwatch_rollups::retention::TeamOutput {
            job: "offline_risk_hourly".into(),
            grain: Grain::Hour,
            kept_ms: 24 * HOUR,
        },
        tillwatch_rollups::retention::TeamOutput {
            job: "never_ran_here".into(),
            grain: Grain::Week,
            kept_ms: 24 * HOUR,
        },
    ];
    let team_state = || {
        (
            team_hours
                .iter()
                .filter(|h| output(&ch_lake, "offline_risk_hourly", **h).exists())
                .count(),
            server.scalar("SELECT count(DISTINCT _partition) FROM roll.offline_risk_hourly"),
        )
    };
    assert_eq!(
        team_state(),
        (2, 1),
        "the team's hours before retention (one only in the lake)"
    );
    let before_next_day = |table: &str, what: &str| {
        server.scalar(&format!(
            "SELECT {what} FROM roll.{table} WHERE hour < toDateTime({})",
            (DAY + 24 * HOUR) / 1000
        ))
    };
    let (day_rows, day_hours, daily_rows) = (
        before_next_day("device_health_hourly", "count()"),
        before_next_day("device_health_hourly", "uniqExact(hour)"),
        server.scalar("SELECT count() FROM roll.device_health_daily"),
    );
    assert!(day_rows > 0 && day_hours >= 24 && daily_rows > 0);
    let retention = tillwatch_config::RetentionConfig {
        hourly_rollups: std::time::Duration::from_secs(86_400),
        daily_rollups: std::time::Duration::from_secs(2 * 86_400),
        ..Default::default()
    };
    let meta = tillwatch_meta::MetaStore::open(&tillwatch_config::Config {
        data_dir: dir.path().join("meta"),
        ..Default::default()
    })
    .await
    .unwrap();
    let apply = |day: i64| {
        let (retention, lake, meta, ch, teams) =
            (&retention, Lake::new(&ch_lake), &meta, &ch, &team_outputs);
        async move {
            tillwatch_rollups::retention::run(
                retention,
                &lake,
                Some(ch),
                teams,
                meta,
                Partition::containing(Grain::Day, day),
            )
            .await
            .unwrap()
        }
    };
    // (An hour before the day, read by the daily rollup, may go already.)
    apply(DAY).await;
    assert_eq!(
        before_next_day("device_health_hourly", "uniqExact(hour)"),
        24,
        "a day's hours are kept until the day is a day old"
    );
    assert_eq!(team_state(), (2, 1), "the team's hours are a day old too");
    let output = apply(DAY + 24 * HOUR).await;
    assert_eq!(
        before_next_day("device_health_hourly", "count()"),
        0,
        "{:?}",
        output.messages
    );
    assert_eq!(
        before_next_day("rollup_minutes_online", "count()"),
        0,
        "the side tables follow their rollup"
    );
    assert_eq!(
        server.scalar("SELECT count() FROM roll.device_health_daily"),
        daily_rows
    );
    assert!(
        output
            .messages
            .contains(&"deleted ClickHouse device_health_hourly: 24 partitions".to_string()),
        "{:?}",
        output.messages
    );
    assert_eq!(team_state(), (0, 0), "{:?}", output.messages);
    for deleted in [
        "deleted offline_risk_hourly: 1 day",
        "deleted ClickHouse offline_risk_hourly: 1 partition",
    ] {
        assert!(
            output.messages.contains(&deleted.to_string()),
            "{deleted}: {:?}",
            output.messages
        );
    }
}

/// The shipped example job (`deploy/jobs/payments-risk/offline_risk_hourly`,
/// both SQL files), run for hours of the day on each engine: the same rows
/// in the lake, computed here from the simulated day; on ClickHouse also
/// in its own table, which follows when the SQL's columns change.
async fn a_teams_job_runs_on_clickhouse_as_on_the_embedded_engine(
    server: &ClickHouseServer,
    embedded: &Embedded,
    clickhouse: &ClickHouseEngine,
    (embedded_lake, ch_lake): (&Path, &Path),
    hours: &[Partition],
    dir: &Path,
) {
    use tillwatch_rollups::declared;
    const JOB: &str = "offline_risk_hourly";
    let shipped = workspace_root().join("deploy/jobs/payments-risk");
    let jobs_root = dir.join("jobs");
    let team = jobs_root.join("payments-risk");
    std::fs::create_dir_all(&team).unwrap();
    for ext in ["toml", "datafusion.sql", "clickhouse.sql"] {
        std::fs::copy(
            shipped.join(format!("{JOB}.{ext}")),
            team.join(format!("{JOB}.{ext}")),
        )
        .unwrap();
    }
    let load = || {
        let (team_jobs, problems) = declared::load_dir(&jobs_root);
        assert!(problems.is_empty(), "{problems:?}");
        let mut all = declared::builtin();
        all.extend(team_jobs);
        let problems = declared::check(&all);
        assert!(problems.is_empty(), "{problems:?}");
        let on = tillwatch_rollups::clickhouse_declared::on_clickhouse(&all);
        assert_eq!(on.get(JOB), Some(&None), "it can run on ClickHouse");
        all
    };
    let grain_of = |_: &str| Some(Grain::Hour);
    let run_both = |all: Vec<declared::DeclaredJob>, hour: Partition| async move {
        let (schemas, problems) = declared::plan(&all, &Default::default()).await;
        assert!(problems.is_empty(), "{problems:?}");
        let job = all.iter().find(|j| j.name == JOB).unwrap();
        let spec = job.spec();
        let e = embedded
            .run_declared(&spec, job, &grain_of, hour)
            .await
            .unwrap_or_else(|e| panic!("embedded {hour}: {e}"));
        let c = clickhouse
            .run_declared(&spec, job, schemas[JOB].clone(), hour)
            .await
            .unwrap_or_else(|e| panic!("ClickHouse {hour}: {e}"));
        assert_eq!(e.rows, c.rows, "{hour}");
        assert!(
            c.messages[0].starts_with("ran on ClickHouse"),
            "{:?}",
            c.messages
        );
    };
    // Each engine's file, its rows sorted by terminal (the engines' join
    // orders differ).
    let sorted = |lake: &Path, hour: Partition| {
        let (columns, mut rows) = table(&output(lake, JOB, hour));
        let at = columns.iter().position(|(c, _)| c == "device_id").unwrap();
        rows.sort_by_key(|r| match &r[at] {
            Value::Text(t) => t.clone(),
            other => panic!("a device id, not {other:?}"),
        });
        (columns, rows)
    };

    // Hour 10: t-08 sent no payment readings, so it has no row; every
    // other terminal sent one every two minutes.
    let hour = hours[10];
    run_both(load(), hour).await;
    let (columns, rows) = sorted(embedded_lake, hour);
    assert_eq!(sorted(ch_lake, hour), (columns.clone(), rows.clone()));
    let col = |name: &str| columns.iter().position(|(c, _)| c == name).unwrap();
    let devices: Vec<Value> = rows.iter().map(|r| r[col("device_id")].clone()).collect();
    let expected: Vec<Value> = (0..DEVICES)
        .filter(|d| *d != 8)
        .map(|d| Value::Text(format!("t-{d:02}")))
        .collect();
    assert_eq!(devices, expected);
    for row in &rows {
        assert_eq!(row[col("payment_readings")], Value::Num(30.0), "{row:?}");
        assert_eq!(
            row[col("hour")],
            Value::Num(hour.start_ms as f64),
            "{row:?}"
        );
    }
    let start_s = hour.start_ms / 1000;
    assert_eq!(
        server.scalar(&format!(
            "SELECT count() FROM roll.offline_risk_hourly WHERE _partition = toDateTime({start_s}, 'UTC')"
        )),
        15
    );
    assert_eq!(
        server.scalar(&format!(
            "SELECT sum(payment_readings) FROM roll.offline_risk_hourly WHERE _partition = toDateTime({start_s}, 'UTC')"
        )),
        15 * 30
    );
    // Again: the partition is replaced, not doubled.
    run_both(load(), hour).await;
    assert_eq!(
        server.scalar("SELECT count() FROM roll.offline_risk_hourly"),
        15
    );

    // The team drops `store_id` and adds `double_queue`: the next hour's
    // run lays the table out anew; hour 10's rows stay.
    let edit = |ext: &str, from: &str, to: &str| {
        let path = team.join(format!("{JOB}.{ext}"));
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains(from), "{ext}: {from}");
        std::fs::write(&path, text.replace(from, to)).unwrap();
    };
    edit("toml", "\"store_id\", \"transactions\"", "\"transactions\"");
    edit(
        "toml",
        "\"payment_readings\"]",
        "\"payment_readings\", \"double_queue\"]",
    );
    edit("datafusion.sql", "    h.store_id,\n", "");
    edit(
        "datafusion.sql",
        "    q.payment_readings\n",
        "    q.payment_readings,\n    2 * q.longest_queue AS double_queue\n",
    );
    edit("clickhouse.sql", "    store_id,\n", "");
    edit(
        "clickhouse.sql",
        "    payment_readings\nFROM",
        "    payment_readings,\n    2 * longest_queue AS double_queue\nFROM",
    );
    let hour = hours[11];
    run_both(load(), hour).await;
    let (columns, rows) = sorted(embedded_lake, hour);
    assert_eq!(sorted(ch_lake, hour), (columns.clone(), rows.clone()));
    let names: Vec<&str> = columns.iter().map(|(c, _)| c.as_str()).collect();
    assert_eq!(
        names,
        [
            "hour",
            "device_id",
            "transactions",
            "longest_queue",
            "payment_readings",
            "double_queue"
        ]
    );
    let col = |name: &str| columns.iter().position(|(c, _)| c == name).unwrap();
    for row in &rows {
        let (Value::Num(q), Value::Num(d)) =
            (&row[col("longest_queue")], &row[col("double_queue")])
        else {
            panic!("{row:?}")
        };
        assert_eq!(*d, 2.0 * q);
    }
    let has_column = |name: &str| {
        server.scalar(&format!(
            "SELECT count() FROM system.columns WHERE database = 'roll' \
             AND table = 'offline_risk_hourly' AND name = '{name}'"
        ))
    };
    assert_eq!((has_column("double_queue"), has_column("store_id")), (1, 0));
    assert_eq!(
        server.scalar("SELECT count() FROM roll.offline_risk_hourly"),
        30,
        "hour 10's rows and hour 11's"
    );
    assert_eq!(
        server.scalar(&format!(
            "SELECT count() FROM roll.offline_risk_hourly WHERE _partition = toDateTime({}, 'UTC') \
             AND double_queue = 2 * longest_queue",
            hour.start_ms / 1000
        )),
        15
    );
    assert_eq!(
        server.scalar("SELECT count() FROM roll.offline_risk_hourly_staging"),
        0
    );
}
