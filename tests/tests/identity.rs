//! Every reading belongs to the right terminal, store and merchant, in
//! every shape the product runs in: terminals that connect while the
//! product is still starting, info that arrives after telemetry, gateways
//! that each see only part of the fleet.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use arrow::array::{Array, AsArray};
use prost::Message;
use rumqttc::QoS;
use serde_json::Value;
use tillwatch_config::{Config, RollupEngine};
use tillwatch_domain::UtcMillis;
use tillwatch_integration_tests::{
    Alertmanager, InProcess, LakeContents, Mosquitto, RoleProcess, eventually, http_call,
    test_tokens, wait_for, widen_hourly_rounds,
};
use tillwatch_meta::testing::TestDatabase;
use tillwatch_proto::telemetry::v1 as pb;
use tillwatch_rollups::embedded::Embedded;
use tillwatch_rollups::{jobs, service};
use tillwatch_scheduler::{Grain, Partition, Runner};
use tillwatch_serve::EmbeddedBroker;
use tillwatch_sim::{DevicePlan, Faults, SimConfig};
use tillwatch_storage::{Lake, read_file};
use tokio::sync::watch;

const HOUR: i64 = 3_600_000;
const VIEWER: &str = "identity-test-viewer-token";
const OPERATOR: &str = "identity-test-operator-token";

/// What the registry should say of each terminal: (merchant, store, model,
/// serial) by device id, as the simulator's info messages give them.
fn expected(sim: &SimConfig) -> BTreeMap<String, (String, String, String, String)> {
    (0..sim.devices)
        .map(|i| {
            let plan = DevicePlan::new(sim, i);
            let serial = plan.serial(sim.seed);
            (
                plan.device_id.clone(),
                (
                    plan.merchant_id.clone(),
                    plan.store_id.clone(),
                    plan.model().to_string(),
                    serial,
                ),
            )
        })
        .collect()
}

/// Every terminal as `GET /api/v1/devices` lists it: (merchant, store,
/// model, serial), absent values as "".
fn registry(http: std::net::SocketAddr) -> BTreeMap<String, (String, String, String, String)> {
    let (status, body) = http_call(
        http,
        "GET",
        "/api/v1/devices?limit=1000",
        None,
        Some(VIEWER),
    )
    .unwrap();
    assert_eq!(status, 200, "{body}");
    let page: Value = serde_json::from_str(&body).unwrap();
    let text = |v: &Value| v.as_str().unwrap_or_default().to_string();
    page["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                text(&d["device_id"]),
                (
                    text(&d["merchant_id"]),
                    text(&d["store_id"]),
                    text(&d["model"]),
                    text(&d["serial"]),
                ),
            )
        })
        .collect()
}

/// `(device, store)` of every row of the hourly rollup's `hour`, empty
/// store as "".
fn hourly_stores(lake: &Path, hour: Partition) -> Vec<(String, String)> {
    let path = Embedded::new(Lake::new(lake)).output_path(jobs::DEVICE_HEALTH_HOURLY, hour);
    let mut rows = Vec::new();
    for batch in read_file(&path).unwrap() {
        let devices = batch
            .column_by_name("device_id")
            .unwrap()
            .as_string::<i32>();
        let stores = batch.column_by_name("store_id").unwrap().as_string::<i32>();
        for i in 0..batch.num_rows() {
            let store = if stores.is_null(i) {
                ""
            } else {
                stores.value(i)
            };
            rows.push((devices.value(i).to_string(), store.to_string()));
        }
    }
    rows
}

/// 60 terminals of 4 merchants (3 stores each) from three hours ago, one
/// reading every `interval` each.
fn fleet(broker: String, interval_s: u64, readings: u64, seed: u64, start_ms: i64) -> SimConfig {
    SimConfig {
        broker,
        devices: 60,
        merchants: 4,
        stores_per_merchant: 3,
        interval: Duration::from_secs(interval_s),
        readings_per_device: Some(readings),
        seed,
        start_ms: Some(start_ms),
        faults: Faults::none(),
        connect_concurrency: 60,
        security: Default::default(),
        durability: Default::default(),
    }
}

