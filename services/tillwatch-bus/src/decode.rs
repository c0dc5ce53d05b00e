//! From an MQTT message (topic and bytes) to domain values or dead letters.
//!
//! Kept apart from the MQTT poll loop so every input class can be tested
//! without a broker. **Architecture Invariant:** this module is the only
//! place that turns protobuf into domain types.

use prost::Message;
use tillwatch_domain::DeadLetter;
use tillwatch_domain::{
    AppPerformance, Battery, BootId, Connectivity, DeviceId, DeviceInfo, DeviceStatus, Limits,
    MerchantId, NetworkType, PaymentHealth, Reading, RejectReason, Signal, StatusReason, StoreId,
    UtcMillis, validate_reading,
};
use tillwatch_proto::telemetry::v1 as pb;
use tillwatch_proto::topic::{Channel, DeviceTopic};

/// What the gateway does with one message.
#[derive(Debug)]
pub enum Decoded {
    /// Readings that passed validation, and those of the same batch that
    /// did not.
    Telemetry {
        merchant_id: MerchantId,
        device_id: DeviceId,
        readings: Vec<Reading>,
        rejected: Vec<DeadLetter>,
    },
    Status(DeviceStatus),
    Info(DeviceInfo),
    /// The whole message was rejected.
    Rejected(DeadLetter),
}

#[derive(Debug, Clone, Copy)]
pub struct DecodeLimits {
    pub max_payload_bytes: usize,
    pub sample_time: Limits,
}

impl DecodeLimits {
    /// The limits `[gateway]` sets; every consumer of device topics applies
    /// the same.
    pub fn from_config(config: &tillwatch_config::GatewayConfig) -> DecodeLimits {
        DecodeLimits {
            max_payload_bytes: config.max_payload_bytes,
            sample_time: Limits {
                max_future: config.max_future,
                max_age: config.max_age,
            },
        }
    }
}

struct Context<'a> {
    topic: &'a str,
    received_at: UtcMillis,
    merchant_id: Option<&'a str>,
    device_id: Option<&'a str>,
}

impl Context<'_> {
    fn dead_letter(&self, reason: RejectReason, payload: &[u8]) -> DeadLetter {
        DeadLetter {
            received_at: self.received_at,
            topic: clip(self.topic, MAX_DEAD_LETTER_TOPIC).to_string(),
            merchant_id: self.merchant_id.map(str::to_string),
            device_id: self.device_id.map(str::to_string),
            reason_code: reason.code(),
            reason: clip(&reason.to_string(), MAX_DEAD_LETTER_REASON).to_string(),
            payload: payload[..payload.len().min(MAX_DEAD_LETTER_PAYLOAD)].to_vec(),
        }
    }
}

/// How much of a rejected message's payload a dead letter keeps: enough
/// to see what the terminal sent, not a copy of a flood.
pub const MAX_DEAD_LETTER_PAYLOAD: usize = 4 * 1024;
/// How much of its topic and of the reason (which may quote the message)
/// a dead letter keeps.
pub const MAX_DEAD_LETTER_TOPIC: usize = 256;
pub const MAX_DEAD_LETTER_REASON: usize = 512;

