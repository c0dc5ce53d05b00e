//! Pruning: what the `retention` job deletes from the metadata store.
//! Each kind of record has its own cutoff; what the product still needs
//! (a terminal's newest connectivity change, the run behind each
//! partition's output, open alerts) is kept whatever its age.

use crate::{MetaError, MetaStore};

/// Records older than these (Unix milliseconds) go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PruneBefore {
    pub connectivity_history_ms: i64,
    pub job_runs_ms: i64,
    pub resolved_alerts_ms: i64,
    pub findings_ms: i64,
    pub silences_ms: i64,
}

/// How many records each kind lost.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pruned {
    pub connectivity_history: u64,
    pub job_runs: u64,
    pub resolved_alerts: u64,
    pub alert_deliveries: u64,
    pub findings: u64,
    pub silences: u64,
}

impl Pruned {
    /// `(kind, count)` for each kind, in a fixed order: how metrics and
    /// logs name them.
    pub fn by_kind(&self) -> [(&'static str, u64); 6] {
        [
            ("connectivity_history", self.connectivity_history),
            ("job_runs", self.job_runs),
            ("resolved_alerts", self.resolved_alerts),
            ("alert_deliveries", self.alert_deliveries),
            ("findings", self.findings),
            ("silences", self.silences),
        ]
    }
}

impl MetaStore {
    /// Deletes what is older than its cutoff. Safe to run again (what is
    /// gone stays gone) and beside every other role.
    pub async fn prune(&self, before: &PruneBefore) -> Result<Pruned, MetaError> {
        let run = |sql: &'static str, at: i64| async move {
            sqlx::query(sql)
                .bind(at)
                .execute(self.pool())
                .await
                .map(|r| r.rows_affected())
                .map_err(self.db())
        };
        let mut pruned = Pruned {
            connectivity_history: run(
                "DELETE FROM connectivity_history WHERE at_ms < $1 AND at_ms < \
                   (SELECT MAX(h.at_ms) FROM connectivity_history h \
                    WHERE h.device_id = connectivity_history.device_id)",
                before.connectivity_history_ms,
            )
            .await?,
            job_runs: run(
                "DELETE FROM job_runs WHERE finished_ms IS NOT NULL AND finished_ms < $1 \
                   AND run_id NOT IN \
                     (SELECT run_id FROM job_partitions WHERE run_id IS NOT NULL)",
                before.job_runs_ms,
            )
            .await?,
            findings: run(
                "DELETE FROM rollup_findings WHERE day_ms < $1",
                before.findings_ms,
            )
            .await?,
            silences: run(
                "DELETE FROM silences WHERE ends_at_ms < $1",
                before.silences_ms,
            )
            .await?,
            ..Pruned::default()
        };
        let mut tx = self.pool().begin().await.map_err(self.db())?;
        pruned.alert_deliveries = sqlx::query(
            "DELETE FROM alert_deliveries WHERE alert_id IN \
               (SELECT alert_id FROM alerts WHERE state = 'resolved' AND resolved_at_ms < $1)",
        )
        .bind(before.resolved_alerts_ms)
        .execute(&mut *tx)
        .await
        .map_err(self.db())?
        .rows_affected();
        pruned.resolved_alerts =
            sqlx::query("DELETE FROM alerts WHERE state = 'resolved' AND resolved_at_ms < $1")
                .bind(before.resolved_alerts_ms)
                .execute(&mut *tx)
                .await
                .map_err(self.db())?
                .rows_affected();
        tx.commit().await.map_err(self.db())?;
        Ok(pruned)
    }
}
