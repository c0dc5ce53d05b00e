//! The alerter: knows every terminal's state now and (to come) pages on it.
//!
//! [`Tracker`] turns telemetry, status and info messages into the device
//! registry, the newest signal values and connectivity state changes, kept
//! in the metadata store so a restart resumes where it stopped. Time is
//! always passed in, so tests drive it with an injected clock.

pub mod rules;
mod run;
mod tracker;

pub use run::{AlerterError, CONNECTIVITY_CHANGES, run_alerter};
pub use tracker::{Event, Tracker, TrackerError};
