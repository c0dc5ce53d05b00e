//! The built-in rollups: each job declared (`<job>.toml`, see
//! [`crate::declared`]) beside its SQL per engine, kept by owner under
//! `jobs/<owner>/` (the ClickHouse tables they write are in
//! `tillwatch-storage/clickhouse/007_rollups.sql`).
//!
//! - DataFusion (`<job>.datafusion.sql`): `device_health_hourly` reads the
//!   raw tables of one hour, each registered under its own name (`battery`,
//!   `connectivity`, `app_performance`, `payment_health`) holding only that
//!   hour's rows; the daily jobs read their input partition registered as
//!   `hourly` or `daily`. `{start_ms}` is the partition's start.
//! - ClickHouse (`<job>.clickhouse.sql`): the SELECT of an
//!   `INSERT INTO <job>_staging SELECT …`, reading the raw and rollup tables
//!   of `{database}` between `{start_s}` and `{end_s}` (Unix seconds).

use tillwatch_scheduler::JobSpec;
pub use tillwatch_storage::outputs::{
    DEVICE_HEALTH_DAILY, DEVICE_HEALTH_HOURLY, FLEET_HEALTH_DAILY, RAW_COMPACTION,
};

/// The team that owns the lake's upkeep (the jobs that are not files:
/// retention and the merchant directory).
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

/// A built-in job's declaration (`jobs/<owner>/<job>.toml`) as a job
/// with its defaults.
fn declared(name: &str) -> JobSpec {
    crate::declared::builtin()
        .into_iter()
        .find(|j| j.name == name)
        .map(|j| j.spec())
        .unwrap_or_else(|| panic!("{name} is a built-in job"))
}

/// Compaction of a closed hour of the raw tables: the gateway's small
/// files become one per table, each reading once (see
/// `tillwatch_storage::Lake::compact_hour`). Upstream of the hourly rollup,
/// which reads the hour only after it is compacted. Late data for a
/// compacted hour adds a file, changes the hour's fingerprint and so
/// compacts it again, then re-runs what depends on it.
pub fn raw_compaction() -> JobSpec {
    declared(RAW_COMPACTION)
}

/// The hourly job: each hour once its raw files are compacted, and again
/// when who its terminals belong to changes (`device_attributes`, see
/// [`crate::service::DEVICE_ATTRIBUTES`]).
pub fn device_health_hourly() -> JobSpec {
    declared(DEVICE_HEALTH_HOURLY)
}

/// The daily job: the hourly partitions of each day (UTC here; the
/// catalog widens its reads to the stores' local days).
pub fn device_health_daily() -> JobSpec {
    declared(DEVICE_HEALTH_DAILY)
}

/// The fleet job: each day's device rollup, by cohort.
pub fn fleet_health_daily() -> JobSpec {
    declared(FLEET_HEALTH_DAILY)
}
