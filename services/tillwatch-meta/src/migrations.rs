//! Versioned schema migrations, the same SQL on SQLite and PostgreSQL.
//! Each runs in a transaction with its record in `schema_migrations`; on
//! PostgreSQL an advisory lock keeps two processes from migrating at once.

use sqlx::Row;

use crate::{Backend, MetaError, MetaStore, StoreFuture};

#[derive(Debug, Clone, Copy)]
pub struct Migration {
    pub version: i64,
    pub name: &'static str,
    pub sql: &'static str,
}

/// Every migration, oldest first. Never edit a released one.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "device_registry",
        sql: "
CREATE TABLE devices (
    device_id TEXT PRIMARY KEY,
    merchant_id TEXT NOT NULL,
    store_id TEXT,
    model TEXT,
    serial TEXT,
    firmware_version TEXT,
    app_version TEXT,
    time_zone TEXT,
    first_seen_ms BIGINT NOT NULL,
    last_seen_ms BIGINT,
    info_at_ms BIGINT
);
CREATE INDEX devices_by_store ON devices (merchant_id, store_id, device_id);
CREATE TABLE device_signals (
    device_id TEXT NOT NULL,
    signal TEXT NOT NULL,
    value DOUBLE PRECISION NOT NULL,
    sampled_at_ms BIGINT NOT NULL,
    PRIMARY KEY (device_id, signal)
);
",
    },
    Migration {
        version: 2,
        name: "connectivity",
        sql: "
CREATE TABLE device_connectivity (
    device_id TEXT PRIMARY KEY,
    state TEXT,
    since_ms BIGINT NOT NULL,
    boot_id BIGINT,
    last_telemetry_ms BIGINT,
    cadence_ms BIGINT
);
CREATE TABLE connectivity_history (
    device_id TEXT NOT NULL,
    at_ms BIGINT NOT NULL,
    from_state TEXT,
    to_state TEXT NOT NULL,
    PRIMARY KEY (device_id, at_ms, to_state)
);
",
    },
    Migration {
        version: 3,
        name: "alerts",
        sql: "
CREATE TABLE alerts (
    alert_id TEXT PRIMARY KEY,
    rule TEXT NOT NULL,
    subject TEXT NOT NULL,
    scope TEXT NOT NULL,
    severity TEXT NOT NULL,
    state TEXT NOT NULL,
    pending_since_ms BIGINT NOT NULL,
    fired_at_ms BIGINT,
    clearing_since_ms BIGINT,
    resolved_at_ms BIGINT,
    held_by TEXT,
    silenced_by TEXT,
    notify TEXT,
    labels TEXT NOT NULL,
    annotations TEXT NOT NULL,
    updated_at_ms BIGINT NOT NULL
);
CREATE UNIQUE INDEX alerts_one_open ON alerts (rule, subject) WHERE state <> 'resolved';
CREATE INDEX alerts_to_notify ON alerts (notify, updated_at_ms);
CREATE TABLE alert_deliveries (
    receiver TEXT NOT NULL,
    alert_id TEXT NOT NULL,
    delivered_state TEXT,
    delivered_at_ms BIGINT,
    attempts BIGINT NOT NULL,
    next_attempt_ms BIGINT NOT NULL,
    last_error TEXT,
    PRIMARY KEY (receiver, alert_id)
);
CREATE TABLE silences (
    silence_id TEXT PRIMARY KEY,
    matchers TEXT NOT NULL,
    starts_at_ms BIGINT NOT NULL,
    ends_at_ms BIGINT NOT NULL,
    created_by TEXT NOT NULL,
    comment TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL
);
CREATE TABLE stores (
    merchant_id TEXT NOT NULL,
    store_id TEXT NOT NULL,
    name TEXT,
    time_zone TEXT,
    hours TEXT,
    updated_at_ms BIGINT NOT NULL,
    PRIMARY KEY (merchant_id, store_id)
);
",
    },
    Migration {
        version: 4,
        name: "jobs",
        sql: "
CREATE TABLE job_partitions (
    job TEXT NOT NULL,
    partition_key TEXT NOT NULL,
    grain TEXT NOT NULL,
    start_ms BIGINT NOT NULL,
    status TEXT NOT NULL,
    attempts BIGINT NOT NULL,
    next_attempt_ms BIGINT,
    started_ms BIGINT,
    inputs_fingerprint TEXT,
    output_fingerprint TEXT,
    run_id TEXT,
    owner TEXT,
    lease_until_ms BIGINT,
    updated_at_ms BIGINT NOT NULL,
    PRIMARY KEY (job, partition_key)
);
CREATE TABLE job_runs (
    run_id TEXT PRIMARY KEY,
    job TEXT NOT NULL,
    partition_key TEXT NOT NULL,
    attempt BIGINT NOT NULL,
    reason TEXT NOT NULL,
    scheduler TEXT NOT NULL,
    started_ms BIGINT NOT NULL,
    finished_ms BIGINT,
    status TEXT NOT NULL,
    error TEXT,
    rows_written BIGINT,
    inputs TEXT NOT NULL,
    inputs_fingerprint TEXT NOT NULL,
    output_fingerprint TEXT
);
CREATE INDEX job_runs_by_partition ON job_runs (job, partition_key, started_ms);
",
    },
    Migration {
        version: 5,
        name: "job_requests",
        // A backfill or clear asks for a partition to run again: `forced_ms`
        // holds when, until a run claims it. A partition that never ran is
        // recorded as `queued`.
        sql: "
ALTER TABLE job_partitions ADD COLUMN forced_ms BIGINT;
",
    },
    Migration {
        version: 6,
        name: "merchants",
        // Merchant names, from the merchant directory source job; stores
        // already have their own table (migration 3).
        sql: "
CREATE TABLE merchants (
    merchant_id TEXT PRIMARY KEY,
    name TEXT,
    updated_at_ms BIGINT NOT NULL
);
CREATE INDEX stores_updated ON stores (updated_at_ms);
",
    },
    Migration {
        version: 7,
        name: "rollup_findings",
        // What each rule over the rollups found on the newest day it
        // evaluated (the whole set, replaced per evaluation), for the
        // alerter to raise and resolve alerts from.
        sql: "
CREATE TABLE rollup_evaluations (
    rule TEXT PRIMARY KEY,
    day_ms BIGINT NOT NULL,
    evaluated_at_ms BIGINT NOT NULL
);
CREATE TABLE rollup_findings (
    rule TEXT NOT NULL,
    subject TEXT NOT NULL,
    scope TEXT NOT NULL,
    labels TEXT NOT NULL,
    summary TEXT NOT NULL,
    value DOUBLE PRECISION NOT NULL,
    day_ms BIGINT NOT NULL,
    PRIMARY KEY (rule, subject)
);
",
    },
    Migration {
        version: 8,
        name: "connectivity_history_by_time",
        // The hourly rollup reads every device's state changes within an
        // hour (minutes online).
        sql: "
CREATE INDEX connectivity_history_by_time ON connectivity_history (at_ms);
",
    },
    Migration {
        version: 9,
        name: "alerts_by_subject",
        // The device page lists a terminal's alerts.
        sql: "
CREATE INDEX alerts_by_subject ON alerts (subject, updated_at_ms);
",
    },
    Migration {
        version: 10,
        name: "alerts_by_update",
        // The gRPC change stream follows alerts by their last change.
        sql: "
CREATE INDEX alerts_by_update ON alerts (updated_at_ms);
",
    },
    Migration {
        version: 11,
        name: "leases",
        // One holder at a time for a role that must not run twice (the
        // alerter): renewed while it runs, taken over when it lapses.
        sql: "
CREATE TABLE leases (
    name TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    until_ms BIGINT NOT NULL
);
",
    },
    Migration {
        version: 12,
        name: "device_attributes",
        // Each version of a terminal's identity (merchant, store, model,
        // serial, versions, time zone), valid from the time its info
        // message was stamped with until the next version: the rollups
        // attribute readings from it (tillwatch_domain::attribution). The
        // registry's current values start it. `first_sample_ms` is the
        // oldest reading's sample time (`first_seen_ms` counts info too):
        // with `last_seen_ms`, the span a terminal's readings may lie in.
        sql: "
CREATE TABLE device_attributes (
    device_id TEXT NOT NULL,
    valid_from_ms BIGINT NOT NULL,
    merchant_id TEXT NOT NULL,
    store_id TEXT,
    model TEXT,
    serial TEXT,
    firmware_version TEXT,
    app_version TEXT,
    time_zone TEXT,
    recorded_at_ms BIGINT NOT NULL,
    PRIMARY KEY (device_id, valid_from_ms)
);
INSERT INTO device_attributes (device_id, valid_from_ms, merchant_id, store_id, model, serial,
    firmware_version, app_version, time_zone, recorded_at_ms)
SELECT device_id, info_at_ms, merchant_id, store_id, model, serial, firmware_version,
    app_version, time_zone, info_at_ms
FROM devices WHERE info_at_ms IS NOT NULL;
ALTER TABLE devices ADD COLUMN first_sample_ms BIGINT;
UPDATE devices SET first_sample_ms = first_seen_ms WHERE last_seen_ms IS NOT NULL;
",
    },
    Migration {
        version: 13,
        name: "job_run_code",
        // The code fingerprint of the job each run ran (its declaration's
        // inputs and grain and its SQL): which code produced a partition.
        sql: "
ALTER TABLE job_runs ADD COLUMN code TEXT;
",
    },
    Migration {
        version: 14,
        name: "job_pauses_and_run_notes",
        // Jobs an operator paused: the scheduler starts none of their
        // partitions until they are resumed (who, when and why); and the
        // note on a run an operator recorded by hand (a partition marked
        // succeeded: who and why).
        sql: "
ALTER TABLE job_runs ADD COLUMN note TEXT;
CREATE TABLE job_pauses (
    job TEXT PRIMARY KEY,
    paused_at_ms BIGINT NOT NULL,
    paused_by TEXT NOT NULL,
    reason TEXT NOT NULL
);
",
    },
    Migration {
        version: 15,
        name: "job_run_messages",
        // What the engine said of a run (a declared job's plan, an
        // import's skipped rows), shown in the run's log.
        sql: "
ALTER TABLE job_runs ADD COLUMN messages TEXT;
",
    },
];

