-- One row per terminal per day: the hours of the terminal's local day
-- (`hourly` holds the hourly partitions around the UTC day; `devices` maps
-- a terminal to its time zone, '' without one, and its model, and
-- `zone_hours` lists the hours of each zone's day: see src/side.rs). Minima, maxima, sums and counts are exact;
-- means are weighted by the readings behind each hour; the last battery
-- level is the latest hour's; daily quantiles are estimated from the
-- hourly ones, weighted by the readings (or transactions) behind each. A
-- terminal that moved during the day has a row for each store (and
-- merchant) it was in, with the hours it spent there.
WITH h AS (
    SELECT hourly.*, z.model AS model
    FROM hourly
    LEFT JOIN devices z ON z.device_id = hourly.device_id
    JOIN zone_hours zh ON zh.zone = coalesce(z.zone, '') AND zh.hour = hourly.hour
)
SELECT
    to_timestamp_millis({start_ms}) AS day,
    device_id,
    merchant_id,
    store_id,
    last_value(firmware_version ORDER BY CASE WHEN firmware_version IS NULL THEN 0 ELSE 1 END, hour) AS firmware_version,
    last_value(app_version ORDER BY CASE WHEN app_version IS NULL THEN 0 ELSE 1 END, hour) AS app_version,
    min(battery_min_pct) AS battery_min_pct,
    sum(battery_avg_pct * battery_readings) / sum(CASE WHEN battery_avg_pct IS NULL THEN NULL ELSE battery_readings END) AS battery_avg_pct,
    last_value(battery_last_pct ORDER BY CASE WHEN battery_last_pct IS NULL THEN 0 ELSE 1 END, hour) AS battery_last_pct,
    avg(battery_drain_pct) AS battery_drain_pct_per_hour,
    sum(charging_minutes) AS charging_minutes,
    max(temperature_max_celsius) AS temperature_max_celsius,
    min(rssi_min_dbm) AS rssi_min_dbm,
    weighted_quantile(rssi_median_dbm, CAST(connectivity_readings AS DOUBLE), 0.5) AS rssi_median_dbm,
    weighted_quantile(host_latency_p50_ms, CAST(connectivity_readings AS DOUBLE), 0.5) AS host_latency_p50_ms,
    weighted_quantile(host_latency_p95_ms, CAST(connectivity_readings AS DOUBLE), 0.95) AS host_latency_p95_ms,
    sum(disconnects) AS disconnects,
    sum(transactions) AS transactions,
    weighted_quantile(txn_latency_p50_ms, CAST(transactions AS DOUBLE), 0.5) AS txn_latency_p50_ms,
    weighted_quantile(txn_latency_p95_ms, CAST(transactions AS DOUBLE), 0.95) AS txn_latency_p95_ms,
    weighted_quantile(txn_latency_p99_ms, CAST(transactions AS DOUBLE), 0.99) AS txn_latency_p99_ms,
    sum(crashes) AS crashes,
    sum(hangs) AS hangs,
    max(offline_queue_max) AS offline_queue_max,
    max(offline_queue_oldest_max_s) AS offline_queue_oldest_max_s,
    sum(battery_readings) AS battery_readings,
    sum(connectivity_readings) AS connectivity_readings,
    sum(app_readings) AS app_readings,
    sum(payment_readings) AS payment_readings,
    count(*) AS hours_reported,
    min(battery_health_min_pct) AS battery_health_min_pct,
    sum(minutes_online) AS minutes_online,
    sum(readings_expected) AS readings_expected,
    max(model) AS model
FROM h
GROUP BY device_id, merchant_id, store_id
ORDER BY device_id, store_id
