//! Times the hourly and daily rollups of one simulated day on each engine.
//!
//!   rollup_bench DEVICES STEP_MINUTES WORK_DIR [CLICKHOUSE_URL]
//!
//! Writes DEVICES terminals' day (one reading of each of the four kinds
//! every STEP_MINUTES) into a lake under WORK_DIR, as gateway flushes would
//! (four files per table-hour), then runs the 24 `device_health_hourly`
//! partitions and the `device_health_daily` one on the embedded engine.
//! With a ClickHouse URL it loads the same day into database `bench` (not
//! timed) and runs both again as `INSERT … SELECT` there. Prints one JSON
//! line per engine. `tests/bench-rollups` drives it.

use std::time::{Duration, Instant};

use tillwatch_clickhouse::{ClickHouse, Settings};
use tillwatch_domain::{
    AppPerformance, Battery, BootId, Connectivity, DeviceId, MerchantId, NetworkType,
    PaymentHealth, Reading, Signal, StoreId, UtcMillis,
};
use tillwatch_rollups::clickhouse::ClickHouseEngine;
use tillwatch_rollups::embedded::Embedded;
use tillwatch_rollups::jobs;
use tillwatch_scheduler::{Executor, Grain, Partition};
use tillwatch_storage::{Lake, Staging, StoredReading};

/// 2026-11-20T00:00Z.
const DAY: i64 = 1_795_132_800_000;

fn write_day(lake: &Lake, devices: usize, step_min: i64) -> u64 {
    let ids: Vec<(DeviceId, MerchantId, StoreId)> = (0..devices)
        .map(|d| {
            (
                DeviceId::new(&format!("term-{d:06}")).unwrap(),
                MerchantId::new(&format!("m-{:03}", d % 200)).unwrap(),
                StoreId::new(&format!("s-{:04}", d % 2000)).unwrap(),
            )
        })
        .collect();
    let mut rows = 0u64;
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut rnd = |n: u64| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % n
    };
    for hour in 0..24i64 {
        let mut flushes: Vec<Staging> = (0..4).map(|_| Staging::new()).collect();
        for (d, (id, merchant, store)) in ids.iter().enumerate() {
            for step in 0..(60 / step_min) {
                let at = DAY + hour * 3_600_000 + step * step_min * 60_000 + (d as i64 % 60_000);
                let seq = ((hour * 60 / step_min + step) * 4) as u64;
                let signals = [
                    Signal::Battery(Battery {
                        level_pct: (100 - hour * 3 - rnd(3) as i64).clamp(0, 100) as u32,
                        charging: d % 7 == 0 && hour > 18,
                        temperature_celsius: 25.0 + rnd(100) as f32 / 10.0,
                        voltage_mv: 3900,
                        health_pct: 80 + (d % 20) as u32,
                        cycle_count: 300,
                    }),
                    Signal::Connectivity(Connectivity {
                        network_type: NetworkType::Wifi,
                        rssi_dbm: -50 - rnd(50) as i32,
                        payment_host_latency_ms: 80 + rnd(500) as u32,
                        disconnects: u32::from(rnd(30) == 0),
                        carrier_or_ssid: "shop-wifi".into(),
                    }),
                    Signal::AppPerformance(AppPerformance {
                        app_version: ["4.1.0", "4.2.0"][d % 2].into(),
                        firmware_version: ["2.0.3", "2.1.0", "2.1.1"][d % 3].into(),
                        transactions: rnd(6) as u32,
                        transaction_latency_avg_ms: 400 + rnd(1500) as u32,
                        transaction_latency_max_ms: 3000,
                        startup_ms: None,
                        crashes: u32::from(rnd(500) == 0),
                        hangs: u32::from(rnd(800) == 0),
                        memory_used_kib: 50_000,
                        cpu_pct: 12.0,
                    }),
                    Signal::PaymentHealth(PaymentHealth {
                        offline_queue_len: rnd(3) as u32,
                        offline_queue_oldest_age_s: rnd(300) as u32,
                        tamper_detected: false,
                        printer_paper_low: false,
                    }),
                ];
                for (k, signal) in signals.into_iter().enumerate() {
                    let reading = Reading {
                        device_id: id.clone(),
                        boot_id: BootId(1),
                        seq: seq + k as u64,
                        sampled_at: UtcMillis(at),
                        signal,
                    };
                    flushes[(step as usize) % 4].push_reading(StoredReading {
                        reading: &reading,
                        merchant_id: merchant,
                        store_id: Some(store),
                        received_at: UtcMillis(at + 300),
                    });
                    rows += 1;
                }
            }
        }
        for (i, staging) in flushes.into_iter().enumerate() {
            for part in staging.finish() {
                let path = lake.file_path(part.table, part.hour, &format!("bench-{i}.parquet"));
                lake.write_part(&part, &path).expect("write the lake");
            }
        }
    }
    rows
}

async fn time_day(engine: &dyn Executor) -> (Duration, Duration) {
    let day = Partition::containing(Grain::Day, DAY);
    let hourly = jobs::device_health_hourly();
    let daily = jobs::device_health_daily();
    let started = Instant::now();
    for hour in day.covering(Grain::Hour) {
        engine
            .run(&hourly, hour)
            .await
            .expect("an hourly partition");
    }
    let hourly_took = started.elapsed();
    let started = Instant::now();
    engine.run(&daily, day).await.expect("the daily partition");
    (hourly_took, started.elapsed())
}

fn report(engine: &str, devices: usize, readings: u64, (hourly, daily): (Duration, Duration)) {
    println!(
        "{{\"engine\": \"{engine}\", \"devices\": {devices}, \"readings\": {readings}, \"hourly_s\": {:.2}, \"daily_s\": {:.2}, \"total_s\": {:.2}}}",
        hourly.as_secs_f64(),
        daily.as_secs_f64(),
        (hourly + daily).as_secs_f64()
    );
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 4 {
        eprintln!("usage: rollup_bench DEVICES STEP_MINUTES WORK_DIR [CLICKHOUSE_URL]");
        std::process::exit(2);
    }
    let devices: usize = args[1].parse().expect("DEVICES is a number");
    let step: i64 = args[2].parse().expect("STEP_MINUTES is a number");
    assert!(step > 0 && 60 % step == 0, "STEP_MINUTES divides 60");
    let work = std::path::PathBuf::from(&args[3]);
    let lake = Lake::new(work.join("lake"));
    let started = Instant::now();
    let readings = write_day(&lake, devices, step);
    eprintln!(
        "wrote {readings} readings of {devices} terminals in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let embedded = Embedded::new(lake.clone());
    report("embedded", devices, readings, time_day(&embedded).await);

    if let Some(url) = args.get(4) {
        let ch = ClickHouse::new(Settings {
            url: url.clone(),
            database: "bench".into(),
            user: "default".into(),
            password: None,
            insert_timeout: Duration::from_secs(300),
        });
        tillwatch_clickhouse::migrate(&ch, None)
            .await
            .expect("migrate ClickHouse");
        let date = chrono_day();
        let started = Instant::now();
        tillwatch_clickhouse::backfill(&ch, &lake, date, date, 200_000, |_| {})
            .await
            .expect("load the day into ClickHouse");
        eprintln!(
            "loaded the day into ClickHouse in {:.1} s",
            started.elapsed().as_secs_f64()
        );
        let engine = ClickHouseEngine::new(ch, Lake::new(work.join("ch-lake")));
        report("clickhouse", devices, readings, time_day(&engine).await);
    }
}

fn chrono_day() -> chrono::NaiveDate {
    chrono::NaiveDate::from_ymd_opt(2026, 11, 20).expect("a date")
}
