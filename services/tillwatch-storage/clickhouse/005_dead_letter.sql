-- Messages the gateway could not accept, with the reason and the raw bytes.
CREATE TABLE IF NOT EXISTS {database}.dead_letter
(
    received_at DateTime('UTC'),
    received_at_ms UInt64 {codec:Delta, ZSTD(1)},
    topic String,
    -- Empty when the topic did not name them.
    merchant_id {lc:String},
    device_id String,
    reason_code {lc:String},
    reason String,
    payload String
)
-- The same dead letter replayed from the spool or the lake carries the same
-- receive time, topic, reason and bytes: merges keep one. Several bad
-- readings of one message differ in reason or bytes and are all kept; a
-- message redelivered by the broker is received again, and both arrivals
-- are kept.
ENGINE = ReplacingMergeTree()
PARTITION BY toYYYYMMDD(received_at)
ORDER BY (received_at, topic, received_at_ms, reason_code, cityHash64(reason, payload));
