//! Connectivity state and its history in the store: the state machine
//! (`tillwatch_domain::connectivity`) decides, the store remembers, so a
//! restarted alerter resumes each device where it was.

use sqlx::Row;
use tillwatch_domain::connectivity::{ConnState, ConnectivitySnapshot, Transition};
use tillwatch_domain::{BootId, UtcMillis};

use crate::{MetaError, MetaStore, StoreFuture};

/// One entry of a device's connectivity history.
#[derive(Debug, Clone, PartialEq)]
pub struct HistoryEntry {
    pub at_ms: i64,
    pub from: Option<ConnState>,
    pub to: ConnState,
}

impl MetaStore {
    /// Saves a device's state machine and, when it changed state, the
    /// transition, in one transaction. Replaying the same transition is
    /// harmless.
    pub fn save_connectivity<'a>(
        &'a self,
        device_id: &'a str,
        snapshot: &'a ConnectivitySnapshot,
        transition: Option<&'a Transition>,
    ) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let mut tx = self.pool().begin().await.map_err(self.db())?;
            sqlx::query(
            "INSERT INTO device_connectivity (device_id, state, since_ms, boot_id, last_telemetry_ms, cadence_ms) \
             VALUES ($1, $2, $3, $4, $5, $6) \
             ON CONFLICT (device_id) DO UPDATE SET state = excluded.state, since_ms = excluded.since_ms, \
               boot_id = excluded.boot_id, last_telemetry_ms = excluded.last_telemetry_ms, \
               cadence_ms = excluded.cadence_ms",
        )
        .bind(device_id)
        .bind(snapshot.state.map(|s| s.as_str()))
        .bind(snapshot.since.0)
        // Boot ids are random 64-bit values; stored as their bit pattern.
        .bind(snapshot.boot.map(|b| b.0 as i64))
        .bind(snapshot.last_telemetry.map(|t| t.0))
        // Whole milliseconds as an integer: the learned gap is rounded, and
        // sqlx's Any driver mis-encodes a NULL float for PostgreSQL.
        .bind(snapshot.gap_ms.map(|g| g.round() as i64))
        .execute(&mut *tx)
        .await
        .map_err(self.db())?;
            if let Some(t) = transition {
                sqlx::query(
                    "INSERT INTO connectivity_history (device_id, at_ms, from_state, to_state) \
                 VALUES ($1, $2, $3, $4) ON CONFLICT (device_id, at_ms, to_state) DO NOTHING",
                )
                .bind(device_id)
                .bind(t.at.0)
                .bind(t.from.map(|s| s.as_str()))
                .bind(t.to.as_str())
                .execute(&mut *tx)
                .await
                .map_err(self.db())?;
            }
            tx.commit().await.map_err(self.db())
        })
    }

    /// Every device's saved state machine, to resume after a restart.
    pub async fn load_connectivity(
        &self,
    ) -> Result<Vec<(String, ConnectivitySnapshot)>, MetaError> {
        let rows = sqlx::query(
            "SELECT device_id, state, since_ms, boot_id, last_telemetry_ms, cadence_ms FROM device_connectivity",
        )
        .fetch_all(self.pool())
        .await
        .map_err(self.db())?;
        rows.iter()
            .map(|r| {
                let state: Option<String> = r.try_get("state")?;
                let boot: Option<i64> = r.try_get("boot_id")?;
                let last: Option<i64> = r.try_get("last_telemetry_ms")?;
                let gap: Option<i64> = r.try_get("cadence_ms")?;
                Ok((
                    r.try_get("device_id")?,
                    ConnectivitySnapshot {
                        state: state.as_deref().and_then(ConnState::parse),
                        since: UtcMillis(r.try_get("since_ms")?),
                        boot: boot.map(|b| BootId(b as u64)),
                        last_telemetry: last.map(UtcMillis),
                        gap_ms: gap.map(|g| g as f64),
                    },
                ))
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(self.db())
    }

    /// A device's state changes, newest first.
    pub async fn connectivity_history(
        &self,
        device_id: &str,
        limit: u32,
    ) -> Result<Vec<HistoryEntry>, MetaError> {
        let rows = sqlx::query(
            "SELECT at_ms, from_state, to_state FROM connectivity_history WHERE device_id = $1 \
             ORDER BY at_ms DESC LIMIT $2",
        )
        .bind(device_id)
        .bind(i64::from(limit))
        .fetch_all(self.pool())
        .await
        .map_err(self.db())?;
        rows.iter()
            .map(|r| {
                let from: Option<String> = r.try_get("from_state")?;
                let to: String = r.try_get("to_state")?;
                Ok(HistoryEntry {
                    at_ms: r.try_get("at_ms")?,
                    from: from.as_deref().and_then(ConnState::parse),
                    to: ConnState::parse(&to).ok_or_else(|| {
                        sqlx::Error::Decode(format!("unknown state {to:?}").into())
                    })?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(self.db())
    }
}
