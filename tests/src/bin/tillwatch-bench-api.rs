//! Latency of the dashboard's API calls over a large fleet.
//!
//!   tillwatch-bench-api DEVICES DAYS REQUESTS WORK_DIR
//!
//! Builds a fleet of DEVICES terminals (200 merchants, 2,000 stores) in a
//! SQLite metadata store (registry, connectivity state, newest signals, 2%
//! offline with a firing alert) and a lake with the last 6 hours of raw
//! readings (one of each kind every 5 minutes, compacted as closed hours
//! are) and DAYS days of the hourly rollup, then serves the HTTP API in-process and calls each of the
//! device page's requests (and the fleet and merchant pages') REQUESTS
//! times for random terminals, one at a time. Prints a table and one JSON
//! line with p50, p95 and p99 per call. `tests/bench-api` drives it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tillwatch_config::Config;
use tillwatch_domain::connectivity::{ConnState, ConnectivitySnapshot, OfflineReason, Transition};
use tillwatch_domain::{BootId, DeviceInfo, UtcMillis};
use tillwatch_integration_tests::{http_call, test_tokens};
use tillwatch_meta::{AlertRecord, AlertState, MetaStore, StateBatch};
use tillwatch_rollups::embedded::Embedded;
use tillwatch_rollups::jobs::DEVICE_HEALTH_HOURLY;
use tillwatch_rollups::synthetic::{Sampler, terminal, write_hours};
use tillwatch_scheduler::{Grain, Partition};
use tillwatch_storage::Lake;

const HOUR: i64 = 3_600_000;
const VIEWER: &str = "bench-viewer-token-000000001";
const OPERATOR: &str = "bench-operator-token-00000001";

async fn seed_store(store: &MetaStore, devices: usize, now: i64) {
    let mut sampler = Sampler::default();
    for chunk in (0..devices).collect::<Vec<_>>().chunks(500) {
        let mut batch = StateBatch::default();
        let mut alerts = Vec::new();
        for &d in chunk {
            let (id, merchant, store_id) = terminal(d);
            batch.info(&DeviceInfo {
                device_id: id.clone(),
                boot_id: BootId(1),
                model: ["A920", "P400", "V240m"][d % 3].into(),
                serial: format!("SN{d:08}"),
                firmware_version: ["2.0.3", "2.1.0", "2.1.1"][d % 3].into(),
                app_version: ["4.1.0", "4.2.0"][d % 2].into(),
                merchant_id: merchant.clone(),
                store_id: Some(store_id),
                time_zone: "Europe/London".into(),
                at: UtcMillis(now - 8 * 24 * HOUR),
            });
            batch.readings(
                &merchant,
                &sampler.readings(d, &id, now - 60_000, 1_000_000),
            );
            let offline = d % 50 == 7;
            let state = if offline {
                ConnState::Offline(OfflineReason::LastWill)
            } else {
                ConnState::Online
            };
            let since = now - (d as i64 % 600) * 60_000;
            batch.connectivity(
                id.as_str(),
                ConnectivitySnapshot {
                    state: Some(state),
                    since: UtcMillis(since),
                    boot: Some(BootId(1)),
                    last_telemetry: Some(UtcMillis(now - 60_000)),
                    gap_ms: Some(300_000.0),
                },
                Some(&Transition {
                    from: offline.then_some(ConnState::Online),
                    to: state,
                    at: UtcMillis(since),
                }),
            );
            if offline {
                alerts.push(AlertRecord {
                    alert_id: format!("bench-{d}"),
                    state: AlertState::Firing,
                    fired_at_ms: Some(since + 120_000),
                    ..AlertRecord::pending(
                        "offline",
                        id.as_str(),
                        "device",
                        "critical",
                        since,
                        since + 120_000,
                    )
                });
            }
        }
        store.record_batch(&batch).await.expect("seeding the store");
        store.save_alerts(&alerts).await.expect("seeding alerts");
    }
}

