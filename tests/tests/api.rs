//! The HTTP API as a tool or a browser meets it, served in-process on port
//! 0 over a SQLite metadata store with a small fleet in it: tokens and
//! roles (401 without or with an unknown token, 403 for a viewer asking
//! for a change), every fleet endpoint with good and bad input, and the
//! jobs API behind the same tokens.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use serde_json::Value;
use tillwatch_config::{ApiToken, Config, Role, RollupEngine};
use tillwatch_domain::connectivity::{ConnState, ConnectivitySnapshot, OfflineReason, Transition};
use tillwatch_domain::{
    Battery, BootId, DeviceId, DeviceInfo, MerchantId, Reading, Signal, StoreId, UtcMillis,
};
use tillwatch_integration_tests::{http_call, http_get};
use tillwatch_meta::{AlertRecord, AlertState, MerchantRecord, MetaStore, StoreRecord};
use tokio::net::TcpListener;
use tokio::sync::watch;

const VIEWER: &str = "api-test-viewer-token-0001";
const OPERATOR: &str = "api-test-operator-token-0001";
const T0: i64 = 1_795_132_800_000;

fn tokens() -> Vec<ApiToken> {
    vec![
        ApiToken {
            name: "support".into(),
            role: Role::Viewer,
            token: Some(VIEWER.into()),
            token_file: None,
        },
        ApiToken {
            name: "ops".into(),
            role: Role::Operator,
            token: Some(OPERATOR.into()),
            token_file: None,
        },
    ]
}

fn info(device: &str, merchant: &str, store: &str) -> DeviceInfo {
    DeviceInfo {
        device_id: DeviceId::new(device).unwrap(),
        boot_id: BootId(1),
        model: "A920".into(),
        serial: format!("SN-{device}"),
        firmware_version: "2.1".into(),
        app_version: "4.2".into(),
        merchant_id: MerchantId::new(merchant).unwrap(),
        store_id: Some(StoreId::new(store).unwrap()),
        time_zone: "Europe/Berlin".into(),
        at: UtcMillis(T0),
    }
}

/// Three terminals of two merchants; t-2 is offline by its last will with
/// a firing alert, and reported a battery reading.
async fn seed(store: &MetaStore) {
    store.migrate().await.unwrap();
    for (d, m, s) in [
        ("t-1", "m-1", "s-1"),
        ("t-2", "m-1", "s-2"),
        ("t-3", "m-2", "s-1"),
    ] {
        store.record_info(&info(d, m, s)).await.unwrap();
    }
    store
        .import_directory(
            &[MerchantRecord {
                merchant_id: "m-1".into(),
                name: Some("Corner Cafe".into()),
                updated_at_ms: T0,
            }],
            &[StoreRecord {
                merchant_id: "m-1".into(),
                store_id: "s-2".into(),
                name: Some("Station".into()),
                time_zone: Some("Europe/London".into()),
                hours: Some("Mon-Sun 07:00-19:00".into()),
                updated_at_ms: T0,
            }],
        )
        .await
        .unwrap();
    let reading = Reading {
        device_id: DeviceId::new("t-2").unwrap(),
        boot_id: BootId(1),
        seq: 1,
        sampled_at: UtcMillis(T0 + 1000),
        signal: Signal::Battery(Battery {
            level_pct: 14,
            charging: false,
            temperature_celsius: 31.0,
            voltage_mv: 3700,
            health_pct: 80,
            cycle_count: 300,
        }),
    };
    store
        .record_readings(&MerchantId::new("m-1").unwrap(), &[reading])
        .await
        .unwrap();
    let will = ConnState::Offline(OfflineReason::LastWill);
    store
        .save_connectivity(
            "t-2",
            &ConnectivitySnapshot {
                state: Some(will),
                since: UtcMillis(T0 + 60_000),
                boot: Some(BootId(1)),
                last_telemetry: Some(UtcMillis(T0 + 1000)),
                gap_ms: Some(60_000.0),
            },
            Some(&Transition {
                from: Some(ConnState::Online),
                to: will,
                at: UtcMillis(T0 + 60_000),
            }),
        )
        .await
        .unwrap();
    store
        .save_alerts(&[AlertRecord {
            alert_id: "a-1".into(),
            rule: "offline".into(),
            subject: "t-2".into(),
            scope: "device".into(),
            severity: "critical".into(),
            state: AlertState::Firing,
            pending_since_ms: T0 + 60_000,
            fired_at_ms: Some(T0 + 120_000),
            clearing_since_ms: None,
            resolved_at_ms: None,
            held_by: None,
            silenced_by: None,
            notify: Some(AlertState::Firing),
            labels: BTreeMap::from([("device_id".to_string(), "t-2".to_string())]),
            annotations: BTreeMap::new(),
            updated_at_ms: T0 + 120_000,
        }])
        .await
        .unwrap();
}

