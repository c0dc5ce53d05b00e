-- Per terminal and hour: its transactions (from the health rollup) beside
-- the longest offline queue its payment readings showed.
WITH q AS (
    SELECT device_id, max(offline_queue_len) AS longest_queue, count(*) AS payment_readings
    FROM payment_health
    GROUP BY device_id
)
SELECT
    to_timestamp_millis({start_ms}) AS hour,
    h.device_id,
    h.store_id,
    h.transactions,
    q.longest_queue,
    q.payment_readings
FROM device_health_hourly h
JOIN q ON q.device_id = h.device_id
