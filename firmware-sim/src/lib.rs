//! A simulated fleet of payment terminals, each its own MQTT client.
//!
//! Every terminal connects with a last will, publishes its info and a birth
//! status, then one reading per tick, rotating through the four kinds.
//! With `faults` on, a deterministic share of the fleet misbehaves: network
//! outages with late replay of the buffered readings (including a whole
//! store at once), reboots, firmware retries that publish a message twice,
//! malformed bytes, spoofed device ids and out-of-range values.
//!
//! Time is either the wall clock (readings every `interval`, in real time)
//! or, with `start_ms`, a virtual clock: reading `n` of a device is sampled
//! at `start_ms + n × interval` and published as fast as the broker acks.

mod device;
pub mod history;
mod signals;

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::watch;

pub use device::DevicePlan;

#[derive(Debug, Clone)]
pub struct SimConfig {
    /// `mqtt://HOST:PORT`, or `mqtts://HOST:PORT` for TLS.
    pub broker: String,
    pub devices: usize,
    pub merchants: usize,
    pub stores_per_merchant: usize,
    pub interval: Duration,
    /// Stop after this many readings per device; `None` runs until shutdown.
    pub readings_per_device: Option<u64>,
    pub seed: u64,
    /// Virtual clock start (UTC ms); `None` samples the wall clock in real time.
    pub start_ms: Option<i64>,
    /// Which kinds of misbehaviour to simulate.
    pub faults: Faults,
    /// How many terminals connect at once.
    pub connect_concurrency: usize,
    /// How terminals prove who they are to the broker.
    pub security: DeviceSecurity,
    /// What terminals keep until Tillwatch says it is durable.
    pub durability: Durability,
}

/// The firmware side of "nothing acked is lost": each terminal keeps the
/// readings it sent until a `DurableReadings` notice on its durable topic
/// names them, and publishes the rest again after it reconnects, or after
/// `resend_after` without a notice.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Durability {
    /// Readings a terminal keeps unconfirmed at most (its flash); past it
    /// the oldest are dropped and counted. 0: keep nothing (fire and
    /// forget at the broker's PUBACK).
    pub unconfirmed_max: usize,
    pub resend_after: Duration,
    /// At the end of a run, how long a terminal waits for the notices of
    /// what it still holds (resending after reconnects meanwhile).
    pub wait_at_end: Duration,
}

impl Default for Durability {
    fn default() -> Self {
        Durability {
            unconfirmed_max: 50_000,
            resend_after: Duration::from_secs(60),
            wait_at_end: Duration::ZERO,
        }
    }
}

/// Terminals' broker credentials and the CA they trust.
#[derive(Clone, Default, PartialEq)]
pub struct DeviceSecurity {
    /// `mqtts://` only: the CA that signed the broker's certificate; unset
    /// means the system's roots.
    pub ca_file: Option<std::path::PathBuf>,
    /// When set, every terminal logs in with its device id as the username
    /// and this password.
    pub password: Option<String>,
}

impl std::fmt::Debug for DeviceSecurity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceSecurity")
            .field("ca_file", &self.ca_file)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            broker: "mqtt://127.0.0.1:1883".into(),
            devices: 10,
            merchants: 2,
            stores_per_merchant: 3,
            interval: Duration::from_secs(15),
            readings_per_device: None,
            seed: 1,
            start_ms: None,
            faults: Faults::none(),
            connect_concurrency: 64,
            security: DeviceSecurity::default(),
            durability: Durability::default(),
        }
    }
}

/// The faults a fleet can show; each hits a fixed share of terminals.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Faults {
    /// A terminal loses its network, buffers and replays late.
    pub outage: bool,
    /// The first store of the first merchant loses its uplink as a whole.
    pub store_outage: bool,
    /// A terminal reboots: new boot id, sequence from 0.
    pub reboot: bool,
    /// Firmware publishes a message twice.
    pub retry: bool,
    pub malformed: bool,
    /// A payload claims another terminal's device id.
    pub spoofed: bool,
    pub out_of_range: bool,
}

/// A fault name the simulator does not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown fault {0:?}; use all, none or a list of {names}", names = Faults::NAMES.join(", "))]
pub struct UnknownFault(pub String);

impl Faults {
    pub const NAMES: [&'static str; 7] = [
        "outage",
        "store-outage",
        "reboot",
        "retry",
        "malformed",
        "spoofed",
        "out-of-range",
    ];

    pub fn none() -> Faults {
        Faults::default()
    }

    pub fn all() -> Faults {
        Faults {
            outage: true,
            store_outage: true,
            reboot: true,
            retry: true,
            malformed: true,
            spoofed: true,
            out_of_range: true,
        }
    }

    /// Parses `all`, `none` or a comma-separated list of [`Faults::NAMES`].
    pub fn parse(list: &str) -> Result<Faults, UnknownFault> {
        match list.trim() {
            "all" => return Ok(Faults::all()),
            "none" | "" => return Ok(Faults::none()),
            _ => {}
        }
        let mut faults = Faults::none();
        for name in list.split(',').map(str::trim) {
            let flag = match name {
                "outage" => &mut faults.outage,
                "store-outage" => &mut faults.store_outage,
                "reboot" => &mut faults.reboot,
                "retry" => &mut faults.retry,
                "malformed" => &mut faults.malformed,
                "spoofed" => &mut faults.spoofed,
                "out-of-range" => &mut faults.out_of_range,
                other => return Err(UnknownFault(other.to_string())),
            };
            *flag = true;
        }
        Ok(faults)
    }

    pub fn any(&self) -> bool {
        *self != Faults::none()
    }
}

