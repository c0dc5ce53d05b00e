//! The gateway's per-reading CPU path on one core: protobuf decode and
//! validation, then staging into Arrow batches and Parquet encoding (what a
//! flush writes, minus the disk).
//!
//!   cargo bench -p tillwatch-gateway --bench ingest

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use prost::Message;
use tillwatch_bus::decode::{DecodeLimits, Decoded, decode_message};
use tillwatch_domain::{Limits, MerchantId, UtcMillis};
use tillwatch_proto::telemetry::v1 as pb;
use tillwatch_storage::{Staging, StoredReading, encode_parquet};

/// Readings per iteration, whatever the batch size.
const READINGS: usize = 20_000;

/// `READINGS` readings from 1,000 terminals as MQTT messages of `per_message`
/// readings each: (topic, payload).
fn messages(per_message: usize, now_ms: i64) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut i = 0usize;
    while i < READINGS {
        let device = (i / per_message) % 1000;
        let device_id = format!("term-{device:05}");
        let readings = (0..per_message)
            .map(|j| {
                let n = i + j;
                let kind = match n % 4 {
                    0 => pb::reading::Kind::Connectivity(pb::Connectivity {
                        network_type: pb::NetworkType::Wifi as i32,
                        rssi_dbm: -40 - (n % 50) as i32,
                        payment_host_latency_ms: 80 + (n % 200) as u32,
                        disconnects: 0,
                        carrier_or_ssid: "shop-wifi".into(),
                    }),
                    1 => pb::reading::Kind::Battery(pb::Battery {
                        level_pct: (n % 100) as u32,
                        charging: n.is_multiple_of(3),
                        temperature_celsius: 31.5,
                        voltage_mv: 4100,
                        health_pct: 92,
                        cycle_count: 310,
                    }),
                    2 => pb::reading::Kind::AppPerformance(pb::AppPerformance {
                        app_version: "4.12.1".into(),
                        firmware_version: "2.8.0".into(),
                        transactions: 2,
                        transaction_latency_avg_ms: 900,
                        transaction_latency_max_ms: 2100,
                        startup_ms: None,
                        crashes: 0,
                        hangs: 0,
                        memory_used_kib: 180_000,
                        cpu_pct: 12.5,
                    }),
                    _ => pb::reading::Kind::PaymentHealth(pb::PaymentHealth {
                        offline_queue_len: 1,
                        offline_queue_oldest_age_s: 30,
                        tamper_detected: false,
                        printer_paper_low: false,
                    }),
                };
                pb::Reading {
                    device_id: device_id.clone(),
                    boot_id: 7,
                    seq: n as u64,
                    sampled_at_ms: now_ms - 60_000 + (n % 1000) as i64,
                    kind: Some(kind),
                }
            })
            .collect();
        let payload = pb::TelemetryBatch { readings }.encode_to_vec();
        out.push((format!("tw/v1/m-0001/{device_id}/telemetry"), payload));
        i += per_message;
    }
    out
}

fn limits() -> DecodeLimits {
    DecodeLimits {
        max_payload_bytes: 256 * 1024,
        sample_time: Limits::default(),
    }
}

fn decode_all(
    messages: &[(String, Vec<u8>)],
    now: UtcMillis,
    limits: &DecodeLimits,
    staging: Option<&mut Staging>,
) -> usize {
    let mut n = 0;
    let mut staging = staging;
    for (topic, payload) in messages {
        if let Decoded::Telemetry {
            merchant_id,
            readings,
            ..
        } = decode_message(topic, payload, now, limits)
        {
            n += readings.len();
            if let Some(staging) = staging.as_deref_mut() {
                let merchant: &MerchantId = &merchant_id;
                for reading in &readings {
                    staging.push_reading(StoredReading {
                        reading,
                        merchant_id: merchant,
                        store_id: None,
                        received_at: now,
                    });
                }
            }
        }
    }
    n
}

fn decode_validate(c: &mut Criterion) {
    let now = UtcMillis::now();
    let limits = limits();
    let mut group = c.benchmark_group("decode_validate");
    group.throughput(Throughput::Elements(READINGS as u64));
    for per_message in [1usize, 10, 100] {
        let msgs = messages(per_message, now.0);
        group.bench_with_input(
            BenchmarkId::new("readings_per_message", per_message),
            &msgs,
            |b, msgs| {
                b.iter(|| {
                    let n = decode_all(msgs, now, &limits, None);
                    assert_eq!(n, READINGS, "every reading valid");
                    black_box(n)
                })
            },
        );
    }
    group.finish();
}

fn decode_stage_encode(c: &mut Criterion) {
    let now = UtcMillis::now();
    let limits = limits();
    let mut group = c.benchmark_group("decode_validate_batch_parquet");
    group.throughput(Throughput::Elements(READINGS as u64));
    for per_message in [1usize, 10] {
        let msgs = messages(per_message, now.0);
        group.bench_with_input(
            BenchmarkId::new("readings_per_message", per_message),
            &msgs,
            |b, msgs| {
                b.iter(|| {
                    let mut staging = Staging::new();
                    decode_all(msgs, now, &limits, Some(&mut staging));
                    let mut bytes = 0;
                    for part in staging.finish() {
                        let mut out = Vec::with_capacity(1 << 20);
                        encode_parquet(&part, &mut out).expect("encodes");
                        bytes += out.len();
                    }
                    black_box(bytes)
                })
            },
        );
    }
    group.finish();
}

criterion_group!(benches, decode_validate, decode_stage_encode);
criterion_main!(benches);
