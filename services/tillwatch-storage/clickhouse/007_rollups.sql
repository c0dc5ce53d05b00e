-- The rollup tables (owner: health), one per job, written by the scheduler.
-- Each partition is one interval of its job (an hour or a UTC day, as a
-- number of hours or days since 1970), so a re-run swaps the interval whole:
-- the run fills the same partition of `<job>_staging`, then
-- `ALTER TABLE <job> REPLACE PARTITION … FROM <job>_staging`. Readers see
-- the old rows or the new, never both and never half.
-- The columns are those of the lake's `lake/<job>/` Parquet files.

CREATE TABLE IF NOT EXISTS {database}.device_health_hourly
(
    hour DateTime('UTC'),
    device_id String,
    merchant_id {lc:String},
    store_id Nullable(String),
    firmware_version Nullable(String),
    app_version Nullable(String),
    battery_min_pct Nullable(UInt8),
    battery_avg_pct Nullable(Float64),
    battery_last_pct Nullable(UInt8),
    battery_drain_pct Nullable(Float64),
    charging_minutes Nullable(Float64),
    temperature_max_celsius Nullable(Float32),
    rssi_min_dbm Nullable(Int32),
    rssi_median_dbm Nullable(Float64),
    host_latency_p50_ms Nullable(Float64),
    host_latency_p95_ms Nullable(Float64),
    disconnects Int64,
    transactions Int64,
    txn_latency_p50_ms Nullable(Float64),
    txn_latency_p95_ms Nullable(Float64),
    txn_latency_p99_ms Nullable(Float64),
    crashes Int64,
    hangs Int64,
    offline_queue_max Nullable(UInt32),
    offline_queue_oldest_max_s Nullable(UInt32),
    battery_readings Int64,
    connectivity_readings Int64,
    app_readings Int64,
    payment_readings Int64,
    battery_health_min_pct Nullable(UInt8)
)
ENGINE = MergeTree()
PARTITION BY intDiv(toUInt32(hour), 3600)
ORDER BY (device_id);

CREATE TABLE IF NOT EXISTS {database}.device_health_hourly_staging AS {database}.device_health_hourly;

CREATE TABLE IF NOT EXISTS {database}.device_health_daily
(
    day DateTime('UTC'),
    device_id String,
    merchant_id {lc:String},
    store_id Nullable(String),
    firmware_version Nullable(String),
    app_version Nullable(String),
    battery_min_pct Nullable(UInt8),
    battery_avg_pct Nullable(Float64),
    battery_last_pct Nullable(UInt8),
    battery_drain_pct_per_hour Nullable(Float64),
    charging_minutes Nullable(Float64),
    temperature_max_celsius Nullable(Float32),
    rssi_min_dbm Nullable(Int32),
    rssi_median_dbm Nullable(Float64),
    host_latency_p50_ms Nullable(Float64),
    host_latency_p95_ms Nullable(Float64),
    disconnects Int64,
    transactions Int64,
    txn_latency_p50_ms Nullable(Float64),
    txn_latency_p95_ms Nullable(Float64),
    txn_latency_p99_ms Nullable(Float64),
    crashes Int64,
    hangs Int64,
    offline_queue_max Nullable(UInt32),
    offline_queue_oldest_max_s Nullable(UInt32),
    battery_readings Int64,
    connectivity_readings Int64,
    app_readings Int64,
    payment_readings Int64,
    hours_reported Int64,
    battery_health_min_pct Nullable(UInt8)
)
ENGINE = MergeTree()
PARTITION BY intDiv(toUInt32(day), 86400)
ORDER BY (device_id);

CREATE TABLE IF NOT EXISTS {database}.device_health_daily_staging AS {database}.device_health_daily;

CREATE TABLE IF NOT EXISTS {database}.fleet_health_daily
(
    day DateTime('UTC'),
    merchant_id {lc:String},
    store_id Nullable(String),
    firmware_version Nullable(String),
    app_version Nullable(String),
    devices Int64,
    devices_with_crashes Int64,
    transactions Int64,
    crashes Int64,
    hangs Int64,
    crashes_per_1000_transactions Nullable(Float64),
    txn_latency_p95_ms Nullable(Float64),
    host_latency_p95_ms Nullable(Float64),
    battery_drain_pct_per_hour Nullable(Float64),
    battery_min_pct Nullable(UInt8),
    disconnects Int64,
    readings Int64
)
ENGINE = MergeTree()
PARTITION BY intDiv(toUInt32(day), 86400)
ORDER BY (merchant_id);

CREATE TABLE IF NOT EXISTS {database}.fleet_health_daily_staging AS {database}.fleet_health_daily
;

-- The latest merchant directory (owner: platform), replaced whole by each
-- import (`REPLACE PARTITION tuple()`); the lake keeps every snapshot.
CREATE TABLE IF NOT EXISTS {database}.merchant_directory
(
    hour DateTime('UTC'),
    merchant_id String,
    store_id String,
    merchant_name Nullable(String),
    store_name Nullable(String),
    time_zone Nullable(String),
    hours Nullable(String)
)
ENGINE = MergeTree()
ORDER BY (merchant_id, store_id);

CREATE TABLE IF NOT EXISTS {database}.merchant_directory_staging AS {database}.merchant_directory
