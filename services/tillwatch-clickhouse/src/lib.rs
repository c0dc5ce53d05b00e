//! Tillwatch's ClickHouse side: the schema migrations (the DDL files live
//! in the storage crate), RowBinary encoding of the lake's Arrow batches,
//! the durable spool between the gateway and ClickHouse with the shipper
//! that drains it, and backfill from the lake.

mod backfill;
mod client;
pub mod metrics;
mod migrate;
pub mod rowbinary;
mod shipper;
mod spool;

pub use backfill::{BackfillProgress, BackfillReport, backfill};
pub use client::{ChError, ClickHouse, ErrorClass, Settings};
pub use migrate::{MigrationReport, applied_versions, migrate, ttl_statements};
pub use shipper::{ShipperConfig, encode_parts, run_shipper};
pub use spool::{EncodedRows, Spool, SpoolError, SpoolReader, SpoolRecord};

/// Raw tables and the time column their retention counts from.
pub const RAW_TABLES_WITH_TIME: [(&str, &str); 5] = [
    ("connectivity", "sampled_at"),
    ("battery", "sampled_at"),
    ("app_performance", "sampled_at"),
    ("payment_health", "sampled_at"),
    ("dead_letter", "received_at"),
];
