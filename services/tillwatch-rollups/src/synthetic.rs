//! A synthetic fleet's readings, for benchmarks: the same terminals, ids
//! and signal shapes every time (a fixed pseudo-random sequence), so runs
//! on different machines or commits measure the same data.

use tillwatch_domain::{
    AppPerformance, Battery, BootId, Connectivity, DeviceId, MerchantId, NetworkType,
    PaymentHealth, Reading, Signal, StoreId, UtcMillis,
};
use tillwatch_storage::{Lake, Staging, StoredReading};

/// Terminal `d`: `term-000042` of merchant `m-042` (200 merchants), store
/// `s-0042` (2,000 stores).
pub fn terminal(d: usize) -> (DeviceId, MerchantId, StoreId) {
    (
        DeviceId::new(&format!("term-{d:06}")).expect("a valid id"),
        MerchantId::new(&format!("m-{:03}", d % 200)).expect("a valid id"),
        StoreId::new(&format!("s-{:04}", d % 2000)).expect("a valid id"),
    )
}

/// Writes `hours` hours from `start_ms` of `devices` terminals into the
/// lake, one reading of each of the four kinds every `step_min` minutes
/// (which divides 60), as gateway flushes would (four files per
/// table-hour). Returns the readings written. Panics if the lake cannot be
/// written: it is for benchmarks.
pub fn write_hours(lake: &Lake, devices: usize, start_ms: i64, hours: i64, step_min: i64) -> u64 {
    let ids: Vec<(DeviceId, MerchantId, StoreId)> = (0..devices).map(terminal).collect();
    let mut rows = 0u64;
    let mut sampler = Sampler::default();
    for hour in 0..hours {
        let mut flushes: Vec<Staging> = (0..4).map(|_| Staging::new()).collect();
        for (d, (id, merchant, store)) in ids.iter().enumerate() {
            for step in 0..(60 / step_min) {
                let at =
                    start_ms + hour * 3_600_000 + step * step_min * 60_000 + (d as i64 % 60_000);
                let seq = ((hour * 60 / step_min + step) * 4) as u64;
                for reading in sampler.readings(d, id, at, seq) {
                    flushes[(step as usize) % 4].push_reading(StoredReading {
                        reading: &reading,
                        merchant_id: merchant,
                        store_id: Some(store),
                        received_at: UtcMillis(at + 300),
                    });
                    rows += 1;
                }
            }
        }
        for (i, staging) in flushes.into_iter().enumerate() {
            for part in staging.finish() {
                let path = lake.file_path(part.table, part.hour, &format!("bench-{i}.parquet"));
                lake.write_part(&part, &path).expect("writing the lake");
            }
        }
    }
    rows
}

/// The readings' values: a fixed xorshift sequence.
pub struct Sampler {
    x: u64,
}

impl Default for Sampler {
    fn default() -> Self {
        Sampler {
            x: 0x2545_f491_4f6c_dd1d,
        }
    }
}

impl Sampler {
    fn rnd(&mut self, n: u64) -> u64 {
        self.x ^= self.x << 13;
        self.x ^= self.x >> 7;
        self.x ^= self.x << 17;
        self.x % n
    }

    /// Terminal `d`'s four readings (battery, connectivity, app, payments)
    /// sampled at `at_ms`, with sequence numbers from `seq`.
    pub fn readings(&mut self, d: usize, id: &DeviceId, at_ms: i64, seq: u64) -> Vec<Reading> {
        let hour_of_day = (at_ms / 3_600_000).rem_euclid(24);
        let signals = [
            Signal::Battery(Battery {
                level_pct: (100 - hour_of_day * 3 - self.rnd(3) as i64).clamp(0, 100) as u32,
                charging: d.is_multiple_of(7) && hour_of_day > 18,
                temperature_celsius: 25.0 + self.rnd(100) as f32 / 10.0,
                voltage_mv: 3900,
                health_pct: 80 + (d % 20) as u32,
                cycle_count: 300,
            }),
            Signal::Connectivity(Connectivity {
                network_type: NetworkType::Wifi,
                rssi_dbm: -50 - self.rnd(50) as i32,
                payment_host_latency_ms: 80 + self.rnd(500) as u32,
                disconnects: u32::from(self.rnd(30) == 0),
                carrier_or_ssid: "shop-wifi".into(),
            }),
            Signal::AppPerformance(AppPerformance {
                app_version: ["4.1.0", "4.2.0"][d % 2].into(),
                firmware_version: ["2.0.3", "2.1.0", "2.1.1"][d % 3].into(),
                transactions: self.rnd(6) as u32,
                transaction_latency_avg_ms: 400 + self.rnd(1500) as u32,
                transaction_latency_max_ms: 3000,
                startup_ms: None,
                crashes: u32::from(self.rnd(500) == 0),
                hangs: u32::from(self.rnd(800) == 0),
                memory_used_kib: 50_000,
                cpu_pct: 12.0,
            }),
            Signal::PaymentHealth(PaymentHealth {
                offline_queue_len: self.rnd(3) as u32,
                offline_queue_oldest_age_s: self.rnd(300) as u32,
                tamper_detected: false,
                printer_paper_low: false,
            }),
        ];
        signals
            .into_iter()
            .enumerate()
            .map(|(k, signal)| Reading {
                device_id: id.clone(),
                boot_id: BootId(1),
                seq: seq + k as u64,
                sampled_at: UtcMillis(at_ms),
                signal,
            })
            .collect()
    }
}
