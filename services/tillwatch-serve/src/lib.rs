//! Service wiring: the HTTP endpoints, the embedded MQTT broker, each
//! role's process ([`roles`]) and standalone mode (everything in one
//! process, on one metadata store pool).
//!
//! Every entry point takes its configuration, already-bound listeners and a
//! shutdown future, so tests start services in-process on port 0.

mod broker;
mod http;
pub mod roles;
mod standalone;
pub mod tls;

pub use broker::{EmbeddedBroker, EmbeddedBrokerError};
pub use http::{HttpServing, Readiness, api_router, metrics_handle, serve_http};
pub use standalone::{MadeTokens, make_tokens, run_standalone, spawn_grpc};

/// For callers that add routes to [`serve_http`].
pub use axum::Router;
