//! The data-aware scheduler: what should run now, decided from the jobs'
//! definitions and the recorded state of their partitions ([`plan`], pure:
//! time, the ingest watermark and fingerprints are passed in, so every rule
//! is tested on an injected clock), and the [`Runner`] that claims each
//! due partition in the metadata store, runs it through an [`Executor`]
//! and records the outcome with its lineage.

pub mod error;
pub mod interval;
pub mod job;
pub mod ops;
pub mod plan;
pub mod process;
pub mod runner;
pub mod watermark;

pub use error::JobError;
pub use interval::{Grain, Partition, PartitionKeyError};
pub use job::{Catalog, CatalogError, Input, JobSpec, Recheck, RunWindow, Schedule, SlaAt};
pub use ops::{Lineage, Progress, RangeError, Snapshot, Target};
pub use plan::{PartitionRecord, Reason, Status, Task, World, plan};
pub use runner::{Clock, EmptyFuture, Executor, Output, Ran, RunFuture, Runner};
pub use watermark::{WriterWatermark, ingest_watermark};
