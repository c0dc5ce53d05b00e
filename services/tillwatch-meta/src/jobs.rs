//! The scheduler's state: one row per (job, partition) with its status and
//! fingerprints, and every run with what it read and wrote (the lineage).
//!
//! **Architecture Invariant:** a partition is run only by the scheduler
//! that claimed it. A claim is one conditional upsert: it succeeds only if
//! the row is as the claimer planned from (the same last run) and nobody
//! holds a live lease on it, so two schedulers on one database never run
//! the same partition twice.

use sqlx::Row;

use crate::{MetaError, MetaStore};

/// One partition of one job, as recorded.
#[derive(Debug, Clone, PartialEq)]
pub struct JobPartitionRow {
    pub job: String,
    pub partition_key: String,
    pub grain: String,
    pub start_ms: i64,
    /// running, succeeded or failed.
    pub status: String,
    pub attempts: i64,
    pub next_attempt_ms: Option<i64>,
    pub started_ms: Option<i64>,
    pub inputs_fingerprint: Option<String>,
    pub output_fingerprint: Option<String>,
    pub run_id: Option<String>,
    pub owner: Option<String>,
    pub lease_until_ms: Option<i64>,
    /// A backfill or clear asked for it to run again, at this time; cleared
    /// when a run claims it.
    pub forced_ms: Option<i64>,
    /// The code fingerprint of its last run (see [`JobRunRow::code`]).
    pub code: Option<String>,
}

/// One attempt at one partition.
#[derive(Debug, Clone, PartialEq)]
pub struct JobRunRow {
    pub run_id: String,
    pub job: String,
    pub partition_key: String,
    pub attempt: i64,
    /// scheduled, retry, timed_out, stale, forced.
    pub reason: String,
    pub scheduler: String,
    pub started_ms: i64,
    pub finished_ms: Option<i64>,
    /// running, succeeded or failed.
    pub status: String,
    pub error: Option<String>,
    pub rows_written: Option<i64>,
    /// JSON: the input partitions read, each with its fingerprint.
    pub inputs: String,
    pub inputs_fingerprint: String,
    pub output_fingerprint: Option<String>,
    /// The fingerprint of the job's code the run ran (`None` for runs
    /// recorded before the store kept it).
    pub code: Option<String>,
    /// What an operator said of a run recorded by hand (a partition marked
    /// succeeded: who and why).
    pub note: Option<String>,
    /// What the engine said of a finished run, a line each (the plan a
    /// declared job's SQL ran with, an import's skipped rows).
    pub messages: Option<String>,
}

/// One input partition a run read, from [`JobRunRow::inputs`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RunInput {
    /// The raw table read, for a source input.
    pub source: Option<String>,
    /// The upstream job, for a job input.
    pub job: Option<String>,
    pub partition: String,
    /// Empty for an input partition that held nothing.
    pub fingerprint: String,
}

impl JobRunRow {
    /// The input partitions the run read (none when the record cannot be
    /// read: it is shown, never trusted for scheduling).
    pub fn input_list(&self) -> Vec<RunInput> {
        let Ok(items) = serde_json::from_str::<Vec<serde_json::Value>>(&self.inputs) else {
            return Vec::new();
        };
        let text = |v: &serde_json::Value, key: &str| v[key].as_str().map(str::to_string);
        items
            .iter()
            .map(|v| RunInput {
                source: text(v, "source"),
                job: text(v, "job"),
                partition: text(v, "partition").unwrap_or_default(),
                fingerprint: text(v, "fingerprint").unwrap_or_default(),
            })
            .collect()
    }
}

/// A claim on a partition, to start a run.
#[derive(Debug, Clone)]
pub struct Claim<'a> {
    pub job: &'a str,
    pub partition_key: &'a str,
    pub grain: &'a str,
    pub start_ms: i64,
    /// The run the claimer saw last on this partition (`None`: none).
    pub expected_run_id: Option<&'a str>,
    pub run: &'a JobRunRow,
    pub lease_until_ms: i64,
}

const PARTITION_COLUMNS: &str = "job, partition_key, grain, start_ms, status, attempts, \
     next_attempt_ms, started_ms, inputs_fingerprint, output_fingerprint, run_id, owner, lease_until_ms, \
     forced_ms";
const RUN_COLUMNS: &str = "run_id, job, partition_key, attempt, reason, scheduler, started_ms, \
     finished_ms, status, error, rows_written, inputs, inputs_fingerprint, output_fingerprint, code, note, messages";

