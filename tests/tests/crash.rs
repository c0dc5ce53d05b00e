//! SIGKILL the gateway process mid-stream, twice, restart it each time:
//! nothing acked is lost and nothing is stored twice.

use std::path::Path;
use std::time::Duration;

use tillwatch_integration_tests::{
    GatewayProcess, LakeContents, Mosquitto, start_across_hour, wait_for,
};
use tillwatch_sim::SimConfig;
use tokio::sync::watch;

fn start_gateway(broker: &str, data_dir: &Path) -> GatewayProcess {
    // Small, frequent flushes: more flush boundaries for the kill to hit.
    GatewayProcess::start(
        broker,
        data_dir,
        &[
            ("TILLWATCH__MQTT__CLIENT_ID", "crash-test-gateway"),
            ("TILLWATCH__GATEWAY__FLUSH_MAX_ROWS", "500"),
        ],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_mid_stream_loses_nothing_and_doubles_nothing() {
    let mosquitto = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let lake = dir.path().join("lake");

    let gateway = start_gateway(&mosquitto.url(), dir.path());
    gateway.ready().await;

    let fleet = SimConfig {
        broker: mosquitto.url(),
        devices: 200,
        merchants: 5,
        stores_per_merchant: 2,
        interval: Duration::from_secs(30),
        readings_per_device: Some(300),
        seed: 11,
        // 300 readings 30 s apart: 2.5 hours, all of them in the past.
        start_ms: Some(start_across_hour(4)),
        faults: tillwatch_sim::Faults::none(),
        connect_concurrency: 32,
        security: Default::default(),
    };
    let sim = tokio::spawn(tillwatch_sim::run(fleet, watch::channel(false).1));

    // Kill it twice while readings stream in, each time mid-flight.
    let mut gateway = gateway;
    for threshold in [3_000usize, 15_000] {
        wait_for("readings to stream in", Duration::from_secs(120), || {
            LakeContents::count_readings(&lake) >= threshold
        })
        .await;
        gateway.kill();
        let stored = LakeContents::count_readings(&lake);
        assert!(
            stored < 200 * 300,
            "the kill came after the whole stream ({stored} readings stored); it must hit mid-stream"
        );
        gateway = start_gateway(&mosquitto.url(), dir.path());
        gateway.ready().await;
    }

    let report = sim.await.unwrap().unwrap();
    assert_eq!(report.unacked_readings, 0);
    assert_eq!(report.readings, 200 * 300);
    LakeContents::wait_for_readings(&lake, report.readings, Duration::from_secs(120)).await;
    let mut gateway = gateway;
    let status = gateway.terminate();
    assert!(
        status.success(),
        "graceful shutdown exits cleanly: {status:?}"
    );

    LakeContents::read(&lake).assert_exactly(report.readings);
}
