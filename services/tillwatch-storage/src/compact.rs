//! Compaction of a closed hour: the many small files the gateway's flushes
//! leave in one table-hour become one file, sorted by terminal and with each
//! reading once (a redelivered or replayed reading, same device, boot and
//! sequence number, is kept at its first arrival).
//!
//! The swap is atomic for everything that lists an hour through
//! [`Lake::hour_files`]:
//! 1. the merged file is written under a hidden name and synced;
//! 2. a manifest `_compaction.json` naming the new file and the files it
//!    replaces is written (temp, sync, rename);
//! 3. the merged file is renamed into place; from here `hour_files` lists
//!    it *instead of* the replaced files, which are
//! 4. deleted, and then the manifest is.
//!
//! A crash before 3 leaves the old files (the manifest names a file that
//! does not exist, and is ignored and removed); a crash after 3 leaves the
//! new one (the manifest hides the old files until the next compaction
//! finishes deleting them). No reading is counted twice or missed.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use arrow::array::{AsArray, RecordBatch, UInt32Array};
use arrow::compute::{SortColumn, concat_batches, lexsort_to_indices, take_record_batch};
use arrow::datatypes::UInt64Type;
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;
use tillwatch_domain::HourPartition;

use crate::lake::{Lake, LakeError};
use crate::schema::{Table, schema};
use crate::store::Backend;

pub(crate) const MANIFEST: &str = "_compaction.json";
const PREFIX: &str = "compacted-";

/// What compacting one table-hour did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Compacted {
    /// Files merged (0 when the hour was already one compacted file).
    pub files_in: usize,
    /// Rows read and rows written (fewer when duplicates were dropped).
    pub rows_in: u64,
    pub rows_out: u64,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Manifest {
    new: String,
    replaces: Vec<String>,
}

fn read_manifest(backend: &Backend, path: &Path) -> Result<Option<Manifest>, LakeError> {
    Ok(backend
        .get(path)?
        .and_then(|bytes| serde_json::from_slice(&bytes).ok()))
}

/// The fingerprint of the files a compacted file replaced, from its name.
pub(crate) fn replaced_fingerprint(name: &str) -> Option<&str> {
    name.strip_prefix(PREFIX)?.strip_suffix(".parquet")
}

/// The names a reader of a directory must not list, given its manifest
/// at `manifest` and the directory's `files`: those a finished compaction
/// replaced but has not deleted yet.
pub(crate) fn hidden_by_manifest(
    backend: &Backend,
    manifest: &Path,
    files: &[(PathBuf, u64)],
) -> Result<BTreeSet<String>, LakeError> {
    let Some(m) = read_manifest(backend, manifest)? else {
        return Ok(BTreeSet::new());
    };
    let finished = files
        .iter()
        .any(|(p, _)| p.file_name().is_some_and(|n| *n == *m.new));
    Ok(if finished {
        m.replaces.into_iter().collect()
    } else {
        BTreeSet::new()
    })
}

