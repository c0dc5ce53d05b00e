//! Rows on their way into the lake, held as Arrow builders per
//! (table, hour) until the next flush.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{
    ArrayRef, BinaryBuilder, BooleanBuilder, Float32Builder, Int32Builder, StringBuilder,
    TimestampMillisecondBuilder, UInt8Builder, UInt32Builder, UInt64Builder,
};
use arrow::record_batch::RecordBatch;
use tillwatch_domain::{HourPartition, Kind, MerchantId, Reading, Signal, StoreId, UtcMillis};

use crate::schema::{Table, schema};

/// A reading with what the gateway knows about where it came from.
pub struct StoredReading<'a> {
    pub reading: &'a Reading,
    pub merchant_id: &'a MerchantId,
    pub store_id: Option<&'a StoreId>,
    pub received_at: UtcMillis,
}

pub use tillwatch_domain::DeadLetter;

/// The rows of one table in one hour, ready to become a file.
pub struct PartBatch {
    pub table: Table,
    pub hour: HourPartition,
    pub batch: RecordBatch,
}

fn ts_builder() -> TimestampMillisecondBuilder {
    TimestampMillisecondBuilder::new().with_timezone("UTC")
}

#[derive(Default)]
struct Common {
    device_id: StringBuilder,
    merchant_id: StringBuilder,
    store_id: StringBuilder,
    boot_id: UInt64Builder,
    seq: UInt64Builder,
    sampled_at: TimestampMillisecondBuilder,
    received_at: TimestampMillisecondBuilder,
}

impl Common {
    fn new() -> Self {
        Common {
            sampled_at: ts_builder(),
            received_at: ts_builder(),
            ..Default::default()
        }
    }

    fn push(&mut self, r: &StoredReading<'_>) {
        self.device_id.append_value(r.reading.device_id.as_str());
        self.merchant_id.append_value(r.merchant_id.as_str());
        self.store_id.append_option(r.store_id.map(|s| s.as_str()));
        self.boot_id.append_value(r.reading.boot_id.0);
        self.seq.append_value(r.reading.seq);
        self.sampled_at.append_value(r.reading.sampled_at.0);
        self.received_at.append_value(r.received_at.0);
    }

    fn finish(&mut self) -> Vec<ArrayRef> {
        vec![
            Arc::new(self.device_id.finish()),
            Arc::new(self.merchant_id.finish()),
            Arc::new(self.store_id.finish()),
            Arc::new(self.boot_id.finish()),
            Arc::new(self.seq.finish()),
            Arc::new(self.sampled_at.finish()),
            Arc::new(self.received_at.finish()),
        ]
    }
}

#[derive(Default)]
struct ConnectivityCols {
    network_type: StringBuilder,
    rssi_dbm: Int32Builder,
    payment_host_latency_ms: UInt32Builder,
    disconnects: UInt32Builder,
    carrier_or_ssid: StringBuilder,
}

#[derive(Default)]
struct BatteryCols {
    level_pct: UInt8Builder,
    charging: BooleanBuilder,
    temperature_celsius: Float32Builder,
    voltage_mv: UInt32Builder,
    health_pct: UInt8Builder,
    cycle_count: UInt32Builder,
}

#[derive(Default)]
struct AppCols {
    app_version: StringBuilder,
    firmware_version: StringBuilder,
    transactions: UInt32Builder,
    transaction_latency_avg_ms: UInt32Builder,
    transaction_latency_max_ms: UInt32Builder,
    startup_ms: UInt32Builder,
    crashes: UInt32Builder,
    hangs: UInt32Builder,
    memory_used_kib: UInt32Builder,
    cpu_pct: Float32Builder,
}

#[derive(Default)]
struct PaymentCols {
    offline_queue_len: UInt32Builder,
    offline_queue_oldest_age_s: UInt32Builder,
    tamper_detected: BooleanBuilder,
    printer_paper_low: BooleanBuilder,
}

struct DeadLetterCols {
    received_at: TimestampMillisecondBuilder,
    topic: StringBuilder,
    merchant_id: StringBuilder,
    device_id: StringBuilder,
    reason_code: StringBuilder,
    reason: StringBuilder,
    payload: BinaryBuilder,
}

