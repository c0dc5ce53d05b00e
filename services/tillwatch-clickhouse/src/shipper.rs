//! The shipper: drains the spool into ClickHouse, in order, in large
//! INSERTs, retrying through outages; the spool's cursor moves only after
//! ClickHouse has accepted the rows.
//!
//! A crash between an INSERT and the cursor write sends those rows again;
//! the raw tables are ReplacingMergeTree keyed on the reading, so they are
//! kept once (see ARCHITECTURE.md).

use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use metrics::{counter, histogram};
use tillwatch_storage::{PartBatch, Table};
use tokio::sync::watch;
use tracing::{debug, error, info, warn};

use crate::client::{ClickHouse, ErrorClass};
use crate::metrics as m;
use crate::rowbinary;
use crate::spool::{EncodedRows, Spool, SpoolRecord};

/// Encodes a flush's Arrow parts as one RowBinary batch per table, ready
/// for [`Spool::append`].
pub fn encode_parts(parts: &[PartBatch]) -> Vec<EncodedRows> {
    let mut out: Vec<EncodedRows> = Vec::new();
    for part in parts {
        let index = match out.iter().position(|(t, _, _)| *t == part.table) {
            Some(i) => i,
            None => {
                out.push((part.table, 0, Vec::new()));
                out.len() - 1
            }
        };
        let entry = &mut out[index];
        rowbinary::encode(part.table, &part.batch, &mut entry.2);
        entry.1 += part.batch.num_rows() as u32;
    }
    out
}

#[derive(Debug, Clone)]
pub struct ShipperConfig {
    /// Most rows in one INSERT.
    pub max_rows: usize,
    /// After `stop`, keep draining for at most this long.
    pub drain_grace: Duration,
}

/// Ships the spool to ClickHouse until `stop` turns true and the spool is
/// empty (or `drain_grace` has passed since; what is left ships after the
/// next start).
pub async fn run_shipper(
    ch: ClickHouse,
    spool: Spool,
    config: ShipperConfig,
    mut stop: watch::Receiver<bool>,
) {
    let mut reader = Some(spool.reader());
    let mut stop_deadline: Option<Instant> = None;
    // Bounds the memory of one drain step (read, then grouped per table).
    let max_bytes: u64 = 32 << 20;
    loop {
        let mut r = reader.take().expect("the reader is home");
        let max_rows = config.max_rows as u64;
        // Reading and concatenating up to `max_bytes` is blocking work.
        let (r, records) = tokio::task::spawn_blocking(move || {
            let records = r.read(max_rows, max_bytes).map(|records| {
                let last = records.last().map(|r| r.seq);
                (group_by_table(records), last)
            });
            (r, records)
        })
        .await
        .expect("reading the spool does not panic");
        reader = Some(r);
        let (groups, last) = match records {
            Ok(read) => read,
            Err(e) => {
                error!(error = %e, "cannot read the ClickHouse spool; retrying");
                if wait_or_stop(
                    &mut stop,
                    &mut stop_deadline,
                    &config,
                    Duration::from_secs(1),
                )
                .await
                {
                    return;
                }
                continue;
            }
        };
        let Some(last) = last else {
            if stop_deadline.is_some() || *stop.borrow() {
                info!("ClickHouse spool drained");
                return;
            }
            tokio::select! {
                _ = spool.appended() => {}
                _ = stop.wait_for(|s| *s) => {
                    stop_deadline.get_or_insert_with(|| Instant::now() + config.drain_grace);
                }
            }
            continue;
        };
        if !ship(&ch, &spool, groups, &mut stop, &mut stop_deadline, &config).await {
            warn!(
                "stopping with rows still in the ClickHouse spool; they ship after the next start"
            );
            return;
        }
        let spool2 = spool.clone();
        let marked = tokio::task::spawn_blocking(move || spool2.mark_shipped(last + 1))
            .await
            .expect("marking does not panic");
        if let Err(e) = marked {
            // The rows are in ClickHouse; without the cursor they would be
            // sent again after a restart (and merged away). Keep going.
            error!(error = %e, "cannot record shipped spool records");
        }
    }
}

/// Sleeps `delay`, or less when a stop arrives; true when the stop's grace
/// period is over.
async fn wait_or_stop(
    stop: &mut watch::Receiver<bool>,
    stop_deadline: &mut Option<Instant>,
    config: &ShipperConfig,
    delay: Duration,
) -> bool {
    if let Some(deadline) = stop_deadline {
        let left = deadline.saturating_duration_since(Instant::now());
        tokio::time::sleep(delay.min(left)).await;
        return Instant::now() >= *deadline;
    }
    tokio::select! {
        _ = tokio::time::sleep(delay) => false,
        _ = stop.wait_for(|s| *s) => {
            *stop_deadline = Some(Instant::now() + config.drain_grace);
            false
        }
    }
}

