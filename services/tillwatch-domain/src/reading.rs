use crate::{BootId, DeviceId, UtcMillis};

/// The four kinds of signal a terminal reports; each is one lake table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Connectivity,
    Battery,
    AppPerformance,
    PaymentHealth,
}

impl Kind {
    pub const ALL: [Kind; 4] = [
        Kind::Connectivity,
        Kind::Battery,
        Kind::AppPerformance,
        Kind::PaymentHealth,
    ];

    /// The table name in the lake (and in ClickHouse).
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Connectivity => "connectivity",
            Kind::Battery => "battery",
            Kind::AppPerformance => "app_performance",
            Kind::PaymentHealth => "payment_health",
        }
    }
}

/// Identifies a reading: the same key seen twice is the same reading.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ReadingKey {
    pub device_id: DeviceId,
    pub boot_id: BootId,
    pub seq: u64,
}

/// One sample of one signal of one terminal.
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    pub device_id: DeviceId,
    pub boot_id: BootId,
    pub seq: u64,
    pub sampled_at: UtcMillis,
    pub signal: Signal,
}

impl Reading {
    pub fn key(&self) -> ReadingKey {
        ReadingKey {
            device_id: self.device_id.clone(),
            boot_id: self.boot_id,
            seq: self.seq,
        }
    }

    pub fn kind(&self) -> Kind {
        self.signal.kind()
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Signal {
    Connectivity(Connectivity),
    Battery(Battery),
    AppPerformance(AppPerformance),
    PaymentHealth(PaymentHealth),
}

impl Signal {
    pub fn kind(&self) -> Kind {
        match self {
            Signal::Connectivity(_) => Kind::Connectivity,
            Signal::Battery(_) => Kind::Battery,
            Signal::AppPerformance(_) => Kind::AppPerformance,
            Signal::PaymentHealth(_) => Kind::PaymentHealth,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NetworkType {
    Wifi,
    Ethernet,
    Cellular,
}

impl NetworkType {
    pub fn as_str(self) -> &'static str {
        match self {
            NetworkType::Wifi => "wifi",
            NetworkType::Ethernet => "ethernet",
            NetworkType::Cellular => "cellular",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Connectivity {
    pub network_type: NetworkType,
    pub rssi_dbm: i32,
    pub payment_host_latency_ms: u32,
    pub disconnects: u32,
    pub carrier_or_ssid: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Battery {
    pub level_pct: u32,
    pub charging: bool,
    pub temperature_celsius: f32,
    pub voltage_mv: u32,
    pub health_pct: u32,
    pub cycle_count: u32,
}

impl Battery {
    /// A healthy battery at `level_pct` (30 °C, 4.0 V, 90 % health, ten
    /// cycles): what tests, examples and benchmarks write where only the
    /// level and charging matter.
    pub fn healthy(level_pct: u32, charging: bool) -> Battery {
        Battery {
            level_pct,
            charging,
            temperature_celsius: 30.0,
            voltage_mv: 4000,
            health_pct: 90,
            cycle_count: 10,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct AppPerformance {
    pub app_version: String,
    pub firmware_version: String,
    pub transactions: u32,
    pub transaction_latency_avg_ms: u32,
    pub transaction_latency_max_ms: u32,
    pub startup_ms: Option<u32>,
    pub crashes: u32,
    pub hangs: u32,
    pub memory_used_kib: u32,
    pub cpu_pct: f32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PaymentHealth {
    pub offline_queue_len: u32,
    pub offline_queue_oldest_age_s: u32,
    pub tamper_detected: bool,
    pub printer_paper_low: bool,
}
