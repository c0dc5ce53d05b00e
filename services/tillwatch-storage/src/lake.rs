use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{Array, StringArray, UInt64Array};
use arrow::record_batch::RecordBatch;
use parquet::arrow::ArrowWriter;
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;
use parquet::file::reader::ChunkReader;
use tillwatch_domain::HourPartition;

use crate::schema::{KEY_COLUMNS, Table};
use crate::staging::PartBatch;
use crate::store::{Backend, LakeS3Config, ObjectLake};

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
    #[error("{action} {path}: {source}")]
    Object {
        action: &'static str,
        path: PathBuf,
        source: Box<object_store::Error>,
    },
    #[error("lake location {path}: {source}")]
    S3Client {
        path: PathBuf,
        #[source]
        source: Box<object_store::Error>,
    },
    #[error("lake location {path}: not in {root}")]
    OutsideRoot { path: PathBuf, root: String },
    #[error("lake location {path}: {source}")]
    ObjectKey {
        path: PathBuf,
        #[source]
        source: object_store::path::Error,
    },
    #[error("lake location {path}: {reason}")]
    Location {
        path: PathBuf,
        reason: tillwatch_config::LakeRootError,
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

/// The lake's root and its layout: a local directory, or an
/// `s3://bucket/prefix` URL of an S3-compatible object store (see
/// [`crate::store`]). Every location the lake hands out (files, partition
/// directories, rollup outputs) is a path under that root, readable
/// through the lake's own methods, and by DataFusion as it is.
#[derive(Debug, Clone)]
pub struct Lake {
    root: PathBuf,
    backend: Backend,
}

impl Lake {
    /// A lake in a local directory.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Lake {
            root: root.into(),
            backend: Backend::Local,
        }
    }

    /// The lake at `root`: a local directory, or an `s3://bucket/prefix`
    /// URL reached with `s3` (which fills in from the `AWS_*` environment
    /// variables). Opening does no I/O.
    pub fn open(root: impl Into<PathBuf>, s3: &LakeS3Config) -> Result<Self, LakeError> {
        let root: PathBuf = root.into();
        let bucket =
            tillwatch_config::lake_bucket(&root).map_err(|reason| LakeError::Location {
                path: root.clone(),
                reason,
            })?;
        let Some(bucket) = bucket else {
            return Ok(Lake::new(root));
        };
        let object = ObjectLake::open(&root, bucket, s3)?;
        let trimmed = root.to_string_lossy().trim_end_matches('/').to_string();
        Ok(Lake {
            root: PathBuf::from(trimmed),
            backend: Backend::Object(Arc::new(object)),
        })
    }

    /// The lake a configuration names (`lake.path`, `lake.s3`), its
    /// secret files already read.
    pub fn from_config(config: &tillwatch_config::Config) -> Result<Self, LakeError> {
        Lake::open(config.lake_dir(), &config.lake.s3)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Whether the lake is in object storage rather than a local directory.
    pub fn is_object_store(&self) -> bool {
        matches!(self.backend, Backend::Object(_))
    }

    /// For a lake in object storage, the store's URL (`s3://bucket`) and a
    /// client for it, to register with a DataFusion session so it can read
    /// the lake's locations; `None` for a local lake.
    pub fn object_store(&self) -> Option<(String, Arc<dyn object_store::ObjectStore>)> {
        match &self.backend {
            Backend::Local => None,
            Backend::Object(o) => Some((o.bucket_url.clone(), o.query_store())),
        }
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
    /// compaction replaced are left out until they are deleted). An hour
    /// that cannot be listed reads as empty; see [`Lake::try_hour_files`].
    pub fn hour_files(&self, table: Table, hour: HourPartition) -> Vec<PathBuf> {
        self.try_hour_files(table, hour).unwrap_or_default()
    }

    /// [`Lake::hour_files`], with a listing error reported.
    pub fn try_hour_files(
        &self,
        table: Table,
        hour: HourPartition,
    ) -> Result<Vec<PathBuf>, LakeError> {
        Ok(self
            .hour_listing(table, hour)?
            .into_iter()
            .map(|(p, _)| p)
            .collect())
    }

    /// The hour's visible files with their sizes.
    pub(crate) fn hour_listing(
        &self,
        table: Table,
        hour: HourPartition,
    ) -> Result<Vec<(PathBuf, u64)>, LakeError> {
        let dir = self.table_dir(table).join(hour.hive_path());
        let listing = self.backend.list(&dir)?;
        self.visible(listing.files)
    }

    /// Of one directory's files, the Parquet files a reader must read,
    /// sorted: a finished compaction's manifest hides the files it
    /// replaced.
    fn visible(&self, mut files: Vec<(PathBuf, u64)>) -> Result<Vec<(PathBuf, u64)>, LakeError> {
        files.sort();
        let manifest = files
            .iter()
            .find(|(p, _)| p.file_name().is_some_and(|n| n == crate::compact::MANIFEST))
            .map(|(p, _)| p.clone());
        let hidden = match manifest {
            Some(m) => crate::compact::hidden_by_manifest(&self.backend, &m, &files)?,
            None => Default::default(),
        };
        files.retain(|(p, _)| {
            let name = p
                .file_name()
                .map(|n| n.to_string_lossy())
                .unwrap_or_default();
            name.ends_with(".parquet") && !hidden.contains(name.as_ref())
        });
        Ok(files)
    }

    /// What an hour of a table holds, as a short hex string that changes
    /// whenever a file is added, replaced or removed there (files are
    /// immutable once visible: names and sizes say it all). An empty hour
    /// has a fingerprint too.
    pub fn hour_fingerprint(&self, table: Table, hour: HourPartition) -> String {
        Self::fingerprint_files(&self.hour_listing(table, hour).unwrap_or_default())
    }

    /// No files: the empty string. One compacted file stands for the files
    /// it replaced (its name carries their fingerprint), so compacting an
    /// hour does not change what the hour's readers see as its version;
    /// a late file beside it does.
    pub(crate) fn fingerprint_files(files: &[(PathBuf, u64)]) -> String {
        if files.is_empty() {
            return String::new();
        }
        if let [(only, _)] = files
            && let Some(name) = only.file_name().map(|n| n.to_string_lossy())
            && let Some(replaced) = crate::compact::replaced_fingerprint(&name)
        {
            return replaced.to_string();
        }
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for (path, size) in files {
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
            for b in format!("{}:{size};", name.unwrap_or_default()).bytes() {
                h ^= u64::from(b);
                h = h.wrapping_mul(0x0100_0000_01b3);
            }
        }
        format!("{h:016x}")
    }

    /// Every hour of `table` that has files, with its fingerprint (as
    /// [`Lake::hour_fingerprint`]). Blocking: one listing of the table
    /// (on object storage, one request per 1,000 files).
    pub fn fingerprints(&self, table: Table) -> Vec<(HourPartition, String)> {
        self.try_fingerprints(table).unwrap_or_default()
    }

    /// [`Lake::fingerprints`], with a listing error reported rather than
    /// read as an empty table.
    pub fn try_fingerprints(
        &self,
        table: Table,
    ) -> Result<Vec<(HourPartition, String)>, LakeError> {
        let dir = self.table_dir(table);
        let mut out = Vec::new();
        for (hour_dir, files) in self.backend.list_tree(&dir)? {
            let Ok(rel) = hour_dir.strip_prefix(&dir) else {
                continue;
            };
            let mut parts = rel.iter().map(|p| p.to_string_lossy());
            let (Some(date), Some(hour), None) = (parts.next(), parts.next(), parts.next()) else {
                continue;
            };
            let Some(h) = HourPartition::from_hive(&date, &hour) else {
                continue;
            };
            let fp = Self::fingerprint_files(&self.visible(files)?);
            if !fp.is_empty() {
                out.push((h, fp));
            }
        }
        out.sort();
        Ok(out)
    }

    /// The subdirectories of `dir` (a location under the root), by name.
    pub fn subdirectories(&self, dir: &Path) -> Result<Vec<String>, LakeError> {
        let mut names: Vec<String> = self
            .backend
            .list(dir)?
            .dirs
            .iter()
            .filter_map(|d| d.file_name().map(|n| n.to_string_lossy().into_owned()))
            .collect();
        names.sort();
        Ok(names)
    }

    /// The Parquet files anywhere under `dir` with their sizes, sorted.
    pub fn parquet_files_under(&self, dir: &Path) -> Result<Vec<(PathBuf, u64)>, LakeError> {
        let mut out = Vec::new();
        for (_, files) in self.backend.list_tree(dir)? {
            out.extend(self.visible(files)?);
        }
        out.sort();
        Ok(out)
    }

    /// Deletes every day of the lake table `table` (a raw table,
    /// `dead_letter` or a job's output: a directory of `date=YYYY-MM-DD`
    /// directories) dated before the UTC day holding `before_ms`, and says
    /// how many days and files went. Blocking. A day half deleted by a
    /// crash is finished by the next call.
    pub fn drop_days_before(&self, table: &str, before_ms: i64) -> Result<DroppedDays, LakeError> {
        let hive = tillwatch_domain::UtcMillis(before_ms).hour().hive_path();
        let cutoff = hive.split('/').next().unwrap_or_default().to_string();
        let dir = self.root.join(table);
        let mut dropped = DroppedDays::default();
        for name in self.subdirectories(&dir)? {
            let Some(date) = name.strip_prefix("date=") else {
                continue;
            };
            // `date=YYYY-MM-DD` sorts as it reads.
            if date.len() != 10 || name.as_str() >= cutoff.as_str() {
                continue;
            }
            dropped.files += self.backend.delete_tree(&dir.join(&name))?;
            dropped.days += 1;
        }
        Ok(dropped)
    }

    /// Whether a file is at `path`.
    pub fn exists(&self, path: &Path) -> Result<bool, LakeError> {
        self.backend.exists(path)
    }

    /// Puts `bytes` at `path` (a location under the root), replacing what
    /// is there atomically and durably. Blocking.
    pub fn put(&self, path: &Path, bytes: impl Into<bytes::Bytes>) -> Result<(), LakeError> {
        self.backend.put(path, bytes.into())
    }

    /// Removes what a write of `path` cut short by a crash may have left
    /// (a temp file on disk; nothing in object storage). Blocking.
    pub fn discard_partial(&self, path: &Path) -> Result<(), LakeError> {
        self.backend.discard_partial(path)
    }

    fn watermark_dir(&self) -> PathBuf {
        self.root.join("_watermarks")
    }

    /// Records that every message `writer` received before `at_ms` is
    /// durable in the lake (the ingest watermark), replacing its previous
    /// record atomically. Blocking.
    pub fn write_watermark(&self, writer: &str, at_ms: i64) -> Result<(), LakeError> {
        self.put(&self.watermark_dir().join(writer), at_ms.to_string())
    }

    /// The earliest of the writers' records (every writer caught up),
    /// `None` before any writer recorded one. Blocking. The scheduler
    /// leaves writers that stopped advancing out (see
    /// `tillwatch_scheduler::watermark`).
    pub fn watermark(&self) -> Option<i64> {
        self.watermarks().ok()?.into_iter().map(|(_, at)| at).min()
    }

    /// Every writer's record: `(writer, at_ms)`, by writer. Blocking.
    pub fn watermarks(&self) -> Result<Vec<(String, i64)>, LakeError> {
        let listing = self.backend.list(&self.watermark_dir())?;
        let mut records: Vec<(String, i64)> = listing
            .files
            .iter()
            .filter_map(|(path, _)| {
                let writer = path.file_name()?.to_str()?.to_string();
                let bytes = self.backend.get(path).ok()??;
                let at = std::str::from_utf8(&bytes)
                    .ok()?
                    .trim()
                    .parse::<i64>()
                    .ok()?;
                Some((writer, at))
            })
            .collect();
        records.sort();
        Ok(records)
    }

    /// Removes `writer`'s record: a gateway taken away for good no longer
    /// holds the watermark back. Returns whether there was one. Blocking.
    pub fn retire_writer(&self, writer: &str) -> Result<bool, LakeError> {
        let path = self.watermark_dir().join(writer);
        let exists = self.backend.get(&path)?.is_some();
        if exists {
            self.backend.delete(&path)?;
        }
        Ok(exists)
    }

    /// The hidden name a local file is written under before it is renamed
    /// into place; `*.parquet` globs never match it.
    pub fn temp_path(final_path: &Path) -> PathBuf {
        crate::store::temp_path(final_path)
    }

    /// Writes one part as a Parquet file at `path` (from [`Lake::file_path`]):
    /// on disk a temp file, fsync, rename and fsync of the directory; in
    /// object storage one PUT. Blocking.
    pub fn write_part(&self, part: &PartBatch, path: &Path) -> Result<WrittenFile, LakeError> {
        let mut buf = Vec::with_capacity(64 * 1024);
        encode_parquet(part, &mut buf).map_err(|source| LakeError::Parquet {
            path: path.to_path_buf(),
            source,
        })?;
        let bytes = buf.len() as u64;
        self.put(path, buf)?;
        Ok(WrittenFile {
            table: part.table,
            path: path.to_path_buf(),
            rows: part.batch.num_rows(),
            bytes,
        })
    }

    /// Where a job's output partition lives: `<root>/<job>/date=…/hour=…/part.parquet`
    /// for an hour, `<root>/<job>/date=…/part.parquet` for a day starting
    /// in `hour`.
    pub fn output_path(&self, job: &str, hour: HourPartition, grain: OutputGrain) -> PathBuf {
        let hive = hour.hive_path();
        let dir = match grain {
            OutputGrain::Hour => hive,
            OutputGrain::Day => hive.split('/').next().unwrap_or_default().to_string(),
        };
        self.root.join(job).join(dir).join("part.parquet")
    }

    /// Reads a whole Parquet file of the lake. Blocking.
    pub fn read_file(&self, path: &Path) -> Result<Vec<RecordBatch>, LakeError> {
        match self.backend {
            Backend::Local => read_file(path),
            Backend::Object(_) => read_batches(self.object(path)?, path),
        }
    }

    /// Reads `(device_id, boot_id, seq)` of a reading file, as
    /// [`read_reading_keys`]. Blocking.
    pub fn read_reading_keys(&self, path: &Path) -> Result<Vec<(String, u64, u64)>, LakeError> {
        match self.backend {
            Backend::Local => read_reading_keys(path),
            Backend::Object(_) => reading_keys(self.object(path)?, path),
        }
    }

    /// A whole file, one that is not there an error naming it.
    pub(crate) fn object(&self, path: &Path) -> Result<bytes::Bytes, LakeError> {
        self.backend.get(path)?.ok_or_else(|| LakeError::Io {
            action: "open",
            path: path.to_path_buf(),
            source: io::ErrorKind::NotFound.into(),
        })
    }

    pub(crate) fn backend(&self) -> &Backend {
        &self.backend
    }
}

/// What [`Lake::drop_days_before`] deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DroppedDays {
    pub days: u64,
    pub files: u64,
}

/// How much time one output partition covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputGrain {
    Hour,
    Day,
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

/// Reads a whole Parquet file of a local lake.
pub fn read_file(path: &Path) -> Result<Vec<RecordBatch>, LakeError> {
    let file = File::open(path).map_err(io_err("open", path))?;
    read_batches(file, path)
}

fn read_batches<R: ChunkReader + 'static>(
    data: R,
    path: &Path,
) -> Result<Vec<RecordBatch>, LakeError> {
    let reader = ParquetRecordBatchReaderBuilder::try_new(data)
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
/// gateway needs to rebuild its dedup index after a crash. Local lakes.
pub fn read_reading_keys(path: &Path) -> Result<Vec<(String, u64, u64)>, LakeError> {
    let file = File::open(path).map_err(io_err("open", path))?;
    reading_keys(file, path)
}

fn reading_keys<R: ChunkReader + 'static>(
    data: R,
    path: &Path,
) -> Result<Vec<(String, u64, u64)>, LakeError> {
    let parquet_err = |source| LakeError::Parquet {
        path: path.to_path_buf(),
        source,
    };
    let builder = ParquetRecordBatchReaderBuilder::try_new(data).map_err(parquet_err)?;
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
    use std::fs;

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
