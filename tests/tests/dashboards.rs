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