/// The hourly rollup of `template` copied to `hour`, with its hour column
/// set to it: DAYS of rollups without rolling DAYS of raw readings up.
fn copy_hour(engine: &Embedded, template: Partition, hour: Partition) {
    use arrow::array::{Array, ArrayRef, TimestampMillisecondArray};
    use arrow::datatypes::{DataType, TimeUnit};
    use arrow::record_batch::RecordBatch;
    let source = std::fs::File::open(engine.output_path(DEVICE_HEALTH_HOURLY, template))
        .expect("the template hour");
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(source)
        .expect("a Parquet file")
        .build()
        .expect("a reader");
    let path = engine.output_path(DEVICE_HEALTH_HOURLY, hour);
    std::fs::create_dir_all(path.parent().expect("a directory")).expect("mkdir");
    let mut writer = None;
    for batch in reader {
        let batch = batch.expect("a batch");
        let schema = batch.schema();
        let index = schema.index_of("hour").expect("an hour column");
        let old = batch.column(index);
        let DataType::Timestamp(TimeUnit::Millisecond, tz) = old.data_type() else {
            panic!("hour is {:?}", old.data_type());
        };
        let column: ArrayRef = Arc::new(
            TimestampMillisecondArray::from(vec![hour.start_ms; old.len()])
                .with_timezone_opt(tz.clone()),
        );
        let mut columns = batch.columns().to_vec();
        columns[index] = column;
        let batch = RecordBatch::try_new(schema.clone(), columns).expect("the same schema");
        let w = writer.get_or_insert_with(|| {
            parquet::arrow::ArrowWriter::try_new(
                std::fs::File::create(&path).expect("create"),
                schema.clone(),
                Some(tillwatch_rollups::embedded::output_properties()),
            )
            .expect("a writer")
        });
        w.write(&batch).expect("write");
    }
    if let Some(w) = writer {
        w.close().expect("close");
    }
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i].as_secs_f64() * 1000.0
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 5 {
        eprintln!("usage: tillwatch-bench-api DEVICES DAYS REQUESTS WORK_DIR");
        std::process::exit(2);
    }
    let devices: usize = args[1].parse().expect("DEVICES is a number");
    let days: i64 = args[2].parse().expect("DAYS is a number");
    let requests: usize = args[3].parse().expect("REQUESTS is a number");
    let work = std::path::PathBuf::from(&args[4]);
    let now = UtcMillis::now().0;
    let this_hour = Partition::containing(Grain::Hour, now).start_ms;

    let mut config = Config {
        data_dir: work.clone(),
        ..Config::default()
    };
    config.http.tokens = test_tokens(VIEWER, OPERATOR);
    std::fs::create_dir_all(&work).expect("the work dir");
    let started = Instant::now();
    let store = MetaStore::connect(&config.metadata_url())
        .await
        .expect("the store");
    store.migrate().await.expect("migrate");
    seed_store(&store, devices, now).await;
    eprintln!(
        "seeded {devices} terminals in the store in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    let started = Instant::now();
    let lake = Lake::new(work.join("lake"));
    let raw_from = this_hour - 6 * HOUR;
    let readings = write_hours(&lake, devices, raw_from, 6, 5);
    let engine = Embedded::new(lake.clone());
    let raw_hours = Partition::overlapping(Grain::Hour, raw_from, this_hour);
    for hour in &raw_hours {
        engine
            .device_health_hourly(*hour)
            .await
            .expect("an hourly rollup");
    }
    // Closed hours are compacted, as `raw_compaction` does an hour after
    // they close: one file per table-hour, sorted by terminal.
    for hour in &raw_hours {
        for kind in tillwatch_domain::Kind::ALL {
            lake.compact_hour(
                tillwatch_storage::Table::Reading(kind),
                tillwatch_domain::HourPartition(hour.start_ms / HOUR),
            )
            .expect("compacting an hour");
        }
    }
    let template = raw_hours[0];
    let mut hour = this_hour - days * 24 * HOUR;
    while hour < raw_from {
        copy_hour(&engine, template, Partition::containing(Grain::Hour, hour));
        hour += HOUR;
    }
    eprintln!(
        "wrote {readings} raw readings (6 hours) and {days} days of hourly rollups in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    let store = tillwatch_meta::MetaStore::open(&config)
        .await
        .expect("the metadata store");
    let router = tillwatch_serve::api_router(&config, store)
        .await
        .expect("the API");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a port");
    let addr = listener.local_addr().expect("an address");
    tokio::spawn(tillwatch_serve::serve_http(
        listener,
        tillwatch_serve::Readiness::Started,
        router,
        tillwatch_serve::HttpServing::of(&tillwatch_config::Config::default()).unwrap(),
        std::future::pending(),
    ));

    let mut sampler = 0x9e37_79b9_7f4a_7c15u64;
    let mut pick = move || {
        sampler ^= sampler << 13;
        sampler ^= sampler >> 7;
        sampler ^= sampler << 17;
        (sampler % devices as u64) as usize
    };
    type Call = (&'static str, Box<dyn Fn(usize) -> String>, usize);
    let now_ms = now;
    let calls: Vec<Call> = vec![
        (
            "device card",
            Box::new(|d| format!("/api/v1/devices/{}", terminal(d).0)),
            requests,
        ),
        (
            "series 24 h (hourly, the page's default)",
            Box::new(|d| format!("/api/v1/devices/{}/series", terminal(d).0)),
            requests,
        ),
        (
            "series 6 h (raw readings)",
            Box::new(move |d| {
                format!(
                    "/api/v1/devices/{}/series?from={}&to={now_ms}",
                    terminal(d).0,
                    now_ms - 6 * HOUR
                )
            }),
            requests,
        ),
        (
            "series 7 d (hourly)",
            Box::new(move |d| {
                format!(
                    "/api/v1/devices/{}/series?from={}&to={now_ms}",
                    terminal(d).0,
                    now_ms - 7 * 24 * HOUR
                )
            }),
            requests,
        ),
        (
            "merchant page",
            Box::new(|d| format!("/api/v1/merchants/{}", terminal(d).1)),
            requests.div_ceil(4),
        ),
        (
            "fleet page",
            Box::new(|_| "/api/v1/fleet".to_string()),
            requests.div_ceil(10),
        ),
    ];
    let mut json = Vec::new();
    println!(
        "{:<42} {:>5} {:>9} {:>9} {:>9} {:>9}",
        "call", "n", "p50 ms", "p95 ms", "p99 ms", "max ms"
    );
    for (name, path, n) in &calls {
        let mut took = Vec::with_capacity(*n);
        for _ in 0..*n {
            let path = path(pick());
            let started = Instant::now();
            let (status, body) = tokio::task::spawn_blocking(move || {
                http_call(addr, "GET", &path, None, Some(VIEWER)).expect("an answer")
            })
            .await
            .expect("the request");
            took.push(started.elapsed());
            assert_eq!(status, 200, "{name}: {body}");
        }
        took.sort();
        let (p50, p95, p99) = (
            percentile(&took, 0.50),
            percentile(&took, 0.95),
            percentile(&took, 0.99),
        );
        let max = took.last().map_or(0.0, |d| d.as_secs_f64() * 1000.0);
        println!("{name:<42} {n:>5} {p50:>9.1} {p95:>9.1} {p99:>9.1} {max:>9.1}");
        json.push(format!(
            "{{\"call\": \"{name}\", \"n\": {n}, \"p50_ms\": {p50:.1}, \"p95_ms\": {p95:.1}, \"p99_ms\": {p99:.1}, \"max_ms\": {max:.1}}}"
        ));
    }
    println!(
        "{{\"devices\": {devices}, \"days\": {days}, \"calls\": [{}]}}",
        json.join(", ")
    );
}
