//! The lake in S3-compatible object storage, against a real S3 server
//! (moto's server mode, from PyPI; no MinIO or AWS is reachable here):
//!
//! - the lake's own behaviour in a bucket is its behaviour on disk: the
//!   same files and fingerprints, the watermark of the slowest writer, a
//!   compaction that keeps each reading once and never shows old and new
//!   files together when cut short;
//! - the roles of a deployment share one bucket: two gateways on a shared
//!   subscription write it (one killed mid-stream and restarted, its dedup
//!   journal recovered from the bucket), a scheduler compacts and rolls it
//!   up, and the API serves a terminal's series from it (the alerter,
//!   which keeps the device registry, runs beside them), or, its bucket
//!   gone, an error naming it. No role writes a lake to its local disk.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tillwatch_domain::{HourPartition, Kind};
use tillwatch_integration_tests::s3::{ACCESS_KEY_ID, S3Server, SECRET_ACCESS_KEY};
use tillwatch_integration_tests::{
    Mosquitto, RoleProcess, files_below, http_call, start_across_hour, wait_for,
};
use tillwatch_meta::testing::TestDatabase;
use tillwatch_sim::SimConfig;
use tillwatch_storage::{Lake, Table, sample};
use tokio::sync::watch;

const START: i64 = 1_795_132_800_000;
const VIEWER: &str = "object-lake-viewer-token";

/// Writes three flushes of one hour (the third a redelivery of the first)
/// and returns the hour.
fn write_flushes(lake: &Lake) -> HourPartition {
    let mut hour = None;
    for (i, offset) in [(0, 0), (1, 1000), (2, 0)] {
        for part in sample::staged(40, Some(Kind::Battery), START + offset).finish() {
            hour.get_or_insert(part.hour);
            let path = lake.file_path(part.table, part.hour, &format!("f{i}.parquet"));
            lake.write_part(&part, &path).unwrap();
        }
    }
    hour.unwrap()
}

fn names(files: &[PathBuf]) -> Vec<String> {
    files
        .iter()
        .map(|f| f.file_name().unwrap().to_string_lossy().into_owned())
        .collect()
}

fn row_count(lake: &Lake, files: &[PathBuf]) -> usize {
    files
        .iter()
        .flat_map(|f| lake.read_file(f).unwrap())
        .map(|b| b.num_rows())
        .sum()
}

/// The keys of the file on disk with the same name as `file` in the bucket.
fn disk_keys(disk: &Lake, file: &Path) -> Vec<(String, u64, u64)> {
    let rel: PathBuf = file.iter().skip(3).collect();
    disk.read_reading_keys(&disk.root().join(rel)).unwrap()
}

