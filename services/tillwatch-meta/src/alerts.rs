//! Alerts, their delivery to each receiver, silences and stores, in the
//! store: the alerter decides, the store remembers, so a restarted alerter
//! neither pages twice nor forgets an alert that is firing.
//!
//! Delivery is reconciled, not queued: each alert says what receivers
//! should hold (`notify`: firing, resolved or nothing while pending, held
//! or silenced) and `alert_deliveries` what each receiver was last sent. A
//! receiver that is down simply stays behind until it answers again.

use std::collections::BTreeMap;

use sqlx::Row;

use crate::{MetaError, MetaStore, StoreFuture};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AlertState {
    Pending,
    Firing,
    Resolved,
}

impl AlertState {
    pub fn as_str(self) -> &'static str {
        match self {
            AlertState::Pending => "pending",
            AlertState::Firing => "firing",
            AlertState::Resolved => "resolved",
        }
    }

    pub fn parse(s: &str) -> Option<AlertState> {
        Some(match s {
            "pending" => AlertState::Pending,
            "firing" => AlertState::Firing,
            "resolved" => AlertState::Resolved,
            _ => return None,
        })
    }
}

/// One alert: a (rule, subject) pair from pending to resolved. At most one
/// is open (not resolved) per pair.
#[derive(Debug, Clone, PartialEq)]
pub struct AlertRecord {
    pub alert_id: String,
    pub rule: String,
    /// A device id, `store:<merchant>/<store>` or `merchant:<merchant>`.
    pub subject: String,
    /// device, store or merchant.
    pub scope: String,
    pub severity: String,
    pub state: AlertState,
    pub pending_since_ms: i64,
    pub fired_at_ms: Option<i64>,
    /// Firing, with its clearing condition holding since then.
    pub clearing_since_ms: Option<i64>,
    pub resolved_at_ms: Option<i64>,
    /// The store or merchant alert this page is held back for.
    pub held_by: Option<String>,
    /// The silence or maintenance window muting it.
    pub silenced_by: Option<String>,
    /// What receivers should hold: firing, resolved, or nothing.
    pub notify: Option<AlertState>,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub updated_at_ms: i64,
}

/// The label naming the receivers (comma-separated) that deliver an
/// alert (a job's `notify`); an alert without it goes to every receiver.
pub const NOTIFY_LABEL: &str = "notify";

impl AlertRecord {
    /// A new alert of `rule` on `subject`, pending since `since_ms` (its
    /// id is `rule:subject:since`), not yet fired, held, silenced or told
    /// to anyone, without labels or annotations.
    pub fn pending(
        rule: &str,
        subject: &str,
        scope: &str,
        severity: &str,
        since_ms: i64,
        now_ms: i64,
    ) -> AlertRecord {
        AlertRecord {
            alert_id: format!("{rule}:{subject}:{since_ms}"),
            rule: rule.into(),
            subject: subject.into(),
            scope: scope.into(),
            severity: severity.into(),
            state: AlertState::Pending,
            pending_since_ms: since_ms,
            fired_at_ms: None,
            clearing_since_ms: None,
            resolved_at_ms: None,
            held_by: None,
            silenced_by: None,
            notify: None,
            labels: BTreeMap::new(),
            annotations: BTreeMap::new(),
            updated_at_ms: now_ms,
        }
    }

    /// Whether `receiver` delivers this alert (see [`NOTIFY_LABEL`]).
    pub fn is_for(&self, receiver: &str) -> bool {
        self.labels
            .get(NOTIFY_LABEL)
            .is_none_or(|names| names.split(',').any(|n| n.trim() == receiver))
    }
}

/// An alert due for sending to one receiver, with what it was last sent.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    pub alert: AlertRecord,
    pub delivered: Option<AlertState>,
    pub attempts: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SilenceRecord {
    pub silence_id: String,
    /// `label=value`, `label!=value`, `label=~regex`, `label!~regex`.
    pub matchers: Vec<String>,
    pub starts_at_ms: i64,
    pub ends_at_ms: i64,
    pub created_by: String,
    pub comment: String,
    pub created_at_ms: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct StoreRecord {
    pub merchant_id: String,
    pub store_id: String,
    pub name: Option<String>,
    pub time_zone: Option<String>,
    /// e.g. `Mon-Fri 08:00-20:00, Sat 09:00-14:00`.
    pub hours: Option<String>,
    pub updated_at_ms: i64,
}

/// A merchant as the merchant directory names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MerchantRecord {
    pub merchant_id: String,
    pub name: Option<String>,
    pub updated_at_ms: i64,
}

