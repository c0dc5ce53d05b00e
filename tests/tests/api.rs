//! The HTTP API as a tool or a browser meets it, served in-process on port
//! 0 over a SQLite metadata store with a small fleet in it: tokens and
//! roles (401 without or with an unknown token, 403 for a viewer asking
//! for a change), every fleet endpoint with good and bad input, and the
//! jobs API behind the same tokens.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use serde_json::Value;
use tillwatch_config::{Config, RollupEngine};
use tillwatch_domain::connectivity::{ConnState, ConnectivitySnapshot, OfflineReason, Transition};
use tillwatch_domain::{
    Battery, BootId, DeviceId, DeviceInfo, MerchantId, Reading, Signal, StoreId, UtcMillis,
};
use tillwatch_integration_tests::{http_call, http_get, test_tokens, venv_python};
use tillwatch_meta::{AlertRecord, AlertState, MerchantRecord, MetaStore, StoreRecord};
use tokio::net::TcpListener;
use tokio::sync::watch;

const VIEWER: &str = "api-test-viewer-token-0001";
const OPERATOR: &str = "api-test-operator-token-0001";
const T0: i64 = 1_795_132_800_000;

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
            state: AlertState::Firing,
            fired_at_ms: Some(T0 + 120_000),
            notify: Some(AlertState::Firing),
            labels: BTreeMap::from([("device_id".to_string(), "t-2".to_string())]),
            ..AlertRecord::pending(
                "offline",
                "t-2",
                "device",
                "critical",
                T0 + 60_000,
                T0 + 120_000,
            )
        }])
        .await
        .unwrap();
}

/// t-2's battery every 10 minutes for three hours from T0 (100, 99, …),
/// t-1's at 50%, in the raw lake, and the hourly rollup of those hours.
async fn seed_lake(root: &std::path::Path) {
    seed_battery(root, T0, 18).await;
}

/// Battery readings of t-1 and t-2 every 10 minutes, `n` of them from
/// `from`, and the hourly rollups of their hours.
async fn seed_battery(root: &std::path::Path, from: i64, n: i64) {
    seed_battery_readings(root, from, n);
    let engine = tillwatch_rollups::embedded::Embedded::new(tillwatch_storage::Lake::new(root));
    for hour in tillwatch_scheduler::Partition::overlapping(
        tillwatch_scheduler::Grain::Hour,
        from,
        from + n * 600_000,
    ) {
        engine.device_health_hourly(hour).await.unwrap();
    }
}

/// The readings of [`seed_battery`] alone, not rolled up.
fn seed_battery_readings(root: &std::path::Path, from: i64, n: i64) {
    let lake = tillwatch_storage::Lake::new(root);
    let merchant = MerchantId::new("m-1").unwrap();
    let mut staging = tillwatch_storage::Staging::new();
    let mut readings = Vec::new();
    for (device, start) in [("t-1", 50), ("t-2", 100)] {
        for i in 0..n {
            readings.push(Reading {
                device_id: DeviceId::new(device).unwrap(),
                boot_id: BootId(1),
                seq: (from / 1000) as u64 + i as u64,
                sampled_at: UtcMillis(from + i * 600_000),
                signal: Signal::Battery(Battery {
                    level_pct: (start - i) as u32,
                    charging: false,
                    temperature_celsius: 30.0,
                    voltage_mv: 3900,
                    health_pct: 90,
                    cycle_count: 10,
                }),
            });
        }
    }
    for r in &readings {
        staging.push_reading(tillwatch_storage::StoredReading {
            reading: r,
            merchant_id: &merchant,
            store_id: None,
            received_at: r.sampled_at,
        });
    }
    for part in staging.finish() {
        let path = lake.file_path(part.table, part.hour, "seed.parquet");
        lake.write_part(&part, &path).unwrap();
    }
}

struct Api {
    addr: SocketAddr,
    grpc: SocketAddr,
    stop: watch::Sender<bool>,
    dir: tempfile::TempDir,
}

async fn start() -> Api {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config {
        data_dir: dir.path().to_path_buf(),
        ..Config::default()
    };
    config.http.tokens = test_tokens(VIEWER, OPERATOR);
    config.scheduler.engine = RollupEngine::Embedded;
    config.grpc.change_poll = std::time::Duration::from_millis(50);
    std::fs::create_dir_all(&config.data_dir).unwrap();
    let store = MetaStore::connect(&config.metadata_url()).await.unwrap();
    seed(&store).await;
    seed_lake(&config.data_dir.join("lake")).await;
    let router = tillwatch_serve::api_router(&config, store.clone())
        .await
        .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = watch::channel(false);
    let until_stopped = |mut stopped: watch::Receiver<bool>| async move {
        let _ = stopped.wait_for(|s| *s).await;
    };
    tokio::spawn(tillwatch_serve::serve_http(
        listener,
        tillwatch_serve::Readiness::Started,
        router,
        tillwatch_serve::HttpServing::of(&config).unwrap(),
        until_stopped(stopped.clone()),
    ));
    let grpc_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let grpc = grpc_listener.local_addr().unwrap();
    let service = tillwatch_grpc::service(&config, store.clone()).unwrap();
    tokio::spawn(tillwatch_grpc::serve(
        service,
        grpc_listener,
        None,
        until_stopped(stopped),
    ));
    Api {
        addr,
        grpc,
        stop,
        dir,
    }
}

impl Api {
    /// GET as the viewer: (status, JSON body).
    async fn get(&self, path: &str) -> (u16, Value) {
        self.call("GET", path, None, Some(VIEWER)).await
    }

    /// Rolls up T0's day in the lake (its hours, then the day's device
    /// health and fleet cohorts), as the scheduler would.
    async fn roll_up_day_of_t0(&self) {
        use tillwatch_rollups::jobs;
        use tillwatch_scheduler::{Executor, Grain, Partition};
        let lake = tillwatch_storage::Lake::new(self.dir.path().join("lake"));
        let engine = tillwatch_rollups::embedded::Embedded::new(lake);
        let day = Partition::containing(Grain::Day, T0);
        for hour in day.covering(Grain::Hour) {
            engine.device_health_hourly(hour).await.unwrap();
        }
        engine.run(&jobs::device_health_daily(), day).await.unwrap();
        engine.run(&jobs::fleet_health_daily(), day).await.unwrap();
    }

