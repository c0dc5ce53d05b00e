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
            let mut batch = crate::StateBatch::default();
            batch.connectivity(device_id, snapshot.clone(), transition);
            self.record_batch(&batch).await
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
