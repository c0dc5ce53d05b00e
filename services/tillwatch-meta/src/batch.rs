//! Many messages' worth of device state in one transaction: the registry,
//! the newest signal values and the connectivity state machines, each
//! table written with a few multi-row statements instead of one statement
//! per reading. Rows are merged in memory first (newest wins per key), so
//! no statement touches a row twice, which PostgreSQL refuses.

use std::collections::BTreeMap;

use sqlx::any::AnyArguments;
use sqlx::{Any, Arguments};
use tillwatch_domain::connectivity::{ConnectivitySnapshot, Transition};
use tillwatch_domain::{DeviceInfo, MerchantId, Reading};

use tillwatch_domain::signals::signals_of;

use crate::{MetaStore, StoreFuture};

/// Rows per statement on PostgreSQL: well under its 65,535 bound
/// parameters.
const CHUNK: usize = 500;
/// Rows per statement on SQLite: binding looks each parameter up by a
/// linear scan of the statement's parameters (sqlx asks every parameter's
/// name), so a statement's binding costs the square of its parameters;
/// at 500 rows it took a sixth of the demo history's CPU.
const SQLITE_CHUNK: usize = 50;

#[derive(Debug, Clone, Copy, PartialEq)]
struct Seen {
    first_ms: i64,
    last_ms: i64,
}

/// Device state to write together.
#[derive(Debug, Default, Clone)]
pub struct StateBatch {
    /// By device: merchant and the span of sample times seen.
    seen: BTreeMap<String, (String, Seen)>,
    /// Newest value per (device, signal).
    signals: BTreeMap<(String, &'static str), (f64, i64)>,
    infos: Vec<DeviceInfo>,
    /// Final state machine per device.
    connectivity: BTreeMap<String, ConnectivitySnapshot>,
    /// Keyed as the history table is, so a replay writes nothing twice.
    transitions: BTreeMap<(String, i64, &'static str), Option<&'static str>>,
}

impl MetaStore {
    fn rows_per_statement(&self) -> usize {
        match self.backend() {
            crate::Backend::Sqlite => SQLITE_CHUNK,
            crate::Backend::Postgres => CHUNK,
        }
    }
}

impl StateBatch {
    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
            && self.infos.is_empty()
            && self.connectivity.is_empty()
            && self.transitions.is_empty()
    }

    pub fn readings(&mut self, merchant_id: &MerchantId, readings: &[Reading]) {
        for r in readings {
            let t = r.sampled_at.0;
            let entry = self
                .seen
                .entry(r.device_id.as_str().to_string())
                .or_insert_with(|| {
                    (
                        merchant_id.as_str().to_string(),
                        Seen {
                            first_ms: t,
                            last_ms: t,
                        },
                    )
                });
            entry.1.first_ms = entry.1.first_ms.min(t);
            entry.1.last_ms = entry.1.last_ms.max(t);
            for (signal, value) in signals_of(r) {
                let key = (r.device_id.as_str().to_string(), signal);
                match self.signals.get(&key) {
                    Some((_, at)) if *at >= t => {}
                    _ => {
                        self.signals.insert(key, (value, t));
                    }
                }
            }
        }
    }

    pub fn info(&mut self, info: &DeviceInfo) {
        self.infos.push(info.clone());
    }

    pub fn connectivity(
        &mut self,
        device_id: &str,
        snapshot: ConnectivitySnapshot,
        transition: Option<&Transition>,
    ) {
        self.connectivity.insert(device_id.to_string(), snapshot);
        if let Some(t) = transition {
            self.transitions.insert(
                (device_id.to_string(), t.at.0, t.to.as_str()),
                t.from.map(|s| s.as_str()),
            );
        }
    }
}

/// `INSERT INTO … VALUES (…), (…) …` for `rows` rows of `width` columns,
/// with `$N` placeholders.
fn values_sql(head: &str, width: usize, rows: usize, tail: &str) -> String {
    let mut sql = String::from(head);
    sql.push_str(" VALUES ");
    for row in 0..rows {
        if row > 0 {
            sql.push_str(", ");
        }
        sql.push('(');
        for col in 0..width {
            if col > 0 {
                sql.push_str(", ");
            }
            sql.push_str(&format!("${}", row * width + col + 1));
        }
        sql.push(')');
    }
    sql.push(' ');
    sql.push_str(tail);
    sql
}

fn add<'q, T>(args: &mut AnyArguments<'q>, value: T) -> Result<(), sqlx::Error>
where
    T: 'q + sqlx::Encode<'q, Any> + sqlx::Type<Any>,
{
    args.add(value).map_err(sqlx::Error::Encode)
}