/// Waits (a minute at most) until the registry at `http` says of every
/// terminal what its info says; then names every one that differs.
async fn assert_registry_knows(
    http: std::net::SocketAddr,
    want: &BTreeMap<String, (String, String, String, String)>,
) {
    let mut seen = BTreeMap::new();
    eventually(Duration::from_secs(60), || {
        seen = registry(http);
        seen == *want
    })
    .await;
    let wrong: Vec<_> = want
        .iter()
        .filter(|(id, w)| seen.get(*id) != Some(*w))
        .map(|(id, w)| format!("{id}: want {w:?}, registry has {:?}", seen.get(id)))
        .collect();
    assert!(
        wrong.is_empty(),
        "{} of {} terminals are not as their info says:\n{}",
        wrong.len(),
        want.len(),
        wrong.join("\n")
    );
}

/// Each closed hour from `start_ms` on (at least two), once rolled up (two
/// minutes at most): all 60 terminals have their row, each under its
/// store. Both fleets here read at least once an hour from `start_ms`, so
/// every closed hour holds a reading of every terminal. (An hour rolled up
/// before its readings arrived holds no rows until its re-run: the wait
/// must not take that output for the answer.)
async fn assert_hours_in_their_stores(
    lake: &Path,
    start_ms: i64,
    stores: &BTreeMap<String, String>,
) {
    let now = UtcMillis::now().0;
    let closed: Vec<Partition> = Partition::overlapping(Grain::Hour, start_ms, now)
        .into_iter()
        .filter(|h| h.end_ms() + 6 * 60_000 < now)
        .collect();
    assert!(closed.len() >= 2, "{closed:?}");
    for hour in closed {
        let mut rows = Vec::new();
        eventually(Duration::from_secs(120), || {
            let path = Embedded::new(Lake::new(lake)).output_path(jobs::DEVICE_HEALTH_HOURLY, hour);
            path.exists() && {
                rows = hourly_stores(lake, hour);
                rows.len() == 60 && rows.iter().all(|(d, s)| stores.get(d) == Some(s))
            }
        })
        .await;
        let wrong: Vec<_> = rows
            .iter()
            .filter(|(d, s)| stores.get(d) != Some(s))
            .collect();
        assert!(
            wrong.is_empty(),
            "hour {hour}: rows in the wrong store: {wrong:?}"
        );
        assert_eq!(
            rows.len(),
            60,
            "hour {hour}: every terminal reported, so each has its row within 2 minutes"
        );
    }
}

/// Each terminal's store by device id.
fn stores_of(
    want: &BTreeMap<String, (String, String, String, String)>,
) -> BTreeMap<String, String> {
    want.iter()
        .map(|(d, (_, store, _, _))| (d.clone(), store.clone()))
        .collect()
}

/// Terminals that connect while standalone is still starting (before its
/// gateway and alerter have subscribed) publish their retained info
/// first; every one of them must end up in the registry with its model,
/// serial and store, and every hour of their readings in the hourly
/// rollup under that store. The embedded broker used to hand a late
/// subscriber only as many retained messages as its in-flight window had
/// room for, so a third of the demo's fleet never got a store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminals_that_connect_during_start_up_are_all_known() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config {
        data_dir: dir.path().to_path_buf(),
        ..Config::default()
    };
    config.mqtt.client_id = "identity-gateway".into();
    config.http.tokens = test_tokens(VIEWER, OPERATOR);
    config.scheduler.engine = RollupEngine::Embedded;
    config.scheduler.tick = Duration::from_millis(200);
    config.scheduler.start = "1d".into();
    let broker = EmbeddedBroker::start("127.0.0.1:0".parse().unwrap(), 1000).unwrap();
    let start_ms = UtcMillis::now().0 - 3 * HOUR;
    let sim = fleet(broker.url(), 600, 18, 22, start_ms);
    let want = expected(&sim);
    // The fleet starts first: it connects as soon as the broker lets it.
    let run = tokio::spawn(tillwatch_sim::run(sim, watch::channel(false).1));
    let standalone = InProcess::start(config, Some(broker)).await;
    let report = run.await.unwrap().unwrap();
    assert_eq!(report.unacked_readings, 0);
    assert_eq!(report.readings, 60 * 18);

    assert_registry_knows(standalone.http, &want).await;
    // Each closed hour of their readings, rolled up: every terminal, each
    // under its store.
    assert_hours_in_their_stores(&dir.path().join("lake"), start_ms, &stores_of(&want)).await;
    standalone.stop().await;
}

