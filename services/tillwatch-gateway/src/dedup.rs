//! Which readings are already in the lake, kept durably so a reading is
//! stored once across redeliveries and gateway restarts.
//!
//! Design: per (device, boot) a set of sequence-number ranges. A terminal
//! numbers its readings 0, 1, 2, … within a boot, so a device that delivers
//! everything costs one range however long it runs; only real gaps (lost or
//! not-yet-arrived readings) cost more. Late replays fill gaps and ranges
//! merge again.
//!
//! Durability: a journal of flush records, each framed with its length and a
//! CRC-32. Before a flush renames files into the lake it appends an
//! *intent* naming them; after, a *commit* with the keys it stored. On
//! start-up the journal is replayed; an intent without a commit (a crash in
//! between) is resolved by reading the keys back from whichever of its files
//! made it into place. When the journal grows past a limit, a snapshot of
//! the committed index replaces it.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};

use tillwatch_domain::{BootId, DeviceId, ReadingKey};
use tillwatch_storage::Lake;

/// Sequence numbers seen within one boot, as disjoint half-open ranges.
///
/// Almost every boot is one unbroken run, so that case is held inline (no
/// allocation); a boot with gaps keeps its ranges in a tree.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SeqRanges(Ranges);

#[derive(Debug, Clone, Default, PartialEq, Eq)]
enum Ranges {
    #[default]
    Empty,
    One(u64, u64),
    // start -> end (exclusive); ranges never touch or overlap.
    Many(BTreeMap<u64, u64>),
}

impl SeqRanges {
    pub fn contains(&self, seq: u64) -> bool {
        match &self.0 {
            Ranges::Empty => false,
            Ranges::One(s, e) => *s <= seq && seq < *e,
            Ranges::Many(ranges) => ranges
                .range(..=seq)
                .next_back()
                .is_some_and(|(_, &end)| seq < end),
        }
    }

    /// Adds `seq`; false when it was already there.
    pub fn insert(&mut self, seq: u64) -> bool {
        if self.contains(seq) {
            return false;
        }
        self.insert_range(seq, seq.saturating_add(1));
        true
    }

    /// Adds `start..end`, merging with every range it overlaps or touches.
    fn insert_range(&mut self, mut start: u64, mut end: u64) {
        if start >= end {
            return;
        }
        match &mut self.0 {
            Ranges::Empty => self.0 = Ranges::One(start, end),
            Ranges::One(s, e) => {
                if start <= *e && *s <= end {
                    *s = (*s).min(start);
                    *e = (*e).max(end);
                } else {
                    self.0 = Ranges::Many(BTreeMap::from([(*s, *e), (start, end)]));
                }
            }
            Ranges::Many(ranges) => {
                // Ranges are disjoint and sorted, so their ends are sorted
                // too: the ones to merge are the last few starting at or
                // before `end`.
                let merge: Vec<(u64, u64)> = ranges
                    .range(..=end)
                    .rev()
                    .take_while(|(_, e)| **e >= start)
                    .map(|(s, e)| (*s, *e))
                    .collect();
                for (s, e) in merge {
                    ranges.remove(&s);
                    start = start.min(s);
                    end = end.max(e);
                }
                ranges.insert(start, end);
                if ranges.len() == 1 {
                    self.0 = Ranges::One(start, end);
                }
            }
        }
    }

    pub fn range_count(&self) -> usize {
        match &self.0 {
            Ranges::Empty => 0,
            Ranges::One(..) => 1,
            Ranges::Many(ranges) => ranges.len(),
        }
    }

    /// The newest `max` ranges, oldest first.
    pub fn newest(&self, max: usize) -> Vec<(u64, u64)> {
        match &self.0 {
            Ranges::Empty => Vec::new(),
            Ranges::One(s, e) => vec![(*s, *e)],
            Ranges::Many(ranges) => {
                let mut newest: Vec<(u64, u64)> = ranges
                    .iter()
                    .rev()
                    .take(max)
                    .map(|(s, e)| (*s, *e))
                    .collect();
                newest.reverse();
                newest
            }
        }
    }

