//! The built-in rollups and their SQL.
//!
//! `device_health_hourly` reads the raw tables of one hour, each registered
//! under its own name (`battery`, `connectivity`, `app_performance`,
//! `payment_health`) holding only that hour's rows. Every statement has
//! `{start_ms}` in it: the partition's start.

use tillwatch_scheduler::{Grain, Input, JobSpec};

pub const DEVICE_HEALTH_HOURLY: &str = "device_health_hourly";

/// The raw tables the hourly rollup reads.
pub const RAW_TABLES: [&str; 4] = [
    "battery",
    "connectivity",
    "app_performance",
    "payment_health",
];

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
pub const DEVICE_HEALTH_HOURLY_DATAFUSION: &str = "
WITH seen AS (
    SELECT device_id, merchant_id, store_id FROM battery
    UNION ALL SELECT device_id, merchant_id, store_id FROM connectivity
    UNION ALL SELECT device_id, merchant_id, store_id FROM app_performance
    UNION ALL SELECT device_id, merchant_id, store_id FROM payment_health
), d AS (
    SELECT device_id, max(merchant_id) AS merchant_id, max(store_id) AS store_id
    FROM seen GROUP BY device_id
), b AS (
    SELECT device_id,
        count(*) AS battery_readings,
        min(level_pct) AS battery_min_pct,
        avg(CAST(level_pct AS DOUBLE)) AS battery_avg_pct,
        last_value(level_pct ORDER BY sampled_at, seq) AS battery_last_pct,
        CASE WHEN bool_or(charging) THEN NULL ELSE
            CAST(first_value(level_pct ORDER BY sampled_at, seq) AS DOUBLE)
            - CAST(last_value(level_pct ORDER BY sampled_at, seq) AS DOUBLE) END AS battery_drain_pct,
        60.0 * avg(CASE WHEN charging THEN 1.0 ELSE 0.0 END) AS charging_minutes,
        max(temperature_celsius) AS temperature_max_celsius
    FROM battery GROUP BY device_id
), c AS (
    SELECT device_id,
        count(*) AS connectivity_readings,
        min(rssi_dbm) AS rssi_min_dbm,
        approx_percentile_cont(0.5) WITHIN GROUP (ORDER BY CAST(rssi_dbm AS DOUBLE)) AS rssi_median_dbm,
        approx_percentile_cont(0.5) WITHIN GROUP (ORDER BY CAST(payment_host_latency_ms AS DOUBLE)) AS host_latency_p50_ms,
        approx_percentile_cont(0.95) WITHIN GROUP (ORDER BY CAST(payment_host_latency_ms AS DOUBLE)) AS host_latency_p95_ms,
        sum(CAST(disconnects AS BIGINT)) AS disconnects
    FROM connectivity GROUP BY device_id
), a AS (
    SELECT device_id,
        count(*) AS app_readings,
        sum(CAST(transactions AS BIGINT)) AS transactions,
        approx_percentile_cont_with_weight(CAST(transactions AS DOUBLE), 0.5) WITHIN GROUP (ORDER BY CAST(transaction_latency_avg_ms AS DOUBLE)) AS txn_latency_p50_ms,
        approx_percentile_cont_with_weight(CAST(transactions AS DOUBLE), 0.95) WITHIN GROUP (ORDER BY CAST(transaction_latency_avg_ms AS DOUBLE)) AS txn_latency_p95_ms,
        approx_percentile_cont_with_weight(CAST(transactions AS DOUBLE), 0.99) WITHIN GROUP (ORDER BY CAST(transaction_latency_avg_ms AS DOUBLE)) AS txn_latency_p99_ms,
        sum(CAST(crashes AS BIGINT)) AS crashes,
        sum(CAST(hangs AS BIGINT)) AS hangs,
        last_value(firmware_version ORDER BY sampled_at, seq) AS firmware_version,
        last_value(app_version ORDER BY sampled_at, seq) AS app_version
    FROM app_performance GROUP BY device_id
), p AS (
    SELECT device_id,
        count(*) AS payment_readings,
        max(offline_queue_len) AS offline_queue_max,
        max(offline_queue_oldest_age_s) AS offline_queue_oldest_max_s
    FROM payment_health GROUP BY device_id
)
SELECT
    to_timestamp_millis({start_ms}) AS hour,
    d.device_id, d.merchant_id, d.store_id, a.firmware_version, a.app_version,
    b.battery_min_pct, b.battery_avg_pct, b.battery_last_pct, b.battery_drain_pct, b.charging_minutes,
    b.temperature_max_celsius,
    c.rssi_min_dbm, c.rssi_median_dbm, c.host_latency_p50_ms, c.host_latency_p95_ms,
    coalesce(c.disconnects, 0) AS disconnects,
    coalesce(a.transactions, 0) AS transactions,
    a.txn_latency_p50_ms, a.txn_latency_p95_ms, a.txn_latency_p99_ms,
    coalesce(a.crashes, 0) AS crashes, coalesce(a.hangs, 0) AS hangs,
    p.offline_queue_max, p.offline_queue_oldest_max_s,
    coalesce(b.battery_readings, 0) AS battery_readings,
    coalesce(c.connectivity_readings, 0) AS connectivity_readings,
    coalesce(a.app_readings, 0) AS app_readings,
    coalesce(p.payment_readings, 0) AS payment_readings
