//! The rules a reading must meet before it is stored. Pure: the caller
//! passes the current time.

use std::time::Duration;

use crate::{Reading, Signal, UtcMillis};

/// Why a message or reading was not stored. The variants are a bounded set,
/// so `code()` can be a metric label.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RejectReason {
    #[error("topic {0:?} is not tw/v1/{{merchant_id}}/{{device_id}}/{{telemetry|status|info}}")]
    BadTopic(String),
    #[error("payload is {size} bytes; the limit is {limit}")]
    TooLarge { size: usize, limit: usize },
    #[error("payload is not a valid protobuf message: {0}")]
    Malformed(String),
    #[error("batch holds no readings")]
    EmptyBatch,
    #[error("invalid id: {0}")]
    BadId(String),
    #[error("payload device id {payload:?} differs from topic device id {topic:?}")]
    DeviceMismatch { topic: String, payload: String },
    #[error("payload merchant id {payload:?} differs from topic merchant id {topic:?}")]
    MerchantMismatch { topic: String, payload: String },
    #[error("reading has no signal (connectivity, battery, app_performance or payment_health)")]
    MissingSignal,
    #[error(
        "sampled_at_ms {sampled_at_ms} is {ahead_ms} ms in the future; at most {limit_ms} ms is tolerated"
    )]
    SampledInFuture {
        sampled_at_ms: i64,
        ahead_ms: i64,
        limit_ms: i64,
    },
    #[error(
        "sampled_at_ms {sampled_at_ms} is {age_ms} ms in the past; at most {limit_ms} ms is accepted"
    )]
    SampledTooLongAgo {
        sampled_at_ms: i64,
        age_ms: i64,
        limit_ms: i64,
    },
    #[error("{field} = {value} is out of range {range}")]
    OutOfRange {
        field: &'static str,
        value: String,
        range: &'static str,
    },
    #[error("{field} is {length} bytes long; at most {limit} are accepted")]
    TooLong {
        field: &'static str,
        length: usize,
        limit: usize,
    },
    #[error(
        "boot_id {boot_id} would be this terminal's boot number {count} within gateway.max_age; \
         at most {limit} are kept apart (gateway.max_boots_per_device)"
    )]
    TooManyBoots {
        boot_id: u64,
        count: usize,
        limit: usize,
    },
    #[error("terminal {device_id} has no provisioning record (provisioning.file)")]
    NotProvisioned { device_id: String },
    #[error("terminal {device_id} is provisioned for merchant {provisioned}, not {claimed}")]
    WrongMerchant {
        device_id: String,
        provisioned: String,
        claimed: String,
    },
    #[error("terminal {device_id} is provisioned for store {provisioned}, not {claimed}")]
    WrongStore {
        device_id: String,
        provisioned: String,
        claimed: String,
    },
}

impl RejectReason {
    /// A short, stable name for metrics and the dead-letter table.
    pub fn code(&self) -> &'static str {
        match self {
            RejectReason::BadTopic(_) => "bad_topic",
            RejectReason::TooLarge { .. } => "too_large",
            RejectReason::Malformed(_) => "malformed",
            RejectReason::EmptyBatch => "empty_batch",
            RejectReason::BadId(_) => "bad_id",
            RejectReason::DeviceMismatch { .. } => "device_mismatch",
            RejectReason::MerchantMismatch { .. } => "merchant_mismatch",
            RejectReason::MissingSignal => "missing_signal",
            RejectReason::SampledInFuture { .. } => "sampled_in_future",
            RejectReason::SampledTooLongAgo { .. } => "sampled_too_long_ago",
            RejectReason::OutOfRange { .. } => "out_of_range",
            RejectReason::TooLong { .. } => "too_long",
            RejectReason::TooManyBoots { .. } => "too_many_boots",
            RejectReason::NotProvisioned { .. } => "not_provisioned",
            RejectReason::WrongMerchant { .. } => "wrong_merchant",
            RejectReason::WrongStore { .. } => "wrong_store",
        }
    }

    /// Every code, for declaring metrics up front.
    pub const CODES: [&'static str; 16] = [
        "bad_topic",
        "too_large",
        "malformed",
        "empty_batch",
        "bad_id",
        "device_mismatch",
        "merchant_mismatch",
        "missing_signal",
        "sampled_in_future",
        "sampled_too_long_ago",
        "out_of_range",
        "too_long",
        "too_many_boots",
        "not_provisioned",
        "wrong_merchant",
        "wrong_store",
    ];
}

