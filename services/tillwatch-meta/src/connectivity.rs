//! Connectivity state and its history in the store: the state machine
//! (`tillwatch_domain::connectivity`) decides, the store remembers, so a
//! restarted alerter resumes each device where it was.

use std::collections::HashMap;

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
        self.load_connectivity_where(None).await
    }

    async fn load_connectivity_where(
        &self,
        device_id: Option<&str>,
    ) -> Result<Vec<(String, ConnectivitySnapshot)>, MetaError> {
        self.all(
            sqlx::query(
                "SELECT device_id, state, since_ms, boot_id, last_telemetry_ms, cadence_ms \
             FROM device_connectivity WHERE ($1 IS NULL OR device_id = $1)",
            )
            .bind(device_id.map(str::to_string)),
            |r| {
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
            },
        )
        .await
    }

    /// One device's saved state machine.
    pub async fn device_connectivity(
        &self,
        device_id: &str,
    ) -> Result<Option<ConnectivitySnapshot>, MetaError> {
        Ok(self
            .load_connectivity_where(Some(device_id))
            .await?
            .into_iter()
            .next()
            .map(|(_, s)| s))
    }

    /// A device's state changes, newest first.
    pub async fn connectivity_history(
        &self,
        device_id: &str,
        limit: u32,
    ) -> Result<Vec<HistoryEntry>, MetaError> {
        self.all(
            sqlx::query(
                "SELECT at_ms, from_state, to_state FROM connectivity_history WHERE device_id = $1 \
             ORDER BY at_ms DESC LIMIT $2",
            )
            .bind(device_id)
            .bind(i64::from(limit)),
            history_entry,
        )
        .await
    }

    /// A device's state changes with `from_ms <= at_ms < to_ms`, oldest
    /// first (at most `limit`), after the change in force at `from_ms`
    /// when there is one: enough to draw the state over the range.
    pub async fn connectivity_between(
        &self,
        device_id: &str,
        from_ms: i64,
        to_ms: i64,
        limit: u32,
    ) -> Result<Vec<HistoryEntry>, MetaError> {
        let before = sqlx::query(
            "SELECT at_ms, from_state, to_state FROM connectivity_history \
             WHERE device_id = $1 AND at_ms < $2 ORDER BY at_ms DESC LIMIT 1",
        )
        .bind(device_id)
        .bind(from_ms)
        .fetch_all(self.pool())
        .await
        .map_err(self.db())?;
        let within = sqlx::query(
            "SELECT at_ms, from_state, to_state FROM connectivity_history \
             WHERE device_id = $1 AND at_ms >= $2 AND at_ms < $3 ORDER BY at_ms LIMIT $4",
        )
        .bind(device_id)
        .bind(from_ms)
        .bind(to_ms)
        .bind(i64::from(limit))
        .fetch_all(self.pool())
        .await
        .map_err(self.db())?;
        before
            .iter()
            .chain(within.iter())
            .map(history_entry)
            .collect::<Result<_, sqlx::Error>>()
            .map_err(self.db())
    }

    /// Every device's state changes at or after `since_ms`, oldest first
    /// (at most `limit`), with the device id: a follower's next page.
    pub async fn connectivity_changes_since(
        &self,
        since_ms: i64,
        limit: u32,
    ) -> Result<Vec<(String, HistoryEntry)>, MetaError> {
        self.all(
            sqlx::query(
                "SELECT device_id, at_ms, from_state, to_state FROM connectivity_history \
             WHERE at_ms >= $1 ORDER BY at_ms, device_id LIMIT $2",
            )
            .bind(since_ms)
            .bind(i64::from(limit)),
            |r| Ok((r.try_get("device_id")?, history_entry(r)?)),
        )
        .await
    }

    /// How many times each device went offline at or after `since_ms`
    /// (devices that did not are left out).
    pub async fn offline_drops_since(
        &self,
        device_id: Option<&str>,
        since_ms: i64,
    ) -> Result<HashMap<String, u32>, MetaError> {
        self.all(
            sqlx::query(
                "SELECT device_id, COUNT(*) AS n FROM connectivity_history \
             WHERE at_ms >= $1 AND to_state <> 'online' AND ($2 IS NULL OR device_id = $2) \
             GROUP BY device_id",
            )
            .bind(since_ms)
            .bind(device_id.map(str::to_string)),
            |r| {
                let n: i64 = r.try_get("n")?;
                Ok((r.try_get("device_id")?, n as u32))
            },
        )
        .await
    }
}

fn history_entry(r: &sqlx::any::AnyRow) -> Result<HistoryEntry, sqlx::Error> {
    let from: Option<String> = r.try_get("from_state")?;
    let to: String = r.try_get("to_state")?;
    Ok(HistoryEntry {
        at_ms: r.try_get("at_ms")?,
        from: from.as_deref().and_then(ConnState::parse),
        to: ConnState::parse(&to)
            .ok_or_else(|| sqlx::Error::Decode(format!("unknown state {to:?}").into()))?,
    })
}

/// One device's time online within an hour, and the readings it should
/// then have sent.
#[derive(Debug, Clone, PartialEq)]
pub struct OnlineTime {
    pub device_id: String,
    pub minutes_online: f64,
    /// Readings of each kind expected while online: the time online over
    /// the terminal's learned reporting interval, when it has one.
    pub readings_expected: Option<f64>,
}

