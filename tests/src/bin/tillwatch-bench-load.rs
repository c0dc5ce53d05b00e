//! The ingest benchmark's traffic and its measurements (`tests/bench-ingest`).
//!
//!   tillwatch-bench-load publish BROKER DEVICES MESSAGES [RATE]
//!   tillwatch-bench-load subscribe BROKER CLIENT_ID
//!   tillwatch-bench-load drain BROKER CLIENT_ID MESSAGES
//!   tillwatch-bench-load latency DATA_DIR FROM_MS
//!   tillwatch-bench-load fleet BROKER DEVICES INTERVAL_S DURATION_S
//!
//! `publish` sends MESSAGES telemetry messages of one reading each (the
//! four kinds in turn, about 120 bytes with the topic) from DEVICES
//! terminals over a few QoS 1 connections with a large in-flight window,
//! and waits for every PUBACK. Without RATE it publishes as fast as the
//! broker acks, sampled on a past clock (a backlog); with RATE
//! (messages/s) it paces itself and stamps each reading with the wall
//! clock, so `latency` can tell how long each took to become durable.
//!
//! `subscribe` creates a persistent QoS 1 session on the telemetry topics
//! and leaves; `drain` reconnects to it and takes MESSAGES messages,
//! acking each at once and doing nothing else: the broker's own drain rate
//! through the same MQTT client the gateway uses.
//!
//! `latency` reads every reading sampled at or after FROM_MS back from the
//! lake under DATA_DIR and compares its sample time with the time its file
//! was renamed into place (its ctime), i.e. publish → durable.
//!
//! `fleet` is the connection-count test: DEVICES terminals, each its own
//! MQTT connection (opened 200 at a time), all connected at once, each
//! publishing one reading every INTERVAL_S seconds (spread evenly over the
//! interval) with wall-clock sample times for DURATION_S seconds after the
//! last one connected; every connection stays open to the end.
//!
//! Each prints one JSON line.

use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arrow::array::AsArray;
use arrow::datatypes::TimestampMillisecondType;
use prost::Message;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tillwatch_integration_tests::files_below;
use tillwatch_proto::telemetry::v1 as pb;
use tillwatch_proto::topic::{Channel, device_topic};

/// Connections the publisher spreads its terminals over.
const CONNECTIONS: usize = 4;
/// Unacknowledged QoS 1 messages per connection.
const INFLIGHT: u16 = 1_000;

fn usage() -> ! {
    eprintln!(
        "usage: tillwatch-bench-load publish BROKER DEVICES MESSAGES [RATE]\n       \
         tillwatch-bench-load subscribe BROKER CLIENT_ID\n       \
         tillwatch-bench-load drain BROKER CLIENT_ID MESSAGES\n       \
         tillwatch-bench-load latency DATA_DIR FROM_MS\n       \
         tillwatch-bench-load fleet BROKER DEVICES INTERVAL_S DURATION_S"
    );
    std::process::exit(2)
}

fn arg<T: std::str::FromStr>(args: &[String], i: usize, name: &str) -> T {
    let Some(raw) = args.get(i) else { usage() };
    raw.parse().unwrap_or_else(|_| {
        eprintln!("error: {name} {raw:?} is not valid");
        std::process::exit(2)
    })
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as i64
}

fn options(broker: &str, client_id: &str) -> MqttOptions {
    let addr = tillwatch_config::BrokerAddr::parse(broker).unwrap_or_else(|e| {
        eprintln!("error: broker {broker:?}: {e}");
        std::process::exit(2)
    });
    let mut options = MqttOptions::new(client_id, addr.host, addr.port);
    options
        .set_keep_alive(Duration::from_secs(30))
        .set_inflight(INFLIGHT)
        .set_max_packet_size(1024 * 1024, 1024 * 1024);
    options
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let line = match args.first().map(String::as_str) {
        Some("publish") => {
            let rate = args.get(4).map(|_| arg::<f64>(&args, 4, "RATE"));
            publish(
                &arg::<String>(&args, 1, "BROKER"),
                arg(&args, 2, "DEVICES"),
                arg(&args, 3, "MESSAGES"),
                rate,
            )
            .await
        }
        Some("subscribe") => {
            subscribe(
                &arg::<String>(&args, 1, "BROKER"),
                &arg::<String>(&args, 2, "CLIENT_ID"),
            )
            .await
        }
        Some("drain") => {
            drain(
                &arg::<String>(&args, 1, "BROKER"),
                &arg::<String>(&args, 2, "CLIENT_ID"),
                arg(&args, 3, "MESSAGES"),
            )
            .await
        }
        Some("fleet") => {
            fleet(
                &arg::<String>(&args, 1, "BROKER"),
                arg(&args, 2, "DEVICES"),
                arg(&args, 3, "INTERVAL_S"),
                arg(&args, 4, "DURATION_S"),
            )
            .await
        }
        Some("latency") => latency(
            Path::new(&arg::<String>(&args, 1, "DATA_DIR")),
            arg(&args, 2, "FROM_MS"),
        ),
        _ => usage(),
    };
    println!("{line}");
}

