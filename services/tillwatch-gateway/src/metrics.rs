//! The gateway's metrics, declared in one place.
//!
//! Label values come from bounded sets: `kind` (four reading kinds),
//! `reason` (the rejection codes), `channel` (telemetry, status, info).
//! Device, merchant and store ids never become labels.

use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};

pub const MESSAGES_RECEIVED: &str = "tillwatch_gateway_messages_received_total";
pub const MESSAGE_BYTES_RECEIVED: &str = "tillwatch_gateway_message_bytes_received_total";
pub const READINGS_RECEIVED: &str = "tillwatch_gateway_readings_received_total";
pub const READINGS_STORED: &str = "tillwatch_gateway_readings_stored_total";
pub const READINGS_DUPLICATE: &str = "tillwatch_gateway_readings_duplicate_total";
pub const REJECTED: &str = "tillwatch_gateway_rejected_total";
pub const DEAD_LETTERS_STORED: &str = "tillwatch_gateway_dead_letters_stored_total";
pub const DEAD_LETTERS_DROPPED: &str = "tillwatch_gateway_dead_letters_dropped_total";
pub const FLUSH_ROWS: &str = "tillwatch_gateway_flush_rows";
pub const FLUSH_DURATION: &str = "tillwatch_gateway_flush_duration_seconds";
pub const FLUSH_ERRORS: &str = "tillwatch_gateway_flush_errors_total";
pub const STORAGE_FAILING: &str = "tillwatch_gateway_storage_failing";
pub const FILES_WRITTEN: &str = "tillwatch_gateway_files_written_total";
pub const BYTES_WRITTEN: &str = "tillwatch_gateway_bytes_written_total";
pub const ACKS_SENT: &str = "tillwatch_gateway_acks_sent_total";
pub const BUFFERED_BYTES: &str = "tillwatch_gateway_buffered_bytes";
pub const BACKPRESSURE: &str = "tillwatch_gateway_backpressure";
pub const BROKER_CONNECTED: &str = "tillwatch_gateway_broker_connected";
pub const BROKER_CONNECTION_ERRORS: &str = "tillwatch_gateway_broker_connection_errors_total";
pub const REDELIVERIES: &str = "tillwatch_gateway_redeliveries_total";
pub const WINDOW_LIMITED_FLUSHES: &str = "tillwatch_gateway_window_limited_flushes_total";
pub const DEVICE_STATUS: &str = "tillwatch_gateway_device_status_total";
pub const DEDUP_BOOTS: &str = "tillwatch_gateway_dedup_boots";
pub const DEDUP_BOOTS_EVICTED: &str = "tillwatch_gateway_dedup_boots_evicted_total";

/// Registers descriptions with the installed recorder. Idempotent.
pub fn describe() {
    describe_counter!(
        MESSAGES_RECEIVED,
        Unit::Count,
        "MQTT messages taken from the broker, by channel"
    );
    describe_counter!(
        MESSAGE_BYTES_RECEIVED,
        Unit::Bytes,
        "Payload bytes taken from the broker"
    );
    describe_counter!(
        READINGS_RECEIVED,
        Unit::Count,
        "Valid readings decoded, by kind (before deduplication)"
    );
    describe_counter!(
        READINGS_STORED,
        Unit::Count,
        "Readings durably written to the lake, by kind"
    );
    describe_counter!(
        READINGS_DUPLICATE,
        Unit::Count,
        "Readings dropped because the lake already holds them"
    );
    describe_counter!(
        REJECTED,
        Unit::Count,
        "Messages or readings rejected into dead letters, by reason"
    );
    describe_counter!(
        DEAD_LETTERS_STORED,
        Unit::Count,
        "Dead letters durably written to the lake"
    );
    describe_counter!(
        DEAD_LETTERS_DROPPED,
        Unit::Count,
        "Rejected messages counted but not stored: over gateway.dead_letters_per_second"
    );
    describe_gauge!(
        DEDUP_BOOTS,
        Unit::Count,
        "Terminal boots the dedup index holds (each costs tens of bytes)"
    );
    describe_counter!(
        DEDUP_BOOTS_EVICTED,
        Unit::Count,
        "Boots the dedup index forgot: newest reading older than gateway.max_age"
    );
    describe_histogram!(FLUSH_ROWS, Unit::Count, "Rows written per flush");
    describe_histogram!(
        FLUSH_DURATION,
        Unit::Seconds,
        "Time to write, sync and commit one flush"
    );
    describe_counter!(
        FLUSH_ERRORS,
        Unit::Count,
        "Failed flush attempts (retried; nothing is acked until one succeeds)"
    );
    describe_gauge!(
        STORAGE_FAILING,
        Unit::Count,
        "1 while the gateway's flushes fail (a full or broken disk, the lake's object store, the ClickHouse spool): intake is stopped, nothing acked"
    );
    describe_counter!(
        FILES_WRITTEN,
        Unit::Count,
        "Parquet files placed in the lake"
    );
    describe_counter!(
        BYTES_WRITTEN,
        Unit::Bytes,
        "Parquet bytes placed in the lake"
    );
    describe_counter!(
        ACKS_SENT,
        Unit::Count,
        "MQTT acknowledgements sent after the data was durable"
    );
    describe_gauge!(
        BUFFERED_BYTES,
        Unit::Bytes,
        "Bytes held in memory awaiting or undergoing a flush"
    );
    describe_gauge!(
        BACKPRESSURE,
        Unit::Count,
        "1 while the gateway has stopped taking messages because its buffer is full"
    );
    describe_gauge!(
        BROKER_CONNECTED,
        Unit::Count,
        "1 while connected and subscribed to the broker"
    );
    describe_counter!(
        BROKER_CONNECTION_ERRORS,
        Unit::Count,
        "Broker connection failures"
    );
    describe_counter!(
        REDELIVERIES,
        Unit::Count,
        "Messages the broker sent again (DUP flag set): after a reconnect, the unacked ones"
    );
    describe_counter!(
        DEVICE_STATUS,
        Unit::Count,
        "Device status messages, by state (online/offline)"
    );
    // Series a dashboard or an alert rule reads exist from the start, at
    // zero, rather than appearing with the first failure ("No data").
    metrics::counter!(FLUSH_ERRORS).absolute(0);
    metrics::gauge!(STORAGE_FAILING).set(0.0);
    metrics::counter!(READINGS_DUPLICATE).absolute(0);
}
