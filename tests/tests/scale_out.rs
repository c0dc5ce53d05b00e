//! Scale-out as a deployment runs it: separate `tillwatch` processes over
//! shared infrastructure, one of them killed mid-work.
//!
//! - Three gateways on one MQTT shared subscription (the project's
//!   Mosquitto config), one lake: one is SIGKILLed mid-stream, the other two
//!   carry on, it comes back under its own client id (as a StatefulSet pod
//!   does) and every reading lands exactly once.
//! - Two schedulers on one PostgreSQL: the one running a partition is
//!   frozen and killed mid-run; the other takes the partition over once the
//!   claim lapses and finishes every partition, none of them twice.
//! - The broker stopped and started again mid-stream: the gateway
//!   reconnects by itself and every reading lands exactly once. The broker
//!   SIGKILLed mid-stream, losing what it had acked: the terminals resend
//!   what no durable notice named, and every reading lands exactly once.
//! - Two alerters on one PostgreSQL and one broker: one is active, the
//!   other on standby; the active one is killed after a page, the standby
//!   takes over, pages the next terminal, and no page is ever sent twice.

use std::path::Path;
use std::time::Duration;

use tillwatch_integration_tests::{
    LakeContents, Mosquitto, RoleProcess, start_across_hour, wait_for,
};
use tillwatch_meta::MetaStore;
use tillwatch_meta::testing::TestDatabase;
use tillwatch_scheduler::{Grain, Partition};
use tillwatch_sim::SimConfig;
use tokio::sync::watch;

const HOUR: i64 = 3_600_000;

/// Small, frequent flushes: more boundaries for the kill to hit.
const SMALL_FLUSHES: &[(&str, &str)] = &[("TILLWATCH__GATEWAY__FLUSH_MAX_ROWS", "500")];

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_gateways_share_the_stream_and_one_killed_mid_stream_loses_and_doubles_nothing() {
    let mosquitto = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let lake = dir.path().join("lake");
    let url = mosquitto.url();
    let mut gateways = RoleProcess::shared_gateways(&url, dir.path(), &lake, SMALL_FLUSHES);
    for g in gateways.iter().flatten() {
        g.ready().await;
    }

    let devices = 200;
    let per_device = 300;
    let fleet = SimConfig {
        broker: url.clone(),
        devices,
        merchants: 5,
        stores_per_merchant: 2,
        interval: Duration::from_secs(30),
        readings_per_device: Some(per_device),
        seed: 23,
        start_ms: Some(start_across_hour(4)),
        faults: tillwatch_sim::Faults::none(),
        connect_concurrency: 32,
        security: Default::default(),
        durability: Default::default(),
    };
    let total = devices * per_device as usize;
    let sim = tokio::spawn(tillwatch_sim::run(fleet, watch::channel(false).1));

    wait_for("readings to stream in", Duration::from_secs(120), || {
        LakeContents::count_readings(&lake) >= 5_000
    })
    .await;
    gateways[1].take().unwrap().kill();
    let at_kill = LakeContents::count_readings(&lake);
    assert!(
        at_kill < total,
        "the kill came after the whole stream ({at_kill} readings stored); it must hit mid-stream"
    );
    // The group goes on without it.
    wait_for(
        "the two remaining gateways to keep storing",
        Duration::from_secs(120),
        || LakeContents::count_readings(&lake) >= at_kill + 5_000,
    )
    .await;
    // Back under its own id: the broker hands it what it had in flight.
    let back = RoleProcess::shared_gateway(&url, "gw-b", dir.path(), &lake, SMALL_FLUSHES);
    back.ready().await;
    gateways[1] = Some(back);

    let report = sim.await.unwrap().unwrap();
    assert_eq!(report.unacked_readings, 0);
    assert_eq!(report.readings, total as u64);
    LakeContents::wait_for_readings(&lake, report.readings, Duration::from_secs(120)).await;
    for mut g in gateways.into_iter().flatten() {
        let status = g.terminate();
        assert!(status.success(), "graceful shutdown: {status:?}");
    }
    LakeContents::read(&lake).assert_exactly(report.readings);
    // Every gateway took a share.
    for id in ["gw-a", "gw-b", "gw-c"] {
        let wrote = tillwatch_integration_tests::files_below(&lake)
            .iter()
            .any(|p| {
                p.extension().is_some_and(|e| e == "parquet")
                    && p.file_name().unwrap().to_string_lossy().starts_with(id)
            });
        assert!(wrote, "gateway {id} stored nothing");
    }
}

