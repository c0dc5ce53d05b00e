//! The rollup jobs and their engines. Each job is defined once, as SQL per
//! engine over the same inputs ([`jobs`]); the embedded engine
//! ([`embedded`]) runs it with DataFusion over the Parquet lake and writes
//! the partition as one Parquet file, replaced atomically; the ClickHouse
//! engine ([`clickhouse`]) runs it as `INSERT … SELECT` in the server and
//! swaps the interval's partition, and writes the same Parquet file. [`catalog`]
//! applies the operator's settings; [`service`] builds the scheduler's
//! runner over them and its snapshot of the lake (the process itself is
//! `tillwatch_scheduler::process`, wired by `tillwatch-serve`).

pub mod catalog;
pub mod clickhouse;
pub mod clickhouse_declared;
pub mod declared;
pub mod directory;
pub mod embedded;
pub mod findings;
pub mod jobs;
pub mod quantile;
pub mod retention;
pub mod service;
pub mod side;
pub mod source;
pub mod synthetic;

pub use service::SchedulerError;
