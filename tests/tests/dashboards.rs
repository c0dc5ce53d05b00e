//! The provisioned Grafana dashboards' Prometheus panels name only metrics
//! the gateway exports (their ClickHouse panels run against a real server
//! in tests/rollups.rs), and the provisioning files point at this folder.

use tillwatch_integration_tests::{grafana, workspace_root};

#[test]
fn prometheus_panels_name_metrics_the_gateway_exports() {
    // The names the gateway registers, read from its source of truth.
    let source =
        std::fs::read_to_string(workspace_root().join("services/tillwatch-gateway/src/metrics.rs"))
            .unwrap();
    let exported: Vec<&str> = source
        .lines()
        .filter_map(|l| l.trim().strip_prefix("pub const "))
        .filter_map(|l| l.split('"').nth(1))
        .collect();
    assert!(exported.contains(&tillwatch_gateway::metrics::READINGS_STORED));
    let mut checked = 0;
    for q in grafana::queries(&workspace_root().join("dashboards")) {
        if q.datasource != "prometheus" {
            continue;
        }
        let names: Vec<&str> = q
            .text
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|w| w.starts_with("tillwatch_"))
            .collect();
        assert!(!names.is_empty(), "{}: {}", q.title, q.text);
        for name in names {
            let base = name.strip_suffix("_bucket").unwrap_or(name);
            assert!(
                exported.contains(&base),
                "{} / {} uses {name}, which the gateway does not export",
                q.dashboard,
                q.title
            );
            checked += 1;
        }
    }
    assert!(checked >= 8, "{checked} metric names checked");
    let provisioning =
        std::fs::read_to_string(workspace_root().join("dashboards/provisioning/dashboards.yaml"))
            .unwrap();
    assert!(provisioning.contains("/var/lib/tillwatch/dashboards"));
}

/// Every Prometheus panel of the provisioned dashboards shows data for a
/// running fleet: a real Prometheus scrapes a gateway while simulated
/// terminals (some misbehaving) publish through Mosquitto, and each
/// panel's PromQL must return at least one series. A panel that names a
/// metric the gateway has not emitted yet, or a histogram rendered
/// without buckets, reads "No data" in Grafana; this finds it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_prometheus_panel_shows_data_for_a_running_fleet() {
    use std::time::Duration;
    use tillwatch_integration_tests::{GatewayProcess, Mosquitto, Prometheus, eventually};
    let mosquitto = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let gateway = GatewayProcess::start(&mosquitto.url(), dir.path(), &[]);
    gateway.ready().await;
    let prometheus = Prometheus::scraping(&[gateway.http]);
    let fleet = tillwatch_sim::SimConfig {
        broker: mosquitto.url(),
        devices: 12,
        merchants: 2,
        interval: Duration::from_millis(200),
        readings_per_device: Some(40),
        faults: tillwatch_sim::Faults::parse("retry,malformed,spoofed").unwrap(),
        ..Default::default()
    };
    let report = tillwatch_sim::run(fleet, tokio::sync::watch::channel(false).1)
        .await
        .unwrap();
    assert!(report.duplicates_sent > 0 && report.malformed_sent > 0);

    let panels: Vec<_> = grafana::queries(&workspace_root().join("dashboards"))
        .into_iter()
        .filter(|q| q.datasource == "prometheus")
        .collect();
    assert!(panels.len() >= 8, "{} Prometheus panels", panels.len());
    let empty = |q: &grafana::Query| prometheus.query(&q.text).is_empty();
    let all_drawn = eventually(Duration::from_secs(60), || !panels.iter().any(empty)).await;
    let blank: Vec<String> = panels
        .iter()
        .filter(|q| empty(q))
        .map(|q| format!("{} / {}: {}", q.dashboard, q.title, q.text))
        .collect();
    assert!(
        all_drawn,
        "panels with no data:\n{}\nPrometheus log:\n{}",
        blank.join("\n"),
        prometheus.log()
    );
}
