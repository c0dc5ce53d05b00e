//! Times the hourly and daily rollups of one simulated day on each engine.
//!
//!   tillwatch-bench-rollups DEVICES STEP_MINUTES WORK_DIR [CLICKHOUSE_URL]
//!
//! Writes DEVICES terminals' day (one reading of each of the four kinds
//! every STEP_MINUTES) into a lake under WORK_DIR, as gateway flushes would
//! (four files per table-hour), then runs the 24 `device_health_hourly`
//! partitions and the `device_health_daily` one on the embedded engine.
//! With a ClickHouse URL it loads the same day into database `bench` (not
//! timed) and runs both again as `INSERT … SELECT` there, then writes the
//! very statements the engine sent for each partition to
//! WORK_DIR/clickhouse-sql/ (hourly-NN.sql, daily.sql), for the baseline of
//! running them by hand in `clickhouse-client`. Prints one JSON line per
//! engine. `tests/bench-rollups` drives it.

use std::time::{Duration, Instant};

use tillwatch_clickhouse::{ClickHouse, Settings};
use tillwatch_rollups::clickhouse::ClickHouseEngine;
use tillwatch_rollups::embedded::Embedded;
use tillwatch_rollups::jobs;
use tillwatch_scheduler::{Executor, Grain, Partition};
use tillwatch_storage::Lake;

/// 2026-11-20T00:00Z.
const DAY: i64 = 1_795_132_800_000;

fn write_day(lake: &Lake, devices: usize, step_min: i64) -> u64 {
    tillwatch_rollups::synthetic::write_hours(lake, devices, DAY, 24, step_min)
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
        eprintln!("usage: tillwatch-bench-rollups DEVICES STEP_MINUTES WORK_DIR [CLICKHOUSE_URL]");
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
            cluster: None,
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
        write_statements(&engine, &work.join("clickhouse-sql"));
    }
}

/// The `INSERT … SELECT` the engine sends for each partition of the day,
/// one file per partition, into the jobs' staging tables.
fn write_statements(engine: &ClickHouseEngine, dir: &std::path::Path) {
    std::fs::create_dir_all(dir).expect("create the SQL directory");
    let day = Partition::containing(Grain::Day, DAY);
    let hourly = jobs::device_health_hourly();
    for (n, hour) in day.covering(Grain::Hour).into_iter().enumerate() {
        let select = engine.select(&hourly, hour).expect("the hourly SQL");
        let sql = format!("INSERT INTO bench.device_health_hourly_staging\n{select}");
        std::fs::write(dir.join(format!("hourly-{n:02}.sql")), sql).expect("write SQL");
    }
    let daily = jobs::device_health_daily();
    let select = engine.select(&daily, day).expect("the daily SQL");
    let sql = format!("INSERT INTO bench.device_health_daily_staging\n{select}");
    std::fs::write(dir.join("daily.sql"), sql).expect("write SQL");
}

fn chrono_day() -> chrono::NaiveDate {
    chrono::NaiveDate::from_ymd_opt(2026, 11, 20).expect("a date")
}
