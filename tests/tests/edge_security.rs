//! Security at the edge, with a throwaway CA made by `openssl` and
//! password files made by `mosquitto_passwd`:
//!
//! - The embedded broker of `standalone` takes MQTT over TLS and checks
//!   every login against its password file: simulated terminals with their
//!   own logins reach the lake over TLS; a wrong password, no login, a
//!   client that does not trust the broker's CA, and plain MQTT on the TLS
//!   port are all refused.
//! - A gateway process reads a production-configured Mosquitto (TLS,
//!   password file, the project's ACL) over TLS, its password from a file;
//!   the ACL keeps a terminal from publishing under another's id; with its
//!   log at debug level, no secret appears in it.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use prost::Message;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tillwatch_config::{Config, EmbeddedBrokerConfig};
use tillwatch_domain::UtcMillis;
use tillwatch_integration_tests::tls::{TestCa, password_file};
use tillwatch_integration_tests::{
    InProcess, LakeContents, Mosquitto, RoleProcess, start_across_hour,
};
use tillwatch_proto::telemetry::v1 as pb;
use tillwatch_serve::EmbeddedBroker;
use tillwatch_sim::{DeviceSecurity, Faults, SimConfig};
use tokio::sync::watch;

const FLEET_PASSWORD: &str = "fleet-test-password-7Hq2";

/// Whether a client with these options gets a successful CONNACK within
/// 10 s (false: refused, dropped, or the TLS handshake failed).
async fn connects(options: MqttOptions) -> bool {
    let (_client, mut eventloop) = AsyncClient::new(options, 10);
    let until = Instant::now() + Duration::from_secs(10);
    while Instant::now() < until {
        match tokio::time::timeout(Duration::from_secs(10), eventloop.poll()).await {
            Ok(Ok(Event::Incoming(Packet::ConnAck(ack)))) => {
                return ack.code == rumqttc::ConnectReturnCode::Success;
            }
            Ok(Ok(_)) => continue,
            Ok(Err(_)) | Err(_) => return false,
        }
    }
    false
}

fn options(id: &str, addr: SocketAddr, ca: Option<&Path>) -> MqttOptions {
    let mut o = MqttOptions::new(id, addr.ip().to_string(), addr.port());
    o.set_keep_alive(Duration::from_secs(30));
    if let Some(ca) = ca {
        o.set_transport(tillwatch_proto::tls::client_transport(Some(ca)).unwrap());
    }
    o
}

/// Connects as `user` (the fleet password, over TLS trusting `ca`),
/// publishes one QoS 1 message and waits for its PUBACK: `Err` when the
/// broker refuses or drops the connection first.
async fn publish_as(
    addr: SocketAddr,
    ca: Option<&Path>,
    user: &str,
    topic: &str,
    payload: Vec<u8>,
) -> anyhow::Result<()> {
    let mut o = options(user, addr, ca);
    o.set_credentials(user, FLEET_PASSWORD);
    let (client, mut eventloop) = AsyncClient::new(o, 10);
    client
        .publish(topic, QoS::AtLeastOnce, false, payload)
        .await?;
    let until = Instant::now() + Duration::from_secs(10);
    while Instant::now() < until {
        match tokio::time::timeout(Duration::from_secs(10), eventloop.poll()).await {
            Ok(Ok(Event::Incoming(Packet::PubAck(_)))) => return Ok(()),
            Ok(Ok(_)) => continue,
            Ok(Err(e)) => return Err(e.into()),
            Err(_) => break,
        }
    }
    anyhow::bail!("no PUBACK within 10 s")
}

/// A battery reading at 3 % of `device`, boot 77 (which no simulated
/// terminal uses), as its telemetry payload.
fn forged_reading(device: &str) -> Vec<u8> {
    pb::TelemetryBatch {
        readings: vec![pb::Reading {
            device_id: device.into(),
            boot_id: 77,
            seq: 0,
            sampled_at_ms: UtcMillis::now().0,
            kind: Some(pb::reading::Kind::Battery(pb::Battery {
                level_pct: 3,
                charging: false,
                temperature_celsius: 30.0,
                voltage_mv: 3500,
                health_pct: 90,
                cycle_count: 1,
            })),
        }],
    }
    .encode_to_vec()
}

