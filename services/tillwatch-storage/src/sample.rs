//! Synthetic readings for benchmarks and examples: `n` readings of 1,000
//! terminals, the four kinds in turn, with realistic strings and values.

use tillwatch_domain::{
    AppPerformance, Battery, BootId, Connectivity, DeviceId, Kind, MerchantId, NetworkType,
    PaymentHealth, Reading, Signal, StoreId, UtcMillis,
};

use crate::{Staging, StoredReading};

/// The `i`-th synthetic reading, of `kind` (or the kinds in turn).
pub fn reading(i: usize, kind: Option<Kind>, start_ms: i64) -> Reading {
    let device = i % 1000;
    let step = i / 1000;
    let kind = kind.unwrap_or(Kind::ALL[step % 4]);
    let signal = match kind {
        Kind::Connectivity => Signal::Connectivity(Connectivity {
            network_type: NetworkType::Wifi,
            rssi_dbm: -40 - (i % 50) as i32,
            payment_host_latency_ms: 80 + (i % 200) as u32,
            disconnects: u32::from(i.is_multiple_of(7)),
            carrier_or_ssid: "shop-wifi".into(),
        }),
        Kind::Battery => Signal::Battery(Battery {
            level_pct: (i % 100) as u32,
            charging: i.is_multiple_of(3),
            temperature_celsius: 31.5,
            voltage_mv: 4100,
            health_pct: 92,
            cycle_count: 310,
        }),
        Kind::AppPerformance => Signal::AppPerformance(AppPerformance {
            app_version: "4.12.1".into(),
            firmware_version: "2.8.0".into(),
            transactions: (i % 5) as u32,
            transaction_latency_avg_ms: 900,
            transaction_latency_max_ms: 2100,
            startup_ms: None,
            crashes: 0,
            hangs: 0,
            memory_used_kib: 180_000,
            cpu_pct: 12.5,
        }),
        Kind::PaymentHealth => Signal::PaymentHealth(PaymentHealth {
            offline_queue_len: (i % 4) as u32,
            offline_queue_oldest_age_s: 30,
            tamper_detected: false,
            printer_paper_low: false,
        }),
    };
    Reading {
        device_id: DeviceId::new(&format!("term-{device:05}")).expect("a valid id"),
        boot_id: BootId(0x5eed),
        seq: step as u64,
        sampled_at: UtcMillis(start_ms + step as i64 * 1000),
        signal,
    }
}

/// `n` synthetic readings staged as the gateway stages them.
pub fn staged(n: usize, kind: Option<Kind>, start_ms: i64) -> Staging {
    let merchant = MerchantId::new("m-0001").expect("a valid id");
    let store = StoreId::new("s-0001").expect("a valid id");
    let mut staging = Staging::new();
    for i in 0..n {
        staging.push_reading(StoredReading {
            reading: &reading(i, kind, start_ms),
            merchant_id: &merchant,
            store_id: Some(&store),
            received_at: UtcMillis(start_ms),
        });
    }
    staging
}
