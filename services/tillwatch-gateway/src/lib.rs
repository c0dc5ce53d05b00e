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

pub mod decode;
pub mod dedup;
pub mod metrics;
mod mqtt;
pub mod pipeline;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

use tillwatch_config::Config;
use tillwatch_domain::Limits;
use tillwatch_storage::Lake;
use tokio::sync::{mpsc, watch};
use tracing::info;

pub use mqtt::GatewayHealth;

use crate::decode::DecodeLimits;
use crate::dedup::DedupStore;
use crate::pipeline::PipelineConfig;

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("{0}")]
    Config(String),
    #[error("opening the dedup journal: {0}")]
    Dedup(#[from] dedup::DedupError),
    #[error(
        "broker {broker} refused the connection ({reason}); check mqtt.username, mqtt.password and mqtt.client_id"
    )]
    Refused { broker: String, reason: String },
    #[error("the broker refused the subscription to {0}; check its ACLs")]
    Subscribe(String),
}

/// Resolves once `rx` turns true, or when its sender is dropped: the one
/// way services here wait for a shared shutdown signal.
pub async fn shutdown_requested(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

/// Where the gateway keeps its lake and its own state under `data_dir`.
pub fn lake_dir(config: &Config) -> PathBuf {
    config.data_dir.join("lake")
}

fn state_dir(config: &Config) -> PathBuf {
    config.data_dir.join("gateway").join(&config.mqtt.client_id)
}

/// Runs the gateway until `shutdown` resolves, then flushes, acks what is
/// durable and disconnects.
pub async fn run_gateway(
    config: &Config,
    health: Arc<GatewayHealth>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), GatewayError> {
    metrics::describe();
    let lake = Lake::new(lake_dir(config));
    let state = state_dir(config);
    let recovery_lake = lake.clone();
    let (store, recovery) =
        tokio::task::spawn_blocking(move || DedupStore::open(&state, recovery_lake))
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

    let (client, eventloop) = mqtt::connect(&config.mqtt)?;
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = shutdown_tx.send(true);
    });
    let (input_tx, input_rx) = mpsc::channel(256);
    let (ack_tx, ack_rx) = mpsc::unbounded_channel();
    let pipeline_config = PipelineConfig {
        limits: DecodeLimits {
            max_payload_bytes: config.gateway.max_payload_bytes,
            sample_time: Limits {
                max_future: config.gateway.max_future,
                max_age: config.gateway.max_age,
            },
        },
        flush_max_rows: config.gateway.flush_max_rows,
        flush_max_unacked: config.gateway.flush_max_unacked,
        flush_max_age: config.gateway.flush_max_age,
        max_buffered_bytes: config.gateway.max_buffered_bytes,
        writer_id: config.mqtt.client_id.clone(),
    };
    let pipeline = tokio::spawn(pipeline::run_pipeline(
        pipeline_config,
        lake,
        store,
        input_rx,
        ack_tx,
        shutdown_rx.clone(),
    ));
    let acker = tokio::spawn(mqtt::ack_task(client.clone(), ack_rx));
    let polled = mqtt::poll_loop(
        client,
        eventloop,
        config.mqtt.clone(),
        health,
        input_tx,
        shutdown_rx,
    )
    .await;
    // The poll loop dropped the pipeline's input, so the pipeline drains
    // and ends even after an early error; acks it releases then have no
    // connection to go to and the broker redelivers those messages.
    let _ = pipeline.await;
    acker.abort();
    polled
}