/// How the broker goes away mid-stream.
#[derive(Clone, Copy, PartialEq)]
enum BrokerFault {
    /// SIGTERM, as an upgrade does: it writes its persistence file.
    Stop,
    /// SIGKILL: what it held only in memory since its last autosave is gone.
    Crash,
}

/// One gateway, 50 terminals of 300 readings each that keep readings until
/// named durable; the broker goes away (`fault`) once 2,000 are stored and
/// comes back once the gateway says it is not ready. Checks that the
/// terminals had everything acked and named durable in the end, and that
/// every reading is stored exactly once; returns the fleet's report.
async fn broker_fault_mid_stream(fault: BrokerFault, seed: u64) -> tillwatch_sim::Report {
    let mut mosquitto = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let lake = dir.path().join("lake");
    let url = mosquitto.url();
    let gateway = RoleProcess::shared_gateway(&url, "gw-a", dir.path(), &lake, SMALL_FLUSHES);
    gateway.ready().await;

    let devices = 50;
    let per_device = 300;
    let fleet = SimConfig {
        broker: url.clone(),
        devices,
        merchants: 2,
        stores_per_merchant: 2,
        interval: Duration::from_secs(30),
        readings_per_device: Some(per_device),
        seed,
        start_ms: Some(start_across_hour(3)),
        faults: tillwatch_sim::Faults::none(),
        connect_concurrency: 16,
        security: Default::default(),
        // Mosquitto 2.0 does not bring the gateways' shared subscription
        // back with its sessions: what terminals publish between its
        // restart and the gateway's new SUBSCRIBE has no subscriber and is
        // dropped after its PUBACK. Terminals that keep readings until
        // named durable send those again.
        durability: tillwatch_sim::Durability {
            resend_after: Duration::from_secs(5),
            wait_at_end: Duration::from_secs(90),
            ..Default::default()
        },
    };
    let total = devices * per_device as usize;
    let sim = tokio::spawn(tillwatch_sim::run(fleet, watch::channel(false).1));
    wait_for("readings to stream in", Duration::from_secs(120), || {
        LakeContents::count_readings(&lake) >= 2_000
    })
    .await;
    match fault {
        BrokerFault::Stop => mosquitto.stop(),
        BrokerFault::Crash => mosquitto.crash(),
    }
    let at_fault = LakeContents::count_readings(&lake);
    assert!(
        at_fault < total,
        "the broker went after the whole stream ({at_fault} stored); it must be mid-stream"
    );
    let readyz = |addr| tillwatch_integration_tests::http_get(addr, "/readyz").map(|(s, _)| s);
    wait_for(
        "the gateway to say it is not ready without its broker",
        Duration::from_secs(30),
        || readyz(gateway.http).is_ok_and(|s| s == 503),
    )
    .await;
    mosquitto.start_again();
    wait_for(
        "the gateway to reconnect by itself",
        Duration::from_secs(60),
        || readyz(gateway.http).is_ok_and(|s| s == 200),
    )
    .await;

    let report = sim.await.unwrap().unwrap();
    assert_eq!(report.unacked_readings, 0);
    assert_eq!(report.readings, total as u64);
    assert_eq!(
        (report.unconfirmed_readings, report.unconfirmed_dropped),
        (0, 0),
        "every reading was named durable in the end: {report:?}"
    );
    LakeContents::wait_for_readings(&lake, report.readings, Duration::from_secs(120)).await;
    let mut gateway = gateway;
    assert!(gateway.terminate().success());
    LakeContents::read(&lake).assert_exactly(report.readings);
    report
}

