//! The rollups as a user meets them: `standalone` with the scheduler on,
//! a simulated fleet replaying the last 26 hours, and yesterday's hourly,
//! daily and fleet rollups appearing in the lake by themselves, with the
//! daily counts matching the raw readings of the day. Then an operator runs
//! `tillwatch jobs backfill … --downstream` and `jobs lineage` with the
//! real command line, and the run history shows what the backfill re-ran.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use arrow::array::{Array, AsArray};
use arrow::datatypes::Int64Type;
use tillwatch_config::{Config, RollupEngine};
use tillwatch_domain::UtcMillis;
use tillwatch_integration_tests::{
    InProcess, api_call, api_get, assert_refused, eventually, test_tokens, tillwatch_bin, wait_for,
    widen_hourly_rounds,
};
use tillwatch_meta::MetaStore;
use tillwatch_rollups::embedded::Embedded;
use tillwatch_rollups::jobs;
use tillwatch_scheduler::{Grain, Partition};
use tillwatch_serve::EmbeddedBroker;
use tillwatch_sim::{Faults, SimConfig};
use tillwatch_storage::{Lake, read_file};
use tokio::sync::watch;

const HOUR: i64 = 3_600_000;
const VIEWER: &str = "scheduler-test-viewer-token";
const OPERATOR: &str = "scheduler-test-operator-token";

fn sum_column(path: &Path, column: &str) -> i64 {
    read_file(path)
        .unwrap()
        .iter()
        .map(|b| {
            let c = b.column_by_name(column).unwrap();
            let c = arrow::compute::cast(c, &arrow::datatypes::DataType::Int64).unwrap();
            let c = c.as_primitive::<Int64Type>();
            (0..c.len()).map(|i| c.value(i)).sum::<i64>()
        })
        .sum()
}

/// The simulated terminals' time zone (the simulator reports it).
const SIM_ZONE: &str = "Europe/London";
/// The span of UTC offsets the test gives the scheduler: London's.
const SPAN: [i8; 2] = [0, 1];

/// The UTC hours of `day` in London: those starting on that date there.
fn london_hours(day: Partition) -> Vec<Partition> {
    let tz = jiff::tz::TimeZone::get(SIM_ZONE).unwrap();
    let date = |ms: i64| {
        jiff::Timestamp::from_millisecond(ms)
            .unwrap()
            .to_zoned(tz.clone())
            .date()
    };
    let want = jiff::Timestamp::from_millisecond(day.start_ms)
        .unwrap()
        .to_zoned(jiff::tz::TimeZone::UTC)
        .date();
    Partition::range(
        Grain::Hour,
        day.start_ms - 2 * HOUR,
        day.end_ms() + 2 * HOUR,
    )
    .into_iter()
    .filter(|h| date(h.start_ms) == want)
    .collect()
}

/// Battery readings in the raw lake for the hours of `day`, London's day.
fn raw_battery_rows(lake: &Lake, day: Partition) -> i64 {
    let table = tillwatch_storage::Table::Reading(tillwatch_domain::Kind::Battery);
    london_hours(day)
        .into_iter()
        .flat_map(|h| lake.hour_files(table, tillwatch_domain::HourPartition(h.start_ms / HOUR)))
        .map(|f| {
            read_file(&f)
                .unwrap()
                .iter()
                .map(|b| b.num_rows() as i64)
                .sum::<i64>()
        })
        .sum()
}

