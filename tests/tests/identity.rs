//! Every reading belongs to the right terminal, store and merchant, in
//! every shape the product runs in: terminals that connect while the
//! product is still starting, info that arrives after telemetry, gateways
//! that each see only part of the fleet.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use arrow::array::{Array, AsArray};
use serde_json::Value;
use tillwatch_config::{Config, RollupEngine};
use tillwatch_domain::UtcMillis;
use tillwatch_integration_tests::{InProcess, eventually, http_call, test_tokens};
use tillwatch_rollups::embedded::Embedded;
use tillwatch_rollups::jobs;
use tillwatch_scheduler::{Grain, Partition};
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
    let sim = SimConfig {
        broker: broker.url(),
        devices: 60,
        merchants: 4,
        stores_per_merchant: 3,
        interval: Duration::from_secs(600),
        readings_per_device: Some(18),
        seed: 22,
        start_ms: Some(start_ms),
        faults: Faults::none(),
        connect_concurrency: 60,
        security: Default::default(),
    };
    let want = expected(&sim);
    let stores: BTreeMap<String, String> = want
        .iter()
        .map(|(d, (_, store, _, _))| (d.clone(), store.clone()))
        .collect();
    // The fleet starts first: it connects as soon as the broker lets it.
    let fleet = tokio::spawn(tillwatch_sim::run(sim, watch::channel(false).1));
    let standalone = InProcess::start(config, Some(broker)).await;
    let report = fleet.await.unwrap().unwrap();
    assert_eq!(report.unacked_readings, 0);
    assert_eq!(report.readings, 60 * 18);

    let http = standalone.http;
    let mut seen = BTreeMap::new();
    eventually(Duration::from_secs(60), || {
        seen = registry(http);
        seen == want
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

    // Each closed hour of their readings, rolled up: every terminal, each
    // under its store.
    let lake = dir.path().join("lake");
    let closed: Vec<Partition> =
        Partition::overlapping(Grain::Hour, start_ms, UtcMillis::now().0 - 10 * 60_000)
            .into_iter()
            .filter(|h| h.end_ms() + 6 * 60_000 < UtcMillis::now().0)
            .collect();
    assert!(closed.len() >= 2, "{closed:?}");
    for hour in closed {
        let mut rows = Vec::new();
        eventually(Duration::from_secs(120), || {
            let path =
                Embedded::new(Lake::new(&lake)).output_path(jobs::DEVICE_HEALTH_HOURLY, hour);
            path.exists() && {
                rows = hourly_stores(&lake, hour);
                rows.iter().all(|(d, s)| stores.get(d) == Some(s))
            }
        })
        .await;
        assert!(
            !rows.is_empty(),
            "hour {hour} was not rolled up within 2 minutes"
        );
        let wrong: Vec<_> = rows
            .iter()
            .filter(|(d, s)| stores.get(d) != Some(s))
            .collect();
        assert!(
            wrong.is_empty(),
            "hour {hour}: rows in the wrong store: {wrong:?}"
        );
        let full = hour.start_ms >= start_ms;
        if full {
            assert_eq!(rows.len(), 60, "hour {hour}: every terminal reported");
        }
    }
    standalone.stop().await;
}
