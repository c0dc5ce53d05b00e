//! The ClickHouse spool: rows on their way to ClickHouse, durable on local
//! disk, so the gateway can ack a message without waiting for ClickHouse
//! and loses nothing while ClickHouse is down.
//!
//! Layout: `<dir>/<first_seq:020>.seg` segment files of records and a
//! `cursor` file holding the sequence number of the first record not yet in
//! ClickHouse. A record is
//! `[len: u32][crc32: u32][seq: u64][table: u8][rows: u32][RowBinary rows]`
//! (little-endian; `len` and the CRC cover everything after the CRC).
//!
//! - Appends are written and `fdatasync`ed before the flush that made them
//!   commits, so an acked message's rows are always here or in ClickHouse.
//! - The spool is bounded (`max_bytes`): an append waits for the shipper to
//!   free space, which holds the flush, which stops the gateway acking and
//!   reading; the broker holds the rest. Nothing is dropped.
//! - Opening reads only the last segment (to cut a write torn by a crash);
//!   the rest is read record by record as it is shipped, each record's CRC
//!   checked then.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use metrics::{counter, gauge};
use tillwatch_storage::Table;
use tracing::{error, info, warn};

use crate::metrics as m;

const HEADER: usize = 8;
const META: usize = 8 + 1 + 4;
/// A record larger than this is corruption, not data.
const MAX_RECORD: u32 = 1 << 30;

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("spool {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("the ClickHouse spool is full and the gateway is stopping")]
    FullAtShutdown,
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> SpoolError + '_ {
    move |source| SpoolError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Rows of one table for an append: the table, the row count and the rows
/// as RowBinary.
pub type EncodedRows = (Table, u32, Vec<u8>);

/// Rows of one table, encoded for ClickHouse.
#[derive(Debug, Clone, PartialEq)]
pub struct SpoolRecord {
    pub seq: u64,
    pub table: Table,
    pub rows: u32,
    pub data: Bytes,
}

#[derive(Debug)]
struct Segment {
    first_seq: u64,
    path: PathBuf,
    /// Bytes of whole, synced records.
    len: u64,
}

#[derive(Debug)]
struct State {
    segments: VecDeque<Segment>,
    writer: Option<File>,
    next_seq: u64,
    /// First record not yet in ClickHouse.
    shipped_seq: u64,
    bytes: u64,
    full: bool,
}

#[derive(Debug)]
struct Shared {
    dir: PathBuf,
    max_bytes: u64,
    segment_bytes: u64,
    state: Mutex<State>,
    space: Condvar,
    appended: tokio::sync::Notify,
}

/// A handle to the spool; clones share it.
#[derive(Debug, Clone)]
pub struct Spool {
    shared: Arc<Shared>,
}

fn table_code(table: Table) -> u8 {
    Table::ALL
        .iter()
        .position(|t| *t == table)
        .expect("Table::ALL lists every table") as u8
}

fn segment_path(dir: &Path, first_seq: u64) -> PathBuf {
    dir.join(format!("{first_seq:020}.seg"))
}

fn sync_dir(dir: &Path) -> Result<(), SpoolError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

/// Reads one record at the reader's position. `Ok(None)` at a clean end;
/// `Err` with `InvalidData` for a torn or corrupt record.
fn read_record(r: &mut impl Read) -> io::Result<Option<(SpoolRecord, u64)>> {
    let mut header = [0u8; HEADER];
    match r.read_exact(&mut header[..1]) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_string());
    r.read_exact(&mut header[1..])
        .map_err(|_| bad("torn record header"))?;
    let len = u32::from_le_bytes(header[..4].try_into().expect("4 bytes"));
    let crc = u32::from_le_bytes(header[4..].try_into().expect("4 bytes"));
    if (len as usize) < META || len > MAX_RECORD {
        return Err(bad("record length out of range"));
    }
    let mut body = vec![0u8; len as usize];
    r.read_exact(&mut body).map_err(|_| bad("torn record"))?;
    if crc32fast::hash(&body) != crc {
        return Err(bad("record checksum mismatch"));
    }
    let seq = u64::from_le_bytes(body[..8].try_into().expect("8 bytes"));
    let table = *Table::ALL
        .get(body[8] as usize)
        .ok_or_else(|| bad("unknown table code"))?;
    let rows = u32::from_le_bytes(body[9..13].try_into().expect("4 bytes"));
    let data = Bytes::from(body).slice(META..);
    Ok(Some((
        SpoolRecord {
            seq,
            table,
            rows,
            data,
        },
        (HEADER + len as usize) as u64,
    )))
}

