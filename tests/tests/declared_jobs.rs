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
use tillwatch_integration_tests::browser::{Browser, artifact_dir};
use tillwatch_integration_tests::{
    ClickHouseServer, InProcess, RoleProcess, api_call, api_get, eventually, test_tokens,
    tillwatch_bin, wait_for, widen_hourly_rounds,
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
    let config = standalone_config(dir.path(), &root, "declared-jobs-gateway", "1d");
    let embedded = EmbeddedBroker::start("127.0.0.1:0".parse().unwrap(), 1000).unwrap();
    let broker = embedded.url();
    let standalone = InProcess::start(config.clone(), Some(embedded)).await;
    let http = standalone.http;

    // 12 terminals, a reading every 5 minutes for the last four hours.
    let now = UtcMillis::now().0;
    publish(
        broker,
        12,
        2,
        Duration::from_secs(300),
        47,
        27,
        now - 4 * HOUR,
    )
    .await;

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
    // A schedule cron cannot read.
    write(
        &root,
        "payments-risk/odd_hours.toml",
        "description = \"x\"\ngrain = \"hour\"\ninputs = [\"battery\"]\nschedule = \"61 * * * *\"\n",
    );
    write(
        &root,
        "payments-risk/odd_hours.datafusion.sql",
        "SELECT count(*) AS n FROM battery\n",
    );

    // What the team's CI would run.
    let (ok, out, err) = validate(&root);
    assert!(!ok, "{out}\n{err}");
    assert!(
        err.contains("payments-risk/odd_hours.toml:4: schedule:"),
        "{err}"
    );
    assert!(
        err.contains("payments-risk/sneaky.datafusion.sql:3: reads \"battery\", which is not among its inputs"),
        "{err}"
    );
    assert!(
        err.contains("payments-risk/uses_margins.toml:3: input \"margins\" belongs to finance and is not public"),
        "{err}"
    );
    assert!(err.contains("3 problems"), "{err}");
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
    // The jobs page says what was refused, and where.
    let refused: Vec<String> = api_get(http, "/api/v1/jobs", VIEWER)["refused"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap().to_string())
        .collect();
    for needle in [
        "payments-risk/sneaky.datafusion.sql:3: reads \"battery\"",
        "payments-risk/uses_margins.toml:3: input \"margins\" belongs to finance",
        "payments-risk/odd_hours.toml:4: schedule:",
    ] {
        assert!(
            refused.iter().any(|r| r.contains(needle)),
            "{needle}: {refused:?}"
        );
    }
    assert!(
        !listed
            .iter()
            .any(|(n, _)| n == "sneaky" || n == "uses_margins" || n == "odd_hours"),
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
    assert_eq!(
        job["output_kept_ms"],
        400 * 86_400_000i64,
        "keep = \"400d\""
    );
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
    // The partition may run again meanwhile (a late file compacted into
    // one of its hours): its lineage once it has settled.
    let lineage_path = format!("/api/v1/jobs/{JOB}/partitions/{}/lineage", hours[0]);
    let mut lineage = serde_json::Value::Null;
    wait_for(
        "the first hour's lineage with its current run",
        Duration::from_secs(60),
        || {
            lineage = api_get(http, &lineage_path, VIEWER);
            lineage["status"] == "succeeded" && lineage["current_run"].is_object()
        },
    )
    .await;
    // Its run's log shows the plan its SQL ran with.
    let log = lineage["current_run"]["log"].to_string();
    assert!(
        log.contains("the plan (DataFusion, optimised)")
            && log.contains("TableScan: payment_health"),
        "{log}"
    );
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

    // The jobs page in a browser, filtered to the team: its job with its
    // description and owner, its runs, and what was refused.
    let shot = tokio::task::spawn_blocking(move || {
        let browser = Browser::start();
        browser.goto(&format!("http://{http}/ui/style.css"));
        browser.execute(
            "localStorage.setItem('tillwatch.token', arguments[0]); return true;",
            serde_json::json!([VIEWER]),
        );
        browser.goto(&format!("http://{http}/ui/jobs?owner=payments-risk"));
        browser.wait_until(
            "the team's job, its runs and the refusals on the jobs page",
            &format!(
                "const rows = [...document.querySelectorAll('#jobs tbody tr[data-job]')]; \
                 const runs = [...document.querySelectorAll('#runs tbody tr:not(.empty)')]; \
                 const refused = document.getElementById('refused'); \
                 return rows.length === 1 && rows[0].dataset.job === '{JOB}' \
                   && rows[0].querySelector('.owner').innerText === 'payments-risk' \
                   && rows[0].children[1].innerText.length > 10 \
                   && document.querySelector('#lineage .node[data-job={JOB}]:not(.other)') !== null \
                   && document.querySelector('#lineage .node[data-job=device_health_hourly].other') !== null \
                   && runs.length > 0 && runs.every(r => r.children[0].innerText === '{JOB}') \
                   && !refused.hidden && refused.innerText.includes('sneaky.datafusion.sql:3') \
                   && document.getElementById('owner-filter').owner.value === 'payments-risk';"
            ),
            Duration::from_secs(30),
        );
        browser.screenshot()
    })
    .await
    .unwrap();
    assert_eq!(&shot[..8], b"\x89PNG\r\n\x1a\n", "a PNG screenshot");
    std::fs::write(artifact_dir().join("jobs-team.png"), &shot).unwrap();

    // Paused, the team's job starts nothing, even a partition cleared to
    // run again, while finance's job cleared after it runs; resumed, it
    // catches up.
    let forced_runs = |job: &str, since: i64| -> Vec<String> {
        api_get(
            http,
            &format!("/api/v1/jobs/{job}/runs?partition={}&limit=100", hours[0]),
            VIEWER,
        )["runs"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["started_ms"].as_i64().unwrap() >= since && r["reason"] == "forced")
            .map(|r| r["status"].as_str().unwrap().to_string())
            .collect()
    };
    let post = |path: String, body: Option<&str>| {
        let (status, answer) = api_call(http, "POST", &path, body, Some(OPERATOR));
        assert!(status < 300, "POST {path}: {status} {answer}");
        answer
    };
    let paused = post(
        format!("/api/v1/jobs/{JOB}/pause"),
        Some(r#"{"reason": "the payments DB is being migrated"}"#),
    );
    assert_eq!(
        paused["paused"]["reason"], "the payments DB is being migrated",
        "{paused}"
    );
    let (status, refused) = api_call(
        http,
        "POST",
        &format!("/api/v1/jobs/{JOB}/pause"),
        Some(r#"{"reason": "bye"}"#),
        Some(VIEWER),
    );
    assert_eq!(status, 403, "a viewer cannot pause: {refused}");
    let cleared_at = UtcMillis::now().0;
    let range = format!(r#"{{"from": "{0}", "to": "{0}"}}"#, hours[0]);
    post(format!("/api/v1/jobs/{JOB}/clear"), Some(&range));
    post("/api/v1/jobs/margins/clear".into(), Some(&range));
    wait_for(
        "finance's cleared partition to run again",
        Duration::from_secs(60),
        || forced_runs("margins", cleared_at).contains(&"succeeded".to_string()),
    )
    .await;
    assert!(
        forced_runs(JOB, cleared_at).is_empty(),
        "a paused job started a run"
    );
    let listed = api_get(http, "/api/v1/jobs", VIEWER);
    let mine = listed["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["name"] == JOB)
        .unwrap();
    assert_eq!(
        mine["paused"]["by"], "ops",
        "the operator token's name: {mine}"
    );
    assert!(
        listed["due"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["job"] == JOB && t["partition"] == hours[0].key()),
        "the cleared partition waits: {listed}"
    );
    post(format!("/api/v1/jobs/{JOB}/resume"), None);
    wait_for(
        "the resumed job to run its cleared partition",
        Duration::from_secs(60),
        || forced_runs(JOB, cleared_at).contains(&"succeeded".to_string()),
    )
    .await;
    let listed = api_get(http, "/api/v1/jobs", VIEWER);
    assert!(
        listed["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .all(|j| j["paused"].is_null()),
        "{listed}"
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

/// Publishes the sim's fleet (`devices` terminals over `merchants`, two
/// stores each) into `broker`, `readings` each `interval` apart from
/// `start_ms`; every reading acked.
async fn publish(
    broker: String,
    devices: usize,
    merchants: usize,
    interval: Duration,
    readings: u64,
    seed: u64,
    start_ms: i64,
) {
    let sim = SimConfig {
        broker,
        devices,
        merchants,
        stores_per_merchant: 2,
        interval,
        readings_per_device: Some(readings),
        seed,
        start_ms: Some(start_ms),
        faults: Faults::none(),
        connect_concurrency: devices,
        security: Default::default(),
        durability: Default::default(),
    };
    let report = tillwatch_sim::run(sim, watch::channel(false).1)
        .await
        .unwrap();
    assert_eq!(report.unacked_readings, 0);
}

/// `(partition, status, reason, code)` of every run of `job`, oldest first.
fn runs_of(http: std::net::SocketAddr, job: &str) -> Vec<(String, String, String, String)> {
    let path = format!("/api/v1/jobs/{job}/runs?limit=5000");
    let (status, answer) = api_call(http, "GET", &path, None, Some(VIEWER));
    if status == 404 {
        // A job just written: the API has not loaded it yet.
        return Vec::new();
    }
    assert_eq!(status, 200, "GET {path}: {answer}");
    let mut runs: Vec<(String, String, String, String)> = answer["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["partition"].as_str().unwrap().to_string(),
                r["status"].as_str().unwrap().to_string(),
                r["reason"].as_str().unwrap().to_string(),
                r["code"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    runs.reverse();
    runs
}

/// A standalone's config for these tests: its data under `dir`, the
/// teams' jobs under `root`, the embedded engine on a fast tick, jobs from
/// `start` back, the test tokens and the whole of each closed hour rolled
/// up at once.
fn standalone_config(dir: &Path, root: &Path, client_id: &str, start: &str) -> Config {
    let mut config = Config {
        data_dir: dir.join("data"),
        ..Config::default()
    };
    config.mqtt.client_id = client_id.into();
    config.scheduler.tick = Duration::from_millis(200);
    config.scheduler.engine = RollupEngine::Embedded;
    config.scheduler.start = start.into();
    config.scheduler.jobs_dir = vec![root.to_path_buf()];
    config.scheduler.local_day_utc_offsets = [0, 1];
    config.http.tokens = test_tokens(VIEWER, OPERATOR);
    widen_hourly_rounds(&mut config);
    config
}

/// The code fingerprint of `job` as declared under `root` now.
fn code_of(root: &Path, job: &str) -> String {
    let (jobs, problems) = tillwatch_rollups::declared::load_dir(root);
    assert!(problems.is_empty(), "{problems:?}");
    jobs.iter().find(|j| j.name == job).unwrap().code()
}

/// Whether every hour in `hours` has a succeeded run of `job` with `code`.
fn all_ran_with(
    runs: &[(String, String, String, String)],
    hours: &[Partition],
    code: &str,
) -> bool {
    hours.iter().all(|h| {
        runs.iter()
            .any(|r| r.0 == h.key() && r.1 == "succeeded" && r.3 == code)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changing_a_jobs_sql_reruns_from_the_date_it_names_and_nothing_without_one() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("jobs");
    let sql_path = format!("payments-risk/{JOB}.datafusion.sql");
    // Without the list of output columns: the new versions add one.
    let declaration: String = DECLARATION
        .lines()
        .filter(|l| !l.starts_with("columns"))
        .map(|l| format!("{l}\n"))
        .collect();
    write(&root, &format!("payments-risk/{JOB}.toml"), &declaration);
    write(&root, &sql_path, SQL);
    // A job of the same team downstream of it.
    write(
        &root,
        "payments-risk/offline_risk_by_store.toml",
        "description = \"per store and hour\"\ngrain = \"hour\"\ninputs = [\"offline_risk_hourly\"]\n",
    );
    write(
        &root,
        "payments-risk/offline_risk_by_store.datafusion.sql",
        "SELECT store_id, sum(transactions) AS transactions, max(longest_queue) AS longest_queue\nFROM offline_risk_hourly\nGROUP BY store_id\n",
    );
    // And a store-local day over it: the terminals' zones reach its SQL.
    write(
        &root,
        "payments-risk/offline_risk_local_daily.toml",
        "description = \"per zone and store-local day\"\ngrain = \"day\"\nday = \"store-local\"\n\
         inputs = [\"offline_risk_hourly\"]\n",
    );
    write(
        &root,
        "payments-risk/offline_risk_local_daily.datafusion.sql",
        "SELECT z.zone, count(*) AS terminal_hours\nFROM offline_risk_hourly h\n\
         LEFT JOIN devices d ON d.device_id = h.device_id\n\
         JOIN zone_hours z ON z.zone = coalesce(d.zone, '') AND z.hour = h.hour\nGROUP BY z.zone\n",
    );
    let mut config = standalone_config(dir.path(), &root, "rerun-gateway", "2d");
    // Zones read no hours beyond the UTC day: yesterday's is complete at
    // any time of day.
    config.scheduler.local_day_utc_offsets = [0, 0];
    for job in [JOB, "offline_risk_by_store"] {
        config.scheduler.jobs.insert(
            job.into(),
            tillwatch_config::JobSettings {
                concurrency: Some(4),
                ..Default::default()
            },
        );
    }
    let embedded = EmbeddedBroker::start("127.0.0.1:0".parse().unwrap(), 1000).unwrap();
    let broker = embedded.url();
    let standalone = InProcess::start(config.clone(), Some(embedded)).await;
    let http = standalone.http;

    // 12 terminals, a reading every half hour for the last 30 hours.
    let now = UtcMillis::now().0;
    publish(
        broker,
        12,
        2,
        Duration::from_secs(1800),
        59,
        28,
        now - 30 * HOUR,
    )
    .await;

    // The hours from the day before yesterday up to two hours ago.
    let today = Partition::containing(Grain::Day, now);
    let yesterday = Partition::containing(Grain::Day, today.start_ms - HOUR);
    let closed: Vec<Partition> = Partition::range(
        Grain::Hour,
        yesterday.start_ms - 24 * HOUR,
        Partition::containing(Grain::Hour, now).start_ms - HOUR,
    );
    let (before, from): (Vec<Partition>, Vec<Partition>) =
        closed.iter().partition(|h| h.start_ms < yesterday.start_ms);
    assert_eq!(before.len(), 24);
    // In the first hours after midnight yesterday's last hours are not
    // closed yet; there is always one.
    assert!(!from.is_empty());
    let v1 = code_of(&root, JOB);
    wait_for(
        "both jobs over every closed hour",
        Duration::from_secs(300),
        || {
            all_ran_with(&runs_of(http, JOB), &closed, &v1)
                && all_ran_with(
                    &runs_of(http, "offline_risk_by_store"),
                    &closed,
                    &code_of(&root, "offline_risk_by_store"),
                )
        },
    )
    .await;

    // Yesterday in the terminals' own zone (the sim's stores are in
    // Europe/London, UTC in winter): every terminal hour counted, under
    // the zone the metadata store knows for it.
    wait_for(
        "the store-local day over yesterday",
        Duration::from_secs(300),
        || {
            runs_of(http, "offline_risk_local_daily")
                .iter()
                .any(|r| r.0 == yesterday.key() && r.1 == "succeeded")
        },
    )
    .await;
    let outputs = Embedded::new(Lake::new(config.data_dir.join("lake")));
    let mut terminal_hours = 0;
    for hour in yesterday.covering(Grain::Hour) {
        let path = outputs.output_path(JOB, hour);
        terminal_hours += read_file(&path)
            .unwrap()
            .iter()
            .map(|b| b.num_rows() as i64)
            .sum::<i64>();
    }
    assert!(terminal_hours > 0);
    let local = read_file(&outputs.output_path("offline_risk_local_daily", yesterday)).unwrap();
    let mut by_zone = BTreeMap::new();
    for batch in &local {
        let zones = batch.column_by_name("zone").unwrap().as_string::<i32>();
        let counts = batch
            .column_by_name("terminal_hours")
            .unwrap()
            .as_primitive::<Int64Type>();
        for i in 0..batch.num_rows() {
            by_zone.insert(zones.value(i).to_string(), counts.value(i));
        }
    }
    assert_eq!(
        by_zone,
        BTreeMap::from([("Europe/London".to_string(), terminal_hours)])
    );

    // A change without rerun_from: nothing already done runs again. A new
    // job written last tells when the scheduler has loaded the change.
    let v2_sql = SQL.replace(
        "    q.payment_readings\n",
        "    q.payment_readings,\n    2 AS version\n",
    );
    assert_ne!(v2_sql, SQL);
    write(&root, &sql_path, &v2_sql);
    let v2 = code_of(&root, JOB);
    assert_ne!(v1, v2);
    write(
        &root,
        "payments-risk/marker.toml",
        "description = \"loaded\"\ngrain = \"hour\"\ninputs = [\"battery\"]\n",
    );
    write(
        &root,
        "payments-risk/marker.datafusion.sql",
        "SELECT count(*) AS readings FROM battery\n",
    );
    let marker = code_of(&root, "marker");
    wait_for(
        "the scheduler to load the change",
        Duration::from_secs(300),
        || all_ran_with(&runs_of(http, "marker"), &closed, &marker),
    )
    .await;
    let runs = runs_of(http, JOB);
    assert!(
        runs.iter().all(|r| r.3 == v1),
        "a change without rerun_from re-ran nothing: {:?}",
        runs.iter().filter(|r| r.3 != v1).collect::<Vec<_>>()
    );
    for hour in &closed {
        assert_eq!(
            runs.iter().filter(|r| r.0 == hour.key()).count(),
            1,
            "{hour} ran once"
        );
    }

    // The same change with rerun_from = yesterday: exactly yesterday's and
    // today's hours run again with the new code, then what reads them.
    let v3_sql = v2_sql.replace("2 AS version", "3 AS version");
    write(&root, &sql_path, &v3_sql);
    write(
        &root,
        &format!("payments-risk/{JOB}.toml"),
        &format!("{declaration}rerun_from = \"{}\"\n", &yesterday.key()[..10]),
    );
    let v3 = code_of(&root, JOB);
    let settled = eventually(Duration::from_secs(300), || {
        all_ran_with(&runs_of(http, JOB), &from, &v3)
            && runs_of(http, "offline_risk_by_store")
                .iter()
                .filter(|r| r.2 == "stale" && r.1 == "succeeded")
                .count()
                >= from.len()
    })
    .await;
    if !settled {
        // What is missing, to tell a slow machine from a stuck scheduler.
        let runs = runs_of(http, JOB);
        let missing: Vec<_> = from
            .iter()
            .filter(|h| !all_ran_with(&runs, &[**h], &v3))
            .map(|h| {
                let mine: Vec<_> = runs.iter().filter(|r| r.0 == h.key()).collect();
                format!("{h}: {mine:?}")
            })
            .collect();
        let down: Vec<_> = runs_of(http, "offline_risk_by_store")
            .into_iter()
            .filter(|r| r.2 != "scheduled")
            .collect();
        let jobs = api_get(http, "/api/v1/jobs", VIEWER);
        panic!(
            "timed out after 300 s waiting for yesterday's and today's hours with the new code \
             {v3}:\n{} hour(s) without it:\n{}\ndownstream re-runs ({}): {down:?}\njobs: {jobs}",
            missing.len(),
            missing.join("\n"),
            down.len()
        );
    }
    let runs = runs_of(http, JOB);
    for hour in &before {
        let mine: Vec<_> = runs.iter().filter(|r| r.0 == hour.key()).collect();
        assert_eq!(mine.len(), 1, "{hour} ran once: {mine:?}");
        assert_eq!(mine[0].3, v1, "{hour} keeps the old code's output");
    }
    for hour in &from {
        let mine: Vec<_> = runs.iter().filter(|r| r.0 == hour.key()).collect();
        assert_eq!(mine.len(), 2, "{hour}: {mine:?}");
        assert_eq!(
            (mine[1].2.as_str(), mine[1].3.as_str()),
            ("stale", v3.as_str())
        );
    }
    let down = runs_of(http, "offline_risk_by_store");
    for hour in &before {
        assert_eq!(
            down.iter().filter(|r| r.0 == hour.key()).count(),
            1,
            "downstream of {hour} did not run again"
        );
    }
    for hour in &from {
        assert_eq!(
            down.iter().filter(|r| r.0 == hour.key()).count(),
            2,
            "downstream of {hour} ran again"
        );
    }
    // What the user reads: the partition's lineage names the code.
    let lineage = api_get(
        http,
        &format!("/api/v1/jobs/{JOB}/partitions/{}/lineage", from[0]),
        VIEWER,
    );
    assert_eq!(lineage["current_run"]["code"], v3.as_str(), "{lineage}");
    standalone.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_job_pages_its_owner_and_resolves_once_fixed() {
    let alertmanager = tillwatch_integration_tests::Alertmanager::start();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("jobs");
    // Plans, but cannot cast a terminal id to a number once there are rows.
    write(
        &root,
        "payments-risk/breaks.toml",
        "description = \"a job with a bug\"\ngrain = \"hour\"\ninputs = [\"battery\"]\nretries = 0\nsla = \"30m\"\n\
         notify = [\"alertmanager\"]\n",
    );
    write(
        &root,
        "payments-risk/breaks.datafusion.sql",
        "SELECT CAST(device_id AS INT) AS n FROM battery\n",
    );
    // What reads it waits on it.
    write(
        &root,
        "payments-risk/breaks_count.toml",
        "description = \"rows of breaks\"\ngrain = \"hour\"\ninputs = [\"breaks\"]\n",
    );
    write(
        &root,
        "payments-risk/breaks_count.datafusion.sql",
        "SELECT count(*) AS rows_read FROM breaks\n",
    );
    let mut config = standalone_config(dir.path(), &root, "failing-job-gateway", "1d");
    config.alerting.alertmanager_url = Some(alertmanager.url());
    let embedded = EmbeddedBroker::start("127.0.0.1:0".parse().unwrap(), 1000).unwrap();
    let broker = embedded.url();
    let standalone = InProcess::start(config.clone(), Some(embedded)).await;
    let http = standalone.http;

    let now = UtcMillis::now().0;
    publish(
        broker,
        6,
        1,
        Duration::from_secs(600),
        23,
        29,
        now - 4 * HOUR,
    )
    .await;

    // Two whole hours with readings, long enough ago to be past the SLA.
    let hour = Partition::containing(Grain::Hour, now - 2 * HOUR);
    let other = Partition::containing(Grain::Hour, now - 3 * HOUR);
    let paged_for = |rule: &str, p: Partition| -> Vec<serde_json::Value> {
        alertmanager
            .alerts_named(rule, "job", "breaks")
            .into_iter()
            .filter(|a| a["labels"]["partition"] == p.key().as_str())
            .collect()
    };
    let paged = |rule: &str| paged_for(rule, hour);
    wait_for(
        "job_failed and job_sla_missed at Alertmanager",
        Duration::from_secs(180),
        || {
            !paged("job_failed").is_empty()
                && !paged("job_sla_missed").is_empty()
                && !paged_for("job_failed", other).is_empty()
        },
    )
    .await;
    let page = &paged("job_failed")[0];
    assert_eq!(page["labels"]["owner"], "payments-risk", "{page}");
    assert_eq!(
        page["labels"]["notify"], "alertmanager",
        "the receivers it names: {page}"
    );
    let summary = page["annotations"]["summary"].as_str().unwrap();
    assert!(
        summary.contains("job breaks (owner payments-risk) failed") && summary.contains("Cast"),
        "the page says what failed: {summary}"
    );
    assert!(
        page["annotations"]["jobs_url"]
            .as_str()
            .unwrap()
            .ends_with("/ui/jobs"),
        "{page}"
    );
    let late = &paged("job_sla_missed")[0];
    assert!(
        late["annotations"]["summary"]
            .as_str()
            .unwrap()
            .contains("within 30m"),
        "{late}"
    );

    // An operator marks the other hour succeeded, saying why: its pages
    // resolve, the run history keeps who and why, the first hour still
    // pages.
    let mark = |p: Partition, token: &str, body: &str| {
        api_call(
            http,
            "POST",
            &format!("/api/v1/jobs/breaks/partitions/{p}/mark-succeeded"),
            Some(body),
            Some(token),
        )
    };
    let why = r#"{"reason": "that hour's terminals were test units"}"#;
    let (status, answer) = mark(other, VIEWER, why);
    assert_eq!(status, 403, "a viewer cannot mark: {answer}");
    let (status, answer) = mark(
        Partition::containing(Grain::Hour, UtcMillis::now().0 + HOUR),
        OPERATOR,
        why,
    );
    assert_eq!(status, 400, "{answer}");
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("has not ended yet"),
        "{answer}"
    );
    let (status, marked) = mark(other, OPERATOR, why);
    assert_eq!(status, 200, "{marked}");
    assert_eq!(marked["reason"], "marked", "{marked}");
    assert_eq!(marked["status"], "succeeded", "{marked}");
    assert_eq!(
        marked["note"], "marked succeeded by ops: that hour's terminals were test units",
        "{marked}"
    );
    assert!(
        marked["log"][0].as_str().unwrap().contains("test units"),
        "{marked}"
    );
    assert!(
        marked["log"]
            .to_string()
            .contains("it never wrote an output: one with its columns and no rows was written"),
        "the log says an empty output stands in for it: {marked}"
    );
    // What reads the marked hour runs on that empty output.
    wait_for(
        "breaks_count to run over the marked hour",
        Duration::from_secs(120),
        || {
            runs_of(http, "breaks_count")
                .iter()
                .any(|r| r.0 == other.key() && r.1 == "succeeded")
        },
    )
    .await;
    assert!(
        !runs_of(http, "breaks_count")
            .iter()
            .any(|r| r.0 == hour.key()),
        "the hour that still fails holds its reader"
    );
    wait_for(
        "the marked hour's pages to resolve",
        Duration::from_secs(120),
        || {
            paged_for("job_failed", other).is_empty()
                && paged_for("job_sla_missed", other).is_empty()
        },
    )
    .await;
    assert!(
        !paged("job_failed").is_empty(),
        "the first hour still pages"
    );
    let lineage = api_get(
        http,
        &format!("/api/v1/jobs/breaks/partitions/{other}/lineage"),
        VIEWER,
    );
    assert_eq!(lineage["status"], "succeeded", "{lineage}");

    // The team fixes the SQL: the failed hours run again and both pages
    // resolve.
    write(
        &root,
        "payments-risk/breaks.datafusion.sql",
        "SELECT device_id, count(*) AS n FROM battery GROUP BY device_id\n",
    );
    let fixed = code_of(&root, "breaks");
    // The hours that failed every retry get a new round with the new code.
    wait_for(
        "the failed hours to run again with the fix",
        Duration::from_secs(120),
        || {
            runs_of(http, "breaks").iter().any(|r| {
                r.0 == hour.key() && r.1 == "succeeded" && r.2 == "code_changed" && r.3 == fixed
            })
        },
    )
    .await;
    wait_for("both pages to resolve", Duration::from_secs(120), || {
        paged("job_failed").is_empty() && paged("job_sla_missed").is_empty()
    })
    .await;
    standalone.stop().await;
}

fn test_postgres_url() -> String {
    std::env::var("TILLWATCH_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// The `n` hours before the current one, newest first.
fn last_hours(n: i64) -> Vec<Partition> {
    let current = Partition::containing(Grain::Hour, UtcMillis::now().0);
    (1..=n)
        .map(|back| Partition::containing(Grain::Hour, current.start_ms - back * HOUR))
        .collect()
}

/// A team's refunds table `table` in the test PostgreSQL, with `5 + i`
/// refunds in the `i`-th of `hours` spread over terminals t-0 to t-2:
/// per (hour, terminal) the refunded cents and refunds, and the last id.
async fn refunds_table(
    conn: &mut sqlx::PgConnection,
    table: &str,
    hours: &[Partition],
) -> (BTreeMap<(String, String), (i64, i64)>, i32) {
    sqlx::query(&format!(
        "CREATE TABLE {table} (id int PRIMARY KEY, device_id text NOT NULL, \
         amount_cents int NOT NULL, reason text, refunded_at timestamptz NOT NULL)"
    ))
    .execute(&mut *conn)
    .await
    .unwrap();
    let mut want: BTreeMap<(String, String), (i64, i64)> = BTreeMap::new();
    let mut id = 0;
    for (i, hour) in hours.iter().enumerate() {
        for k in 0..(5 + i as i64) {
            id += 1;
            let device = format!("t-{}", k % 3);
            let amount = 100 * (k + 1) + i as i64;
            let at = hour.start_ms + k * 7 * 60_000;
            sqlx::query(&format!(
                "INSERT INTO {table} VALUES ($1, $2, $3, 'customer', to_timestamp($4::float8 / 1000))"
            ))
            .bind(id)
            .bind(&device)
            .bind(amount as i32)
            .bind(at)
            .execute(&mut *conn)
            .await
            .unwrap();
            let e = want.entry((hour.key(), device)).or_default();
            e.0 += amount;
            e.1 += 1;
        }
    }
    (want, id)
}

/// The payments-risk team's refunds jobs under `root`: the source
/// `refunds` reading `table` (URL in the file `secret`) by its cursor,
/// rechecking the last three hours every two seconds, and
/// `refunds_by_device` (DataFusion SQL) over it.
fn write_refunds_jobs(root: &Path, secret: &Path, table: &str) {
    write(
        root,
        "payments-risk/refunds.toml",
        &format!(
            "description = \"refunds from the payments database\"\ngrain = \"hour\"\npublic = true\n\n[source]\nurl_file = {:?}\nquery = \"SELECT id, device_id, amount_cents, reason, refunded_at FROM {table}\"\ncursor = \"refunded_at\"\nrecheck_within = \"3h\"\nrecheck_every = \"2s\"\n",
            secret.display().to_string()
        ),
    );
    write(
        root,
        "payments-risk/refunds_by_device.toml",
        "description = \"refunds per terminal and hour\"\ngrain = \"hour\"\ninputs = [\"refunds\"]\n",
    );
    write(
        root,
        "payments-risk/refunds_by_device.datafusion.sql",
        "SELECT device_id, sum(amount_cents) AS refunded_cents, count(*) AS refunds\nFROM refunds\nGROUP BY device_id\n",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_sources_land_by_cursor_feed_jobs_and_the_merchant_directory() {
    let url = test_postgres_url();
    // The team's own table, in the machine's PostgreSQL.
    let table = format!("refunds_{}", std::process::id());
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&url)
        .await
        .expect("the test PostgreSQL");
    let hours = last_hours(3);
    let (mut want, mut id) = refunds_table(&mut conn, &table, &hours).await;

    // The CRM's stores, in the same database.
    let shops = format!("crm_shops_{}", std::process::id());
    sqlx::raw_sql(&format!(
        "CREATE TABLE {shops} (merchant int NOT NULL, merchant_title text, code text NOT NULL, \
           label text, tz text, open_hours text);
         INSERT INTO {shops} VALUES
           (41, 'Corner Bakery', 's-1', 'Main Street', 'Europe/Berlin', 'Mon-Fri 07:00-18:00'),
           (41, 'Corner Bakery', 's-2', 'Station', 'Europe/Lisbon', '24h'),
           (42, 'Bike Shop', 's-3', 'Harbour', 'Mars/Olympus', 'Mon-Sun 10:00-18:00');"
    ))
    .execute(&mut conn)
    .await
    .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("jobs");
    // The URL is a mounted secret, never in the jobs repository.
    let secret = dir.path().join("refunds-db-url");
    std::fs::write(&secret, &url).unwrap();
    write_refunds_jobs(&root, &secret, &table);
    // The platform team's merchant directory, declared like any source.
    let directory = format!(
        "description = \"stores from the CRM\"\ngrain = \"hour\"\n\n[source]\nurl_file = {:?}\n\
         query = \"SELECT merchant AS merchant_id, merchant_title AS merchant_name, code AS store_id, \
         label AS store_name, tz AS time_zone, open_hours AS hours FROM {shops}\"\n\
         feeds = \"merchant-directory\"\n",
        secret.display().to_string()
    );
    write(&root, "platform-data/merchant_directory.toml", &directory);
    let (ok, out, err) = validate(&root);
    assert!(ok, "{out}\n{err}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("refunds ") && l.contains("postgres source")),
        "{out}"
    );
    // A second feed of the directory is refused, naming the first.
    write(&root, "store-ops/shops.toml", &directory);
    let (ok, out, err) = validate(&root);
    assert!(!ok, "{out}");
    assert!(
        err.contains("store-ops/shops.toml:4:")
            && err.contains("already fed by merchant_directory"),
        "{err}"
    );

    // A job with ClickHouse SQL only validates, and a deployment whose
    // rollups run on the embedded engine refuses it, saying why.
    write(
        &root,
        "payments-risk/refunds_in_clickhouse.toml",
        "description = \"x\"\ngrain = \"hour\"\ninputs = [\"refunds\"]\n",
    );
    write(
        &root,
        "payments-risk/refunds_in_clickhouse.clickhouse.sql",
        "SELECT count() AS n FROM {database}.refunds WHERE _partition = toDateTime({start_s})\n",
    );
    let config = standalone_config(dir.path(), &root, "source-gateway", "6h");
    let embedded = EmbeddedBroker::start("127.0.0.1:0".parse().unwrap(), 1000).unwrap();
    let standalone = InProcess::start(config.clone(), Some(embedded)).await;
    let lake = Lake::new(config.data_dir.join("lake"));
    let outputs = Embedded::new(lake);

    // Each hour's partition holds that hour's refunds, per terminal.
    let got = |hour: &Partition| -> Option<BTreeMap<(String, String), (i64, i64)>> {
        let path = outputs.output_path("refunds_by_device", *hour);
        if !path.exists() {
            return None;
        }
        let rows = by_device(&read_file(&path).ok()?, &["refunded_cents", "refunds"]);
        Some(
            rows.into_iter()
                .map(|(d, v)| ((hour.key(), d), (v[0], v[1])))
                .collect(),
        )
    };
    wait_for(
        "the downstream job over the imported hours",
        Duration::from_secs(120),
        || {
            let mut all = BTreeMap::new();
            for hour in &hours {
                match got(hour) {
                    Some(rows) => all.extend(rows),
                    None => return false,
                }
            }
            all == want
        },
    )
    .await;
    // The source's own partitions: exactly the rows of their hour, typed.
    let imported = read_file(&outputs.output_path("refunds", hours[0])).unwrap();
    let schema = imported[0].schema();
    assert_eq!(
        schema.field_with_name("amount_cents").unwrap().data_type(),
        &DataType::Int64
    );
    assert!(matches!(
        schema.field_with_name("refunded_at").unwrap().data_type(),
        DataType::Timestamp(_, _)
    ));
    assert_eq!(
        imported.iter().map(|b| b.num_rows()).sum::<usize>(),
        5,
        "{} holds its own hour's refunds only",
        hours[0]
    );
    let lineage = api_get(
        standalone.http,
        &format!(
            "/api/v1/jobs/refunds_by_device/partitions/{}/lineage",
            hours[1]
        ),
        VIEWER,
    );
    assert!(
        lineage["current_run"]["inputs"]
            .to_string()
            .contains("\"refunds\""),
        "{lineage}"
    );

    // The directory: the stores with their names, zones and hours, as the
    // API gives them (the store in an unknown zone is skipped); the second
    // feed was refused and the rest ran.
    let stores = || {
        api_get(standalone.http, "/api/v1/stores", VIEWER)["stores"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                [
                    &s["merchant_id"],
                    &s["store_id"],
                    &s["name"],
                    &s["time_zone"],
                    &s["hours"],
                ]
                .map(|v| v.as_str().unwrap_or("-").to_string())
            })
            .collect::<Vec<_>>()
    };
    let want_stores = [
        [
            "41",
            "s-1",
            "Main Street",
            "Europe/Berlin",
            "Mon-Fri 07:00-18:00",
        ],
        ["41", "s-2", "Station", "Europe/Lisbon", "24h"],
    ]
    .map(|r| r.map(String::from))
    .to_vec();
    wait_for(
        "the merchant directory's stores",
        Duration::from_secs(60),
        || stores() == want_stores,
    )
    .await;
    // The import's run says what it did and which row it skipped.
    let imports = api_get(
        standalone.http,
        "/api/v1/jobs/merchant_directory/runs?limit=20",
        VIEWER,
    );
    let log = imports["runs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["status"] == "succeeded")
        .map(|r| r["log"].to_string())
        .unwrap_or_default();
    assert!(
        log.contains("the source's query returned 3 row(s) (a snapshot)")
            && log.contains("2 store(s) of 1 merchant(s) imported, 1 row(s) skipped")
            && log.contains("skipped: store 42/s-3: time_zone"),
        "{log}"
    );
    let refunds = api_get(
        standalone.http,
        &format!("/api/v1/jobs/refunds/runs?partition={}", hours[0]),
        VIEWER,
    );
    assert!(
        refunds["runs"][0]["log"]
            .to_string()
            .contains("the source's query returned 5 row(s) with refunded_at in"),
        "{refunds}"
    );
    let merchants = api_get(standalone.http, "/api/v1/merchants", VIEWER);
    assert!(
        merchants.to_string().contains("Corner Bakery"),
        "{merchants}"
    );
    let jobs = api_get(standalone.http, "/api/v1/jobs?owner=platform-data", VIEWER);
    assert_eq!(jobs["jobs"][0]["name"], "merchant_directory", "{jobs}");
    assert!(
        jobs["refused"]
            .to_string()
            .contains("store-ops/shops.toml:4: the merchant directory is already fed"),
        "{jobs}"
    );
    assert!(
        jobs["refused"].to_string().contains(
            "payments-risk/refunds_in_clickhouse.toml: refunds_in_clickhouse has only \
             refunds_in_clickhouse.clickhouse.sql and the rollups run on the embedded engine here"
        ),
        "{jobs}"
    );

    // A refund lands late in the database, in an hour imported already:
    // the source's next look brings it in, and only that hour's
    // downstream runs again.
    let downstream_runs = |hour: &Partition| {
        runs_of(standalone.http, "refunds_by_device")
            .into_iter()
            .filter(|r| r.0 == hour.key())
            .count()
    };
    let before: Vec<usize> = hours.iter().map(downstream_runs).collect();
    id += 1;
    let late_at = hours[1].start_ms + 59 * 60_000;
    sqlx::query(&format!(
        "INSERT INTO {table} VALUES ($1, 't-9', 777, 'late', to_timestamp($2::float8 / 1000))"
    ))
    .bind(id)
    .bind(late_at)
    .execute(&mut conn)
    .await
    .unwrap();
    want.insert((hours[1].key(), "t-9".to_string()), (777, 1));
    wait_for(
        "the late refund in its hour's downstream",
        Duration::from_secs(60),
        || {
            let mut all = BTreeMap::new();
            for hour in &hours {
                all.extend(got(hour).unwrap_or_default());
            }
            all == want
        },
    )
    .await;
    let after: Vec<usize> = hours.iter().map(downstream_runs).collect();
    assert_eq!(
        (after[0], after[1] > before[1], after[2]),
        (before[0], true, before[2]),
        "runs of refunds_by_device per hour, before {before:?} and after {after:?}"
    );
    assert!(
        runs_of(standalone.http, "refunds")
            .iter()
            .any(|r| r.0 == hours[1].key() && r.2 == "recheck" && r.1 == "succeeded"),
        "the look that found it is a recheck run"
    );
    standalone.stop().await;
    for t in [&table, &shops] {
        sqlx::query(&format!("DROP TABLE {t}"))
            .execute(&mut conn)
            .await
            .unwrap();
    }
}

/// A scheduler that looks at its jobs roots only once an hour picks a new
/// job up at once on SIGHUP, as a deployment's config reload would ask.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_loads_the_declarations_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("jobs");
    std::fs::create_dir_all(&root).unwrap();
    let data = dir.path().join("data");
    let root_text = root.to_str().unwrap().to_string();
    let scheduler = RoleProcess::in_dir(
        "scheduler",
        &data,
        &[],
        &[
            ("TILLWATCH__SCHEDULER__TICK", "1h"),
            ("TILLWATCH__SCHEDULER__START", "1d"),
            ("TILLWATCH__SCHEDULER__JOBS_DIR", &root_text),
        ],
    );
    scheduler.ready().await;
    // Its first round (the lake's retention runs in it) shows it is
    // running and listening for SIGHUP.
    wait_for(
        "the scheduler's first round",
        Duration::from_secs(60),
        || {
            scheduler
                .metric_labelled("tillwatch_scheduler_runs_total", "job=\"retention\"")
                .is_some()
        },
    )
    .await;

    write(
        &root,
        "ops/heartbeat.toml",
        "description = \"one row an hour\"\ngrain = \"hour\"\n",
    );
    write(
        &root,
        "ops/heartbeat.datafusion.sql",
        "SELECT to_timestamp_millis({start_ms}) AS hour\n",
    );
    scheduler.signal(libc::SIGHUP);
    let config = Config {
        data_dir: data.clone(),
        ..Config::default()
    };
    let store = tillwatch_meta::MetaStore::open(&config).await.unwrap();
    // The hour that ended last is among what it ran.
    let last = Partition::containing(Grain::Hour, UtcMillis::now().0 - HOUR).key();
    let until = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let runs = store.job_runs(Some("heartbeat"), None, 100).await.unwrap();
        if runs
            .iter()
            .any(|r| r.status == "succeeded" && r.partition_key == last)
        {
            break;
        }
        assert!(
            std::time::Instant::now() < until,
            "60 s after SIGHUP, heartbeat {last} has not run: {runs:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `job`'s lake file for `hour` (waited for), of three columns (text,
/// integer, timestamp): each column's name and type, and its rows sorted,
/// the time in milliseconds.
async fn text_number_time_rows(
    outputs: &Embedded,
    job: &str,
    hour: Partition,
) -> (Vec<String>, Vec<(String, i64, i64)>) {
    let path = outputs.output_path(job, hour);
    wait_for(
        &format!("{job} {hour} in the lake"),
        Duration::from_secs(60),
        || path.exists(),
    )
    .await;
    let batches = read_file(&path).unwrap();
    let types = batches[0]
        .schema()
        .fields()
        .iter()
        .map(|f| format!("{} {}", f.name(), f.data_type()))
        .collect();
    let mut rows = Vec::new();
    for b in &batches {
        let at = arrow::compute::cast(b.column(2), &DataType::Int64).unwrap();
        for r in 0..b.num_rows() {
            rows.push((
                b.column(0).as_string::<i32>().value(r).to_string(),
                b.column(1).as_primitive::<Int64Type>().value(r),
                at.as_primitive::<Int64Type>().value(r),
            ));
        }
    }
    rows.sort();
    (types, rows)
}

/// A deployment whose rollups run on ClickHouse (Debian's 18.16 here): a
/// team's PostgreSQL source lands in its own ClickHouse table beside the
/// lake, and the team's job reading it, with SQL for both engines, runs
/// inside ClickHouse through the scheduler: the same values in the lake's
/// file and in its ClickHouse table, the runs say where they ran, and a
/// refund that lands late replaces its hour in both tables, never doubles
/// it. The teams' statements hold a `?` in a literal, which is text.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_clickhouse_a_source_and_the_job_reading_it_run_in_the_server() {
    let url = test_postgres_url();
    let table = format!("refunds_ch_{}", std::process::id());
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&url)
        .await
        .expect("the test PostgreSQL");
    let hours = last_hours(3);
    let (mut want, id) = refunds_table(&mut conn, &table, &hours).await;
    // Another team's data in a ClickHouse of its own (here a database of
    // the same server): tips per terminal, three in each hour.
    let ch = ClickHouseServer::start();
    ch.q("CREATE DATABASE shop");
    ch.q(
        "CREATE TABLE shop.tips (device_id String, tip_cents UInt32, tipped_at DateTime) \
         ENGINE = MergeTree ORDER BY tipped_at",
    );
    let mut tips_want: BTreeMap<String, Vec<(String, i64, i64)>> = BTreeMap::new();
    for (i, hour) in hours.iter().enumerate() {
        for k in 0..3i64 {
            let (device, cents, at_s) = (
                format!("t-{k}"),
                50 * (k + 1) + i as i64,
                hour.start_ms / 1000 + 600 * (k + 1),
            );
            ch.q(&format!(
                "INSERT INTO shop.tips VALUES ('{device}', {cents}, {at_s})"
            ));
            tips_want
                .entry(hour.key())
                .or_default()
                .push((device, cents, at_s * 1000));
        }
    }

    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("jobs");
    let secret = dir.path().join("refunds-db-url");
    std::fs::write(&secret, &url).unwrap();
    let tips_secret = dir.path().join("tips-db-url");
    std::fs::write(
        &tips_secret,
        ch.url().replace("http://", "http://default@") + "/shop",
    )
    .unwrap();
    write(
        &root,
        "front-of-house/tips.toml",
        &format!(
            "description = \"tips from the tills' ClickHouse\"\ngrain = \"hour\"\n\n[source]\nurl_file = {:?}\nquery = \"SELECT device_id, tip_cents, tipped_at FROM tips WHERE device_id != '?'\"\ncursor = \"tipped_at\"\n",
            tips_secret.display().to_string()
        ),
    );
    write_refunds_jobs(&root, &secret, &table);
    write(
        &root,
        "payments-risk/refunds_by_device.clickhouse.sql",
        "SELECT device_id, sum(amount_cents) AS refunded_cents, count() AS refunds\n\
         FROM {database}.refunds\nWHERE _partition = toDateTime({start_s}) AND reason != '?'\n\
         GROUP BY device_id\n",
    );
    // A job with ClickHouse SQL only: its columns are the server's.
    write(
        &root,
        "payments-risk/largest_refunds.toml",
        "description = \"each terminal's largest refund and its last, per hour\"\ngrain = \"hour\"\ninputs = [\"refunds\"]\n",
    );
    write(
        &root,
        "payments-risk/largest_refunds.clickhouse.sql",
        "SELECT device_id, max(amount_cents) AS largest_cents, max(refunded_at) AS last_refund_at\n\
         FROM {database}.refunds\nWHERE _partition = toDateTime({start_s})\nGROUP BY device_id\n",
    );
    // With the database reachable, validation plans the reader against
    // the source's columns: a column the query does not give is caught.
    write(
        &root,
        "payments-risk/refund_reasons.toml",
        "description = \"x\"\ngrain = \"hour\"\ninputs = [\"refunds\"]\n",
    );
    write(
        &root,
        "payments-risk/refund_reasons.datafusion.sql",
        "SELECT device_id,\n  count(DISTINCT refund_reason) AS reasons\nFROM refunds\nGROUP BY device_id\n",
    );
    let (ok, out, err) = validate(&root);
    assert!(!ok, "{out}");
    assert!(
        err.contains("payments-risk/refund_reasons.datafusion.sql:2:")
            && err.contains("refund_reason"),
        "{err}"
    );
    std::fs::remove_file(root.join("payments-risk/refund_reasons.toml")).unwrap();
    std::fs::remove_file(root.join("payments-risk/refund_reasons.datafusion.sql")).unwrap();
    let (ok, out, err) = validate(&root);
    assert!(ok, "{out}\n{err}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("largest_refunds ") && l.contains(" clickhouse ")),
        "{out}"
    );
    assert!(
        out.lines()
            .any(|l| l.starts_with("tips ") && l.contains("clickhouse source")),
        "{out}"
    );

    let mut config = standalone_config(dir.path(), &root, "ch-source-gateway", "4h");
    config.scheduler.engine = RollupEngine::Clickhouse;
    config.clickhouse.url = Some(ch.url());
    config.clickhouse.database = "teams".into();
    let embedded = EmbeddedBroker::start("127.0.0.1:0".parse().unwrap(), 1000).unwrap();
    let standalone = InProcess::start(config.clone(), Some(embedded)).await;
    let outputs = Embedded::new(Lake::new(config.data_dir.join("lake")));

    // Per (hour, terminal): (refunded cents, refunds) in the lake's files
    // and in ClickHouse's table.
    let in_lake = || {
        let mut all = BTreeMap::new();
        for hour in &hours {
            let path = outputs.output_path("refunds_by_device", *hour);
            let batches = path.exists().then(|| read_file(&path).ok()).flatten()?;
            let rows = by_device(&batches, &["refunded_cents", "refunds"]);
            all.extend(
                rows.into_iter()
                    .map(|(d, v)| ((hour.key(), d), (v[0], v[1]))),
            );
        }
        Some(all)
    };
    let in_clickhouse = || {
        let mut all = BTreeMap::new();
        let text = ch
            .query(
                "SELECT toUInt32(_partition), device_id, refunded_cents, refunds \
                 FROM teams.refunds_by_device FORMAT TSV",
            )
            .unwrap_or_default();
        for line in text.lines() {
            let f: Vec<&str> = line.split('\t').collect();
            let hour = Partition::containing(Grain::Hour, f[0].parse::<i64>().unwrap() * 1000);
            all.insert(
                (hour.key(), f[1].to_string()),
                (f[2].parse::<i64>().unwrap(), f[3].parse::<i64>().unwrap()),
            );
        }
        all
    };
    // (A run writes the lake's file, then swaps its ClickHouse partition.)
    wait_for(
        "the reader's hours in the lake and in its ClickHouse table",
        Duration::from_secs(120),
        || in_lake().as_ref() == Some(&want) && in_clickhouse() == want,
    )
    .await;
    // The source's rows in its table, each hour in its partition.
    for (i, hour) in hours.iter().enumerate() {
        assert_eq!(
            ch.scalar(&format!(
                "SELECT count() FROM teams.refunds WHERE _partition = toDateTime({})",
                hour.start_ms / 1000
            )),
            5 + i as u64,
            "refunds of {hour} in ClickHouse"
        );
    }
    // Where each ran, as the runs say.
    let log_of = |job: &str, hour: &Partition| {
        api_get(
            standalone.http,
            &format!("/api/v1/jobs/{job}/runs?partition={hour}"),
            VIEWER,
        )["runs"][0]["log"]
            .to_string()
    };
    // (A run is recorded, with its log, once it is over.)
    let log_says = |job: &str, hour: &Partition, text: &str| {
        let log = log_of(job, hour);
        (log.contains(text), log)
    };
    let said = |job: &'static str, text: &'static str| {
        let hour = hours[0];
        let log_says = &log_says;
        async move {
            let ok = eventually(Duration::from_secs(30), || log_says(job, &hour, text).0).await;
            assert!(ok, "{job} {hour}: {}", log_says(job, &hour, text).1);
        }
    };
    said(
        "refunds",
        "landed in ClickHouse: 5 row(s) in `teams`.`refunds` partition",
    )
    .await;
    said(
        "refunds_by_device",
        "ran on ClickHouse: 3 row(s) into `teams`.`refunds_by_device`",
    )
    .await;

    // The ClickHouse-only job's lake files: the server's columns as typed
    // columns, each terminal's largest refund and last refund time as
    // PostgreSQL computes them.
    for hour in &hours {
        let mut from_postgres: Vec<(String, i64, i64)> = sqlx::query_as(&format!(
            "SELECT device_id, max(amount_cents)::int8, \
             (extract(epoch from max(refunded_at)) * 1000)::int8 FROM {table} \
             WHERE refunded_at >= to_timestamp($1::float8 / 1000) \
               AND refunded_at < to_timestamp($2::float8 / 1000) GROUP BY device_id"
        ))
        .bind(hour.start_ms)
        .bind(hour.end_ms())
        .fetch_all(&mut conn)
        .await
        .unwrap();
        from_postgres.sort();
        let (types, in_file) = text_number_time_rows(&outputs, "largest_refunds", *hour).await;
        assert_eq!(
            types,
            [
                "device_id Utf8",
                "largest_cents Int64",
                "last_refund_at Timestamp(ms, \"UTC\")"
            ],
            "{hour}"
        );
        assert_eq!(in_file, from_postgres, "largest_refunds {hour}");
    }
    said("largest_refunds", "ran on ClickHouse: 3 row(s)").await;

    // The ClickHouse source: each hour's tips in the lake, typed as a
    // PostgreSQL source's columns are, and in the deployment's ClickHouse.
    for hour in &hours {
        let (types, in_file) = text_number_time_rows(&outputs, "tips", *hour).await;
        assert_eq!(
            types,
            [
                "device_id Utf8",
                "tip_cents Int64",
                "tipped_at Timestamp(ms, \"UTC\")"
            ]
        );
        assert_eq!(in_file, tips_want[&hour.key()], "tips {hour}");
        // (The lake's file is written first, then the ClickHouse partition.)
        let cents: u64 = tips_want[&hour.key()].iter().map(|t| t.1 as u64).sum();
        wait_for(
            "the tips of the hour in the deployment's ClickHouse",
            Duration::from_secs(30),
            || {
                ch.scalar(&format!(
                    "SELECT sum(tip_cents) FROM teams.tips WHERE _partition = toDateTime({})",
                    hour.start_ms / 1000
                )) == cents
            },
        )
        .await;
    }

    // A refund lands late in an imported hour: the recheck replaces the
    // hour in the source's table, and the reader's hour follows, in the
    // lake and in ClickHouse, with nothing doubled.
    sqlx::query(&format!(
        "INSERT INTO {table} VALUES ($1, 't-9', 777, 'late', to_timestamp($2::float8 / 1000))"
    ))
    .bind(id + 1)
    .bind(hours[1].start_ms + 59 * 60_000)
    .execute(&mut conn)
    .await
    .unwrap();
    want.insert((hours[1].key(), "t-9".to_string()), (777, 1));
    wait_for(
        "the late refund in the reader's hour, in the lake and ClickHouse",
        Duration::from_secs(60),
        || in_lake().as_ref() == Some(&want) && in_clickhouse() == want,
    )
    .await;
    assert_eq!(
        ch.scalar("SELECT count() FROM teams.refunds"),
        (5 + 6 + 7 + 1) as u64,
        "every refund once in the source's ClickHouse table"
    );

    // An hour imported before the deployment ran on ClickHouse is in the
    // lake only (here: its partitions dropped from the source's and the
    // readers' tables). Both readers' hour run again (at once): the
    // source's hour is there once (filled from the lake by the first
    // reader, or landed again by the source's own recheck if that came
    // first; rollups.rs tests the fill alone), and each gives the same
    // values, not an empty hour.
    let first_s = hours[0].start_ms / 1000;
    let largest_of_first = || {
        ch.scalar(&format!(
            "SELECT count() FROM teams.largest_refunds WHERE _partition = toDateTime({first_s})"
        ))
    };
    let devices_of_first = largest_of_first();
    assert!(devices_of_first > 0);
    for t in ["refunds", "refunds_by_device", "largest_refunds"] {
        ch.q(&format!("ALTER TABLE teams.{t} DROP PARTITION {first_s}"));
    }
    assert_ne!(in_clickhouse(), want);
    for reader in ["refunds_by_device", "largest_refunds"] {
        let (status, answer) = api_call(
            standalone.http,
            "POST",
            &format!("/api/v1/jobs/{reader}/clear"),
            Some(&format!(r#"{{"from": "{0}", "to": "{0}"}}"#, hours[0])),
            Some(OPERATOR),
        );
        assert!(status < 300, "{status} {answer}");
    }
    let again = eventually(Duration::from_secs(60), || {
        in_clickhouse() == want && largest_of_first() == devices_of_first
    })
    .await;
    assert!(
        again,
        "the readers' hour again, from the source's hour filled from the lake: \
         {:?} (want {want:?}), {} of {devices_of_first} terminals' largest refunds; \
         the source's hour has {} rows; logs:\n{}\n{}",
        in_clickhouse(),
        largest_of_first(),
        ch.scalar(&format!(
            "SELECT count() FROM teams.refunds WHERE _partition = toDateTime({first_s})"
        )),
        log_of("refunds_by_device", &hours[0]),
        log_of("largest_refunds", &hours[0]),
    );
    assert_eq!(
        ch.scalar(&format!(
            "SELECT count() FROM teams.refunds WHERE _partition = toDateTime({first_s})"
        )),
        5,
        "the source's hour once"
    );
    standalone.stop().await;
    sqlx::query(&format!("DROP TABLE {table}"))
        .execute(&mut conn)
        .await
        .unwrap();
}
