-- Connectivity readings: one row per sample, the lake's connectivity table.
CREATE TABLE IF NOT EXISTS {database}.connectivity
(
    device_id String,
    merchant_id {lc:String},
    -- Empty until the terminal has published its info message.
    store_id {lc:String},
    boot_id UInt64,
    seq UInt64,
    sampled_at DateTime('UTC'),
    sampled_at_ms UInt64 {codec:Delta, ZSTD(1)},
    received_at DateTime('UTC'),
    received_at_ms UInt64 {codec:Delta, ZSTD(1)},
    network_type {lc:String},
    rssi_dbm Int32,
    payment_host_latency_ms UInt32,
    disconnects UInt32,
    carrier_or_ssid {lc:String},
    INDEX merchant_idx merchant_id TYPE bloom_filter GRANULARITY 4, -- requires skip_index
    INDEX store_idx store_id TYPE bloom_filter GRANULARITY 4 -- requires skip_index
)
-- A reading redelivered or replayed is the same (device, time, boot, seq):
-- background merges keep one; queries use FINAL or the *_final views.
ENGINE = ReplacingMergeTree()
PARTITION BY toYYYYMMDD(sampled_at)
ORDER BY (device_id, sampled_at, boot_id, seq);

CREATE VIEW IF NOT EXISTS {database}.connectivity_final AS SELECT * FROM {database}.connectivity FINAL;