/// The `n`-th reading of terminal `device`: the four kinds in turn, with
/// the strings a real terminal sends.
fn reading(device: &str, boot_id: u64, n: u64, sampled_at_ms: i64) -> pb::Reading {
    use pb::reading::Kind;
    let v = (n as u32).wrapping_mul(2_654_435_761) >> 8;
    let kind = match n % 4 {
        0 => Kind::Connectivity(pb::Connectivity {
            network_type: pb::NetworkType::Wifi as i32,
            rssi_dbm: -45 - (v % 40) as i32,
            payment_host_latency_ms: 90 + v % 400,
            disconnects: u32::from(v.is_multiple_of(17)),
            carrier_or_ssid: "StoreNet-5G-Backoffice".into(),
        }),
        1 => Kind::Battery(pb::Battery {
            level_pct: 20 + v % 80,
            charging: v.is_multiple_of(3),
            temperature_celsius: 28.0 + (v % 90) as f32 / 10.0,
            voltage_mv: 3_700 + v % 500,
            health_pct: 88,
            cycle_count: 412,
        }),
        2 => Kind::AppPerformance(pb::AppPerformance {
            app_version: "4.12.1+build.2291".into(),
            firmware_version: "PAYOS-2.8.0-r14".into(),
            transactions: v % 6,
            transaction_latency_avg_ms: 700 + v % 900,
            transaction_latency_max_ms: 1_900 + v % 2_000,
            startup_ms: None,
            crashes: 0,
            hangs: 0,
            memory_used_kib: 150_000 + v % 60_000,
            cpu_pct: (v % 400) as f32 / 10.0,
        }),
        _ => Kind::PaymentHealth(pb::PaymentHealth {
            offline_queue_len: v % 3,
            offline_queue_oldest_age_s: if v.is_multiple_of(3) { 0 } else { 40 },
            tamper_detected: false,
            printer_paper_low: v.is_multiple_of(50),
        }),
    };
    pb::Reading {
        device_id: device.to_string(),
        boot_id,
        seq: n,
        sampled_at_ms,
        kind: Some(kind),
    }
}

fn terminal(d: usize) -> (String, String) {
    (format!("TW-A920-{d:08}"), format!("mch-{:05}", d % 997))
}

