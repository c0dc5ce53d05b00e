//! The gateway's process and disk failing under it:
//! - SIGKILL mid-stream, twice, restarted each time: nothing acked is lost
//!   and nothing is stored twice.
//! - Its disk fills mid-stream (a small tmpfs, mounted by the test as
//!   root): it stops acking, `/readyz` and a gauge say why, and once space
//!   returns it resumes by itself with every reading stored once.

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
        durability: Default::default(),
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

/// A small tmpfs mounted for the test (as root), unmounted on drop.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(size: &str) -> SmallDisk {
        let dir = tempfile::tempdir().unwrap();
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .expect("run mount");
        assert!(
            status.success(),
            "mounting a tmpfs needs root (the test command runs as root)"
        );
        SmallDisk { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Fills what is left with one file; returns its path.
    fn fill(&self) -> std::path::PathBuf {
        use std::io::Write;
        let path = self.path().join("filler");
        let mut file = std::fs::File::create(&path).unwrap();
        let chunk = vec![0u8; 64 * 1024];
        loop {
            match file.write(&chunk) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
                Err(e) => panic!("filling the disk: {e}"),
            }
        }
        path
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_disk_stops_intake_says_why_and_resumes_with_nothing_lost() {
    let mosquitto = Mosquitto::start();
    let disk = SmallDisk::mount("64m");
    let lake = disk.path().join("lake");
    let gateway = start_gateway(&mosquitto.url(), disk.path());
    gateway.ready().await;

    let devices = 100;
    let per_device = 200;
    let fleet = SimConfig {
        broker: mosquitto.url(),
        devices,
        merchants: 2,
        stores_per_merchant: 2,
        interval: Duration::from_secs(30),
        readings_per_device: Some(per_device),
        seed: 13,
        start_ms: Some(start_across_hour(2)),
        faults: tillwatch_sim::Faults::none(),
        connect_concurrency: 32,
        security: Default::default(),
        durability: Default::default(),
    };
    let total = devices * per_device as usize;
    let sim = tokio::spawn(tillwatch_sim::run(fleet, watch::channel(false).1));
    wait_for("readings to stream in", Duration::from_secs(120), || {
        LakeContents::count_readings(&lake) >= 2_000
    })
    .await;

    let filler = disk.fill();
    let readyz = || {
        tillwatch_integration_tests::http_get(gateway.http, "/readyz").unwrap_or((0, String::new()))
    };
    wait_for(
        "the gateway to say the disk is full",
        Duration::from_secs(60),
        || {
            let (status, body) = readyz();
            status == 503 && body.contains("No space left on device")
        },
    )
    .await;
    assert_eq!(
        gateway.metric("tillwatch_gateway_storage_failing"),
        Some(1.0)
    );
    let stored_when_full = LakeContents::count_readings(&lake);
    assert!(
        stored_when_full < total,
        "the disk filled after the whole stream ({stored_when_full} stored)"
    );
    // It keeps retrying and acks nothing meanwhile: the broker keeps the
    // readings.
    let acked = gateway.metric("tillwatch_gateway_acks_sent_total");
    let failures = gateway
        .metric("tillwatch_gateway_flush_errors_total")
        .unwrap_or(0.0);
    wait_for(
        "the gateway to retry the flush",
        Duration::from_secs(30),
        || {
            gateway
                .metric("tillwatch_gateway_flush_errors_total")
                .unwrap_or(0.0)
                > failures + 1.0
        },
    )
    .await;
    assert_eq!(
        gateway.metric("tillwatch_gateway_acks_sent_total"),
        acked,
        "nothing is acked while the disk is full"
    );

    // Space returns: it resumes by itself.
    std::fs::remove_file(filler).unwrap();
    wait_for(
        "the gateway to be ready again",
        Duration::from_secs(60),
        || readyz().0 == 200,
    )
    .await;
    assert_eq!(
        gateway.metric("tillwatch_gateway_storage_failing"),
        Some(0.0)
    );
    let report = sim.await.unwrap().unwrap();
    assert_eq!(report.unacked_readings, 0);
    assert_eq!(report.readings, total as u64);
    LakeContents::wait_for_readings(&lake, report.readings, Duration::from_secs(120)).await;
    let mut gateway = gateway;
    assert!(gateway.terminate().success());
    let stored = LakeContents::read(&lake);
    stored.assert_exactly(report.readings);
    // The dedup journal kept every commit: a failed append left no torn
    // frame in the middle (replay would stop there and forget the rest).
    let (store, recovery) = tillwatch_gateway::dedup::DedupStore::open(
        &disk.path().join("gateway").join("crash-test-gateway"),
        tillwatch_storage::Lake::new(&lake),
        chrono::Utc::now().timestamp_millis(),
    )
    .unwrap();
    assert_eq!(recovery.truncated_bytes, 0, "{recovery:?}");
    let index = store.index();
    let index = index.read().unwrap();
    let forgotten = stored
        .readings
        .iter()
        .filter(|k| {
            !index.contains(&tillwatch_domain::ReadingKey {
                device_id: tillwatch_domain::DeviceId::new(&k.device_id).unwrap(),
                boot_id: tillwatch_domain::BootId(k.boot_id),
                seq: k.seq,
            })
        })
        .count();
    assert_eq!(forgotten, 0, "readings in the lake the dedup index forgot");
}