FROM d
LEFT JOIN b ON b.device_id = d.device_id
LEFT JOIN c ON c.device_id = d.device_id
LEFT JOIN a ON a.device_id = d.device_id
LEFT JOIN p ON p.device_id = d.device_id
ORDER BY d.device_id
";

pub const DEVICE_HEALTH_DAILY: &str = "device_health_daily";

/// One row per terminal per UTC day, from the day's 24 hourly partitions
/// (registered as `hourly`). Minima, maxima, sums and counts are exact;
/// means are weighted by the readings behind each hour; the last battery
/// level is the latest hour's; daily quantiles are estimated from the
/// hourly ones, weighted by the readings (or transactions) behind each.
pub const DEVICE_HEALTH_DAILY_DATAFUSION: &str = "
SELECT
    to_timestamp_millis({start_ms}) AS day,
    device_id,
    max(merchant_id) AS merchant_id,
    max(store_id) AS store_id,
    last_value(firmware_version ORDER BY CASE WHEN firmware_version IS NULL THEN 0 ELSE 1 END, hour) AS firmware_version,
    last_value(app_version ORDER BY CASE WHEN app_version IS NULL THEN 0 ELSE 1 END, hour) AS app_version,
    min(battery_min_pct) AS battery_min_pct,
    sum(battery_avg_pct * battery_readings) / sum(CASE WHEN battery_avg_pct IS NULL THEN NULL ELSE battery_readings END) AS battery_avg_pct,
    last_value(battery_last_pct ORDER BY CASE WHEN battery_last_pct IS NULL THEN 0 ELSE 1 END, hour) AS battery_last_pct,
    avg(battery_drain_pct) AS battery_drain_pct_per_hour,
    sum(charging_minutes) AS charging_minutes,
    max(temperature_max_celsius) AS temperature_max_celsius,
    min(rssi_min_dbm) AS rssi_min_dbm,
    approx_percentile_cont_with_weight(CAST(connectivity_readings AS DOUBLE), 0.5) WITHIN GROUP (ORDER BY rssi_median_dbm) AS rssi_median_dbm,
    approx_percentile_cont_with_weight(CAST(connectivity_readings AS DOUBLE), 0.5) WITHIN GROUP (ORDER BY host_latency_p50_ms) AS host_latency_p50_ms,
    approx_percentile_cont_with_weight(CAST(connectivity_readings AS DOUBLE), 0.95) WITHIN GROUP (ORDER BY host_latency_p95_ms) AS host_latency_p95_ms,
    sum(disconnects) AS disconnects,
    sum(transactions) AS transactions,
    approx_percentile_cont_with_weight(CAST(transactions AS DOUBLE), 0.5) WITHIN GROUP (ORDER BY txn_latency_p50_ms) AS txn_latency_p50_ms,
    approx_percentile_cont_with_weight(CAST(transactions AS DOUBLE), 0.95) WITHIN GROUP (ORDER BY txn_latency_p95_ms) AS txn_latency_p95_ms,
    approx_percentile_cont_with_weight(CAST(transactions AS DOUBLE), 0.99) WITHIN GROUP (ORDER BY txn_latency_p99_ms) AS txn_latency_p99_ms,
    sum(crashes) AS crashes,
    sum(hangs) AS hangs,
    max(offline_queue_max) AS offline_queue_max,
    max(offline_queue_oldest_max_s) AS offline_queue_oldest_max_s,
    sum(battery_readings) AS battery_readings,
    sum(connectivity_readings) AS connectivity_readings,
    sum(app_readings) AS app_readings,
    sum(payment_readings) AS payment_readings,
    count(*) AS hours_reported
