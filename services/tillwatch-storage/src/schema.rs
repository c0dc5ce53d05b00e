use std::sync::{Arc, OnceLock};

use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use tillwatch_domain::Kind;

/// A dataset of the lake: one per reading kind, plus dead letters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Table {
    Reading(Kind),
    DeadLetter,
}

impl Table {
    pub const ALL: [Table; 5] = [
        Table::Reading(Kind::Connectivity),
        Table::Reading(Kind::Battery),
        Table::Reading(Kind::AppPerformance),
        Table::Reading(Kind::PaymentHealth),
        Table::DeadLetter,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Table::Reading(kind) => kind.as_str(),
            Table::DeadLetter => "dead_letter",
        }
    }
}

fn ts() -> DataType {
    DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into()))
}

fn common() -> Vec<Field> {
    vec![
        Field::new("device_id", DataType::Utf8, false),
        Field::new("merchant_id", DataType::Utf8, false),
        // Known once the device has published its info message.
        Field::new("store_id", DataType::Utf8, true),
        Field::new("boot_id", DataType::UInt64, false),
        Field::new("seq", DataType::UInt64, false),
        Field::new("sampled_at", ts(), false),
        Field::new("received_at", ts(), false),
    ]
}

/// Index of `device_id`, `boot_id` and `seq` in every reading table.
pub(crate) const KEY_COLUMNS: [&str; 3] = ["device_id", "boot_id", "seq"];

fn build(table: Table) -> Schema {
    use DataType::*;
    let specific = match table {
        Table::Reading(Kind::Connectivity) => vec![
            Field::new("network_type", Utf8, false),
            Field::new("rssi_dbm", Int32, false),
            Field::new("payment_host_latency_ms", UInt32, false),
            Field::new("disconnects", UInt32, false),
            Field::new("carrier_or_ssid", Utf8, false),
        ],
        Table::Reading(Kind::Battery) => vec![
            Field::new("level_pct", UInt8, false),
            Field::new("charging", Boolean, false),
            Field::new("temperature_celsius", Float32, false),
            Field::new("voltage_mv", UInt32, false),
            Field::new("health_pct", UInt8, false),
            Field::new("cycle_count", UInt32, false),
        ],
        Table::Reading(Kind::AppPerformance) => vec![
            Field::new("app_version", Utf8, false),
            Field::new("firmware_version", Utf8, false),
            Field::new("transactions", UInt32, false),
            Field::new("transaction_latency_avg_ms", UInt32, false),
            Field::new("transaction_latency_max_ms", UInt32, false),
            Field::new("startup_ms", UInt32, true),
            Field::new("crashes", UInt32, false),
            Field::new("hangs", UInt32, false),
            Field::new("memory_used_kib", UInt32, false),
            Field::new("cpu_pct", Float32, false),
        ],
        Table::Reading(Kind::PaymentHealth) => vec![
            Field::new("offline_queue_len", UInt32, false),
            Field::new("offline_queue_oldest_age_s", UInt32, false),
            Field::new("tamper_detected", Boolean, false),
            Field::new("printer_paper_low", Boolean, false),
        ],
        Table::DeadLetter => {
            return Schema::new(vec![
                Field::new("received_at", ts(), false),
                Field::new("topic", Utf8, false),
                Field::new("merchant_id", Utf8, true),
                Field::new("device_id", Utf8, true),
                Field::new("reason_code", Utf8, false),
                Field::new("reason", Utf8, false),
                Field::new("payload", Binary, false),
            ]);
        }
    };
    let mut fields = common();
    fields.extend(specific);
    Schema::new(fields)
}

/// The Arrow schema of a table; the Parquet files carry the same.
pub fn schema(table: Table) -> SchemaRef {
    static SCHEMAS: OnceLock<Vec<SchemaRef>> = OnceLock::new();
    let all = SCHEMAS.get_or_init(|| Table::ALL.iter().map(|t| Arc::new(build(*t))).collect());
    let index = Table::ALL
        .iter()
        .position(|t| *t == table)
        .expect("Table::ALL lists every table");
    all[index].clone()
}