fn partition_from_row(r: &sqlx::any::AnyRow) -> Result<JobPartitionRow, sqlx::Error> {
    Ok(JobPartitionRow {
        job: r.try_get("job")?,
        partition_key: r.try_get("partition_key")?,
        grain: r.try_get("grain")?,
        start_ms: r.try_get("start_ms")?,
        status: r.try_get("status")?,
        attempts: r.try_get("attempts")?,
        next_attempt_ms: r.try_get("next_attempt_ms")?,
        started_ms: r.try_get("started_ms")?,
        inputs_fingerprint: r.try_get("inputs_fingerprint")?,
        output_fingerprint: r.try_get("output_fingerprint")?,
        run_id: r.try_get("run_id")?,
        owner: r.try_get("owner")?,
        lease_until_ms: r.try_get("lease_until_ms")?,
        forced_ms: r.try_get("forced_ms")?,
        code: r.try_get("code")?,
    })
}

fn run_from_row(r: &sqlx::any::AnyRow) -> Result<JobRunRow, sqlx::Error> {
    Ok(JobRunRow {
        run_id: r.try_get("run_id")?,
        job: r.try_get("job")?,
        partition_key: r.try_get("partition_key")?,
        attempt: r.try_get("attempt")?,
        reason: r.try_get("reason")?,
        scheduler: r.try_get("scheduler")?,
        started_ms: r.try_get("started_ms")?,
        finished_ms: r.try_get("finished_ms")?,
        status: r.try_get("status")?,
        error: r.try_get("error")?,
        rows_written: r.try_get("rows_written")?,
        inputs: r.try_get("inputs")?,
        inputs_fingerprint: r.try_get("inputs_fingerprint")?,
        output_fingerprint: r.try_get("output_fingerprint")?,
        code: r.try_get("code")?,
        note: r.try_get("note")?,
        messages: r.try_get("messages")?,
    })
}

/// A paused job: who paused it, when and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobPause {
    pub job: String,
    pub paused_at_ms: i64,
    pub paused_by: String,
    pub reason: String,
}

impl MetaStore {
    /// Every recorded partition (of every job).
    pub async fn job_partitions(&self) -> Result<Vec<JobPartitionRow>, MetaError> {
        self.all(
            sqlx::query(&format!(
                "SELECT {PARTITION_COLUMNS}, (SELECT r.code FROM job_runs r \
                   WHERE r.run_id = job_partitions.run_id) AS code \
                 FROM job_partitions ORDER BY job, start_ms"
            )),
            partition_from_row,
        )
        .await
    }

