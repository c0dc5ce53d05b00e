-- One row per terminal that reported in the hour.
--
-- - Battery: lowest, mean and last level; the drop over the hour when it
--   never charged (the drain); minutes charging (the share of battery
--   readings taken while charging, times 60); hottest temperature; lowest
--   battery health (capacity left, last column).
-- - Connectivity: weakest and median RSSI; payment-host round trip p50 and
--   p95; link drops.
-- - App: transactions; transaction time p50/p95/p99, estimated from each
--   reading's mean weighted by its transactions; crashes and hangs.
-- - Payments: the longest offline queue and its oldest payment's age.
-- - Completeness: readings received per kind.
-- - Minutes online in the hour, from the connectivity state history, and
--   the readings of each kind expected in that time at the terminal's
--   reporting interval (`online`, from the metadata store; the last two
--   columns; NULL when the terminal has no recorded state or interval).
-- - Merchant and store: the terminal's, for most of the hour, from the
--   history of its info messages the registry keeps (`attribution`, from
--   the metadata store); a terminal that never sent one keeps what the
--   gateway wrote beside its readings.
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
        max(temperature_celsius) AS temperature_max_celsius,
        min(health_pct) AS battery_health_min_pct
    FROM battery GROUP BY device_id
), c AS (
    SELECT device_id,
        count(*) AS connectivity_readings,
        min(rssi_dbm) AS rssi_min_dbm,
        weighted_quantile(CAST(rssi_dbm AS DOUBLE), 1.0, 0.5) AS rssi_median_dbm,
        weighted_quantile(CAST(payment_host_latency_ms AS DOUBLE), 1.0, 0.5) AS host_latency_p50_ms,
        weighted_quantile(CAST(payment_host_latency_ms AS DOUBLE), 1.0, 0.95) AS host_latency_p95_ms,
        sum(CAST(disconnects AS BIGINT)) AS disconnects
    FROM connectivity GROUP BY device_id
), a AS (
    SELECT device_id,
        count(*) AS app_readings,
        sum(CAST(transactions AS BIGINT)) AS transactions,
        weighted_quantile(CAST(transaction_latency_avg_ms AS DOUBLE), CAST(transactions AS DOUBLE), 0.5) AS txn_latency_p50_ms,
        weighted_quantile(CAST(transaction_latency_avg_ms AS DOUBLE), CAST(transactions AS DOUBLE), 0.95) AS txn_latency_p95_ms,
        weighted_quantile(CAST(transaction_latency_avg_ms AS DOUBLE), CAST(transactions AS DOUBLE), 0.99) AS txn_latency_p99_ms,
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
    d.device_id,
    CASE WHEN at.device_id IS NULL THEN d.merchant_id ELSE at.merchant_id END AS merchant_id,
    CASE WHEN at.device_id IS NULL THEN d.store_id ELSE at.store_id END AS store_id,
    a.firmware_version, a.app_version,
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
    coalesce(p.payment_readings, 0) AS payment_readings,
    b.battery_health_min_pct,
    o.minutes_online,
    o.readings_expected
FROM d
LEFT JOIN b ON b.device_id = d.device_id
LEFT JOIN c ON c.device_id = d.device_id
LEFT JOIN a ON a.device_id = d.device_id
LEFT JOIN p ON p.device_id = d.device_id
LEFT JOIN online o ON o.device_id = d.device_id
LEFT JOIN attribution at ON at.device_id = d.device_id
ORDER BY d.device_id