/// What the simulator published. Printed as one JSON line on exit.
#[derive(Debug, Default, Clone, Serialize, PartialEq)]
pub struct Report {
    pub devices: u64,
    /// Valid readings the broker acknowledged, each counted once.
    pub readings: u64,
    pub messages_published: u64,
    pub messages_acked: u64,
    /// Messages published a second time, as a firmware retry would.
    pub duplicates_sent: u64,
    /// Readings buffered during an outage and published late.
    pub late_readings: u64,
    pub outages: u64,
    pub reboots: u64,
    pub malformed_sent: u64,
    pub spoofed_sent: u64,
    pub out_of_range_sent: u64,
    /// Readings not acknowledged because the run was stopped.
    pub unacked_readings: u64,
    /// Readings published again because no durable notice had named them
    /// (after a reconnect, or `resend_after` without one).
    pub resent_readings: u64,
    /// Readings still held at the end without a durable notice (in the
    /// broker or the gateway's buffer, or lost with a broker that died).
    pub unconfirmed_readings: u64,
    /// Readings dropped unconfirmed because a terminal held
    /// `unconfirmed_max` already.
    pub unconfirmed_dropped: u64,
    pub elapsed_s: f64,
}

impl Report {
    fn add(&mut self, other: &Report) {
        self.devices += other.devices;
        self.readings += other.readings;
        self.messages_published += other.messages_published;
        self.messages_acked += other.messages_acked;
        self.duplicates_sent += other.duplicates_sent;
        self.late_readings += other.late_readings;
        self.outages += other.outages;
        self.reboots += other.reboots;
        self.malformed_sent += other.malformed_sent;
        self.spoofed_sent += other.spoofed_sent;
        self.out_of_range_sent += other.out_of_range_sent;
        self.unacked_readings += other.unacked_readings;
        self.resent_readings += other.resent_readings;
        self.unconfirmed_readings += other.unconfirmed_readings;
        self.unconfirmed_dropped += other.unconfirmed_dropped;
    }

    /// Messages the gateway should dead-letter: the bad ones sent.
    pub fn invalid_messages(&self) -> u64 {
        self.malformed_sent + self.spoofed_sent + self.out_of_range_sent
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("{0}")]
    Config(String),
    #[error("--broker over TLS: {0}")]
    Tls(#[from] tillwatch_proto::tls::TlsError),
}

/// Runs the fleet until every device has sent its readings or `shutdown`
/// turns true.
pub async fn run(config: SimConfig, shutdown: watch::Receiver<bool>) -> Result<Report, SimError> {
    if config.devices == 0 || config.merchants == 0 || config.stores_per_merchant == 0 {
        return Err(SimError::Config(
            "--devices, --merchants and --stores-per-merchant must be at least 1".into(),
        ));
    }
    if config.merchants > config.devices {
        return Err(SimError::Config(format!(
            "--merchants ({}) must not exceed --devices ({})",
            config.merchants, config.devices
        )));
    }
    if let (Some(start), Some(n)) = (config.start_ms, config.readings_per_device) {
        // Readings sampled in the future are rejected by the gateway; a
        // virtual clock that runs past now is a mistake, not a fault.
        let end = start + (n as i64) * config.interval.as_millis() as i64;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        if end > now {
            return Err(SimError::Config(format!(
                "--start-time with {n} readings every {} ms runs {} s past now; \
                 start earlier or send fewer readings",
                config.interval.as_millis(),
                (end - now) / 1000
            )));
        }
    }
    let tillwatch_config::BrokerAddr { host, port, tls } =
        tillwatch_config::BrokerAddr::parse(&config.broker)
            .map_err(|e| SimError::Config(format!("--broker: {e}")))?;
    let transport = if tls {
        Some(tillwatch_proto::tls::client_transport(
            config.security.ca_file.as_deref(),
        )?)
    } else {
        None
    };
    let started = Instant::now();
    let connect_gate = Arc::new(tokio::sync::Semaphore::new(
        config.connect_concurrency.max(1),
    ));
    let mut tasks = Vec::with_capacity(config.devices);
    for index in 0..config.devices {
        let plan = DevicePlan::new(&config, index);
        let device = device::Device::new(plan, &config, host.clone(), port, transport.clone());
        tasks.push(tokio::spawn(
            device.run(shutdown.clone(), connect_gate.clone()),
        ));
    }
    let mut report = Report::default();
    for task in tasks {
        let device_report = task.await.expect("device tasks do not panic");
        report.add(&device_report);
    }
    report.elapsed_s = started.elapsed().as_secs_f64();
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fault_lists_parse() {
        assert_eq!(Faults::parse("all").unwrap(), Faults::all());
        assert_eq!(Faults::parse("none").unwrap(), Faults::none());
        let f = Faults::parse("reboot, spoofed").unwrap();
        assert!(f.reboot && f.spoofed && !f.outage && !f.malformed);
        let err = Faults::parse("reboot,gremlins").unwrap_err();
        assert_eq!(err, UnknownFault("gremlins".into()));
        let err = err.to_string();
        assert!(
            err.contains("gremlins") && err.contains("out-of-range"),
            "{err}"
        );
    }

    #[test]
    fn fault_plans_are_deterministic_and_selective() {
        let config = SimConfig {
            devices: 50,
            faults: Faults::parse("reboot").unwrap(),
            readings_per_device: Some(12),
            ..SimConfig::default()
        };
        let plans: Vec<_> = (0..50).map(|i| DevicePlan::new(&config, i)).collect();
        assert_eq!(
            plans,
            (0..50)
                .map(|i| DevicePlan::new(&config, i))
                .collect::<Vec<_>>()
        );
        assert!(plans.iter().any(|p| p.reboot_at.is_some()));
        assert!(
            plans
                .iter()
                .all(|p| p.outage.is_none() && p.malformed_at.is_none())
        );
    }
}
