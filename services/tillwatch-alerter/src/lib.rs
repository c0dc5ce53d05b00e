//! The alerter: knows every terminal's state now and pages on it.
//!
//! [`Tracker`] turns telemetry, status and info messages into the device
//! registry, the newest signal values and connectivity state changes.
//! [`engine::Engine`] runs the alert rules over them; [`Alerter`] feeds both
//! and keeps what they decide in the metadata store, so a restart resumes
//! where it stopped; [`deliver`] sends alerts to receivers. Time is always
//! passed in, so tests drive it with an injected clock.

mod alerter;
pub mod deliver;
pub mod engine;
pub use tillwatch_domain::matchers;
pub mod rules;
mod run;
mod tracker;

pub use alerter::{ALERTS_REFUSED, Alerter, AlertingError};
pub use run::{
    ACTIVE, AlerterError, AlerterHealth, CONNECTIVITY_CHANGES, LEASE, public_url, run_alerter,
    silence_policy,
};
pub use tracker::{Event, Tracker, TrackerError};
