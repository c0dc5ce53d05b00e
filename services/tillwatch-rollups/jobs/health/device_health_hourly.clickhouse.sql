-- device_health_hourly on ClickHouse: the same rows as the DataFusion
-- statement beside it. ClickHouse 18.16 allows one JOIN per SELECT, so the
-- four raw tables are stacked (UNION ALL) with a kind `k` and generic value
-- columns, and each figure aggregates its own kind (-If combinators). FINAL
-- keeps one row per reading however often it was delivered. Weighted
-- quantiles skip rows of weight 0 (they count for nothing, and 18.16's
-- t-digest can return nan when one is the largest value). Minutes online
-- come from `rollup_minutes_online` (k = 5, filled by the run from the
-- metadata store's state history); a terminal without readings in the
-- hour gets no row, as on DataFusion (HAVING). Merchant and store come
-- from `rollup_attribution` (k = 6, the terminal's identity for most of the
-- hour, from the metadata store), else from the readings (a terminal that
-- never sent its info).
SELECT
    toDateTime({start_s}, 'UTC') AS hour,
    device_id,
    if(countIf(k = 6) > 0, anyIf(merchant_id, k = 6), maxIf(merchant_id, k < 5)) AS merchant_id,
    if(countIf(k = 6) > 0, nullIf(anyIf(store_id, k = 6), ''), nullIf(maxIf(store_id, k < 5), '')) AS store_id,
    if(countIf(k = 3) = 0, NULL, argMaxIf(s1, (t, seq), k = 3)) AS firmware_version,
    if(countIf(k = 3) = 0, NULL, argMaxIf(s2, (t, seq), k = 3)) AS app_version,
    if(countIf(k = 1) = 0, NULL, toUInt8(minIf(x1, k = 1))) AS battery_min_pct,
    if(countIf(k = 1) = 0, NULL, avgIf(x1, k = 1)) AS battery_avg_pct,
    if(countIf(k = 1) = 0, NULL, toUInt8(argMaxIf(x1, (t, seq), k = 1))) AS battery_last_pct,
    if(countIf(k = 1) = 0 OR maxIf(x2, k = 1) > 0, NULL,
        argMinIf(x1, (t, seq), k = 1) - argMaxIf(x1, (t, seq), k = 1)) AS battery_drain_pct,
    if(countIf(k = 1) = 0, NULL, 60 * avgIf(x2, k = 1)) AS charging_minutes,
    if(countIf(k = 1) = 0, NULL, toFloat32(maxIf(x3, k = 1))) AS temperature_max_celsius,
    if(countIf(k = 2) = 0, NULL, toInt32(minIf(x1, k = 2))) AS rssi_min_dbm,
    if(countIf(k = 2) = 0, NULL, quantileTDigestIf(0.5)(x1, k = 2)) AS rssi_median_dbm,
    if(countIf(k = 2) = 0, NULL, quantileTDigestIf(0.5)(x2, k = 2)) AS host_latency_p50_ms,
    if(countIf(k = 2) = 0, NULL, quantileTDigestIf(0.95)(x2, k = 2)) AS host_latency_p95_ms,
    toInt64(sumIf(x3, k = 2)) AS disconnects,
    toInt64(sumIf(x1, k = 3)) AS transactions,
    if(sumIf(x1, k = 3) = 0, NULL, quantileTDigestWeightedIf(0.5)(x2, toUInt64(x1), k = 3 AND x1 > 0)) AS txn_latency_p50_ms,
    if(sumIf(x1, k = 3) = 0, NULL, quantileTDigestWeightedIf(0.95)(x2, toUInt64(x1), k = 3 AND x1 > 0)) AS txn_latency_p95_ms,
    if(sumIf(x1, k = 3) = 0, NULL, quantileTDigestWeightedIf(0.99)(x2, toUInt64(x1), k = 3 AND x1 > 0)) AS txn_latency_p99_ms,
    toInt64(sumIf(x3, k = 3)) AS crashes,
    toInt64(sumIf(x4, k = 3)) AS hangs,
    if(countIf(k = 4) = 0, NULL, toUInt32(maxIf(x1, k = 4))) AS offline_queue_max,
    if(countIf(k = 4) = 0, NULL, toUInt32(maxIf(x2, k = 4))) AS offline_queue_oldest_max_s,
    toInt64(countIf(k = 1)) AS battery_readings,
    toInt64(countIf(k = 2)) AS connectivity_readings,
    toInt64(countIf(k = 3)) AS app_readings,
    toInt64(countIf(k = 4)) AS payment_readings,
    if(countIf(k = 1) = 0, NULL, toUInt8(minIf(x4, k = 1))) AS battery_health_min_pct,
    if(countIf(k = 5) = 0, NULL, maxIf(x1, k = 5)) AS minutes_online,
    if(countIf(k = 5 AND x2 >= 0) = 0, NULL, maxIf(x2, k = 5 AND x2 >= 0)) AS readings_expected
FROM
(
    SELECT 1 AS k, device_id, merchant_id, store_id, sampled_at_ms AS t, seq,
        toFloat64(level_pct) AS x1, toFloat64(charging) AS x2,
        toFloat64(temperature_celsius) AS x3, toFloat64(health_pct) AS x4, '' AS s1, '' AS s2
    FROM {database}.battery FINAL
    WHERE sampled_at >= toDateTime({start_s}, 'UTC') AND sampled_at < toDateTime({end_s}, 'UTC')
    UNION ALL
    SELECT 2 AS k, device_id, merchant_id, store_id, sampled_at_ms AS t, seq,
        toFloat64(rssi_dbm) AS x1, toFloat64(payment_host_latency_ms) AS x2,
        toFloat64(disconnects) AS x3, toFloat64(0) AS x4, '' AS s1, '' AS s2
    FROM {database}.connectivity FINAL
    WHERE sampled_at >= toDateTime({start_s}, 'UTC') AND sampled_at < toDateTime({end_s}, 'UTC')
    UNION ALL
    SELECT 3 AS k, device_id, merchant_id, store_id, sampled_at_ms AS t, seq,
        toFloat64(transactions) AS x1, toFloat64(transaction_latency_avg_ms) AS x2,
        toFloat64(crashes) AS x3, toFloat64(hangs) AS x4, firmware_version AS s1, app_version AS s2
    FROM {database}.app_performance FINAL
    WHERE sampled_at >= toDateTime({start_s}, 'UTC') AND sampled_at < toDateTime({end_s}, 'UTC')
    UNION ALL
    SELECT 4 AS k, device_id, merchant_id, store_id, sampled_at_ms AS t, seq,
        toFloat64(offline_queue_len) AS x1, toFloat64(offline_queue_oldest_age_s) AS x2,
        toFloat64(0) AS x3, toFloat64(0) AS x4, '' AS s1, '' AS s2
    FROM {database}.payment_health FINAL
    WHERE sampled_at >= toDateTime({start_s}, 'UTC') AND sampled_at < toDateTime({end_s}, 'UTC')
    UNION ALL
    SELECT 5 AS k, device_id, '' AS merchant_id, '' AS store_id, toUInt64(0) AS t, toUInt64(0) AS seq,
        minutes_online AS x1, ifNull(readings_expected, -1) AS x2,
        toFloat64(0) AS x3, toFloat64(0) AS x4, '' AS s1, '' AS s2
    FROM {database}.rollup_minutes_online
    WHERE hour = toDateTime({start_s}, 'UTC')
    UNION ALL
    SELECT 6 AS k, device_id, merchant_id, ifNull(store_id, '') AS store_id, toUInt64(0) AS t, toUInt64(0) AS seq,
        toFloat64(0) AS x1, toFloat64(0) AS x2,
        toFloat64(0) AS x3, toFloat64(0) AS x4, '' AS s1, '' AS s2
    FROM {database}.rollup_attribution
    WHERE hour = toDateTime({start_s}, 'UTC')
)
GROUP BY device_id
HAVING countIf(k < 5) > 0
