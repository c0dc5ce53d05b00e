//! The metadata store: what Tillwatch knows about each terminal now (the
//! device registry and the newest value of each signal), on SQLite for
//! standalone mode or PostgreSQL in production, through one API.
//!
//! Both backends run the same SQL (`$N` placeholders, `INSERT … ON CONFLICT`,
//! integers for times and flags), and the same tests run on both.
//!
//! **Architecture Invariant:** activity is telemetry. `last_seen_ms` moves
//! only with readings, never with info or status messages, so a terminal
//! whose app died behind a live socket is not "seen".

mod alerts;
mod attributes;
mod batch;
mod connectivity;
mod findings;
mod jobs;
mod leases;
mod migrations;
mod retention;
pub mod testing;

use std::time::Duration;

use sqlx::any::{AnyPoolOptions, install_default_drivers};
use sqlx::{AnyPool, Row};
use tillwatch_domain::{DeviceInfo, MerchantId, Reading};

pub use alerts::{
    AlertFilter, AlertRecord, AlertState, Delivery, MerchantRecord, NOTIFY_LABEL, SilenceRecord,
    StoreRecord,
};
pub use attributes::{AttributeVersion, AttributionInputs};
pub use batch::StateBatch;
pub use connectivity::{DeviceFacts, HistoryEntry, OnlineTime};
pub use findings::{Evaluation, FindingRecord};
pub use jobs::{Claim, JobPartitionRow, JobPause, JobRunRow, RunInput};
pub use migrations::{MIGRATIONS, Migration, MigrationReport};
pub use retention::{PruneBefore, Pruned};

#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    #[error(
        "metadata store URL {0:?}: expected sqlite://PATH or postgres://USER@HOST:PORT/DATABASE"
    )]
    BadUrl(String),
    #[error("metadata store {url}: {source}")]
    Db {
        url: String,
        #[source]
        source: sqlx::Error,
    },
    #[error(
        "metadata store {url}: migration {name} was changed after it was applied; add a new one instead"
    )]
    ChangedMigration { url: String, name: String },
    #[error("data_dir {}: {source}", path.display())]
    DataDir {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl MetaError {
    /// The store refused this write for what it holds (a unique, foreign
    /// key, not-null or check constraint it breaks), as opposed to failing
    /// to take it: the same write fails the same way on every retry, so a
    /// caller that retries must set it aside instead.
    pub fn is_refusal(&self) -> bool {
        match self {
            MetaError::Db {
                source: sqlx::Error::Database(e),
                ..
            } => !matches!(e.kind(), sqlx::error::ErrorKind::Other),
            _ => false,
        }
    }
}

/// The future of a store call that runs a transaction, boxed as `Send`:
/// sqlx's transaction futures are `Send`, but the compiler cannot prove it
/// through its higher-ranked executor bounds once they are spawned; boxing
/// at a concrete lifetime settles it.
pub type StoreFuture<'a, T> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<T, MetaError>> + Send + 'a>>;

/// Which database a store runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    pub fn of_url(url: &str) -> Option<Backend> {
        if url.starts_with("sqlite:") {
            Some(Backend::Sqlite)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Some(Backend::Postgres)
        } else {
            None
        }
    }
}

/// A connection pool to the metadata store.
#[derive(Debug, Clone)]
pub struct MetaStore {
    pool: AnyPool,
    backend: Backend,
    /// The URL without its password, for messages.
    shown_url: String,
}

/// One terminal as the registry knows it.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceRecord {
    pub device_id: String,
    pub merchant_id: String,
    pub store_id: Option<String>,
    pub model: Option<String>,
    pub serial: Option<String>,
    pub firmware_version: Option<String>,
    pub app_version: Option<String>,
    pub time_zone: Option<String>,
    /// First reading or info message.
    pub first_seen_ms: i64,
    /// Newest reading's sample time; `None` until a reading arrives.
    pub last_seen_ms: Option<i64>,
    /// When the info message held here was published.
    pub info_at_ms: Option<i64>,
}

/// The newest value of one signal of one device.
#[derive(Debug, Clone, PartialEq)]
pub struct LatestSignal {
    pub signal: String,
    pub value: f64,
    pub sampled_at_ms: i64,
}

pub use tillwatch_config::without_password;

const DEVICE_COLUMNS: &str = "device_id, merchant_id, store_id, model, serial, firmware_version, \
     app_version, time_zone, first_seen_ms, last_seen_ms, info_at_ms";

fn latest_signal(r: &sqlx::any::AnyRow) -> Result<LatestSignal, sqlx::Error> {
    Ok(LatestSignal {
        signal: r.try_get("signal")?,
        value: r.try_get("value")?,
        sampled_at_ms: r.try_get("sampled_at_ms")?,
    })
}