/// Connects as `user` with the fleet password (plain MQTT) and subscribes
/// to `filter`: whether the broker granted it (a SUBACK without failure)
/// before closing the connection.
async fn subscribes_as(addr: SocketAddr, user: &str, filter: &str) -> bool {
    let mut o = options(user, addr, None);
    o.set_credentials(user, FLEET_PASSWORD);
    let (client, mut eventloop) = AsyncClient::new(o, 10);
    client.subscribe(filter, QoS::AtLeastOnce).await.unwrap();
    let until = Instant::now() + Duration::from_secs(10);
    while Instant::now() < until {
        match tokio::time::timeout(Duration::from_secs(10), eventloop.poll()).await {
            Ok(Ok(Event::Incoming(Packet::SubAck(ack)))) => {
                return ack
                    .return_codes
                    .iter()
                    .all(|c| !matches!(c, rumqttc::SubscribeReasonCode::Failure));
            }
            Ok(Ok(_)) => continue,
            Ok(Err(_)) | Err(_) => return false,
        }
    }
    false
}

fn fleet(broker: String, ca: &Path, devices: usize, readings: u64) -> SimConfig {
    SimConfig {
        broker,
        devices,
        merchants: 1,
        stores_per_merchant: 1,
        interval: Duration::from_secs(60),
        readings_per_device: Some(readings),
        seed: 5,
        start_ms: Some(start_across_hour(2)),
        faults: Faults::none(),
        connect_concurrency: 8,
        security: DeviceSecurity {
            ca_file: Some(ca.to_path_buf()),
            password: Some(FLEET_PASSWORD.into()),
        },
        durability: Default::default(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminals_reach_the_embedded_broker_over_tls_with_their_own_logins() {
    let ca = TestCa::new("tillwatch-test-ca");
    let stranger = TestCa::new("some-other-ca");
    let dir = tempfile::tempdir().unwrap();
    let passwd = dir.path().join("passwd");
    let devices: Vec<String> = (0..4).map(|i| format!("term-{i:05}")).collect();
    let accounts: Vec<(&str, &str)> = devices
        .iter()
        .map(|d| (d.as_str(), FLEET_PASSWORD))
        .collect();
    password_file(&passwd, &accounts);

    let broker = EmbeddedBroker::start_with(&EmbeddedBrokerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        tls_listen: Some("127.0.0.1:0".parse().unwrap()),
        cert_file: Some(ca.broker_cert.clone()),
        key_file: Some(ca.broker_key.clone()),
        password_file: Some(passwd.clone()),
        ..EmbeddedBrokerConfig::default()
    })
    .unwrap();
    let tls = broker.tls_addr().expect("a TLS listener");

    let mut config = Config {
        data_dir: dir.path().join("data"),
        ..Config::default()
    };
    config.scheduler.enabled = false;
    config.mqtt.client_id = "tls-test-gateway".into();
    // The in-process gateway logs in with the run's own account.
    let standalone = InProcess::start(config, Some(broker)).await;

    let report = tillwatch_sim::run(
        fleet(format!("mqtts://{tls}"), &ca.ca_cert, devices.len(), 10),
        watch::channel(false).1,
    )
    .await
    .unwrap();
    assert_eq!(report.unacked_readings, 0);
    assert_eq!(report.readings, 40);
    let lake = dir.path().join("data/lake");
    LakeContents::wait_for_readings(&lake, 40, Duration::from_secs(60)).await;

    let login = |mut o: MqttOptions, user: &str, password: &str| {
        o.set_credentials(user, password);
        o
    };
    assert!(
        connects(login(
            options("term-00001", tls, Some(&ca.ca_cert)),
            "term-00001",
            FLEET_PASSWORD
        ))
        .await,
        "the right login over TLS connects"
    );
    assert!(
        !connects(login(
            options("term-00001", tls, Some(&ca.ca_cert)),
            "term-00001",
            "not-the-password"
        ))
        .await,
        "a wrong password is refused"
    );
    assert!(
        !connects(login(
            options("term-09999", tls, Some(&ca.ca_cert)),
            "term-09999",
            FLEET_PASSWORD
        ))
        .await,
        "a username not in the file is refused"
    );
    assert!(
        !connects(options("anonymous", tls, Some(&ca.ca_cert))).await,
        "no login is refused"
    );
    assert!(
        !connects(login(
            options("term-00001", tls, Some(&stranger.ca_cert)),
            "term-00001",
            FLEET_PASSWORD
        ))
        .await,
        "a client that does not trust the broker's CA does not connect"
    );
    assert!(
        !connects(login(
            options("term-00001", tls, None),
            "term-00001",
            FLEET_PASSWORD
        ))
        .await,
        "plain MQTT on the TLS port does not connect"
    );

    standalone.stop().await;
    LakeContents::read(&lake).assert_exactly(40);
}

/// With logins on the embedded broker, a terminal is only itself: it
/// cannot publish a reading or a status on another terminal's topics, nor
/// subscribe to the fleet's; each attempt closes its connection and is
/// counted, and its own readings still land.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_the_embedded_broker_a_terminal_cannot_act_as_another() {
    let dir = tempfile::tempdir().unwrap();
    let passwd = dir.path().join("passwd");
    password_file(
        &passwd,
        &[
            ("term-00000", FLEET_PASSWORD),
            ("term-00001", FLEET_PASSWORD),
        ],
    );
    let broker = EmbeddedBroker::start_with(&EmbeddedBrokerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        password_file: Some(passwd),
        ..EmbeddedBrokerConfig::default()
    })
    .unwrap();
    let addr = broker.addr();
    let mut config = Config {
        data_dir: dir.path().join("data"),
        ..Config::default()
    };
    config.scheduler.enabled = false;
    config.mqtt.client_id = "acl-test-gateway".into();
    let standalone = InProcess::start(config, Some(broker)).await;

    let status = pb::DeviceStatus {
        device_id: "term-00000".into(),
        boot_id: 77,
        state: pb::ConnectionState::Offline as i32,
        reason: pb::StatusReason::Shutdown as i32,
        at_ms: UtcMillis::now().0,
    }
    .encode_to_vec();
    for (topic, payload) in [
        (
            "tw/v1/m-000/term-00000/telemetry",
            forged_reading("term-00000"),
        ),
        ("tw/v1/m-000/term-00000/status", status),
        (
            "tw/v1/m-000/term-00001/telemetry/extra",
            forged_reading("term-00001"),
        ),
    ] {
        let sent = publish_as(addr, None, "term-00001", topic, payload).await;
        assert!(sent.is_err(), "term-00001 published on {topic}");
    }
    for filter in [
        "#",
        "tw/v1/#",
        "tw/v1/+/+/telemetry",
        "tw/v1/m-000/term-00000/#",
    ] {
        assert!(
            !subscribes_as(addr, "term-00001", filter).await,
            "term-00001 subscribed to {filter}"
        );
    }
    assert!(
        subscribes_as(addr, "term-00001", "tw/v1/m-000/term-00001/#").await,
        "a terminal may subscribe to its own topics"
    );
    publish_as(
        addr,
        None,
        "term-00001",
        "tw/v1/m-000/term-00001/telemetry",
        forged_reading("term-00001"),
    )
    .await
    .expect("a terminal publishes under its own id");

    let lake = dir.path().join("data/lake");
    LakeContents::wait_for_readings(&lake, 1, Duration::from_secs(60)).await;
    let (code, metrics) =
        tillwatch_integration_tests::http_get(standalone.http, "/metrics").unwrap();
    assert_eq!(code, 200);
    for reason in ["foreign_publish", "not_a_device_topic", "foreign_subscribe"] {
        assert!(
            metrics.contains(&format!(
                "tillwatch_broker_refused_total{{reason=\"{reason}\"}}"
            )),
            "{reason} is counted: {metrics}"
        );
    }
    let (_, devices) =
        tillwatch_integration_tests::http_get(standalone.http, "/api/v1/devices").unwrap();
    standalone.stop().await;
    let contents = LakeContents::read(&lake);
    contents.assert_exactly(1);
    assert_eq!(contents.readings[0].device_id, "term-00001");
    assert!(
        !devices.contains("term-00000"),
        "the forged status made term-00000 known: {devices}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_reads_a_secured_mosquitto_over_tls_and_the_acl_pins_terminals_to_their_ids() {
    let ca = TestCa::new("tillwatch-test-ca");
    let dir = tempfile::tempdir().unwrap();
    let gateway_password = "gateway-s3cret-Zr81kq";
    let passwd = dir.path().join("passwd");
    password_file(
        &passwd,
        &[
            ("tillwatch-gateway", gateway_password),
            ("term-00000", FLEET_PASSWORD),
            ("term-00001", FLEET_PASSWORD),
        ],
    );
    let mosquitto = Mosquitto::start_secured(&ca, &passwd);
    let secret = dir.path().join("mqtt-password");
    std::fs::write(&secret, format!("{gateway_password}\n")).unwrap();
    let log = dir.path().join("gateway.log");
    let url = mosquitto.url();
    let data = dir.path().join("data");
    // The operator's record: both terminals belong to m-000, term-00001
    // to its store m-000-s0.
    let provisioning = dir.path().join("terminals.csv");
    std::fs::write(
        &provisioning,
        "device_id,merchant_id,store_id\nterm-00000,m-000\nterm-00001,m-000,m-000-s0\n",
    )
    .unwrap();
    let mut gateway = RoleProcess::role_logging_to(
        &[
            "gateway",
            "--broker",
            &url,
            "--http-listen",
            "127.0.0.1:0",
            "--data-dir",
            data.to_str().unwrap(),
        ],
        &[
            ("TILLWATCH__MQTT__CLIENT_ID", "tls-gateway-1"),
            ("TILLWATCH__MQTT__USERNAME", "tillwatch-gateway"),
            ("TILLWATCH__MQTT__PASSWORD_FILE", secret.to_str().unwrap()),
            ("TILLWATCH__MQTT__CA_FILE", ca.ca_cert.to_str().unwrap()),
            (
                "TILLWATCH__GATEWAY__PROVISIONING_FILE",
                provisioning.to_str().unwrap(),
            ),
            ("RUST_LOG", "debug"),
        ],
        &log,
    );
    gateway.ready().await;

    let report = tillwatch_sim::run(
        fleet(url.clone(), &ca.ca_cert, 2, 10),
        watch::channel(false).1,
    )
    .await
    .unwrap();
    assert_eq!(report.unacked_readings, 0);
    let lake = data.join("lake");
    LakeContents::wait_for_readings(&lake, 20, Duration::from_secs(60)).await;

    // term-00001, logged in as itself, publishes a reading that says it is
    // term-00000, under term-00000's topic: consistent on its face, so only
    // the broker's ACL can stop it (Mosquitto drops it, and closes the
    // connection). Then it publishes its own reading, on a new connection:
    // once that one is stored, the spoofed one would have been too.
    let addr: SocketAddr = format!("127.0.0.1:{}", mosquitto.port).parse().unwrap();
    let _refused = publish_as(
        addr,
        Some(&ca.ca_cert),
        "term-00001",
        "tw/v1/m-000/term-00000/telemetry",
        forged_reading("term-00000"),
    )
    .await;
    // term-00000 tries to read the fleet: the ACL gives a terminal no read
    // rights, so whatever its subscriptions, nothing reaches it.
    let mut spy_options = options("term-00000", addr, Some(&ca.ca_cert));
    spy_options.set_credentials("term-00000", FLEET_PASSWORD);
    let (spy, mut spy_events) = AsyncClient::new(spy_options, 10);
    for filter in [
        "#",
        "tw/v1/+/+/telemetry",
        "tw/v1/m-000/term-00001/telemetry",
    ] {
        spy.subscribe(filter, QoS::AtLeastOnce).await.unwrap();
    }
    let (subscribed_tx, mut subscribed) = watch::channel(0usize);
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let spied = {
        let seen = seen.clone();
        tokio::spawn(async move {
            while let Ok(event) = spy_events.poll().await {
                match event {
                    Event::Incoming(Packet::SubAck(_)) => {
                        subscribed_tx.send_modify(|n| *n += 1);
                    }
                    Event::Incoming(Packet::Publish(p)) => seen.lock().unwrap().push(p.topic),
                    _ => {}
                }
            }
        })
    };
    let _ = tokio::time::timeout(Duration::from_secs(10), subscribed.wait_for(|n| *n == 3)).await;
    // Under its own id but another merchant's topic: the ACL (which binds
    // the id, not the merchant) lets it through; the gateway checks the
    // provisioning record and dead-letters it, as it does an info message
    // that moves the terminal to another store and a terminal nobody
    // provisioned.
    let info = |store: &str| {
        pb::DeviceInfo {
            device_id: "term-00001".into(),
            boot_id: 77,
            model: "A920".into(),
            serial: "forged".into(),
            firmware_version: "1".into(),
            app_version: "1".into(),
            merchant_id: "m-000".into(),
            store_id: store.into(),
            time_zone: "UTC".into(),
            at_ms: UtcMillis::now().0,
        }
        .encode_to_vec()
    };
    for (topic, payload) in [
        (
            "tw/v1/m-999/term-00001/telemetry",
            forged_reading("term-00001"),
        ),
        ("tw/v1/m-000/term-00001/info", info("m-999-s0")),
    ] {
        publish_as(addr, Some(&ca.ca_cert), "term-00001", topic, payload)
            .await
            .expect("the broker's ACL binds the id only");
    }
    publish_as(
        addr,
        Some(&ca.ca_cert),
        "term-00001",
        "tw/v1/m-000/term-00001/telemetry",
        forged_reading("term-00001"),
    )
    .await
    .expect("a terminal publishes under its own id");
    LakeContents::wait_for_readings(&lake, 21, Duration::from_secs(60)).await;
    tillwatch_integration_tests::wait_for(
        "the wrong merchant and store dead-lettered",
        Duration::from_secs(30),
        || {
            let reasons = LakeContents::read(&lake).dead_letter_reasons;
            reasons.get("wrong_merchant") == Some(&1) && reasons.get("wrong_store") == Some(&1)
        },
    )
    .await;
    assert_eq!(
        gateway.metric_labelled(
            "tillwatch_gateway_rejected_total",
            "reason=\"wrong_merchant\""
        ),
        Some(1.0)
    );
    // The gateway, subscribed like the spy, has stored it: had the broker
    // sent it to the spy, it would have arrived by now.
    spied.abort();
    drop(spy);
    let seen = seen.lock().unwrap().clone();
    assert!(
        seen.is_empty(),
        "term-00000 read other terminals' messages: {seen:?}"
    );
    let contents = LakeContents::read(&lake);
    contents.assert_exactly(21);
    assert!(
        contents
            .readings
            .iter()
            .all(|r| r.boot_id != 77 || r.device_id != "term-00000"),
        "the ACL let term-00001 publish as term-00000"
    );

    let status = gateway.terminate();
    assert!(status.success(), "{status:?}");
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(
        logged.contains("DEBUG") && logged.contains("connected to the broker"),
        "the gateway logged at debug level: {logged}"
    );
    for secret in [gateway_password, FLEET_PASSWORD] {
        assert!(
            !logged.contains(secret),
            "a password appears in the gateway's log"
        );
    }
}

/// Idle sockets cannot take the service down: 3,000 connections that
/// never send a request, against `http.max_connections = 200`. The oldest
/// are shed as new ones come, so the server holds at most 200 and the
/// process's descriptors stay bounded; `/healthz` answers within a second
/// in the middle of it; an idle socket the server kept is closed after
/// `http.header_read_timeout`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_sockets_neither_exhaust_descriptors_nor_lock_anyone_out() {
    use std::io::Read;
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config {
        data_dir: dir.path().join("data"),
        ..Config::default()
    };
    config.scheduler.enabled = false;
    config.mqtt.client_id = "idle-test-gateway".into();
    config.http.max_connections = 200;
    config.http.header_read_timeout = Duration::from_secs(2);
    let broker = EmbeddedBroker::start("127.0.0.1:0".parse().unwrap(), 100).unwrap();
    let standalone = InProcess::start(config, Some(broker)).await;
    let descriptors = || std::fs::read_dir("/proc/self/fd").unwrap().count();
    let before = descriptors();

    let http = standalone.http;
    let mut idle: Vec<std::net::TcpStream> = tokio::task::spawn_blocking(move || {
        (0..3_000)
            .map(|_| std::net::TcpStream::connect(http).unwrap())
            .collect()
    })
    .await
    .unwrap();
    let asked = Instant::now();
    let (code, body) = tillwatch_integration_tests::http_get(standalone.http, "/healthz").unwrap();
    let took = asked.elapsed();
    assert_eq!((code, body.as_str()), (200, "ok\n"));
    assert!(took < Duration::from_secs(1), "/healthz took {took:?}");
    // Ours are 3,000; the server's, 200 at most once the shed ones close.
    tillwatch_integration_tests::wait_for(
        "the server to hold at most 200 connections",
        Duration::from_secs(30),
        || descriptors() <= before + 3_000 + 200 + 20,
    )
    .await;
    let mut newest = idle.pop().unwrap();
    newest
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let waited = Instant::now();
    let read = newest.read(&mut [0u8; 16]);
    let closed = match &read {
        Ok(n) => *n == 0,
        Err(e) => !matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
    };
    assert!(
        closed,
        "an idle socket is closed by the server: {read:?} after {:?}",
        waited.elapsed()
    );
    drop(idle);
    let (code, _) = tillwatch_integration_tests::http_get(standalone.http, "/healthz").unwrap();
    assert_eq!(code, 200);
    standalone.stop().await;
}

