//! The data-aware scheduler's core: what should run now, decided from the
//! jobs' definitions and the recorded state of their partitions. Pure:
//! time, the ingest watermark and fingerprints are passed in, so every
//! rule (schedules, catch-up, dependencies between grains, lateness, run
//! windows, retries with backoff, staleness from changed inputs,
//! concurrency) is tested on an injected clock.

pub mod interval;
pub mod job;
pub mod plan;

pub use interval::{Grain, Partition};
pub use job::{Catalog, CatalogError, Input, JobSpec, RunWindow, Schedule};
pub use plan::{PartitionRecord, Reason, Status, Task, World, plan};