/// Publishes `messages` readings, dealt round robin over the connections,
/// and returns once every one is acked.
async fn publish(broker: &str, devices: usize, messages: u64, rate: Option<f64>) -> String {
    assert!(
        devices > 0 && messages > 0,
        "DEVICES and MESSAGES must be > 0"
    );
    let run = std::process::id();
    // A boot of its own per run: the gateway keeps each (device, boot,
    // seq) once, and a second run must not repeat the first's.
    let boot_id = (now_ms() as u64) << 16 | u64::from(run & 0xffff);
    let connections = CONNECTIONS.min(devices);
    // A backlog is sampled on a clock ending now: each terminal's readings
    // evenly over the last two hours.
    let per_device = messages.div_ceil(devices as u64).max(1);
    let backlog_start = now_ms() - 2 * 3_600_000;
    let backlog_step = (2 * 3_600_000 / per_device as i64).max(1);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..connections {
        let my_devices: Vec<usize> = (c..devices).step_by(connections).collect();
        // Messages are dealt to the connections round robin, in device
        // order, so connection c sends message i when i % connections == c.
        let mine = (messages + (connections - 1 - c) as u64) / connections as u64;
        let broker = broker.to_string();
        let client_id = format!("bench-load-{run}-{c}");
        tasks.push(tokio::spawn(async move {
            let (client, mut eventloop) = AsyncClient::new(options(&broker, &client_id), 4_096);
            let sender = tokio::spawn(async move {
                let terminals: Vec<(String, String)> =
                    my_devices.iter().map(|&d| terminal(d)).collect();
                let mut bytes = 0u64;
                let per_conn_rate = rate.map(|r| r / connections as f64);
                let start = Instant::now();
                for i in 0..mine {
                    if let Some(r) = per_conn_rate {
                        // Pace: message i is due at i / r seconds.
                        let due = Duration::from_secs_f64(i as f64 / r);
                        let elapsed = start.elapsed();
                        if due > elapsed {
                            tokio::time::sleep(due - elapsed).await;
                        }
                    }
                    let slot = (i % terminals.len() as u64) as usize;
                    let n = i / terminals.len() as u64;
                    let (device, merchant) = &terminals[slot];
                    let sampled = match rate {
                        Some(_) => now_ms(),
                        None => backlog_start + n as i64 * backlog_step,
                    };
                    let payload = pb::TelemetryBatch {
                        readings: vec![reading(device, boot_id, n, sampled)],
                    }
                    .encode_to_vec();
                    let topic = device_topic(merchant, device, Channel::Telemetry);
                    bytes += (topic.len() + payload.len()) as u64;
                    client
                        .publish(topic, QoS::AtLeastOnce, false, payload)
                        .await
                        .expect("the event loop is running");
                }
                (client, bytes)
            });
            let mut acked = 0u64;
            while acked < mine {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::PubAck(_))) => acked += 1,
                    Ok(_) => {}
                    Err(e) => panic!("publisher connection {c}: {e}"),
                }
            }
            let (client, bytes) = sender.await.expect("sender finished");
            let _ = client.disconnect().await;
            // Let the DISCONNECT go out.
            let _ = tokio::time::timeout(Duration::from_secs(1), eventloop.poll()).await;
            bytes
        }));
    }
    let mut bytes = 0;
    for task in tasks {
        bytes += task.await.expect("publisher task");
    }
    let seconds = started.elapsed().as_secs_f64();
    serde_json::json!({
        "messages": messages,
        "devices": devices,
        "connections": connections,
        "mean_message_bytes": bytes as f64 / messages as f64,
        "seconds": seconds,
        "messages_per_s": messages as f64 / seconds,
        "rate": rate,
    })
    .to_string()
}

fn session(broker: &str, client_id: &str) -> (AsyncClient, rumqttc::EventLoop) {
    let mut options = options(broker, client_id);
    options.set_clean_session(false).set_manual_acks(true);
    AsyncClient::new(options, 16 * 1024)
}

async fn subscribe(broker: &str, client_id: &str) -> String {
    let (client, mut eventloop) = session(broker, client_id);
    client
        .subscribe(Channel::Telemetry.filter(), QoS::AtLeastOnce)
        .await
        .expect("the event loop is running");
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::SubAck(_))) => break,
            Ok(_) => {}
            Err(e) => panic!("subscribe: {e}"),
        }
    }
    let _ = client.disconnect().await;
    let _ = tokio::time::timeout(Duration::from_secs(1), eventloop.poll()).await;
    serde_json::json!({ "subscribed": client_id }).to_string()
}

