-- offline_risk_hourly on ClickHouse (when the rollups run there): the same
-- rows as the DataFusion statement beside it. Each input is read from
-- {database} for the partition's hour ({start_s} to {end_s}, seconds);
-- the raw table with FINAL, so a reading delivered twice counts once.
SELECT
    toDateTime({start_s}, 'UTC') AS hour,
    device_id,
    store_id,
    transactions,
    longest_queue,
    payment_readings
FROM
(
    SELECT device_id, store_id, transactions
    FROM {database}.device_health_hourly
    WHERE hour = toDateTime({start_s}, 'UTC')
)
ALL INNER JOIN
(
    SELECT device_id, max(offline_queue_len) AS longest_queue, count() AS payment_readings
    FROM {database}.payment_health FINAL
    WHERE sampled_at >= toDateTime({start_s}, 'UTC') AND sampled_at < toDateTime({end_s}, 'UTC')
    GROUP BY device_id
) USING device_id