fn device_from_row(row: &sqlx::any::AnyRow) -> Result<DeviceRecord, sqlx::Error> {
    Ok(DeviceRecord {
        device_id: row.try_get("device_id")?,
        merchant_id: row.try_get("merchant_id")?,
        store_id: row.try_get("store_id")?,
        model: row.try_get("model")?,
        serial: row.try_get("serial")?,
        firmware_version: row.try_get("firmware_version")?,
        app_version: row.try_get("app_version")?,
        time_zone: row.try_get("time_zone")?,
        first_seen_ms: row.try_get("first_seen_ms")?,
        last_seen_ms: row.try_get("last_seen_ms")?,
        info_at_ms: row.try_get("info_at_ms")?,
    })
}

impl MetaStore {
    /// Connects to `sqlite://PATH` (created if missing) or `postgres://…`.
    /// The configured store, migrated: the one way a process opens it, so
    /// the roles of one process share one pool (for the default SQLite
    /// file, its directory is made first).
    pub async fn open(config: &tillwatch_config::Config) -> Result<MetaStore, MetaError> {
        let url = config.metadata_url();
        if url.starts_with("sqlite:") {
            std::fs::create_dir_all(&config.data_dir).map_err(|source| MetaError::DataDir {
                path: config.data_dir.clone(),
                source,
            })?;
        }
        let store = MetaStore::connect(&url).await?;
        store.migrate().await?;
        Ok(store)
    }

    pub async fn connect(url: &str) -> Result<MetaStore, MetaError> {
        let backend = Backend::of_url(url).ok_or_else(|| MetaError::BadUrl(url.to_string()))?;
        install_default_drivers();
        let shown_url = without_password(url);
        let connect_url = match backend {
            Backend::Sqlite if !url.contains('?') => format!("{url}?mode=rwc"),
            _ => url.to_string(),
        };
        let options = AnyPoolOptions::new().acquire_timeout(Duration::from_secs(10));
        // SQLite takes one writer at a time: one connection avoids "database
        // is locked" without retry loops; WAL lets readers elsewhere go on.
        let options = match backend {
            Backend::Sqlite => options.max_connections(1).after_connect(|conn, _| {
                Box::pin(async move {
                    // The busy timeout first: switching to WAL waits too.
                    for pragma in [
                        "PRAGMA busy_timeout = 5000",
                        "PRAGMA journal_mode = WAL",
                        "PRAGMA synchronous = NORMAL",
                    ] {
                        sqlx::query(pragma).execute(&mut *conn).await?;
                    }
                    Ok(())
                })
            }),
            Backend::Postgres => options.max_connections(8),
        };
        let pool = options
            .connect(&connect_url)
            .await
            .map_err(|source| MetaError::Db {
                url: shown_url.clone(),
                source,
            })?;
        Ok(MetaStore {
            pool,
            backend,
            shown_url,
        })
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    pub(crate) fn db(&self) -> impl FnOnce(sqlx::Error) -> MetaError + '_ {
        move |source| MetaError::Db {
            url: self.shown_url.clone(),
            source,
        }
    }

