use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};

use arrow::array::{Array, StringArray, UInt64Array};
use arrow::record_batch::RecordBatch;
use parquet::arrow::ArrowWriter;
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;
use tillwatch_domain::HourPartition;

use crate::schema::{KEY_COLUMNS, Table};
use crate::staging::PartBatch;

#[derive(Debug, thiserror::Error)]
pub enum LakeError {
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("parquet file {path}: {source}")]
    Parquet {
        path: PathBuf,
        source: parquet::errors::ParquetError,
    },
    #[error("parquet file {path}: {source}")]
    Arrow {
        path: PathBuf,
        source: arrow::error::ArrowError,
    },
    #[error("parquet file {path} lacks column {column:?} of type {expected}")]
    Column {
        path: PathBuf,
        column: &'static str,
        expected: &'static str,
    },
}

pub(crate) fn io_err<'a>(
    action: &'static str,
    path: &'a Path,
) -> impl FnOnce(io::Error) -> LakeError + 'a {
    move |source| LakeError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// A file that is in place and synced.
#[derive(Debug, Clone)]
pub struct WrittenFile {
    pub table: Table,
    pub path: PathBuf,
    pub rows: usize,
    pub bytes: u64,
}

/// The lake's root directory and its layout.
#[derive(Debug, Clone)]
pub struct Lake {
    root: PathBuf,
}

impl Lake {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Lake { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn table_dir(&self, table: Table) -> PathBuf {
        self.root.join(table.name())
    }

    /// Where a file of `table` for `hour` named `file_name` lives.
    pub fn file_path(&self, table: Table, hour: HourPartition, file_name: &str) -> PathBuf {
        self.table_dir(table).join(hour.hive_path()).join(file_name)
    }

    /// The complete Parquet files of one table's hour, sorted by name:
    /// what a reader of the hour must read, no more (files a finished
    /// compaction replaced are left out until they are deleted).
    pub fn hour_files(&self, table: Table, hour: HourPartition) -> Vec<PathBuf> {
        let dir = self.table_dir(table).join(hour.hive_path());
        let hidden = crate::compact::hidden_by_manifest(&dir);
        let mut files: Vec<PathBuf> = fs::read_dir(&dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "parquet"))
            .filter(|p| {
                hidden.is_empty()
                    || !p
                        .file_name()
                        .is_some_and(|n| hidden.contains(n.to_string_lossy().as_ref()))
            })
            .collect();
        files.sort();
        files
    }

    /// What an hour of a table holds, as a short hex string that changes
    /// whenever a file is added, replaced or removed there (files are
    /// immutable once visible: names and sizes say it all). An empty hour
    /// has a fingerprint too.
    pub fn hour_fingerprint(&self, table: Table, hour: HourPartition) -> String {
        Self::fingerprint_files(&self.hour_files(table, hour))
    }

    /// No files: the empty string. One compacted file stands for the files
    /// it replaced (its name carries their fingerprint), so compacting an
    /// hour does not change what the hour's readers see as its version;
    /// a late file beside it does.
    pub(crate) fn fingerprint_files(files: &[PathBuf]) -> String {
        if files.is_empty() {
            return String::new();
        }
        if let [only] = files
            && let Some(name) = only.file_name().map(|n| n.to_string_lossy())
            && let Some(replaced) = crate::compact::replaced_fingerprint(&name)
        {
            return replaced.to_string();
        }
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for path in files {
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
            let size = fs::metadata(path).map(|m| m.len()).unwrap_or(0);
            for b in format!("{}:{size};", name.unwrap_or_default()).bytes() {
                h ^= u64::from(b);
                h = h.wrapping_mul(0x0100_0000_01b3);
            }
        }
        format!("{h:016x}")
    }

