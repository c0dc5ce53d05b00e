-- fleet_health_daily on ClickHouse: the day's device rollup by merchant,
-- store, firmware/app cohort and model; the same figures as the DataFusion
-- statement beside it. Columns map by position; totals that other figures
-- read from their device column are named `all_…` (aliases are query-wide).
SELECT
    toDateTime({start_s}, 'UTC') AS day,
    merchant_id, store_id, firmware_version, app_version,
    toInt64(count()) AS devices,
    toInt64(countIf(crashes + hangs > 0)) AS devices_with_crashes,
    sum(transactions) AS all_transactions,
    sum(crashes) AS all_crashes,
    sum(hangs) AS all_hangs,
    1000 * sum(crashes + hangs) / nullIf(sum(transactions), 0) AS crashes_per_1000_transactions,
    quantileTDigestWeightedIf(0.95)(txn_latency_p95_ms, toUInt64(transactions), transactions > 0) AS txn_latency_p95_ms,
    quantileTDigestWeightedIf(0.95)(host_latency_p95_ms, toUInt64(connectivity_readings), connectivity_readings > 0) AS host_latency_p95_ms,
    avg(battery_drain_pct_per_hour) AS battery_drain_pct_per_hour,
    min(battery_min_pct) AS battery_min_pct,
    sum(disconnects) AS disconnects,
    sum(battery_readings + connectivity_readings + app_readings + payment_readings) AS readings,
    model
FROM {database}.device_health_daily
WHERE day = toDateTime({start_s}, 'UTC')
GROUP BY merchant_id, store_id, firmware_version, app_version, model