fn cli(args: &[&str], data_dir: &Path) -> (bool, String, String) {
    let out = Command::new(tillwatch_bin())
        .args(args)
        .env("TILLWATCH__DATA_DIR", data_dir)
        .env("TILLWATCH__SCHEDULER__ENGINE", "embedded")
        .env(
            "TILLWATCH__SCHEDULER__LOCAL_DAY_UTC_OFFSETS",
            format!("[{}, {}]", SPAN[0], SPAN[1]),
        )
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .expect("run tillwatch");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standalone_rolls_up_yesterday_and_the_cli_backfills_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config {
        data_dir: dir.path().to_path_buf(),
        ..Config::default()
    };
    config.mqtt.client_id = "rollup-gateway".into();
    config.scheduler.tick = Duration::from_millis(200);
    config.http.tokens = test_tokens(VIEWER, OPERATOR);
    config.scheduler.engine = RollupEngine::Embedded;
    config.scheduler.start = "2d".into();
    // Daily rollups count the stores' local days (the simulated terminals
    // are in London): the span of their zone.
    config.scheduler.local_day_utc_offsets = SPAN;
    widen_hourly_rounds(&mut config);
    let embedded = EmbeddedBroker::start("127.0.0.1:0".parse().unwrap(), 1000).unwrap();
    let broker_url = embedded.url();
    let standalone = InProcess::start(config.clone(), Some(embedded)).await;
    let http_addr = standalone.http;

    // 30 terminals, a reading every 10 minutes from 26 hours ago.
    let now = UtcMillis::now().0;
    let devices = 30;
    let sim = SimConfig {
        broker: broker_url,
        devices,
        merchants: 3,
        stores_per_merchant: 2,
        interval: Duration::from_secs(600),
        readings_per_device: Some(150),
        seed: 11,
        start_ms: Some(now - 26 * HOUR),
        faults: Faults::none(),
        connect_concurrency: 30,
        security: Default::default(),
        durability: Default::default(),
    };
    let report = tillwatch_sim::run(sim, watch::channel(false).1)
        .await
        .unwrap();
    assert_eq!(report.unacked_readings, 0);

    let lake = Lake::new(dir.path().join("lake"));
    let outputs = Embedded::new(lake.clone());
    let yesterday = Partition::containing(Grain::Day, now - 24 * HOUR);
    let fleet_path = outputs.output_path(jobs::FLEET_HEALTH_DAILY, yesterday);
    wait_for(
        "yesterday's fleet rollup to appear",
        Duration::from_secs(300),
        || fleet_path.exists(),
    )
    .await;
    // The same operations over HTTP.
    let listed = api_get(http_addr, "/api/v1/jobs", VIEWER);
    let names: Vec<&str> = listed["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            jobs::RAW_COMPACTION,
            jobs::DEVICE_HEALTH_HOURLY,
            jobs::DEVICE_HEALTH_DAILY,
            jobs::FLEET_HEALTH_DAILY,
            tillwatch_rollups::retention::RETENTION
        ]
    );
    assert!(listed["watermark_ms"].as_i64().unwrap() > now - HOUR);
    let path = format!(
        "/api/v1/jobs/{}/partitions/{yesterday}/lineage",
        jobs::DEVICE_HEALTH_DAILY
    );
    let lineage = api_get(http_addr, &path, VIEWER);
    assert_eq!(lineage["status"], "succeeded");
    assert_eq!(lineage["downstream"][0]["job"], jobs::FLEET_HEALTH_DAILY);
    assert_eq!(
        lineage["current_run"]["inputs"].as_array().unwrap().len(),
        25,
        "the day read its 24 hours and the hour before (UTC+1 in summer)"
    );
    let runs = api_get(
        http_addr,
        &format!("/api/v1/jobs/{}/runs?limit=5", jobs::DEVICE_HEALTH_HOURLY),
        VIEWER,
    );
    assert_eq!(runs["runs"].as_array().unwrap().len(), 5);
    // Every job's runs, filtered by status, each with its log.
    let succeeded = api_get(http_addr, "/api/v1/runs?status=succeeded&limit=3", VIEWER);
    let succeeded = succeeded["runs"].as_array().unwrap();
    assert_eq!(succeeded.len(), 3, "{succeeded:?}");
    for run in succeeded {
        assert_eq!(run["status"], "succeeded");
        let log: Vec<&str> = run["log"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l.as_str().unwrap())
            .collect();
        assert!(log[0].contains("started by"), "{log:?}");
        assert!(log.last().unwrap().contains("succeeded in"), "{log:?}");
    }
    assert!(listed["due"].is_array(), "{listed}");
    assert!(
        listed["jobs"][0]["partitions"]["stale"].is_u64(),
        "{listed}"
    );
    assert_refused(
        http_addr,
        VIEWER,
        "",
        &[
            ("/api/v1/jobs/nope/runs", 404, "no job \"nope\""),
            (
                "/api/v1/jobs/device_health_hourly/runs?partition=yesterday",
                400,
                "partition",
            ),
            (
                "/api/v1/jobs/device_health_hourly/runs?limit=0",
                400,
                "limit",
            ),
            (
                "/api/v1/jobs/device_health_hourly/runs?colour=red",
                400,
                "colour",
            ),
            ("/api/v1/runs?status=weird", 400, "status"),
            ("/api/v1/runs?job=nope", 404, "nope"),
            ("/api/v1/runs?limit=5000", 400, "limit"),
        ],
    );
    let backfill = format!("/api/v1/jobs/{}/backfill", jobs::DEVICE_HEALTH_DAILY);
    let plan = format!(
        r#"{{"from": "{yesterday}", "to": "{yesterday}", "downstream": true, "dry_run": true}}"#
    );
    let (status, planned) = api_call(http_addr, "POST", &backfill, Some(&plan), Some(OPERATOR));
    assert_eq!(status, 200, "{planned}");
    assert_eq!(planned["partitions"].as_array().unwrap().len(), 2);
    let bad = r#"{"from": "2026-13-01", "to": "2026-11-01"}"#;
    let (status, refused) = api_call(http_addr, "POST", &backfill, Some(bad), Some(OPERATOR));
    assert_eq!(status, 400, "{refused}");
    assert!(
        refused["error"].as_str().unwrap().contains("from"),
        "{refused}"
    );

    // Near midnight yesterday's last hours are still arriving when its
    // daily rollup first runs, and a terminal whose info lands after its
    // first readings is attributed to its store late; the scheduler re-runs
    // the day as each lands. Wait (with a deadline) for the run that has
    // every reading and every terminal in its store.
    let daily = outputs.output_path(jobs::DEVICE_HEALTH_DAILY, yesterday);
    let rows_of = |path: &std::path::Path| -> usize {
        read_file(path).unwrap().iter().map(|b| b.num_rows()).sum()
    };
    let mut seen = None;
    let complete = eventually(Duration::from_secs(300), || {
        seen = daily
            .exists()
            .then(|| {
                std::panic::catch_unwind(|| {
                    (sum_column(&daily, "battery_readings"), rows_of(&daily))
                })
                .ok()
            })
            .flatten();
        seen.is_some_and(|(n, rows)| n == raw_battery_rows(&lake, yesterday) && rows == devices)
    })
    .await;
    if !complete {
        // What the scheduler did with the day, to tell why.
        let runs = api_get(
            http_addr,
            &format!(
                "/api/v1/jobs/{}/runs?partition={yesterday}&limit=50",
                jobs::DEVICE_HEALTH_DAILY
            ),
            VIEWER,
        );
        let overview = api_get(http_addr, "/api/v1/jobs", VIEWER);
        // Which terminals have more than one row, and in what stores.
        let mut rows: Vec<String> = Vec::new();
        for batch in read_file(&daily).unwrap_or_default() {
            let text = |name: &str| {
                let col = batch.column_by_name(name).unwrap();
                let col = arrow::compute::cast(col, &arrow::datatypes::DataType::Utf8).unwrap();
                let col = col.as_string::<i32>().clone();
                (0..col.len())
                    .map(move |i| col.is_valid(i).then(|| col.value(i).to_string()))
                    .collect::<Vec<_>>()
            };
            let (d, m, st, h) = (
                text("device_id"),
                text("merchant_id"),
                text("store_id"),
                text("hours_reported"),
            );
            for i in 0..batch.num_rows() {
                rows.push(format!("{:?}/{:?}/{:?}: {:?} h", d[i], m[i], st[i], h[i]));
            }
        }
        rows.sort();
        // The registry's view of the terminals, and the hourly runs.
        let store = MetaStore::connect(&config.metadata_url()).await.unwrap();
        let inputs = store.attribution_inputs().await.unwrap();
        let versions: Vec<String> = inputs
            .versions
            .iter()
            .map(|v| {
                format!(
                    "{} from {} {}/{:?} recorded {}",
                    v.device_id, v.valid_from_ms, v.merchant_id, v.store_id, v.recorded_at_ms
                )
            })
            .collect();
        let hourly_runs = api_get(
            http_addr,
            &format!("/api/v1/jobs/{}/runs?limit=500", jobs::DEVICE_HEALTH_HOURLY),
            VIEWER,
        );
        let hourly_runs: Vec<String> = hourly_runs["runs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                format!(
                    "{} {} {} started {} fp {}",
                    r["partition"],
                    r["status"],
                    r["reason"],
                    r["started_ms"],
                    r["inputs_fingerprint"]
                )
            })
            .collect();
        eprintln!(
            "spans: {:?}\nversions: {versions:#?}\nhourly runs: {hourly_runs:#?}",
            inputs.spans
        );
        panic!(
            "after 300 s yesterday's daily rollup holds (battery readings, rows) {seen:?}, \
             want ({}, {devices}); its rows (device/merchant/store: hours): {rows:#?}\n\
             its runs: {runs}\njobs: {overview}",
            raw_battery_rows(&lake, yesterday)
        );
    }
    standalone.stop().await;

    // Yesterday's daily rollup counts every battery reading of the day once,
    // and every terminal that reported.
    let daily = outputs.output_path(jobs::DEVICE_HEALTH_DAILY, yesterday);
    let raw = raw_battery_rows(&lake, yesterday);
    assert!(raw > 0, "the simulated fleet reported yesterday");
    assert_eq!(sum_column(&daily, "battery_readings"), raw);
    assert_eq!(rows_of(&daily), devices);
    assert_eq!(
        sum_column(&fleet_path, "devices"),
        devices as i64,
        "the fleet rollup covers each terminal once"
    );
    // Compaction left one file per raw table-hour.
    let table = tillwatch_storage::Table::Reading(tillwatch_domain::Kind::Battery);
    for hour in london_hours(yesterday) {
        let files = lake.hour_files(table, tillwatch_domain::HourPartition(hour.start_ms / HOUR));
        assert!(files.len() <= 1, "{hour}: {files:?}");
    }

    // An operator re-runs six hours of yesterday and everything downstream.
    let from = format!(
        "{}",
        Partition::containing(Grain::Hour, yesterday.start_ms + 18 * HOUR)
    );
    let to = format!(
        "{}",
        Partition::containing(Grain::Hour, yesterday.start_ms + 23 * HOUR)
    );
    let data = dir.path();
    let backfill = [
        "jobs",
        "backfill",
        jobs::DEVICE_HEALTH_HOURLY,
        "--from",
        &from,
        "--to",
        &to,
        "--downstream",
    ];
    let (ok, out, err) = cli(&[&backfill[..], &["--dry-run"]].concat(), data);
    assert!(ok, "{err}");
    assert!(out.contains("would run 8 partitions"), "{out}");
    // Outputs are written aside and renamed into place: a rewritten day
    // is a new file.
    let before = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&daily).unwrap());
    let (ok, out, err) = cli(&backfill, data);
    assert!(ok, "backfill failed:\n{out}\n{err}");
    assert!(out.contains("[  8/8]"), "progress is shown:\n{out}");
    assert!(out.contains("backfilled 8 partitions"), "{out}");
    assert_ne!(
        std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&daily).unwrap()),
        before,
        "the backfill rewrote the day downstream"
    );
    assert_eq!(
        sum_column(&daily, "battery_readings"),
        raw,
        "same data, same counts"
    );

    let store = MetaStore::connect(&config.metadata_url()).await.unwrap();
    let forced: Vec<String> = store
        .job_runs(None, None, 10_000)
        .await
        .unwrap()
        .into_iter()
        .filter(|r| r.reason == "forced")
        .map(|r| format!("{} {}", r.job, r.partition_key))
        .collect();
    assert_eq!(forced.len(), 8, "{forced:?}");
    assert!(forced.contains(&format!("{} {yesterday}", jobs::FLEET_HEALTH_DAILY)));

    let (ok, out, err) = cli(
        &[
            "jobs",
            "lineage",
            jobs::DEVICE_HEALTH_DAILY,
            &yesterday.to_string(),
        ],
        data,
    );
    assert!(ok, "{err}");
    assert!(
        out.contains(jobs::DEVICE_HEALTH_HOURLY) && out.contains(jobs::FLEET_HEALTH_DAILY),
        "lineage names its inputs and its downstream:\n{out}"
    );
    let (ok, _, err) = cli(
        &[
            "jobs",
            "backfill",
            "no_such_job",
            "--from",
            &from,
            "--to",
            &to,
        ],
        data,
    );
    assert!(!ok && err.contains("no_such_job"), "{err}");
}