/// `SELECT` of every alert column from `alerts a`, then the rest of the
/// query: one literal, so each query is a constant.
macro_rules! select_alerts {
    ($($rest:literal),* $(,)?) => {
        concat!(
            "SELECT a.alert_id, a.rule, a.subject, a.scope, a.severity, a.state, \
             a.pending_since_ms, a.fired_at_ms, a.clearing_since_ms, a.resolved_at_ms, a.held_by, \
             a.silenced_by, a.notify, a.labels, a.annotations, a.updated_at_ms",
            $($rest),*
        )
    };
}

const ALERTS_BY_STATE: &str = select_alerts!(
    " FROM alerts a \
     WHERE ($2 = 'open' AND a.state <> 'resolved') OR $2 = 'all' OR a.state = $2 \
     ORDER BY a.updated_at_ms DESC, a.alert_id LIMIT $1"
);
const ALERTS_CHANGED_SINCE: &str = select_alerts!(
    " FROM alerts a WHERE a.updated_at_ms >= $1 ORDER BY a.updated_at_ms, a.alert_id LIMIT $2"
);
const ALERTS_OF_SUBJECT: &str = select_alerts!(
    " FROM alerts a WHERE a.subject = $1 \
     ORDER BY CASE WHEN a.state = 'resolved' THEN 1 ELSE 0 END, a.updated_at_ms DESC, a.alert_id \
     LIMIT $2"
);

const DUE_DELIVERIES: &str = select_alerts!(
    ", d.delivered_state, d.attempts FROM alerts a \
     LEFT JOIN alert_deliveries d ON d.receiver = $1 AND d.alert_id = a.alert_id \
     WHERE a.notify IS NOT NULL \
       AND (d.next_attempt_ms IS NULL OR d.next_attempt_ms <= $2) \
       AND ((a.notify = 'firing' \
             AND (d.delivered_state IS NULL OR d.delivered_state <> 'firing' OR d.delivered_at_ms <= $3) \
             AND ($4 < 1 OR a.severity <> 'info') AND ($4 < 2 OR a.severity = 'critical')) \
         OR (a.notify = 'resolved' AND d.delivered_state = 'firing')) \
     ORDER BY a.updated_at_ms, a.alert_id LIMIT $5"
);

fn json_map(text: &str) -> Result<BTreeMap<String, String>, sqlx::Error> {
    serde_json::from_str(text).map_err(|e| sqlx::Error::Decode(Box::new(e)))
}

fn state_of(s: &str) -> Result<AlertState, sqlx::Error> {
    AlertState::parse(s).ok_or_else(|| sqlx::Error::Decode(format!("alert state {s:?}").into()))
}

fn alert_from_row(row: &sqlx::any::AnyRow) -> Result<AlertRecord, sqlx::Error> {
    let state: String = row.try_get("state")?;
    let notify: Option<String> = row.try_get("notify")?;
    let labels: String = row.try_get("labels")?;
    let annotations: String = row.try_get("annotations")?;
    Ok(AlertRecord {
        alert_id: row.try_get("alert_id")?,
        rule: row.try_get("rule")?,
        subject: row.try_get("subject")?,
        scope: row.try_get("scope")?,
        severity: row.try_get("severity")?,
        state: state_of(&state)?,
        pending_since_ms: row.try_get("pending_since_ms")?,
        fired_at_ms: row.try_get("fired_at_ms")?,
        clearing_since_ms: row.try_get("clearing_since_ms")?,
        resolved_at_ms: row.try_get("resolved_at_ms")?,
        held_by: row.try_get("held_by")?,
        silenced_by: row.try_get("silenced_by")?,
        notify: notify.as_deref().map(state_of).transpose()?,
        labels: json_map(&labels)?,
        annotations: json_map(&annotations)?,
        updated_at_ms: row.try_get("updated_at_ms")?,
    })
}

/// Which alerts a listing wants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AlertFilter {
    /// Pending and firing.
    Open,
    State(AlertState),
    All,
}