/// Minutes each device spent online within `[start_ms, end_ms)`, from the
/// state history: the state a device was in at `start_ms` (its latest
/// change before then) carries on until its next change. Time before a
/// device's first recorded state is not counted as online.
pub fn minutes_online(
    before: &[(String, String)],
    changes: &[(String, i64, String)],
    start_ms: i64,
    end_ms: i64,
) -> Vec<(String, f64)> {
    use std::collections::BTreeMap;
    let online = |state: &str| ConnState::parse(state) == Some(ConnState::Online);
    /// Online at the start (if known), then each change to online or not.
    type Timeline = (Option<bool>, Vec<(i64, bool)>);
    let mut timelines: BTreeMap<&str, Timeline> = BTreeMap::new();
    for (device, state) in before {
        timelines.entry(device).or_default().0 = Some(online(state));
    }
    for (device, at, state) in changes {
        timelines
            .entry(device)
            .or_default()
            .1
            .push((*at, online(state)));
    }
    timelines
        .into_iter()
        .map(|(device, (at_start, mut steps))| {
            steps.sort_by_key(|(at, _)| *at);
            let mut total = 0i64;
            let mut since = start_ms;
            let mut state = at_start.unwrap_or(false);
            for (at, next) in steps {
                let at = at.clamp(start_ms, end_ms);
                if state {
                    total += at - since;
                }
                since = at;
                state = next;
            }
            if state {
                total += end_ms - since;
            }
            (device.to_string(), total as f64 / 60_000.0)
        })
        .collect()
}

impl MetaStore {
    /// [`minutes_online`] of every device with a recorded state in or
    /// before `[start_ms, end_ms)`, with the readings expected of it.
    pub async fn online_time(
        &self,
        start_ms: i64,
        end_ms: i64,
    ) -> Result<Vec<OnlineTime>, MetaError> {
        // Each device's latest change before the start: one index probe
        // per device on (device_id, at_ms).
        let devices = sqlx::query(
            "SELECT d.device_id, d.cadence_ms, (SELECT h.to_state FROM connectivity_history h \
               WHERE h.device_id = d.device_id AND h.at_ms < $1 \
               ORDER BY h.at_ms DESC LIMIT 1) AS state \
             FROM device_connectivity d",
        )
        .bind(start_ms)
        .fetch_all(self.pool())
        .await
        .map_err(self.db())?;
        let mut before = Vec::new();
        let mut cadence = std::collections::HashMap::new();
        for r in &devices {
            let device: String = r.try_get("device_id").map_err(self.db())?;
            let state: Option<String> = r.try_get("state").map_err(self.db())?;
            let gap: Option<i64> = r.try_get("cadence_ms").map_err(self.db())?;
            if let Some(gap) = gap.filter(|g| *g > 0) {
                cadence.insert(device.clone(), gap as f64);
            }
            if let Some(state) = state {
                before.push((device, state));
            }
        }
        let changes: Vec<(String, i64, String)> = self
            .all(
                sqlx::query(
                    "SELECT device_id, at_ms, to_state FROM connectivity_history \
                     WHERE at_ms >= $1 AND at_ms < $2",
                )
                .bind(start_ms)
                .bind(end_ms),
                |r| {
                    Ok((
                        r.try_get("device_id")?,
                        r.try_get("at_ms")?,
                        r.try_get("to_state")?,
                    ))
                },
            )
            .await?;
        Ok(minutes_online(&before, &changes, start_ms, end_ms)
            .into_iter()
            .map(|(device_id, minutes_online)| OnlineTime {
                readings_expected: cadence
                    .get(&device_id)
                    .map(|gap| (minutes_online * 60_000.0 / gap).round()),
                device_id,
                minutes_online,
            })
            .collect())
    }

    /// What the daily rollups need to know of each device: its local
    /// time zone (its store's from the merchant directory, else the one
    /// the terminal reports) and its model.
    pub async fn device_facts(&self) -> Result<Vec<DeviceFacts>, MetaError> {
        self.all(sqlx::query(
            "SELECT d.device_id, COALESCE(s.time_zone, d.time_zone) AS zone, d.model FROM devices d \
             LEFT JOIN stores s ON s.merchant_id = d.merchant_id AND s.store_id = d.store_id \
             ORDER BY d.device_id",
        ), |r| {
                Ok(DeviceFacts {
                    device_id: r.try_get("device_id")?,
                    time_zone: r.try_get("zone")?,
                    model: r.try_get("model")?,
                })
            }).await
    }
}

/// A device as the daily rollups see it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct DeviceFacts {
    pub device_id: String,
    /// IANA name.
    pub time_zone: Option<String>,
    pub model: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::minutes_online;

    fn s(v: &str) -> String {
        v.to_string()
    }

    #[test]
    fn minutes_online_follow_the_state_changes_within_the_hour() {
        const H: i64 = 3_600_000;
        const M: i64 = 60_000;
        let before = [(s("a"), s("online")), (s("b"), s("last_will"))];
        let changes = [
            // a drops at :10 and is back at :25.
            (s("a"), 10 * M, s("silence")),
            (s("a"), 25 * M, s("online")),
            // b comes back at :45.
            (s("b"), 45 * M, s("online")),
            // c is first seen at :30.
            (s("c"), 30 * M, s("online")),
        ];
        let got = minutes_online(&before, &changes, 0, H);
        assert_eq!(got, [(s("a"), 45.0), (s("b"), 15.0), (s("c"), 30.0)]);
        // A device that changed nothing keeps its state all hour.
        let got = minutes_online(&[(s("d"), s("online")), (s("e"), s("shutdown"))], &[], 0, H);
        assert_eq!(got, [(s("d"), 60.0), (s("e"), 0.0)]);
    }
}