/// `text` cut to at most `max` bytes, on a character boundary.
fn clip(text: &str, max: usize) -> &str {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// Decodes and validates one message. Never panics on any input.
pub fn decode_message(
    topic: &str,
    payload: &[u8],
    received_at: UtcMillis,
    limits: &DecodeLimits,
) -> Decoded {
    let mut cx = Context {
        topic,
        received_at,
        merchant_id: None,
        device_id: None,
    };
    let Some(parsed) = DeviceTopic::parse(topic) else {
        let keep = payload.len().min(limits.max_payload_bytes);
        return Decoded::Rejected(
            cx.dead_letter(RejectReason::BadTopic(topic.to_string()), &payload[..keep]),
        );
    };
    cx.merchant_id = Some(parsed.merchant_id);
    cx.device_id = Some(parsed.device_id);
    if payload.len() > limits.max_payload_bytes {
        let reason = RejectReason::TooLarge {
            size: payload.len(),
            limit: limits.max_payload_bytes,
        };
        return Decoded::Rejected(cx.dead_letter(reason, &payload[..limits.max_payload_bytes]));
    }
    let ids = MerchantId::new(parsed.merchant_id)
        .and_then(|m| DeviceId::new(parsed.device_id).map(|d| (m, d)));
    let (merchant_id, device_id) = match ids {
        Ok(ids) => ids,
        Err(e) => {
            return Decoded::Rejected(cx.dead_letter(RejectReason::BadId(e.to_string()), payload));
        }
    };
    let result = match parsed.channel {
        Channel::Telemetry => {
            return decode_telemetry(&cx, merchant_id, device_id, payload, limits);
        }
        Channel::Status => decode_status(&device_id, payload).map(Decoded::Status),
        Channel::Info => {
            decode_info(&merchant_id, &device_id, payload, received_at, limits).map(Decoded::Info)
        }
    };
    result.unwrap_or_else(|reason| Decoded::Rejected(cx.dead_letter(reason, payload)))
}

/// A dead letter for one reading of a telemetry message that decoded but
/// is refused later (by the gateway's own limits): it keeps that
/// reading's protobuf, found again in `payload` by its boot and sequence
/// number, as a reading refused by validation keeps it.
pub fn refused_reading(
    topic: &str,
    payload: &[u8],
    received_at: UtcMillis,
    key: &tillwatch_domain::ReadingKey,
    merchant_id: &MerchantId,
    reason: RejectReason,
) -> DeadLetter {
    let cx = Context {
        topic,
        received_at,
        merchant_id: Some(merchant_id.as_str()),
        device_id: Some(key.device_id.as_str()),
    };
    let raw = pb::TelemetryBatch::decode(payload).ok().and_then(|batch| {
        batch
            .readings
            .into_iter()
            .find(|r| r.boot_id == key.boot_id.0 && r.seq == key.seq)
    });
    match raw {
        Some(raw) => cx.dead_letter(reason, &raw.encode_to_vec()),
        None => cx.dead_letter(reason, payload),
    }
}

/// [`decode_message`], then, with a provisioning record, the check that
/// the terminal sends under the merchant (and, in an info message, names
/// the store) it was provisioned for: a message that fails it is rejected
/// whole, with the reason, like any other dead letter.
pub fn decode_provisioned(
    topic: &str,
    payload: &[u8],
    received_at: UtcMillis,
    limits: &DecodeLimits,
    provisioning: Option<&crate::provisioning::Provisioning>,
) -> Decoded {
    let decoded = decode_message(topic, payload, received_at, limits);
    let Some(provisioning) = provisioning else {
        return decoded;
    };
    let checked = match &decoded {
        Decoded::Telemetry {
            merchant_id,
            device_id,
            ..
        } => provisioning.check(merchant_id.as_str(), device_id.as_str(), None),
        Decoded::Info(info) => provisioning.check(
            info.merchant_id.as_str(),
            info.device_id.as_str(),
            info.store_id.as_ref().map(StoreId::as_str),
        ),
        Decoded::Status(status) => match DeviceTopic::parse(topic) {
            Some(t) => provisioning.check(t.merchant_id, status.device_id.as_str(), None),
            None => Ok(()),
        },
        Decoded::Rejected(_) => Ok(()),
    };
    match checked {
        Ok(()) => decoded,
        Err(reason) => {
            let parsed = DeviceTopic::parse(topic);
            let cx = Context {
                topic,
                received_at,
                merchant_id: parsed.map(|t| t.merchant_id),
                device_id: parsed.map(|t| t.device_id),
            };
            Decoded::Rejected(cx.dead_letter(reason, payload))
        }
    }
}

fn malformed(e: prost::DecodeError) -> RejectReason {
    RejectReason::Malformed(e.to_string())
}

fn same_device(topic_device: &DeviceId, payload_device: &str) -> Result<(), RejectReason> {
    if payload_device == topic_device.as_str() {
        Ok(())
    } else {
        Err(RejectReason::DeviceMismatch {
            topic: topic_device.to_string(),
            payload: payload_device.to_string(),
        })
    }
}

fn decode_telemetry(
    cx: &Context<'_>,
    merchant_id: MerchantId,
    device_id: DeviceId,
    payload: &[u8],
    limits: &DecodeLimits,
) -> Decoded {
    let batch = match pb::TelemetryBatch::decode(payload) {
        Ok(batch) => batch,
        Err(e) => return Decoded::Rejected(cx.dead_letter(malformed(e), payload)),
    };
    if batch.readings.is_empty() {
        return Decoded::Rejected(cx.dead_letter(RejectReason::EmptyBatch, payload));
    }
    let mut readings = Vec::with_capacity(batch.readings.len());
    let mut rejected = Vec::new();
    for raw in batch.readings {
        match convert_reading(&device_id, &raw)
            .and_then(|r| validate_reading(&r, cx.received_at, &limits.sample_time).map(|()| r))
        {
            Ok(reading) => readings.push(reading),
            // One bad reading does not sink its batch: it alone is kept
            // aside, with its own bytes.
            Err(reason) => rejected.push(cx.dead_letter(reason, &raw.encode_to_vec())),
        }
    }
    Decoded::Telemetry {
        merchant_id,
        device_id,
        readings,
        rejected,
    }
}

fn convert_reading(device_id: &DeviceId, raw: &pb::Reading) -> Result<Reading, RejectReason> {
    same_device(device_id, &raw.device_id)?;
    let signal = match raw.kind.as_ref().ok_or(RejectReason::MissingSignal)? {
        pb::reading::Kind::Connectivity(c) => Signal::Connectivity(Connectivity {
            network_type: match pb::NetworkType::try_from(c.network_type) {
                Ok(pb::NetworkType::Wifi) => NetworkType::Wifi,
                Ok(pb::NetworkType::Ethernet) => NetworkType::Ethernet,
                Ok(pb::NetworkType::Cellular) => NetworkType::Cellular,
                _ => {
                    return Err(RejectReason::OutOfRange {
                        field: "network_type",
                        value: c.network_type.to_string(),
                        range: "WIFI, ETHERNET or CELLULAR",
                    });
                }
            },
            rssi_dbm: c.rssi_dbm,
            payment_host_latency_ms: c.payment_host_latency_ms,
            disconnects: c.disconnects,
            carrier_or_ssid: c.carrier_or_ssid.clone(),
        }),
        pb::reading::Kind::Battery(b) => Signal::Battery(Battery {
            level_pct: b.level_pct,
            charging: b.charging,
            temperature_celsius: b.temperature_celsius,
            voltage_mv: b.voltage_mv,
            health_pct: b.health_pct,
            cycle_count: b.cycle_count,
        }),
        pb::reading::Kind::AppPerformance(a) => Signal::AppPerformance(AppPerformance {
            app_version: a.app_version.clone(),
            firmware_version: a.firmware_version.clone(),
            transactions: a.transactions,
            transaction_latency_avg_ms: a.transaction_latency_avg_ms,
            transaction_latency_max_ms: a.transaction_latency_max_ms,
            startup_ms: a.startup_ms,
            crashes: a.crashes,
            hangs: a.hangs,
            memory_used_kib: a.memory_used_kib,
            cpu_pct: a.cpu_pct,
        }),
        pb::reading::Kind::PaymentHealth(p) => Signal::PaymentHealth(PaymentHealth {
            offline_queue_len: p.offline_queue_len,
            offline_queue_oldest_age_s: p.offline_queue_oldest_age_s,
            tamper_detected: p.tamper_detected,
            printer_paper_low: p.printer_paper_low,
        }),
    };
    Ok(Reading {
        device_id: device_id.clone(),
        boot_id: BootId(raw.boot_id),
        seq: raw.seq,
        sampled_at: UtcMillis(raw.sampled_at_ms),
        signal,
    })
}

fn decode_status(device_id: &DeviceId, payload: &[u8]) -> Result<DeviceStatus, RejectReason> {
    let status = pb::DeviceStatus::decode(payload).map_err(malformed)?;
    same_device(device_id, &status.device_id)?;
    let online = match pb::ConnectionState::try_from(status.state) {
        Ok(pb::ConnectionState::Online) => true,
        Ok(pb::ConnectionState::Offline) => false,
        _ => {
            return Err(RejectReason::OutOfRange {
                field: "state",
                value: status.state.to_string(),
                range: "ONLINE or OFFLINE",
            });
        }
    };
    let reason = match pb::StatusReason::try_from(status.reason) {
        Ok(pb::StatusReason::Birth) => StatusReason::Birth,
        Ok(pb::StatusReason::Shutdown) => StatusReason::Shutdown,
        Ok(pb::StatusReason::ConnectionLost) => StatusReason::ConnectionLost,
        _ => StatusReason::Unspecified,
    };
    Ok(DeviceStatus {
        device_id: device_id.clone(),
        boot_id: BootId(status.boot_id),
        online,
        reason,
        at: UtcMillis(status.at_ms),
    })
}

/// The longest model, serial, version or time zone an info message may
/// carry: they are shown on pages and become alert labels.
pub const MAX_INFO_FIELD_BYTES: usize = 64;

fn decode_info(
    merchant_id: &MerchantId,
    device_id: &DeviceId,
    payload: &[u8],
    received_at: UtcMillis,
    limits: &DecodeLimits,
) -> Result<DeviceInfo, RejectReason> {
    let info = pb::DeviceInfo::decode(payload).map_err(malformed)?;
    same_device(device_id, &info.device_id)?;
    for (field, value) in [
        ("model", &info.model),
        ("serial", &info.serial),
        ("firmware_version", &info.firmware_version),
        ("app_version", &info.app_version),
        ("time_zone", &info.time_zone),
    ] {
        if value.len() > MAX_INFO_FIELD_BYTES {
            return Err(RejectReason::TooLong {
                field,
                length: value.len(),
                limit: MAX_INFO_FIELD_BYTES,
            });
        }
    }
    if info.merchant_id != merchant_id.as_str() {
        return Err(RejectReason::MerchantMismatch {
            topic: merchant_id.to_string(),
            payload: info.merchant_id,
        });
    }
    let store_id = if info.store_id.is_empty() {
        None
    } else {
        Some(
            StoreId::new(&info.store_id)
                .map_err(|e| RejectReason::BadId(format!("store_id: {e}")))?,
        )
    };
    Ok(DeviceInfo {
        device_id: device_id.clone(),
        boot_id: BootId(info.boot_id),
        model: info.model,
        serial: info.serial,
        firmware_version: info.firmware_version,
        app_version: info.app_version,
        merchant_id: merchant_id.clone(),
        store_id,
        time_zone: info.time_zone,
        at: info_time(info.at_ms, received_at, &limits.sample_time),
    })
}

/// When an info message takes effect: the time the terminal stamped on it,
/// unless that lies further ahead of or behind the receive time than a
/// reading's sample time may (a clock not yet set, a hostile value); then
/// the receive time, the best guess left. The info itself is kept: it is
/// still what the terminal says it is now, and its retained copy may be
/// delivered long after it was published.
fn info_time(at_ms: i64, received_at: UtcMillis, limits: &tillwatch_domain::Limits) -> UtcMillis {
    let ahead = i64::try_from(limits.max_future.as_millis()).unwrap_or(i64::MAX);
    let behind = i64::try_from(limits.max_age.as_millis()).unwrap_or(i64::MAX);
    let earliest = received_at.0.saturating_sub(behind);
    let latest = received_at.0.saturating_add(ahead);
    if (earliest..=latest).contains(&at_ms) {
        UtcMillis(at_ms)
    } else {
        received_at
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: UtcMillis = UtcMillis(1_795_356_000_000);
    const TOPIC: &str = "tw/v1/m-1/dev-1/telemetry";

    fn limits() -> DecodeLimits {
        DecodeLimits {
            max_payload_bytes: 4096,
            sample_time: Limits::default(),
        }
    }

    fn battery(device: &str, seq: u64, level: u32) -> pb::Reading {
        pb::Reading {
            device_id: device.into(),
            boot_id: 42,
            seq,
            sampled_at_ms: NOW.0 - 1000,
            kind: Some(pb::reading::Kind::Battery(pb::Battery {
                level_pct: level,
                charging: false,
                temperature_celsius: 31.0,
                voltage_mv: 3800,
                health_pct: 95,
                cycle_count: 100,
            })),
        }
    }

    fn batch(readings: Vec<pb::Reading>) -> Vec<u8> {
        pb::TelemetryBatch { readings }.encode_to_vec()
    }

    fn rejected_code(decoded: Decoded) -> &'static str {
        match decoded {
            Decoded::Rejected(d) => d.reason_code,
            other => panic!("expected a rejection, got {other:?}"),
        }
    }

    #[test]
    fn a_valid_batch_decodes_to_readings() {
        let payload = batch(vec![battery("dev-1", 0, 50), battery("dev-1", 1, 49)]);
        match decode_message(TOPIC, &payload, NOW, &limits()) {
            Decoded::Telemetry {
                merchant_id,
                readings,
                rejected,
                ..
            } => {
                assert_eq!(merchant_id.as_str(), "m-1");
                assert_eq!(readings.len(), 2);
                assert_eq!(readings[1].seq, 1);
                assert_eq!(readings[0].boot_id, BootId(42));
                assert!(rejected.is_empty());
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_dead_letter_keeps_a_bounded_sample_of_what_came() {
        let l = DecodeLimits {
            max_payload_bytes: 256 * 1024,
            sample_time: Limits::default(),
        };
        let topic = format!("tw/v1/m-1/{}/telemetry", "d".repeat(5_000));
        match decode_message(&topic, &vec![7u8; 300 * 1024], NOW, &l) {
            Decoded::Rejected(d) => {
                assert_eq!(d.payload.len(), MAX_DEAD_LETTER_PAYLOAD);
                assert!(d.topic.len() <= MAX_DEAD_LETTER_TOPIC, "{}", d.topic.len());
                assert!(
                    d.reason.len() <= MAX_DEAD_LETTER_REASON,
                    "{}",
                    d.reason.len()
                );
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(clip("ab€", 3), "ab", "cut on a character boundary");
    }

    #[test]
    fn each_bad_input_class_is_rejected_with_its_reason() {
        let l = limits();
        assert_eq!(
            rejected_code(decode_message("tw/v1/m-1/telemetry", b"x", NOW, &l)),
            "bad_topic"
        );
        assert_eq!(
            rejected_code(decode_message(TOPIC, &vec![0u8; 5000], NOW, &l)),
            "too_large"
        );
        assert_eq!(
            rejected_code(decode_message(TOPIC, &[0xff, 0xff, 0xff, 0xff], NOW, &l)),
            "malformed"
        );
        assert_eq!(
            rejected_code(decode_message(TOPIC, &batch(vec![]), NOW, &l)),
            "empty_batch"
        );
        assert_eq!(
            rejected_code(decode_message(
                "tw/v1/m 1/dev-1/telemetry",
                &batch(vec![]),
                NOW,
                &l
            )),
            "bad_id"
        );
        let info = pb::DeviceInfo {
            device_id: "dev-1".into(),
            merchant_id: "m-2".into(),
            ..Default::default()
        }
        .encode_to_vec();
        assert_eq!(
            rejected_code(decode_message("tw/v1/m-1/dev-1/info", &info, NOW, &l)),
            "merchant_mismatch"
        );
        let status = pb::DeviceStatus {
            device_id: "dev-2".into(),
            state: pb::ConnectionState::Online as i32,
            ..Default::default()
        }
        .encode_to_vec();
        assert_eq!(
            rejected_code(decode_message("tw/v1/m-1/dev-1/status", &status, NOW, &l)),
            "device_mismatch"
        );
    }

    #[test]
    fn bad_readings_are_set_aside_without_sinking_the_batch() {
        let mut future = battery("dev-1", 3, 50);
        future.sampled_at_ms = NOW.0 + 3_600_000;
        let mut no_signal = battery("dev-1", 4, 50);
        no_signal.kind = None;
        let payload = batch(vec![
            battery("dev-1", 0, 50),
            battery("dev-2", 1, 50),
            battery("dev-1", 2, 150),
            future,
            no_signal,
        ]);
        match decode_message(TOPIC, &payload, NOW, &limits()) {
            Decoded::Telemetry {
                readings, rejected, ..
            } => {
                assert_eq!(readings.len(), 1);
                let codes: Vec<_> = rejected.iter().map(|d| d.reason_code).collect();
                assert_eq!(
                    codes,
                    [
                        "device_mismatch",
                        "out_of_range",
                        "sampled_in_future",
                        "missing_signal"
                    ]
                );
                assert!(
                    rejected[1].reason.contains("level_pct = 150"),
                    "{}",
                    rejected[1].reason
                );
                assert_eq!(rejected[0].device_id.as_deref(), Some("dev-1"));
                // The dead letter keeps the bad reading's own bytes.
                let kept = pb::Reading::decode(rejected[0].payload.as_slice()).unwrap();
                assert_eq!(kept.device_id, "dev-2");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn an_info_message_is_checked_before_it_names_a_terminal() {
        let info = |serial: String, at_ms: i64| {
            pb::DeviceInfo {
                device_id: "dev-1".into(),
                merchant_id: "m-1".into(),
                serial,
                at_ms,
                ..Default::default()
            }
            .encode_to_vec()
        };
        let decode =
            |payload: &[u8]| decode_message("tw/v1/m-1/dev-1/info", payload, NOW, &limits());
        let long = decode(&info("x".repeat(1_000), NOW.0));
        assert_eq!(rejected_code(long), "too_long");
        for (at, want) in [
            (NOW.0 - 60_000, NOW.0 - 60_000),
            (i64::MAX, NOW.0),
            (i64::MIN, NOW.0),
            (NOW.0 + 3_600_000, NOW.0),
        ] {
            match decode(&info("SN1".into(), at)) {
                Decoded::Info(i) => assert_eq!(i.at.0, want, "stamped {at}"),
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn status_and_info_decode() {
        let status = pb::DeviceStatus {
            device_id: "dev-1".into(),
            boot_id: 9,
            state: pb::ConnectionState::Offline as i32,
            reason: pb::StatusReason::ConnectionLost as i32,
            at_ms: NOW.0,
        };
        match decode_message(
            "tw/v1/m-1/dev-1/status",
            &status.encode_to_vec(),
            NOW,
            &limits(),
        ) {
            Decoded::Status(s) => {
                assert!(!s.online);
                assert_eq!(s.reason, StatusReason::ConnectionLost);
            }
            other => panic!("{other:?}"),
        }
        let info = pb::DeviceInfo {
            device_id: "dev-1".into(),
            merchant_id: "m-1".into(),
            store_id: "m-1-s2".into(),
            model: "C2".into(),
            ..Default::default()
        };
        match decode_message(
            "tw/v1/m-1/dev-1/info",
            &info.encode_to_vec(),
            NOW,
            &limits(),
        ) {
            Decoded::Info(i) => {
                assert_eq!(i.store_id.unwrap().as_str(), "m-1-s2");
                assert_eq!(i.at, NOW, "a time of 0 (a clock not set) is taken as now");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        for len in 0..400 {
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    state as u8
                })
                .collect();
            for topic in [TOPIC, "tw/v1/m-1/dev-1/status", "tw/v1/m-1/dev-1/info"] {
                let _ = decode_message(topic, &bytes, NOW, &limits());
            }
        }
    }
}