/// The process's resident memory, from /proc.
fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS");
    kib / 1024.0
}

/// Publishes `payload` on `topic` as one client (QoS 1): whether the
/// broker acked it before the connection ended.
async fn flood_publish(
    addr: SocketAddr,
    id: &str,
    topic: &str,
    payload: Vec<u8>,
    retain: bool,
) -> bool {
    let mut o = options(id, addr, None);
    o.set_max_packet_size(2 * 1024 * 1024, 2 * 1024 * 1024);
    let (client, mut eventloop) = AsyncClient::new(o, 10);
    client
        .publish(topic, QoS::AtLeastOnce, retain, payload)
        .await
        .unwrap();
    let until = Instant::now() + Duration::from_secs(10);
    while Instant::now() < until {
        match tokio::time::timeout(Duration::from_secs(10), eventloop.poll()).await {
            Ok(Ok(Event::Incoming(Packet::PubAck(_)))) => return true,
            Ok(Ok(_)) => continue,
            Ok(Err(_)) | Err(_) => return false,
        }
    }
    false
}

/// `tillwatch standalone` as a process, its embedded broker flooded the
/// ways the audit found: 1 MB messages to topics nobody reads, 1 MB
/// readings (300 MB: more than the broker keeps for a subscription), 20 KB
/// retained messages on a thousand terminals' topics, and 3,000 idle
/// sockets on each of its MQTT and HTTP ports. It keeps answering
/// `/healthz` within a second, its memory stays within 250 MiB of where it
/// started, and a terminal's reading still lands.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooded_embedded_broker_stays_bounded_and_answering() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, http, mqtt) = standalone_process(dir.path()).await;
    let pid = child.id();
    let healthy = || {
        let asked = Instant::now();
        matches!(
            tillwatch_integration_tests::http_get(http, "/healthz"),
            Ok((200, _))
        ) && asked.elapsed() < Duration::from_secs(1)
    };
    let start_mib = rss_mib(pid);

    let megabyte = vec![0x5au8; 1_000_000];
    for i in 0..100 {
        let topic = format!("tw/v1/m-1/junk-{i}/nobody/reads/this");
        assert!(!flood_publish(mqtt, &format!("f-{i}"), &topic, megabyte.clone(), false).await);
    }
    for i in 0..300 {
        let topic = format!("tw/v1/m-1/big-{i}/telemetry");
        // Taken by the broker, then dead-lettered by the gateway.
        flood_publish(mqtt, &format!("b-{i}"), &topic, megabyte.clone(), false).await;
    }
    let retained = vec![0x11u8; 20_000];
    for i in 0..1_000 {
        let topic = format!("tw/v1/m-1/r-{i}/info");
        assert!(!flood_publish(mqtt, &format!("r-{i}"), &topic, retained.clone(), true).await);
    }
    let idle: Vec<std::net::TcpStream> = tokio::task::spawn_blocking(move || {
        (0..3_000)
            .flat_map(|_| [mqtt, http])
            .map(|addr| std::net::TcpStream::connect(addr).unwrap())
            .collect()
    })
    .await
    .unwrap();
    assert!(
        healthy(),
        "/healthz within a second, 6,000 idle sockets open"
    );
    let flooded_mib = rss_mib(pid);
    assert!(
        flooded_mib < start_mib + 250.0,
        "memory grew from {start_mib:.0} to {flooded_mib:.0} MiB"
    );

    // A terminal still gets through.
    let reading = forged_reading("t-ok");
    assert!(flood_publish(mqtt, "t-ok", "tw/v1/m-1/t-ok/telemetry", reading, false).await);
    LakeContents::wait_for_readings(&dir.path().join("lake"), 1, Duration::from_secs(60)).await;
    assert!(healthy());
    drop(idle);
    let _ = child.kill();
    let _ = child.wait();
    println!("standalone RSS: {start_mib:.0} MiB at start, {flooded_mib:.0} MiB flooded");
}

