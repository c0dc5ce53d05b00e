//! The device bus: what every Tillwatch consumer of the terminals' MQTT
//! topics shares, the gateway and the alerter alike.
//!
//! - [`decode`]: an MQTT message (topic and bytes) to domain values or dead
//!   letters. **Architecture Invariant:** the only place that turns the
//!   telemetry contract's protobuf into domain types.
//! - [`session`]: the persistent, manually acked MQTT session on every
//!   device channel, and [`consume`]: the one loop over it (connect,
//!   subscribe, notice refusals, hand messages on, ack what the handler
//!   gives back, reconnect).
//! - [`access`]: who may publish and subscribe to what (a terminal is only
//!   itself), as the embedded broker's front applies it to each packet;
//!   [`passwords`]: the Mosquitto password files logins are checked
//!   against.
//! - [`provisioning`]: the operator's record of which merchant and store
//!   each terminal belongs to, checked against every message's topic.
//! - [`shutdown_requested`]: the one way services wait for a shared stop.
//!
//! It knows MQTT and the contract, and nothing of where data goes: no
//! Arrow, Parquet, ClickHouse or SQL.

pub mod access;
mod consumer;
pub mod decode;
pub mod passwords;
pub mod provisioning;
mod session;

pub use consumer::{
    AckToken, BusHealth, BusObserver, ConsumerConfig, ConsumerError, Incoming, Notice, Release,
    Unobserved, consume,
};
pub use session::{SessionError, session, subscriptions};

/// Resolves once `rx` turns true, or when its sender is dropped: the one
/// way services here wait for a shared shutdown signal.
pub async fn shutdown_requested(mut rx: tokio::sync::watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}