struct Api {
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    _dir: tempfile::TempDir,
}

async fn start() -> Api {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config {
        data_dir: dir.path().to_path_buf(),
        ..Config::default()
    };
    config.http.tokens = tokens();
    config.scheduler.engine = RollupEngine::Embedded;
    std::fs::create_dir_all(&config.data_dir).unwrap();
    let store = MetaStore::connect(&config.metadata_url()).await.unwrap();
    seed(&store).await;
    let router = tillwatch_serve::api_router(&config).await.unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, mut stopped) = watch::channel(false);
    tokio::spawn(tillwatch_serve::serve_http(
        listener,
        Arc::new(tillwatch_gateway::GatewayHealth::default()),
        router,
        async move {
            let _ = stopped.wait_for(|s| *s).await;
        },
    ));
    Api {
        addr,
        stop,
        _dir: dir,
    }
}

impl Api {
    /// GET as the viewer: (status, JSON body).
    async fn get(&self, path: &str) -> (u16, Value) {
        self.call("GET", path, None, Some(VIEWER)).await
    }

    async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
        token: Option<&str>,
    ) -> (u16, Value) {
        let (addr, method, path) = (self.addr, method.to_string(), path.to_string());
        let (body, token) = (body.map(String::from), token.map(String::from));
        let (status, text) = tokio::task::spawn_blocking(move || {
            http_call(addr, &method, &path, body.as_deref(), token.as_deref())
        })
        .await
        .unwrap()
        .unwrap();
        let json = serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"));
        (status, json)
    }
}

fn ids(list: &Value) -> Vec<&str> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|d| d["device_id"].as_str().unwrap())
        .collect()
}