fn encode_record(out: &mut Vec<u8>, seq: u64, table: Table, rows: u32, data: &[u8]) {
    let len = (META + data.len()) as u32;
    let start = out.len();
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&seq.to_le_bytes());
    out.push(table_code(table));
    out.extend_from_slice(&rows.to_le_bytes());
    out.extend_from_slice(data);
    let crc = crc32fast::hash(&out[start + HEADER..]);
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

impl Spool {
    /// Opens (or creates) the spool in `dir`, repairing a torn tail.
    pub fn open(dir: &Path, max_bytes: u64) -> Result<Spool, SpoolError> {
        Spool::open_with_segment_size(dir, max_bytes, (max_bytes / 16).clamp(1 << 20, 64 << 20))
    }

    pub fn open_with_segment_size(
        dir: &Path,
        max_bytes: u64,
        segment_bytes: u64,
    ) -> Result<Spool, SpoolError> {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        let cursor_path = dir.join("cursor");
        let shipped_seq = match fs::read_to_string(&cursor_path) {
            Ok(text) => text.trim().parse::<u64>().map_err(|_| SpoolError::Io {
                path: cursor_path.clone(),
                source: io::Error::new(io::ErrorKind::InvalidData, "not a number"),
            })?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => 0,
            Err(e) => return Err(io_err(&cursor_path)(e)),
        };
        let mut firsts: Vec<u64> = fs::read_dir(dir)
            .map_err(io_err(dir))?
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                name.strip_suffix(".seg")?.parse::<u64>().ok()
            })
            .collect();
        firsts.sort_unstable();
        let mut segments: VecDeque<Segment> = VecDeque::new();
        for (i, first) in firsts.iter().enumerate() {
            let path = segment_path(dir, *first);
            let len = fs::metadata(&path).map_err(io_err(&path))?.len();
            // Wholly shipped: a later segment starts at or before the cursor.
            if firsts.get(i + 1).is_some_and(|next| *next <= shipped_seq) {
                fs::remove_file(&path).map_err(io_err(&path))?;
                continue;
            }
            segments.push_back(Segment {
                first_seq: *first,
                path,
                len,
            });
        }
        let mut next_seq = shipped_seq;
        if let Some(last) = segments.back_mut() {
            next_seq = next_seq.max(last.first_seq);
            let file = File::open(&last.path).map_err(io_err(&last.path))?;
            let mut reader = BufReader::new(file);
            let mut good = 0u64;
            loop {
                match read_record(&mut reader) {
                    Ok(Some((record, size))) => {
                        good += size;
                        next_seq = next_seq.max(record.seq + 1);
                    }
                    Ok(None) => break,
                    Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                        warn!(
                            segment = %last.path.display(),
                            offset = good,
                            "cutting a spool record torn by a crash; it was never acked"
                        );
                        let f = OpenOptions::new()
                            .write(true)
                            .open(&last.path)
                            .map_err(io_err(&last.path))?;
                        f.set_len(good).map_err(io_err(&last.path))?;
                        f.sync_all().map_err(io_err(&last.path))?;
                        break;
                    }
                    Err(e) => return Err(io_err(&last.path)(e)),
                }
            }
            last.len = good;
        }
        let bytes = segments.iter().map(|s| s.len).sum();
        let spool = Spool {
            shared: Arc::new(Shared {
                dir: dir.to_path_buf(),
                max_bytes,
                segment_bytes,
                state: Mutex::new(State {
                    segments,
                    writer: None,
                    next_seq,
                    shipped_seq,
                    bytes,
                    full: false,
                }),
                space: Condvar::new(),
                appended: tokio::sync::Notify::new(),
            }),
        };
        let state = spool.lock();
        spool.publish_gauges(&state);
        if state.next_seq > state.shipped_seq {
            info!(
                records = state.next_seq - state.shipped_seq,
                bytes = state.bytes,
                "the ClickHouse spool holds rows from before the restart; they ship first"
            );
        }
        drop(state);
        Ok(spool)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.shared
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn publish_gauges(&self, state: &State) {
        gauge!(m::SPOOL_RECORDS).set((state.next_seq - state.shipped_seq) as f64);
        gauge!(m::SPOOL_BYTES).set(state.bytes as f64);
    }

    /// Keeps rows ClickHouse refused to read in `rejected/<seq>-<table>.rowbinary`
    /// (a file `clickhouse-client --query "INSERT … FORMAT RowBinary"` takes),
    /// so they stop blocking the spool but are not thrown away. Blocking.
    pub fn set_aside(
        &self,
        first_seq: u64,
        table: Table,
        rows: &[u8],
    ) -> Result<PathBuf, SpoolError> {
        let dir = self.shared.dir.join("rejected");
        fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        let path = dir.join(format!("{first_seq:020}-{}.rowbinary", table.name()));
        let mut f = File::create(&path).map_err(io_err(&path))?;
        f.write_all(rows)
            .and_then(|()| f.sync_all())
            .map_err(io_err(&path))?;
        sync_dir(&dir)?;
        Ok(path)
    }

    /// Whether an append is waiting for room.
    pub fn is_full(&self) -> bool {
        self.lock().full
    }

    /// Records waiting for ClickHouse, and their bytes on disk.
    pub fn depth(&self) -> (u64, u64) {
        let state = self.lock();
        (state.next_seq - state.shipped_seq, state.bytes)
    }

    /// Appends rows durably, waiting while the spool is full. Blocking: call
    /// from a blocking thread. Gives up only when `stopping` is set while it
    /// waits, so a gateway shutting down does not hang on a dead ClickHouse.
    pub fn append(&self, batches: &[EncodedRows], stopping: &AtomicBool) -> Result<(), SpoolError> {
        let batches: Vec<&EncodedRows> = batches.iter().filter(|(_, rows, _)| *rows > 0).collect();
        if batches.is_empty() {
            return Ok(());
        }
        let needed: u64 = batches
            .iter()
            .map(|(_, _, d)| (HEADER + META + d.len()) as u64)
            .sum();
        let mut state = self.lock();
        // An empty spool always takes one append, however large.
        while state.bytes > 0 && state.bytes + needed > self.shared.max_bytes {
            if !state.full {
                state.full = true;
                gauge!(m::SPOOL_FULL).set(1.0);
                warn!(
                    bytes = state.bytes,
                    limit = self.shared.max_bytes,
                    "ClickHouse spool full: holding acks (the broker keeps the messages) until ClickHouse takes rows again"
                );
            }
            if stopping.load(Ordering::SeqCst) {
                return Err(SpoolError::FullAtShutdown);
            }
            state = self
                .shared
                .space
                .wait_timeout(state, Duration::from_millis(200))
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        if state.full {
            state.full = false;
            gauge!(m::SPOOL_FULL).set(0.0);
            info!("ClickHouse spool has room again");
        }
        let rotate = state
            .segments
            .back()
            .is_none_or(|s| s.len >= self.shared.segment_bytes);
        if rotate {
            let first = state.next_seq;
            let path = segment_path(&self.shared.dir, first);
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .map_err(io_err(&path))?;
            sync_dir(&self.shared.dir)?;
            state.writer = Some(file);
            state.segments.push_back(Segment {
                first_seq: first,
                path,
                len: 0,
            });
        } else if state.writer.is_none() {
            let path = state.segments.back().expect("checked").path.clone();
            let file = OpenOptions::new()
                .append(true)
                .open(&path)
                .map_err(io_err(&path))?;
            state.writer = Some(file);
        }
        let mut buf = Vec::with_capacity(needed as usize);
        let mut seq = state.next_seq;
        for (table, rows, data) in &batches {
            encode_record(&mut buf, seq, *table, *rows, data);
            seq += 1;
        }
        let path = state.segments.back().expect("a segment").path.clone();
        let writer = state.writer.as_mut().expect("opened above");
        let written = writer.write_all(&buf).and_then(|()| writer.sync_data());
        if let Err(e) = written {
            // Leave no half-written record behind for the next append.
            state.writer = None;
            let len = state.segments.back().expect("a segment").len;
            if let Ok(f) = OpenOptions::new().write(true).open(&path) {
                let _ = f.set_len(len);
            }
            return Err(io_err(&path)(e));
        }
        state.segments.back_mut().expect("a segment").len += buf.len() as u64;
        state.bytes += buf.len() as u64;
        state.next_seq = seq;
        self.publish_gauges(&state);
        drop(state);
        self.shared.appended.notify_one();
        Ok(())
    }

    /// Resolves when something was appended since the last call (or at once
    /// if an append happened before anyone waited).
    pub async fn appended(&self) {
        self.shared.appended.notified().await
    }

    /// Marks every record before `seq` as in ClickHouse: persists the cursor
    /// and deletes segments no longer needed. Blocking.
    pub fn mark_shipped(&self, seq: u64) -> Result<(), SpoolError> {
        let cursor = self.shared.dir.join("cursor");
        let tmp = self.shared.dir.join("cursor.tmp");
        {
            let mut f = File::create(&tmp).map_err(io_err(&tmp))?;
            f.write_all(seq.to_string().as_bytes())
                .and_then(|()| f.sync_all())
                .map_err(io_err(&tmp))?;
        }
        fs::rename(&tmp, &cursor).map_err(io_err(&cursor))?;
        sync_dir(&self.shared.dir)?;
        let mut state = self.lock();
        state.shipped_seq = state.shipped_seq.max(seq);
        // Delete every segment whose successor starts at or before the
        // cursor, and the tail too once it is wholly shipped.
        while let Some(front) = state.segments.front() {
            let next_first = state.segments.get(1).map(|s| s.first_seq);
            let whole = match next_first {
                Some(next) => next <= state.shipped_seq,
                None => state.shipped_seq >= state.next_seq,
            };
            if !whole {
                break;
            }
            let path = front.path.clone();
            let len = front.len;
            if next_first.is_none() {
                state.writer = None;
            }
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err(&path)(e)),
            }
            state.segments.pop_front();
            state.bytes -= len;
        }
        self.publish_gauges(&state);
        drop(state);
        self.shared.space.notify_all();
        Ok(())
    }

    /// A reader starting at the first record not yet shipped.
    pub fn reader(&self) -> SpoolReader {
        let state = self.lock();
        SpoolReader {
            spool: self.clone(),
            next_seq: state.shipped_seq,
            open: None,
        }
    }
}

