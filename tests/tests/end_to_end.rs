//! A simulated fleet of 200 terminals, with duplicates, late replays, a
//! store-wide outage, reboots and malformed, spoofed and out-of-range
//! payloads, through a real broker into the lake: the lake then holds
//! exactly the valid readings, once each, in their hour partitions, and the
//! dead letters hold the bad messages.

use std::path::Path;
use std::time::Duration;

use tillwatch_config::Config;
use tillwatch_integration_tests::{
    InProcess, LakeContents, Mosquitto, duckdb_scalar, files_below, http_get, start_across_hour,
    wait_for,
};
use tillwatch_serve::EmbeddedBroker;
use tillwatch_sim::{Report, SimConfig};
use tokio::sync::watch;

fn fleet(broker: String) -> SimConfig {
    SimConfig {
        broker,
        devices: 200,
        merchants: 8,
        stores_per_merchant: 3,
        interval: Duration::from_secs(60),
        readings_per_device: Some(12),
        seed: 7,
        start_ms: Some(start_across_hour(1)),
        faults: tillwatch_sim::Faults::all(),
        connect_concurrency: 32,
        security: Default::default(),
        // Each terminal waits for the gateway to name all it sent durable.
        durability: tillwatch_sim::Durability {
            wait_at_end: Duration::from_secs(60),
            ..Default::default()
        },
    }
}