impl MetaStore {
    /// Writes a batch in one transaction.
    pub fn record_batch<'a>(&'a self, batch: &'a StateBatch) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            if batch.is_empty() {
                return Ok(());
            }
            let mut tx = self.pool().begin().await.map_err(self.db())?;
            let recorded_at_ms = tillwatch_domain::UtcMillis::now().0;
            for info in &batch.infos {
                self.info_statement(info)
                    .execute(&mut *tx)
                    .await
                    .map_err(self.db())?;
                self.record_attributes(&mut tx, info, recorded_at_ms)
                    .await?;
            }
            let seen: Vec<_> = batch.seen.iter().collect();
            for chunk in seen.chunks(self.rows_per_statement()) {
                let sql = values_sql(
                    "INSERT INTO devices (device_id, merchant_id, first_seen_ms, last_seen_ms, first_sample_ms)",
                    5,
                    chunk.len(),
                    "ON CONFLICT (device_id) DO UPDATE SET \
                     last_seen_ms = CASE WHEN devices.last_seen_ms IS NULL OR devices.last_seen_ms < excluded.last_seen_ms \
                       THEN excluded.last_seen_ms ELSE devices.last_seen_ms END, \
                     first_seen_ms = CASE WHEN excluded.first_seen_ms < devices.first_seen_ms \
                       THEN excluded.first_seen_ms ELSE devices.first_seen_ms END, \
                     first_sample_ms = CASE WHEN devices.first_sample_ms IS NULL OR excluded.first_sample_ms < devices.first_sample_ms \
                       THEN excluded.first_sample_ms ELSE devices.first_sample_ms END",
                );
                let mut args = AnyArguments::default();
                for (device, (merchant, s)) in chunk {
                    add(&mut args, device.as_str()).map_err(self.db())?;
                    add(&mut args, merchant.as_str()).map_err(self.db())?;
                    add(&mut args, s.first_ms).map_err(self.db())?;
                    add(&mut args, s.last_ms).map_err(self.db())?;
                    add(&mut args, s.first_ms).map_err(self.db())?;
                }
                sqlx::query_with(&sql, args)
                    .execute(&mut *tx)
                    .await
                    .map_err(self.db())?;
            }
            let signals: Vec<_> = batch.signals.iter().collect();
            for chunk in signals.chunks(self.rows_per_statement()) {
                let sql = values_sql(
                    "INSERT INTO device_signals (device_id, signal, value, sampled_at_ms)",
                    4,
                    chunk.len(),
                    "ON CONFLICT (device_id, signal) DO UPDATE SET \
                     value = excluded.value, sampled_at_ms = excluded.sampled_at_ms \
                     WHERE device_signals.sampled_at_ms < excluded.sampled_at_ms",
                );
                let mut args = AnyArguments::default();
                for ((device, signal), (value, at)) in chunk {
                    add(&mut args, device.as_str()).map_err(self.db())?;
                    add(&mut args, *signal).map_err(self.db())?;
                    add(&mut args, *value).map_err(self.db())?;
                    add(&mut args, *at).map_err(self.db())?;
                }
                sqlx::query_with(&sql, args)
                    .execute(&mut *tx)
                    .await
                    .map_err(self.db())?;
            }
            let conn: Vec<_> = batch.connectivity.iter().collect();
            for chunk in conn.chunks(self.rows_per_statement()) {
                let sql = values_sql(
                    "INSERT INTO device_connectivity (device_id, state, since_ms, boot_id, last_telemetry_ms, cadence_ms)",
                    6,
                    chunk.len(),
                    "ON CONFLICT (device_id) DO UPDATE SET state = excluded.state, since_ms = excluded.since_ms, \
                     boot_id = excluded.boot_id, last_telemetry_ms = excluded.last_telemetry_ms, \
                     cadence_ms = excluded.cadence_ms",
                );
                let mut args = AnyArguments::default();
                for (device, s) in chunk {
                    add(&mut args, device.as_str()).map_err(self.db())?;
                    add(&mut args, s.state.map(|s| s.as_str())).map_err(self.db())?;
                    add(&mut args, s.since.0).map_err(self.db())?;
                    // Boot ids are random 64-bit values; stored as their bit pattern.
                    add(&mut args, s.boot.map(|b| b.0 as i64)).map_err(self.db())?;
                    add(&mut args, s.last_telemetry.map(|t| t.0)).map_err(self.db())?;
                    // Whole milliseconds as an integer: the learned gap is
                    // rounded, and sqlx's Any driver mis-encodes a NULL
                    // float for PostgreSQL.
                    add(&mut args, s.gap_ms.map(|g| g.round() as i64)).map_err(self.db())?;
                }
                sqlx::query_with(&sql, args)
                    .execute(&mut *tx)
                    .await
                    .map_err(self.db())?;
            }
            let transitions: Vec<_> = batch.transitions.iter().collect();
            for chunk in transitions.chunks(self.rows_per_statement()) {
                let sql = values_sql(
                    "INSERT INTO connectivity_history (device_id, at_ms, from_state, to_state)",
                    4,
                    chunk.len(),
                    "ON CONFLICT (device_id, at_ms, to_state) DO NOTHING",
                );
                let mut args = AnyArguments::default();
                for ((device, at, to), from) in chunk {
                    add(&mut args, device.as_str()).map_err(self.db())?;
                    add(&mut args, *at).map_err(self.db())?;
                    add(&mut args, *from).map_err(self.db())?;
                    add(&mut args, *to).map_err(self.db())?;
                }
                sqlx::query_with(&sql, args)
                    .execute(&mut *tx)
                    .await
                    .map_err(self.db())?;
            }
            tx.commit().await.map_err(self.db())
        })
    }
}