async fn drain(broker: &str, client_id: &str, messages: u64) -> String {
    let started = Instant::now();
    let (client, mut eventloop) = session(broker, client_id);
    // Acks go out from a task of their own, as the gateway's do: the poll
    // loop never waits on the request queue it is the one to empty.
    let (acks, mut to_ack) = tokio::sync::mpsc::unbounded_channel::<rumqttc::Publish>();
    let acked = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut acker = {
        let client = client.clone();
        let acked = acked.clone();
        tokio::spawn(async move {
            while let Some(publish) = to_ack.recv().await {
                if client.ack(&publish).await.is_err() {
                    return;
                }
                acked.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        })
    };
    let mut received = 0u64;
    let mut bytes = 0u64;
    // A drain that stops making progress says where it stands, every 10 s.
    let mut watchdog = tokio::time::interval(Duration::from_secs(10));
    watchdog.tick().await;
    let mut at_last_tick = 0u64;
    while received < messages {
        tokio::select! {
            polled = eventloop.poll() => match polled {
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    received += 1;
                    bytes += p.payload.len() as u64;
                    acks.send(p).expect("the ack task runs");
                }
                Ok(_) => {}
                Err(e) => panic!("drain: {e}"),
            },
            _ = watchdog.tick() => {
                if received == at_last_tick {
                    eprintln!(
                        "drain {client_id}: no message for 10 s; {received} of {messages} received, {} acked",
                        acked.load(std::sync::atomic::Ordering::Relaxed)
                    );
                }
                at_last_tick = received;
            }
        }
    }
    // The last acks go out before the clock stops.
    drop(acks);
    loop {
        tokio::select! {
            _ = &mut acker => break,
            event = eventloop.poll() => { event.expect("drain: the connection holds"); }
        }
    }
    let _ = client.disconnect().await;
    while let Ok(Ok(event)) = tokio::time::timeout(Duration::from_secs(5), eventloop.poll()).await {
        if matches!(event, Event::Outgoing(rumqttc::Outgoing::Disconnect)) {
            break;
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    serde_json::json!({
        "messages": received,
        "payload_bytes": bytes,
        "seconds": seconds,
        "messages_per_s": received as f64 / seconds,
    })
    .to_string()
}

fn latency(data_dir: &Path, from_ms: i64) -> String {
    use std::os::unix::fs::MetadataExt;
    let mut latencies: Vec<i64> = Vec::new();
    let mut files = 0usize;
    for path in files_below(data_dir) {
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
        if path.extension().is_none_or(|e| e != "parquet")
            || name.is_none_or(|n| n.starts_with('.'))
            || path.components().any(|c| c.as_os_str() == "dead_letter")
        {
            continue;
        }
        let meta = std::fs::metadata(&path).expect("stat a lake file");
        let durable_ms = meta.ctime() * 1000 + meta.ctime_nsec() / 1_000_000;
        let Ok(batches) = tillwatch_storage::read_file(&path) else {
            continue;
        };
        let mut counted = false;
        for batch in batches {
            let Some(column) = batch.column_by_name("sampled_at") else {
                continue;
            };
            for sampled in column
                .as_primitive::<TimestampMillisecondType>()
                .iter()
                .flatten()
            {
                if sampled >= from_ms {
                    latencies.push(durable_ms - sampled);
                    counted = true;
                }
            }
        }
        files += usize::from(counted);
    }
    latencies.sort_unstable();
    let pick = |q: f64| -> Option<i64> {
        if latencies.is_empty() {
            return None;
        }
        let i = ((latencies.len() as f64 * q).ceil() as usize).clamp(1, latencies.len()) - 1;
        Some(latencies[i])
    };
    serde_json::json!({
        "readings": latencies.len(),
        "files": files,
        "p50_ms": pick(0.50),
        "p95_ms": pick(0.95),
        "p99_ms": pick(0.99),
        "max_ms": latencies.last(),
    })
    .to_string()
}

/// Peak resident memory of this process, MiB.
fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kib| kib.parse::<f64>().ok())
        })
        .map_or(0.0, |kib| kib / 1024.0)
}

/// Polls the connection (answering pings) until `deadline`; false when it
/// fails first.
async fn serve_until(eventloop: &mut rumqttc::EventLoop, deadline: Instant) -> bool {
    let sleep = tokio::time::sleep_until(deadline.into());
    tokio::pin!(sleep);
    loop {
        tokio::select! {
            _ = &mut sleep => return true,
            event = eventloop.poll() => if event.is_err() { return false; },
        }
    }
}

/// Polls the connection until a packet `wanted` accepts arrives; false
/// when the connection fails first.
async fn poll_for(eventloop: &mut rumqttc::EventLoop, wanted: fn(&Packet) -> bool) -> bool {
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(packet)) if wanted(&packet) => return true,
            Ok(_) => {}
            Err(_) => return false,
        }
    }
}

