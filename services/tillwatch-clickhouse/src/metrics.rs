//! Metric names of the ClickHouse sink. No device ids in labels: `table`
//! and `class` have a handful of values each.

/// Counter, by `table`: rows ClickHouse accepted.
pub const ROWS_INSERTED: &str = "tillwatch_clickhouse_rows_inserted_total";
/// Counter, by `table`: INSERT statements that succeeded.
pub const INSERTS: &str = "tillwatch_clickhouse_inserts_total";
/// Histogram, seconds: one INSERT, send to answer.
pub const INSERT_DURATION: &str = "tillwatch_clickhouse_insert_duration_seconds";
/// Counter, by `class` (network, timeout, auth, schema, data, server).
pub const ERRORS: &str = "tillwatch_clickhouse_errors_total";
/// Counter, by `table`: rows ClickHouse could not read, set aside in the
/// spool's `rejected/` folder instead of blocking the rows behind them.
pub const ROWS_REJECTED: &str = "tillwatch_clickhouse_rows_rejected_total";
/// Gauge: records in the spool not yet in ClickHouse.
pub const SPOOL_RECORDS: &str = "tillwatch_clickhouse_spool_records";
/// Gauge: bytes of spool segments on disk.
pub const SPOOL_BYTES: &str = "tillwatch_clickhouse_spool_bytes";
/// Gauge, 0 or 1: the spool is full and flushes (so acks) are held.
pub const SPOOL_FULL: &str = "tillwatch_clickhouse_spool_full";
/// Counter: spool records skipped because their checksum failed.
pub const SPOOL_CORRUPT: &str = "tillwatch_clickhouse_spool_corrupt_records_total";

/// Describes every metric above to the installed recorder.
pub fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(ROWS_INSERTED, "Rows ClickHouse accepted, by table");
    describe_counter!(INSERTS, "INSERT statements that succeeded, by table");
    describe_histogram!(INSERT_DURATION, Unit::Seconds, "Duration of one INSERT");
    describe_counter!(
        ERRORS,
        "Failed ClickHouse calls, by class (network, timeout, auth, schema, data, server)"
    );
    describe_counter!(
        ROWS_REJECTED,
        "Rows ClickHouse could not read, set aside in the spool's rejected/ folder"
    );
    describe_gauge!(SPOOL_RECORDS, "Spool records not yet in ClickHouse");
    describe_gauge!(
        SPOOL_BYTES,
        Unit::Bytes,
        "Bytes of ClickHouse spool on disk"
    );
    describe_gauge!(
        SPOOL_FULL,
        "1 while the ClickHouse spool is full and acks are held"
    );
    describe_counter!(SPOOL_CORRUPT, "Spool records skipped for a failed checksum");
}