    /// Every GET of `prefix` + case answers the case's status with an
    /// error that names what was wrong.
    async fn assert_refused(&self, prefix: &str, cases: &[(&str, u16, &str)]) {
        tokio::task::block_in_place(|| {
            tillwatch_integration_tests::assert_refused(self.addr, VIEWER, prefix, cases)
        });
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

    // Guessing tokens is slow: after 20 failures a minute, the address is
    // refused (429, with Retry-After), right token or wrong, until the
    // minute is over; the probes stay open.
    let mut failures = 3; // the three above
    while failures < 20 {
        let (status, _) = api
            .call(
                "GET",
                "/api/v1/devices",
                None,
                Some("a-wrong-guess-0123456789"),
            )
            .await;
        assert_eq!(status, 401);
        failures += 1;
    }
    let (status, body) = api.call("GET", "/api/v1/devices", None, Some(VIEWER)).await;
    assert_eq!(status, 429, "{body}");
    assert!(error(&body).contains("try again in"), "{body}");
    let health = tokio::task::spawn_blocking(move || http_get(addr, "/healthz"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(health.0, 200);
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
    // Its health score, and the reasons behind it, worst first.
    let health = &card["health"];
    let reasons: Vec<(&str, u64)> = health["reasons"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["code"].as_str().unwrap(), r["points"].as_u64().unwrap()))
        .collect();
    assert_eq!(
        reasons,
        [("offline", 50), ("alert", 25), ("battery_low", 20)],
        "{health}"
    );
    assert_eq!(health["score"], 5);
    assert_eq!(health["grade"], "unhealthy");
    let details = health["reasons"].to_string();
    assert!(
        details.contains("Offline (connection lost) for"),
        "{details}"
    );
    assert!(details.contains("Battery at 14%"), "{details}");
    let (_, quiet) = api.get("/api/v1/devices/t-1").await;
    assert!(quiet["connectivity"].is_null());
    assert_eq!(quiet["alerts"].as_array().unwrap().len(), 0);
    assert_eq!(quiet["health"]["reasons"][0]["code"], "never_online");

    // Bad input is named.
    api.assert_refused(
        "",
        &[
            ("/api/v1/devices/nope", 404, "nope"),
            ("/api/v1/devices?limit=0", 400, "limit"),
            ("/api/v1/devices?limit=lots", 400, "limit"),
            ("/api/v1/devices?colour=red", 400, "colour"),
            ("/api/v1/devices?store=s-1", 400, "merchant"),
            ("/api/v1/alerts?state=burning", 400, "state"),
            ("/api/v1/stores?city=x", 400, "city"),
        ],
    )
    .await;
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

    // One merchant: its stores (from the directory and from its
    // terminals), its terminals least healthy first.
    let (status, m1) = api.get("/api/v1/merchants/m-1").await;
    assert_eq!(status, 200, "{m1}");
    assert_eq!(m1["name"], "Corner Cafe");
    assert_eq!(ids(&m1["devices"]), ["t-2", "t-1"]);
    assert_eq!(m1["devices"][0]["health_score"], 5);
    assert_eq!(m1["devices"][0]["online"], false);
    assert_eq!(m1["totals"]["devices"], 2);
    let stores: Vec<&str> = m1["stores"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["store_id"].as_str().unwrap())
        .collect();
    assert_eq!(stores, ["s-2", "s-1"], "the directory's first: {m1}");
    assert_eq!(m1["stores"][0]["name"], "Station");
    assert_eq!(m1["stores"][0]["alerting"], 1);
    // One store of it, with the store's alerts.
    let store_alert = AlertRecord {
        alert_id: "a-store".into(),
        state: AlertState::Firing,
        fired_at_ms: Some(T0),
        notify: Some(AlertState::Firing),
        ..AlertRecord::pending(
            "store_offline",
            "store:m-1/s-2",
            "store",
            "critical",
            T0,
            T0,
        )
    };
    let store = MetaStore::connect(&format!(
        "sqlite://{}",
        api.dir.path().join("metadata.db").display()
    ))
    .await
    .unwrap();
    store.save_alerts(&[store_alert]).await.unwrap();
    let (status, s2) = api.get("/api/v1/merchants/m-1?store=s-2").await;
    assert_eq!(status, 200, "{s2}");
    assert_eq!(ids(&s2["devices"]), ["t-2"]);
    assert_eq!(s2["alerts"][0]["rule"], "store_offline");
    assert_eq!(s2["stores"].as_array().unwrap().len(), 1);
    api.assert_refused(
        "",
        &[
            ("/api/v1/merchants/m-9", 404, "m-9"),
            ("/api/v1/merchants/m-1?store=s-9", 404, "s-9"),
            ("/api/v1/merchants/m-1?shop=s-1", 400, "shop"),
        ],
    )
    .await;
    api.stop.send(true).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fleet_counts_by_merchant_and_store() {
    let api = start().await;
    let (status, fleet) = api.get("/api/v1/fleet").await;
    assert_eq!(status, 200, "{fleet}");
    let totals = &fleet["totals"];
    assert_eq!(totals["devices"], 3);
    assert_eq!(totals["offline"], 1, "t-2 by its last will");
    assert_eq!(totals["unknown"], 2, "never seen online");
    assert_eq!(totals["low_battery"], 1, "t-2 at 14%");
    assert_eq!(totals["alerting"], 1);
    let m1 = &fleet["merchants"][0];
    assert_eq!(m1["merchant_id"], "m-1");
    assert_eq!(m1["name"], "Corner Cafe");
    assert_eq!(m1["devices"], 2);
    assert_eq!(m1["stores"][1]["store_id"], "s-2");
    assert_eq!(m1["stores"][1]["alerting"], 1);
    assert_eq!(fleet["merchants"][1]["devices"], 1);
    // The least healthy terminals first, each with its main reason.
    assert_eq!(ids(&fleet["worst"]), ["t-2", "t-1", "t-3"]);
    assert_eq!(fleet["worst"][0]["health_score"], 5);
    assert!(
        fleet["worst"][0]["main_reason"]
            .as_str()
            .unwrap()
            .starts_with("Offline"),
        "{fleet}"
    );
    api.stop.send(true).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_create_and_end_silences() {
    let api = start().await;
    let good = r#"{"matchers": ["alertname=offline", "store_id=~s-.*"], "for": "2h", "comment": "store refit"}"#;
    let (status, body) = api
        .call("POST", "/api/v1/silences", Some(good), Some(VIEWER))
        .await;
    assert_eq!(status, 403, "{body}");
    for (bad, needle) in [
        (
            r#"{"matchers": ["rule~~x"], "for": "2h", "comment": "c"}"#,
            "matchers",
        ),
        (
            r#"{"matchers": [], "for": "2h", "comment": "c"}"#,
            "matchers",
        ),
        (
            r#"{"matchers": ["alertname=offline"], "for": "soon", "comment": "c"}"#,
            "for",
        ),
        (
            r#"{"matchers": ["alertname=offline"], "for": "0s", "comment": "c"}"#,
            "for",
        ),
        (
            r#"{"matchers": ["alertname=offline"], "for": "2h", "comment": " "}"#,
            "comment",
        ),
        (
            r#"{"matchers": ["alertname=offline"], "for": "2h", "comment": "c", "by": "me"}"#,
            "by",
        ),
    ] {
        let (status, body) = api
            .call("POST", "/api/v1/silences", Some(bad), Some(OPERATOR))
            .await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert!(error(&body).contains(needle), "{bad}: {body}");
    }
    let (status, made) = api
        .call("POST", "/api/v1/silences", Some(good), Some(OPERATOR))
        .await;
    assert_eq!(status, 201, "{made}");
    assert_eq!(made["created_by"], "ops", "the token's name is the author");
    assert_eq!(
        made["ends_at_ms"].as_i64().unwrap() - made["starts_at_ms"].as_i64().unwrap(),
        2 * 3_600_000
    );
    let id = made["silence_id"].as_str().unwrap().to_string();
    let (_, list) = api.get("/api/v1/silences").await;
    assert_eq!(list["silences"][0]["silence_id"], id.as_str());

    let path = format!("/api/v1/silences/{id}");
    let (status, _) = api.call("DELETE", &path, None, Some(VIEWER)).await;
    assert_eq!(status, 403);
    let (status, ended) = api.call("DELETE", &path, None, Some(OPERATOR)).await;
    assert_eq!(status, 200, "{ended}");
    let (_, list) = api.get("/api/v1/silences").await;
    assert_eq!(list["silences"].as_array().unwrap().len(), 0);
    let (status, body) = api
        .call("DELETE", "/api/v1/silences/nope", None, Some(OPERATOR))
        .await;
    assert_eq!(status, 404, "{body}");
    api.stop.send(true).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_devices_series_comes_raw_for_hours_and_hourly_for_days() {
    let api = start().await;
    let base = "/api/v1/devices/t-2/series";
    let (status, raw) = api
        .get(&format!("{base}?from={T0}&to={}", T0 + 2 * 3_600_000))
        .await;
    assert_eq!(status, 200, "{raw}");
    assert_eq!(raw["resolution"], "raw");
    let battery = raw["series"]["battery_level_pct"].as_array().unwrap();
    assert_eq!(battery.len(), 12, "every reading of two hours: {raw}");
    assert_eq!(battery[0], serde_json::json!([T0, 100.0]));
    assert_eq!(battery[11], serde_json::json!([T0 + 11 * 600_000, 89.0]));
    // Its connectivity over the range, and how much telemetry came: a
    // reading every 10 minutes of the report a minute expected.
    assert_eq!(
        raw["connectivity"],
        serde_json::json!([{ "at_ms": T0 + 60_000, "state": "last_will" }])
    );
    assert_eq!(raw["completeness"]["received"], 12.0);
    assert_eq!(raw["completeness"]["expected"], 120.0);
    let gaps = raw["gaps"].as_array().unwrap();
    assert_eq!(gaps.len(), 12, "ten minutes between readings: {raw}");
    assert_eq!(
        gaps[0],
        serde_json::json!({ "from_ms": T0, "to_ms": T0 + 600_000 })
    );

    // RFC 3339 works too; three hours at the hourly resolution.
    let (status, hourly) = api
        .get(&format!(
            "{base}?from=2026-11-20T00:00:00Z&to=2026-11-20T03:00:00Z&resolution=hour"
        ))
        .await;
    assert_eq!(status, 200, "{hourly}");
    assert_eq!(hourly["resolution"], "hour");
    let means: Vec<f64> = hourly["series"]["battery_level_pct"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p[1].as_f64().unwrap())
        .collect();
    // Levels 100..95 in the first hour, 94..89, 88..83: means 97.5, 91.5, 85.5.
    assert_eq!(means, [97.5, 91.5, 85.5]);
    assert_eq!(hourly["series"]["battery_readings"][0][1], 6.0);
    assert_eq!(
        hourly["series"]["completeness_pct"][0],
        serde_json::json!([T0, 10.0]),
        "6 of 60 reports"
    );
    assert_eq!(hourly["gaps"], serde_json::json!([]));
    // Hours with nothing at all are gaps.
    let (_, longer) = api
        .get(&format!(
            "{base}?from={T0}&to={}&resolution=hour",
            T0 + 5 * 3_600_000
        ))
        .await;
    assert_eq!(
        longer["gaps"],
        serde_json::json!([{ "from_ms": T0 + 3 * 3_600_000, "to_ms": T0 + 5 * 3_600_000 }]),
        "{longer}"
    );

    // The hour in progress is not rolled up yet; a day's view (hourly)
    // ending with it still shows it, from its raw readings.
    let hour = UtcMillis::now().0 / 3_600_000 * 3_600_000;
    seed_battery_readings(&api.dir.path().join("lake"), hour, 3);
    let (status, day) = api
        .get(&format!(
            "{base}?from={}&to={}&resolution=hour",
            hour - 23 * 3_600_000,
            hour + 3_600_000
        ))
        .await;
    assert_eq!(status, 200, "{day}");
    assert_eq!(day["resolution"], "hour");
    // t-2's levels 100, 99, 98 this hour: mean 99, three readings.
    assert_eq!(
        day["series"]["battery_level_pct"],
        serde_json::json!([[hour, 99.0]]),
        "{day}"
    );
    assert_eq!(
        day["series"]["battery_readings"],
        serde_json::json!([[hour, 3.0]])
    );

    api.assert_refused(
        base,
        &[
            ("?from=yesterday", 400, "from"),
            ("?from=1795132800000&to=1795132800000", 400, "from"),
            ("?from=1700000000000&to=1795132800000", 400, "31 days"),
            (
                "?from=1795132800000&to=1795219200000&resolution=raw",
                400,
                "resolution",
            ),
            ("?resolution=minute", 400, "resolution"),
            ("?window=1h", 400, "window"),
            // Absurd ranges: refused by name, never computed.
            ("?to=9223372036854775807", 400, "to"),
            ("?from=-9223372036854775808", 400, "from"),
            ("?from=0&to=9223372036854775807&resolution=hour", 400, "to"),
            ("?to=99999999999999999999", 400, "to"),
        ],
    )
    .await;
    let (status, body) = api.get("/api/v1/devices/nope/series").await;
    assert_eq!(status, 404, "{body}");
    let (status, _) = api.call("GET", base, None, None).await;
    assert_eq!(status, 401);
    api.stop.send(true).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_is_valid_and_names_every_route() {
    let api = start().await;
    let (status, doc) = api.call("GET", "/api/v1/openapi.json", None, None).await;
    assert_eq!(status, 200, "served without a token: {doc}");

    // Valid OpenAPI, by a maintained validator (PyPI's
    // openapi-spec-validator, in the test venv).
    let (valid, problems) = venv_python(
        "import json, sys\nfrom openapi_spec_validator import validate\nvalidate(json.load(sys.stdin))",
        &doc.to_string(),
    );
    assert!(valid, "the document is not valid OpenAPI: {problems}");

    // Every documented operation is served (a handler answers, in JSON,
    // rather than the router's bare 404 or 405), with the documented role.
    let paths = doc["paths"].as_object().unwrap();
    let mut operations = 0;
    let mut undocumented = Vec::new();
    for (path, methods) in paths {
        let concrete = path
            .replace("{device_id}", "t-2")
            .replace("{job}", "device_health_hourly")
            .replace("{partition}", "2026-11-20T00")
            .replace("{silence_id}", "none")
            .replace("{merchant_id}", "m-1");
        for (method, op) in methods.as_object().unwrap() {
            operations += 1;
            let method = method.to_uppercase();
            let body = (method == "POST").then_some("{}");
            let (status, answer) = api.call(&method, &concrete, body, Some(OPERATOR)).await;
            // Success, or a client error that says what was wrong and is
            // one the document lists for the operation; never a 5xx.
            if !(200..300).contains(&status) {
                assert!(
                    (400..500).contains(&status) && status != 405,
                    "{method} {path}: {status} {answer}"
                );
                assert!(
                    answer["error"].as_str().is_some_and(|e| !e.is_empty()),
                    "{method} {path}: {status} without a message: {answer}"
                );
                if op["responses"].get(status.to_string()).is_none() {
                    undocumented.push(format!("{method} {path}: {status} {answer}"));
                }
            }
            let role = op["x-tillwatch-role"].as_str().unwrap();
            let (viewer_status, _) = api.call(&method, &concrete, body, Some(VIEWER)).await;
            assert_eq!(
                viewer_status == 403,
                role == "operator",
                "{method} {path} is documented for {role}"
            );
        }
    }
    assert!(
        undocumented.is_empty(),
        "answers their operations do not document:\n{}",
        undocumented.join("\n")
    );
    for path in [
        "/api/v1/fleet",
        "/api/v1/devices",
        "/api/v1/devices/{device_id}",
        "/api/v1/devices/{device_id}/series",
        "/api/v1/silences/{silence_id}",
        "/api/v1/jobs/{job}/backfill",
    ] {
        assert!(paths.contains_key(path), "{path} is documented");
    }
    assert!(operations >= 15, "{operations} operations");
    api.stop.send(true).unwrap();
}

/// Checks each `(method, documented path, status, body)` answer against
/// the schema the document gives for that status, strictly: an object may
/// hold only the properties its schema names, so a field added to an answer
/// without its type, or a type changed without the answer, fails here.
/// Validated by PyPI's `jsonschema` (JSON Schema 2020-12, OpenAPI 3.1's
/// dialect) in the test venv.
fn assert_answers_match(doc: &Value, answers: &[(String, String, u16, Value)]) {
    const CHECK: &str = r#"
import json, sys
from jsonschema import Draft202012Validator
given = json.load(sys.stdin)
doc = given["doc"]
def strict(node):
    if isinstance(node, dict):
        if "properties" in node and "additionalProperties" not in node:
            node["additionalProperties"] = False
        for v in node.values():
            strict(v)
    elif isinstance(node, list):
        for v in node:
            strict(v)
strict(doc["components"])
problems = []
for method, path, status, body in given["answers"]:
    op = doc["paths"][path][method.lower()]
    response = op["responses"].get(str(status), {})
    if "content" not in response:
        problems.append(f"{method} {path} {status}: no schema for this status")
        continue
    schema = response["content"]["application/json"]["schema"]
    strict(schema)
    schema = dict(schema, components=doc["components"])
    for e in Draft202012Validator(schema).iter_errors(body):
        problems.append(f"{method} {path} {status}: {e.message} at {list(e.absolute_path)}")
print("\n".join(problems))
sys.exit(1 if problems else 0)
"#;
    let input = serde_json::json!({ "doc": doc, "answers": answers });
    let (matched, problems) = venv_python(CHECK, &input.to_string());
    assert!(
        matched,
        "answers that do not match their schema:\n{problems}"
    );
}

/// Every operation of the document, called as a user would so that it
/// succeeds, answers in the shape its schema gives; no operation is left
/// out, and every schema is a named type, not an empty object.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_operation_answers_in_its_documented_shape() {
    use tillwatch_scheduler::{Grain, Partition};
    let api = start().await;
    let (_, doc) = api.call("GET", "/api/v1/openapi.json", None, None).await;

    // A rolled-up day, for the cohorts.
    api.roll_up_day_of_t0().await;

    let mut answers: Vec<(String, String, u16, Value)> = Vec::new();
    let mut call = async |method: &str, path: &str, concrete: &str, body: Option<&str>| {
        let (status, answer) = api.call(method, concrete, body, Some(OPERATOR)).await;
        assert!(
            (200..300).contains(&status),
            "{method} {concrete}: {status} {answer}"
        );
        answers.push((method.into(), path.into(), status, answer.clone()));
        answer
    };
    // Raw compaction: a job with only sources upstream.
    let job = "raw_compaction";
    // Two hours of two days ago: within the jobs' default start (7 days).
    let day0 = Partition::containing(Grain::Day, UtcMillis::now().0 - 2 * 86_400_000);
    let from = Partition::containing(Grain::Hour, day0.start_ms);
    let (first, second) = (from.key(), from.next().key());
    let range = format!(r#"{{"from": "{first}", "to": "{second}"}}"#);
    let dry = format!(r#"{{"from": "{first}", "to": "{second}", "dry_run": true}}"#);
    let lineage = format!("/api/v1/jobs/{job}/partitions/{first}/lineage");
    let series = format!(
        "/api/v1/devices/t-2/series?from={T0}&to={}",
        T0 + 3 * 3_600_000
    );
    for (method, path, concrete, body) in [
        ("GET", "/api/v1/fleet", "/api/v1/fleet", None),
        ("GET", "/api/v1/devices", "/api/v1/devices?limit=2", None),
        (
            "GET",
            "/api/v1/devices/{device_id}",
            "/api/v1/devices/t-2",
            None,
        ),
        (
            "GET",
            "/api/v1/devices/{device_id}/series",
            series.as_str(),
            None,
        ),
        ("GET", "/api/v1/search", "/api/v1/search?q=t-", None),
        ("GET", "/api/v1/merchants", "/api/v1/merchants", None),
        (
            "GET",
            "/api/v1/merchants/{merchant_id}",
            "/api/v1/merchants/m-1",
            None,
        ),
        (
            "GET",
            "/api/v1/merchants/{merchant_id}",
            "/api/v1/merchants/m-1?store=s-1",
            None,
        ),
        (
            "GET",
            "/api/v1/merchants/{merchant_id}/days",
            "/api/v1/merchants/m-1/days",
            None,
        ),
        ("GET", "/api/v1/stores", "/api/v1/stores", None),
        ("GET", "/api/v1/alerts", "/api/v1/alerts?state=all", None),
        (
            "GET",
            "/api/v1/fleet/cohorts",
            "/api/v1/fleet/cohorts",
            None,
        ),
        ("GET", "/api/v1/jobs", "/api/v1/jobs", None),
        (
            "POST",
            "/api/v1/jobs/{job}/backfill",
            "/api/v1/jobs/raw_compaction/backfill",
            Some(dry.as_str()),
        ),
        (
            "POST",
            "/api/v1/jobs/{job}/clear",
            "/api/v1/jobs/raw_compaction/clear",
            Some(range.as_str()),
        ),
        (
            "POST",
            "/api/v1/jobs/{job}/pause",
            "/api/v1/jobs/fleet_health_daily/pause",
            Some(r#"{"reason": "the shape of a pause"}"#),
        ),
        // A paused job's entry has its pause.
        ("GET", "/api/v1/jobs", "/api/v1/jobs", None),
        (
            "POST",
            "/api/v1/jobs/{job}/resume",
            "/api/v1/jobs/fleet_health_daily/resume",
            None,
        ),
    ] {
        call(method, path, concrete, body).await;
    }
    let silence = call(
        "POST",
        "/api/v1/silences",
        "/api/v1/silences",
        Some(r#"{"matchers": ["store_id=s-1"], "for": "1h", "comment": "refit"}"#),
    )
    .await;
    call("GET", "/api/v1/silences", "/api/v1/silences", None).await;
    let id = silence["silence_id"].as_str().unwrap().to_string();
    call(
        "DELETE",
        "/api/v1/silences/{silence_id}",
        &format!("/api/v1/silences/{id}"),
        None,
    )
    .await;

    // The backfill's runs, driven here as the scheduler would.
    let requested = call(
        "POST",
        "/api/v1/jobs/{job}/backfill",
        "/api/v1/jobs/raw_compaction/backfill",
        Some(&range),
    )
    .await;
    let mut config = Config {
        data_dir: api.dir.path().to_path_buf(),
        ..Config::default()
    };
    config.scheduler.engine = RollupEngine::Embedded;
    // The jobs start at the range, so no older partition is due first.
    config.scheduler.start = day0.key();
    // A gateway's record that everything up to now has arrived.
    tillwatch_storage::Lake::new(api.dir.path().join("lake"))
        .write_watermark("gateway-1", UtcMillis::now().0)
        .unwrap();
    let store = MetaStore::open(&config).await.unwrap();
    let (runner, lake) =
        tillwatch_rollups::service::open(&config, store, tillwatch_rollups::service::wall_clock())
            .unwrap();
    let targets = tillwatch_scheduler::ops::targets(
        runner.catalog(),
        job,
        from.start_ms,
        from.end_ms() + 3_600_000,
        false,
        runner.now(),
    )
    .unwrap();
    let stall = config.scheduler.watermark_stall_after;
    let done = tokio::time::timeout(
        std::time::Duration::from_secs(120),
        tillwatch_scheduler::ops::drive(
            &runner,
            &targets,
            requested["requested_ms"].as_i64().unwrap(),
            || tillwatch_rollups::service::snapshot(&runner, lake.clone(), stall),
            std::time::Duration::from_millis(50),
            |_, _| {},
        ),
    )
    .await
    .expect("the backfill's runs end")
    .unwrap();
    assert!(done.iter().all(|p| p.finished()), "{done:?}");
    let progress = requested["progress"].as_str().unwrap().to_string();
    let finished = call("GET", "/api/v1/jobs/{job}/progress", &progress, None).await;
    assert_eq!(finished["finished"], 2, "{finished}");
    call("GET", "/api/v1/runs", "/api/v1/runs", None).await;
    let runs = call(
        "GET",
        "/api/v1/jobs/{job}/runs",
        "/api/v1/jobs/raw_compaction/runs",
        None,
    )
    .await;
    assert!(
        runs["runs"][0]["inputs"]
            .as_array()
            .is_some_and(|i| !i.is_empty()),
        "{runs}"
    );
    call(
        "GET",
        "/api/v1/jobs/{job}/partitions/{partition}/lineage",
        &lineage,
        None,
    )
    .await;
    let mark = format!("/api/v1/jobs/{job}/partitions/{first}/mark-succeeded");
    let marked = call(
        "POST",
        "/api/v1/jobs/{job}/partitions/{partition}/mark-succeeded",
        &mark,
        Some(r#"{"reason": "the shape of a mark"}"#),
    )
    .await;
    assert_eq!(marked["reason"], "marked", "{marked}");

    assert_answers_match(&doc, &answers);
    // No operation untried, and each answer is a named type.
    for (path, methods) in doc["paths"].as_object().unwrap() {
        for (method, op) in methods.as_object().unwrap() {
            let tried = answers
                .iter()
                .any(|(m, p, _, _)| m.to_lowercase() == *method && p == path);
            assert!(tried, "{method} {path} is not tried here");
            for (status, response) in op["responses"].as_object().unwrap() {
                if status.starts_with('2') {
                    let schema = &response["content"]["application/json"]["schema"];
                    assert!(
                        schema["$ref"].as_str().is_some(),
                        "{method} {path} {status}: {schema}"
                    );
                }
            }
        }
    }
    api.stop.send(true).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_finds_a_terminal_in_one_step_and_the_pages_are_served() {
    let api = start().await;
    for (q, want) in [
        ("t-2", vec!["t-2"]),
        ("SN-t-3", vec!["t-3"]),
        ("m-1", vec!["t-1", "t-2"]),
        ("s-1", vec!["t-1", "t-3"]),
        ("t-", vec!["t-1", "t-2", "t-3"]),
        // LIKE's wildcards are plain characters here.
        ("%25", vec![]),
        ("t_", vec![]),
    ] {
        let (status, found) = api.get(&format!("/api/v1/search?q={q}")).await;
        assert_eq!(status, 200, "{q}: {found}");
        assert_eq!(ids(&found["devices"]), want, "{q}");
    }
    let (status, body) = api.get("/api/v1/search").await;
    assert_eq!(status, 400);
    assert!(error(&body).contains("q:"), "{body}");

    // The pages and their assets need no token (they hold no data).
    let addr = api.addr;
    let get =
        |path: &'static str| tokio::task::spawn_blocking(move || http_get(addr, path).unwrap());
    let (status, page) = get("/ui/").await.unwrap();
    assert_eq!(status, 200);
    assert!(page.contains("<title>Tillwatch · Fleet</title>"), "{page}");
    let (status, page) = get("/ui/device").await.unwrap();
    assert_eq!(status, 200);
    assert!(page.contains("/ui/vendor/uplot.js"));
    let (status, js) = get("/ui/vendor/uplot.js").await.unwrap();
    assert_eq!(status, 200);
    assert!(js.contains("uPlot"));
    let (status, _) = get("/").await.unwrap();
    assert_eq!(status, 307, "the root leads to the fleet page");
    api.stop.send(true).unwrap();
}

/// Support staff's path through the pages in a real headless Chromium: the
/// fleet page, a search by serial that opens the terminal, its charts drawn
/// from data and its firing alert; a screenshot is kept as an artifact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_a_browser_search_opens_the_terminal_with_charts_and_its_alert() {
    use std::time::Duration;
    use tillwatch_integration_tests::browser::{Browser, artifact_dir};
    let api = start().await;
    // Six hours of t-2's battery up to now, so the page's 24 hours have it.
    let now = UtcMillis::now().0;
    let from = now - now.rem_euclid(600_000) - 6 * 3_600_000;
    seed_battery(&api.dir.path().join("lake"), from, 36).await;
    // The day of the seeded readings rolled up, each terminal in its store
    // from the registry: the merchant page's "who served here" lists them.
    {
        use tillwatch_scheduler::{Executor, Grain, Partition};
        let store = MetaStore::connect(&format!(
            "sqlite://{}",
            api.dir.path().join("metadata.db").display()
        ))
        .await
        .unwrap();
        let engine = tillwatch_rollups::embedded::Embedded::with_side_inputs(
            tillwatch_storage::Lake::new(api.dir.path().join("lake")),
            std::sync::Arc::new(store),
        );
        let day = Partition::containing(Grain::Day, T0);
        for hour in day.covering(Grain::Hour) {
            engine.device_health_hourly(hour).await.unwrap();
        }
        engine
            .run(&tillwatch_rollups::jobs::device_health_daily(), day)
            .await
            .unwrap();
    }
    let base = format!("http://{}", api.addr);
    let (shot, merchant_shot) = tokio::task::spawn_blocking(move || {
        let browser = Browser::start();
        // The token first, as a user pastes it in (kept by the browser).
        browser.goto(&format!("{base}/ui/style.css"));
        browser.execute(
            "localStorage.setItem('tillwatch.token', arguments[0]); return true;",
            serde_json::json!([VIEWER]),
        );
        browser.goto(&format!("{base}/ui/"));
        browser.wait_until(
            "the fleet's counts",
            "return document.querySelectorAll('#totals div').length === 6 \
             && document.querySelector('#alerting tbody tr') !== null;",
            Duration::from_secs(30),
        );
        let totals = browser.execute(
            "return document.getElementById('totals').innerText;",
            serde_json::json!([]),
        );
        assert!(totals.as_str().unwrap().contains("alerting"), "{totals}");
        browser.type_into("#q", "SN-t-2");
        browser.click("#search button");
        browser.wait_until(
            "the terminal's page with its battery chart drawn",
            "const c = document.querySelector('.chart[data-series=battery_level_pct]'); \
             return location.pathname === '/ui/device' && c !== null \
             && Number(c.dataset.points) > 0 && c.querySelector('canvas') !== null \
             && document.querySelector('#alerts tbody tr') !== null;",
            Duration::from_secs(30),
        );
        let title = browser.execute(
            "return document.getElementById('title').innerText;",
            serde_json::json!([]),
        );
        assert_eq!(title, "t-2");
        let alert = browser.execute(
            "return document.querySelector('#alerts tbody tr').innerText;",
            serde_json::json!([]),
        );
        let alert = alert.as_str().unwrap().to_string();
        assert!(
            alert.contains("offline") && alert.contains("firing"),
            "{alert}"
        );
        let state = browser.execute(
            "return document.getElementById('state').innerText;",
            serde_json::json!([]),
        );
        assert!(
            state.as_str().unwrap().contains("Offline (last will)"),
            "{state}"
        );
        // The card's score and the reasons behind it; the connectivity
        // history drawn; completeness stated.
        let health = browser.execute(
            "return [document.getElementById('score').innerText, \
             [...document.querySelectorAll('#reasons li')].map(l => l.dataset.code).join(','), \
             document.querySelector('.chart[data-series=connectivity] canvas') !== null, \
             document.getElementById('completeness').innerText];",
            serde_json::json!([]),
        );
        assert!(health[0].as_str().unwrap().contains('5'), "{health}");
        assert_eq!(health[1], "offline,alert,battery_low", "{health}");
        assert_eq!(health[2], true, "the connectivity chart: {health}");
        assert!(
            health[3].as_str().unwrap().contains("expected telemetry"),
            "{health}"
        );
        let shot = browser.screenshot();

        // Its merchant's page lists it first (least healthy).
        browser.click("#facts a");
        browser.wait_until(
            "the merchant's page",
            "return location.pathname === '/ui/merchant' \
             && document.querySelector('#devices tbody tr a') !== null;",
            Duration::from_secs(30),
        );
        let first = browser.execute(
            "return document.querySelector('#devices tbody tr a').innerText;",
            serde_json::json!([]),
        );
        assert_eq!(first, "t-2");
        // Who served the merchant on its rolled-up day, with their hours.
        browser.wait_until(
            "the merchant's days",
            "return document.querySelectorAll('#days tbody tr').length >= 2;",
            Duration::from_secs(30),
        );
        let days = browser.execute(
            "return [...document.querySelectorAll('#days tbody tr')].map(r => r.innerText);",
            serde_json::json!([]),
        );
        let days = days.to_string();
        assert!(
            days.contains("t-1\\ts-1") || days.contains("s-1\\tt-1"),
            "t-1 under its store: {days}"
        );
        assert!(days.contains("t-2"), "{days}");
        let merchant_shot = browser.screenshot();

        // An operator silences the store's alerts from the alerts page, sees
        // the silence, and ends it.
        browser.execute(
            "localStorage.setItem('tillwatch.token', arguments[0]); return true;",
            serde_json::json!([OPERATOR]),
        );
        browser.goto(&format!("{base}/ui/alerts"));
        browser.wait_until(
            "the firing alert listed",
            "return document.querySelector('#alert-list tbody tr[data-state=firing]') !== null;",
            Duration::from_secs(30),
        );
        browser.type_into(
            "#new-silence input[name=matchers]",
            "alertname=offline, store_id=s-2",
        );
        browser.type_into("#new-silence input[name=comment]", "refit");
        browser.click("#new-silence button");
        browser.wait_until(
            "the new silence listed",
            "return document.querySelector('#silences tbody tr[data-silence]') !== null;",
            Duration::from_secs(30),
        );
        browser.click("#silences button.end");
        browser.wait_until(
            "the silence ended",
            "return document.querySelector('#silences tbody tr[data-silence]') === null \
             && document.querySelector('#silences tbody tr.empty') !== null;",
            Duration::from_secs(30),
        );

        // The jobs page draws the lineage of the rollup jobs.
        browser.goto(&format!("{base}/ui/jobs"));
        browser.wait_until(
            "the lineage graph",
            "return document.querySelectorAll('#lineage .node[data-job]').length >= 4;",
            Duration::from_secs(30),
        );
        (shot, merchant_shot)
    })
    .await
    .unwrap();
    for (name, png) in [
        ("device-page.png", shot),
        ("merchant-page.png", merchant_shot),
    ] {
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "a PNG screenshot");
        let path = artifact_dir().join(name);
        std::fs::write(&path, &png).unwrap();
        eprintln!("screenshot: {}", path.display());
    }
    api.stop.send(true).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cohorts_of_a_rolled_up_day() {
    let api = start().await;
    let (status, body) = api.get("/api/v1/fleet/cohorts").await;
    assert_eq!(status, 404, "nothing rolled up yet: {body}");
    api.roll_up_day_of_t0().await;

    let (status, newest) = api.get("/api/v1/fleet/cohorts").await;
    assert_eq!(status, 200, "{newest}");
    assert_eq!(newest["day"], "2026-11-20");
    assert_eq!(newest["cohorts"][0]["devices"], 2, "{newest}");
    let (_, same) = api.get("/api/v1/fleet/cohorts?day=2026-11-20").await;
    assert_eq!(same, newest);
    api.assert_refused(
        "/api/v1/fleet/cohorts",
        &[
            ("?day=2026-11-21", 404, "2026-11-21"),
            ("?day=yesterday", 400, "day"),
            ("?day=2026-11-20T05", 400, "day"),
            ("?cohort=x", 400, "cohort"),
        ],
    )
    .await;
    api.stop.send(true).unwrap();
}

// ---- gRPC -------------------------------------------------------------------

mod grpc {
    use std::time::Duration;

    use tillwatch_proto::api::v1 as pb;
    use tonic::Code;
    use tonic::transport::Channel;

    use super::*;

    type Client = pb::fleet_client::FleetClient<Channel>;

    async fn client(api: &Api) -> Client {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", api.grpc))
            .unwrap()
            .connect()
            .await
            .unwrap();
        pb::fleet_client::FleetClient::new(channel)
    }

    fn req<T>(message: T, token: Option<&str>) -> tonic::Request<T> {
        let mut r = tonic::Request::new(message);
        if let Some(t) = token {
            r.metadata_mut()
                .insert("authorization", format!("Bearer {t}").parse().unwrap());
        }
        r
    }

    fn get(id: &str) -> pb::GetDeviceRequest {
        pb::GetDeviceRequest {
            device_id: id.into(),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn devices_series_and_alerts_over_grpc_with_tokens_and_codes() {
        let api = start().await;
        let mut c = client(&api).await;

        // Tokens: none or unknown is UNAUTHENTICATED.
        let e = c.get_device(req(get("t-2"), None)).await.unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated, "{e}");
        let e = c
            .get_device(req(get("t-2"), Some("not-a-token-we-know-of")))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated, "{e}");

        // One device: state, health and its reasons, signals.
        let d = c
            .get_device(req(get("t-2"), Some(VIEWER)))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(d.merchant_id, "m-1");
        assert_eq!(d.state.as_deref(), Some("last_will"));
        assert_eq!(d.health_score, 5);
        assert_eq!(d.health_grade, "unhealthy");
        let codes: Vec<&str> = d.health_reasons.iter().map(|r| r.code.as_str()).collect();
        assert_eq!(codes, ["offline", "alert", "battery_low"]);
        assert_eq!(d.signals.get("battery_level_pct"), Some(&14.0));
        let e = c
            .get_device(req(get("nope"), Some(VIEWER)))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::NotFound, "{e}");
        assert!(e.message().contains("nope"), "{e}");
        let e = c.get_device(req(get(""), Some(VIEWER))).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e}");
        assert!(e.message().contains("device_id"), "{e}");

        // Paging.
        let list =
            |page_size, page_token: &str, merchant: &str, store: &str| pb::ListDevicesRequest {
                merchant_id: merchant.into(),
                store_id: store.into(),
                page_size,
                page_token: page_token.into(),
            };
        let page = c
            .list_devices(req(list(2, "", "", ""), Some(VIEWER)))
            .await
            .unwrap()
            .into_inner();
        let ids: Vec<&str> = page.devices.iter().map(|d| d.device_id.as_str()).collect();
        assert_eq!(ids, ["t-1", "t-2"]);
        assert_eq!(page.next_page_token, "t-2");
        let rest = c
            .list_devices(req(list(2, "t-2", "", ""), Some(VIEWER)))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(rest.devices.len(), 1);
        assert_eq!(rest.next_page_token, "");
        for (bad, field) in [
            (list(5000, "", "", ""), "page_size"),
            (list(0, "", "", "s-1"), "store_id"),
        ] {
            let e = c.list_devices(req(bad, Some(VIEWER))).await.unwrap_err();
            assert_eq!(e.code(), Code::InvalidArgument, "{e}");
            assert!(e.message().contains(field), "{e}");
        }

        // A series, raw over two hours.
        let series = |from_ms, to_ms, resolution: &str| pb::GetDeviceSeriesRequest {
            device_id: "t-2".into(),
            from_ms,
            to_ms,
            resolution: resolution.into(),
        };
        let s = c
            .get_device_series(req(series(T0, T0 + 2 * 3_600_000, ""), Some(VIEWER)))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(s.resolution, "raw");
        let battery = s
            .series
            .iter()
            .find(|s| s.name == "battery_level_pct")
            .unwrap();
        assert_eq!(battery.points.len(), 12);
        assert_eq!(battery.points[0].at_ms, T0);
        assert_eq!(battery.points[0].value, 100.0);
        // Absurd ranges are refused by name, and the service lives on.
        for (bad, field) in [
            (series(T0, T0, ""), "from_ms"),
            (series(T0, T0 + 3_600_000, "minute"), "resolution"),
            (series(T0, i64::MAX, ""), "to_ms"),
            (series(i64::MIN, T0, ""), "from_ms"),
            (series(0, i64::MAX, "hour"), "to_ms"),
            (series(-1, T0, ""), "from_ms"),
        ] {
            let e = c
                .get_device_series(req(bad, Some(VIEWER)))
                .await
                .unwrap_err();
            assert_eq!(e.code(), Code::InvalidArgument, "{e}");
            assert!(e.message().contains(field), "{e}");
        }
        // A huge id is not echoed back.
        let huge = pb::GetDeviceSeriesRequest {
            device_id: "x".repeat(2_000_000),
            ..series(T0, T0 + 3_600_000, "")
        };
        let e = c
            .get_device_series(req(huge, Some(VIEWER)))
            .await
            .unwrap_err();
        assert!(e.message().len() < 1_000, "{} bytes", e.message().len());
        let s = c
            .get_device_series(req(series(T0, T0 + 3_600_000, ""), Some(VIEWER)))
            .await
            .expect("still serving");
        assert_eq!(s.into_inner().resolution, "raw");

        // Alerts.
        let alerts = |state: &str| pb::ListAlertsRequest {
            state: state.into(),
            limit: 0,
        };
        let firing = c
            .list_alerts(req(alerts("firing"), Some(VIEWER)))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(firing.alerts.len(), 1);
        assert_eq!(firing.alerts[0].subject, "t-2");
        let e = c
            .list_alerts(req(alerts("burning"), Some(VIEWER)))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e}");

        // A change needs an operator: PERMISSION_DENIED for a viewer.
        let silence = |duration: &str| pb::CreateSilenceRequest {
            matchers: vec!["alertname=offline".into()],
            duration: duration.into(),
            comment: "refit".into(),
        };
        let e = c
            .create_silence(req(silence("2h"), Some(VIEWER)))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::PermissionDenied, "{e}");
        let e = c
            .create_silence(req(silence("soon"), Some(OPERATOR)))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e}");
        assert!(e.message().contains("duration"), "{e}");
        let made = c
            .create_silence(req(silence("2h"), Some(OPERATOR)))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(made.created_by, "ops");
        assert_eq!(made.ends_at_ms - made.starts_at_ms, 2 * 3_600_000);
        api.stop.send(true).unwrap();
    }

    /// The stream's next change, within 30 s.
    async fn next(stream: &mut tonic::Streaming<pb::Change>) -> pb::Change {
        tokio::time::timeout(Duration::from_secs(30), stream.message())
            .await
            .expect("a change within 30 s")
            .unwrap()
            .expect("the stream goes on")
    }

    fn describe(change: &pb::Change) -> String {
        match &change.change {
            Some(pb::change::Change::Alert(a)) => {
                format!("alert {} {} {}", a.rule, a.subject, a.state)
            }
            Some(pb::change::Change::DeviceState(d)) => {
                format!("state {} {}", d.device_id, d.to_state)
            }
            None => "nothing".into(),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_change_stream_replays_then_follows_alerts_and_states() {
        let api = start().await;
        let mut c = client(&api).await;
        let e = c
            .watch_changes(req(pb::WatchChangesRequest { since_ms: T0 }, None))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated, "{e}");
        let mut stream = c
            .watch_changes(req(pb::WatchChangesRequest { since_ms: T0 }, Some(VIEWER)))
            .await
            .unwrap()
            .into_inner();
        // What happened since T0, oldest first.
        assert_eq!(describe(&next(&mut stream).await), "state t-2 last_will");
        assert_eq!(
            describe(&next(&mut stream).await),
            "alert offline t-2 firing"
        );

        // Then what happens next: t-2 comes back and its alert resolves.
        let store = MetaStore::connect(&format!(
            "sqlite://{}",
            api.dir.path().join("metadata.db").display()
        ))
        .await
        .unwrap();
        let now = UtcMillis::now().0;
        store
            .save_connectivity(
                "t-2",
                &ConnectivitySnapshot {
                    state: Some(ConnState::Online),
                    since: UtcMillis(now),
                    boot: Some(BootId(2)),
                    last_telemetry: Some(UtcMillis(now)),
                    gap_ms: Some(60_000.0),
                },
                Some(&Transition {
                    from: Some(ConnState::Offline(OfflineReason::LastWill)),
                    to: ConnState::Online,
                    at: UtcMillis(now),
                }),
            )
            .await
            .unwrap();
        let back = next(&mut stream).await;
        assert_eq!(describe(&back), "state t-2 online");
        let Some(pb::change::Change::DeviceState(d)) = back.change else {
            unreachable!()
        };
        assert_eq!(d.from_state.as_deref(), Some("last_will"));
        let mut resolved = store
            .alerts(tillwatch_meta::AlertFilter::All, 10)
            .await
            .unwrap()
            .remove(0);
        resolved.state = AlertState::Resolved;
        resolved.resolved_at_ms = Some(now + 1);
        resolved.updated_at_ms = now + 1;
        store.save_alerts(&[resolved]).await.unwrap();
        assert_eq!(
            describe(&next(&mut stream).await),
            "alert offline t-2 resolved"
        );
        api.stop.send(true).unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn server_reflection_describes_the_api() {
        use tonic_reflection::pb::v1::ServerReflectionRequest;
        use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
        use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
        use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
        let api = start().await;
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", api.grpc))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut reflection = ServerReflectionClient::new(channel);
        let ask = |m| ServerReflectionRequest {
            host: String::new(),
            message_request: Some(m),
        };
        let requests = futures_util::stream::iter([
            ask(MessageRequest::ListServices(String::new())),
            ask(MessageRequest::FileContainingSymbol(
                "tillwatch.api.v1.Fleet".into(),
            )),
        ]);
        let mut answers = reflection
            .server_reflection_info(requests)
            .await
            .unwrap()
            .into_inner();
        let Some(MessageResponse::ListServicesResponse(list)) =
            answers.message().await.unwrap().unwrap().message_response
        else {
            panic!("a list of services first")
        };
        let names: Vec<&str> = list.service.iter().map(|s| s.name.as_str()).collect();
        assert!(names.contains(&"tillwatch.api.v1.Fleet"), "{names:?}");
        let Some(MessageResponse::FileDescriptorResponse(files)) =
            answers.message().await.unwrap().unwrap().message_response
        else {
            panic!("the file describing Fleet")
        };
        assert!(!files.file_descriptor_proto.is_empty());
        let text = String::from_utf8_lossy(&files.file_descriptor_proto[0]).into_owned();
        assert!(
            text.contains("WatchChanges"),
            "the service's methods are described"
        );
        api.stop.send(true).unwrap();
    }
}