/// The broker is stopped mid-stream and started again: the gateway says
/// it is not ready while the broker is gone, reconnects by itself under
/// its own session, and every reading the terminals had acked is stored
/// exactly once (the terminals send again what no durable notice named,
/// which includes what the restarted broker acked before the gateway had
/// subscribed again, and dropped).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_broker_restarted_mid_stream_loses_and_doubles_nothing() {
    broker_fault_mid_stream(BrokerFault::Stop, 29).await;
}

/// The broker is SIGKILLed mid-stream. It had acknowledged readings it
/// held only in memory (its persistence is saved every 30 s), so MQTT's
/// acknowledgement alone would lose them. The terminals keep every reading
/// until the gateway's durable notice names it and send the rest again
/// after they reconnect: every reading lands exactly once, and by the end
/// each terminal has been told all of its readings are durable.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_broker_killed_mid_stream_loses_nothing_the_terminals_still_hold() {
    let report = broker_fault_mid_stream(BrokerFault::Crash, 31).await;
    assert!(
        report.resent_readings > 0,
        "no terminal sent anything again after the crash: {report:?}"
    );
}

/// The scheduler role over PostgreSQL and a shared lake.
fn scheduler(name: &str, dir: &Path, db: &str) -> RoleProcess {
    let data = dir.join(name);
    let lake = dir.join("lake");
    RoleProcess::role(
        &[
            "scheduler",
            "--http-listen",
            "127.0.0.1:0",
            "--data-dir",
            data.to_str().expect("UTF-8"),
        ],
        &[
            ("TILLWATCH__METADATA__URL", db),
            ("TILLWATCH__LAKE__PATH", lake.to_str().expect("UTF-8")),
            ("TILLWATCH__SCHEDULER__NAME", name),
            ("TILLWATCH__SCHEDULER__ENGINE", "embedded"),
            ("TILLWATCH__SCHEDULER__START", "1d"),
            ("TILLWATCH__SCHEDULER__TICK", "200ms"),
            ("TILLWATCH__SCHEDULER__LEASE", "2s"),
            ("TILLWATCH__SCHEDULER__LOCAL_DAY_UTC_OFFSETS", "[0, 0]"),
        ],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scheduler_killed_mid_run_is_taken_over_and_no_partition_runs_twice() {
    let db = TestDatabase::postgres().await;
    let store = MetaStore::connect(&db.url).await.unwrap();
    store.migrate().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let now = chrono::Utc::now().timestamp_millis();
    // The watermark just short of this hour: the hours due are fixed (the
    // last one, its 5 minutes' lateness not passed, never is), so once they
    // are done the schedulers have nothing left to start.
    let watermark = now - now.rem_euclid(HOUR) - 1;
    tillwatch_integration_tests::write_fleet_hours(&dir.path().join("lake"), now, 24, watermark);
    // `start = "1d"`: from the start of yesterday (UTC, offsets [0, 0]).
    let yesterday = Partition::containing(Grain::Day, now - 24 * HOUR);
    let hours = Partition::range(Grain::Hour, yesterday.start_ms, watermark - 5 * 60_000);
    let due = hours.len();
    // Yesterday's daily and fleet rollups, once all its hours are due.
    let days_due = usize::from(
        hours
            .last()
            .is_some_and(|h| h.end_ms() >= yesterday.end_ms()),
    );

    let mut a = Some(scheduler("sched-a", dir.path(), &db.url));
    let mut b = Some(scheduler("sched-b", dir.path(), &db.url));

    // Freeze whichever scheduler is running a partition, and make sure
    // the run is still unfinished while it is frozen; then kill it.
    let mut killed = None;
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while killed.is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "never caught a scheduler mid-run"
        );
        let rows = store.job_partitions().await.unwrap();
        let Some(running) = rows.iter().find(|r| r.status == "running") else {
            tokio::time::sleep(Duration::from_millis(5)).await;
            continue;
        };
        let owner = running.owner.clone().unwrap();
        let slot = if owner == "sched-a" { &mut a } else { &mut b };
        let role = slot.as_ref().unwrap();
        role.signal(libc::SIGSTOP);
        // A commit the scheduler sent just before it froze may still land;
        // a frozen scheduler sends nothing more. Once its claim has lapsed
        // unrenewed, what the store says of the run is final: still
        // running (or already taken over), or finished after all.
        let lapse_by = std::time::Instant::now() + Duration::from_secs(30);
        let run_id = running.run_id.clone().unwrap();
        let still = loop {
            let run = store.job_run(&run_id).await.unwrap().unwrap();
            if run.status == "abandoned" {
                // Taken over already: it never finished.
                break true;
            }
            if run.status != "running" {
                break false;
            }
            let now_ms = chrono::Utc::now().timestamp_millis();
            let lapsed = store.job_partitions().await.unwrap().into_iter().any(|r| {
                r.run_id.as_deref() == Some(run_id.as_str())
                    && r.lease_until_ms.is_some_and(|l| l < now_ms)
            });
            if lapsed {
                break true;
            }
            assert!(
                std::time::Instant::now() < lapse_by,
                "the frozen scheduler's claim never lapsed"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        if still {
            slot.take().unwrap().kill();
            killed = Some((owner, running.clone()));
        } else {
            role.signal(libc::SIGCONT);
        }
    }
    let (dead, taken) = killed.unwrap();
    let survivor = if dead == "sched-a" {
        "sched-b"
    } else {
        "sched-a"
    };

    // The survivor takes the partition over once the claim lapses, and
    // finishes the rest.
    let until = std::time::Instant::now() + Duration::from_secs(180);
    let rows = loop {
        let rows = store.job_partitions().await.unwrap();
        let done = |job: &str| {
            rows.iter()
                .filter(|r| r.job == job && r.status == "succeeded")
                .count()
        };
        let settled = rows.iter().all(|r| r.status == "succeeded");
        if settled
            && done("raw_compaction") == due
            && done("device_health_hourly") == due
            && done("device_health_daily") == days_due
            && done("fleet_health_daily") == days_due
        {
            break rows;
        }
        assert!(
            std::time::Instant::now() < until,
            "the survivor did not finish ({due} hours and {days_due} days due): {:?}",
            rows.iter()
                .map(|r| format!("{} {} {}", r.job, r.partition_key, r.status))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let row = rows
        .iter()
        .find(|r| r.job == taken.job && r.partition_key == taken.partition_key)
        .unwrap();
    assert_eq!(row.owner.as_deref(), Some(survivor), "{row:?}");

    let runs = store.job_runs(None, None, 10_000).await.unwrap();
    let mut succeeded = std::collections::HashMap::new();
    for r in runs.iter().filter(|r| r.status == "succeeded") {
        *succeeded
            .entry((r.job.clone(), r.partition_key.clone()))
            .or_insert(0) += 1;
    }
    assert!(
        succeeded.values().all(|n| *n == 1),
        "a partition ran to success twice: {succeeded:?}"
    );
    assert_eq!(succeeded.len(), rows.len());
    let dead_run = runs
        .iter()
        .find(|r| Some(&r.run_id) == taken.run_id.as_ref())
        .unwrap();
    assert_eq!(dead_run.status, "abandoned", "{dead_run:?}");
    let retry = runs
        .iter()
        .find(|r| {
            r.job == taken.job && r.partition_key == taken.partition_key && r.status == "succeeded"
        })
        .unwrap();
    assert_eq!(
        (retry.scheduler.as_str(), retry.reason.as_str()),
        (survivor, "lease_expired")
    );
    let left: Vec<_> = runs.iter().filter(|r| r.status == "running").collect();
    assert!(
        left.is_empty(),
        "runs left running: {left:#?}\nkilled: {taken:#?}"
    );

    let mut last = a.or(b).unwrap();
    assert!(last.terminate().success());
    drop(store);
    db.drop_it().await;
}

/// What a webhook receiver was sent: `(device id, status)` per page.
#[derive(Clone, Default)]
/// Webhook pages received: (device, status, alert id).
struct Pages(std::sync::Arc<std::sync::Mutex<Vec<(String, String, String)>>>);

impl Pages {
    async fn serve(&self) -> String {
        let pages = self.clone();
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(
                move |axum::Json(body): axum::Json<serde_json::Value>| async move {
                    let device = body["alert"]["labels"]["device_id"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string();
                    let status = body["status"].as_str().unwrap_or_default().to_string();
                    let id = body["alert"]["alert_id"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string();
                    pages.0.lock().unwrap().push((device, status, id));
                    axum::http::StatusCode::ACCEPTED
                },
            ),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        url
    }

    fn count(&self, device: &str, status: &str) -> usize {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|(d, s, _)| d == device && s == status)
            .count()
    }

    /// The alert ids paged for `device`, in order received.
    fn ids(&self, device: &str) -> Vec<String> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|(d, _, _)| d == device)
            .map(|(_, _, id)| id.clone())
            .collect()
    }
}

fn alerter(name: &str, dir: &Path, db: &str, broker: &str, config: &Path) -> RoleProcess {
    let data = dir.join(name);
    RoleProcess::role(
        &[
            "alerter",
            "--config",
            config.to_str().expect("UTF-8"),
            "--broker",
            broker,
            "--http-listen",
            "127.0.0.1:0",
            "--data-dir",
            data.to_str().expect("UTF-8"),
        ],
        &[
            ("TILLWATCH__METADATA__URL", db),
            ("TILLWATCH__ALERTER__NAME", name),
            ("TILLWATCH__ALERTER__LEASE", "2s"),
        ],
    )
}

/// A terminal that comes online (birth, then readings until the active
/// alerter has it online) and then loses its connection: offline by its
/// last will.
async fn terminal_drops(broker_port: u16, device: &str, store: &MetaStore) {
    use prost::Message;
    use rumqttc::QoS;
    use tillwatch_proto::telemetry::v1 as pb;
    let topic = format!("tw/v1/m-ha/{device}");
    let now = || chrono::Utc::now().timestamp_millis();
    let status = |state: pb::ConnectionState, reason: pb::StatusReason| {
        pb::DeviceStatus {
            device_id: device.into(),
            boot_id: 9,
            state: state as i32,
            reason: reason as i32,
            at_ms: now(),
        }
        .encode_to_vec()
    };
    let will = status(
        pb::ConnectionState::Offline,
        pb::StatusReason::ConnectionLost,
    );
    let (client, connection) =
        tillwatch_integration_tests::terminal_with_will(broker_port, device, &topic, will);
    client
        .publish(
            format!("{topic}/status"),
            QoS::AtLeastOnce,
            true,
            status(pb::ConnectionState::Online, pb::StatusReason::Birth),
        )
        .await
        .unwrap();
    let until = std::time::Instant::now() + Duration::from_secs(30);
    let mut seq = 1;
    loop {
        let online = store
            .connectivity_history(device, 1)
            .await
            .ok()
            .and_then(|h| h.first().map(|h| h.to))
            == Some(tillwatch_domain::connectivity::ConnState::Online);
        if online {
            break;
        }
        assert!(
            std::time::Instant::now() < until,
            "the active alerter never saw {device} online"
        );
        let batch = pb::TelemetryBatch {
            readings: vec![pb::Reading {
                device_id: device.into(),
                boot_id: 9,
                seq,
                sampled_at_ms: now(),
                kind: Some(pb::reading::Kind::Battery(pb::Battery {
                    level_pct: 80,
                    charging: false,
                    temperature_celsius: 25.0,
                    voltage_mv: 4000,
                    health_pct: 95,
                    cycle_count: 2,
                })),
            }],
        };
        client
            .publish(
                format!("{topic}/telemetry"),
                QoS::AtLeastOnce,
                false,
                batch.encode_to_vec(),
            )
            .await
            .unwrap();
        seq += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The socket breaks without a DISCONNECT: the broker sends the will.
    connection.abort();
}

/// Which of two alerters says it is active (`None` while neither, or
/// both, do).
fn active_of(alerters: &[&RoleProcess]) -> Option<usize> {
    let active: Vec<usize> = alerters
        .iter()
        .enumerate()
        .filter(|(_, a)| a.metric("tillwatch_alerter_active") == Some(1.0))
        .map(|(i, _)| i)
        .collect();
    (active.len() == 1).then(|| active[0])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_alerters_take_turns_and_never_send_a_page_twice() {
    let db = TestDatabase::postgres().await;
    let store = MetaStore::connect(&db.url).await.unwrap();
    store.migrate().await.unwrap();
    let mosquitto = Mosquitto::start();
    let pages = Pages::default();
    let hook = pages.serve().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("alerter.toml");
    std::fs::write(
        &config,
        format!(
            "[alerting.rules.offline]\nfor = \"0s\"\n\n\
             [alerting.correlation]\nwait = \"2s\"\n\n\
             [[alerting.receivers]]\nname = \"oncall\"\nkind = \"webhook\"\nurl = \"{hook}\"\n"
        ),
    )
    .unwrap();
    let url = mosquitto.url();
    let mut alerters = [
        Some(alerter("alerter-a", dir.path(), &db.url, &url, &config)),
        Some(alerter("alerter-b", dir.path(), &db.url, &url, &config)),
    ];
    let mut first = None;
    wait_for("one alerter to be active", Duration::from_secs(30), || {
        let running: Vec<&RoleProcess> = alerters.iter().flatten().collect();
        first = active_of(&running);
        first.is_some()
    })
    .await;
    let first = first.unwrap();

    terminal_drops(mosquitto.port, "term-ha-1", &store).await;
    wait_for("the page for term-ha-1", Duration::from_secs(30), || {
        pages.count("term-ha-1", "firing") >= 1
    })
    .await;
    // Killed once the page is on record: a kill between the request and
    // its record re-sends that one page (documented in the alerter's
    // delivery; the body's alert_id lets a receiver drop it). What this
    // test holds is that a takeover never pages again what was sent.
    let alert_id = pages.ids("term-ha-1")[0].clone();
    let mut recorded = false;
    for _ in 0..300 {
        if store
            .delivery_of("oncall", &alert_id)
            .await
            .unwrap()
            .is_some_and(|(state, _)| state == Some(tillwatch_meta::AlertState::Firing))
        {
            recorded = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        recorded,
        "the page for term-ha-1 was never recorded as sent"
    );

    // The active one dies; the other takes over once the lease lapses.
    alerters[first].take().unwrap().kill();
    let survivor = 1 - first;
    wait_for(
        "the standby alerter to take over",
        Duration::from_secs(30),
        || {
            alerters[survivor]
                .as_ref()
                .unwrap()
                .metric("tillwatch_alerter_active")
                == Some(1.0)
        },
    )
    .await;
    terminal_drops(mosquitto.port, "term-ha-2", &store).await;
    wait_for("the page for term-ha-2", Duration::from_secs(30), || {
        pages.count("term-ha-2", "firing") >= 1
    })
    .await;

    // Once each: the survivor did not page term-ha-1 again, and never
    // both at once. (The webhook's reminder interval is hours.)
    assert_eq!(
        pages.ids("term-ha-1"),
        vec![alert_id],
        "term-ha-1 was paged again after the takeover"
    );
    assert_eq!(pages.count("term-ha-2", "firing"), 1);
    let (holder, _) = store
        .lease_holder(tillwatch_alerter::LEASE)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        holder,
        if survivor == 0 {
            "alerter-a"
        } else {
            "alerter-b"
        }
    );

    let mut last = alerters[survivor].take().unwrap();
    assert!(last.terminate().success());
    assert_eq!(
        store.lease_holder(tillwatch_alerter::LEASE).await.unwrap(),
        None,
        "a clean stop gives the lease up at once"
    );
    drop(store);
    db.drop_it().await;
}
