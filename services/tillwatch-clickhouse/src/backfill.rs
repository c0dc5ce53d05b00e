//! `tillwatch clickhouse backfill`: loads a date range of the lake into
//! ClickHouse, for a new ClickHouse or after data was lost there.
//!
//! Idempotent: the raw tables keep one row per reading however often it is
//! inserted, and each day's partition is merged (`OPTIMIZE … FINAL`) once
//! its files are in, so even plain `count()` is exact afterwards.

use std::path::PathBuf;

use bytes::Bytes;
use chrono::NaiveDate;
use tillwatch_storage::{Lake, Table};
use tracing::info;

use crate::client::{ChError, ClickHouse};
use crate::rowbinary;

#[derive(Debug, thiserror::Error)]
pub enum BackfillError {
    #[error("--from {from} is after --to {to}")]
    BadRange { from: NaiveDate, to: NaiveDate },
    #[error(transparent)]
    ClickHouse(#[from] ChError),
    #[error(transparent)]
    Lake(#[from] tillwatch_storage::LakeError),
}

/// Where a running backfill is, for a progress display.
#[derive(Debug, Clone, Default)]
pub struct BackfillProgress {
    pub files_done: usize,
    pub files_total: usize,
    pub bytes_done: u64,
    pub bytes_total: u64,
    pub rows: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BackfillReport {
    pub files: usize,
    pub rows: u64,
    /// (table, day) partitions loaded and merged.
    pub partitions: usize,
}

struct DayFiles {
    table: Table,
    day: NaiveDate,
    files: Vec<(PathBuf, u64)>,
}

fn list(lake: &Lake, from: NaiveDate, to: NaiveDate) -> Result<Vec<DayFiles>, BackfillError> {
    let mut out = Vec::new();
    for table in Table::ALL {
        let mut day = from;
        while day <= to {
            let dir = lake
                .table_dir(table)
                .join(format!("date={}", day.format("%Y-%m-%d")));
            let files = lake.parquet_files_under(&dir)?;
            if !files.is_empty() {
                out.push(DayFiles { table, day, files });
            }
            day = day.succ_opt().expect("dates stay in range");
        }
    }
    Ok(out)
}

/// Loads every lake file of `from..=to` (UTC days) into ClickHouse.
pub async fn backfill(
    ch: &ClickHouse,
    lake: &Lake,
    from: NaiveDate,
    to: NaiveDate,
    max_rows: usize,
    mut progress: impl FnMut(&BackfillProgress),
) -> Result<BackfillReport, BackfillError> {
    if from > to {
        return Err(BackfillError::BadRange { from, to });
    }
    ch.check_ready().await?;
    let days = {
        let lake = lake.clone();
        tokio::task::spawn_blocking(move || list(&lake, from, to))
            .await
            .expect("listing does not panic")?
    };
    let mut state = BackfillProgress {
        files_total: days.iter().map(|d| d.files.len()).sum(),
        bytes_total: days.iter().flat_map(|d| &d.files).map(|(_, n)| n).sum(),
        ..Default::default()
    };
    progress(&state);
    let mut report = BackfillReport::default();
    for day in days {
        let columns = rowbinary::column_list(day.table);
        let mut buf: Vec<u8> = Vec::new();
        let mut rows = 0usize;
        for (path, len) in day.files {
            let table = day.table;
            // Reading and encoding are blocking: the buffer goes along.
            let mut pending = std::mem::take(&mut buf);
            let lake = lake.clone();
            let (pending, n) = tokio::task::spawn_blocking(move || {
                let mut n = 0;
                for b in &lake.read_file(&path)? {
                    rowbinary::encode(table, b, &mut pending);
                    n += b.num_rows();
                }
                Ok::<_, tillwatch_storage::LakeError>((pending, n))
            })
            .await
            .expect("encoding does not panic")?;
            buf = pending;
            rows += n;
            if rows >= max_rows {
                ch.insert_row_binary(
                    table.name(),
                    &columns,
                    Bytes::from(std::mem::take(&mut buf)),
                )
                .await?;
                state.rows += rows as u64;
                rows = 0;
            }
            state.files_done += 1;
            state.bytes_done += len;
            report.files += 1;
            progress(&state);
        }
        if rows > 0 {
            ch.insert_row_binary(day.table.name(), &columns, Bytes::from(buf))
                .await?;
            state.rows += rows as u64;
            progress(&state);
        }
        ch.execute(&format!(
            "OPTIMIZE TABLE {} PARTITION {} FINAL",
            ch.table(day.table.name()),
            day.day.format("%Y%m%d")
        ))
        .await?;
        report.partitions += 1;
        info!(table = day.table.name(), day = %day.day, "partition loaded");
    }
    report.rows = state.rows;
    Ok(report)
}