// A handful of parts live per flush (one per table and hour), so the size
// spread between variants costs nothing worth a box.
#[allow(clippy::large_enum_variant)]
enum Part {
    Connectivity(Common, ConnectivityCols),
    Battery(Common, BatteryCols),
    App(Common, AppCols),
    Payment(Common, PaymentCols),
    DeadLetter(DeadLetterCols),
}

impl Part {
    fn new(table: Table) -> Part {
        match table {
            Table::Reading(Kind::Connectivity) => {
                Part::Connectivity(Common::new(), Default::default())
            }
            Table::Reading(Kind::Battery) => Part::Battery(Common::new(), Default::default()),
            Table::Reading(Kind::AppPerformance) => Part::App(Common::new(), Default::default()),
            Table::Reading(Kind::PaymentHealth) => Part::Payment(Common::new(), Default::default()),
            Table::DeadLetter => Part::DeadLetter(DeadLetterCols {
                received_at: ts_builder(),
                topic: StringBuilder::new(),
                merchant_id: StringBuilder::new(),
                device_id: StringBuilder::new(),
                reason_code: StringBuilder::new(),
                reason: StringBuilder::new(),
                payload: BinaryBuilder::new(),
            }),
        }
    }

    fn push_reading(&mut self, r: &StoredReading<'_>) {
        match (self, &r.reading.signal) {
            (Part::Connectivity(common, cols), Signal::Connectivity(s)) => {
                common.push(r);
                cols.network_type.append_value(s.network_type.as_str());
                cols.rssi_dbm.append_value(s.rssi_dbm);
                cols.payment_host_latency_ms
                    .append_value(s.payment_host_latency_ms);
                cols.disconnects.append_value(s.disconnects);
                cols.carrier_or_ssid.append_value(&s.carrier_or_ssid);
            }
            (Part::Battery(common, cols), Signal::Battery(s)) => {
                common.push(r);
                // Validation bounds both percentages to 0..=100.
                cols.level_pct.append_value(s.level_pct.min(255) as u8);
                cols.charging.append_value(s.charging);
                cols.temperature_celsius.append_value(s.temperature_celsius);
                cols.voltage_mv.append_value(s.voltage_mv);
                cols.health_pct.append_value(s.health_pct.min(255) as u8);
                cols.cycle_count.append_value(s.cycle_count);
            }
            (Part::App(common, cols), Signal::AppPerformance(s)) => {
                common.push(r);
                cols.app_version.append_value(&s.app_version);
                cols.firmware_version.append_value(&s.firmware_version);
                cols.transactions.append_value(s.transactions);
                cols.transaction_latency_avg_ms
                    .append_value(s.transaction_latency_avg_ms);
                cols.transaction_latency_max_ms
                    .append_value(s.transaction_latency_max_ms);
                cols.startup_ms.append_option(s.startup_ms);
                cols.crashes.append_value(s.crashes);
                cols.hangs.append_value(s.hangs);
                cols.memory_used_kib.append_value(s.memory_used_kib);
                cols.cpu_pct.append_value(s.cpu_pct);
            }
            (Part::Payment(common, cols), Signal::PaymentHealth(s)) => {
                common.push(r);
                cols.offline_queue_len.append_value(s.offline_queue_len);
                cols.offline_queue_oldest_age_s
                    .append_value(s.offline_queue_oldest_age_s);
                cols.tamper_detected.append_value(s.tamper_detected);
                cols.printer_paper_low.append_value(s.printer_paper_low);
            }
            _ => unreachable!("parts are keyed by the reading's kind"),
        }
    }

