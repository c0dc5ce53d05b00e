//! The names of the built-in jobs' outputs in the lake: each is a table
//! (a directory under the lake's root) that the rollups write and the read
//! side reads, so both name it from here.

/// Compacts each closed hour of the raw tables.
pub const RAW_COMPACTION: &str = "raw_compaction";
/// One row per terminal per hour.
pub const DEVICE_HEALTH_HOURLY: &str = "device_health_hourly";
/// One row per terminal and store per day.
pub const DEVICE_HEALTH_DAILY: &str = "device_health_daily";
/// One row per cohort (merchant, store, firmware, app, model) per day.
pub const FLEET_HEALTH_DAILY: &str = "fleet_health_daily";