    /// Runs `query` and reads every row it returns with `row`: how every
    /// list is read from the store.
    pub(crate) async fn all<'q, T, C: FromIterator<T>>(
        &self,
        query: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>,
        row: impl Fn(&sqlx::any::AnyRow) -> Result<T, sqlx::Error>,
    ) -> Result<C, MetaError> {
        let rows = query.fetch_all(self.pool()).await.map_err(self.db())?;
        rows.iter()
            .map(row)
            .collect::<Result<_, _>>()
            .map_err(self.db())
    }

    /// Runs `query` for each item, all in one transaction.
    pub(crate) async fn execute_each<'q, T: Sync>(
        &self,
        items: &'q [T],
        query: impl Fn(&'q T) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>,
    ) -> Result<(), MetaError> {
        let mut tx = self.pool().begin().await.map_err(self.db())?;
        for item in items {
            query(item).execute(&mut *tx).await.map_err(self.db())?;
        }
        tx.commit().await.map_err(self.db())
    }

    pub(crate) fn pool(&self) -> &AnyPool {
        &self.pool
    }

    pub(crate) fn shown_url(&self) -> &str {
        &self.shown_url
    }

    /// Keeps a device's info message: model, serial, versions, merchant,
    /// store, time zone. An info message older than the one held is ignored
    /// (retained messages arrive again after every reconnect).
    /// The version it describes joins the terminal's attribute history
    /// (see [`MetaStore::attribute_history`]).
    pub async fn record_info(&self, info: &DeviceInfo) -> Result<(), MetaError> {
        let mut batch = StateBatch::default();
        batch.info(info);
        self.record_batch(&batch).await
    }

    pub(crate) fn info_statement<'q>(
        &self,
        info: &'q DeviceInfo,
    ) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>> {
        sqlx::query(
            "INSERT INTO devices (device_id, merchant_id, store_id, model, serial, firmware_version, \
             app_version, time_zone, first_seen_ms, last_seen_ms, info_at_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, NULL, $9) \
             ON CONFLICT (device_id) DO UPDATE SET \
               merchant_id = excluded.merchant_id, store_id = excluded.store_id, \
               model = excluded.model, serial = excluded.serial, \
               firmware_version = excluded.firmware_version, app_version = excluded.app_version, \
               time_zone = excluded.time_zone, info_at_ms = excluded.info_at_ms, \
               first_seen_ms = CASE WHEN excluded.first_seen_ms < devices.first_seen_ms \
                 THEN excluded.first_seen_ms ELSE devices.first_seen_ms END \
             WHERE devices.info_at_ms IS NULL OR devices.info_at_ms <= excluded.info_at_ms",
        )
        .bind(info.device_id.as_str())
        .bind(info.merchant_id.as_str())
        .bind(info.store_id.as_ref().map(|s| s.as_str().to_string()))
        .bind(&info.model)
        .bind(&info.serial)
        .bind(&info.firmware_version)
        .bind(&info.app_version)
        .bind((!info.time_zone.is_empty()).then(|| info.time_zone.clone()))
        .bind(info.at.0)
    }

    /// Records readings of one merchant's devices in one transaction: each
    /// device is registered on first sight and its `last_seen_ms` moves to
    /// its newest sample; each signal keeps its newest value (a late
    /// reading never overwrites a newer one).
    pub fn record_readings<'a>(
        &'a self,
        merchant_id: &'a MerchantId,
        readings: &'a [Reading],
    ) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let mut batch = StateBatch::default();
            batch.readings(merchant_id, readings);
            self.record_batch(&batch).await
        })
    }

    pub async fn device(&self, device_id: &str) -> Result<Option<DeviceRecord>, MetaError> {
        let row = sqlx::query(&format!(
            "SELECT {DEVICE_COLUMNS} FROM devices WHERE device_id = $1"
        ))
        .bind(device_id)
        .fetch_optional(&self.pool)
        .await
        .map_err(self.db())?;
        row.as_ref()
            .map(device_from_row)
            .transpose()
            .map_err(self.db())
    }

    /// Devices in id order, optionally of one merchant and store, `limit`
    /// at a time after the id `after` (keyset paging: stable under inserts).
    pub async fn devices(
        &self,
        merchant_id: Option<&str>,
        store_id: Option<&str>,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<DeviceRecord>, MetaError> {
        self.all(
            sqlx::query(&format!(
                "SELECT {DEVICE_COLUMNS} FROM devices \
                 WHERE ($1 IS NULL OR merchant_id = $1) AND ($2 IS NULL OR store_id = $2) \
                   AND ($3 IS NULL OR device_id > $3) \
                 ORDER BY device_id LIMIT $4"
            ))
            .bind(merchant_id.map(str::to_string))
            .bind(store_id.map(str::to_string))
            .bind(after.map(str::to_string))
            .bind(i64::from(limit)),
            device_from_row,
        )
        .await
    }

    /// Devices whose id, serial, merchant or store is `text`, or whose id
    /// or serial starts with it; exact matches first.
    pub async fn search_devices(
        &self,
        text: &str,
        limit: u32,
    ) -> Result<Vec<DeviceRecord>, MetaError> {
        let escaped: String = text
            .chars()
            .flat_map(|c| match c {
                '\\' | '%' | '_' => vec!['\\', c],
                c => vec![c],
            })
            .collect();
        self.all(
            sqlx::query(&format!(
                "SELECT {DEVICE_COLUMNS} FROM devices \
                 WHERE device_id = $1 OR serial = $1 OR merchant_id = $1 OR store_id = $1 \
                    OR device_id LIKE $2 ESCAPE '\\' OR serial LIKE $2 ESCAPE '\\' \
                 ORDER BY CASE WHEN device_id = $1 OR serial = $1 THEN 0 ELSE 1 END, device_id \
                 LIMIT $3"
            ))
            .bind(text)
            .bind(format!("{escaped}%"))
            .bind(i64::from(limit)),
            device_from_row,
        )
        .await
    }

    /// The newest value of every signal of every device, by device id.
    pub async fn all_latest_signals(&self) -> Result<Vec<(String, LatestSignal)>, MetaError> {
        self.all(
            sqlx::query("SELECT device_id, signal, value, sampled_at_ms FROM device_signals"),
            |r| Ok((r.try_get("device_id")?, latest_signal(r)?)),
        )
        .await
    }

    /// The newest value of each signal of a device, by signal name.
    pub async fn latest_signals(&self, device_id: &str) -> Result<Vec<LatestSignal>, MetaError> {
        self.all(
            sqlx::query(
                "SELECT signal, value, sampled_at_ms FROM device_signals WHERE device_id = $1 ORDER BY signal",
            )
            .bind(device_id),
            latest_signal,
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_recognised_and_passwords_hidden() {
        assert_eq!(Backend::of_url("sqlite:///tmp/x.db"), Some(Backend::Sqlite));
        assert_eq!(
            Backend::of_url("postgres://u@h/db"),
            Some(Backend::Postgres)
        );
        assert_eq!(Backend::of_url("mysql://x"), None);
        assert_eq!(
            without_password("postgres://tw:secret@db:5432/tw"),
            "postgres://tw:***@db:5432/tw"
        );
    }
}