#[test]
fn a_lake_in_a_bucket_lists_versions_compacts_and_recovers_as_on_disk() {
    let s3 = S3Server::start();
    let bucket = Lake::open(s3.url("unit"), &s3.options()).unwrap();
    assert!(bucket.is_object_store());
    let dir = tempfile::tempdir().unwrap();
    let disk = Lake::new(dir.path());
    let table = Table::Reading(Kind::Battery);

    let hour = write_flushes(&bucket);
    assert_eq!(write_flushes(&disk), hour);
    let files = bucket.hour_files(table, hour);
    assert_eq!(names(&files), ["f0.parquet", "f1.parquet", "f2.parquet"]);
    assert!(
        files[0]
            .to_string_lossy()
            .starts_with("s3://tillwatch-lake/unit/battery/date="),
        "{files:?}"
    );
    // Same files, same sizes: the same version as the same data on disk.
    let version = bucket.hour_fingerprint(table, hour);
    assert_eq!(version, disk.hour_fingerprint(table, hour));
    assert_eq!(bucket.fingerprints(table), [(hour, version.clone())]);
    assert_eq!(row_count(&bucket, &files), 120);
    assert_eq!(bucket.read_reading_keys(&files[1]).unwrap().len(), 40);

    assert_eq!(bucket.watermark(), None);
    bucket.write_watermark("gw-a", 2_000).unwrap();
    bucket.write_watermark("gw-b", 1_500).unwrap();
    assert_eq!(bucket.watermark(), Some(1_500));
    bucket.write_watermark("gw-b", 3_000).unwrap();
    assert_eq!(bucket.watermark(), Some(2_000));

    // Compaction: one file, each reading once, the version kept.
    let report = bucket.compact_hour(table, hour).unwrap();
    assert_eq!((report.files_in, report.rows_in), (3, 120));
    let distinct: std::collections::BTreeSet<_> =
        files.iter().flat_map(|f| disk_keys(&disk, f)).collect();
    assert!(distinct.len() < 120);
    assert_eq!(
        report.rows_out as usize,
        distinct.len(),
        "redeliveries dropped"
    );
    let compacted = bucket.hour_files(table, hour);
    assert_eq!(compacted.len(), 1);
    assert!(names(&compacted)[0].starts_with("compacted-"));
    assert_eq!(row_count(&bucket, &compacted), distinct.len());
    assert_eq!(bucket.hour_fingerprint(table, hour), version);
    for old in &files {
        assert!(!bucket.exists(old).unwrap(), "{} deleted", old.display());
    }
    let hour_dir = compacted[0].parent().unwrap().to_path_buf();
    assert!(!bucket.exists(&hour_dir.join("_compaction.json")).unwrap());
    assert_eq!(disk.compact_hour(table, hour).unwrap(), report);
    assert_eq!(
        names(&disk.hour_files(table, hour)),
        names(&compacted),
        "the same merged file on disk"
    );

    // A late file, then a compaction cut short after its manifest: the
    // old files stay the hour's, until the merged file is in place, and
    // then only it is.
    for part in sample::staged(5, Some(Kind::Battery), START + 5000).finish() {
        let path = bucket.file_path(part.table, part.hour, "late.parquet");
        bucket.write_part(&part, &path).unwrap();
    }
    let before = bucket.hour_files(table, hour);
    assert_eq!(before.len(), 2);
    let manifest = serde_json::json!({
        "new": "compacted-x.parquet",
        "replaces": names(&before),
    });
    bucket
        .put(
            &hour_dir.join("_compaction.json"),
            serde_json::to_vec(&manifest).unwrap(),
        )
        .unwrap();
    assert_eq!(bucket.hour_files(table, hour), before);
    let merged = bucket.read_file(&before[0]).unwrap();
    let mut bytes = Vec::new();
    let mut writer =
        parquet::arrow::ArrowWriter::try_new(&mut bytes, merged[0].schema(), None).unwrap();
    for b in &merged {
        writer.write(b).unwrap();
    }
    writer.close().unwrap();
    bucket
        .put(&hour_dir.join("compacted-x.parquet"), bytes)
        .unwrap();
    assert_eq!(
        names(&bucket.hour_files(table, hour)),
        ["compacted-x.parquet"]
    );
    bucket.compact_hour(table, hour).unwrap();
    assert!(!bucket.exists(&hour_dir.join("_compaction.json")).unwrap());
    for old in &before {
        assert!(!bucket.exists(old).unwrap(), "{} deleted", old.display());
    }
}

#[test]
fn a_bucket_that_is_not_there_is_an_error_naming_it() {
    let s3 = S3Server::start();
    let lake = Lake::open("s3://no-such-bucket/lake", &s3.options()).unwrap();
    let part = sample::staged(3, Some(Kind::Battery), START)
        .finish()
        .remove(0);
    let path = lake.file_path(part.table, part.hour, "a.parquet");
    let err = lake.write_part(&part, &path).unwrap_err().to_string();
    assert!(
        err.contains("s3://no-such-bucket/lake/battery/") && err.contains("NoSuchBucket"),
        "{err}"
    );
    // The scheduler's view of a lake it cannot list: nothing due, rather
    // than hours that look empty.
    assert!(lake.try_fingerprints(part.table).is_err());
    let snapshot = tillwatch_rollups::service::lake_snapshot(
        &lake,
        tillwatch_domain::UtcMillis::now().0,
        std::time::Duration::from_secs(300),
    );
    assert_eq!(snapshot.watermark_ms, i64::MIN);
    assert!(snapshot.fingerprints.is_empty());
    let err = Lake::open("gs://bucket/lake", &s3.options())
        .unwrap_err()
        .to_string();
    assert!(err.contains("gs://bucket/lake"), "{err}");
}

/// Every reading key in the lake's reading tables, with how often each
/// is stored.
fn stored(lake: &Lake) -> BTreeMap<(String, u64, u64), u32> {
    let mut out = BTreeMap::new();
    for kind in Kind::ALL {
        let table = Table::Reading(kind);
        for (hour, _) in lake.fingerprints(table) {
            for f in lake.hour_files(table, hour) {
                for key in lake.read_reading_keys(&f).unwrap() {
                    *out.entry(key).or_default() += 1;
                }
            }
        }
    }
    out
}

fn total(keys: &BTreeMap<(String, u64, u64), u32>) -> u64 {
    keys.values().map(|n| u64::from(*n)).sum()
}

