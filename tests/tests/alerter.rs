//! The alerter against a real broker (a private Mosquitto with the
//! project's config): a terminal whose connection breaks is offline by its
//! last will within two seconds, with the state change in the metadata
//! store; telemetry brings it back online.

use std::time::{Duration, Instant};

use prost::Message;
use rumqttc::{AsyncClient, LastWill, MqttOptions, QoS};
use tillwatch_config::Config;
use tillwatch_domain::UtcMillis;
use tillwatch_domain::connectivity::{ConnState, OfflineReason};
use tillwatch_integration_tests::Mosquitto;
use tillwatch_meta::MetaStore;
use tillwatch_proto::telemetry::v1 as pb;
use tokio::sync::watch;

const DEVICE: &str = "term-will-1";
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
    let mut options = MqttOptions::new(id, "127.0.0.1", port);
    options
        .set_keep_alive(Duration::from_secs(30))
        .set_last_will(LastWill::new(
            format!("{TOPIC}/status"),
            status(
                pb::ConnectionState::Offline,
                pb::StatusReason::ConnectionLost,
            ),
            QoS::AtLeastOnce,
            true,
        ));
    let (client, mut eventloop) = AsyncClient::new(options, 64);
    let task = tokio::spawn(async move {
        loop {
            if eventloop.poll().await.is_err() {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    });
    (client, task)
}

async fn state_of(store: &MetaStore) -> Option<(ConnState, i64)> {
    let history = store.connectivity_history(DEVICE, 1).await.ok()?;
    history.first().map(|h| (h.to, h.at_ms))
}

/// Publishes readings until the alerter has the terminal online (at most
/// 30 s).
async fn report_until_online(client: &AsyncClient, store: &MetaStore, seq: &mut u64) {
    let until = Instant::now() + Duration::from_secs(30);
    while !matches!(state_of(store).await, Some((ConnState::Online, _))) {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unclean_disconnect_is_offline_by_last_will_within_two_seconds() {
    let mosquitto = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config {
        data_dir: dir.path().to_path_buf(),
        ..Config::default()
    };
    config.mqtt.broker = mosquitto.url();
    let (stop_tx, mut stop_rx) = watch::channel(false);
    let alerter = {
        let config = config.clone();
        tokio::spawn(async move {
            tillwatch_alerter::run_alerter(&config, async move {
                let _ = stop_rx.wait_for(|s| *s).await;
            })
            .await
        })
    };
    let store = MetaStore::connect(&config.metadata_url()).await.unwrap();

    // The terminal comes online and reports until the alerter has it.
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
    let mut seq = 0;
    report_until_online(&client, &store, &mut seq).await;

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

    // It reconnects and reports: online again.
    let (client, _connection) = terminal(mosquitto.port, DEVICE);
    report_until_online(&client, &store, &mut seq).await;

    let _ = stop_tx.send(true);
    alerter.await.unwrap().unwrap();
    let device = store.device(DEVICE).await.unwrap().expect("registered");
    assert_eq!(device.merchant_id, "m-1");
}
