//! The scheduler's metrics, declared in one place.
//!
//! `writer` labels are gateway client ids: one per gateway of the
//! deployment, a set the operator configures. Device, merchant and store
//! ids never become labels.

use metrics::{Unit, describe_gauge};

/// How far the ingest watermark the rollups wait for is behind the clock.
pub const WATERMARK_LAG: &str = "tillwatch_scheduler_ingest_watermark_lag_seconds";
/// How far each gateway's own watermark record is behind the clock.
pub const WRITER_LAG: &str = "tillwatch_scheduler_ingest_writer_lag_seconds";
/// Gateways whose watermark stalled and no longer holds the rollups back.
pub const WRITERS_STALLED: &str = "tillwatch_scheduler_ingest_writers_stalled";

/// Registers descriptions with the installed recorder. Idempotent.
pub fn describe() {
    describe_gauge!(
        WATERMARK_LAG,
        Unit::Seconds,
        "How far the ingest watermark (the slowest advancing gateway's) is behind the clock"
    );
    describe_gauge!(
        WRITER_LAG,
        Unit::Seconds,
        "How far each gateway's ingest watermark record is behind the clock, by writer"
    );
    describe_gauge!(
        WRITERS_STALLED,
        Unit::Count,
        "Gateways whose watermark has not advanced for scheduler.watermark_stall_after and no longer hold the rollups back"
    );
}