    /// Every hour of `table` that has files, with its fingerprint (as
    /// [`Lake::hour_fingerprint`]). Blocking: one directory listing per
    /// hour present, none for hours absent.
    pub fn fingerprints(&self, table: Table) -> Vec<(HourPartition, String)> {
        let mut out = Vec::new();
        let dirs = |p: &Path| -> Vec<(String, PathBuf)> {
            fs::read_dir(p)
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| (e.file_name().to_string_lossy().into_owned(), e.path()))
                .collect()
        };
        for (date, date_path) in dirs(&self.table_dir(table)) {
            for (hour, _) in dirs(&date_path) {
                if let Some(h) = HourPartition::from_hive(&date, &hour) {
                    let fp = self.hour_fingerprint(table, h);
                    if !fp.is_empty() {
                        out.push((h, fp));
                    }
                }
            }
        }
        out.sort();
        out
    }

    fn watermark_dir(&self) -> PathBuf {
        self.root.join("_watermarks")
    }

    /// Records that every message `writer` received before `at_ms` is
    /// durable in the lake (the ingest watermark), replacing its previous
    /// record atomically. Blocking.
    pub fn write_watermark(&self, writer: &str, at_ms: i64) -> Result<(), LakeError> {
        let dir = self.watermark_dir();
        fs::create_dir_all(&dir).map_err(io_err("create directory", &dir))?;
        let path = dir.join(writer);
        let tmp = Self::temp_path(&path);
        fs::write(&tmp, at_ms.to_string()).map_err(io_err("write", &tmp))?;
        fs::rename(&tmp, &path).map_err(io_err("rename", &path))
    }

    /// The ingest watermark: the earliest of the writers' records (every
    /// writer must have caught up), `None` before any writer recorded one.
    /// Blocking.
    pub fn watermark(&self) -> Option<i64> {
        fs::read_dir(self.watermark_dir())
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
            .filter_map(|e| {
                fs::read_to_string(e.path())
                    .ok()?
                    .trim()
                    .parse::<i64>()
                    .ok()
            })
            .min()
    }

    /// The hidden name a file is written under before it is renamed into
    /// place; `*.parquet` globs never match it.
    pub fn temp_path(final_path: &Path) -> PathBuf {
        let name = final_path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        final_path.with_file_name(format!(".{name}.tmp"))
    }

    /// Writes one part as a Parquet file at `path` (from [`Lake::file_path`]):
    /// temp file, fsync, rename, fsync of the directory. Blocking.
    pub fn write_part(&self, part: &PartBatch, path: &Path) -> Result<WrittenFile, LakeError> {
        let dir = path
            .parent()
            .expect("lake files live in a partition directory");
        fs::create_dir_all(dir).map_err(io_err("create directory", dir))?;
        let tmp = Self::temp_path(path);
        let mut file = File::create(&tmp).map_err(io_err("create", &tmp))?;
        encode_parquet(part, &mut file).map_err(|source| LakeError::Parquet {
            path: tmp.clone(),
            source,
        })?;
        file.sync_all().map_err(io_err("sync", &tmp))?;
        let bytes = file.metadata().map_err(io_err("stat", &tmp))?.len();
        drop(file);
        fs::rename(&tmp, path).map_err(io_err("rename into place", path))?;
        sync_dir(dir)?;
        Ok(WrittenFile {
            table: part.table,
            path: path.to_path_buf(),
            rows: part.batch.num_rows(),
            bytes,
        })
    }
}

/// Encodes one part as a Parquet file (Snappy) into `out`: the lake's one
/// encoding, also what the benchmarks measure.
pub fn encode_parquet<W: std::io::Write + Send>(
    part: &PartBatch,
    out: W,
) -> Result<(), parquet::errors::ParquetError> {
    let props = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .set_write_batch_size(8192)
        .build();
    let mut writer = ArrowWriter::try_new(out, part.batch.schema(), Some(props))?;
    writer.write(&part.batch)?;
    writer.close()?;
    Ok(())
}

/// Makes a rename or create in `dir` durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), LakeError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("sync directory", dir))
}

/// Reads a whole Parquet file of the lake.
pub fn read_file(path: &Path) -> Result<Vec<RecordBatch>, LakeError> {
    let file = File::open(path).map_err(io_err("open", path))?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)
        .and_then(|b| b.build())
        .map_err(|source| LakeError::Parquet {
            path: path.to_path_buf(),
            source,
        })?;
    reader
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| LakeError::Arrow {
            path: path.to_path_buf(),
            source,
        })
}