/// What a migration run did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationReport {
    pub applied: Vec<String>,
    pub already_applied: usize,
}

/// An arbitrary fixed key for PostgreSQL's advisory lock.
const LOCK_KEY: i64 = 0x7469_6c6c_7761_7463;

fn checksum(sql: &str) -> i64 {
    // FNV-1a: stable across builds and platforms.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in sql.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h as i64
}

impl MetaStore {
    /// Brings the schema up to date; safe to run again and from several
    /// processes at once.
    pub fn migrate(&self) -> StoreFuture<'_, MigrationReport> {
        Box::pin(async move {
            // Under the lock too: PostgreSQL's CREATE TABLE IF NOT EXISTS is
            // not safe against itself (two roles starting on a fresh
            // database at once failed on pg_type's unique index).
            let mut tx = self.pool().begin().await.map_err(self.db())?;
            if self.backend() == Backend::Postgres {
                sqlx::query("SELECT pg_advisory_xact_lock($1)")
                    .bind(LOCK_KEY)
                    .execute(&mut *tx)
                    .await
                    .map_err(self.db())?;
            }
            sqlx::query(
                "CREATE TABLE IF NOT EXISTS schema_migrations (\
               version BIGINT PRIMARY KEY, name TEXT NOT NULL, checksum BIGINT NOT NULL, \
               applied_at_ms BIGINT NOT NULL)",
            )
            .execute(&mut *tx)
            .await
            .map_err(self.db())?;
            tx.commit().await.map_err(self.db())?;
            let mut report = MigrationReport {
                applied: Vec::new(),
                already_applied: 0,
            };
            for m in MIGRATIONS {
                let mut tx = self.pool().begin().await.map_err(self.db())?;
                // Take the write lock before reading, so a second migrator
                // waits for the first instead of failing: an advisory lock
                // on PostgreSQL; on SQLite a write that changes nothing (a
                // read lock upgraded later would fail at once as "locked").
                let lock = match self.backend() {
                    Backend::Postgres => "SELECT pg_advisory_xact_lock($1)",
                    Backend::Sqlite => "DELETE FROM schema_migrations WHERE version = $1 AND 0 = 1",
                };
                sqlx::query(lock)
                    .bind(LOCK_KEY)
                    .execute(&mut *tx)
                    .await
                    .map_err(self.db())?;
                let recorded =
                    sqlx::query("SELECT checksum FROM schema_migrations WHERE version = $1")
                        .bind(m.version)
                        .fetch_optional(&mut *tx)
                        .await
                        .map_err(self.db())?;
                let label = format!("{:03}_{}", m.version, m.name);
                if let Some(row) = recorded {
                    let sum: i64 = row.try_get("checksum").map_err(self.db())?;
                    if sum != checksum(m.sql) {
                        return Err(MetaError::ChangedMigration {
                            url: self.shown_url().to_string(),
                            name: label,
                        });
                    }
                    report.already_applied += 1;
                    continue;
                }
                // One statement at a time: the same on both backends.
                for statement in m.sql.split(';').map(str::trim).filter(|s| !s.is_empty()) {
                    sqlx::query(statement)
                        .execute(&mut *tx)
                        .await
                        .map_err(self.db())?;
                }
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_millis() as i64)
                    .unwrap_or(0);
                sqlx::query(
                "INSERT INTO schema_migrations (version, name, checksum, applied_at_ms) VALUES ($1, $2, $3, $4)",
            )
            .bind(m.version)
            .bind(m.name)
            .bind(checksum(m.sql))
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(self.db())?;
                tx.commit().await.map_err(self.db())?;
                tracing::debug!(migration = %label, "metadata store migration applied");
                report.applied.push(label);
            }
            if let Some(newest) = report.applied.last() {
                tracing::info!(
                    applied = report.applied.len(),
                    newest = %newest,
                    "metadata store migrated"
                );
            }
            Ok(report)
        })
    }
}
