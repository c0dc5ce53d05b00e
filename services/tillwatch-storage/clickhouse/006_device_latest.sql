-- The newest value of each signal per device, kept up to date by
-- materialized views on the raw tables (so reading it never scans history).
-- Read it through the device_latest view. A `*_at_ms` of 0 means no reading
-- of that kind has arrived yet.
CREATE TABLE IF NOT EXISTS {database}.device_latest_state
(
    device_id String,
    merchant_id AggregateFunction(argMax, String, UInt64),
    store_id AggregateFunction(argMax, String, UInt64),
    last_seen_ms AggregateFunction(max, UInt64),
    connectivity_at_ms AggregateFunction(max, UInt64),
    network_type AggregateFunction(argMax, String, UInt64),
    rssi_dbm AggregateFunction(argMax, Int32, UInt64),
    payment_host_latency_ms AggregateFunction(argMax, UInt32, UInt64),
    battery_at_ms AggregateFunction(max, UInt64),
    battery_level_pct AggregateFunction(argMax, UInt8, UInt64),
    battery_charging AggregateFunction(argMax, UInt8, UInt64),
    battery_temperature_celsius AggregateFunction(argMax, Float32, UInt64),
    app_at_ms AggregateFunction(max, UInt64),
    app_version AggregateFunction(argMax, String, UInt64),
    firmware_version AggregateFunction(argMax, String, UInt64),
    payment_at_ms AggregateFunction(max, UInt64),
    offline_queue_len AggregateFunction(argMax, UInt32, UInt64),
    offline_queue_oldest_age_s AggregateFunction(argMax, UInt32, UInt64),
    tamper_detected AggregateFunction(argMax, UInt8, UInt64)
)
ENGINE = AggregatingMergeTree()
ORDER BY device_id;

CREATE MATERIALIZED VIEW IF NOT EXISTS {database}.device_latest_from_connectivity
TO {database}.device_latest_state AS
SELECT
    device_id,
    argMaxState(CAST(merchant_id AS String), sampled_at_ms) AS merchant_id,
    argMaxStateIf(CAST(store_id AS String), sampled_at_ms, store_id != '') AS store_id,
    maxState(sampled_at_ms) AS last_seen_ms,
    maxState(sampled_at_ms) AS connectivity_at_ms,
    argMaxState(CAST(network_type AS String), sampled_at_ms) AS network_type,
    argMaxState(rssi_dbm, sampled_at_ms) AS rssi_dbm,
    argMaxState(payment_host_latency_ms, sampled_at_ms) AS payment_host_latency_ms,
    maxStateIf(toUInt64(0), 0) AS battery_at_ms,
    argMaxStateIf(toUInt8(0), toUInt64(0), 0) AS battery_level_pct,
    argMaxStateIf(toUInt8(0), toUInt64(0), 0) AS battery_charging,
    argMaxStateIf(toFloat32(0), toUInt64(0), 0) AS battery_temperature_celsius,
    maxStateIf(toUInt64(0), 0) AS app_at_ms,
    argMaxStateIf('', toUInt64(0), 0) AS app_version,
    argMaxStateIf('', toUInt64(0), 0) AS firmware_version,
    maxStateIf(toUInt64(0), 0) AS payment_at_ms,
    argMaxStateIf(toUInt32(0), toUInt64(0), 0) AS offline_queue_len,
    argMaxStateIf(toUInt32(0), toUInt64(0), 0) AS offline_queue_oldest_age_s,
    argMaxStateIf(toUInt8(0), toUInt64(0), 0) AS tamper_detected
FROM {database}.connectivity
GROUP BY device_id;

CREATE MATERIALIZED VIEW IF NOT EXISTS {database}.device_latest_from_battery
TO {database}.device_latest_state AS
SELECT
    device_id,
    argMaxState(CAST(merchant_id AS String), sampled_at_ms) AS merchant_id,
    argMaxStateIf(CAST(store_id AS String), sampled_at_ms, store_id != '') AS store_id,
    maxState(sampled_at_ms) AS last_seen_ms,
    maxStateIf(toUInt64(0), 0) AS connectivity_at_ms,
    argMaxStateIf('', toUInt64(0), 0) AS network_type,
    argMaxStateIf(toInt32(0), toUInt64(0), 0) AS rssi_dbm,
    argMaxStateIf(toUInt32(0), toUInt64(0), 0) AS payment_host_latency_ms,
    maxState(sampled_at_ms) AS battery_at_ms,
    argMaxState(level_pct, sampled_at_ms) AS battery_level_pct,
    argMaxState(charging, sampled_at_ms) AS battery_charging,
    argMaxState(temperature_celsius, sampled_at_ms) AS battery_temperature_celsius,
    maxStateIf(toUInt64(0), 0) AS app_at_ms,
    argMaxStateIf('', toUInt64(0), 0) AS app_version,
    argMaxStateIf('', toUInt64(0), 0) AS firmware_version,
    maxStateIf(toUInt64(0), 0) AS payment_at_ms,
    argMaxStateIf(toUInt32(0), toUInt64(0), 0) AS offline_queue_len,
    argMaxStateIf(toUInt32(0), toUInt64(0), 0) AS offline_queue_oldest_age_s,
    argMaxStateIf(toUInt8(0), toUInt64(0), 0) AS tamper_detected