/// The sum of a metric over its label sets in a `/metrics` body.
fn metric_sum(http: SocketAddr, name: &str) -> f64 {
    let Ok((200, body)) = tillwatch_integration_tests::http_get(http, "/metrics") else {
        return 0.0;
    };
    body.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// `tillwatch standalone` on `dir` as a process, its scheduler and gRPC
/// off: (the child, its HTTP address, its MQTT address).
async fn standalone_process(dir: &Path) -> (std::process::Child, SocketAddr, SocketAddr) {
    let (http_port, mqtt_port) = (
        tillwatch_integration_tests::free_port(),
        tillwatch_integration_tests::free_port(),
    );
    let http: SocketAddr = format!("127.0.0.1:{http_port}").parse().unwrap();
    let mqtt: SocketAddr = format!("127.0.0.1:{mqtt_port}").parse().unwrap();
    let child = std::process::Command::new(tillwatch_integration_tests::tillwatch_bin())
        .args(["standalone", "--data-dir"])
        .arg(dir)
        .args([
            "--http-listen",
            &http.to_string(),
            "--mqtt-listen",
            &mqtt.to_string(),
        ])
        .env("TILLWATCH__GRPC__ENABLED", "false")
        .env("TILLWATCH__SCHEDULER__ENABLED", "false")
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    tillwatch_integration_tests::wait_for("standalone to answer", Duration::from_secs(60), || {
        matches!(
            tillwatch_integration_tests::http_get(http, "/readyz"),
            Ok((200, _))
        )
    })
    .await;
    (child, http, mqtt)
}

/// Publishes `messages` (topic, payload) at QoS 1 from one client and
/// waits for every PUBACK.
async fn publish_all(addr: SocketAddr, id: String, messages: Vec<(String, Vec<u8>)>) {
    let total = messages.len();
    let (client, mut eventloop) = AsyncClient::new(options(&id, addr, None), 200);
    let sender = tokio::spawn(async move {
        for (topic, payload) in messages {
            client
                .publish(topic, QoS::AtLeastOnce, false, payload)
                .await
                .unwrap();
        }
        client
    });
    let mut acked = 0;
    while acked < total {
        match tokio::time::timeout(Duration::from_secs(30), eventloop.poll()).await {
            Ok(Ok(Event::Incoming(Packet::PubAck(_)))) => acked += 1,
            Ok(Ok(_)) => {}
            Ok(Err(e)) => panic!("{id}: {e} after {acked} acks"),
            Err(_) => panic!("{id}: no PUBACK for 30 s after {acked}"),
        }
    }
    drop(sender.await.unwrap());
}

/// The audit's fake-id flood, through the embedded broker of a standalone
/// process (anonymous, on loopback): 20,000 made-up terminal ids, each
/// with 20 readings under 20 different boot ids (400,000 readings and
/// boots). Every reading is stored, and the process grows by less than
/// 150 MiB (the audit saw 310); restarted on the same data it starts
/// within 80 MiB of a fresh process (the audit saw 53 more than that flood's
/// baseline after a restart, every boot loaded back).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_made_up_terminals_and_boots_stays_within_a_memory_bound() {
    const DEVICES: usize = 20_000;
    const PER_DEVICE: u64 = 20;
    const CLIENTS: usize = 4;
    let dir = tempfile::tempdir().unwrap();
    let (mut child, http, mqtt) = standalone_process(dir.path()).await;
    let start_mib = rss_mib(child.id());

    let now = UtcMillis::now().0;
    let mut batches: Vec<Vec<(String, Vec<u8>)>> = vec![Vec::new(); CLIENTS];
    for d in 0..DEVICES {
        let device = format!("fake-{d:05}");
        let readings = (0..PER_DEVICE)
            .map(|i| pb::Reading {
                device_id: device.clone(),
                // Made-up boots: a different one for every reading.
                boot_id: (d as u64) << 20 | i,
                seq: i,
                sampled_at_ms: now - (PER_DEVICE - i) as i64 * 1_000,
                kind: Some(pb::reading::Kind::PaymentHealth(pb::PaymentHealth {
                    offline_queue_len: 0,
                    offline_queue_oldest_age_s: 0,
                    tamper_detected: false,
                    printer_paper_low: false,
                })),
            })
            .collect();
        let payload = pb::TelemetryBatch { readings }.encode_to_vec();
        batches[d % CLIENTS].push((format!("tw/v1/m-flood/{device}/telemetry"), payload));
    }
    let publishers: Vec<_> = batches
        .into_iter()
        .enumerate()
        .map(|(i, batch)| tokio::spawn(publish_all(mqtt, format!("flood-{i}"), batch)))
        .collect();
    for p in publishers {
        p.await.unwrap();
    }
    let total = (DEVICES as u64 * PER_DEVICE) as f64;
    tillwatch_integration_tests::wait_for(
        "every reading stored and every terminal seen online",
        Duration::from_secs(300),
        || {
            metric_sum(http, "tillwatch_gateway_readings_stored_total") >= total
                && metric_sum(http, "tillwatch_alerter_connectivity_changes_total")
                    >= DEVICES as f64
        },
    )
    .await;
    let flooded_mib = rss_mib(child.id());
    assert_eq!(
        metric_sum(http, "tillwatch_gateway_dedup_boots"),
        total,
        "every boot is within gateway.max_age, so every one is kept"
    );
    let _ = child.kill();
    let _ = child.wait();
    println!("fake-id flood: {start_mib:.0} MiB at start, {flooded_mib:.0} MiB flooded");
    assert!(
        flooded_mib < start_mib + 150.0,
        "memory grew from {start_mib:.0} to {flooded_mib:.0} MiB"
    );

    let (mut again, http, _) = standalone_process(dir.path()).await;
    let restarted_mib = rss_mib(again.id());
    let fresh_dir = tempfile::tempdir().unwrap();
    let (mut fresh, _, _) = standalone_process(fresh_dir.path()).await;
    let fresh_mib = rss_mib(fresh.id());
    assert_eq!(metric_sum(http, "tillwatch_gateway_dedup_boots"), total);
    for c in [&mut again, &mut fresh] {
        let _ = c.kill();
        let _ = c.wait();
    }
    println!("restarted on the flood's data: {restarted_mib:.0} MiB; fresh: {fresh_mib:.0} MiB");
    assert!(
        restarted_mib < fresh_mib + 80.0,
        "restarted at {restarted_mib:.0} MiB, a fresh process at {fresh_mib:.0} MiB"
    );
}

