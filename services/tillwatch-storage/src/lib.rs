//! Storage: how Tillwatch's readings sit on disk.
//!
//! **Architecture Invariant:** only this crate knows Arrow and Parquet. The
//! gateway hands it domain readings and dead letters; it hands back files
//! that are complete and durable.
//!
//! The lake is hive-partitioned by the hour a reading was sampled in:
//! `<root>/<table>/date=YYYY-MM-DD/hour=HH/<writer>-<flush>-<n>.parquet`.
//! The root is a local directory or an `s3://bucket/prefix` URL of an
//! S3-compatible object store ([`store`]). On disk a file is written under a
//! hidden temporary name, synced, renamed into place and its directory
//! synced; in object storage it is one PUT. Either way a reader never sees
//! a partial file and a file that is visible survives a crash.

pub mod clickhouse_ddl;
mod compact;
mod lake;
pub mod outputs;
mod rows;
pub mod sample;
mod schema;
mod staging;
pub mod store;

pub use compact::Compacted;
pub use lake::{
    DroppedDays, Lake, LakeError, OutputGrain, WrittenFile, encode_parquet, read_file,
    read_reading_keys,
};
pub use rows::Rows;
pub use schema::{Table, schema};
pub use staging::{DeadLetter, PartBatch, Staging, StoredReading};
pub use store::LakeS3Config;