fn name_of(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Finishes or abandons a compaction a crash interrupted.
fn recover(backend: &Backend, dir: &Path) -> Result<(), LakeError> {
    let path = dir.join(MANIFEST);
    let Some(manifest) = read_manifest(backend, &path)? else {
        return backend.delete(&path);
    };
    if backend.exists(&dir.join(&manifest.new))? {
        for name in &manifest.replaces {
            backend.delete(&dir.join(name))?;
        }
    } else {
        // Cut short before the merged file was in place.
        backend.discard_partial(&dir.join(&manifest.new))?;
    }
    backend.delete(&path)
}

/// Sorts by (device, boot, seq, arrival) and keeps the first of each
/// (device, boot, seq).
fn dedup_sorted(
    table: Table,
    batch: &RecordBatch,
) -> Result<RecordBatch, arrow::error::ArrowError> {
    let col = |name: &str| {
        batch
            .column_by_name(name)
            .unwrap_or_else(|| panic!("{} has {name}", table.name()))
            .clone()
    };
    let keys = ["device_id", "boot_id", "seq", "received_at"].map(|n| SortColumn {
        values: col(n),
        options: None,
    });
    let order = lexsort_to_indices(&keys, None)?;
    let sorted = take_record_batch(batch, &order)?;
    let device = sorted.column_by_name("device_id").expect("device_id");
    let device = device.as_string::<i32>();
    let boot = sorted.column_by_name("boot_id").expect("boot_id");
    let boot = boot.as_primitive::<UInt64Type>();
    let seq = sorted.column_by_name("seq").expect("seq");
    let seq = seq.as_primitive::<UInt64Type>();
    let mut keep = Vec::with_capacity(sorted.num_rows());
    for i in 0..sorted.num_rows() {
        let same = i > 0
            && device.value(i) == device.value(i - 1)
            && boot.value(i) == boot.value(i - 1)
            && seq.value(i) == seq.value(i - 1);
        if !same {
            keep.push(i as u32);
        }
    }
    if keep.len() == sorted.num_rows() {
        return Ok(sorted);
    }
    take_record_batch(&sorted, &UInt32Array::from(keep))
}

impl Lake {
    /// Merges one table-hour's files into one (see the module docs).
    /// Blocking. Safe to repeat: an hour that is already a single
    /// compacted file is left alone.
    pub fn compact_hour(&self, table: Table, hour: HourPartition) -> Result<Compacted, LakeError> {
        let dir = self.table_dir(table).join(hour.hive_path());
        let backend = self.backend();
        recover(backend, &dir)?;
        let files = self.hour_listing(table, hour)?;
        let done = files.len() == 1 && name_of(&files[0].0).starts_with(PREFIX);
        if files.is_empty() || done {
            return Ok(Compacted::default());
        }
        let mut batches = Vec::new();
        for (f, _) in &files {
            batches.extend(self.read_file(f)?);
        }
        let schema = schema(table);
        let arrow_err = |source| LakeError::Arrow {
            path: dir.clone(),
            source,
        };
        let all = concat_batches(&schema, &batches).map_err(arrow_err)?;
        let merged = dedup_sorted(table, &all).map_err(arrow_err)?;

        let new_name = format!("{PREFIX}{}.parquet", Self::fingerprint_files(&files));
        let new_path = dir.join(&new_name);
        let props = WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            // Sorted by terminal: small groups let a one-terminal read
            // (the device page's raw series) skip the others by their
            // statistics.
            .set_max_row_group_row_count(Some(16 * 1024))
            .build();
        let parquet_err = |source| LakeError::Parquet {
            path: new_path.clone(),
            source,
        };
        let mut encoded = Vec::new();
        let mut writer =
            ArrowWriter::try_new(&mut encoded, schema.clone(), Some(props)).map_err(parquet_err)?;
        writer.write(&merged).map_err(parquet_err)?;
        writer.close().map_err(parquet_err)?;

        let manifest = Manifest {
            new: new_name,
            replaces: files.iter().map(|(f, _)| name_of(f)).collect(),
        };
        backend.put(
            &dir.join(MANIFEST),
            serde_json::to_vec(&manifest)
                .expect("a manifest serialises")
                .into(),
        )?;
        backend.put(&new_path, encoded.into())?;
        recover(backend, &dir)?;
        Ok(Compacted {
            files_in: files.len(),
            rows_in: all.num_rows() as u64,
            rows_out: merged.num_rows() as u64,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lake::read_file;
    use crate::sample;
    use std::fs;
    use tillwatch_domain::Kind;

    fn rows(lake: &Lake, table: Table, hour: HourPartition) -> Vec<(String, u64)> {
        let mut out = Vec::new();
        for f in lake.hour_files(table, hour) {
            for b in read_file(&f).unwrap() {
                let d = b
                    .column_by_name("device_id")
                    .unwrap()
                    .as_string::<i32>()
                    .clone();
                let s = b
                    .column_by_name("seq")
                    .unwrap()
                    .as_primitive::<UInt64Type>()
                    .clone();
                for i in 0..b.num_rows() {
                    out.push((d.value(i).to_string(), s.value(i)));
                }
            }
        }
        out.sort();
        out
    }

    #[test]
    fn small_files_become_one_with_each_reading_once() {
        let dir = tempfile::tempdir().unwrap();
        let lake = Lake::new(dir.path());
        let start = 1_795_132_800_000;
        let mut hour = None;
        // Three flushes, the third a redelivery of the first.
        for (i, offset) in [(0, 0), (1, 1000), (2, 0)] {
            for part in sample::staged(40, Some(Kind::Battery), start + offset).finish() {
                hour.get_or_insert(part.hour);
                let path = lake.file_path(part.table, part.hour, &format!("f{i}.parquet"));
                lake.write_part(&part, &path).unwrap();
            }
        }
        let table = Table::Reading(Kind::Battery);
        let hour = hour.unwrap();
        let before = rows(&lake, table, hour);
        let fingerprint = lake.hour_fingerprint(table, hour);
        let mut distinct = before.clone();
        distinct.dedup();

        let report = lake.compact_hour(table, hour).unwrap();
        assert_eq!(report.files_in, 3);
        assert_eq!(report.rows_in as usize, before.len());
        assert_eq!(report.rows_out as usize, distinct.len());
        let files = lake.hour_files(table, hour);
        assert_eq!(files.len(), 1, "{files:?}");
        assert_eq!(rows(&lake, table, hour), distinct);
        // The hour's version is unchanged: what depends on it need not
        // run again because it was compacted.
        assert_eq!(lake.hour_fingerprint(table, hour), fingerprint);

        // Again: nothing to do, nothing changes.
        assert_eq!(
            lake.compact_hour(table, hour).unwrap(),
            Compacted::default()
        );
        assert_eq!(lake.hour_fingerprint(table, hour), fingerprint);

        // A late file changes the version, and compacting it in keeps that.
        for part in sample::staged(5, Some(Kind::Battery), start + 5000).finish() {
            assert_eq!(part.hour, hour, "the late readings are of the same hour");
            let path = lake.file_path(part.table, part.hour, "late.parquet");
            lake.write_part(&part, &path).unwrap();
        }
        let late = lake.hour_fingerprint(table, hour);
        assert_ne!(late, fingerprint);
        assert_eq!(lake.compact_hour(table, hour).unwrap().files_in, 2);
        assert_eq!(lake.hour_fingerprint(table, hour), late);
    }

    #[test]
    fn a_compaction_cut_short_shows_the_old_files_or_the_new_never_both() {
        let dir = tempfile::tempdir().unwrap();
        let lake = Lake::new(dir.path());
        let start = 1_795_132_800_000;
        let table = Table::Reading(Kind::Battery);
        let mut hour = None;
        for i in 0..2 {
            for part in sample::staged(10, Some(Kind::Battery), start + i * 1000).finish() {
                hour = Some(part.hour);
                let path = lake.file_path(part.table, part.hour, &format!("f{i}.parquet"));
                lake.write_part(&part, &path).unwrap();
            }
        }
        let hour = hour.unwrap();
        let hour_dir = lake.table_dir(table).join(hour.hive_path());
        let old = rows(&lake, table, hour);

        // Killed after the manifest, before the rename: the old files.
        let manifest = Manifest {
            new: "compacted-x.parquet".into(),
            replaces: vec!["f0.parquet".into(), "f1.parquet".into()],
        };
        fs::write(
            hour_dir.join(MANIFEST),
            serde_json::to_vec(&manifest).unwrap(),
        )
        .unwrap();
        assert_eq!(rows(&lake, table, hour), old);

        // Killed after the rename, before the deletions: the new file only.
        let merged = lake.hour_files(table, hour);
        fs::copy(&merged[0], hour_dir.join("compacted-x.parquet")).unwrap();
        let listed = lake.hour_files(table, hour);
        assert_eq!(listed, vec![hour_dir.join("compacted-x.parquet")]);

        // The next compaction finishes the job.
        lake.compact_hour(table, hour).unwrap();
        assert!(!hour_dir.join(MANIFEST).exists());
        assert!(!hour_dir.join("f1.parquet").exists());
    }
}
