//! The provisioned Grafana dashboards' Prometheus panels name only metrics
//! the roles export (their ClickHouse panels run against a real server
//! in tests/rollups.rs), each shows data for a running deployment, and the
//! provisioning files point at this folder.

use tillwatch_integration_tests::{grafana, workspace_root};

/// Where the roles name the metrics they export: each `const` holding a
/// `"tillwatch_…"` name.
const METRIC_SOURCES: [&str; 7] = [
    "services/tillwatch-gateway/src/metrics.rs",
    "services/tillwatch-scheduler/src/process.rs",
    "services/tillwatch-rollups/src/retention.rs",
    "services/tillwatch-alerter/src/deliver.rs",
    "services/tillwatch-alerter/src/run.rs",
    "services/tillwatch-grpc/src/lib.rs",
    "services/tillwatch-serve/src/http.rs",
];

#[test]
fn prometheus_panels_name_metrics_the_roles_export() {
    let mut exported: Vec<String> = Vec::new();
    for file in METRIC_SOURCES {
        let source = std::fs::read_to_string(workspace_root().join(file)).unwrap();
        exported.extend(
            source
                .lines()
                .filter(|l| l.contains("const ") && l.contains("\"tillwatch_"))
                .filter_map(|l| l.split('"').nth(1))
                .map(str::to_string),
        );
    }
    let exported: Vec<&str> = exported.iter().map(String::as_str).collect();
    assert!(exported.contains(&tillwatch_gateway::metrics::READINGS_STORED));
    assert!(exported.contains(&"tillwatch_scheduler_runs_total"));
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
                "{} / {} uses {name}, which no role exports",
                q.dashboard,
                q.title
            );
            checked += 1;
        }
    }
    assert!(checked >= 20, "{checked} metric names checked");
    let provisioning =
        std::fs::read_to_string(workspace_root().join("dashboards/provisioning/dashboards.yaml"))
            .unwrap();
    assert!(provisioning.contains("/var/lib/tillwatch/dashboards"));
}

/// Every Prometheus panel of the provisioned dashboards shows data for a
/// running deployment: a real Prometheus scrapes a standalone process
/// (gateway, scheduler, alerter, HTTP and gRPC APIs) on Mosquitto while
/// simulated terminals (some misbehaving) publish, the API and gRPC are
/// called, and alerts go to a receiver that does not answer; each panel's
/// PromQL must return at least one series. A panel that names a metric no
/// role has emitted yet, or a histogram rendered without buckets, reads
/// "No data" in Grafana; this finds it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_prometheus_panel_shows_data_for_a_running_fleet() {
    use std::net::SocketAddr;
    use std::time::Duration;
    use tillwatch_integration_tests::{
        Mosquitto, Prometheus, eventually, free_port, http_get, tillwatch_bin, wait_for,
    };
    struct Killed(std::process::Child);
    impl Drop for Killed {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mosquitto = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let http: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let grpc: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    // Nothing listens here: every page fails, and is counted as failed.
    let hook = free_port();
    let config = dir.path().join("tillwatch.toml");
    std::fs::write(
        &config,
        format!(
            "[[alerting.receivers]]\nname = \"on-call\"\nkind = \"webhook\"\n\
             url = \"http://127.0.0.1:{hook}/hook\"\n"
        ),
    )
    .unwrap();
    let data = dir.path().join("data");
    let _standalone = Killed(
        std::process::Command::new(tillwatch_bin())
            .arg("standalone")
            .arg("--config")
            .arg(&config)
            .arg("--data-dir")
            .arg(&data)
            .args(["--broker", &mosquitto.url()])
            .args(["--http-listen", &http.to_string()])
            .env("TILLWATCH__GRPC__LISTEN", grpc.to_string())
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_for("standalone to be ready", Duration::from_secs(60), || {
        matches!(http_get(http, "/readyz"), Ok((200, _)))
    })
    .await;
    let prometheus = Prometheus::scraping(&[http]);
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
    // A support engineer's calls over HTTP and gRPC (without a token);
    // both are counted by route and status.
    let (status, _) = http_get(http, "/api/v1/devices").unwrap();
    assert!(status < 500, "the API answered {status}");
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{grpc}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let answer = tillwatch_proto::api::v1::fleet_client::FleetClient::new(channel)
        .get_device(tillwatch_proto::api::v1::GetDeviceRequest {
            device_id: "t-1".into(),
        })
        .await;
    if let Err(e) = answer {
        assert!(
            !matches!(e.code(), tonic::Code::Internal | tonic::Code::Unavailable),
            "gRPC failed: {e}"
        );
    }

    let panels: Vec<_> = grafana::queries(&workspace_root().join("dashboards"))
        .into_iter()
        .filter(|q| q.datasource == "prometheus")
        .collect();
    assert!(panels.len() >= 20, "{} Prometheus panels", panels.len());
    let empty = |q: &grafana::Query| prometheus.query(&q.text).is_empty();
    let all_drawn = eventually(Duration::from_secs(90), || !panels.iter().any(empty)).await;
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