async fn fleet(broker: &str, devices: usize, interval_s: f64, duration_s: f64) -> String {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
    assert!(
        devices > 0 && interval_s > 0.0,
        "DEVICES and INTERVAL_S must be > 0"
    );
    let run = std::process::id();
    let boot_id = (now_ms() as u64) << 16 | u64::from(run & 0xffff);
    let connecting = Arc::new(tokio::sync::Semaphore::new(200));
    let connected = Arc::new(AtomicUsize::new(0));
    let acked = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    // Every terminal waits here until all are connected; then the clock starts.
    let (all_tx, all_rx) = tokio::sync::watch::channel(None::<Instant>);
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(devices);
    for d in 0..devices {
        let (device, merchant) = terminal(d);
        let mut options = options(broker, &format!("bench-fleet-{run}-{d}"));
        options
            .set_keep_alive(Duration::from_secs((interval_s * 1.5).max(5.0) as u64))
            .set_inflight(10);
        let (connecting, connected, acked, failed) = (
            connecting.clone(),
            connected.clone(),
            acked.clone(),
            failed.clone(),
        );
        let mut all_rx = all_rx.clone();
        let offset = Duration::from_secs_f64(interval_s * d as f64 / devices as f64);
        tasks.push(tokio::spawn(async move {
            let (client, mut eventloop) = AsyncClient::new(options, 8);
            {
                let _permit = connecting.acquire().await.expect("the semaphore lives");
                if !poll_for(&mut eventloop, |p| matches!(p, Packet::ConnAck(_))).await {
                    failed.fetch_add(1, Ordering::SeqCst);
                    return;
                }
            }
            connected.fetch_add(1, Ordering::SeqCst);
            // Keep the connection served while waiting for the others.
            let t0 = loop {
                tokio::select! {
                    changed = all_rx.changed() => {
                        if changed.is_err() { return; }
                        if let Some(t0) = *all_rx.borrow() { break t0; }
                    }
                    event = eventloop.poll() => {
                        if event.is_err() { failed.fetch_add(1, Ordering::SeqCst); return; }
                    }
                }
            };
            let end = t0 + Duration::from_secs_f64(duration_s);
            let topic = device_topic(&merchant, &device, Channel::Telemetry);
            let mut n = 0u64;
            let mut next = t0 + offset;
            while next < end {
                // Serve the connection (pings) until the next reading is due.
                if !serve_until(&mut eventloop, next).await {
                    failed.fetch_add(1, Ordering::SeqCst);
                    return;
                }
                let payload = pb::TelemetryBatch {
                    readings: vec![reading(&device, boot_id, n, now_ms())],
                }
                .encode_to_vec();
                if client
                    .try_publish(topic.clone(), QoS::AtLeastOnce, false, payload)
                    .is_err()
                {
                    failed.fetch_add(1, Ordering::SeqCst);
                    return;
                }
                if !poll_for(&mut eventloop, |p| matches!(p, Packet::PubAck(_))).await {
                    failed.fetch_add(1, Ordering::SeqCst);
                    return;
                }
                acked.fetch_add(1, Ordering::SeqCst);
                n += 1;
                next += Duration::from_secs_f64(interval_s);
            }
            // Stay connected until everyone's run is over.
            if !serve_until(&mut eventloop, end).await {
                failed.fetch_add(1, Ordering::SeqCst);
                return;
            }
            let _ = client.disconnect().await;
            let _ = tokio::time::timeout(Duration::from_secs(1), eventloop.poll()).await;
        }));
    }
    // Wait until every terminal is connected (or has failed to).
    while connected.load(Ordering::SeqCst) + failed.load(Ordering::SeqCst) < devices {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let connect_seconds = started.elapsed().as_secs_f64();
    let at_once = connected.load(Ordering::SeqCst);
    let _ = all_tx.send(Some(Instant::now()));
    for task in tasks {
        let _ = task.await;
    }
    serde_json::json!({
        "devices": devices,
        "connected_at_once": at_once,
        "connect_seconds": connect_seconds,
        "interval_s": interval_s,
        "duration_s": duration_s,
        "acked": acked.load(Ordering::SeqCst),
        "failed": failed.load(Ordering::SeqCst),
        "peak_rss_mib": peak_rss_mib(),
    })
    .to_string()
}
