-- Which merchant and store each terminal belongs to for an hour of the
-- hourly rollup (owner: health), from the history of its identity the
-- metadata store keeps (`rollups/src/side.rs`, `hour_attribution`): filled
-- by each run of `device_health_hourly`, one partition per hour like
-- `rollup_minutes_online`, cleared before and after the run. Terminals that
-- never sent an info message have no row; the rollup keeps what the gateway
-- wrote beside their readings.

CREATE TABLE IF NOT EXISTS {database}.rollup_attribution
(
    hour DateTime('UTC'),
    device_id String,
    merchant_id String,
    store_id Nullable(String)
)
ENGINE = MergeTree()
PARTITION BY intDiv(toUInt32(hour), 3600)
ORDER BY (device_id)
