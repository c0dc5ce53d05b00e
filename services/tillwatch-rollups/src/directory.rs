//! `merchant_directory`: a source job that imports merchants and stores
//! (names, time zones, opening hours) from an external PostgreSQL with the
//! query in `[scheduler.merchant_directory]`, so the dashboards and the
//! alerter know store hours without anyone typing them in.
//!
//! Each run reads the whole directory and
//! - upserts merchants and stores into the metadata store in one
//!   transaction (the alerter picks changed stores up on its next sweep;
//!   stores that left the directory keep their last entry),
//! - writes the snapshot to the lake as `lake/merchant_directory/<hour>/`,
//! - and, with the ClickHouse engine, replaces the `merchant_directory`
//!   table's contents (the latest snapshot) atomically.
//!
//! A row with an unknown time zone or unreadable hours is skipped and
//! reported; a query that returns columns Tillwatch does not read, or no
//! rows at all, fails the run with a message that says so.

use std::sync::Arc;
use std::time::Duration;

use arrow::array::{ArrayRef, RecordBatch, StringArray, TimestampMillisecondArray};
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use sqlx::{Column, Connection, Row};
use tillwatch_clickhouse::ClickHouse;
use tillwatch_config::DirectorySource;
use tillwatch_domain::hours::{WeeklyHours, time_zone};
use tillwatch_domain::{MerchantId, StoreId};
use tillwatch_meta::{MerchantRecord, MetaStore, StoreRecord};
use tillwatch_scheduler::{Grain, JobError, JobSpec, Output, Partition};

use crate::embedded::Embedded;
use crate::jobs::PLATFORM_OWNER;
use crate::side::{put_nullable, put_string};

pub const MERCHANT_DIRECTORY: &str = "merchant_directory";

/// The columns the query may return; the first two are required.
pub const COLUMNS: [&str; 6] = [
    "merchant_id",
    "store_id",
    "merchant_name",
    "store_name",
    "time_zone",
    "hours",
];

/// What is wrong with the directory's answer: the query's shape, or one
/// row (which is skipped and reported).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DirectoryError {
    #[error("the query returned no rows; check [scheduler.merchant_directory] query")]
    NoRows,
    #[error(
        "the query returns a column {0:?}; the columns read are {columns} (rename with AS)",
        columns = COLUMNS.join(", ")
    )]
    UnknownColumn(String),
    #[error("the query returns no {0} column")]
    MissingColumn(&'static str),
    #[error("column {column}: {detail} (cast it to text in the query: {column}::text)")]
    NotText { column: String, detail: String },
    /// One row's field does not hold what it must.
    #[error("store {merchant_id}/{store_id}: {field} {detail}")]
    BadRow {
        merchant_id: String,
        store_id: String,
        field: &'static str,
        detail: String,
    },
    #[error("every row of the merchant directory was skipped: {rows}", rows = join(.0))]
    AllSkipped(Vec<DirectoryError>),
}

fn join(errors: &[DirectoryError]) -> String {
    let texts: Vec<String> = errors.iter().map(ToString::to_string).collect();
    texts.join("; ")
}

impl From<DirectoryError> for JobError {
    fn from(e: DirectoryError) -> JobError {
        JobError::input(e)
    }
}

/// The job: hourly, no inputs, only the newest hour (a snapshot of the
/// directory as it is now, not as it was).
pub fn merchant_directory() -> JobSpec {
    let mut job = JobSpec::new(MERCHANT_DIRECTORY, Grain::Hour, Vec::new());
    job.owner = PLATFORM_OWNER.into();
    job.catch_up = false;
    job
}

/// One store row as the source gave it, checked.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Entry {
    pub merchant_id: String,
    pub store_id: String,
    pub merchant_name: Option<String>,
    pub store_name: Option<String>,
    pub time_zone: Option<String>,
    pub hours: Option<String>,
}