/// Reads only `(device_id, boot_id, seq)` of a reading file: what the
/// gateway needs to rebuild its dedup index after a crash.
pub fn read_reading_keys(path: &Path) -> Result<Vec<(String, u64, u64)>, LakeError> {
    let parquet_err = |source| LakeError::Parquet {
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(io_err("open", path))?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(parquet_err)?;
    let mask = ProjectionMask::columns(builder.parquet_schema(), KEY_COLUMNS);
    let reader = builder.with_projection(mask).build().map_err(parquet_err)?;
    let mut keys = Vec::new();
    for batch in reader {
        let batch = batch.map_err(|source| LakeError::Arrow {
            path: path.to_path_buf(),
            source,
        })?;
        let column = |name: &'static str| {
            batch.column_by_name(name).ok_or(LakeError::Column {
                path: path.to_path_buf(),
                column: name,
                expected: "present",
            })
        };
        let devices = column("device_id")?
            .as_any()
            .downcast_ref::<StringArray>()
            .ok_or(LakeError::Column {
                path: path.to_path_buf(),
                column: "device_id",
                expected: "utf8",
            })?;
        let boots = column("boot_id")?
            .as_any()
            .downcast_ref::<UInt64Array>()
            .ok_or(LakeError::Column {
                path: path.to_path_buf(),
                column: "boot_id",
                expected: "uint64",
            })?;
        let seqs = column("seq")?
            .as_any()
            .downcast_ref::<UInt64Array>()
            .ok_or(LakeError::Column {
                path: path.to_path_buf(),
                column: "seq",
                expected: "uint64",
            })?;
        for i in 0..batch.num_rows() {
            if devices.is_valid(i) {
                keys.push((devices.value(i).to_owned(), boots.value(i), seqs.value(i)));
            }
        }
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_hours_fingerprint_changes_when_a_file_arrives_and_only_then() {
        let dir = tempfile::tempdir().unwrap();
        let lake = Lake::new(dir.path());
        let hour = HourPartition(490_000);
        let other = HourPartition(490_001);
        let empty = lake.hour_fingerprint(Table::Reading(tillwatch_domain::Kind::Battery), hour);
        let path = lake.file_path(
            Table::Reading(tillwatch_domain::Kind::Battery),
            hour,
            "a.parquet",
        );
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, b"PAR1 one file").unwrap();
        // A file being written (hidden temp name) does not count yet.
        fs::write(
            Lake::temp_path(&lake.file_path(
                Table::Reading(tillwatch_domain::Kind::Battery),
                hour,
                "b.parquet",
            )),
            b"x",
        )
        .unwrap();
        let one = lake.hour_fingerprint(Table::Reading(tillwatch_domain::Kind::Battery), hour);
        assert_ne!(one, empty);
        assert_eq!(
            lake.hour_fingerprint(Table::Reading(tillwatch_domain::Kind::Battery), hour),
            one,
            "stable"
        );
        assert_eq!(
            lake.hour_fingerprint(Table::Reading(tillwatch_domain::Kind::Battery), other),
            empty,
            "other hours untouched"
        );
        // Late data: a second file in the same hour.
        fs::write(
            lake.file_path(
                Table::Reading(tillwatch_domain::Kind::Battery),
                hour,
                "b.parquet",
            ),
            b"PAR1 late",
        )
        .unwrap();
        assert_ne!(
            lake.hour_fingerprint(Table::Reading(tillwatch_domain::Kind::Battery), hour),
            one
        );
        assert_eq!(
            lake.hour_files(Table::Reading(tillwatch_domain::Kind::Battery), hour)
                .len(),
            2
        );
        // The listing of every hour agrees with the per-hour fingerprint.
        let table = Table::Reading(tillwatch_domain::Kind::Battery);
        assert_eq!(
            lake.fingerprints(table),
            [(hour, lake.hour_fingerprint(table, hour))]
        );
    }

    #[test]
    fn the_watermark_is_the_slowest_writers() {
        let dir = tempfile::tempdir().unwrap();
        let lake = Lake::new(dir.path());
        assert_eq!(lake.watermark(), None);
        lake.write_watermark("gw-a", 2_000).unwrap();
        assert_eq!(lake.watermark(), Some(2_000));
        lake.write_watermark("gw-b", 1_500).unwrap();
        assert_eq!(lake.watermark(), Some(1_500));
        lake.write_watermark("gw-b", 3_000).unwrap();
        assert_eq!(lake.watermark(), Some(2_000));
    }
}
