//! The signal vocabulary: the numeric values a reading carries, by the one
//! name each has in the registry, the alert rules and the API. (The lake's
//! columns keep the contract's field names, `level_pct` for
//! `battery_level_pct` and so on: [`signals_of`] is the one mapping. The
//! rollups' columns name aggregates of a signal, `battery_avg_pct`,
//! `host_latency_p95_ms`; the API's series give them back under the
//! signal's name, mapped in `tillwatch-query`'s `series`.)

use crate::{Reading, Signal};

/// Every signal name [`signals_of`] gives: the names the registry keeps the
/// newest values under, the alert rules read and the API shows.
pub const SIGNAL_NAMES: &[&str] = &[
    "rssi_dbm",
    "payment_host_latency_ms",
    "disconnects",
    "battery_level_pct",
    "battery_charging",
    "battery_temperature_celsius",
    "transactions",
    "transaction_latency_avg_ms",
    "transaction_latency_max_ms",
    "crashes",
    "hangs",
    "offline_queue_len",
    "offline_queue_oldest_age_s",
    "tamper_detected",
    "printer_paper_low",
];

/// The numeric signals a reading carries, by the names the store keeps.
pub fn signals_of(reading: &Reading) -> Vec<(&'static str, f64)> {
    let flag = |b: bool| if b { 1.0 } else { 0.0 };
    match &reading.signal {
        Signal::Connectivity(c) => vec![
            ("rssi_dbm", f64::from(c.rssi_dbm)),
            (
                "payment_host_latency_ms",
                f64::from(c.payment_host_latency_ms),
            ),
            ("disconnects", f64::from(c.disconnects)),
        ],
        Signal::Battery(b) => vec![
            ("battery_level_pct", f64::from(b.level_pct)),
            ("battery_charging", flag(b.charging)),
            (
                "battery_temperature_celsius",
                f64::from(b.temperature_celsius),
            ),
        ],
        Signal::AppPerformance(a) => vec![
            ("transactions", f64::from(a.transactions)),
            (
                "transaction_latency_avg_ms",
                f64::from(a.transaction_latency_avg_ms),
            ),
            (
                "transaction_latency_max_ms",
                f64::from(a.transaction_latency_max_ms),
            ),
            ("crashes", f64::from(a.crashes)),
            ("hangs", f64::from(a.hangs)),
        ],
        Signal::PaymentHealth(p) => vec![
            ("offline_queue_len", f64::from(p.offline_queue_len)),
            (
                "offline_queue_oldest_age_s",
                f64::from(p.offline_queue_oldest_age_s),
            ),
            ("tamper_detected", flag(p.tamper_detected)),
            ("printer_paper_low", flag(p.printer_paper_low)),
        ],
    }
}
