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
mod signals;

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::watch;

pub use device::DevicePlan;

#[derive(Debug, Clone)]
pub struct SimConfig {
    /// `mqtt://HOST:PORT`.
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
    pub faults: bool,
    /// How many terminals connect at once.
    pub connect_concurrency: usize,
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
            faults: false,
            connect_concurrency: 64,
        }
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
    let (host, port) = parse_broker(&config.broker)?;
    let started = Instant::now();
    let connect_gate = Arc::new(tokio::sync::Semaphore::new(
        config.connect_concurrency.max(1),
    ));
    let mut tasks = Vec::with_capacity(config.devices);
    for index in 0..config.devices {
        let plan = DevicePlan::new(&config, index);
        let device = device::Device::new(plan, &config, host.clone(), port);
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

fn parse_broker(url: &str) -> Result<(String, u16), SimError> {
    let rest = url.strip_prefix("mqtt://").ok_or_else(|| {
        SimError::Config(format!("--broker {url:?} must look like mqtt://HOST:PORT"))
    })?;
    match rest.trim_end_matches('/').rsplit_once(':') {
        Some((host, port)) => port
            .parse()
            .map(|p| (host.to_string(), p))
            .map_err(|_| SimError::Config(format!("--broker {url:?} has an invalid port"))),
        None => Ok((rest.to_string(), 1883)),
    }
}
