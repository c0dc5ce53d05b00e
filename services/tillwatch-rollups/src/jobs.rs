//! The built-in rollups: each job's definition for the scheduler and its
//! SQL per engine, kept by owner under `jobs/<owner>/` (the ClickHouse
//! tables they write are in `tillwatch-storage/clickhouse/007_rollups.sql`).
//!
//! - DataFusion (`<job>.datafusion.sql`): `device_health_hourly` reads the
//!   raw tables of one hour, each registered under its own name (`battery`,
//!   `connectivity`, `app_performance`, `payment_health`) holding only that
//!   hour's rows; the daily jobs read their input partition registered as
//!   `hourly` or `daily`. `{start_ms}` is the partition's start.
//! - ClickHouse (`<job>.clickhouse.sql`): the SELECT of an
//!   `INSERT INTO <job>_staging SELECT …`, reading the raw and rollup tables
//!   of `{database}` between `{start_s}` and `{end_s}` (Unix seconds).

use tillwatch_scheduler::{Grain, Input, JobSpec};
pub use tillwatch_storage::outputs::{
    DEVICE_HEALTH_DAILY, DEVICE_HEALTH_HOURLY, FLEET_HEALTH_DAILY, RAW_COMPACTION,
};

/// The team that owns the health rollups.
pub const HEALTH_OWNER: &str = "health";
/// The team that owns the lake's upkeep.
pub const PLATFORM_OWNER: &str = "platform";

/// The raw tables the hourly rollup reads.
pub const RAW_TABLES: [&str; 4] = [
    "battery",
    "connectivity",
    "app_performance",
    "payment_health",
];

/// A built-in job's statements, one per engine.
#[derive(Debug, Clone, Copy)]
pub struct Sql {
    pub datafusion: &'static str,
    pub clickhouse: &'static str,
}

macro_rules! job_sql {
    ($owner:literal, $job:literal) => {
        Sql {
            datafusion: include_str!(concat!("../jobs/", $owner, "/", $job, ".datafusion.sql")),
            clickhouse: include_str!(concat!("../jobs/", $owner, "/", $job, ".clickhouse.sql")),
        }
    };
}

/// One row per terminal that reported in the hour.
///
/// - Battery: lowest, mean and last level; the drop over the hour when it
///   never charged (the drain); minutes charging (the share of battery
///   readings taken while charging, times 60); hottest temperature.
/// - Connectivity: weakest and median RSSI; payment-host round trip p50 and
///   p95; link drops.
/// - App: transactions; transaction time p50/p95/p99, estimated from each
///   reading's mean weighted by its transactions; crashes and hangs.
/// - Payments: the longest offline queue and its oldest payment's age.
/// - Completeness: readings received per kind.
pub const DEVICE_HEALTH_HOURLY_SQL: Sql = job_sql!("health", "device_health_hourly");

/// One row per terminal per UTC day, from the day's 24 hourly partitions.
/// Minima, maxima, sums and counts are exact; means are weighted by the
/// readings behind each hour; daily quantiles are estimated from the hourly
/// ones, weighted by the readings (or transactions) behind each.
pub const DEVICE_HEALTH_DAILY_SQL: Sql = job_sql!("health", "device_health_daily");

/// One row per (merchant, store, firmware version, app version) per day:
/// cohorts side by side.
pub const FLEET_HEALTH_DAILY_SQL: Sql = job_sql!("health", "fleet_health_daily");

/// The statements of a built-in job.
pub fn sql(job: &str) -> Option<Sql> {
    match job {
        DEVICE_HEALTH_HOURLY => Some(DEVICE_HEALTH_HOURLY_SQL),
        DEVICE_HEALTH_DAILY => Some(DEVICE_HEALTH_DAILY_SQL),
        FLEET_HEALTH_DAILY => Some(FLEET_HEALTH_DAILY_SQL),
        _ => None,
    }
}

fn owned(mut job: JobSpec) -> JobSpec {
    job.owner = HEALTH_OWNER.into();
    job
}

/// Compaction of a closed hour of the raw tables: the gateway's small
/// files become one per table, each reading once (see
/// `tillwatch_storage::Lake::compact_hour`). Upstream of the hourly rollup,
/// which reads the hour only after it is compacted. Late data for a
/// compacted hour adds a file, changes the hour's fingerprint and so
/// compacts it again, then re-runs what depends on it.
pub fn raw_compaction() -> JobSpec {
    let mut job = JobSpec::new(
        RAW_COMPACTION,
        Grain::Hour,
        RAW_TABLES
            .iter()
            .map(|t| Input::Source(t.to_string()))
            .collect(),
    );
    job.owner = PLATFORM_OWNER.into();
    job
}

/// The hourly job's definition for the scheduler: each hour once its raw
/// files are compacted, and again when who its terminals belong to changes
/// (`device_attributes`, see [`crate::service::DEVICE_ATTRIBUTES`]).
pub fn device_health_hourly() -> JobSpec {
    owned(JobSpec::new(
        DEVICE_HEALTH_HOURLY,
        Grain::Hour,
        vec![
            Input::Job(RAW_COMPACTION.into()),
            Input::Source(crate::service::DEVICE_ATTRIBUTES.into()),
        ],
    ))
}

/// The daily job's definition: the 24 hourly partitions of each UTC day.
pub fn device_health_daily() -> JobSpec {
    owned(JobSpec::new(
        DEVICE_HEALTH_DAILY,
        Grain::Day,
        vec![Input::Job(DEVICE_HEALTH_HOURLY.into())],
    ))
}

/// The fleet job's definition: each day's device rollup, by cohort.
pub fn fleet_health_daily() -> JobSpec {
    owned(JobSpec::new(
        FLEET_HEALTH_DAILY,
        Grain::Day,
        vec![Input::Job(DEVICE_HEALTH_DAILY.into())],
    ))
}