/// Runs standalone against `broker` (or an embedded one), drives the fleet
/// through it and checks the lake.
async fn fleet_through(broker: Option<String>) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config {
        data_dir: dir.path().to_path_buf(),
        ..Config::default()
    };
    config.mqtt.client_id = "e2e-gateway".into();
    let embedded = match &broker {
        Some(_) => None,
        None => Some(EmbeddedBroker::start("127.0.0.1:0".parse().unwrap(), 1000).unwrap()),
    };
    if let Some(url) = &broker {
        config.mqtt.broker = url.clone();
    }
    let broker_url = broker
        .clone()
        .unwrap_or_else(|| embedded.as_ref().unwrap().url());

    let standalone = InProcess::start(config.clone(), embedded).await;
    let http_addr = standalone.http;

    let report: Report = tillwatch_sim::run(fleet(broker_url), watch::channel(false).1)
        .await
        .unwrap();
    assert_eq!(report.unacked_readings, 0);
    assert_eq!(
        (report.unconfirmed_readings, report.unconfirmed_dropped),
        (0, 0),
        "the gateway's durable notices reach every terminal through the broker: {report:?}"
    );
    assert!(report.duplicates_sent > 0 && report.late_readings > 0 && report.reboots > 0);
    assert!(report.malformed_sent > 0 && report.spoofed_sent > 0 && report.out_of_range_sent > 0);

    let lake = dir.path().join("lake");
    LakeContents::wait_for_readings(&lake, report.readings, Duration::from_secs(60)).await;
    wait_for(
        "every bad message to reach the dead letters",
        Duration::from_secs(30),
        || LakeContents::read(&lake).dead_letters() >= report.invalid_messages(),
    )
    .await;

    // The gateway publishes its counters once a second and after each
    // flush: wait (with a deadline) until the last ones are out.
    let expected = [
        "# HELP tillwatch_gateway_readings_stored_total",
        "tillwatch_gateway_readings_received_total{kind=\"battery\"}",
        "tillwatch_gateway_readings_stored_total{kind=\"connectivity\"}",
        "tillwatch_gateway_readings_duplicate_total",
        "tillwatch_gateway_rejected_total{reason=\"malformed\"}",
        "tillwatch_gateway_rejected_total{reason=\"device_mismatch\"}",
        "tillwatch_gateway_flush_rows",
        "tillwatch_gateway_flush_duration_seconds",
        "tillwatch_gateway_bytes_written_total",
        "tillwatch_gateway_acks_sent_total",
        "tillwatch_gateway_broker_connected",
    ];
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let metrics = loop {
        let (status, body) = http_get(http_addr, "/metrics").unwrap();
        assert_eq!(status, 200);
        if expected.iter().all(|e| body.contains(e)) || std::time::Instant::now() > deadline {
            break body;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    for expected in expected {
        assert!(
            metrics.contains(expected),
            "/metrics lacks {expected}:\n{metrics}"
        );
    }
    // Device ids never become labels.
    assert!(
        !metrics.contains("term-0"),
        "a device id leaked into a metric label"
    );

    standalone.stop().await;

    let contents = LakeContents::read(&lake);
    contents.assert_exactly(report.readings);
    assert_eq!(
        contents.dead_letters(),
        report.invalid_messages(),
        "{:?}",
        contents.dead_letter_reasons
    );
    assert_eq!(
        contents
            .dead_letter_reasons
            .get("malformed")
            .copied()
            .unwrap_or(0),
        report.malformed_sent
    );
    assert_eq!(
        contents
            .dead_letter_reasons
            .get("device_mismatch")
            .copied()
            .unwrap_or(0),
        report.spoofed_sent
    );
    assert_eq!(
        contents
            .dead_letter_reasons
            .get("out_of_range")
            .copied()
            .unwrap_or(0),
        report.out_of_range_sent
    );
    // The fleet's virtual clock crosses an hour: readings sit in both hours.
    let hours: usize = std::fs::read_dir(lake.join("battery"))
        .unwrap()
        .map(|date| std::fs::read_dir(date.unwrap().path()).unwrap().count())
        .sum();
    assert!(hours >= 2, "readings of two hours share one partition");
    assert_duckdb_reads(&lake, report.readings);
}

fn assert_duckdb_reads(lake: &Path, expected: u64) {
    let mut total = 0;
    for table in [
        "connectivity",
        "battery",
        "app_performance",
        "payment_health",
    ] {
        total += duckdb_scalar(&format!(
            "SELECT count(*) FROM read_parquet('{}/{table}/**/*.parquet', hive_partitioning = true) \
             WHERE hour IS NOT NULL AND date IS NOT NULL",
            lake.display()
        ));
    }
    assert_eq!(
        total as u64, expected,
        "DuckDB reads every reading through hive partitioning"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fleet_through_the_embedded_broker_lands_exactly_once() {
    fleet_through(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fleet_through_mosquitto_lands_exactly_once() {
    let mosquitto = Mosquitto::start();
    fleet_through(Some(mosquitto.url())).await;
}

/// Two gateways in one MQTT shared-subscription group split the stream;
/// together they store every reading exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn gateways_in_a_shared_group_split_the_stream() {
    let mosquitto = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut gateways = Vec::new();
    let mut healths = Vec::new();
    for id in ["gw-a", "gw-b"] {
        let mut config = Config {
            data_dir: dir.path().to_path_buf(),
            ..Config::default()
        };
        config.mqtt.broker = mosquitto.url();
        config.mqtt.client_id = id.into();
        config.mqtt.shared_group = Some("tillwatch".into());
        let health = std::sync::Arc::new(tillwatch_gateway::GatewayHealth::default());
        healths.push(health.clone());
        let mut stop = stop_rx.clone();
        gateways.push(tokio::spawn(async move {
            tillwatch_gateway::run_gateway(&config, health, async move {
                let _ = stop.wait_for(|s| *s).await;
            })
            .await
        }));
    }
    wait_for(
        "both gateways to subscribe",
        Duration::from_secs(30),
        || healths.iter().all(|h| h.is_ready()),
    )
    .await;

    let mut sim = fleet(mosquitto.url());
    sim.faults = tillwatch_sim::Faults::none();
    sim.readings_per_device = Some(10);
    let report = tillwatch_sim::run(sim, watch::channel(false).1)
        .await
        .unwrap();
    let lake = dir.path().join("lake");
    LakeContents::wait_for_readings(&lake, report.readings, Duration::from_secs(60)).await;
    stop_tx.send(true).unwrap();
    for gateway in gateways {
        gateway.await.unwrap().unwrap();
    }
    LakeContents::read(&lake).assert_exactly(report.readings);
    // Each gateway wrote a share: file names start with the writer's id.
    for id in ["gw-a", "gw-b"] {
        let found = files_below(&lake).iter().any(|p| {
            p.extension().is_some_and(|e| e == "parquet")
                && p.file_name().unwrap().to_string_lossy().starts_with(id)
        });
        assert!(
            found,
            "gateway {id} stored nothing: the group did not split the stream"
        );
    }
}
