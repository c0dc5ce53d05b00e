-- device_health_daily on ClickHouse: the hours of each terminal's local
-- day, from the hourly rows around the UTC day ({from_s} to {to_s}), the
-- run's `rollup_devices` (terminal → zone, '' when it has none, and model) and
-- `rollup_zone_hours` (the hours of each zone's day); the same figures as
-- the DataFusion statement beside it. Aggregates skip
-- NULLs, so an hour without a kind of reading does not count for it.
-- INSERT … SELECT maps columns by position. ClickHouse aliases are
-- query-wide, so a total that another figure reads from its hourly column
-- is named `all_…` here, not after that column. A terminal that moved
-- during the day has a row for each store (and merchant) it was in, with
-- the hours it spent there.
SELECT
    toDateTime({start_s}, 'UTC') AS day,
    device_id,
    merchant_id,
    store_id,
    argMax(firmware_version, (isNotNull(firmware_version), hour)) AS firmware_version,
    argMax(app_version, (isNotNull(app_version), hour)) AS app_version,
    min(battery_min_pct) AS battery_min_pct,
    sum(battery_avg_pct * battery_readings)
        / sum(if(isNull(battery_avg_pct), NULL, battery_readings)) AS battery_avg_pct,
    argMax(battery_last_pct, (isNotNull(battery_last_pct), hour)) AS battery_last_pct,
    avg(battery_drain_pct) AS battery_drain_pct_per_hour,
    sum(charging_minutes) AS charging_minutes,
    max(temperature_max_celsius) AS temperature_max_celsius,
    min(rssi_min_dbm) AS rssi_min_dbm,
    quantileTDigestWeightedIf(0.5)(rssi_median_dbm, toUInt64(connectivity_readings), connectivity_readings > 0) AS rssi_median_dbm,
    quantileTDigestWeightedIf(0.5)(host_latency_p50_ms, toUInt64(connectivity_readings), connectivity_readings > 0) AS host_latency_p50_ms,
    quantileTDigestWeightedIf(0.95)(host_latency_p95_ms, toUInt64(connectivity_readings), connectivity_readings > 0) AS host_latency_p95_ms,
    sum(disconnects) AS disconnects,
    sum(transactions) AS all_transactions,
    quantileTDigestWeightedIf(0.5)(txn_latency_p50_ms, toUInt64(transactions), transactions > 0) AS txn_latency_p50_ms,
    quantileTDigestWeightedIf(0.95)(txn_latency_p95_ms, toUInt64(transactions), transactions > 0) AS txn_latency_p95_ms,
    quantileTDigestWeightedIf(0.99)(txn_latency_p99_ms, toUInt64(transactions), transactions > 0) AS txn_latency_p99_ms,
    sum(crashes) AS crashes,
    sum(hangs) AS hangs,
    max(offline_queue_max) AS offline_queue_max,
    max(offline_queue_oldest_max_s) AS offline_queue_oldest_max_s,
    sum(battery_readings) AS all_battery_readings,
    sum(connectivity_readings) AS all_connectivity_readings,
    sum(app_readings) AS app_readings,
    sum(payment_readings) AS payment_readings,
    toInt64(count()) AS hours_reported,
    min(battery_health_min_pct) AS battery_health_min_pct,
    sum(minutes_online) AS minutes_online,
    sum(readings_expected) AS readings_expected,
    max(model) AS model
FROM
(
    SELECT *
    FROM
    (
        SELECT * FROM {database}.device_health_hourly
        WHERE hour >= toDateTime({from_s}, 'UTC') AND hour < toDateTime({to_s}, 'UTC')
    )
    ANY LEFT JOIN
    (
        SELECT device_id, zone, model FROM {database}.rollup_devices
        WHERE day = toDateTime({start_s}, 'UTC')
    ) USING (device_id)
    WHERE (zone, hour) IN
    (
        SELECT zone, hour FROM {database}.rollup_zone_hours
        WHERE day = toDateTime({start_s}, 'UTC')
    )
)
GROUP BY device_id, merchant_id, store_id
