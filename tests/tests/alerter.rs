//! The alerter against a real broker (a private Mosquitto with the
//! project's config) and a real Alertmanager: a terminal whose connection
//! breaks is offline by its last will within two seconds, with the state
//! change in the metadata store and the page at Alertmanager; telemetry
//! brings it back online and resolves the page. An Alertmanager that is
//! down when the page is due gets it once it is back. A store of the
//! simulated fleet losing its uplink is one store page, its terminals' held.
//! Every link a page carries is followed: it opens Tillwatch's page (served
//! by the API on the alerter's metadata store) for that terminal or store.

use std::time::{Duration, Instant};

use prost::Message;
use rumqttc::{AsyncClient, QoS};
use tillwatch_config::Config;
use tillwatch_domain::UtcMillis;
use tillwatch_domain::connectivity::{ConnState, OfflineReason};
use tillwatch_integration_tests::{
    Alertmanager, Mosquitto, free_port, terminal_with_will, wait_for,
};
use tillwatch_meta::MetaStore;
use tillwatch_proto::telemetry::v1 as pb;
use tokio::sync::watch;

const DEVICE: &str = "term-will-1";
/// On-call's token for the API behind the pages.
const VIEWER: &str = "alerter-test-viewer-token";
const TOPIC: &str = "tw/v1/m-1/term-will-1";

fn status(state: pb::ConnectionState, reason: pb::StatusReason) -> Vec<u8> {
    pb::DeviceStatus {
        device_id: DEVICE.into(),
        boot_id: 42,
        state: state as i32,
        reason: reason as i32,
        at_ms: UtcMillis::now().0,
    }
    .encode_to_vec()
}

fn telemetry(seq: u64) -> Vec<u8> {
    pb::TelemetryBatch {
        readings: vec![pb::Reading {
            device_id: DEVICE.into(),
            boot_id: 42,
            seq,
            sampled_at_ms: UtcMillis::now().0,
            kind: Some(pb::reading::Kind::Battery(pb::Battery {
                level_pct: 70,
                charging: false,
                temperature_celsius: 30.0,
                voltage_mv: 4000,
                health_pct: 95,
                cycle_count: 3,
            })),
        }],
    }
    .encode_to_vec()
}

/// A terminal's MQTT connection with its last will; dropping the returned
/// task's handle (aborting it) breaks the socket without a DISCONNECT.
fn terminal(port: u16, id: &str) -> (AsyncClient, tokio::task::JoinHandle<()>) {
    let will = status(
        pb::ConnectionState::Offline,
        pb::StatusReason::ConnectionLost,
    );
    terminal_with_will(port, id, TOPIC, will)
}

async fn state_of(store: &MetaStore) -> Option<(ConnState, i64)> {
    let history = store.connectivity_history(DEVICE, 1).await.ok()?;
    history.first().map(|h| (h.to, h.at_ms))
}

/// Whether the alerter has the terminal online with a reading of it.
async fn online_with_readings(store: &MetaStore, since_seq: u64) -> bool {
    let reported = store
        .latest_signals(DEVICE)
        .await
        .is_ok_and(|s| !s.is_empty());
    matches!(state_of(store).await, Some((ConnState::Online, _))) && reported && since_seq > 0
}