fn error(body: &Value) -> &str {
    body["error"].as_str().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_decide_who_reads_and_who_changes() {
    let api = start().await;
    // Probes and scrapers need no token.
    let addr = api.addr;
    let health = tokio::task::spawn_blocking(move || http_get(addr, "/healthz"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(health.0, 200);

    let (status, body) = api.call("GET", "/api/v1/devices", None, None).await;
    assert_eq!(status, 401, "{body}");
    assert!(error(&body).contains("Bearer"), "{body}");
    let (status, body) = api
        .call(
            "GET",
            "/api/v1/devices",
            None,
            Some("not-a-token-we-know-of"),
        )
        .await;
    assert_eq!(status, 401, "{body}");
    let (status, _) = api
        .call("GET", "/api/v1/devices", None, Some(OPERATOR))
        .await;
    assert_eq!(status, 200, "an operator reads too");

    // A change needs an operator: a backfill's dry run.
    let backfill = "/api/v1/jobs/device_health_daily/backfill";
    let body = r#"{"from": "2026-11-20", "to": "2026-11-20", "dry_run": true}"#;
    let (status, answer) = api.call("POST", backfill, Some(body), Some(VIEWER)).await;
    assert_eq!(status, 403, "{answer}");
    assert!(
        error(&answer).contains("\"support\" has the viewer role"),
        "{answer}"
    );
    let (status, answer) = api.call("POST", backfill, Some(body), Some(OPERATOR)).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["dry_run"], true);
    let (status, _) = api.call("POST", backfill, Some(body), None).await;
    assert_eq!(status, 401);
    // The jobs are readable by a viewer.
    let (status, jobs) = api.get("/api/v1/jobs").await;
    assert_eq!(status, 200, "{jobs}");
    api.stop.send(true).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_page_and_filter_and_one_device_explains_itself() {
    let api = start().await;
    let (status, all) = api.get("/api/v1/devices").await;
    assert_eq!(status, 200, "{all}");
    assert_eq!(ids(&all["devices"]), ["t-1", "t-2", "t-3"]);
    assert!(all["next_after"].is_null());

    // Keyset paging.
    let (_, page) = api.get("/api/v1/devices?limit=2").await;
    assert_eq!(ids(&page["devices"]), ["t-1", "t-2"]);
    assert_eq!(page["next_after"], "t-2");
    let (_, rest) = api.get("/api/v1/devices?limit=2&after=t-2").await;
    assert_eq!(ids(&rest["devices"]), ["t-3"]);
    assert!(rest["next_after"].is_null());

    let (_, mine) = api.get("/api/v1/devices?merchant=m-1&store=s-2").await;
    assert_eq!(ids(&mine["devices"]), ["t-2"]);
    assert_eq!(mine["devices"][0]["serial"], "SN-t-2");

    // The device card: state and why, signals, alerts.
    let (status, card) = api.get("/api/v1/devices/t-2").await;
    assert_eq!(status, 200, "{card}");
    assert_eq!(card["device"]["model"], "A920");
    assert_eq!(card["connectivity"]["state"], "last_will");
    assert_eq!(card["connectivity"]["online"], false);
    assert_eq!(card["connectivity_history"][0]["to"], "last_will");
    assert_eq!(card["signals"]["battery_level_pct"]["value"], 14.0);
    assert_eq!(card["alerts"][0]["rule"], "offline");
    assert_eq!(card["alerts"][0]["state"], "firing");
    let (_, quiet) = api.get("/api/v1/devices/t-1").await;
    assert!(quiet["connectivity"].is_null());
    assert_eq!(quiet["alerts"].as_array().unwrap().len(), 0);

    // Bad input is named.
    for (path, want, needle) in [
        ("/api/v1/devices/nope", 404, "nope"),
        ("/api/v1/devices?limit=0", 400, "limit"),
        ("/api/v1/devices?limit=lots", 400, "limit"),
        ("/api/v1/devices?colour=red", 400, "colour"),
        ("/api/v1/devices?store=s-1", 400, "merchant"),
        ("/api/v1/alerts?state=burning", 400, "state"),
        ("/api/v1/stores?city=x", 400, "city"),
    ] {
        let (status, body) = api.get(path).await;
        assert_eq!(status, want, "{path}: {body}");
        assert!(error(&body).contains(needle), "{path}: {body}");
    }
    api.stop.send(true).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn merchants_stores_and_alerts() {
    let api = start().await;
    let (status, merchants) = api.get("/api/v1/merchants").await;
    assert_eq!(status, 200, "{merchants}");
    assert_eq!(merchants["merchants"][0]["name"], "Corner Cafe");
    let (_, stores) = api.get("/api/v1/stores?merchant=m-1").await;
    assert_eq!(stores["stores"][0]["time_zone"], "Europe/London");
    let (_, none) = api.get("/api/v1/stores?merchant=m-2").await;
    assert_eq!(none["stores"].as_array().unwrap().len(), 0);

    let (_, open) = api.get("/api/v1/alerts").await;
    assert_eq!(open["alerts"][0]["subject"], "t-2");
    let (_, firing) = api.get("/api/v1/alerts?state=firing&limit=5").await;
    assert_eq!(firing["alerts"].as_array().unwrap().len(), 1);
    let (_, resolved) = api.get("/api/v1/alerts?state=resolved").await;
    assert_eq!(resolved["alerts"].as_array().unwrap().len(), 0);
    api.stop.send(true).unwrap();
}
