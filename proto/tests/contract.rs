//! The contract round-trips through its encoding.

use prost::Message;
use tillwatch_proto::telemetry::v1 as pb;

#[test]
fn a_batch_of_every_kind_round_trips() {
    let readings = vec![
        pb::Reading {
            device_id: "dev-1".into(),
            boot_id: 0xdead_beef_0000_0001,
            seq: 0,
            sampled_at_ms: 1_790_000_000_000,
            kind: Some(pb::reading::Kind::Connectivity(pb::Connectivity {
                network_type: pb::NetworkType::Cellular as i32,
                rssi_dbm: -97,
                payment_host_latency_ms: 240,
                disconnects: 2,
                carrier_or_ssid: "Vodafone".into(),
            })),
        },
        pb::Reading {
            device_id: "dev-1".into(),
            boot_id: 0xdead_beef_0000_0001,
            seq: 1,
            sampled_at_ms: 1_790_000_015_000,
            kind: Some(pb::reading::Kind::Battery(pb::Battery {
                level_pct: 11,
                charging: false,
                temperature_celsius: 38.5,
                voltage_mv: 3610,
                health_pct: 87,
                cycle_count: 412,
            })),
        },
        pb::Reading {
            device_id: "dev-1".into(),
            boot_id: 0xdead_beef_0000_0001,
            seq: 2,
            sampled_at_ms: 1_790_000_030_000,
            kind: Some(pb::reading::Kind::AppPerformance(pb::AppPerformance {
                app_version: "4.2.0".into(),
                firmware_version: "fw-7.1".into(),
                transactions: 14,
                transaction_latency_avg_ms: 1800,
                transaction_latency_max_ms: 5200,
                startup_ms: Some(2100),
                crashes: 1,
                hangs: 0,
                memory_used_kib: 210_000,
                cpu_pct: 37.5,
            })),
        },
        pb::Reading {
            device_id: "dev-1".into(),
            boot_id: 0xdead_beef_0000_0001,
            seq: 3,
            sampled_at_ms: 1_790_000_045_000,
            kind: Some(pb::reading::Kind::PaymentHealth(pb::PaymentHealth {
                offline_queue_len: 3,
                offline_queue_oldest_age_s: 7200,
                tamper_detected: true,
                printer_paper_low: true,
            })),
        },
    ];
    let batch = pb::TelemetryBatch { readings };
    let bytes = batch.encode_to_vec();
    let decoded = pb::TelemetryBatch::decode(bytes.as_slice()).expect("decodes");
    assert_eq!(decoded, batch);

    let status = pb::DeviceStatus {
        device_id: "dev-1".into(),
        boot_id: 7,
        state: pb::ConnectionState::Offline as i32,
        reason: pb::StatusReason::ConnectionLost as i32,
        at_ms: 1_790_000_000_000,
    };
    assert_eq!(
        pb::DeviceStatus::decode(status.encode_to_vec().as_slice()).expect("decodes"),
        status
    );

    let info = pb::DeviceInfo {
        device_id: "dev-1".into(),
        boot_id: 7,
        model: "Countertop C2".into(),
        serial: "SN0001".into(),
        firmware_version: "fw-7.1".into(),
        app_version: "4.2.0".into(),
        merchant_id: "m-1".into(),
        store_id: "m-1-s1".into(),
        time_zone: "Europe/Berlin".into(),
        at_ms: 1_790_000_000_000,
    };
    assert_eq!(
        pb::DeviceInfo::decode(info.encode_to_vec().as_slice()).expect("decodes"),
        info
    );
}