    /// Claims a partition and records its run as started, in one
    /// transaction; false when another scheduler got there first (or the
    /// partition changed since it was planned).
    pub fn claim_partition<'a>(&'a self, claim: &'a Claim<'a>) -> crate::StoreFuture<'a, bool> {
        Box::pin(async move {
            let mut tx = self.pool().begin().await.map_err(self.db())?;
            let run = claim.run;
            let done = sqlx::query(
                "INSERT INTO job_partitions (job, partition_key, grain, start_ms, status, attempts, \
                 next_attempt_ms, started_ms, inputs_fingerprint, output_fingerprint, run_id, owner, \
                 lease_until_ms, updated_at_ms) \
                 VALUES ($1, $2, $3, $4, 'running', $5, NULL, $6, $7, NULL, $8, $9, $10, $6) \
                 ON CONFLICT (job, partition_key) DO UPDATE SET status = 'running', \
                   attempts = excluded.attempts, next_attempt_ms = NULL, started_ms = excluded.started_ms, \
                   inputs_fingerprint = excluded.inputs_fingerprint, run_id = excluded.run_id, \
                   owner = excluded.owner, lease_until_ms = excluded.lease_until_ms, \
                   forced_ms = NULL, updated_at_ms = excluded.updated_at_ms \
                 WHERE COALESCE(job_partitions.run_id, '') = $11 \
                   AND (job_partitions.status <> 'running' OR job_partitions.lease_until_ms < $6)",
            )
            .bind(claim.job)
            .bind(claim.partition_key)
            .bind(claim.grain)
            .bind(claim.start_ms)
            .bind(run.attempt)
            .bind(run.started_ms)
            .bind(&run.inputs_fingerprint)
            .bind(&run.run_id)
            .bind(&run.scheduler)
            .bind(claim.lease_until_ms)
            .bind(claim.expected_run_id.unwrap_or(""))
            .execute(&mut *tx)
            .await
            .map_err(self.db())?;
            if done.rows_affected() != 1 {
                return Ok(false);
            }
            if let Some(previous) = claim.expected_run_id {
                // Taken over from a scheduler that stopped renewing its
                // claim: its run will never report.
                sqlx::query(
                    "UPDATE job_runs SET status = 'abandoned', finished_ms = $2, \
                       error = 'its scheduler stopped renewing the claim' \
                     WHERE run_id = $1 AND status = 'running'",
                )
                .bind(previous)
                .bind(run.started_ms)
                .execute(&mut *tx)
                .await
                .map_err(self.db())?;
            }
            self.insert_run(&mut tx, run).await?;
            tx.commit().await.map_err(self.db())?;
            Ok(true)
        })
    }

    /// Extends the claims of these running runs to `until_ms`; returns the
    /// runs whose claim is gone (another scheduler took the partition
    /// over, or it was finished).
    pub fn renew_leases<'a>(
        &'a self,
        run_ids: &'a [String],
        until_ms: i64,
    ) -> crate::StoreFuture<'a, Vec<String>> {
        Box::pin(async move {
            let mut lost = Vec::new();
            let mut tx = self.pool().begin().await.map_err(self.db())?;
            for run_id in run_ids {
                let done = sqlx::query(
                    "UPDATE job_partitions SET lease_until_ms = $2 \
                     WHERE run_id = $1 AND status = 'running'",
                )
                .bind(run_id)
                .bind(until_ms)
                .execute(&mut *tx)
                .await
                .map_err(self.db())?;
                if done.rows_affected() != 1 {
                    lost.push(run_id.clone());
                }
            }
            tx.commit().await.map_err(self.db())?;
            Ok(lost)
        })
    }

    async fn insert_run(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
        run: &JobRunRow,
    ) -> Result<(), MetaError> {
        sqlx::query(&format!(
            "INSERT INTO job_runs ({RUN_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)"
        ))
        .bind(&run.run_id)
        .bind(&run.job)
        .bind(&run.partition_key)
        .bind(run.attempt)
        .bind(&run.reason)
        .bind(&run.scheduler)
        .bind(run.started_ms)
        .bind(run.finished_ms)
        .bind(&run.status)
        .bind(run.error.clone())
        .bind(run.rows_written)
        .bind(&run.inputs)
        .bind(&run.inputs_fingerprint)
        .bind(run.output_fingerprint.clone())
        .bind(run.code.clone())
        .bind(run.note.clone())
        .bind(run.messages.clone())
        .execute(&mut **tx)
        .await
        .map_err(self.db())?;
        Ok(())
    }

    /// Records how a claimed run ended: `Ok((rows, output fingerprint,
    /// the engine's messages))` or `Err((error, when to retry))`. False if
    /// the claim was lost meanwhile (its lease expired and another
    /// scheduler took the partition).
    pub fn finish_run<'a>(
        &'a self,
        run_id: &'a str,
        finished_ms: i64,
        outcome: Result<(i64, &'a str, String), (&'a str, Option<i64>)>,
    ) -> crate::StoreFuture<'a, bool> {
        Box::pin(async move {
            let mut tx = self.pool().begin().await.map_err(self.db())?;
            let (status, rows, output, error, retry_at, messages) = match outcome {
                Ok((rows, output, messages)) => (
                    "succeeded",
                    Some(rows),
                    Some(output),
                    None,
                    None,
                    Some(messages).filter(|m| !m.is_empty()),
                ),
                Err((error, retry_at)) => ("failed", None, None, Some(error), retry_at, None),
            };
            let done = sqlx::query(
                "UPDATE job_partitions SET status = $2, next_attempt_ms = $3, \
                   output_fingerprint = CASE WHEN $2 = 'succeeded' THEN $4 ELSE output_fingerprint END, \
                   lease_until_ms = NULL, updated_at_ms = $5 \
                 WHERE run_id = $1 AND status = 'running'",
            )
            .bind(run_id)
            .bind(status)
            .bind(retry_at)
            .bind(output.map(str::to_string))
            .bind(finished_ms)
            .execute(&mut *tx)
            .await
            .map_err(self.db())?;
            sqlx::query(
                "UPDATE job_runs SET status = $2, finished_ms = $3, rows_written = $4, \
                   output_fingerprint = $5, error = $6, messages = $7 WHERE run_id = $1",
            )
            .bind(run_id)
            .bind(if done.rows_affected() == 1 {
                status
            } else {
                "abandoned"
            })
            .bind(finished_ms)
            .bind(rows)
            .bind(output.map(str::to_string))
            .bind(error.map(str::to_string))
            .bind(messages)
            .execute(&mut *tx)
            .await
            .map_err(self.db())?;
            tx.commit().await.map_err(self.db())?;
            Ok(done.rows_affected() == 1)
        })
    }

    /// Asks for partitions to run again (a backfill or a clear): each is
    /// marked with `at_ms`; one that never ran is recorded as `queued`. A
    /// running partition keeps running and runs once more after it.
    pub async fn request_runs(
        &self,
        partitions: &[(&str, &str, &str, i64)],
        at_ms: i64,
    ) -> Result<(), MetaError> {
        let mut tx = self.pool().begin().await.map_err(self.db())?;
        for (job, key, grain, start_ms) in partitions {
            sqlx::query(
                "INSERT INTO job_partitions (job, partition_key, grain, start_ms, status, attempts, \
                 forced_ms, updated_at_ms) VALUES ($1, $2, $3, $4, 'queued', 0, $5, $5) \
                 ON CONFLICT (job, partition_key) DO UPDATE SET forced_ms = excluded.forced_ms, \
                   updated_at_ms = excluded.updated_at_ms",
            )
            .bind(*job)
            .bind(*key)
            .bind(*grain)
            .bind(*start_ms)
            .bind(at_ms)
            .execute(&mut *tx)
            .await
            .map_err(self.db())?;
        }
        tx.commit().await.map_err(self.db())?;
        Ok(())
    }

    /// Pauses `job`: the scheduler starts none of its partitions until it
    /// is resumed. Pausing a paused job keeps the first pause.
    pub async fn pause_job(&self, pause: &JobPause) -> Result<bool, MetaError> {
        let done = sqlx::query(
            "INSERT INTO job_pauses (job, paused_at_ms, paused_by, reason) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (job) DO NOTHING",
        )
        .bind(&pause.job)
        .bind(pause.paused_at_ms)
        .bind(&pause.paused_by)
        .bind(&pause.reason)
        .execute(self.pool())
        .await
        .map_err(self.db())?;
        Ok(done.rows_affected() == 1)
    }

    /// Resumes `job`; whether it was paused.
    pub async fn resume_job(&self, job: &str) -> Result<bool, MetaError> {
        let done = sqlx::query("DELETE FROM job_pauses WHERE job = $1")
            .bind(job)
            .execute(self.pool())
            .await
            .map_err(self.db())?;
        Ok(done.rows_affected() == 1)
    }

    /// The paused jobs, by name.
    pub async fn paused_jobs(&self) -> Result<Vec<JobPause>, MetaError> {
        self.all(
            sqlx::query("SELECT job, paused_at_ms, paused_by, reason FROM job_pauses ORDER BY job"),
            |row| {
                Ok(JobPause {
                    job: row.try_get("job")?,
                    paused_at_ms: row.try_get("paused_at_ms")?,
                    paused_by: row.try_get("paused_by")?,
                    reason: row.try_get("reason")?,
                })
            },
        )
        .await
    }

    /// One run by its id.
    pub async fn job_run(&self, run_id: &str) -> Result<Option<JobRunRow>, MetaError> {
        let row = sqlx::query(&format!(
            "SELECT {RUN_COLUMNS} FROM job_runs WHERE run_id = $1"
        ))
        .bind(run_id)
        .fetch_optional(self.pool())
        .await
        .map_err(self.db())?;
        row.as_ref()
            .map(run_from_row)
            .transpose()
            .map_err(self.db())
    }

    /// Runs, newest first; of one job and partition when given.
    pub async fn job_runs(
        &self,
        job: Option<&str>,
        partition_key: Option<&str>,
        limit: u32,
    ) -> Result<Vec<JobRunRow>, MetaError> {
        self.all(
            sqlx::query(&format!(
                "SELECT {RUN_COLUMNS} FROM job_runs WHERE ($1 IS NULL OR job = $1) \
             AND ($2 IS NULL OR partition_key = $2) ORDER BY started_ms DESC, run_id LIMIT $3"
            ))
            .bind(job.map(str::to_string))
            .bind(partition_key.map(str::to_string))
            .bind(i64::from(limit)),
            run_from_row,
        )
        .await
    }
}
