//! A private Prometheus Alertmanager (Debian's `prometheus-alertmanager`,
//! which `tests/run` installs) on a port of the test's, clustering off,
//! with one receiver that sends nowhere: tests read what it holds back
//! through its v2 API.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{free_port, http_get};

pub struct Alertmanager {
    child: Child,
    pub port: u16,
    dir: tempfile::TempDir,
}

const CONFIG: &str = "route:
  receiver: nowhere
  group_wait: 0s
  group_interval: 1s
  repeat_interval: 1h
receivers:
  - name: nowhere
";

fn binary() -> String {
    std::env::var("TILLWATCH_ALERTMANAGER").unwrap_or_else(|_| {
        if Command::new("prometheus-alertmanager")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok()
        {
            "prometheus-alertmanager".into()
        } else {
            "alertmanager".into()
        }
    })
}

impl Alertmanager {
    pub fn start() -> Alertmanager {
        Alertmanager::start_on(free_port())
    }

    /// On `port` (a test that needs Alertmanager down first picks the port
    /// before starting it).
    pub fn start_on(port: u16) -> Alertmanager {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join("alertmanager.yml");
        std::fs::write(&config, CONFIG).expect("write alertmanager.yml");
        let log = std::fs::File::create(dir.path().join("alertmanager.log")).expect("log file");
        let mut child = Command::new(binary())
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--cluster.listen-address=")
            .arg("--log.level=warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("Alertmanager is installed (tests/run installs prometheus-alertmanager)");
        let until = Instant::now() + Duration::from_secs(30);
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        loop {
            if matches!(http_get(addr, "/-/ready"), Ok((200, _))) {
                return Alertmanager { child, port, dir };
            }
            if let Ok(Some(status)) = child.try_wait() {
                let log = std::fs::read_to_string(dir.path().join("alertmanager.log"))
                    .unwrap_or_default();
                panic!("Alertmanager exited ({status}) on port {port}: {log}");
            }
            assert!(Instant::now() < until, "Alertmanager not ready on {port}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The alerts it holds that are active now (not resolved).
    pub fn alerts(&self) -> Vec<serde_json::Value> {
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let (status, body) = http_get(addr, "/api/v2/alerts").expect("GET /api/v2/alerts");
        assert_eq!(status, 200, "{body}");
        let all: Vec<serde_json::Value> = serde_json::from_str(&body).expect("JSON alerts");
        let now = chrono::Utc::now();
        all.into_iter()
            .filter(|a| {
                a["endsAt"]
                    .as_str()
                    .and_then(|e| chrono::DateTime::parse_from_rfc3339(e).ok())
                    .is_none_or(|ends| ends > now)
            })
            .collect()
    }

    /// Active alerts with this `alertname` and this `device_id` or
    /// `store_id` label.
    pub fn alerts_named(&self, name: &str, label: &str, value: &str) -> Vec<serde_json::Value> {
        self.alerts()
            .into_iter()
            .filter(|a| a["labels"]["alertname"] == name && a["labels"][label] == value)
            .collect()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("alertmanager.log")).unwrap_or_default()
    }
}

impl Drop for Alertmanager {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