impl Entry {
    /// Checks ids, time zone and hours; the error names the row and field.
    pub fn check(self) -> Result<Entry, DirectoryError> {
        let bad = |field: &'static str, detail: String| DirectoryError::BadRow {
            merchant_id: self.merchant_id.clone(),
            store_id: self.store_id.clone(),
            field,
            detail,
        };
        MerchantId::new(&self.merchant_id).map_err(|e| bad("merchant_id", e.to_string()))?;
        StoreId::new(&self.store_id).map_err(|e| bad("store_id", e.to_string()))?;
        if let Some(tz) = &self.time_zone {
            time_zone(tz).map_err(|e| bad("time_zone", e.to_string()))?;
        }
        if let Some(h) = &self.hours {
            WeeklyHours::parse(h).map_err(|e| bad("hours", format!("{h:?}: {e}")))?;
        }
        Ok(self)
    }
}

/// Turns the query's rows into entries: the good ones, and a message for
/// each row skipped. Fails on a column Tillwatch does not read, a required
/// one missing, a value that is not text, or no rows.
pub fn entries(
    rows: &[sqlx::postgres::PgRow],
) -> Result<(Vec<Entry>, Vec<DirectoryError>), DirectoryError> {
    let first = rows.first().ok_or(DirectoryError::NoRows)?;
    let names: Vec<String> = first
        .columns()
        .iter()
        .map(|c| c.name().to_string())
        .collect();
    for n in &names {
        if !COLUMNS.contains(&n.as_str()) {
            return Err(DirectoryError::UnknownColumn(n.clone()));
        }
    }
    for required in &COLUMNS[..2] {
        if !names.iter().any(|n| n == required) {
            return Err(DirectoryError::MissingColumn(required));
        }
    }
    let text =
        |row: &sqlx::postgres::PgRow, name: &str| -> Result<Option<String>, DirectoryError> {
            if !names.iter().any(|n| n == name) {
                return Ok(None);
            }
            row.try_get::<Option<String>, _>(name)
                .map(|v| v.map(|s| s.trim().to_string()).filter(|s| !s.is_empty()))
                .map_err(|e| DirectoryError::NotText {
                    column: name.to_string(),
                    detail: e.to_string(),
                })
        };
    let mut good = Vec::new();
    let mut skipped = Vec::new();
    for row in rows {
        let entry = Entry {
            merchant_id: text(row, "merchant_id")?.unwrap_or_default(),
            store_id: text(row, "store_id")?.unwrap_or_default(),
            merchant_name: text(row, "merchant_name")?,
            store_name: text(row, "store_name")?,
            time_zone: text(row, "time_zone")?,
            hours: text(row, "hours")?,
        };
        match entry.check() {
            Ok(e) => good.push(e),
            Err(problem) => skipped.push(problem),
        }
    }
    good.sort();
    good.dedup_by(|a, b| a.merchant_id == b.merchant_id && a.store_id == b.store_id);
    Ok((good, skipped))
}

/// The snapshot as the lake's Parquet rows.
pub fn batch(partition: Partition, entries: &[Entry]) -> RecordBatch {
    let text = |f: &dyn Fn(&Entry) -> Option<&str>| -> ArrayRef {
        Arc::new(entries.iter().map(f).collect::<StringArray>())
    };
    let schema = Schema::new(vec![
        Field::new(
            "hour",
            DataType::Timestamp(TimeUnit::Millisecond, None),
            false,
        ),
        Field::new("merchant_id", DataType::Utf8, false),
        Field::new("store_id", DataType::Utf8, false),
        Field::new("merchant_name", DataType::Utf8, true),
        Field::new("store_name", DataType::Utf8, true),
        Field::new("time_zone", DataType::Utf8, true),
        Field::new("hours", DataType::Utf8, true),
    ]);
    RecordBatch::try_new(
        Arc::new(schema),
        vec![
            Arc::new(TimestampMillisecondArray::from(vec![
                partition.start_ms;
                entries.len()
            ])),
            text(&|e| Some(e.merchant_id.as_str())),
            text(&|e| Some(e.store_id.as_str())),
            text(&|e| e.merchant_name.as_deref()),
            text(&|e| e.store_name.as_deref()),
            text(&|e| e.time_zone.as_deref()),
            text(&|e| e.hours.as_deref()),
        ],
    )
    .expect("the columns match the schema")
}

