//! A data team's own job, as they would add it: a folder dropped into the
//! jobs directory of a running standalone. The scheduler validates it,
//! runs it over the hours already there, the API lists it with its owner
//! and lineage, and its output holds what the test computes from the raw
//! readings and the hourly rollup. Broken declarations beside it (a table
//! it does not declare, another team's private job) are refused with
//! their file and line, by `tillwatch jobs validate` and by the scheduler,
//! and do not stop it. Removing the folder removes the job.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use arrow::array::{Array, AsArray};
use arrow::datatypes::{DataType, Int64Type};
use tillwatch_config::{Config, RollupEngine};
use tillwatch_domain::{HourPartition, Kind, UtcMillis};
use tillwatch_integration_tests::{
    InProcess, api_get, test_tokens, tillwatch_bin, wait_for, widen_hourly_rounds,
};
use tillwatch_rollups::embedded::Embedded;
use tillwatch_rollups::jobs;
use tillwatch_scheduler::{Grain, Partition};
use tillwatch_serve::EmbeddedBroker;
use tillwatch_sim::{Faults, SimConfig};
use tillwatch_storage::{Lake, Table, read_file};
use tokio::sync::watch;

const HOUR: i64 = 3_600_000;
const VIEWER: &str = "declared-jobs-viewer-token";
const OPERATOR: &str = "declared-jobs-operator-token";
const JOB: &str = "offline_risk_hourly";

/// The example job the product ships (`deploy/jobs/`), as the README shows it.
const DECLARATION: &str = include_str!("../../deploy/jobs/payments-risk/offline_risk_hourly.toml");
const SQL: &str =
    include_str!("../../deploy/jobs/payments-risk/offline_risk_hourly.datafusion.sql");

/// Each row's `device_id` → the named columns, as integers.
fn by_device(
    batches: &[arrow::record_batch::RecordBatch],
    columns: &[&str],
) -> BTreeMap<String, Vec<i64>> {
    let mut out = BTreeMap::new();
    for b in batches {
        let ids =
            arrow::compute::cast(b.column_by_name("device_id").unwrap(), &DataType::Utf8).unwrap();
        let ids = ids.as_string::<i32>();
        let values: Vec<_> = columns
            .iter()
            .map(|c| arrow::compute::cast(b.column_by_name(c).unwrap(), &DataType::Int64).unwrap())
            .collect();
        for row in 0..b.num_rows() {
            let row_values = values
                .iter()
                .map(|v| {
                    let v = v.as_primitive::<Int64Type>();
                    if v.is_null(row) { -1 } else { v.value(row) }
                })
                .collect();
            out.insert(ids.value(row).to_string(), row_values);
        }
    }
    out
}

/// What the job should hold for `hour`, computed here: per terminal in the
/// hourly rollup with payment readings, its transactions, the longest
/// queue and the readings.
fn expected(lake: &Lake, outputs: &Embedded, hour: Partition) -> BTreeMap<String, Vec<i64>> {
    let table = Table::Reading(Kind::PaymentHealth);
    let mut queues: BTreeMap<String, (i64, i64)> = BTreeMap::new();
    for file in lake.hour_files(table, HourPartition(hour.start_ms / HOUR)) {
        for b in read_file(&file).unwrap() {
            let ids = b
                .column_by_name("device_id")
                .unwrap()
                .as_string::<i32>()
                .clone();
            let q = arrow::compute::cast(
                b.column_by_name("offline_queue_len").unwrap(),
                &DataType::Int64,
            )
            .unwrap();
            let q = q.as_primitive::<Int64Type>();
            for row in 0..b.num_rows() {
                let e = queues.entry(ids.value(row).to_string()).or_insert((0, 0));
                e.0 = e.0.max(q.value(row));
                e.1 += 1;
            }
        }
    }
    let hourly = read_file(&outputs.output_path(jobs::DEVICE_HEALTH_HOURLY, hour)).unwrap();
    by_device(&hourly, &["transactions"])
        .into_iter()
        .filter_map(|(device, v)| {
            let (longest, readings) = queues.get(&device)?;
            Some((device, vec![v[0], *longest, *readings]))
        })
        .collect()
}