/// Runs curl with `args`: (exit status success, stdout, stderr).
fn curl(args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new("curl")
        .args(["-sS", "--max-time", "10"])
        .args(args)
        .output()
        .expect("curl is installed (tests/run installs it)");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// With `http.tls_cert_file` and `tls_key_file`, HTTP and gRPC speak TLS:
/// a client trusting the CA reads `/healthz` and calls the gRPC API; plain
/// HTTP on the same port gets nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_and_grpc_speak_tls_when_configured() {
    let ca = TestCa::new("tillwatch-http-ca");
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config {
        data_dir: dir.path().join("data"),
        ..Config::default()
    };
    config.scheduler.enabled = false;
    config.mqtt.client_id = "https-test-gateway".into();
    config.http.tls_cert_file = Some(ca.broker_cert.clone());
    config.http.tls_key_file = Some(ca.broker_key.clone());
    let viewer = "viewer-token-for-the-tls-test-0123456789";
    config.http.tokens =
        tillwatch_integration_tests::test_tokens(viewer, "operator-token-for-the-tls-test-987654");
    let broker = EmbeddedBroker::start("127.0.0.1:0".parse().unwrap(), 100).unwrap();
    // Ready means answering over TLS: InProcess polls plain HTTP, so it is
    // started without waiting and polled here.
    let http = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = http.local_addr().unwrap();
    let (stop, mut stopped) = watch::channel(false);
    let served = {
        let config = config.clone();
        tokio::spawn(async move {
            tillwatch_serve::run_standalone(config, http, None, Some(&broker), async move {
                let _ = stopped.wait_for(|s| *s).await;
            })
            .await
        })
    };
    let ca_file = ca.ca_cert.to_str().unwrap().to_string();
    let url = format!("https://127.0.0.1:{}/healthz", addr.port());
    let answered = tillwatch_integration_tests::eventually(Duration::from_secs(30), || {
        curl(&["--cacert", &ca_file, &url]).1 == "ok\n"
    })
    .await;
    assert!(
        answered,
        "/healthz over TLS: {:?}",
        curl(&["--cacert", &ca_file, &url])
    );
    let plain = tillwatch_integration_tests::http_get(addr, "/healthz");
    assert!(
        !matches!(plain, Ok((200, _))),
        "plain HTTP on the TLS port: {plain:?}"
    );
    let (ok, _, err) = curl(&[&url]);
    assert!(!ok, "a client that does not trust the CA connects: {err}");

    // gRPC on its own port with the same certificate.
    let store = tillwatch_meta::MetaStore::open(&config).await.unwrap();
    let service = tillwatch_grpc::service(&config, store).unwrap();
    let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let grpc_addr = grpc.local_addr().unwrap();
    let tls = tillwatch_serve::tls::grpc_acceptor(&config).unwrap();
    tokio::spawn(tillwatch_grpc::serve(
        service,
        grpc,
        tls,
        std::future::pending(),
    ));
    // An empty ListDevicesRequest, framed as gRPC does.
    let frame = dir.path().join("frame");
    std::fs::write(&frame, [0u8, 0, 0, 0, 0]).unwrap();
    let body = format!("@{}", frame.display());
    let method = format!(
        "https://127.0.0.1:{}/tillwatch.api.v1.Fleet/ListDevices",
        grpc_addr.port()
    );
    let auth = format!("authorization: Bearer {viewer}");
    let (ok, _, verbose) = curl(&[
        "-v",
        "--http2",
        "--cacert",
        &ca_file,
        "-H",
        "content-type: application/grpc",
        "-H",
        "te: trailers",
        "-H",
        &auth,
        "--data-binary",
        &body,
        "-o",
        "/dev/null",
        &method,
    ]);
    assert!(ok, "{verbose}");
    assert!(verbose.contains("grpc-status: 0"), "{verbose}");

    stop.send(true).unwrap();
    served.await.unwrap().unwrap();
}
