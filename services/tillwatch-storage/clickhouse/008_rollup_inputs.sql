-- What the rollups read beside the raw tables (owner: health), filled by
-- each run from the metadata store, one partition per interval like the
-- rollup tables (hours or days since 1970), cleared before and after the
-- run: minutes online per terminal and hour (from the connectivity state
-- history), and for a store-local day each terminal's time zone and model
-- and the hours of each zone's day (`rollups/src/side.rs`). Minutes online
-- and the readings expected in them become columns of the hourly and daily
-- rollups; the model a column of the daily and fleet rollups (a cohort).

CREATE TABLE IF NOT EXISTS {database}.rollup_minutes_online
(
    hour DateTime('UTC'),
    device_id String,
    minutes_online Float64,
    readings_expected Nullable(Float64)
)
ENGINE = MergeTree()
PARTITION BY intDiv(toUInt32(hour), 3600)
ORDER BY (device_id);

CREATE TABLE IF NOT EXISTS {database}.rollup_devices
(
    day DateTime('UTC'),
    device_id String,
    zone String,
    model Nullable(String)
)
ENGINE = MergeTree()
PARTITION BY intDiv(toUInt32(day), 86400)
ORDER BY (device_id);

CREATE TABLE IF NOT EXISTS {database}.rollup_zone_hours
(
    day DateTime('UTC'),
    zone String,
    hour DateTime('UTC')
)
ENGINE = MergeTree()
PARTITION BY intDiv(toUInt32(day), 86400)
ORDER BY (zone, hour);

ALTER TABLE {database}.device_health_hourly ADD COLUMN minutes_online Nullable(Float64), ADD COLUMN readings_expected Nullable(Float64);

ALTER TABLE {database}.device_health_hourly_staging ADD COLUMN minutes_online Nullable(Float64), ADD COLUMN readings_expected Nullable(Float64);

ALTER TABLE {database}.device_health_daily ADD COLUMN minutes_online Nullable(Float64), ADD COLUMN readings_expected Nullable(Float64), ADD COLUMN model Nullable(String);

ALTER TABLE {database}.device_health_daily_staging ADD COLUMN minutes_online Nullable(Float64), ADD COLUMN readings_expected Nullable(Float64), ADD COLUMN model Nullable(String);

ALTER TABLE {database}.fleet_health_daily ADD COLUMN model Nullable(String);

ALTER TABLE {database}.fleet_health_daily_staging ADD COLUMN model Nullable(String)
