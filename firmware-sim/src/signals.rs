//! Believable signals: batteries drain in trading hours and charge at night,
//! signal strength wanders and sometimes drops, latency has a long tail,
//! crashes are rare.

use rand::Rng;
use rand::rngs::StdRng;
use tillwatch_proto::telemetry::v1 as pb;

/// A terminal's physical state, advanced once per tick.
pub struct Signals {
    pub handheld: bool,
    pub network: pb::NetworkType,
    pub carrier_or_ssid: String,
    battery_level: f64,
    battery_health: u32,
    cycles: u32,
    rssi_base: f64,
    rssi: f64,
    latency_base_ms: f64,
    pub app_version: String,
    pub firmware_version: String,
    offline_queue: u32,
    offline_queue_oldest_s: u32,
    tamper: bool,
    paper_low: bool,
    started: bool,
    /// A handheld's drain in trading hours, % per minute (lowest, highest).
    pub drain_per_min: (f64, f64),
    /// The chance each tick that the terminal detects tampering (it then
    /// reports it until the end).
    pub tamper_chance: f64,
}

impl Signals {
    pub fn new(rng: &mut StdRng, model_index: usize) -> Signals {
        let handheld = model_index == 1;
        let network = match model_index {
            0 => pb::NetworkType::Ethernet,
            1 => pb::NetworkType::Cellular,
            _ => pb::NetworkType::Wifi,
        };
        let carrier_or_ssid = match network {
            pb::NetworkType::Cellular => {
                ["Vodafone", "Telekom", "O2"][rng.random_range(0..3)].to_string()
            }
            pb::NetworkType::Wifi => format!("store-wifi-{}", rng.random_range(1..9)),
            _ => String::new(),
        };
        Signals {
            handheld,
            network,
            carrier_or_ssid,
            battery_level: rng.random_range(35.0..100.0),
            battery_health: rng.random_range(70..100),
            cycles: rng.random_range(10..900),
            rssi_base: if network == pb::NetworkType::Ethernet {
                0.0
            } else {
                rng.random_range(-85.0..-55.0)
            },
            rssi: 0.0,
            latency_base_ms: rng.random_range(40.0..160.0),
            app_version: format!("4.{}.0", rng.random_range(2..5)),
            firmware_version: format!("fw-7.{}", rng.random_range(0..3)),
            offline_queue: 0,
            offline_queue_oldest_s: 0,
            tamper: false,
            paper_low: false,
            started: false,
            drain_per_min: (0.1, 0.4),
            tamper_chance: 0.00002,
        }
    }

    fn trading(t_ms: i64) -> bool {
        let hour = (t_ms / 3_600_000).rem_euclid(24);
        (8..20).contains(&hour)
    }

    pub fn tick(&mut self, rng: &mut StdRng, t_ms: i64, interval_s: f64, offline: bool) {
        let trading = Self::trading(t_ms);
        let minutes = interval_s / 60.0;
        if self.handheld && trading {
            self.battery_level -=
                minutes * rng.random_range(self.drain_per_min.0..self.drain_per_min.1);
        } else if self.battery_level < 100.0 {
            self.battery_level += minutes * 0.8;
        }
        if self.battery_level < 5.0 {
            // Someone puts it on the charger at last.
            self.battery_level += 20.0;
            self.cycles += 1;
        }
        self.battery_level = self.battery_level.clamp(1.0, 100.0);
        if self.network != pb::NetworkType::Ethernet {
            let drop = if rng.random_bool(0.02) { -20.0 } else { 0.0 };
            self.rssi = (self.rssi_base + rng.random_range(-6.0..6.0) + drop).clamp(-120.0, -30.0);
        }
        if offline {
            self.offline_queue += u32::from(trading && rng.random_bool(0.5));
            if self.offline_queue > 0 {
                self.offline_queue_oldest_s += interval_s as u32;
            }
        } else if self.offline_queue > 0 {
            self.offline_queue = 0;
            self.offline_queue_oldest_s = 0;
        }
        // A roll runs low while trading, about every three trading days,
        // and staff change it within the hour or so; so a few of the fleet
        // show it at a time, not half of it.
        if trading {
            let chance = if self.paper_low {
                minutes / 45.0
            } else {
                minutes / (3.0 * 12.0 * 60.0)
            };
            if rng.random_bool(chance.clamp(0.0, 1.0)) {
                self.paper_low = !self.paper_low;
            }
        }
        self.tamper = self.tamper || rng.random_bool(self.tamper_chance);
    }

    fn latency(&self, rng: &mut StdRng) -> u32 {
        // Log-normal-ish with a long tail: most round trips near the base,
        // one in a hundred ten times slower.
        let noise: f64 = (rng.random_range(-1.0f64..1.0) * 0.5).exp();
        let tail = if rng.random_bool(0.01) { 10.0 } else { 1.0 };
        (self.latency_base_ms * noise * tail).min(60_000.0) as u32
    }

    pub fn reading(&mut self, rng: &mut StdRng, kind: usize, t_ms: i64) -> pb::reading::Kind {
        match kind {
            0 => pb::reading::Kind::Connectivity(pb::Connectivity {
                network_type: self.network as i32,
                rssi_dbm: self.rssi.round() as i32,
                payment_host_latency_ms: self.latency(rng),
                disconnects: u32::from(rng.random_bool(0.03)),
                carrier_or_ssid: self.carrier_or_ssid.clone(),
            }),
            1 => pb::reading::Kind::Battery(pb::Battery {
                level_pct: self.battery_level.round() as u32,
                charging: !(self.handheld && Self::trading(t_ms)),
                temperature_celsius: 24.0 + rng.random_range(0.0..12.0f32),
                voltage_mv: 3500 + (self.battery_level * 7.0) as u32,
                health_pct: self.battery_health,
                cycle_count: self.cycles,
            }),
            2 => {
                let transactions = if Self::trading(t_ms) {
                    rng.random_range(0..6)
                } else {
                    0
                };
                let (avg, max) = if transactions == 0 {
                    (0, 0)
                } else {
                    let avg = rng.random_range(700..2200);
                    (avg, avg + rng.random_range(0..3000))
                };
                let startup_ms = (!self.started).then(|| rng.random_range(1500..4000));
                self.started = true;
                pb::reading::Kind::AppPerformance(pb::AppPerformance {
                    app_version: self.app_version.clone(),
                    firmware_version: self.firmware_version.clone(),
                    transactions,
                    transaction_latency_avg_ms: avg,
                    transaction_latency_max_ms: max,
                    startup_ms,
                    crashes: u32::from(rng.random_bool(0.002)),
                    hangs: u32::from(rng.random_bool(0.005)),
                    memory_used_kib: rng.random_range(150_000..260_000),
                    cpu_pct: rng.random_range(3.0..60.0f32),
                })
            }
            _ => pb::reading::Kind::PaymentHealth(pb::PaymentHealth {
                offline_queue_len: self.offline_queue,
                offline_queue_oldest_age_s: self.offline_queue_oldest_s,
                tamper_detected: self.tamper,
                printer_paper_low: self.paper_low,
            }),
        }
    }

    /// The terminal detects tampering from now on.
    pub fn tampered(&mut self) {
        self.tamper = true;
    }

    /// After a reboot the app starts again.
    pub fn reboot(&mut self) {
        self.started = false;
    }
}