    fn finish(&mut self) -> Vec<ArrayRef> {
        match self {
            Part::Connectivity(common, c) => {
                let mut cols = common.finish();
                cols.push(Arc::new(c.network_type.finish()));
                cols.push(Arc::new(c.rssi_dbm.finish()));
                cols.push(Arc::new(c.payment_host_latency_ms.finish()));
                cols.push(Arc::new(c.disconnects.finish()));
                cols.push(Arc::new(c.carrier_or_ssid.finish()));
                cols
            }
            Part::Battery(common, c) => {
                let mut cols = common.finish();
                cols.push(Arc::new(c.level_pct.finish()));
                cols.push(Arc::new(c.charging.finish()));
                cols.push(Arc::new(c.temperature_celsius.finish()));
                cols.push(Arc::new(c.voltage_mv.finish()));
                cols.push(Arc::new(c.health_pct.finish()));
                cols.push(Arc::new(c.cycle_count.finish()));
                cols
            }
            Part::App(common, c) => {
                let mut cols = common.finish();
                cols.push(Arc::new(c.app_version.finish()));
                cols.push(Arc::new(c.firmware_version.finish()));
                cols.push(Arc::new(c.transactions.finish()));
                cols.push(Arc::new(c.transaction_latency_avg_ms.finish()));
                cols.push(Arc::new(c.transaction_latency_max_ms.finish()));
                cols.push(Arc::new(c.startup_ms.finish()));
                cols.push(Arc::new(c.crashes.finish()));
                cols.push(Arc::new(c.hangs.finish()));
                cols.push(Arc::new(c.memory_used_kib.finish()));
                cols.push(Arc::new(c.cpu_pct.finish()));
                cols
            }
            Part::Payment(common, c) => {
                let mut cols = common.finish();
                cols.push(Arc::new(c.offline_queue_len.finish()));
                cols.push(Arc::new(c.offline_queue_oldest_age_s.finish()));
                cols.push(Arc::new(c.tamper_detected.finish()));
                cols.push(Arc::new(c.printer_paper_low.finish()));
                cols
            }
            Part::DeadLetter(c) => vec![
                Arc::new(c.received_at.finish()),
                Arc::new(c.topic.finish()),
                Arc::new(c.merchant_id.finish()),
                Arc::new(c.device_id.finish()),
                Arc::new(c.reason_code.finish()),
                Arc::new(c.reason.finish()),
                Arc::new(c.payload.finish()),
            ],
        }
    }
}

/// Rows gathered since the last flush.
///
/// Design: builders per (table, hour) rather than one per table, so a flush
/// writes each hour partition's file straight from its own arrays, with no
/// sort or split; a late backlog lands in its own old hour.
#[derive(Default)]
pub struct Staging {
    parts: HashMap<(Table, HourPartition), Part>,
    rows: usize,
    approx_bytes: usize,
}

/// Fixed bytes a reading row takes in the builders, besides its strings.
const ROW_BYTES: usize = 96;

impl Staging {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn push_reading(&mut self, r: StoredReading<'_>) {
        let table = Table::Reading(r.reading.kind());
        let hour = r.reading.sampled_at.hour();
        let part = self
            .parts
            .entry((table, hour))
            .or_insert_with(|| Part::new(table));
        part.push_reading(&r);
        self.rows += 1;
        self.approx_bytes += ROW_BYTES
            + r.reading.device_id.as_str().len()
            + r.merchant_id.as_str().len()
            + r.store_id.map_or(0, |s| s.as_str().len())
            + match &r.reading.signal {
                Signal::Connectivity(c) => c.carrier_or_ssid.len(),
                Signal::AppPerformance(a) => a.app_version.len() + a.firmware_version.len(),
                _ => 0,
            };
    }

    pub fn push_dead_letter(&mut self, d: &DeadLetter) {
        let hour = d.received_at.hour();
        let part = self
            .parts
            .entry((Table::DeadLetter, hour))
            .or_insert_with(|| Part::new(Table::DeadLetter));
        let Part::DeadLetter(c) = part else {
            unreachable!("the dead-letter key holds a dead-letter part")
        };
        c.received_at.append_value(d.received_at.0);
        c.topic.append_value(&d.topic);
        c.merchant_id.append_option(d.merchant_id.as_deref());
        c.device_id.append_option(d.device_id.as_deref());
        c.reason_code.append_value(d.reason_code);
        c.reason.append_value(&d.reason);
        c.payload.append_value(&d.payload);
        self.rows += 1;
        self.approx_bytes += ROW_BYTES + d.topic.len() + d.reason.len() + d.payload.len();
    }

    /// Rows held, readings and dead letters together.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// A close estimate of the memory the held rows take.
    pub fn approx_bytes(&self) -> usize {
        self.approx_bytes
    }

    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    /// Turns the held rows into one Arrow batch per (table, hour), in a
    /// stable order.
    pub fn finish(self) -> Vec<PartBatch> {
        let mut parts: Vec<_> = self.parts.into_iter().collect();
        parts.sort_by_key(|((table, hour), _)| (*table, *hour));
        parts
            .into_iter()
            .map(|((table, hour), mut part)| {
                let batch = RecordBatch::try_new(schema(table), part.finish())
                    .expect("builders follow the table's schema");
                PartBatch { table, hour, batch }
            })
            .collect()
    }
}
