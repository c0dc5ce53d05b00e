-- Payment-app performance readings: one row per sample, the lake's app_performance table.
CREATE TABLE IF NOT EXISTS {database}.app_performance
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
    app_version {lc:String},
    firmware_version {lc:String},
    transactions UInt32,
    transaction_latency_avg_ms UInt32,
    transaction_latency_max_ms UInt32,
    startup_ms Nullable(UInt32),
    crashes UInt32,
    hangs UInt32,
    memory_used_kib UInt32,
    cpu_pct Float32,
    INDEX merchant_idx merchant_id TYPE bloom_filter GRANULARITY 4, -- requires skip_index
    INDEX store_idx store_id TYPE bloom_filter GRANULARITY 4 -- requires skip_index
)
-- A reading redelivered or replayed is the same (device, time, boot, seq):
-- background merges keep one; queries use FINAL or the *_final views.
ENGINE = ReplacingMergeTree()
PARTITION BY toYYYYMMDD(sampled_at)
ORDER BY (device_id, sampled_at, boot_id, seq);

CREATE VIEW IF NOT EXISTS {database}.app_performance_final AS SELECT * FROM {database}.app_performance FINAL;