    fn to_vec(&self) -> Vec<(u64, u64)> {
        match &self.0 {
            Ranges::Empty => Vec::new(),
            Ranges::One(s, e) => vec![(*s, *e)],
            Ranges::Many(ranges) => ranges.iter().map(|(s, e)| (*s, *e)).collect(),
        }
    }
}

/// What is known of one boot: its stored sequence numbers and the newest
/// sample time among them.
#[derive(Debug, Clone, Default)]
struct Boot {
    seqs: SeqRanges,
    newest_ms: i64,
}

/// Every reading key known to be stored.
#[derive(Debug, Default)]
pub struct DedupIndex {
    // By device, then boot: a lookup (once per reading) borrows the key's
    // device id instead of building an owned (device, boot) pair.
    devices: HashMap<DeviceId, HashMap<BootId, Boot>>,
}

impl DedupIndex {
    pub fn contains(&self, key: &ReadingKey) -> bool {
        self.devices
            .get(&key.device_id)
            .and_then(|boots| boots.get(&key.boot_id))
            .is_some_and(|b| b.seqs.contains(key.seq))
    }

    /// Adds a stored reading sampled at `sampled_ms`; false when its key was
    /// already there.
    pub fn insert(&mut self, key: &ReadingKey, sampled_ms: i64) -> bool {
        let boot = match self.devices.get_mut(&key.device_id) {
            Some(boots) => boots.entry(key.boot_id).or_default(),
            None => self.boot_entry(key.device_id.clone(), key.boot_id),
        };
        boot.newest_ms = boot.newest_ms.max(sampled_ms);
        boot.seqs.insert(key.seq)
    }

    fn boot_entry(&mut self, device: DeviceId, boot: BootId) -> &mut Boot {
        self.devices
            .entry(device)
            .or_default()
            .entry(boot)
            .or_insert(Boot {
                seqs: SeqRanges::default(),
                newest_ms: i64::MIN,
            })
    }

    /// (device, boot) pairs tracked.
    pub fn boots(&self) -> usize {
        self.devices.values().map(HashMap::len).sum()
    }

    /// Devices tracked.
    pub fn devices(&self) -> usize {
        self.devices.len()
    }

    /// Boots tracked for `device`.
    pub fn boots_of(&self, device: &DeviceId) -> usize {
        self.devices.get(device).map_or(0, HashMap::len)
    }

    /// The sequence numbers of `boot` of `device` known stored, as the
    /// newest `max` half-open ranges, oldest first.
    pub fn stored_ranges(&self, device: &DeviceId, boot: BootId, max: usize) -> Vec<(u64, u64)> {
        self.devices
            .get(device)
            .and_then(|boots| boots.get(&boot))
            .map(|b| b.seqs.newest(max))
            .unwrap_or_default()
    }

    /// Whether anything of `boot` of `device` is stored.
    pub fn knows_boot(&self, device: &DeviceId, boot: BootId) -> bool {
        self.devices
            .get(device)
            .is_some_and(|boots| boots.contains_key(&boot))
    }

    /// Forgets every boot whose newest stored reading was sampled before
    /// `cutoff_ms`; returns how many. Safe once the cutoff is older than
    /// the oldest sample time the gateway accepts: a redelivered reading of
    /// such a boot is sampled no later than its newest, so it is refused as
    /// too old before the index is asked.
    pub fn evict_sampled_before(&mut self, cutoff_ms: i64) -> usize {
        let before = self.boots();
        self.devices.retain(|_, boots| {
            boots.retain(|_, b| b.newest_ms >= cutoff_ms);
            if boots.capacity() > 2 * boots.len() + 8 {
                boots.shrink_to_fit();
            }
            !boots.is_empty()
        });
        let evicted = before - self.boots();
        if evicted > 0 {
            self.devices.shrink_to_fit();
        }
        evicted
    }