/// One INSERT's worth: a table's rows from consecutive spool records.
struct TableBatch {
    table: Table,
    rows: u64,
    data: Bytes,
    /// The first record's sequence number, naming a set-aside file.
    first_seq: u64,
}

/// Concatenates records per table, tables in order of first appearance.
fn group_by_table(records: Vec<SpoolRecord>) -> Vec<TableBatch> {
    let mut groups: Vec<(Table, u64, BytesMut, u64)> = Vec::new();
    for r in &records {
        match groups.iter_mut().find(|(t, _, _, _)| *t == r.table) {
            Some((_, rows, data, _)) => {
                *rows += u64::from(r.rows);
                data.extend_from_slice(&r.data);
            }
            None => groups.push((
                r.table,
                u64::from(r.rows),
                BytesMut::from(&r.data[..]),
                r.seq,
            )),
        }
    }
    groups
        .into_iter()
        .map(|(table, rows, data, first_seq)| TableBatch {
            table,
            rows,
            data: data.freeze(),
            first_seq,
        })
        .collect()
}

/// Inserts each table's batch. Returns false if it gave up because the
/// gateway is stopping.
async fn ship(
    ch: &ClickHouse,
    spool: &Spool,
    groups: Vec<TableBatch>,
    stop: &mut watch::Receiver<bool>,
    stop_deadline: &mut Option<Instant>,
    config: &ShipperConfig,
) -> bool {
    for TableBatch {
        table,
        rows,
        data,
        first_seq,
    } in groups
    {
        let columns = rowbinary::column_list(table);
        let mut backoff = Duration::from_millis(100);
        let mut unreadable = 0;
        loop {
            let started = Instant::now();
            match ch
                .insert_row_binary(table.name(), &columns, data.clone())
                .await
            {
                Ok(()) => {
                    histogram!(m::INSERT_DURATION).record(started.elapsed().as_secs_f64());
                    counter!(m::ROWS_INSERTED, "table" => table.name()).increment(rows);
                    counter!(m::INSERTS, "table" => table.name()).increment(1);
                    debug!(table = table.name(), rows, "inserted into ClickHouse");
                    break;
                }
                Err(e) if e.class == ErrorClass::Data && unreadable < 2 => {
                    // Once more, in case the bytes were cut in transit.
                    counter!(m::ERRORS, "class" => e.class.as_str()).increment(1);
                    unreadable += 1;
                    warn!(error = %e, table = table.name(), "ClickHouse could not read a batch; trying it again");
                    if wait_or_stop(stop, stop_deadline, config, backoff).await {
                        return false;
                    }
                }
                Err(e) if e.class == ErrorClass::Data => {
                    counter!(m::ERRORS, "class" => e.class.as_str()).increment(1);
                    // The same bytes would fail forever and hold back every
                    // row behind them: set them aside (the lake has them too).
                    let spool = spool.clone();
                    let bytes = data.clone();
                    let kept = tokio::task::spawn_blocking(move || {
                        spool.set_aside(first_seq, table, &bytes)
                    })
                    .await
                    .expect("setting aside does not panic");
                    match kept {
                        Ok(path) => {
                            counter!(m::ROWS_REJECTED, "table" => table.name()).increment(rows);
                            error!(
                                error = %e,
                                table = table.name(),
                                rows,
                                kept = %path.display(),
                                "ClickHouse could not read these rows; they are set aside and the spool moves on. \
                                 The lake still has them: `tillwatch clickhouse backfill` reloads them"
                            );
                            break;
                        }
                        Err(io) => {
                            error!(error = %io, "cannot set rejected rows aside; retrying");
                            if wait_or_stop(stop, stop_deadline, config, backoff).await {
                                return false;
                            }
                        }
                    }
                }
                Err(e) => {
                    counter!(m::ERRORS, "class" => e.class.as_str()).increment(1);
                    if e.class == ErrorClass::Auth || e.class == ErrorClass::Schema {
                        error!(error = %e, retry_in = ?backoff, "ClickHouse refused the rows; they stay in the spool");
                    } else {
                        warn!(error = %e, retry_in = ?backoff, "ClickHouse insert failed; rows stay in the spool");
                    }
                    if wait_or_stop(stop, stop_deadline, config, backoff).await {
                        return false;
                    }
                    let cap = if e.class.transient() { 5 } else { 30 };
                    backoff = (backoff * 2).min(Duration::from_secs(cap));
                }
            }
        }
    }
    true
}