/// How far a reading's sample time may stray from the receive time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Device clocks run ahead; beyond this a sample time is a lie.
    pub max_future: Duration,
    /// Terminals replay backlogs after days offline; older is not believable.
    pub max_age: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_future: Duration::from_secs(5 * 60),
            max_age: Duration::from_secs(30 * 24 * 3600),
        }
    }
}

fn range<T: PartialOrd + ToString>(
    field: &'static str,
    value: T,
    lo: T,
    hi: T,
    range: &'static str,
) -> Result<(), RejectReason> {
    if value >= lo && value <= hi {
        Ok(())
    } else {
        Err(RejectReason::OutOfRange {
            field,
            value: value.to_string(),
            range,
        })
    }
}

fn finite(
    field: &'static str,
    value: f32,
    lo: f32,
    hi: f32,
    r: &'static str,
) -> Result<(), RejectReason> {
    if value.is_nan() {
        return Err(RejectReason::OutOfRange {
            field,
            value: "NaN".into(),
            range: r,
        });
    }
    range(field, value, lo, hi, r)
}

/// Checks a decoded reading against the physical limits of a terminal and
/// the receive time `now`.
pub fn validate_reading(
    reading: &Reading,
    now: UtcMillis,
    limits: &Limits,
) -> Result<(), RejectReason> {
    let sampled = reading.sampled_at.0;
    let ahead = sampled.saturating_sub(now.0);
    let max_future = limits.max_future.as_millis() as i64;
    if ahead > max_future {
        return Err(RejectReason::SampledInFuture {
            sampled_at_ms: sampled,
            ahead_ms: ahead,
            limit_ms: max_future,
        });
    }
    let age = now.0.saturating_sub(sampled);
    let max_age = limits.max_age.as_millis() as i64;
    if age > max_age {
        return Err(RejectReason::SampledTooLongAgo {
            sampled_at_ms: sampled,
            age_ms: age,
            limit_ms: max_age,
        });
    }
    match &reading.signal {
        Signal::Connectivity(c) => {
            range("rssi_dbm", c.rssi_dbm, -150, 0, "-150..=0")?;
            range(
                "payment_host_latency_ms",
                c.payment_host_latency_ms,
                0,
                600_000,
                "0..=600000",
            )?;
            range("disconnects", c.disconnects, 0, 100_000, "0..=100000")?;
            range(
                "carrier_or_ssid length",
                c.carrier_or_ssid.len(),
                0,
                64,
                "0..=64",
            )?;
        }
        Signal::Battery(b) => {
            range("level_pct", b.level_pct, 0, 100, "0..=100")?;
            finite(
                "temperature_celsius",
                b.temperature_celsius,
                -40.0,
                120.0,
                "-40..=120",
            )?;
            range("voltage_mv", b.voltage_mv, 0, 30_000, "0..=30000")?;
            range("health_pct", b.health_pct, 0, 100, "0..=100")?;
            range("cycle_count", b.cycle_count, 0, 100_000, "0..=100000")?;
        }
        Signal::AppPerformance(a) => {
            range("app_version length", a.app_version.len(), 0, 64, "0..=64")?;
            range(
                "firmware_version length",
                a.firmware_version.len(),
                0,
                64,
                "0..=64",
            )?;
            range(
                "transaction_latency_avg_ms",
                a.transaction_latency_avg_ms,
                0,
                600_000,
                "0..=600000",
            )?;
            range(
                "transaction_latency_max_ms",
                a.transaction_latency_max_ms,
                0,
                600_000,
                "0..=600000",
            )?;
            if a.transaction_latency_avg_ms > a.transaction_latency_max_ms {
                return Err(RejectReason::OutOfRange {
                    field: "transaction_latency_avg_ms",
                    value: a.transaction_latency_avg_ms.to_string(),
                    range: "at most transaction_latency_max_ms",
                });
            }
            if let Some(s) = a.startup_ms {
                range("startup_ms", s, 0, 3_600_000, "0..=3600000")?;
            }
            finite("cpu_pct", a.cpu_pct, 0.0, 100.0, "0..=100")?;
        }
        Signal::PaymentHealth(p) => {
            range(
                "offline_queue_len",
                p.offline_queue_len,
                0,
                1_000_000,
                "0..=1000000",
            )?;
            // A queued payment cannot be older than the limit on sample age.
            range(
                "offline_queue_oldest_age_s",
                p.offline_queue_oldest_age_s as u64,
                0,
                limits.max_age.as_secs().max(1),
                "0..=max sample age",
            )?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Battery, BootId, Connectivity, DeviceId, NetworkType};

    const NOW: UtcMillis = UtcMillis(1_795_356_000_000);

    fn battery(level_pct: u32, temperature_celsius: f32) -> Reading {
        Reading {
            device_id: DeviceId::new("d1").unwrap(),
            boot_id: BootId(1),
            seq: 0,
            sampled_at: NOW,
            signal: Signal::Battery(Battery {
                level_pct,
                charging: false,
                temperature_celsius,
                voltage_mv: 3700,
                health_pct: 90,
                cycle_count: 10,
            }),
        }
    }

    #[test]
    fn a_believable_reading_passes() {
        assert_eq!(
            validate_reading(&battery(50, 30.0), NOW, &Limits::default()),
            Ok(())
        );
    }

    #[test]
    fn values_out_of_range_name_the_field() {
        let err = validate_reading(&battery(101, 30.0), NOW, &Limits::default()).unwrap_err();
        assert_eq!(err.code(), "out_of_range");
        assert!(err.to_string().contains("level_pct = 101"), "{err}");
        let err = validate_reading(&battery(50, f32::NAN), NOW, &Limits::default()).unwrap_err();
        assert!(err.to_string().contains("temperature_celsius"), "{err}");
        let mut r = battery(50, 30.0);
        r.signal = Signal::Connectivity(Connectivity {
            network_type: NetworkType::Wifi,
            rssi_dbm: 12,
            payment_host_latency_ms: 10,
            disconnects: 0,
            carrier_or_ssid: String::new(),
        });
        let err = validate_reading(&r, NOW, &Limits::default()).unwrap_err();
        assert!(err.to_string().contains("rssi_dbm = 12"), "{err}");
    }

    #[test]
    fn sample_times_far_from_now_are_rejected() {
        let limits = Limits::default();
        let mut r = battery(50, 30.0);
        r.sampled_at = UtcMillis(NOW.0 + 4 * 60_000);
        assert_eq!(validate_reading(&r, NOW, &limits), Ok(()));
        r.sampled_at = UtcMillis(NOW.0 + 6 * 60_000);
        assert_eq!(
            validate_reading(&r, NOW, &limits).unwrap_err().code(),
            "sampled_in_future"
        );
        r.sampled_at = UtcMillis(NOW.0 - 29 * 24 * 3_600_000);
        assert_eq!(validate_reading(&r, NOW, &limits), Ok(()));
        r.sampled_at = UtcMillis(NOW.0 - 31 * 24 * 3_600_000);
        assert_eq!(
            validate_reading(&r, NOW, &limits).unwrap_err().code(),
            "sampled_too_long_ago"
        );
        r.sampled_at = UtcMillis(i64::MIN);
        assert_eq!(
            validate_reading(&r, NOW, &limits).unwrap_err().code(),
            "sampled_too_long_ago"
        );
    }
}