    fn iter(&self) -> impl Iterator<Item = (&DeviceId, BootId, &Boot)> + '_ {
        self.devices
            .iter()
            .flat_map(|(device, boots)| boots.iter().map(move |(boot, b)| (device, *boot, b)))
    }
}

const TAG_INTENT: u8 = 1;
// Written before boots carried their newest sample time; still read, the
// time taken as the moment of reading (so they are kept the longest).
const TAG_COMMIT_UNTIMED: u8 = 2;
const TAG_SNAPSHOT_ENTRY_UNTIMED: u8 = 3;
const TAG_SNAPSHOT_END: u8 = 4;
const TAG_COMMIT: u8 = 5;
const TAG_SNAPSHOT_ENTRY: u8 = 6;
const MAX_RECORD: usize = 256 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum DedupError {
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error(
        "dedup snapshot {0} is damaged; restore it from a backup or remove it \
         (readings redelivered afterwards may then be stored twice)"
    )]
    BadSnapshot(PathBuf),
    #[error("recovering an interrupted flush: {0}")]
    Recover(#[from] tillwatch_storage::LakeError),
}

fn io_err(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> DedupError + use<> {
    let path = path.to_path_buf();
    move |source| DedupError::Io {
        action,
        path,
        source,
    }
}

#[derive(Default)]
struct Enc(Vec<u8>);

impl Enc {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn str(&mut self, s: &str) {
        self.u32(s.len() as u32);
        self.0.extend_from_slice(s.as_bytes());
    }
    fn boot(&mut self, device: &str, boot: u64, seqs: &SeqRanges, newest_ms: i64) {
        self.str(device);
        self.u64(boot);
        let ranges = seqs.to_vec();
        self.u32(ranges.len() as u32);
        for (s, e) in ranges {
            self.u64(s);
            self.u64(e);
        }
        self.u64(newest_ms as u64);
    }
    fn framed(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.0.len() + 8);
        out.extend_from_slice(&(self.0.len() as u32).to_le_bytes());
        out.extend_from_slice(&crc32fast::hash(&self.0).to_le_bytes());
        out.extend_from_slice(&self.0);
        out
    }
}

/// A device id, a boot id, that boot's stored sequence ranges and its
/// newest sample time.
type BootRanges = (String, u64, Vec<(u64, u64)>, i64);

struct Dec<'a>(&'a [u8]);

impl Dec<'_> {
    fn take(&mut self, n: usize) -> Option<&[u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Some(head)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u32(&mut self) -> Option<u32> {
        self.take(4)
            .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")))
    }
    fn u64(&mut self) -> Option<u64> {
        self.take(8)
            .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
    }
    fn str(&mut self) -> Option<String> {
        let n = self.u32()? as usize;
        String::from_utf8(self.take(n)?.to_vec()).ok()
    }
    /// One boot's entry; `untimed` (the older format) has no sample time
    /// and gets `now_ms`.
    fn boot(&mut self, untimed: Option<i64>) -> Option<BootRanges> {
        let device = self.str()?;
        let boot = self.u64()?;
        let n = self.u32()? as usize;
        let mut ranges = Vec::with_capacity(n.min(4096));
        for _ in 0..n {
            ranges.push((self.u64()?, self.u64()?));
        }
        let newest_ms = match untimed {
            Some(now_ms) => now_ms,
            None => self.u64()? as i64,
        };
        Some((device, boot, ranges, newest_ms))
    }
}