/// Reads records in order; used by the one shipper of a spool.
#[derive(Debug)]
pub struct SpoolReader {
    spool: Spool,
    /// The next record this reader returns.
    next_seq: u64,
    /// The segment being read: its first seq, a reader and the offset.
    open: Option<(u64, BufReader<File>, u64)>,
}

impl SpoolReader {
    /// The next records, up to `max_rows` rows (at least one record when
    /// any is waiting). Blocking.
    pub fn read(&mut self, max_rows: u64, max_bytes: u64) -> Result<Vec<SpoolRecord>, SpoolError> {
        let mut out = Vec::new();
        let mut rows = 0u64;
        let mut bytes = 0u64;
        loop {
            if !out.is_empty() && (rows >= max_rows || bytes >= max_bytes) {
                return Ok(out);
            }
            // Where the next record lives, and how much of it is synced.
            let (first, path, limit) = {
                let state = self.spool.lock();
                if self.next_seq < state.shipped_seq {
                    self.next_seq = state.shipped_seq;
                    self.open = None;
                }
                if self.next_seq >= state.next_seq {
                    return Ok(out);
                }
                let seg = state
                    .segments
                    .iter()
                    .rev()
                    .find(|s| s.first_seq <= self.next_seq)
                    .or(state.segments.front());
                match seg {
                    Some(s) => (s.first_seq, s.path.clone(), s.len),
                    None => return Ok(out),
                }
            };
            if self.open.as_ref().is_none_or(|(f, _, _)| *f != first) {
                let file = File::open(&path).map_err(io_err(&path))?;
                self.open = Some((first, BufReader::new(file), 0));
            }
            let (_, reader, offset) = self.open.as_mut().expect("opened");
            if *offset >= limit {
                // This segment is read to its end: move on to the next one.
                let state = self.spool.lock();
                let next = state
                    .segments
                    .iter()
                    .find(|s| s.first_seq > first)
                    .map(|s| s.first_seq);
                drop(state);
                match next {
                    Some(next) => {
                        self.next_seq = self.next_seq.max(next);
                        self.open = None;
                        continue;
                    }
                    None => return Ok(out),
                }
            }
            match read_record(&mut reader.by_ref().take(limit - *offset)) {
                Ok(Some((record, size))) => {
                    *offset += size;
                    if record.seq < self.next_seq {
                        continue;
                    }
                    self.next_seq = record.seq + 1;
                    rows += u64::from(record.rows);
                    bytes += record.data.len() as u64;
                    out.push(record);
                }
                Ok(None) => {
                    *offset = limit;
                }
                Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                    counter!(m::SPOOL_CORRUPT).increment(1);
                    error!(
                        segment = %path.display(),
                        offset = *offset,
                        error = %e,
                        "corrupt record in the ClickHouse spool; skipping the rest of this segment. \
                         The lake still has these rows: reload them with `tillwatch clickhouse backfill`"
                    );
                    *offset = limit;
                    let _ = reader.seek(SeekFrom::End(0));
                }
                Err(e) => return Err(io_err(&path)(e)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tillwatch_domain::Kind;

    const T: Table = Table::Reading(Kind::Battery);

    fn batch(i: u32) -> EncodedRows {
        (T, i + 1, vec![i as u8; 100 + i as usize])
    }

    fn never() -> AtomicBool {
        AtomicBool::new(false)
    }

    #[test]
    fn records_come_back_in_order_across_segments_and_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open_with_segment_size(dir.path(), 1 << 20, 1000).unwrap();
        for i in 0..30 {
            spool.append(&[batch(i)], &never()).unwrap();
        }
        let mut reader = spool.reader();
        let first = reader.read(50, u64::MAX).unwrap();
        assert!(!first.is_empty());
        let shipped = first.last().unwrap().seq + 1;
        spool.mark_shipped(shipped).unwrap();
        drop((reader, spool));

        // Restart: only what was not marked shipped comes back, in order.
        let spool = Spool::open_with_segment_size(dir.path(), 1 << 20, 1000).unwrap();
        let mut reader = spool.reader();
        let rest = reader.read(u64::MAX, u64::MAX).unwrap();
        let seqs: Vec<u64> = first.iter().chain(&rest).map(|r| r.seq).collect();
        assert_eq!(seqs, (0..30).collect::<Vec<_>>());
        for r in first.iter().chain(&rest) {
            assert_eq!(r.data.len(), 100 + r.seq as usize);
            assert_eq!(r.rows as u64, r.seq + 1);
        }
        spool.mark_shipped(30).unwrap();
        assert_eq!(spool.depth(), (0, 0));
        let segments = fs::read_dir(dir.path())
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .path()
                    .extension()
                    .is_some_and(|x| x == "seg")
            })
            .count();
        assert_eq!(segments, 0, "shipped segments are deleted");
    }

