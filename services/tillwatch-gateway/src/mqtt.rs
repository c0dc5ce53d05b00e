//! The gateway on the device bus: its readiness is the bus consumer's, and
//! what the consumer reports goes into the gateway's metrics.

use std::sync::{Arc, Mutex};

use metrics::{counter, gauge};
use tillwatch_bus::{BusHealth, BusObserver};

use crate::metrics as m;

/// Whether the gateway can take readings: connected and subscribed to the
/// broker, and able to write the lake (and the ClickHouse spool); read by
/// `/readyz`.
#[derive(Debug, Default)]
pub struct GatewayHealth {
    pub(crate) bus: Arc<BusHealth>,
    /// Why the last flush could not be written, while it cannot.
    storage: Mutex<Option<String>>,
}

impl GatewayHealth {
    /// Connected, subscribed, and writing.
    pub fn is_ready(&self) -> bool {
        self.not_ready_reason().is_none()
    }

    /// Connected and subscribed to the broker.
    pub fn is_subscribed(&self) -> bool {
        self.bus.is_ready()
    }

    /// What keeps it from taking readings, for `/readyz`.
    pub fn not_ready_reason(&self) -> Option<String> {
        if let Some(problem) = self.storage_problem() {
            return Some(format!(
                "the gateway cannot write what it takes (nothing is acked until it can): {problem}"
            ));
        }
        (!self.bus.is_ready())
            .then(|| "the gateway is not connected and subscribed to the broker".to_string())
    }

    /// The error of the flush that keeps failing, if one does.
    pub fn storage_problem(&self) -> Option<String> {
        self.storage
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// A flush failed with `problem`, or (`None`) one succeeded.
    pub(crate) fn set_storage(&self, problem: Option<String>) {
        gauge!(m::STORAGE_FAILING).set(if problem.is_some() { 1.0 } else { 0.0 });
        *self.storage.lock().unwrap_or_else(|e| e.into_inner()) = problem;
    }
}

/// The consumer's reports as the gateway's metrics.
pub(crate) struct GatewayObserver;

impl BusObserver for GatewayObserver {
    fn ready(&self, ready: bool) {
        gauge!(m::BROKER_CONNECTED).set(if ready { 1.0 } else { 0.0 });
    }

    fn connection_error(&self) {
        counter!(m::BROKER_CONNECTION_ERRORS).increment(1);
    }

    fn redelivered(&self) {
        counter!(m::REDELIVERIES).increment(1);
    }

    fn acked(&self, count: usize) {
        counter!(m::ACKS_SENT).increment(count as u64);
    }
}