fn write(root: &Path, rel: &str, text: &str) {
    let path = root.join(rel);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

fn validate(root: &Path) -> (bool, String, String) {
    let out = Command::new(tillwatch_bin())
        .args(["jobs", "validate"])
        .arg(root)
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

fn listed_jobs(http: std::net::SocketAddr) -> Vec<(String, String)> {
    api_get(http, "/api/v1/jobs", VIEWER)["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| {
            (
                j["name"].as_str().unwrap().to_string(),
                j["owner"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_team_drops_a_job_folder_into_a_running_standalone() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("jobs");
    std::fs::create_dir_all(&root).unwrap();
    let mut config = Config {
        data_dir: dir.path().join("data"),
        ..Config::default()
    };
    config.mqtt.client_id = "declared-jobs-gateway".into();
    config.scheduler.tick = Duration::from_millis(200);
    config.scheduler.engine = RollupEngine::Embedded;
    config.scheduler.start = "1d".into();
    config.scheduler.jobs_dir = vec![root.clone()];
    config.scheduler.local_day_utc_offsets = [0, 1];
    config.http.tokens = test_tokens(VIEWER, OPERATOR);
    widen_hourly_rounds(&mut config);
    let embedded = EmbeddedBroker::start("127.0.0.1:0".parse().unwrap(), 1000).unwrap();
    let broker = embedded.url();
    let standalone = InProcess::start(config.clone(), Some(embedded)).await;
    let http = standalone.http;

    // 12 terminals, a reading every 5 minutes for the last four hours.
    let now = UtcMillis::now().0;
    let sim = SimConfig {
        broker,
        devices: 12,
        merchants: 2,
        stores_per_merchant: 2,
        interval: Duration::from_secs(300),
        readings_per_device: Some(47),
        seed: 27,
        start_ms: Some(now - 4 * HOUR),
        faults: Faults::none(),
        connect_concurrency: 12,
        security: Default::default(),
        durability: Default::default(),
    };
    let report = tillwatch_sim::run(sim, watch::channel(false).1)
        .await
        .unwrap();
    assert_eq!(report.unacked_readings, 0);

    let lake = Lake::new(config.data_dir.join("lake"));
    let outputs = Embedded::new(lake.clone());
    let current = Partition::containing(Grain::Hour, now);
    let hours: Vec<Partition> = (2..=3)
        .map(|back| Partition::containing(Grain::Hour, current.start_ms - back * HOUR))
        .collect();
    wait_for(
        "the hourly rollups of two closed hours",
        Duration::from_secs(180),
        || {
            hours
                .iter()
                .all(|h| outputs.output_path(jobs::DEVICE_HEALTH_HOURLY, *h).exists())
        },
    )
    .await;
    assert_eq!(
        listed_jobs(http).len(),
        5,
        "the built-in jobs and retention before any team's"
    );

    // The team's folder, with two broken declarations beside it.
    write(&root, &format!("payments-risk/{JOB}.toml"), DECLARATION);
    write(&root, &format!("payments-risk/{JOB}.datafusion.sql"), SQL);
    write(
        &root,
        "payments-risk/sneaky.toml",
        "description = \"reads more than it says\"\ngrain = \"hour\"\ninputs = [\"payment_health\"]\n",
    );
    write(
        &root,
        "payments-risk/sneaky.datafusion.sql",
        "SELECT device_id FROM payment_health\nUNION ALL\nSELECT device_id FROM battery\n",
    );
    write(
        &root,
        "finance/margins.toml",
        "description = \"finance's own\"\ngrain = \"hour\"\ninputs = [\"battery\"]\n",
    );
    write(
        &root,
        "finance/margins.datafusion.sql",
        "SELECT device_id, min(level_pct) AS lowest FROM battery GROUP BY device_id\n",
    );
    write(
        &root,
        "payments-risk/uses_margins.toml",
        "description = \"reads finance's private job\"\ngrain = \"hour\"\ninputs = [\"margins\"]\n",
    );
    write(
        &root,
        "payments-risk/uses_margins.datafusion.sql",
        "SELECT device_id FROM margins\n",
    );

    // What the team's CI would run.
    let (ok, out, err) = validate(&root);
    assert!(!ok, "{out}\n{err}");
    assert!(
        err.contains("payments-risk/sneaky.datafusion.sql:3: reads \"battery\", which is not among its inputs"),
        "{err}"
    );
    assert!(
        err.contains("payments-risk/uses_margins.toml:3: input \"margins\" belongs to finance and is not public"),
        "{err}"
    );
    assert!(err.contains("2 problems"), "{err}");
    assert!(
        out.lines()
            .any(|l| l.starts_with(JOB) && l.contains("payments-risk") && l.contains("embedded")),
        "{out}"
    );

    // The running scheduler takes the good ones and refuses the rest.
    wait_for(
        "the team's job on the jobs page",
        Duration::from_secs(60),
        || listed_jobs(http).contains(&(JOB.to_string(), "payments-risk".to_string())),
    )
    .await;
    let listed = listed_jobs(http);
    assert!(listed.contains(&("margins".to_string(), "finance".to_string())));
    assert!(
        !listed
            .iter()
            .any(|(n, _)| n == "sneaky" || n == "uses_margins"),
        "{listed:?}"
    );
    let job = api_get(http, "/api/v1/jobs", VIEWER)["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["name"] == JOB)
        .cloned()
        .unwrap();
    assert_eq!(job["grain"], "hour");
    assert_eq!(job["retries"], 2);
    let theirs = api_get(http, "/api/v1/jobs?owner=payments-risk", VIEWER);
    let theirs: Vec<&str> = theirs["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["name"].as_str().unwrap())
        .collect();
    assert_eq!(theirs, [JOB], "the team's jobs alone");

    // It runs over the hours already there, and holds what the raw
    // readings and the hourly rollup say.
    for hour in &hours {
        let path = outputs.output_path(JOB, *hour);
        wait_for(
            &format!("{JOB} {hour} to match the readings"),
            Duration::from_secs(120),
            || {
                path.exists()
                    && std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        let got = by_device(
                            &read_file(&path).unwrap(),
                            &["transactions", "longest_queue", "payment_readings"],
                        );
                        (got, expected(&lake, &outputs, *hour))
                    }))
                    .is_ok_and(|(got, want)| !want.is_empty() && got == want)
            },
        )
        .await;
    }
    let lineage = api_get(
        http,
        &format!("/api/v1/jobs/{JOB}/partitions/{}/lineage", hours[0]),
        VIEWER,
    );
    assert_eq!(lineage["status"], "succeeded", "{lineage}");
    let inputs = lineage["current_run"]["inputs"].to_string();
    assert!(
        inputs.contains("payment_health") && inputs.contains(jobs::DEVICE_HEALTH_HOURLY),
        "{inputs}"
    );
    let upstream = api_get(
        http,
        &format!(
            "/api/v1/jobs/{}/partitions/{}/lineage",
            jobs::DEVICE_HEALTH_HOURLY,
            hours[0]
        ),
        VIEWER,
    );
    assert!(
        upstream["downstream"].to_string().contains(JOB),
        "the hourly rollup's lineage shows the team's job downstream: {upstream}"
    );

    // Taking the folder away takes the job away; the others run on.
    std::fs::remove_dir_all(root.join("payments-risk")).unwrap();
    wait_for(
        "the team's job to leave the jobs page",
        Duration::from_secs(60),
        || !listed_jobs(http).iter().any(|(n, _)| n == JOB),
    )
    .await;
    standalone.stop().await;
}

/// What a team's CI runs: the shipped example root and the built-in jobs
/// validate.
#[test]
fn the_shipped_jobs_validate() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/jobs");
    let (ok, out, err) = validate(&root);
    assert!(ok, "{out}\n{err}");
    for job in [JOB, jobs::DEVICE_HEALTH_HOURLY, jobs::FLEET_HEALTH_DAILY] {
        assert!(out.lines().any(|l| l.starts_with(job)), "{job}: {out}");
    }
    assert!(out.contains("5 jobs, no problems"), "{out}");
}