/// Publishes readings until the alerter has the terminal online and has
/// one of its readings (at most 30 s).
async fn report_until_online(client: &AsyncClient, store: &MetaStore, seq: &mut u64) {
    let until = Instant::now() + Duration::from_secs(30);
    let first = *seq;
    while !online_with_readings(store, *seq - first).await {
        assert!(
            Instant::now() < until,
            "the alerter never saw the terminal online"
        );
        client
            .publish(
                format!("{TOPIC}/telemetry"),
                QoS::AtLeastOnce,
                false,
                telemetry(*seq),
            )
            .await
            .unwrap();
        *seq += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The alerter running in-process against `mosquitto`, paging
/// `alertmanager_url` as soon as a terminal is offline (no `for`, no
/// correlation wait).
struct Running {
    store: MetaStore,
    /// The pages and API on the same metadata store (`alerting.public_url`).
    pages: std::net::SocketAddr,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<Result<(), tillwatch_alerter::AlerterError>>,
    _dir: tempfile::TempDir,
}

async fn start_alerter(mosquitto: &Mosquitto, alertmanager_url: &str) -> Running {
    start_alerter_with(mosquitto, alertmanager_url, |_| {}).await
}

async fn start_alerter_with(
    mosquitto: &Mosquitto,
    alertmanager_url: &str,
    tweak: impl FnOnce(&mut Config),
) -> Running {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config {
        data_dir: dir.path().to_path_buf(),
        ..Config::default()
    };
    config.mqtt.broker = mosquitto.url();
    config.alerting.alertmanager_url = Some(alertmanager_url.to_string());
    config.alerting.rules.offline.for_ = Duration::ZERO;
    config.alerting.correlation.wait = Duration::ZERO;
    let pages_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let pages = pages_listener.local_addr().unwrap();
    config.alerting.public_url = Some(format!("http://{pages}/"));
    config.http.tokens =
        tillwatch_integration_tests::test_tokens(VIEWER, "alerter-test-operator-token");
    tweak(&mut config);
    config.validate().unwrap();
    let (stop, mut stop_rx) = watch::channel(false);
    let task = {
        let config = config.clone();
        tokio::spawn(async move {
            let store = tillwatch_meta::MetaStore::open(&config).await?;
            tillwatch_alerter::run_alerter(&config, store, Default::default(), async move {
                let _ = stop_rx.wait_for(|s| *s).await;
            })
            .await
        })
    };
    let store = MetaStore::connect(&config.metadata_url()).await.unwrap();
    let router = tillwatch_serve::api_router(&config, store.clone())
        .await
        .unwrap();
    let mut stopped = stop.subscribe();
    tokio::spawn(tillwatch_serve::serve_http(
        pages_listener,
        tillwatch_serve::Readiness::Started,
        router,
        tillwatch_serve::HttpServing::of(&config).unwrap(),
        async move {
            let _ = stopped.wait_for(|s| *s).await;
        },
    ));
    Running {
        store,
        pages,
        stop,
        task,
        _dir: dir,
    }
}

impl Running {
    /// Opens `link` as on-call would from the page: it must be one of
    /// Tillwatch's pages on this server, and it must load. Returns the
    /// link's query parameters.
    fn follow(&self, link: &str) -> std::collections::BTreeMap<String, String> {
        let base = format!("http://{}", self.pages);
        let path = link
            .strip_prefix(&base)
            .unwrap_or_else(|| panic!("{link} is not on {base}"));
        let (status, body) = tillwatch_integration_tests::http_get(self.pages, path).unwrap();
        assert_eq!(status, 200, "{link}: {body}");
        assert!(body.contains("<html"), "{link} is not a page: {body}");
        let query = path.split_once('?').map(|(_, q)| q).unwrap_or_default();
        form_urlencoded::parse(query.as_bytes())
            .into_owned()
            .collect()
    }

    /// GET `path` on the API as on-call: (status, JSON body).
    fn api(&self, path: &str) -> (u16, serde_json::Value) {
        tillwatch_integration_tests::api_call(self.pages, "GET", path, None, Some(VIEWER))
    }
    async fn stop(self) -> MetaStore {
        let _ = self.stop.send(true);
        self.task.await.unwrap().unwrap();
        self.store
    }
}

/// A terminal online, reporting, known to the alerter.
async fn online_terminal(
    mosquitto: &Mosquitto,
    store: &MetaStore,
    seq: &mut u64,
) -> (AsyncClient, tokio::task::JoinHandle<()>) {
    let (client, connection) = terminal(mosquitto.port, DEVICE);
    client
        .publish(
            format!("{TOPIC}/status"),
            QoS::AtLeastOnce,
            true,
            status(pb::ConnectionState::Online, pb::StatusReason::Birth),
        )
        .await
        .unwrap();
    report_until_online(&client, store, seq).await;
    (client, connection)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unclean_disconnect_is_offline_by_last_will_and_paged_at_alertmanager() {
    let mosquitto = Mosquitto::start();
    let alertmanager = Alertmanager::start();
    let running = start_alerter(&mosquitto, &alertmanager.url()).await;
    let store = running.store.clone();
    let mut seq = 0;
    let (client, connection) = online_terminal(&mosquitto, &store, &mut seq).await;

    // Its network goes: the socket closes without a DISCONNECT.
    let broken_at = UtcMillis::now();
    connection.abort();
    drop(client);
    let mut offline_at = None;
    let until = Instant::now() + Duration::from_secs(30);
    while offline_at.is_none() {
        assert!(
            Instant::now() < until,
            "no offline state after the disconnect"
        );
        if let Some((ConnState::Offline(OfflineReason::LastWill), at)) = state_of(&store).await {
            offline_at = Some(at);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let delay_ms = offline_at.unwrap() - broken_at.0;
    println!("unclean disconnect to offline-by-last-will: {delay_ms} ms");
    assert!(
        (0..2_000).contains(&delay_ms),
        "offline by last will {delay_ms} ms after the disconnect"
    );
    // …and the page reaches Alertmanager, with its labels.
    wait_for(
        "the offline alert at Alertmanager",
        Duration::from_secs(30),
        || {
            !alertmanager
                .alerts_named("offline", "device_id", DEVICE)
                .is_empty()
        },
    )
    .await;
    let paged_ms = UtcMillis::now().0 - broken_at.0;
    println!("unclean disconnect to the alert at Alertmanager: {paged_ms} ms");
    let alert = &alertmanager.alerts_named("offline", "device_id", DEVICE)[0];
    assert_eq!(alert["labels"]["merchant_id"], "m-1", "{alert}");
    assert_eq!(alert["labels"]["severity"], "critical");
    // The link in the page opens the terminal's page, and that page's
    // data is the terminal's.
    let link = alert["generatorURL"].as_str().unwrap_or_default();
    assert_eq!(alert["annotations"]["device_url"], link, "{alert}");
    let query = running.follow(link);
    assert_eq!(query.get("id").map(String::as_str), Some(DEVICE), "{link}");
    let (status, card) = running.api(&format!("/api/v1/devices/{}", query["id"]));
    assert_eq!(status, 200, "{card}");
    assert_eq!(card["device"]["device_id"], DEVICE, "{card}");
    assert_eq!(
        card["alerts"][0]["rule"], "offline",
        "the page shows the alert: {card}"
    );

    // It reconnects and reports: online again, and the page resolves.
    let (client, _connection) = terminal(mosquitto.port, DEVICE);
    report_until_online(&client, &store, &mut seq).await;
    wait_for(
        "the resolve at Alertmanager",
        Duration::from_secs(30),
        || {
            alertmanager
                .alerts_named("offline", "device_id", DEVICE)
                .is_empty()
        },
    )
    .await;

    let store = running.stop().await;
    let device = store.device(DEVICE).await.unwrap().expect("registered");
    assert_eq!(device.merchant_id, "m-1");
    let alerts = store
        .alerts(tillwatch_meta::AlertFilter::All, 10)
        .await
        .unwrap();
    assert_eq!(alerts.len(), 1, "one page for one outage: {alerts:?}");
    assert_eq!(alerts[0].state, tillwatch_meta::AlertState::Resolved);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_waits_for_alertmanager_to_come_back() {
    let mosquitto = Mosquitto::start();
    // Alertmanager's port, with nothing listening on it yet.
    let port = free_port();
    let running = start_alerter(&mosquitto, &format!("http://127.0.0.1:{port}")).await;
    let store = running.store.clone();
    let mut seq = 0;
    let (client, connection) = online_terminal(&mosquitto, &store, &mut seq).await;
    connection.abort();
    drop(client);

    // The page is due and fails: the alert waits in the store.
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        assert!(Instant::now() < until, "no failed delivery recorded");
        let open = store
            .alerts(tillwatch_meta::AlertFilter::Open, 10)
            .await
            .unwrap();
        if let Some(alert) = open.first()
            && let Some((None, attempts)) = store
                .delivery_of("alertmanager", &alert.alert_id)
                .await
                .unwrap()
            && attempts >= 2
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let alertmanager = Alertmanager::start_on(port);
    wait_for(
        "the page once Alertmanager is back",
        Duration::from_secs(60),
        || {
            !alertmanager
                .alerts_named("offline", "device_id", DEVICE)
                .is_empty()
        },
    )
    .await;
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_simulated_store_outage_is_one_page_at_alertmanager() {
    let mosquitto = Mosquitto::start();
    let alertmanager = Alertmanager::start();
    let running = start_alerter_with(&mosquitto, &alertmanager.url(), |c| {
        // Long enough for the store's terminals to be recognised together,
        // shorter than the simulated outage (9 ticks of 300 ms).
        c.alerting.rules.offline.for_ = Duration::from_secs(1);
        // The store's first terminals wait for its outage to form rather
        // than page on their own.
        c.alerting.correlation.wait = Duration::from_secs(2);
        c.alerting.correlation.clear_after = Duration::from_secs(2);
    })
    .await;
    let store = running.store.clone();
    // 12 terminals of one merchant in two stores; the first store's six
    // lose their uplink together from tick 20 to 29 (unclean: last wills).
    let sim = tillwatch_sim::SimConfig {
        broker: mosquitto.url(),
        devices: 12,
        merchants: 1,
        stores_per_merchant: 2,
        interval: Duration::from_millis(300),
        readings_per_device: Some(40),
        faults: tillwatch_sim::Faults {
            store_outage: true,
            ..tillwatch_sim::Faults::none()
        },
        ..tillwatch_sim::SimConfig::default()
    };
    let sim = tokio::spawn(tillwatch_sim::run(sim, watch::channel(false).1));
    // The page arrives while the outage lasts (it resolves 2 s after).
    let mut pages = Vec::new();
    wait_for(
        "the store page at Alertmanager",
        Duration::from_secs(30),
        || {
            pages = alertmanager.alerts();
            pages
                .iter()
                .any(|a| a["labels"]["alertname"] == "store_offline")
        },
    )
    .await;
    let report = sim.await.unwrap().unwrap();
    assert_eq!(report.outages, 6, "{report:?}");
    let names: Vec<_> = pages
        .iter()
        .map(|a| format!("{} {}", a["labels"]["alertname"], a["labels"]["store_id"]))
        .collect();
    assert_eq!(
        names,
        ["\"store_offline\" \"m-000-s0\""],
        "one page, no terminal pages"
    );
    assert!(
        pages[0]["annotations"]["summary"]
            .as_str()
            .is_some_and(|s| s.contains("of 6 terminals")),
        "{}",
        pages[0]
    );
    // Its link opens the store's page, whose data lists the store.
    let link = pages[0]["generatorURL"].as_str().unwrap_or_default();
    let query = running.follow(link);
    assert_eq!(query.get("id").map(String::as_str), Some("m-000"), "{link}");
    assert_eq!(
        query.get("store").map(String::as_str),
        Some("m-000-s0"),
        "{link}"
    );
    let (status, merchant) = running.api(&format!(
        "/api/v1/merchants/{}?store={}",
        query["id"], query["store"]
    ));
    assert_eq!(status, 200, "{merchant}");
    assert!(
        merchant["devices"].as_array().is_some_and(|d| d.len() == 6),
        "the store's six terminals: {merchant}"
    );
    // Each terminal's own alert is there, attached to the store's.
    let alerts = store
        .alerts(tillwatch_meta::AlertFilter::All, 100)
        .await
        .unwrap();
    let store_alert = alerts
        .iter()
        .find(|a| a.rule == "store_offline")
        .expect("store alert");
    let held: Vec<_> = alerts.iter().filter(|a| a.rule == "offline").collect();
    assert!(held.len() >= 3, "{alerts:?}");
    assert!(
        held.iter()
            .all(|a| a.held_by.as_deref() == Some(store_alert.alert_id.as_str())),
        "{held:?}"
    );
    // The outage ended with the simulated one (its terminals reconnected):
    // the store's page resolves at Alertmanager.
    wait_for(
        "the store page resolved at Alertmanager",
        Duration::from_secs(60),
        || {
            alertmanager
                .alerts_named("store_offline", "store_id", "m-000-s0")
                .is_empty()
        },
    )
    .await;
    running.stop().await;
}

/// A terminal of merchant `m-9` connected with its last will (offline,
/// connection lost); aborting the returned task breaks the socket.
fn m9_terminal(port: u16, id: &str) -> (AsyncClient, tokio::task::JoinHandle<()>) {
    let will = pb::DeviceStatus {
        device_id: id.into(),
        boot_id: 7,
        state: pb::ConnectionState::Offline as i32,
        reason: pb::StatusReason::ConnectionLost as i32,
        at_ms: UtcMillis::now().0,
    }
    .encode_to_vec();
    terminal_with_will(port, id, &format!("tw/v1/m-9/{id}"), will)
}

/// How many of `ids` the alerter has online.
async fn online_count(store: &MetaStore, ids: &[String]) -> usize {
    let mut n = 0;
    for id in ids {
        let history = store.connectivity_history(id, 1).await.unwrap_or_default();
        if history
            .first()
            .is_some_and(|h| matches!(h.to, ConnState::Online))
        {
            n += 1;
        }
    }
    n
}

/// What terminal `id` of merchant `m-9`, store `store`, says when it
/// connects: who it is, that it is online, and one reading.
async fn announce(client: &AsyncClient, id: &str, store: &str) {
    let topic = format!("tw/v1/m-9/{id}");
    let info = pb::DeviceInfo {
        device_id: id.into(),
        boot_id: 7,
        model: "A920".into(),
        serial: format!("sn-{id}"),
        firmware_version: "2.9.0".into(),
        app_version: "4.1.0".into(),
        merchant_id: "m-9".into(),
        store_id: store.into(),
        time_zone: "UTC".into(),
        at_ms: UtcMillis::now().0,
    };
    let online = pb::DeviceStatus {
        device_id: id.into(),
        boot_id: 7,
        state: pb::ConnectionState::Online as i32,
        reason: pb::StatusReason::Birth as i32,
        at_ms: UtcMillis::now().0,
    };
    let mut reading = pb::TelemetryBatch::decode(telemetry(1).as_slice()).unwrap();
    reading.readings[0].device_id = id.into();
    reading.readings[0].boot_id = 7;
    for (leaf, payload, retain) in [
        ("info", info.encode_to_vec(), true),
        ("status", online.encode_to_vec(), true),
        ("telemetry", reading.encode_to_vec(), false),
    ] {
        client
            .publish(format!("{topic}/{leaf}"), QoS::AtLeastOnce, retain, payload)
            .await
            .unwrap();
    }
}

/// The audit's merchant outage: every terminal of a merchant's three
/// stores loses its connection at once (last wills), then comes back.
/// Alertmanager gets one page, the merchant's, whose link opens the
/// merchant's page; once the terminals are back the store alerts and then
/// the merchant alert resolve there (`correlation.clear_after`, 2 s here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_merchant_outage_is_one_page_that_resolves_when_its_terminals_return() {
    let mosquitto = Mosquitto::start();
    let alertmanager = Alertmanager::start();
    let running = start_alerter_with(&mosquitto, &alertmanager.url(), |c| {
        c.alerting.rules.offline.for_ = Duration::from_secs(1);
        c.alerting.correlation.wait = Duration::from_secs(3);
        c.alerting.correlation.clear_after = Duration::from_secs(2);
    })
    .await;
    let store = running.store.clone();
    let ids: Vec<String> = (0..9).map(|i| format!("term-m9-{i}")).collect();
    let store_of = |i: usize| format!("m-9-s{}", i / 3);
    let connect = |i: usize| m9_terminal(mosquitto.port, &ids[i]);
    let mut terminals = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        let (client, task) = connect(i);
        announce(&client, id, &store_of(i)).await;
        terminals.push((client, task));
    }
    let until = Instant::now() + Duration::from_secs(30);
    while online_count(&store, &ids).await < ids.len() {
        assert!(Instant::now() < until, "the terminals never came online");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // All nine lose their connections at once.
    for (client, task) in terminals.drain(..) {
        task.abort();
        drop(client);
    }
    wait_for(
        "the merchant page at Alertmanager",
        Duration::from_secs(60),
        || {
            !alertmanager
                .alerts_named("merchant_offline", "merchant_id", "m-9")
                .is_empty()
        },
    )
    .await;
    // Every terminal's and store's alert fires, held by the merchant's:
    // none of them will page.
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let alerts = store
            .alerts(tillwatch_meta::AlertFilter::All, 100)
            .await
            .unwrap();
        let held = |rule: &str| {
            alerts
                .iter()
                .filter(|a| {
                    a.rule == rule
                        && a.state == tillwatch_meta::AlertState::Firing
                        && a.held_by.is_some()
                })
                .count()
        };
        if held("offline") == 9 && held("store_offline") == 3 {
            break;
        }
        assert!(Instant::now() < until, "not all held: {alerts:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let names: Vec<String> = alertmanager
        .alerts()
        .iter()
        .map(|a| a["labels"]["alertname"].as_str().unwrap_or("?").to_string())
        .collect();
    assert_eq!(names, ["merchant_offline"], "one page for the outage");
    let page = &alertmanager.alerts_named("merchant_offline", "merchant_id", "m-9")[0];
    assert_eq!(
        page["annotations"]["offline_stores"], "m-9-s0,m-9-s1,m-9-s2",
        "{page}"
    );
    let link = page["generatorURL"].as_str().unwrap_or_default();
    let query = running.follow(link);
    assert_eq!(query.get("id").map(String::as_str), Some("m-9"), "{link}");
    let (status, merchant) = running.api("/api/v1/merchants/m-9");
    assert_eq!(status, 200, "{merchant}");
    assert_eq!(
        merchant["stores"].as_array().map(Vec::len),
        Some(3),
        "{merchant}"
    );

    // They come back: the stores resolve, then the merchant.
    for (i, id) in ids.iter().enumerate() {
        let (client, task) = connect(i);
        announce(&client, id, &store_of(i)).await;
        terminals.push((client, task));
    }
    wait_for(
        "every page resolved at Alertmanager",
        Duration::from_secs(60),
        || alertmanager.alerts().is_empty(),
    )
    .await;
    let alerts = store
        .alerts(tillwatch_meta::AlertFilter::All, 100)
        .await
        .unwrap();
    for rule in ["merchant_offline", "store_offline"] {
        let of_rule: Vec<_> = alerts.iter().filter(|a| a.rule == rule).collect();
        assert!(!of_rule.is_empty(), "no {rule} alert: {alerts:?}");
        assert!(
            of_rule
                .iter()
                .all(|a| a.state == tillwatch_meta::AlertState::Resolved),
            "{of_rule:?}"
        );
    }
    running.stop().await;
}

/// Publishes telemetry for `device` every 500 ms, whatever the broker's
/// state (a publish the client cannot queue is dropped; QoS 1 resends the
/// rest after a reconnect).
fn keep_reporting(
    port: u16,
    device: &'static str,
) -> (tokio::task::JoinHandle<()>, tokio::task::JoinHandle<()>) {
    let topic = format!("tw/v1/m-1/{device}");
    let will = pb::DeviceStatus {
        device_id: device.into(),
        boot_id: 42,
        state: pb::ConnectionState::Offline as i32,
        reason: pb::StatusReason::ConnectionLost as i32,
        at_ms: UtcMillis::now().0,
    }
    .encode_to_vec();
    let (client, connection) = terminal_with_will(port, device, &topic, will);
    let reporter = tokio::spawn(async move {
        for seq in 1.. {
            let batch = pb::TelemetryBatch {
                readings: vec![pb::Reading {
                    device_id: device.into(),
                    boot_id: 42,
                    seq,
                    sampled_at_ms: UtcMillis::now().0,
                    kind: Some(pb::reading::Kind::Battery(pb::Battery {
                        level_pct: 70,
                        charging: false,
                        temperature_celsius: 30.0,
                        voltage_mv: 4000,
                        health_pct: 95,
                        cycle_count: 3,
                    })),
                }],
            };
            let _ = client.try_publish(
                format!("{topic}/telemetry"),
                QoS::AtLeastOnce,
                false,
                batch.encode_to_vec(),
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    });
    (reporter, connection)
}

/// The broker is stopped (as an upgrade or a crash loop does) for longer
/// than any terminal's allowed silence. Going down, Mosquitto publishes
/// the terminals' last wills. The alerter knows its own connection is
/// down: no terminal is paged, neither for those wills nor for the silence
/// it could not hear; the outage is one `ingest_outage` page saying the
/// broker is lost, and it resolves once the broker is back. A terminal
/// that does not come back with the others is still paged, once the
/// correlation wait from the alerter hearing again is over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_outage_is_one_page_not_a_page_per_terminal_and_it_ends() {
    let mut mosquitto = Mosquitto::start();
    let alertmanager = Alertmanager::start();
    let running = start_alerter_with(&mosquitto, &alertmanager.url(), |c| {
        c.alerter.silence_floor = Duration::from_secs(3);
        c.alerter.silence_ceiling = Duration::from_secs(3);
        c.alerter.silence_initial_gap = Duration::from_secs(1);
        c.alerting.correlation.clear_after = Duration::from_secs(2);
        c.alerting.correlation.wait = Duration::from_secs(5);
    })
    .await;
    let store = running.store.clone();
    let port = mosquitto.port;
    let (back_reporter, _back_connection) = keep_reporting(port, "t-back");
    let (gone_reporter, gone_connection) = keep_reporting(port, "t-gone");
    let online = |device: &'static str| {
        let store = store.clone();
        async move {
            let history = store.connectivity_history(device, 1).await.ok();
            history.and_then(|h| h.first().map(|h| h.to)) == Some(ConnState::Online)
        }
    };
    let until = Instant::now() + Duration::from_secs(30);
    while !(online("t-back").await && online("t-gone").await) {
        assert!(Instant::now() < until, "the terminals never came online");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The broker goes away past the 30 s the alerter waits before paging
    // its own lost connection: ten times the allowed silence. t-gone dies
    // meanwhile, so it will not be back.
    mosquitto.stop();
    let stopped = Instant::now();
    gone_reporter.abort();
    gone_connection.abort();
    let fleet = || alertmanager.alerts_named("ingest_outage", "scope", "fleet");
    wait_for(
        "the ingest_outage page for the lost broker",
        Duration::from_secs(60),
        || !fleet().is_empty(),
    )
    .await;
    let summary = fleet()[0]["annotations"]["summary"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        summary.contains("no connection to the MQTT broker"),
        "{summary}"
    );
    let paged_after = stopped.elapsed();
    assert!(
        paged_after >= Duration::from_secs(30),
        "paged {paged_after:?} after the broker stopped: before the wait"
    );
    // Thirty seconds is ten allowed silences: neither went offline by
    // silence, and neither was paged (t-gone may be offline by the will
    // the broker published as it went down).
    for device in ["t-back", "t-gone"] {
        let history = store.connectivity_history(device, 5).await.unwrap();
        assert!(
            !history
                .iter()
                .any(|h| h.to == ConnState::Offline(OfflineReason::Silence)),
            "{device} was taken offline for a silence the alerter could not hear: {history:?}"
        );
        assert!(
            alertmanager
                .alerts_named("offline", "device_id", device)
                .is_empty(),
            "{device} was paged while the broker was down: {history:?}"
        );
    }

    // Back: t-back reconnects and reports; the outage resolves.
    mosquitto.start_again();
    wait_for(
        "the ingest_outage page to resolve",
        Duration::from_secs(60),
        || fleet().is_empty(),
    )
    .await;
    // t-gone is silent after the return: paged on its own.
    wait_for(
        "the offline page for t-gone",
        Duration::from_secs(30),
        || {
            !alertmanager
                .alerts_named("offline", "device_id", "t-gone")
                .is_empty()
        },
    )
    .await;
    assert!(online("t-back").await);
    back_reporter.abort();
    let store = running.stop().await;
    let alerts = store
        .alerts(tillwatch_meta::AlertFilter::All, 100)
        .await
        .unwrap();
    let mut paged = Vec::new();
    for a in &alerts {
        let delivered = store
            .delivery_of("alertmanager", &a.alert_id)
            .await
            .unwrap()
            .and_then(|(state, _)| state);
        if delivered.is_some() {
            paged.push((a.rule.as_str(), a.subject.as_str()));
        }
    }
    assert_eq!(
        paged.len(),
        2,
        "one page for the outage, one for the terminal that stayed away: {paged:?}"
    );
    assert!(paged.contains(&("ingest_outage", "fleet")), "{paged:?}");
    assert!(paged.contains(&("offline", "t-gone")), "{paged:?}");
}

/// Every terminal of the fleet (twelve, in four stores of one merchant)
/// loses its connection in the same second: the cause is on our side, and
/// Alertmanager gets one page, `ingest_outage`, whose link opens the fleet
/// page; the merchant, store and terminal alerts under it stay held. When
/// the terminals return, all of it resolves there and nothing else was
/// ever sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_wide_drop_is_one_ingest_outage_page_that_resolves() {
    let mosquitto = Mosquitto::start();
    let alertmanager = Alertmanager::start();
    let running = start_alerter_with(&mosquitto, &alertmanager.url(), |c| {
        c.alerting.evaluation_interval = Duration::from_secs(1);
        c.alerting.rules.offline.for_ = Duration::from_secs(1);
        c.alerting.correlation.wait = Duration::from_secs(3);
        c.alerting.correlation.clear_after = Duration::from_secs(2);
    })
    .await;
    let store = running.store.clone();
    let ids: Vec<String> = (0..12).map(|i| format!("term-fleet-{i}")).collect();
    let store_of = |i: usize| format!("m-9-s{}", i / 3);
    let connect = |i: usize| m9_terminal(mosquitto.port, &ids[i]);
    let mut terminals = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        let (client, task) = connect(i);
        announce(&client, id, &store_of(i)).await;
        terminals.push((client, task));
    }
    let until = Instant::now() + Duration::from_secs(30);
    while online_count(&store, &ids).await < ids.len() {
        assert!(Instant::now() < until, "the terminals never came online");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    for (client, task) in terminals.drain(..) {
        task.abort();
        drop(client);
    }
    let fleet = || alertmanager.alerts_named("ingest_outage", "scope", "fleet");
    wait_for(
        "the ingest_outage page at Alertmanager",
        Duration::from_secs(60),
        || !fleet().is_empty(),
    )
    .await;
    // Past every wait: still the one page.
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let alerts = store
            .alerts(tillwatch_meta::AlertFilter::Open, 100)
            .await
            .unwrap();
        let held = |rule: &str| {
            alerts
                .iter()
                .filter(|a| a.rule == rule && a.held_by.is_some())
                .count()
        };
        if held("offline") == 12 && held("store_offline") == 4 && held("merchant_offline") == 1 {
            break;
        }
        assert!(Instant::now() < until, "not all held: {alerts:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let names: Vec<String> = alertmanager
        .alerts()
        .iter()
        .map(|a| a["labels"]["alertname"].as_str().unwrap_or("?").to_string())
        .collect();
    assert_eq!(names, ["ingest_outage"], "one page for the outage");
    let page = &fleet()[0];
    assert!(
        page["annotations"]["summary"]
            .as_str()
            .is_some_and(|s| s.starts_with("12 of 12 terminals are offline")),
        "{page}"
    );
    let link = page["generatorURL"].as_str().unwrap_or_default();
    assert!(link.ends_with("/ui/"), "{link}");
    running.follow(link);

    // They all come back: everything resolves at Alertmanager.
    let mut back = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        let (client, task) = connect(i);
        announce(&client, id, &store_of(i)).await;
        back.push((client, task));
    }
    wait_for(
        "every alert resolved at Alertmanager",
        Duration::from_secs(60),
        || alertmanager.alerts().is_empty(),
    )
    .await;
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let open = store
            .alerts(tillwatch_meta::AlertFilter::Open, 100)
            .await
            .unwrap();
        if open.is_empty() {
            break;
        }
        assert!(Instant::now() < until, "still open: {open:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let store = running.stop().await;
    let alerts = store
        .alerts(tillwatch_meta::AlertFilter::All, 100)
        .await
        .unwrap();
    let mut sent = Vec::new();
    for a in &alerts {
        assert_eq!(a.state, tillwatch_meta::AlertState::Resolved, "{a:?}");
        if let Some((state, _)) = store
            .delivery_of("alertmanager", &a.alert_id)
            .await
            .unwrap()
        {
            sent.push((a.rule.clone(), state));
        }
    }
    assert_eq!(
        sent,
        [(
            "ingest_outage".to_string(),
            Some(tillwatch_meta::AlertState::Resolved)
        )],
        "only the fleet page was ever sent (the merchant's, released as the \
         fleet alert resolved first, must not page an outage that is over)"
    );
}
