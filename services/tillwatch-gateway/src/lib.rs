//! The ingestion gateway: MQTT in, validated and deduplicated readings into
//! the Parquet lake, acks out only once the data is durable.
//!
//! **Architecture Invariant:** an MQTT message is acknowledged only after
//! every reading and dead letter it carried is in a synced, renamed lake
//! file and the flush that wrote it is committed in the dedup journal.
//!
//! The path of a message: [`mqtt::poll_loop`] → bounded channel →
//! [`pipeline::run_pipeline`] ([`decode`], dedup, staging) → flush on a
//! blocking thread → ack tokens → [`mqtt`]'s ack task.

pub mod dedup;
pub mod metrics;
mod mqtt;
pub mod pipeline;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

use tillwatch_config::Config;
use tillwatch_storage::Lake;
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

/// How long a stopping gateway keeps shipping its spool to ClickHouse.
const SHIPPER_DRAIN_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

pub use mqtt::GatewayHealth;

use crate::dedup::DedupStore;
use crate::pipeline::PipelineConfig;
use tillwatch_bus::decode::DecodeLimits;
use tillwatch_bus::provisioning::{ProvisioningError, ProvisioningSource};

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("{0}")]
    Config(String),
    #[error("opening the dedup journal: {0}")]
    Dedup(#[from] dedup::DedupError),
    #[error(transparent)]
    Bus(#[from] tillwatch_bus::ConsumerError),
    #[error("{0}")]
    ClickHouse(#[from] tillwatch_clickhouse::ChError),
    #[error("opening the ClickHouse spool: {0}")]
    Spool(#[from] tillwatch_clickhouse::SpoolError),
    #[error("the lake: {0}")]
    Lake(#[from] tillwatch_storage::LakeError),
    #[error(transparent)]
    Provisioning(#[from] ProvisioningError),
}

fn state_dir(config: &Config) -> PathBuf {
    config.data_dir.join("gateway").join(&config.mqtt.client_id)
}

/// The ClickHouse spool of this gateway.
pub fn spool_dir(config: &Config) -> PathBuf {
    state_dir(config).join("clickhouse-spool")
}

/// The client for `[clickhouse]`, when a URL is configured.
pub fn clickhouse_client(config: &Config) -> Option<tillwatch_clickhouse::ClickHouse> {
    tillwatch_clickhouse::ClickHouse::from_config(&config.clickhouse)
}

/// Opens the spool and checks ClickHouse. A configuration mistake (wrong
/// password, missing database or schema) stops the gateway here; an
/// unreachable server does not: rows wait in the spool.
async fn open_clickhouse(
    config: &Config,
) -> Result<
    Option<(
        tillwatch_clickhouse::ClickHouse,
        tillwatch_clickhouse::Spool,
    )>,
    GatewayError,
> {
    let dir = spool_dir(config);
    let ch = clickhouse_client(config);
    if ch.is_none() && !dir.exists() {
        return Ok(None);
    }
    // Without ClickHouse the spool is only opened to say what it holds.
    let max = match ch {
        Some(_) => config.clickhouse.spool_max_bytes,
        None => u64::MAX,
    };
    let spool = {
        let dir = dir.clone();
        tokio::task::spawn_blocking(move || tillwatch_clickhouse::Spool::open(&dir, max))
            .await
            .expect("opening the spool does not panic")?
    };
    let Some(ch) = ch else {
        let (records, bytes) = spool.depth();
        if records > 0 {
            warn!(
                records,
                bytes,
                spool = %dir.display(),
                "ClickHouse is not configured but its spool holds rows; they ship when clickhouse.url is set again"
            );
        }
        return Ok(None);
    };
    tillwatch_clickhouse::metrics::describe();
    match ch.check_ready().await {
        Ok(version) => {
            info!(url = %ch.settings().url, database = ch.database(), %version, "ClickHouse ready")
        }
        Err(e) if e.class.transient() => warn!(
            error = %e,
            "ClickHouse is not answering; readings are spooled on disk and ship when it is back"
        ),
        Err(e) => return Err(e.into()),
    }
    Ok(Some((ch, spool)))
}

/// Runs the gateway until `shutdown` resolves, then flushes, acks what is
/// durable and disconnects.
pub async fn run_gateway(
    config: &Config,
    health: Arc<GatewayHealth>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), GatewayError> {
    metrics::describe();
    let lake = Lake::from_config(config)?;
    let state = state_dir(config);
    let recovery_lake = lake.clone();
    let max_age = config.gateway.max_age;
    let (store, recovery) = tokio::task::spawn_blocking(move || {
        let now_ms = tillwatch_domain::UtcMillis::now().0;
        let (mut store, recovery) = DedupStore::open(&state, recovery_lake, now_ms)?;
        // Boots past the horizon are not loaded for long: a restart frees
        // what the last run would have forgotten.
        pipeline::evict(&mut store, pipeline::eviction_cutoff(now_ms, max_age));
        pipeline::report_index(&store);
        Ok::<_, dedup::DedupError>((store, recovery))
    })
    .await
    .expect("opening the dedup store does not panic")?;
    info!(
        committed_flushes = recovery.committed_flushes,
        interrupted_flushes = recovery.interrupted_flushes,
        recovered_keys = recovery.recovered_keys,
        truncated_bytes = recovery.truncated_bytes,
        lake = %lake.root().display(),
        "dedup journal replayed"
    );

    let provisioning = match &config.gateway.provisioning_file {
        Some(path) => Some(ProvisioningSource::open(path)?),
        None => None,
    };
    let clickhouse = open_clickhouse(config).await?;
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = shutdown_tx.send(true);
    });
    if let Some(source) = &provisioning {
        source.spawn_reloader(
            tillwatch_bus::provisioning::RELOAD_EVERY,
            shutdown_rx.clone(),
        );
    }
    let (input_tx, input_rx) = mpsc::channel(256);
    let (ack_tx, ack_rx) = mpsc::unbounded_channel();
    let pipeline_config = PipelineConfig {
        limits: DecodeLimits::from_config(&config.gateway),
        flush_max_rows: config.gateway.flush_max_rows,
        flush_max_unacked: config.gateway.flush_max_unacked,
        flush_max_age: config.gateway.flush_max_age,
        max_buffered_bytes: config.gateway.max_buffered_bytes,
        writer_id: config.mqtt.client_id.clone(),
        dead_letters_per_second: config.gateway.dead_letters_per_second,
        max_boots_per_device: config.gateway.max_boots_per_device,
        provisioning,
        health: health.clone(),
        confirm_durable: config.gateway.confirm_durable,
    };
    // The shipper outlives the pipeline: it stops after the last flush has
    // been spooled, draining for a moment before leaving the rest on disk.
    let (ship_stop_tx, ship_stop_rx) = watch::channel(false);
    let shipper = clickhouse.as_ref().map(|(ch, spool)| {
        tokio::spawn(tillwatch_clickhouse::run_shipper(
            ch.clone(),
            spool.clone(),
            tillwatch_clickhouse::ShipperConfig {
                max_rows: config.clickhouse.insert_max_rows,
                drain_grace: SHIPPER_DRAIN_GRACE,
            },
            ship_stop_rx,
        ))
    });
    let pipeline = tokio::spawn(pipeline::run_pipeline(
        pipeline_config,
        lake,
        clickhouse.map(|(_, spool)| spool),
        store,
        input_rx,
        ack_tx,
        shutdown_rx.clone(),
    ));
    let consumer = tillwatch_bus::ConsumerConfig {
        mqtt: config.mqtt.clone(),
        client_id: config.mqtt.client_id.clone(),
        shared_group: config.mqtt.shared_group.clone(),
    };
    let polled = tillwatch_bus::consume(
        consumer,
        health.bus.clone(),
        Arc::new(mqtt::GatewayObserver),
        input_tx,
        ack_rx,
        shutdown_rx,
    )
    .await
    .map_err(GatewayError::from);
    // The consumer dropped the pipeline's input, so the pipeline drains
    // and ends even after an early error; acks it releases then have no
    // connection to go to and the broker redelivers those messages.
    let _ = pipeline.await;
    let _ = ship_stop_tx.send(true);
    if let Some(shipper) = shipper {
        let _ = shipper.await;
    }
    polled
}