impl MetaStore {
    /// Saves alerts (new or changed) in one transaction.
    pub fn save_alerts<'a>(&'a self, alerts: &'a [AlertRecord]) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            if alerts.is_empty() {
                return Ok(());
            }
            // Resolves first: a subject's alert that resolved and its next
            // one opened in the same batch would otherwise break the rule
            // of one open alert per (rule, subject) when the new one came
            // first, fail the whole batch, and fail it again on every retry.
            let mut ordered: Vec<&AlertRecord> = alerts.iter().collect();
            ordered.sort_by_key(|a| a.state != AlertState::Resolved);
            self.execute_each(&ordered, |a| {
                sqlx::query(
                    "INSERT INTO alerts (alert_id, rule, subject, scope, severity, state, \
                     pending_since_ms, fired_at_ms, clearing_since_ms, resolved_at_ms, held_by, \
                     silenced_by, notify, labels, annotations, updated_at_ms) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16) \
                     ON CONFLICT (alert_id) DO UPDATE SET severity = excluded.severity, \
                       state = excluded.state, fired_at_ms = excluded.fired_at_ms, \
                       clearing_since_ms = excluded.clearing_since_ms, \
                       resolved_at_ms = excluded.resolved_at_ms, held_by = excluded.held_by, \
                       silenced_by = excluded.silenced_by, notify = excluded.notify, \
                       labels = excluded.labels, annotations = excluded.annotations, \
                       updated_at_ms = excluded.updated_at_ms",
                )
                .bind(&a.alert_id)
                .bind(&a.rule)
                .bind(&a.subject)
                .bind(&a.scope)
                .bind(&a.severity)
                .bind(a.state.as_str())
                .bind(a.pending_since_ms)
                .bind(a.fired_at_ms)
                .bind(a.clearing_since_ms)
                .bind(a.resolved_at_ms)
                .bind(a.held_by.clone())
                .bind(a.silenced_by.clone())
                .bind(a.notify.map(|n| n.as_str()))
                .bind(serde_json::to_string(&a.labels).expect("string map"))
                .bind(serde_json::to_string(&a.annotations).expect("string map"))
                .bind(a.updated_at_ms)
            })
            .await
        })
    }

    /// Forgets pending alerts that went away without firing.
    pub fn drop_alerts<'a>(&'a self, alert_ids: &'a [String]) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            self.execute_each(alert_ids, |id| {
                sqlx::query("DELETE FROM alerts WHERE alert_id = $1 AND state = 'pending'").bind(id)
            })
            .await
        })
    }

    /// Alerts, newest change first.
    pub async fn alerts(
        &self,
        filter: AlertFilter,
        limit: u32,
    ) -> Result<Vec<AlertRecord>, MetaError> {
        let wanted = match filter {
            AlertFilter::Open => "open",
            AlertFilter::All => "all",
            AlertFilter::State(s) => s.as_str(),
        };
        let query = sqlx::query(ALERTS_BY_STATE)
            .bind(i64::from(limit))
            .bind(wanted);
        self.all(query, alert_from_row).await
    }

    /// Alerts changed at or after `since_ms`, oldest change first (at most
    /// `limit`): a follower's next page.
    pub async fn alerts_changed_since(
        &self,
        since_ms: i64,
        limit: u32,
    ) -> Result<Vec<AlertRecord>, MetaError> {
        let query = sqlx::query(ALERTS_CHANGED_SINCE)
            .bind(since_ms)
            .bind(i64::from(limit));
        self.all(query, alert_from_row).await
    }

    /// The alerts about one subject (a device id, `store:…`,
    /// `merchant:…`), open ones first, then newest change first.
    pub async fn subject_alerts(
        &self,
        subject: &str,
        limit: u32,
    ) -> Result<Vec<AlertRecord>, MetaError> {
        let query = sqlx::query(ALERTS_OF_SUBJECT)
            .bind(subject)
            .bind(i64::from(limit));
        self.all(query, alert_from_row).await
    }

    /// Alerts due for `receiver` at `now`: firing ones it has not been sent
    /// (or not since `repeat_before_ms`), resolves of ones it was sent as
    /// firing; of at least `min_severity_rank` (0 info, 1 warning, 2
    /// critical); not in a retry backoff.
    pub async fn due_deliveries(
        &self,
        receiver: &str,
        now_ms: i64,
        repeat_before_ms: i64,
        min_severity_rank: i64,
        limit: u32,
    ) -> Result<Vec<Delivery>, MetaError> {
        self.all(
            sqlx::query(DUE_DELIVERIES)
                .bind(receiver)
                .bind(now_ms)
                .bind(repeat_before_ms)
                .bind(min_severity_rank)
                .bind(i64::from(limit)),
            |r| {
                let delivered: Option<String> = r.try_get("delivered_state")?;
                let attempts: Option<i64> = r.try_get("attempts")?;
                Ok(Delivery {
                    alert: alert_from_row(r)?,
                    delivered: delivered.as_deref().map(state_of).transpose()?,
                    attempts: attempts.unwrap_or(0),
                })
            },
        )
        .await
    }

    /// `receiver` took these alerts in these states.
    pub fn record_delivered<'a>(
        &'a self,
        receiver: &'a str,
        sent: &'a [(String, AlertState)],
        at_ms: i64,
    ) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            self.execute_each(sent, |(alert_id, state)| {
                sqlx::query(
                    "INSERT INTO alert_deliveries (receiver, alert_id, delivered_state, delivered_at_ms, \
                     attempts, next_attempt_ms, last_error) VALUES ($1, $2, $3, $4, 0, 0, NULL) \
                     ON CONFLICT (receiver, alert_id) DO UPDATE SET delivered_state = excluded.delivered_state, \
                       delivered_at_ms = excluded.delivered_at_ms, attempts = 0, next_attempt_ms = 0, \
                       last_error = NULL",
                )
                .bind(receiver)
                .bind(alert_id)
                .bind(state.as_str())
                .bind(at_ms)
            })
            .await
        })
    }

    /// Sending these alerts to `receiver` failed; try again at `retry_at_ms`.
    pub fn record_delivery_failed<'a>(
        &'a self,
        receiver: &'a str,
        alert_ids: &'a [String],
        retry_at_ms: i64,
        error: &'a str,
    ) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            self.execute_each(alert_ids, |alert_id| {
                sqlx::query(
                    "INSERT INTO alert_deliveries (receiver, alert_id, delivered_state, delivered_at_ms, \
                     attempts, next_attempt_ms, last_error) VALUES ($1, $2, NULL, NULL, 1, $3, $4) \
                     ON CONFLICT (receiver, alert_id) DO UPDATE SET \
                       attempts = alert_deliveries.attempts + 1, next_attempt_ms = excluded.next_attempt_ms, \
                       last_error = excluded.last_error",
                )
                .bind(receiver)
                .bind(alert_id)
                .bind(retry_at_ms)
                .bind(error)
            })
            .await
        })
    }

    /// What `receiver` was last sent of an alert, and failed attempts since.
    pub async fn delivery_of(
        &self,
        receiver: &str,
        alert_id: &str,
    ) -> Result<Option<(Option<AlertState>, i64)>, MetaError> {
        let row = sqlx::query(
            "SELECT delivered_state, attempts FROM alert_deliveries WHERE receiver = $1 AND alert_id = $2",
        )
        .bind(receiver)
        .bind(alert_id)
        .fetch_optional(self.pool())
        .await
        .map_err(self.db())?;
        row.map(|r| {
            let state: Option<String> = r.try_get("delivered_state")?;
            Ok((
                state.as_deref().map(state_of).transpose()?,
                r.try_get("attempts")?,
            ))
        })
        .transpose()
        .map_err(self.db())
    }

    pub async fn create_silence(&self, s: &SilenceRecord) -> Result<(), MetaError> {
        sqlx::query(
            "INSERT INTO silences (silence_id, matchers, starts_at_ms, ends_at_ms, created_by, comment, created_at_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&s.silence_id)
        .bind(serde_json::to_string(&s.matchers).expect("strings"))
        .bind(s.starts_at_ms)
        .bind(s.ends_at_ms)
        .bind(&s.created_by)
        .bind(&s.comment)
        .bind(s.created_at_ms)
        .execute(self.pool())
        .await
        .map_err(self.db())?;
        Ok(())
    }

    /// Ends a silence at `at_ms` (if it would end later); false if unknown.
    pub async fn expire_silence(&self, silence_id: &str, at_ms: i64) -> Result<bool, MetaError> {
        let done = sqlx::query(
            "UPDATE silences SET ends_at_ms = CASE WHEN ends_at_ms > $2 THEN $2 ELSE ends_at_ms END \
             WHERE silence_id = $1",
        )
        .bind(silence_id)
        .bind(at_ms)
        .execute(self.pool())
        .await
        .map_err(self.db())?;
        Ok(done.rows_affected() > 0)
    }

    /// Silences that have not ended by `now_ms` (active or yet to start).
    pub async fn silences(&self, now_ms: i64) -> Result<Vec<SilenceRecord>, MetaError> {
        self.all(sqlx::query(
            "SELECT silence_id, matchers, starts_at_ms, ends_at_ms, created_by, comment, created_at_ms \
             FROM silences WHERE ends_at_ms > $1 ORDER BY starts_at_ms, silence_id",
        )
        .bind(now_ms), |r| {
                let matchers: String = r.try_get("matchers")?;
                Ok(SilenceRecord {
                    silence_id: r.try_get("silence_id")?,
                    matchers: serde_json::from_str(&matchers)
                        .map_err(|e| sqlx::Error::Decode(Box::new(e)))?,
                    starts_at_ms: r.try_get("starts_at_ms")?,
                    ends_at_ms: r.try_get("ends_at_ms")?,
                    created_by: r.try_get("created_by")?,
                    comment: r.try_get("comment")?,
                    created_at_ms: r.try_get("created_at_ms")?,
                })
            }).await
    }

    pub async fn upsert_store(&self, s: &StoreRecord) -> Result<(), MetaError> {
        sqlx::query(
            "INSERT INTO stores (merchant_id, store_id, name, time_zone, hours, updated_at_ms) \
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (merchant_id, store_id) DO UPDATE SET \
               name = excluded.name, time_zone = excluded.time_zone, hours = excluded.hours, \
               updated_at_ms = excluded.updated_at_ms",
        )
        .bind(&s.merchant_id)
        .bind(&s.store_id)
        .bind(s.name.clone())
        .bind(s.time_zone.clone())
        .bind(s.hours.clone())
        .bind(s.updated_at_ms)
        .execute(self.pool())
        .await
        .map_err(self.db())?;
        Ok(())
    }

    /// Replaces what the merchant directory knows in one transaction:
    /// merchants and stores are inserted or updated, none deleted (a store
    /// that left the directory keeps its last hours).
    pub async fn import_directory(
        &self,
        merchants: &[MerchantRecord],
        stores: &[StoreRecord],
    ) -> Result<(), MetaError> {
        let mut tx = self.pool().begin().await.map_err(self.db())?;
        for m in merchants {
            sqlx::query(
                "INSERT INTO merchants (merchant_id, name, updated_at_ms) VALUES ($1, $2, $3) \
                 ON CONFLICT (merchant_id) DO UPDATE SET name = excluded.name, \
                   updated_at_ms = excluded.updated_at_ms",
            )
            .bind(&m.merchant_id)
            .bind(m.name.clone())
            .bind(m.updated_at_ms)
            .execute(&mut *tx)
            .await
            .map_err(self.db())?;
        }
        for s in stores {
            sqlx::query(
                "INSERT INTO stores (merchant_id, store_id, name, time_zone, hours, updated_at_ms) \
                 VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (merchant_id, store_id) DO UPDATE SET \
                   name = excluded.name, time_zone = excluded.time_zone, hours = excluded.hours, \
                   updated_at_ms = excluded.updated_at_ms",
            )
            .bind(&s.merchant_id)
            .bind(&s.store_id)
            .bind(s.name.clone())
            .bind(s.time_zone.clone())
            .bind(s.hours.clone())
            .bind(s.updated_at_ms)
            .execute(&mut *tx)
            .await
            .map_err(self.db())?;
        }
        tx.commit().await.map_err(self.db())
    }

    pub async fn merchants(&self) -> Result<Vec<MerchantRecord>, MetaError> {
        self.all(
            sqlx::query(
                "SELECT merchant_id, name, updated_at_ms FROM merchants ORDER BY merchant_id",
            ),
            |r| {
                Ok(MerchantRecord {
                    merchant_id: r.try_get("merchant_id")?,
                    name: r.try_get("name")?,
                    updated_at_ms: r.try_get("updated_at_ms")?,
                })
            },
        )
        .await
    }

    pub async fn stores(&self) -> Result<Vec<StoreRecord>, MetaError> {
        self.stores_updated_after(i64::MIN).await
    }

    /// Stores changed after `after_ms` (by the configuration or the
    /// merchant directory), for the alerter to pick up.
    pub async fn stores_updated_after(&self, after_ms: i64) -> Result<Vec<StoreRecord>, MetaError> {
        self.all(
            sqlx::query(
                "SELECT merchant_id, store_id, name, time_zone, hours, updated_at_ms FROM stores \
             WHERE updated_at_ms > $1 ORDER BY merchant_id, store_id",
            )
            .bind(after_ms),
            |r| {
                Ok(StoreRecord {
                    merchant_id: r.try_get("merchant_id")?,
                    store_id: r.try_get("store_id")?,
                    name: r.try_get("name")?,
                    time_zone: r.try_get("time_zone")?,
                    hours: r.try_get("hours")?,
                    updated_at_ms: r.try_get("updated_at_ms")?,
                })
            },
        )
        .await
    }
}
