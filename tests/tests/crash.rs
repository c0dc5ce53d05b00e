//! SIGKILL the gateway process mid-stream, twice, restart it each time:
//! nothing acked is lost and nothing is stored twice.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tillwatch_integration_tests::{LakeContents, Mosquitto, http_get, start_across_hour, wait_for};
use tillwatch_sim::SimConfig;
use tokio::sync::watch;

struct Gateway {
    child: Child,
    http: SocketAddr,
}

fn start_gateway(broker: &str, data_dir: &Path) -> Gateway {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tillwatch-under-test"))
        .args([
            "gateway",
            "--broker",
            broker,
            "--http-listen",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(data_dir)
        .env("TILLWATCH__MQTT__CLIENT_ID", "crash-test-gateway")
        // Small, frequent flushes: more flush boundaries for the kill to hit.
        .env("TILLWATCH__GATEWAY__FLUSH_MAX_ROWS", "500")
        .env(
            "RUST_LOG",
            std::env::var("TILLWATCH_TEST_CHILD_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the gateway");
    let stdout = child.stdout.take().expect("piped stdout");
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("read the gateway's first line");
    let http = line
        .trim()
        .strip_prefix("http listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .parse()
        .expect("an address");
    Gateway { child, http }
}

impl Gateway {
    async fn ready(&self) {
        let http = self.http;
        wait_for("the gateway to subscribe", Duration::from_secs(30), || {
            matches!(http_get(http, "/readyz"), Ok((200, _)))
        })
        .await;
    }

    fn kill(mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("reap");
    }

    fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = self.child.id() as i32;
        assert_eq!(send_signal(pid, libc::SIGTERM), 0);
        self.child.wait().expect("reap")
    }
}

impl Drop for Gateway {
    /// A failing test must not leave the gateway running.
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

#[allow(unsafe_code)]
fn send_signal(pid: i32, signal: i32) -> i32 {
    // SAFETY: sending a signal to our own child process has no memory effects.
    unsafe { libc::kill(pid, signal) }
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