    #[test]
    fn a_torn_tail_is_cut_and_appends_continue_after_it() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), 1 << 30).unwrap();
        spool.append(&[batch(1), batch(2)], &never()).unwrap();
        drop(spool);
        let seg = segment_path(dir.path(), 0);
        let mut f = OpenOptions::new().append(true).open(&seg).unwrap();
        f.write_all(&[200, 0, 0, 0, 1, 2]).unwrap();
        drop(f);
        let spool = Spool::open(dir.path(), 1 << 30).unwrap();
        spool.append(&[batch(3)], &never()).unwrap();
        let got = spool.reader().read(u64::MAX, u64::MAX).unwrap();
        assert_eq!(got.iter().map(|r| r.seq).collect::<Vec<_>>(), [0, 1, 2]);
        assert_eq!(got[2].data.len(), 103);
    }

    #[test]
    fn a_corrupt_record_is_counted_and_skipped_not_fatal() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open_with_segment_size(dir.path(), 1 << 20, 300).unwrap();
        for i in 0..6 {
            spool.append(&[batch(i)], &never()).unwrap();
        }
        // Flip a byte inside the first record of the first segment.
        let seg = segment_path(dir.path(), 0);
        let mut bytes = fs::read(&seg).unwrap();
        bytes[30] ^= 0xff;
        fs::write(&seg, bytes).unwrap();
        let got = spool.reader().read(u64::MAX, u64::MAX).unwrap();
        assert!(!got.iter().any(|r| r.seq == 0));
        assert!(got.iter().any(|r| r.seq == 5), "later segments still ship");
    }

    #[test]
    fn a_full_spool_holds_the_append_until_rows_ship() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open_with_segment_size(dir.path(), 800, 200).unwrap();
        spool
            .append(&[batch(0), batch(1), batch(2)], &never())
            .unwrap();
        spool.append(&[batch(3), batch(4)], &never()).unwrap();
        let (records, _) = spool.depth();
        assert_eq!(records, 5);

        let appender = {
            let spool = spool.clone();
            std::thread::spawn(move || spool.append(&[batch(5), batch(6)], &never()))
        };
        // It waits: nothing is added while the spool is over its limit.
        let until = std::time::Instant::now() + Duration::from_secs(30);
        while !spool.is_full() {
            assert!(std::time::Instant::now() < until, "the append never waited");
            std::thread::yield_now();
        }
        assert_eq!(spool.depth().0, 5, "a full spool takes nothing more");

        let got = spool.reader().read(u64::MAX, u64::MAX).unwrap();
        spool.mark_shipped(got.last().unwrap().seq + 1).unwrap();
        appender.join().unwrap().unwrap();
        assert_eq!(spool.depth().0, 2);

        // At shutdown a full spool gives up instead of hanging.
        let stopping = AtomicBool::new(true);
        spool.append(&[batch(7), batch(8)], &never()).unwrap();
        let err = spool
            .append(&[batch(9), batch(9), batch(9), batch(9)], &stopping)
            .unwrap_err();
        assert!(matches!(err, SpoolError::FullAtShutdown));
    }
}