/// The snapshot as RowBinary for the `merchant_directory` table.
fn row_binary(partition: Partition, entries: &[Entry]) -> Vec<u8> {
    let mut out = Vec::new();
    let hour = u32::try_from(partition.start_ms.div_euclid(1000)).unwrap_or(0);
    for e in entries {
        out.extend_from_slice(&hour.to_le_bytes());
        put_string(&mut out, &e.merchant_id);
        put_string(&mut out, &e.store_id);
        put_nullable(&mut out, e.merchant_name.as_deref());
        put_nullable(&mut out, e.store_name.as_deref());
        put_nullable(&mut out, e.time_zone.as_deref());
        put_nullable(&mut out, e.hours.as_deref());
    }
    out
}

pub struct Directory {
    pub source: DirectorySource,
    pub store: MetaStore,
    pub lake: Embedded,
    pub clickhouse: Option<ClickHouse>,
    pub clock: tillwatch_scheduler::Clock,
}

impl Directory {
    async fn fetch(&self) -> Result<Vec<sqlx::postgres::PgRow>, JobError> {
        let timeout = self.source.connect_timeout.max(Duration::from_millis(100));
        let mut conn = tokio::time::timeout(
            timeout,
            sqlx::postgres::PgConnection::connect(&self.source.url),
        )
        .await
        .map_err(|_| {
            JobError::read(
                "the merchant directory",
                format_args!("no answer within {timeout:?}"),
            )
        })?
        .map_err(|e| JobError::read("the merchant directory (connecting)", e))?;
        let rows = sqlx::query(&self.source.query)
            .fetch_all(&mut conn)
            .await
            .map_err(|e| JobError::read("the merchant directory (its query)", e))?;
        let _ = conn.close().await;
        Ok(rows)
    }

    /// One import (see the module docs).
    pub async fn import(&self, partition: Partition) -> Result<Output, JobError> {
        let rows = self.fetch().await?;
        let (entries, skipped) = entries(&rows)?;
        for problem in &skipped {
            tracing::warn!(%problem, "merchant directory row skipped");
        }
        if entries.is_empty() {
            return Err(DirectoryError::AllSkipped(skipped).into());
        }
        let now = (self.clock)();
        let mut merchants: Vec<MerchantRecord> = Vec::new();
        for e in &entries {
            if merchants
                .last()
                .is_none_or(|m| m.merchant_id != e.merchant_id)
            {
                merchants.push(MerchantRecord {
                    merchant_id: e.merchant_id.clone(),
                    name: e.merchant_name.clone(),
                    updated_at_ms: now,
                });
            }
        }
        let stores: Vec<StoreRecord> = entries
            .iter()
            .map(|e| StoreRecord {
                merchant_id: e.merchant_id.clone(),
                store_id: e.store_id.clone(),
                name: e.store_name.clone(),
                time_zone: e.time_zone.clone(),
                hours: e.hours.clone(),
                updated_at_ms: now,
            })
            .collect();
        let output = self
            .lake
            .write(
                MERCHANT_DIRECTORY,
                partition,
                vec![batch(partition, &entries)],
            )
            .await?;
        if let Some(ch) = &self.clickhouse {
            let staging = format!("{MERCHANT_DIRECTORY}_staging");
            let fail = |e: tillwatch_clickhouse::ChError| {
                JobError::query(format_args!("ClickHouse {MERCHANT_DIRECTORY}: {e}"))
            };
            let clear = format!("ALTER TABLE {} DROP PARTITION tuple()", ch.table(&staging));
            ch.execute(&clear).await.map_err(fail)?;
            ch.insert_row_binary(
                &staging,
                "hour, merchant_id, store_id, merchant_name, store_name, time_zone, hours",
                row_binary(partition, &entries).into(),
            )
            .await
            .map_err(fail)?;
            ch.execute(&format!(
                "ALTER TABLE {} REPLACE PARTITION tuple() FROM {}",
                ch.table(MERCHANT_DIRECTORY),
                ch.table(&staging)
            ))
            .await
            .map_err(fail)?;
            ch.execute(&clear).await.map_err(fail)?;
        }
        self.store
            .import_directory(&merchants, &stores)
            .await
            .map_err(|e| JobError::write("the merchant directory to the metadata store", e))?;
        tracing::info!(
            stores = entries.len(),
            merchants = merchants.len(),
            skipped = skipped.len(),
            "merchant directory imported"
        );
        Ok(output)
    }
}
