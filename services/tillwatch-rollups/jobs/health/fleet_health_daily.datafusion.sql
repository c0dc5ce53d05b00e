-- One row per (merchant, store, firmware version, app version, model) per
-- day (the model is the last column),
-- from that day's `device_health_daily` (registered as `daily`): cohorts
-- side by side. Crash rate is crashes and hangs per 1,000 transactions;
-- latencies are weighted by the transactions (or readings) behind them.
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
    sum(battery_readings + connectivity_readings + app_readings + payment_readings) AS readings,
    model
FROM daily
GROUP BY merchant_id, store_id, firmware_version, app_version, model
ORDER BY merchant_id, store_id, firmware_version, app_version, model
