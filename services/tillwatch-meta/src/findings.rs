//! Findings of the rules over the daily rollups: per rule, the complete set
//! of subjects (terminals, cohorts) its newest evaluation flagged. The
//! scheduler writes them when a day's rollups complete; the alerter turns
//! them into alerts.

use std::collections::BTreeMap;

use sqlx::Row;

use crate::{MetaError, MetaStore};

/// One subject a rule flagged.
#[derive(Debug, Clone, PartialEq)]
pub struct FindingRecord {
    pub rule: String,
    /// A device id, or `cohort:<firmware>/<app>`.
    pub subject: String,
    /// `device` or `cohort`.
    pub scope: String,
    pub labels: BTreeMap<String, String>,
    pub summary: String,
    /// The figure that crossed the rule's line.
    pub value: f64,
    pub day_ms: i64,
}

/// A rule's newest evaluation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Evaluation {
    pub rule: String,
    pub day_ms: i64,
    pub evaluated_at_ms: i64,
}

impl MetaStore {
    /// Replaces `rule`'s findings with those of `day_ms`, unless a later day
    /// was already evaluated (a backfill of an old day does not undo what a
    /// newer one found). Returns whether they were saved.
    pub async fn save_findings(
        &self,
        rule: &str,
        day_ms: i64,
        evaluated_at_ms: i64,
        findings: &[FindingRecord],
    ) -> Result<bool, MetaError> {
        let mut tx = self.pool().begin().await.map_err(self.db())?;
        // Taking the evaluation row first serialises two schedulers.
        let updated = sqlx::query(
            "INSERT INTO rollup_evaluations (rule, day_ms, evaluated_at_ms) VALUES ($1, $2, $3) \
             ON CONFLICT (rule) DO UPDATE SET day_ms = excluded.day_ms, \
               evaluated_at_ms = excluded.evaluated_at_ms \
             WHERE rollup_evaluations.day_ms <= excluded.day_ms",
        )
        .bind(rule)
        .bind(day_ms)
        .bind(evaluated_at_ms)
        .execute(&mut *tx)
        .await
        .map_err(self.db())?
        .rows_affected();
        if updated == 0 {
            return Ok(false);
        }
        sqlx::query("DELETE FROM rollup_findings WHERE rule = $1")
            .bind(rule)
            .execute(&mut *tx)
            .await
            .map_err(self.db())?;
        for f in findings {
            sqlx::query(
                "INSERT INTO rollup_findings (rule, subject, scope, labels, summary, value, day_ms) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
            )
            .bind(rule)
            .bind(&f.subject)
            .bind(&f.scope)
            .bind(serde_json::to_string(&f.labels).expect("string map"))
            .bind(&f.summary)
            .bind(f.value)
            .bind(day_ms)
            .execute(&mut *tx)
            .await
            .map_err(self.db())?;
        }
        tx.commit().await.map_err(self.db())?;
        Ok(true)
    }

    /// Rules evaluated after `after_ms`.
    pub async fn evaluations_after(&self, after_ms: i64) -> Result<Vec<Evaluation>, MetaError> {
        self.all(
            sqlx::query(
                "SELECT rule, day_ms, evaluated_at_ms FROM rollup_evaluations \
             WHERE evaluated_at_ms > $1 ORDER BY rule",
            )
            .bind(after_ms),
            |r| {
                Ok(Evaluation {
                    rule: r.try_get("rule")?,
                    day_ms: r.try_get("day_ms")?,
                    evaluated_at_ms: r.try_get("evaluated_at_ms")?,
                })
            },
        )
        .await
    }

    /// What `rule`'s newest evaluation found.
    pub async fn findings(&self, rule: &str) -> Result<Vec<FindingRecord>, MetaError> {
        self.all(
            sqlx::query(
                "SELECT rule, subject, scope, labels, summary, value, day_ms FROM rollup_findings \
             WHERE rule = $1 ORDER BY subject",
            )
            .bind(rule),
            |r| {
                let labels: String = r.try_get("labels")?;
                Ok(FindingRecord {
                    rule: r.try_get("rule")?,
                    subject: r.try_get("subject")?,
                    scope: r.try_get("scope")?,
                    labels: serde_json::from_str(&labels)
                        .map_err(|e| sqlx::Error::Decode(Box::new(e)))?,
                    summary: r.try_get("summary")?,
                    value: r.try_get("value")?,
                    day_ms: r.try_get("day_ms")?,
                })
            },
        )
        .await
    }
}