FROM hourly
GROUP BY device_id
ORDER BY device_id
";

pub const FLEET_HEALTH_DAILY: &str = "fleet_health_daily";

/// One row per (merchant, store, firmware version, app version) per day,
/// from that day's `device_health_daily` (registered as `daily`): cohorts
/// side by side. Crash rate is crashes and hangs per 1,000 transactions;
/// latencies are weighted by the transactions (or readings) behind them.
pub const FLEET_HEALTH_DAILY_DATAFUSION: &str = "
SELECT
    to_timestamp_millis({start_ms}) AS day,
    merchant_id, store_id, firmware_version, app_version,
    count(*) AS devices,
    sum(CASE WHEN crashes + hangs > 0 THEN 1 ELSE 0 END) AS devices_with_crashes,
    sum(transactions) AS transactions,
    sum(crashes) AS crashes,
    sum(hangs) AS hangs,
    1000.0 * CAST(sum(crashes + hangs) AS DOUBLE) / CAST(CASE WHEN sum(transactions) = 0 THEN NULL ELSE sum(transactions) END AS DOUBLE) AS crashes_per_1000_transactions,
    approx_percentile_cont_with_weight(CAST(transactions AS DOUBLE), 0.95) WITHIN GROUP (ORDER BY txn_latency_p95_ms) AS txn_latency_p95_ms,
    approx_percentile_cont_with_weight(CAST(connectivity_readings AS DOUBLE), 0.95) WITHIN GROUP (ORDER BY host_latency_p95_ms) AS host_latency_p95_ms,
    avg(battery_drain_pct_per_hour) AS battery_drain_pct_per_hour,
    min(battery_min_pct) AS battery_min_pct,
    sum(disconnects) AS disconnects,
    sum(battery_readings + connectivity_readings + app_readings + payment_readings) AS readings
FROM daily
GROUP BY merchant_id, store_id, firmware_version, app_version
ORDER BY merchant_id, store_id, firmware_version, app_version
";

/// The hourly job's definition for the scheduler.
pub fn device_health_hourly() -> JobSpec {
    JobSpec::new(
        DEVICE_HEALTH_HOURLY,
        Grain::Hour,
        RAW_TABLES
            .iter()
            .map(|t| Input::Source(t.to_string()))
            .collect(),
    )
}

/// The daily job's definition: the 24 hourly partitions of each UTC day.
pub fn device_health_daily() -> JobSpec {
    JobSpec::new(
        DEVICE_HEALTH_DAILY,
        Grain::Day,
        vec![Input::Job(DEVICE_HEALTH_HOURLY.into())],
    )
}

/// The fleet job's definition: each day's device rollup, by cohort.
pub fn fleet_health_daily() -> JobSpec {
    JobSpec::new(
        FLEET_HEALTH_DAILY,
        Grain::Day,
        vec![Input::Job(DEVICE_HEALTH_DAILY.into())],
    )
}