FROM {database}.battery
GROUP BY device_id;

CREATE MATERIALIZED VIEW IF NOT EXISTS {database}.device_latest_from_app_performance
TO {database}.device_latest_state AS
SELECT
    device_id,
    argMaxState(CAST(merchant_id AS String), sampled_at_ms) AS merchant_id,
    argMaxStateIf(CAST(store_id AS String), sampled_at_ms, store_id != '') AS store_id,
    maxState(sampled_at_ms) AS last_seen_ms,
    maxStateIf(toUInt64(0), 0) AS connectivity_at_ms,
    argMaxStateIf('', toUInt64(0), 0) AS network_type,
    argMaxStateIf(toInt32(0), toUInt64(0), 0) AS rssi_dbm,
    argMaxStateIf(toUInt32(0), toUInt64(0), 0) AS payment_host_latency_ms,
    maxStateIf(toUInt64(0), 0) AS battery_at_ms,
    argMaxStateIf(toUInt8(0), toUInt64(0), 0) AS battery_level_pct,
    argMaxStateIf(toUInt8(0), toUInt64(0), 0) AS battery_charging,
    argMaxStateIf(toFloat32(0), toUInt64(0), 0) AS battery_temperature_celsius,
    maxState(sampled_at_ms) AS app_at_ms,
    argMaxState(CAST(app_version AS String), sampled_at_ms) AS app_version,
    argMaxState(CAST(firmware_version AS String), sampled_at_ms) AS firmware_version,
    maxStateIf(toUInt64(0), 0) AS payment_at_ms,
    argMaxStateIf(toUInt32(0), toUInt64(0), 0) AS offline_queue_len,
    argMaxStateIf(toUInt32(0), toUInt64(0), 0) AS offline_queue_oldest_age_s,
    argMaxStateIf(toUInt8(0), toUInt64(0), 0) AS tamper_detected
FROM {database}.app_performance
GROUP BY device_id;

CREATE MATERIALIZED VIEW IF NOT EXISTS {database}.device_latest_from_payment_health
TO {database}.device_latest_state AS
SELECT
    device_id,
    argMaxState(CAST(merchant_id AS String), sampled_at_ms) AS merchant_id,
    argMaxStateIf(CAST(store_id AS String), sampled_at_ms, store_id != '') AS store_id,
    maxState(sampled_at_ms) AS last_seen_ms,
    maxStateIf(toUInt64(0), 0) AS connectivity_at_ms,
    argMaxStateIf('', toUInt64(0), 0) AS network_type,
    argMaxStateIf(toInt32(0), toUInt64(0), 0) AS rssi_dbm,
    argMaxStateIf(toUInt32(0), toUInt64(0), 0) AS payment_host_latency_ms,
    maxStateIf(toUInt64(0), 0) AS battery_at_ms,
    argMaxStateIf(toUInt8(0), toUInt64(0), 0) AS battery_level_pct,
    argMaxStateIf(toUInt8(0), toUInt64(0), 0) AS battery_charging,
    argMaxStateIf(toFloat32(0), toUInt64(0), 0) AS battery_temperature_celsius,
    maxStateIf(toUInt64(0), 0) AS app_at_ms,
    argMaxStateIf('', toUInt64(0), 0) AS app_version,
    argMaxStateIf('', toUInt64(0), 0) AS firmware_version,
    maxState(sampled_at_ms) AS payment_at_ms,
    argMaxState(offline_queue_len, sampled_at_ms) AS offline_queue_len,
    argMaxState(offline_queue_oldest_age_s, sampled_at_ms) AS offline_queue_oldest_age_s,
    argMaxState(tamper_detected, sampled_at_ms) AS tamper_detected
FROM {database}.payment_health
GROUP BY device_id;

CREATE VIEW IF NOT EXISTS {database}.device_latest AS
SELECT
    device_id,
    argMaxMerge(merchant_id) AS merchant_id,
    argMaxMerge(store_id) AS store_id,
    maxMerge(last_seen_ms) AS last_seen_ms,
    maxMerge(connectivity_at_ms) AS connectivity_at_ms,
    argMaxMerge(network_type) AS network_type,
    argMaxMerge(rssi_dbm) AS rssi_dbm,
    argMaxMerge(payment_host_latency_ms) AS payment_host_latency_ms,
    maxMerge(battery_at_ms) AS battery_at_ms,
    argMaxMerge(battery_level_pct) AS battery_level_pct,
    argMaxMerge(battery_charging) AS battery_charging,
    argMaxMerge(battery_temperature_celsius) AS battery_temperature_celsius,
    maxMerge(app_at_ms) AS app_at_ms,
    argMaxMerge(app_version) AS app_version,
    argMaxMerge(firmware_version) AS firmware_version,
    maxMerge(payment_at_ms) AS payment_at_ms,
    argMaxMerge(offline_queue_len) AS offline_queue_len,
    argMaxMerge(offline_queue_oldest_age_s) AS offline_queue_oldest_age_s,
    argMaxMerge(tamper_detected) AS tamper_detected
FROM {database}.device_latest_state
GROUP BY device_id;
