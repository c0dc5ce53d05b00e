//! A private Prometheus (Debian's `prometheus`, which `tests/run` installs
//! with `promtool`) on a port of the test's, scraping the given targets
//! every second: tests evaluate the dashboards' and alert rules' PromQL
//! against what it scraped, through its HTTP API.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{free_port, http_get};

pub struct Prometheus {
    child: Child,
    pub port: u16,
    dir: tempfile::TempDir,
}

impl Prometheus {
    /// Scraping `/metrics` of each of `targets` every second.
    pub fn scraping(targets: &[SocketAddr]) -> Prometheus {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join("prometheus.yml");
        let targets: Vec<String> = targets.iter().map(|t| format!("'{t}'")).collect();
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
                 scrape_configs:\n  - job_name: tillwatch\n    static_configs:\n      \
                 - targets: [{}]\n",
                targets.join(", ")
            ),
        )
        .expect("write prometheus.yml");
        let port = free_port();
        let log = std::fs::File::create(dir.path().join("prometheus.log")).expect("log file");
        let mut child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--log.level=warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("Prometheus is installed (tests/run installs prometheus)");
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let until = Instant::now() + Duration::from_secs(30);
        loop {
            if matches!(http_get(addr, "/-/ready"), Ok((200, _))) {
                return Prometheus { child, port, dir };
            }
            if let Ok(Some(status)) = child.try_wait() {
                let log =
                    std::fs::read_to_string(dir.path().join("prometheus.log")).unwrap_or_default();
                panic!("Prometheus exited ({status}) on port {port}: {log}");
            }
            assert!(Instant::now() < until, "Prometheus not ready on {port}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The instant vector `expr` evaluates to now: one (labels, value)
    /// per series. Panics on a query Prometheus refuses.
    pub fn query(&self, expr: &str) -> Vec<(serde_json::Value, f64)> {
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let path = format!(
            "/api/v1/query?{}",
            form_urlencoded::Serializer::new(String::new())
                .append_pair("query", expr)
                .finish()
        );
        let (status, body) = http_get(addr, &path).expect("query Prometheus");
        assert_eq!(status, 200, "{expr}: {body}");
        let doc: serde_json::Value = serde_json::from_str(&body).expect("JSON");
        doc["data"]["result"]
            .as_array()
            .expect("a vector result")
            .iter()
            .map(|r| {
                let value = r["value"][1]
                    .as_str()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(f64::NAN);
                (r["metric"].clone(), value)
            })
            .collect()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
