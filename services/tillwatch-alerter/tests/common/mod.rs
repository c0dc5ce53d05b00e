//! What the alerter's test files share: terminals and their readings.

use tillwatch_alerter::Event;
use tillwatch_domain::{Battery, BootId, DeviceId, MerchantId, Reading, Signal, UtcMillis};

pub fn dev(s: &str) -> DeviceId {
    DeviceId::new(s).unwrap()
}

/// A battery reading of `device` (merchant m-1, boot 1), received as it
/// was sampled.
pub fn battery(device: &str, seq: u64, at: i64, level: u32, charging: bool) -> Event {
    Event::Telemetry {
        merchant_id: MerchantId::new("m-1").unwrap(),
        device_id: dev(device),
        readings: vec![Reading {
            device_id: dev(device),
            boot_id: BootId(1),
            seq,
            sampled_at: UtcMillis(at),
            signal: Signal::Battery(Battery::healthy(level, charging)),
        }],
        received_at: UtcMillis(at),
    }
}