/// Reads framed records until the end or the first damaged one; returns
/// them with the byte length of the valid prefix.
fn read_records(path: &Path) -> Result<(Vec<Vec<u8>>, u64), DedupError> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((Vec::new(), 0)),
        Err(e) => return Err(io_err("open", path)(e)),
    };
    let mut reader = BufReader::new(file);
    let mut records = Vec::new();
    let mut valid = 0u64;
    loop {
        let mut head = [0u8; 8];
        match reader.read_exact(&mut head) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => break,
            Err(e) => return Err(io_err("read", path)(e)),
        }
        let len = u32::from_le_bytes(head[..4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(head[4..].try_into().expect("4 bytes"));
        if len > MAX_RECORD {
            break;
        }
        let mut body = vec![0u8; len];
        match reader.read_exact(&mut body) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => break,
            Err(e) => return Err(io_err("read", path)(e)),
        }
        if crc32fast::hash(&body) != crc {
            break;
        }
        valid += 8 + len as u64;
        records.push(body);
    }
    Ok((records, valid))
}

/// What start-up found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Recovery {
    pub committed_flushes: u64,
    /// Flushes interrupted between their intent and their commit.
    pub interrupted_flushes: u64,
    /// Keys read back from the files of interrupted flushes.
    pub recovered_keys: u64,
    /// Bytes of a torn journal tail that were cut off.
    pub truncated_bytes: u64,
}

/// The committed dedup index and its journal. Used from blocking code.
pub struct DedupStore {
    dir: PathBuf,
    lake: Lake,
    // Shared with the pipeline, which reads it for every message; written
    // only here, after a commit is durable.
    index: Arc<RwLock<DedupIndex>>,
    journal: File,
    journal_bytes: u64,
    snapshot_after_bytes: u64,
    next_flush_id: u64,
}

impl DedupStore {
    fn journal_path(dir: &Path) -> PathBuf {
        dir.join("dedup.journal")
    }

    fn snapshot_path(dir: &Path) -> PathBuf {
        dir.join("dedup.snapshot")
    }

    /// Opens (or creates) the store in `dir`, replaying and repairing it.
    /// `now_ms` stands for the sample time of entries written before boots
    /// carried one, and of keys recovered from an interrupted flush.
    pub fn open(dir: &Path, lake: Lake, now_ms: i64) -> Result<(DedupStore, Recovery), DedupError> {
        fs::create_dir_all(dir).map_err(io_err("create directory", dir))?;
        let mut index = DedupIndex::default();
        let mut next_flush_id = 1u64;
        let mut recovery = Recovery::default();

        let snapshot = Self::snapshot_path(dir);
        if snapshot.exists() {
            let (records, _) = read_records(&snapshot)?;
            let mut ended = false;
            for body in &records {
                let mut d = Dec(body);
                match d.u8() {
                    Some(tag @ (TAG_SNAPSHOT_ENTRY | TAG_SNAPSHOT_ENTRY_UNTIMED)) => {
                        let untimed = (tag == TAG_SNAPSHOT_ENTRY_UNTIMED).then_some(now_ms);
                        let entry = d
                            .boot(untimed)
                            .ok_or_else(|| DedupError::BadSnapshot(snapshot.clone()))?;
                        apply_boot(&mut index, entry);
                    }
                    Some(TAG_SNAPSHOT_END) => {
                        next_flush_id = d
                            .u64()
                            .ok_or_else(|| DedupError::BadSnapshot(snapshot.clone()))?;
                        ended = true;
                    }
                    _ => return Err(DedupError::BadSnapshot(snapshot)),
                }
            }
            if !ended {
                return Err(DedupError::BadSnapshot(snapshot));
            }
        }

        let journal_path = Self::journal_path(dir);
        let (records, valid) = read_records(&journal_path)?;
        let mut intents: BTreeMap<u64, Vec<String>> = BTreeMap::new();
        for body in &records {
            let mut d = Dec(body);
            let tag = d.u8();
            let Some(flush_id) = d.u64() else { continue };
            next_flush_id = next_flush_id.max(flush_id + 1);
            match tag {
                Some(TAG_INTENT) => {
                    let n = d.u32().unwrap_or(0);
                    let files: Option<Vec<String>> = (0..n).map(|_| d.str()).collect();
                    intents.insert(flush_id, files.unwrap_or_default());
                }
                Some(tag @ (TAG_COMMIT | TAG_COMMIT_UNTIMED)) => {
                    intents.remove(&flush_id);
                    recovery.committed_flushes += 1;
                    let untimed = (tag == TAG_COMMIT_UNTIMED).then_some(now_ms);
                    let n = d.u32().unwrap_or(0);
                    for _ in 0..n {
                        let Some(entry) = d.boot(untimed) else {
                            break;
                        };
                        apply_boot(&mut index, entry);
                    }
                }
                _ => {}
            }
        }

        let journal = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&journal_path)
            .map_err(io_err("open", &journal_path))?;
        let on_disk = journal
            .metadata()
            .map_err(io_err("stat", &journal_path))?
            .len();
        if on_disk > valid {
            // A torn write at the end: the flush it belonged to never
            // committed, so nothing was acked on its strength.
            recovery.truncated_bytes = on_disk - valid;
            journal
                .set_len(valid)
                .map_err(io_err("truncate", &journal_path))?;
            journal.sync_all().map_err(io_err("sync", &journal_path))?;
        }
        let mut journal_file = journal;
        use std::io::Seek;
        journal_file
            .seek(io::SeekFrom::End(0))
            .map_err(io_err("seek", &journal_path))?;

