//! `tillwatch-sim`: a fleet of simulated payment terminals.

use std::time::Duration;

use clap::Parser;
use tillwatch_sim::SimConfig;

#[derive(Debug, Parser)]
#[command(
    name = "tillwatch-sim",
    version,
    about = "Simulate a fleet of payment terminals publishing Tillwatch telemetry"
)]
struct Args {
    /// The MQTT broker, mqtt://HOST:PORT or mqtts://HOST:PORT (TLS).
    #[arg(long, default_value = "mqtt://127.0.0.1:1883")]
    broker: String,
    /// For mqtts://: the PEM file of the CA that signed the broker's
    /// certificate (default: the system's roots).
    #[arg(long)]
    ca_file: Option<std::path::PathBuf>,
    /// Log every terminal in with its device id as the username and the
    /// password in this file (or in TILLWATCH_SIM_PASSWORD).
    #[arg(long)]
    password_file: Option<std::path::PathBuf>,
    /// Number of terminals, each its own MQTT client.
    #[arg(long, default_value_t = 10)]
    devices: usize,
    /// Number of merchants the terminals belong to.
    #[arg(long, default_value_t = 2)]
    merchants: usize,
    #[arg(long, default_value_t = 3)]
    stores_per_merchant: usize,
    /// Time between a terminal's readings.
    #[arg(long, default_value_t = 15_000)]
    interval_ms: u64,
    /// Send this many readings per terminal, then exit (default: until Ctrl-C).
    #[arg(long)]
    readings_per_device: Option<u64>,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Sample on a virtual clock from this UTC time (RFC 3339, or "now-2h"
    /// style offsets) and publish as fast as the broker acks.
    #[arg(long)]
    start_time: Option<String>,
    /// Make some terminals misbehave. `--faults` alone (or `all`) turns on
    /// every kind; or list them: outage (lost network, late replay),
    /// store-outage, reboot, retry (a message published twice), malformed,
    /// spoofed, out-of-range.
    #[arg(long, value_name = "LIST", num_args = 0..=1, default_missing_value = "all", value_parser = tillwatch_sim::Faults::parse)]
    faults: Option<tillwatch_sim::Faults>,
    /// Readings each terminal keeps until Tillwatch names them durable
    /// (then it sends again what was not named, after a reconnect or a
    /// minute without word); 0 forgets each at the broker's PUBACK.
    #[arg(long, default_value_t = 50_000)]
    unconfirmed_max: usize,
    /// At the end of a run, wait up to this many seconds for the durable
    /// notices of what terminals still hold.
    #[arg(long, default_value_t = 10)]
    wait_durable_s: u64,
}

fn parse_start(s: &str) -> anyhow::Result<i64> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as i64;
    if s == "now" {
        return Ok(now);
    }
    if let Some(offset) = s.strip_prefix("now-") {
        let d = humantime::parse_duration(offset)
            .map_err(|e| anyhow::anyhow!("--start-time {s:?}: {e}"))?;
        return Ok(now - d.as_millis() as i64);
    }
    let t = humantime::parse_rfc3339(s).map_err(|e| {
        anyhow::anyhow!(
            "--start-time {s:?}: {e} (use RFC 3339, e.g. 2026-11-22T10:00:00Z, or now-2h)"
        )
    })?;
    Ok(t.duration_since(std::time::UNIX_EPOCH)?.as_millis() as i64)
}

fn main() -> std::process::ExitCode {
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let config = SimConfig {
        broker: args.broker,
        devices: args.devices,
        merchants: args.merchants,
        stores_per_merchant: args.stores_per_merchant,
        interval: Duration::from_millis(args.interval_ms.max(1)),
        readings_per_device: args.readings_per_device,
        seed: args.seed,
        start_ms: args.start_time.as_deref().map(parse_start).transpose()?,
        faults: args.faults.unwrap_or_default(),
        security: tillwatch_sim::DeviceSecurity {
            ca_file: args.ca_file,
            password: match &args.password_file {
                Some(path) => Some(
                    std::fs::read_to_string(path)
                        .map_err(|e| anyhow::anyhow!("--password-file {}: {e}", path.display()))?
                        .trim()
                        .to_string(),
                ),
                None => std::env::var("TILLWATCH_SIM_PASSWORD").ok(),
            },
        },
        durability: tillwatch_sim::Durability {
            unconfirmed_max: args.unconfirmed_max,
            wait_at_end: Duration::from_secs(args.wait_durable_s),
            ..Default::default()
        },
        ..SimConfig::default()
    };
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        let _ = stop_tx.send(true);
    });
    let report = tillwatch_sim::run(config, stop_rx).await?;
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}
