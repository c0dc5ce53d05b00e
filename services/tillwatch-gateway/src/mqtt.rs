//! The gateway on the device bus: its readiness is the bus consumer's, and
//! what the consumer reports goes into the gateway's metrics.

use metrics::{counter, gauge};
use tillwatch_bus::BusObserver;

use crate::metrics as m;

/// Whether the gateway is connected and subscribed; read by `/readyz`.
pub type GatewayHealth = tillwatch_bus::BusHealth;

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