        let mut store = DedupStore {
            dir: dir.to_path_buf(),
            lake,
            index: Arc::new(RwLock::new(index)),
            journal: journal_file,
            journal_bytes: valid,
            snapshot_after_bytes: 64 * 1024 * 1024,
            next_flush_id,
        };

        for (flush_id, files) in intents {
            recovery.interrupted_flushes += 1;
            let mut keys = Vec::new();
            for rel in files {
                let path = store.lake.root().join(&rel);
                let _ = store.lake.discard_partial(&path);
                if !rel.starts_with("dead_letter/") && store.lake.exists(&path)? {
                    for (device, boot, seq) in store.lake.read_reading_keys(&path)? {
                        if let Ok(device_id) = DeviceId::new(&device) {
                            let key = ReadingKey {
                                device_id,
                                boot_id: BootId(boot),
                                seq,
                            };
                            keys.push((key, now_ms));
                        }
                    }
                }
            }
            recovery.recovered_keys += keys.len() as u64;
            store.commit(flush_id, &keys)?;
        }
        Ok((store, recovery))
    }

    /// Allocates the id of the next flush.
    pub fn next_flush_id(&mut self) -> u64 {
        let id = self.next_flush_id;
        self.next_flush_id += 1;
        id
    }

    pub fn is_stored(&self, key: &ReadingKey) -> bool {
        self.index
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(key)
    }

    /// The committed index, for lookups from the ingest path.
    pub fn index(&self) -> Arc<RwLock<DedupIndex>> {
        self.index.clone()
    }

    fn append(&mut self, record: &Enc) -> Result<(), DedupError> {
        let path = Self::journal_path(&self.dir);
        let framed = record.framed();
        let appended = self
            .journal
            .write_all(&framed)
            .and_then(|()| self.journal.sync_data());
        if let Err(e) = appended {
            // Part of the frame may be on disk (a full disk): take it back,
            // or the next record would follow a torn one and replay would
            // stop there, losing every later commit.
            use std::io::Seek;
            let _ = self.journal.set_len(self.journal_bytes);
            let _ = self.journal.seek(io::SeekFrom::Start(self.journal_bytes));
            return Err(io_err("append to", &path)(e));
        }
        self.journal_bytes += framed.len() as u64;
        Ok(())
    }

    /// Records, durably, that flush `flush_id` is about to place `files`
    /// (paths under the lake root).
    pub fn write_intent(&mut self, flush_id: u64, files: &[PathBuf]) -> Result<(), DedupError> {
        let mut e = Enc::default();
        e.u8(TAG_INTENT);
        e.u64(flush_id);
        e.u32(files.len() as u32);
        for f in files {
            let rel = f.strip_prefix(self.lake.root()).unwrap_or(f);
            e.str(&rel.to_string_lossy());
        }
        self.append(&e)
    }

    /// Records, durably, that flush `flush_id` stored `keys` (each with
    /// its reading's sample time), and adds them to the index.
    pub fn commit(&mut self, flush_id: u64, keys: &[(ReadingKey, i64)]) -> Result<(), DedupError> {
        let mut sorted: Vec<&(ReadingKey, i64)> = keys.iter().collect();
        sorted.sort_by(|a, b| a.0.cmp(&b.0));
        let mut groups: Vec<(&DeviceId, BootId, SeqRanges, i64)> = Vec::new();
        for (key, sampled_ms) in sorted {
            match groups.last_mut() {
                Some((d, b, ranges, newest)) if *d == &key.device_id && *b == key.boot_id => {
                    ranges.insert(key.seq);
                    *newest = (*newest).max(*sampled_ms);
                }
                _ => {
                    let mut ranges = SeqRanges::default();
                    ranges.insert(key.seq);
                    groups.push((&key.device_id, key.boot_id, ranges, *sampled_ms));
                }
            }
        }
        let mut e = Enc::default();
        e.u8(TAG_COMMIT);
        e.u64(flush_id);
        e.u32(groups.len() as u32);
        for (device, boot, ranges, newest_ms) in &groups {
            e.boot(device.as_str(), boot.0, ranges, *newest_ms);
        }
        self.append(&e)?;
        {
            let mut index = self.index.write().unwrap_or_else(PoisonError::into_inner);
            for (key, sampled_ms) in keys {
                index.insert(key, *sampled_ms);
            }
        }
        if self.journal_bytes > self.snapshot_after_bytes {
            self.snapshot()?;
        }
        Ok(())
    }

    /// Writes the committed index as a snapshot and starts an empty journal.
    pub fn snapshot(&mut self) -> Result<(), DedupError> {
        let path = Self::snapshot_path(&self.dir);
        let tmp = self.dir.join(".dedup.snapshot.tmp");
        let mut file = File::create(&tmp).map_err(io_err("create", &tmp))?;
        let mut buf = io::BufWriter::new(&mut file);
        let index = self.index.read().unwrap_or_else(PoisonError::into_inner);
        for (device, boot, entry) in index.iter() {
            let mut e = Enc::default();
            e.u8(TAG_SNAPSHOT_ENTRY);
            e.boot(device.as_str(), boot.0, &entry.seqs, entry.newest_ms);
            buf.write_all(&e.framed()).map_err(io_err("write", &tmp))?;
        }
        let mut e = Enc::default();
        e.u8(TAG_SNAPSHOT_END);
        e.u64(self.next_flush_id);
        buf.write_all(&e.framed()).map_err(io_err("write", &tmp))?;
        buf.flush().map_err(io_err("write", &tmp))?;
        drop(buf);
        drop(index);
        file.sync_all().map_err(io_err("sync", &tmp))?;
        fs::rename(&tmp, &path).map_err(io_err("rename", &path))?;
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err("sync directory", &self.dir))?;
        // The snapshot holds everything the journal did; a crash before the
        // truncation only means replaying records already in the snapshot.
        let journal = Self::journal_path(&self.dir);
        self.journal
            .set_len(0)
            .map_err(io_err("truncate", &journal))?;
        use std::io::Seek;
        self.journal
            .seek(io::SeekFrom::Start(0))
            .map_err(io_err("seek", &journal))?;
        self.journal.sync_all().map_err(io_err("sync", &journal))?;
        self.journal_bytes = 0;
        Ok(())
    }

    /// Forgets every boot whose newest reading was sampled before
    /// `cutoff_ms` (see [`DedupIndex::evict_sampled_before`]) and, when
    /// any was, rewrites the snapshot so a restart does not load them
    /// again. Returns how many boots were forgotten.
    pub fn evict_sampled_before(&mut self, cutoff_ms: i64) -> Result<usize, DedupError> {
        let evicted = self
            .index
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .evict_sampled_before(cutoff_ms);
        if evicted > 0 {
            self.snapshot()?;
        }
        Ok(evicted)
    }

    #[cfg(test)]
    fn set_snapshot_after_bytes(&mut self, bytes: u64) {
        self.snapshot_after_bytes = bytes;
    }
}