/// A terminal of the test's own: publishes info and battery readings with
/// the times it is given.
struct Terminal {
    client: rumqttc::AsyncClient,
    task: tokio::task::JoinHandle<()>,
    merchant: String,
    device: String,
    seq: u64,
}

impl Terminal {
    fn connect(broker: &str, merchant: &str, device: &str) -> Terminal {
        let addr: std::net::SocketAddr = broker.trim_start_matches("mqtt://").parse().unwrap();
        let mut options = rumqttc::MqttOptions::new(device, addr.ip().to_string(), addr.port());
        options.set_keep_alive(Duration::from_secs(30));
        let (client, mut eventloop) = rumqttc::AsyncClient::new(options, 256);
        let task = tokio::spawn(async move {
            loop {
                if eventloop.poll().await.is_err() {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        });
        Terminal {
            client,
            task,
            merchant: merchant.into(),
            device: device.into(),
            seq: 0,
        }
    }

    fn topic(&self, channel: &str) -> String {
        format!("tw/v1/{}/{}/{channel}", self.merchant, self.device)
    }

    async fn info(&self, store: &str, at_ms: i64) {
        let payload = pb::DeviceInfo {
            device_id: self.device.clone(),
            boot_id: 1,
            model: "Countertop C2".into(),
            serial: format!("SN-{}", self.device),
            firmware_version: "5.1.0".into(),
            app_version: "2.3.0".into(),
            merchant_id: self.merchant.clone(),
            store_id: store.into(),
            time_zone: "UTC".into(),
            at_ms,
        }
        .encode_to_vec();
        self.client
            .publish(self.topic("info"), QoS::AtLeastOnce, true, payload)
            .await
            .unwrap();
    }

    /// A battery reading at each time, twenty to a message.
    async fn readings(&mut self, times: impl IntoIterator<Item = i64>) {
        let times: Vec<i64> = times.into_iter().collect();
        for chunk in times.chunks(20) {
            let readings = chunk
                .iter()
                .map(|t| {
                    self.seq += 1;
                    pb::Reading {
                        device_id: self.device.clone(),
                        boot_id: 1,
                        seq: self.seq,
                        sampled_at_ms: *t,
                        kind: Some(pb::reading::Kind::Battery(pb::Battery {
                            level_pct: 80,
                            charging: false,
                            temperature_celsius: 30.0,
                            voltage_mv: 4000,
                            health_pct: 95,
                            cycle_count: 10,
                        })),
                    }
                })
                .collect();
            self.client
                .publish(
                    self.topic("telemetry"),
                    QoS::AtLeastOnce,
                    false,
                    pb::TelemetryBatch { readings }.encode_to_vec(),
                )
                .await
                .unwrap();
        }
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Every partition the scheduler starts in one round, with why.
async fn step(runner: &Runner, lake: &Lake) -> Vec<(String, String, String)> {
    let snap = service::snapshot(runner, lake.clone(), Duration::from_secs(300)).await;
    let ran = runner
        .step(snap.watermark_ms, &|t, p| snap.fingerprint(t, p))
        .await
        .unwrap();
    for r in &ran {
        assert!(
            r.result.is_ok(),
            "{} {}: {:?}",
            r.task.job,
            r.task.partition,
            r.result
        );
    }
    ran.iter()
        .map(|r| {
            (
                r.task.job.clone(),
                r.task.partition.key(),
                r.task.reason.as_str().to_string(),
            )
        })
        .collect()
}

/// Rounds until nothing is due.
async fn settle(runner: &Runner, lake: &Lake) {
    for _ in 0..50 {
        if step(runner, lake).await.is_empty() {
            return;
        }
    }
    panic!("the scheduler kept finding work for 50 rounds");
}

/// The readings the gateway has stored of `device`.
fn stored(lake: &Path, device: &str) -> usize {
    LakeContents::read(lake)
        .readings
        .iter()
        .filter(|k| k.device_id == device)
        .count()
}

/// A terminal moved from store A to store B at 12:20 yesterday: its hours
/// before count for A and from 12:00 for B (40 of that hour's minutes were
/// in B), in the hourly and daily rollups and on both stores' pages. A
/// terminal whose readings arrive before its first info message is rolled
/// up without a store, then, on the scheduler's very next round after the
/// info reaches the registry, again under the store it names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_moved_terminal_counts_for_each_store_and_late_info_reattributes_its_hours() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config {
        data_dir: dir.path().to_path_buf(),
        ..Config::default()
    };
    config.mqtt.client_id = "identity-move-gateway".into();
    config.http.tokens = test_tokens(VIEWER, OPERATOR);
    // The test drives the scheduler round by round.
    config.scheduler.enabled = false;
    config.scheduler.engine = RollupEngine::Embedded;
    config.scheduler.start = "3d".into();
    config.scheduler.local_day_utc_offsets = [0, 0];
    // A round may start every stale hour at once.
    widen_hourly_rounds(&mut config);
    let broker = EmbeddedBroker::start("127.0.0.1:0".parse().unwrap(), 1000).unwrap();
    let url = broker.url();
    let standalone = InProcess::start(config.clone(), Some(broker)).await;
    let http = standalone.http;
    let lake_dir = dir.path().join("lake");
    let lake = Lake::new(&lake_dir);
    let store = tillwatch_meta::MetaStore::open(&config).await.unwrap();
    let (runner, _) = service::open(&config, store, service::wall_clock()).unwrap();

    // The UTC day that ended at least an hour ago (yesterday, or the day
    // before in the first hour after midnight, when yesterday's last hour
    // is still within its lateness and not rolled up yet).
    let day = Partition::containing(Grain::Day, UtcMillis::now().0 - 25 * HOUR);
    let at = |h: i64, m: i64| day.start_ms + h * HOUR + m * 60_000;
    let every_10_min = |from: i64, to: i64| (from..to).step_by(600_000);
    // The mover: in A from midnight, in B from 12:20.
    let mut mover = Terminal::connect(&url, "m-move", "t-mover");
    mover.info("s-a", at(0, 0)).await;
    mover.readings(every_10_min(at(0, 0), at(12, 20))).await;
    mover.info("s-b", at(12, 20)).await;
    mover.readings(every_10_min(at(12, 20), at(24, 0))).await;
    // A neighbour that stays in A all day.
    let mut stayer = Terminal::connect(&url, "m-move", "t-stayer");
    stayer.info("s-a", at(0, 0)).await;
    stayer.readings(every_10_min(at(0, 0), at(24, 0))).await;
    // The late one: readings first, info only later.
    let mut late = Terminal::connect(&url, "m-move", "t-late");
    late.readings(every_10_min(at(6, 0), at(9, 0))).await;
    let registry_has = |device: &'static str, store: &'static str| {
        let (status, body) = http_call(
            http,
            "GET",
            &format!("/api/v1/devices/{device}"),
            None,
            Some(VIEWER),
        )
        .unwrap();
        status == 200
            && serde_json::from_str::<Value>(&body).unwrap()["device"]["store_id"] == store
    };
    wait_for("every reading in the lake", Duration::from_secs(60), || {
        stored(&lake_dir, "t-mover") == 144
            && stored(&lake_dir, "t-stayer") == 144
            && stored(&lake_dir, "t-late") == 18
    })
    .await;
    wait_for(
        "the registry to hold the move",
        Duration::from_secs(30),
        || registry_has("t-mover", "s-b") && registry_has("t-stayer", "s-a"),
    )
    .await;
    // The alerter has taken t-late's readings too (its span of samples).
    wait_for(
        "the registry to know t-late",
        Duration::from_secs(30),
        || {
            http_call(http, "GET", "/api/v1/devices/t-late", None, Some(VIEWER))
                .is_ok_and(|(status, _)| status == 200)
        },
    )
    .await;
    settle(&runner, &lake).await;

    let store_in = |hour: Partition, device: &str| {
        hourly_stores(&lake_dir, hour)
            .into_iter()
            .find(|(d, _)| d == device)
            .map(|(_, s)| s)
    };
    let hour = |h: i64| Partition::containing(Grain::Hour, at(h, 0));
    assert_eq!(store_in(hour(0), "t-mover").as_deref(), Some("s-a"));
    assert_eq!(store_in(hour(11), "t-mover").as_deref(), Some("s-a"));
    assert_eq!(
        store_in(hour(12), "t-mover").as_deref(),
        Some("s-b"),
        "40 of 60 minutes in B"
    );
    assert_eq!(store_in(hour(23), "t-mover").as_deref(), Some("s-b"));
    assert_eq!(
        store_in(hour(7), "t-late").as_deref(),
        Some(""),
        "no info yet"
    );

    // The daily rollup: a row for each store the mover was in.
    let daily = Embedded::new(lake.clone()).output_path(jobs::DEVICE_HEALTH_DAILY, day);
    let mut rows = Vec::new();
    for batch in read_file(&daily).unwrap() {
        let devices = batch
            .column_by_name("device_id")
            .unwrap()
            .as_string::<i32>();
        let stores = batch.column_by_name("store_id").unwrap().as_string::<i32>();
        let hours = arrow::compute::cast(
            batch.column_by_name("hours_reported").unwrap(),
            &arrow::datatypes::DataType::Int64,
        )
        .unwrap();
        let hours = hours.as_primitive::<arrow::datatypes::Int64Type>();
        for i in 0..batch.num_rows() {
            let store = if stores.is_null(i) {
                ""
            } else {
                stores.value(i)
            };
            rows.push((
                devices.value(i).to_string(),
                store.to_string(),
                hours.value(i),
            ));
        }
    }
    rows.sort();
    let text = |d: &str, s: &str, h: i64| (d.to_string(), s.to_string(), h);
    assert_eq!(
        rows,
        [
            text("t-late", "", 3),
            text("t-mover", "s-a", 12),
            text("t-mover", "s-b", 12),
            text("t-stayer", "s-a", 24),
        ]
    );

    // Both stores' pages show the mover that day, each with its hours.
    let page = |store: &str| {
        let (status, body) = http_call(
            http,
            "GET",
            &format!("/api/v1/merchants/m-move/days?store={store}"),
            None,
            Some(VIEWER),
        )
        .unwrap();
        assert_eq!(status, 200, "{body}");
        let page: Value = serde_json::from_str(&body).unwrap();
        let that_day = page["days"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["day"] == day.key())
            .unwrap_or_else(|| panic!("no {} on the page: {page}", day.key()))
            .clone();
        that_day["terminals"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| {
                (
                    t["device_id"].as_str().unwrap().to_string(),
                    t["hours_reported"].as_i64().unwrap(),
                )
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(
        page("s-a"),
        [("t-mover".to_string(), 12), ("t-stayer".to_string(), 24)]
    );
    assert_eq!(page("s-b"), [("t-mover".to_string(), 12)]);

    // t-late's info arrives: the next round re-runs exactly its hours (and
    // the day after them), and they count for its store.
    late.info("s-late", at(5, 0)).await;
    wait_for(
        "the registry to hold t-late's info",
        Duration::from_secs(30),
        || registry_has("t-late", "s-late"),
    )
    .await;
    let ran = step(&runner, &lake).await;
    let hourly: Vec<&(String, String, String)> = ran
        .iter()
        .filter(|(job, _, _)| job == jobs::DEVICE_HEALTH_HOURLY)
        .collect();
    assert_eq!(
        hourly
            .iter()
            .map(|(_, p, r)| (p.clone(), r.clone()))
            .collect::<Vec<_>>(),
        (6..9)
            .map(|h| (hour(h).key(), "stale".to_string()))
            .collect::<Vec<_>>(),
        "the first round after the info re-runs t-late's hours: {ran:?}"
    );
    for h in 6..9 {
        assert_eq!(store_in(hour(h), "t-late").as_deref(), Some("s-late"));
    }
    settle(&runner, &lake).await;
    assert_eq!(page("s-late"), [("t-late".to_string(), 3)]);
    standalone.stop().await;
}

/// `tillwatch ROLE ARGS…` over the shared PostgreSQL and lake, its data
/// in `dir/ROLE`.
fn role(
    name: &str,
    args: &[&str],
    dir: &Path,
    db: &str,
    lake: &Path,
    env: &[(&str, &str)],
) -> RoleProcess {
    let mut all = vec![
        ("TILLWATCH__METADATA__URL", db),
        ("TILLWATCH__LAKE__PATH", lake.to_str().expect("UTF-8")),
        ("TILLWATCH__SCHEDULER__WATERMARK_STALL_AFTER", "20s"),
    ];
    all.extend_from_slice(env);
    RoleProcess::in_dir(name, &dir.join(name), args, &all)
}

/// `GET /api/v1/jobs` of the api role: the watermark and each gateway's
/// `(writer, watermark_ms, stalled)`.
fn watermarks(api: std::net::SocketAddr) -> (i64, Vec<(String, i64, bool)>) {
    let (status, body) = http_call(api, "GET", "/api/v1/jobs", None, Some(VIEWER)).unwrap();
    assert_eq!(status, 200, "{body}");
    let jobs: Value = serde_json::from_str(&body).unwrap();
    let writers = jobs["writers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| {
            (
                w["writer"].as_str().unwrap().to_string(),
                w["watermark_ms"].as_i64().unwrap(),
                w["stalled"].as_bool().unwrap(),
            )
        })
        .collect();
    (jobs["watermark_ms"].as_i64().unwrap_or(i64::MIN), writers)
}

/// The production shape as processes: the project's Mosquitto, three
/// gateways on one shared subscription (so each sees part of the info
/// topic, and none gets retained messages), an alerter, a scheduler and an
/// api role over one lake and one PostgreSQL. Every terminal is known with
/// its model, serial and store, and every hour (one reading per terminal
/// in it) is rolled up under the right store. Then one gateway is stopped
/// for good: its watermark holds the rollups back until
/// `scheduler.watermark_stall_after`, the stall shows on the jobs API, the
/// scheduler's metrics and at Alertmanager, and when the gateway comes
/// back it counts again and the alert resolves.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_production_shape_knows_every_terminal_and_a_stopped_gateway_stops_holding_rollups_back()
 {
    let mosquitto = Mosquitto::start();
    let alertmanager = Alertmanager::start();
    let db = TestDatabase::postgres().await;
    let dir = tempfile::tempdir().unwrap();
    let lake = dir.path().join("lake");
    let url = mosquitto.url();
    let mut gateways = RoleProcess::shared_gateways(&url, dir.path(), &lake, &[]);
    let alerter = role(
        "alerter",
        &["--broker", &url, "--alertmanager-url", &alertmanager.url()],
        dir.path(),
        &db.url,
        &lake,
        &[("TILLWATCH__ALERTING__EVALUATION_INTERVAL", "1s")],
    );
    let scheduler = role(
        "scheduler",
        &[],
        dir.path(),
        &db.url,
        &lake,
        &[
            ("TILLWATCH__SCHEDULER__ENGINE", "embedded"),
            ("TILLWATCH__SCHEDULER__START", "1d"),
            ("TILLWATCH__SCHEDULER__TICK", "200ms"),
            ("TILLWATCH__SCHEDULER__LOCAL_DAY_UTC_OFFSETS", "[0, 0]"),
        ],
    );
    let api_config = dir.path().join("api.toml");
    std::fs::write(
        &api_config,
        format!("[[http.tokens]]\nname = \"support\"\nrole = \"viewer\"\ntoken = \"{VIEWER}\"\n"),
    )
    .unwrap();
    let api = role(
        "api",
        &["--config", api_config.to_str().unwrap()],
        dir.path(),
        &db.url,
        &lake,
        &[],
    );
    for g in gateways.iter().flatten() {
        g.ready().await;
    }
    alerter.ready().await;

    // One reading per terminal per hour, for the last three hours.
    let start_ms = UtcMillis::now().0 - 3 * HOUR;
    let sim = fleet(url.clone(), 3600, 3, 31, start_ms);
    let want = expected(&sim);
    let report = tillwatch_sim::run(sim, watch::channel(false).1)
        .await
        .unwrap();
    assert_eq!(report.unacked_readings, 0);
    LakeContents::wait_for_readings(&lake, 180, Duration::from_secs(60)).await;
    assert_registry_knows(api.http, &want).await;
    assert_hours_in_their_stores(&lake, start_ms, &stores_of(&want)).await;

    // gw-c stops for good; its record stays in the lake.
    gateways[2].take().unwrap().kill();
    let (watermark, writers) = watermarks(api.http);
    let (_, stuck_at, stalled) = writers
        .iter()
        .find(|(w, _, _)| w == "gw-c")
        .cloned()
        .expect("gw-c's record");
    assert!(!stalled, "not stalled yet: {writers:?}");
    assert!(
        watermark <= stuck_at,
        "gw-c still holds the watermark: {watermark} > {stuck_at}"
    );
    wait_for("gw-c to be left out", Duration::from_secs(90), || {
        let (watermark, writers) = watermarks(api.http);
        watermark > stuck_at && writers.iter().any(|(w, _, s)| w == "gw-c" && *s)
    })
    .await;
    wait_for(
        "the scheduler's metric to count the stalled gateway",
        Duration::from_secs(30),
        || scheduler.metric("tillwatch_scheduler_ingest_writers_stalled") == Some(1.0),
    )
    .await;
    wait_for(
        "Alertmanager to hold ingest_watermark_stalled for gw-c",
        Duration::from_secs(60),
        || {
            alertmanager
                .alerts_named("ingest_watermark_stalled", "gateway", "gw-c")
                .len()
                == 1
        },
    )
    .await;
    let page = &alertmanager.alerts_named("ingest_watermark_stalled", "gateway", "gw-c")[0];
    assert!(
        page["annotations"]["summary"]
            .as_str()
            .unwrap()
            .contains("gateway gw-c has not advanced its ingest watermark since"),
        "{page}"
    );

    // It comes back under its own id: it counts again, the page resolves.
    let back = RoleProcess::shared_gateway(&url, "gw-c", dir.path(), &lake, &[]);
    back.ready().await;
    gateways[2] = Some(back);
    wait_for("gw-c to count again", Duration::from_secs(60), || {
        let (_, writers) = watermarks(api.http);
        writers.iter().any(|(w, _, s)| w == "gw-c" && !*s)
    })
    .await;
    wait_for("the page to resolve", Duration::from_secs(60), || {
        scheduler.metric("tillwatch_scheduler_ingest_writers_stalled") == Some(0.0)
            && alertmanager
                .alerts_named("ingest_watermark_stalled", "gateway", "gw-c")
                .is_empty()
    })
    .await;
    for mut g in gateways.into_iter().flatten() {
        assert!(g.terminate().success());
    }
    drop((alerter, scheduler, api));
}
