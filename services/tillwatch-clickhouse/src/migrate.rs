//! `tillwatch migrate`: applies the storage crate's DDL files in order and
//! records each in `schema_migrations`, so running it again changes nothing.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;
use tillwatch_storage::clickhouse_ddl::{MIGRATIONS, ServerVersion, quote_ident, rows_table};
use tracing::info;

use crate::client::{ChError, ClickHouse, ErrorClass};

/// What one run did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationReport {
    pub server_version: ServerVersion,
    pub created_database: bool,
    /// `NNN_name` of each file applied by this run.
    pub applied: Vec<String>,
    /// Files found already applied.
    pub already_applied: usize,
    /// What was done about the raw rows' retention (`clickhouse.retention`,
    /// else `retention.raw`), when there is one.
    pub retention: Option<String>,
}

impl std::fmt::Display for MigrationReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ClickHouse {}: ", self.server_version)?;
        if self.created_database {
            write!(f, "created the database; ")?;
        }
        if self.applied.is_empty() {
            write!(f, "schema up to date ({} migrations)", self.already_applied)?;
        } else {
            write!(
                f,
                "applied {} ({} were already applied)",
                self.applied.join(", "),
                self.already_applied
            )?;
        }
        if let Some(r) = &self.retention {
            write!(f, "; {r}")?;
        }
        Ok(())
    }
}

#[derive(Debug, Deserialize, clickhouse::Row)]
struct AppliedRow {
    version: u32,
    checksum: String,
}

const BOOKKEEPING: &str = "schema_migrations";

/// ` ON CLUSTER <name>` when the schema is laid out on a cluster.
fn on_cluster(ch: &ClickHouse) -> String {
    ch.settings()
        .cluster
        .as_deref()
        .map(|c| format!(" ON CLUSTER {}", quote_ident(c)))
        .unwrap_or_default()
}

async fn ensure_bookkeeping(ch: &ClickHouse) -> Result<(), ChError> {
    ch.execute(&format!(
        "CREATE TABLE IF NOT EXISTS {}{} (version UInt32, name String, checksum String, \
         server_version String, applied_at DateTime) ENGINE = MergeTree() ORDER BY version",
        ch.table(BOOKKEEPING),
        on_cluster(ch)
    ))
    .await
}

async fn applied(ch: &ClickHouse) -> Result<BTreeMap<u32, String>, ChError> {
    let exists: u64 = ch
        .client()
        .query("SELECT count() FROM system.tables WHERE database = ? AND name = ?")
        .bind(ch.database())
        .bind(BOOKKEEPING)
        .fetch_one()
        .await
        .map_err(|e| ch.error(&e))?;
    if exists == 0 {
        return Ok(BTreeMap::new());
    }
    let rows: Vec<AppliedRow> = ch
        .client()
        .query(&format!(
            "SELECT version, any(checksum) AS checksum FROM {} GROUP BY version",
            ch.table(BOOKKEEPING)
        ))
        .fetch_all()
        .await
        .map_err(|e| ch.error(&e))?;
    Ok(rows.into_iter().map(|r| (r.version, r.checksum)).collect())
}

/// Versions recorded as applied.
pub async fn applied_versions(ch: &ClickHouse) -> Result<Vec<u32>, ChError> {
    Ok(applied(ch).await?.into_keys().collect())
}

fn retention_days(retention: Duration) -> u64 {
    retention.as_secs().div_ceil(86_400).max(1)
}

/// The statements that make ClickHouse drop raw rows older than
/// `retention` (whole days, rounded up) by itself: a table TTL on each
/// raw table (the local tables under a cluster), for servers from 19.6.
pub fn ttl_statements(database: &str, cluster: Option<&str>, retention: Duration) -> Vec<String> {
    let days = retention_days(retention);
    let on = cluster
        .map(|c| format!(" ON CLUSTER {}", quote_ident(c)))
        .unwrap_or_default();
    crate::RAW_TABLES_WITH_TIME
        .iter()
        .map(|(table, column)| {
            format!(
                "ALTER TABLE {}.{}{on} MODIFY TTL {column} + INTERVAL {days} DAY",
                quote_ident(database),
                quote_ident(&rows_table(table, cluster))
            )
        })
        .collect()
}

/// Brings the database up to the newest schema. Safe to run any number of
/// times, and concurrently with running gateways.
pub async fn migrate(
    ch: &ClickHouse,
    retention: Option<Duration>,
) -> Result<MigrationReport, ChError> {
    let server_version = ch.server_version().await?;
    let features = server_version.features();
    let created_database = !ch.database_exists().await?;
    if created_database {
        ch.execute(&format!(
            "CREATE DATABASE IF NOT EXISTS {}{}",
            quote_ident(ch.database()),
            on_cluster(ch)
        ))
        .await?;
        info!(database = ch.database(), "created the ClickHouse database");
    }
    ensure_bookkeeping(ch).await?;
    let done = applied(ch).await?;
    let mut report = MigrationReport {
        server_version,
        created_database,
        applied: Vec::new(),
        already_applied: 0,
        retention: None,
    };
    for m in MIGRATIONS {
        let label = format!("{:03}_{}", m.version, m.name);
        if let Some(recorded) = done.get(&m.version) {
            if *recorded != m.checksum() {
                return Err(ChError {
                    class: ErrorClass::Schema,
                    url: ch.settings().url.clone(),
                    message: format!(
                        "migration {label} was changed after it was applied (recorded checksum {recorded}, file {}); \
                         released migrations must not change: add a new file instead",
                        m.checksum()
                    ),
                });
            }
            report.already_applied += 1;
            continue;
        }
        let statements = m
            .statements(ch.database(), features, ch.settings().cluster.as_deref())
            .map_err(|e| ChError {
                class: ErrorClass::Schema,
                url: ch.settings().url.clone(),
                message: e.to_string(),
            })?;
        for statement in statements {
            ch.execute(&statement).await?;
        }
        ch.client()
            .query(&format!(
                "INSERT INTO {} (version, name, checksum, server_version, applied_at) VALUES (?, ?, ?, ?, now())",
                ch.table(BOOKKEEPING)
            ))
            .bind(m.version)
            .bind(m.name)
            .bind(m.checksum())
            .bind(server_version.to_string())
            .execute()
            .await
            .map_err(|e| ch.error(&e))?;
        info!(migration = %label, "applied");
        report.applied.push(label);
    }
    if let Some(retention) = retention {
        let days = retention_days(retention);
        if features.ttl {
            for statement in
                ttl_statements(ch.database(), ch.settings().cluster.as_deref(), retention)
            {
                ch.execute(&statement).await?;
            }
            report.retention = Some(format!("raw rows kept for {days} days (TTL)"));
        } else {
            report.retention = Some(format!(
                "raw rows would be kept for {days} days (clickhouse.retention, else retention.raw), \
                 but ClickHouse {server_version} has no TTL (19.6+): they are kept until dropped \
                 by hand (ALTER TABLE … DROP PARTITION)"
            ));
        }
    }
    Ok(report)
}