fn apply_boot(index: &mut DedupIndex, (device, boot, ranges, newest_ms): BootRanges) {
    let Ok(device_id) = DeviceId::new(&device) else {
        return;
    };
    let entry = index.boot_entry(device_id, BootId(boot));
    entry.newest_ms = entry.newest_ms.max(newest_ms);
    for (s, e) in ranges {
        entry.seqs.insert_range(s, e);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(device: &str, boot: u64, seq: u64) -> ReadingKey {
        ReadingKey {
            device_id: DeviceId::new(device).unwrap(),
            boot_id: BootId(boot),
            seq,
        }
    }

    const NOW: i64 = 1_800_000_000_000;

    fn at(key: ReadingKey) -> (ReadingKey, i64) {
        (key, NOW)
    }

    #[test]
    fn ranges_merge_and_stay_compact() {
        let mut r = SeqRanges::default();
        assert!(r.insert(5));
        assert!(r.insert(7));
        assert_eq!(r.range_count(), 2);
        assert!(r.insert(6));
        assert_eq!(r.range_count(), 1);
        assert!(!r.insert(6));
        assert!(r.contains(5) && r.contains(7) && !r.contains(4) && !r.contains(8));
        for s in (0..5).rev() {
            assert!(r.insert(s));
        }
        assert_eq!(r.range_count(), 1);
        r.insert_range(20, 30);
        r.insert_range(10, 20);
        assert_eq!(r.range_count(), 2);
        assert!(r.contains(29) && !r.contains(30) && !r.contains(9));
        r.insert_range(7, 11);
        assert_eq!(r.range_count(), 1);
        assert_eq!(r, SeqRanges(Ranges::One(0, 30)), "one run is held inline");
    }

    #[test]
    fn a_notice_names_the_newest_ranges_oldest_first() {
        let mut r = SeqRanges::default();
        assert_eq!(r.newest(3), []);
        r.insert_range(0, 10);
        assert_eq!(r.newest(3), [(0, 10)]);
        for start in [20, 40, 60, 80] {
            r.insert_range(start, start + 5);
        }
        assert_eq!(r.newest(3), [(40, 45), (60, 65), (80, 85)]);
        assert_eq!(r.newest(99).len(), 5);
    }

    #[test]
    fn boots_not_sampled_within_the_horizon_are_forgotten_and_stay_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let lake = Lake::new(dir.path().join("lake"));
        let state = dir.path().join("state");
        let day = 86_400_000;
        {
            let (mut store, _) = DedupStore::open(&state, lake.clone(), NOW).unwrap();
            let id = store.next_flush_id();
            store
                .commit(
                    id,
                    &[
                        (key("old", 1, 0), NOW - 40 * day),
                        (key("mixed", 1, 0), NOW - 40 * day),
                        (key("mixed", 2, 0), NOW - 40 * day),
                        // A boot's newest sample counts, not its oldest.
                        (key("mixed", 2, 1), NOW - day),
                        (key("new", 1, 0), NOW),
                    ],
                )
                .unwrap();
            assert_eq!(store.evict_sampled_before(NOW - 31 * day).unwrap(), 2);
            assert!(!store.is_stored(&key("old", 1, 0)));
            assert!(!store.is_stored(&key("mixed", 1, 0)));
            assert!(store.is_stored(&key("mixed", 2, 0)));
            assert!(store.is_stored(&key("new", 1, 0)));
            let index = store.index();
            let index = index.read().unwrap();
            assert_eq!((index.devices(), index.boots()), (2, 2));
        }
        let (store, _) = DedupStore::open(&state, lake, NOW).unwrap();
        let index = store.index();
        let index = index.read().unwrap();
        assert_eq!((index.devices(), index.boots()), (2, 2), "not loaded again");
        assert!(index.knows_boot(&DeviceId::new("mixed").unwrap(), BootId(2)));
        assert_eq!(index.boots_of(&DeviceId::new("mixed").unwrap()), 1);
    }

    #[test]
    fn entries_written_before_sample_times_are_read_as_sampled_now() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        fs::create_dir_all(&state).unwrap();
        // A commit record as earlier versions wrote it: no sample time.
        let mut e = Enc::default();
        e.u8(TAG_COMMIT_UNTIMED);
        e.u64(1);
        e.u32(1);
        e.str("legacy");
        e.u64(3);
        e.u32(1);
        e.u64(0);
        e.u64(10);
        fs::write(state.join("dedup.journal"), e.framed()).unwrap();
        let (mut store, recovery) =
            DedupStore::open(&state, Lake::new(dir.path().join("lake")), NOW).unwrap();
        assert_eq!(recovery.committed_flushes, 1);
        assert!((0..10).all(|s| store.is_stored(&key("legacy", 3, s))));
        assert_eq!(store.evict_sampled_before(NOW - 1).unwrap(), 0);
        assert_eq!(store.evict_sampled_before(NOW + 1).unwrap(), 1);
        assert_eq!(store.next_flush_id(), 2);
    }

    #[test]
    fn committed_keys_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let lake = Lake::new(dir.path().join("lake"));
        let state = dir.path().join("state");
        {
            let (mut store, _) = DedupStore::open(&state, lake.clone(), NOW).unwrap();
            let id = store.next_flush_id();
            store.write_intent(id, &[]).unwrap();
            store
                .commit(
                    id,
                    &[at(key("a", 1, 0)), at(key("a", 1, 1)), at(key("b", 2, 9))],
                )
                .unwrap();
        }
        let (mut store, recovery) = DedupStore::open(&state, lake.clone(), NOW).unwrap();
        assert_eq!(recovery.committed_flushes, 1);
        assert!(store.is_stored(&key("a", 1, 1)));
        assert!(store.is_stored(&key("b", 2, 9)));
        assert!(!store.is_stored(&key("a", 2, 1)));
        assert_eq!(store.next_flush_id(), 2);
    }

    #[test]
    fn snapshots_replace_the_journal_and_a_torn_tail_is_cut() {
        let dir = tempfile::tempdir().unwrap();
        let lake = Lake::new(dir.path().join("lake"));
        let state = dir.path().join("state");
        {
            let (mut store, _) = DedupStore::open(&state, lake.clone(), NOW).unwrap();
            store.set_snapshot_after_bytes(200);
            for seq in 0..50 {
                let id = store.next_flush_id();
                store.commit(id, &[at(key("dev", 7, seq))]).unwrap();
            }
        }
        // A half-written record at the end, as a crash mid-append leaves.
        let journal = state.join("dedup.journal");
        let mut f = OpenOptions::new().append(true).open(&journal).unwrap();
        f.write_all(&[40, 0, 0, 0, 1, 2, 3]).unwrap();
        drop(f);
        let (mut store, recovery) = DedupStore::open(&state, lake, NOW).unwrap();
        assert_eq!(recovery.truncated_bytes, 7);
        assert!((0..50).all(|s| store.is_stored(&key("dev", 7, s))));
        assert!(!store.is_stored(&key("dev", 7, 50)));
        assert_eq!(store.next_flush_id(), 51);
    }

    #[test]
    fn a_damaged_snapshot_is_an_error_that_says_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        fs::create_dir_all(&state).unwrap();
        fs::write(state.join("dedup.snapshot"), b"garbage!garbage!").unwrap();
        let err = DedupStore::open(&state, Lake::new(dir.path().join("lake")), NOW)
            .err()
            .expect("fails")
            .to_string();
        assert!(err.contains("damaged"), "{err}");
    }
}
