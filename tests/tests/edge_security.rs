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
    let (http_port, mqtt_port) = (
        tillwatch_integration_tests::free_port(),
        tillwatch_integration_tests::free_port(),
    );
    let http: SocketAddr = format!("127.0.0.1:{http_port}").parse().unwrap();
    let mqtt: SocketAddr = format!("127.0.0.1:{mqtt_port}").parse().unwrap();
    let mut child = std::process::Command::new(tillwatch_integration_tests::tillwatch_bin())
        .args(["standalone", "--data-dir"])
        .arg(dir.path())
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
    let pid = child.id();
    let healthy = || {
        let asked = Instant::now();
        matches!(
            tillwatch_integration_tests::http_get(http, "/healthz"),
            Ok((200, _))
        ) && asked.elapsed() < Duration::from_secs(1)
    };
    tillwatch_integration_tests::wait_for("standalone to answer", Duration::from_secs(60), || {
        matches!(
            tillwatch_integration_tests::http_get(http, "/readyz"),
            Ok((200, _))
        )
    })
    .await;
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