/// The environment every role gets: the lake in the bucket, its secret
/// key in a file, one PostgreSQL.
fn lake_env<'a>(s3: &'a S3Server, secret: &'a Path, db: &'a str) -> Vec<(&'static str, String)> {
    vec![
        ("TILLWATCH__LAKE__PATH", s3.url("fleet")),
        ("TILLWATCH__LAKE__S3__ENDPOINT", s3.endpoint()),
        ("TILLWATCH__LAKE__S3__ALLOW_HTTP", "true".into()),
        ("TILLWATCH__LAKE__S3__REGION", "us-east-1".into()),
        ("TILLWATCH__LAKE__S3__ACCESS_KEY_ID", ACCESS_KEY_ID.into()),
        (
            "TILLWATCH__LAKE__S3__SECRET_ACCESS_KEY_FILE",
            secret.to_str().unwrap().into(),
        ),
        ("TILLWATCH__METADATA__URL", db.into()),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn gateways_a_scheduler_and_the_api_share_one_lake_in_a_bucket() {
    let s3 = S3Server::start();
    let mosquitto = Mosquitto::start();
    let db = TestDatabase::postgres().await;
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("s3-secret");
    std::fs::write(&secret, format!("{SECRET_ACCESS_KEY}\n")).unwrap();
    let env = lake_env(&s3, &secret, &db.url);
    let lake = Lake::open(s3.url("fleet"), &s3.options()).unwrap();
    let url = mosquitto.url();

    // `tillwatch ARGS` with its own data directory, on the bucket.
    let role = |args: &[&str], name: &str, more: &[(&str, &str)]| {
        let data = dir.path().join(name);
        let mut all = args.to_vec();
        all.extend(["--http-listen", "127.0.0.1:0", "--data-dir"]);
        all.push(data.to_str().unwrap());
        let mut vars: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        vars.extend_from_slice(more);
        // Each role's log in DATA.log, for what the server keeps to itself.
        RoleProcess::role_logging_to(&all, &vars, &dir.path().join(format!("{name}.log")))
    };
    let gateway = |id: &str| {
        role(
            &["gateway", "--broker", &url],
            id,
            &[
                ("TILLWATCH__MQTT__CLIENT_ID", id),
                ("TILLWATCH__MQTT__SHARED_GROUP", "tillwatch"),
                ("TILLWATCH__GATEWAY__FLUSH_MAX_ROWS", "500"),
            ],
        )
    };
    let mut a = gateway("gw-a");
    let b = gateway("gw-b");
    // The device registry the API answers from is the alerter's.
    let mut alerter = role(&["alerter", "--broker", &url], "alerter", &[]);
    a.ready().await;
    b.ready().await;
    alerter.ready().await;

    let (devices, per_device) = (60, 200);
    let fleet = SimConfig {
        broker: url.clone(),
        devices,
        merchants: 3,
        stores_per_merchant: 2,
        interval: Duration::from_secs(30),
        readings_per_device: Some(per_device),
        seed: 41,
        start_ms: Some(start_across_hour(3)),
        faults: tillwatch_sim::Faults::none(),
        connect_concurrency: 16,
        security: Default::default(),
        durability: Default::default(),
    };
    let sim = tokio::spawn(tillwatch_sim::run(fleet, watch::channel(false).1));

    // Kill one gateway mid-stream; back under its id, it rebuilds its
    // dedup index from the files its journal names, in the bucket.
    let reader = lake.clone();
    wait_for("readings in the bucket", Duration::from_secs(120), || {
        total(&stored(&reader)) >= 2_000
    })
    .await;
    b.kill();
    let mut b = gateway("gw-b");
    b.ready().await;

    let report = sim.await.unwrap().unwrap();
    assert_eq!(report.unacked_readings, 0);
    let expected = (devices * per_device as usize) as u64;
    assert_eq!(report.readings, expected);
    wait_for(
        "every reading in the bucket",
        Duration::from_secs(120),
        || total(&stored(&reader)) >= expected,
    )
    .await;
    for g in [&mut a, &mut b] {
        let status = g.terminate();
        assert!(status.success(), "graceful shutdown: {status:?}");
    }
    let keys = stored(&lake);
    let doubled: Vec<_> = keys.iter().filter(|(_, n)| **n > 1).take(5).collect();
    assert!(doubled.is_empty(), "stored twice: {doubled:?}");
    assert_eq!(keys.len() as u64, expected, "each reading once");
    assert!(lake.watermark().is_some(), "the gateways' watermarks");

    // The scheduler compacts every closed hour in the bucket and rolls it
    // up there.
    let hours: Vec<HourPartition> = lake
        .fingerprints(Table::Reading(Kind::Battery))
        .into_iter()
        .map(|(h, _)| h)
        .collect();
    assert!(hours.len() >= 3, "the readings span hours: {hours:?}");
    let now_hour = HourPartition(chrono::Utc::now().timestamp_millis() / 3_600_000);
    let closed: Vec<HourPartition> = hours.into_iter().filter(|h| *h < now_hour).collect();
    let mut scheduler = role(
        &["scheduler"],
        "scheduler",
        &[
            ("TILLWATCH__SCHEDULER__ENGINE", "embedded"),
            ("TILLWATCH__SCHEDULER__START", "1d"),
            ("TILLWATCH__SCHEDULER__TICK", "200ms"),
            ("TILLWATCH__SCHEDULER__LOCAL_DAY_UTC_OFFSETS", "[0, 0]"),
        ],
    );
    scheduler.ready().await;
    let hourly = |h: &HourPartition| {
        reader
            .root()
            .join("device_health_hourly")
            .join(h.hive_path())
            .join("part.parquet")
    };
    wait_for(
        "the closed hours compacted and rolled up",
        Duration::from_secs(300),
        || {
            closed.iter().all(|h| {
                let files = reader.hour_files(Table::Reading(Kind::Battery), *h);
                files.len() == 1
                    && files[0]
                        .file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with("compacted-"))
                    && reader.exists(&hourly(h)).unwrap_or(false)
            })
        },
    )
    .await;
    let status = scheduler.terminate();
    assert!(status.success(), "the scheduler stops cleanly: {status:?}");
    assert_eq!(stored(&lake).len() as u64, expected, "still each once");
    assert_eq!(total(&stored(&lake)), expected, "and no copies");

    // The API serves a terminal's raw and hourly series out of the bucket.
    let config = dir.path().join("api.toml");
    std::fs::write(
        &config,
        format!("[[http.tokens]]\nname = \"support\"\nrole = \"viewer\"\ntoken = \"{VIEWER}\"\n"),
    )
    .unwrap();
    let api_args = ["api", "--config", config.to_str().unwrap()];
    let mut api = role(
        &api_args,
        "api",
        &[("TILLWATCH__GRPC__LISTEN", "127.0.0.1:0")],
    );
    api.ready().await;
    let device = "term-00007";
    let battery_rows = keys.keys().filter(|(d, _, _)| d == device).count();
    let first = closed[0].0 * 3_600_000;
    let series = |from: i64, to: i64, resolution: &str| {
        let path =
            format!("/api/v1/devices/{device}/series?from={from}&to={to}&resolution={resolution}");
        let (status, body) = http_call(api.http, "GET", &path, None, Some(VIEWER)).unwrap();
        assert_eq!(status, 200, "{path}: {body}");
        serde_json::from_str::<serde_json::Value>(&body).unwrap()
    };
    wait_for(
        "the alerter to register the terminal",
        Duration::from_secs(60),
        || {
            let path = format!("/api/v1/devices/{device}");
            matches!(
                http_call(api.http, "GET", &path, None, Some(VIEWER)),
                Ok((200, _))
            )
        },
    )
    .await;
    let raw = series(first, first + 6 * 3_600_000, "raw");
    let points = raw["series"]["battery_level_pct"].as_array().unwrap().len();
    assert!(
        points > 0 && points <= battery_rows,
        "{points} raw battery points of {battery_rows} stored keys: {raw}"
    );
    let hourly = series(first, first + 24 * 3_600_000, "hour");
    let means = hourly["series"]["battery_level_pct"].as_array().unwrap();
    assert!(
        means.len() >= closed.len(),
        "an hourly mean for each rolled-up hour: {hourly}"
    );
    // An API whose bucket is not there answers a series with an error
    // naming the lake, not with a terminal that seems to have sent nothing.
    let mut lost = role(
        &api_args,
        "api-lost",
        &[
            ("TILLWATCH__GRPC__LISTEN", "127.0.0.1:0"),
            ("TILLWATCH__LAKE__PATH", "s3://no-such-bucket/fleet"),
        ],
    );
    lost.ready().await;
    // (Raw hours are listed, which a missing bucket fails; an hourly
    // output is looked up with HEAD, whose 404 cannot tell a missing bucket
    // from a missing object.)
    let path = format!(
        "/api/v1/devices/{device}/series?from={first}&to={}&resolution=raw",
        first + 6 * 3_600_000
    );
    let (status, body) = http_call(lost.http, "GET", &path, None, Some(VIEWER)).unwrap();
    assert_eq!(status, 500, "{path}: {body}");
    // The client hears that the server failed; the operator reads why.
    assert!(
        body.contains("internal error") && !body.contains("no-such-bucket"),
        "{body}"
    );
    let logged = std::fs::read_to_string(dir.path().join("api-lost.log")).unwrap();
    assert!(
        logged.contains("reading the lake") && logged.contains("no-such-bucket"),
        "{logged}"
    );
    for (name, role) in [
        ("api", &mut api),
        ("api without its bucket", &mut lost),
        ("alerter", &mut alerter),
    ] {
        let status = role.terminate();
        assert!(status.success(), "the {name} stops cleanly: {status:?}");
    }

    // Nothing wrote a lake to local disk.
    let parquet: Vec<PathBuf> = files_below(dir.path())
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "parquet"))
        .collect();
    assert!(parquet.is_empty(), "local Parquet files: {parquet:?}");
}
