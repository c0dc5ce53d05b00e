//! Where the lake's bytes live: a local directory, or a bucket of an
//! S3-compatible object store (AWS S3, MinIO, Ceph RGW, …) through the
//! `object_store` crate.
//!
//! Both are addressed by *locations*: paths under the lake's root. A local
//! lake's root is a directory; an object lake's is a URL,
//! `s3://bucket/prefix`, and a location under it is that URL joined with the
//! same `table/date=…/hour=…/file.parquet` layout, which DataFusion reads
//! as it is once the store is registered with it.
//!
//! What the lake needs of either backend is small: list a directory (files
//! with their sizes, and subdirectories), get a whole object, put one
//! atomically and durably, delete one. On a local disk a put is a temp
//! file, fsync, rename and directory fsync; on object storage a PUT is
//! atomic and durable when it returns.
//!
//! The lake's API is blocking (its callers run it on blocking threads). An
//! object store is async, so its requests run on a small runtime of their
//! own, which works from any thread, in or out of an async context.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use futures_util::TryStreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

use crate::lake::{LakeError, io_err};

/// How to reach an S3-compatible store: the `lake.s3` configuration
/// (its secret file already read). Unset fields fall back to the standard
/// `AWS_*` environment variables.
pub use tillwatch_config::LakeS3Config;

/// The files and subdirectories directly in one directory.
#[derive(Debug, Default)]
pub(crate) struct Listing {
    /// `(location, size in bytes)`, hidden names (`.…`) left out.
    pub files: Vec<(PathBuf, u64)>,
    pub dirs: Vec<PathBuf>,
}

#[derive(Clone)]
pub(crate) enum Backend {
    Local,
    Object(Arc<ObjectLake>),
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Backend::Local => f.write_str("Local"),
            Backend::Object(o) => write!(f, "Object({})", o.bucket_url),
        }
    }
}

pub(crate) struct ObjectLake {
    store: Arc<dyn ObjectStore>,
    /// `s3://bucket`, what DataFusion registers the store under.
    pub bucket_url: String,
    options: LakeS3Config,
    bucket: String,
    /// The client DataFusion reads through, made on first use: it runs on
    /// the caller's runtime, not the lake's.
    query_store: OnceLock<Arc<dyn ObjectStore>>,
}

/// The runtime object-store requests run on.
fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("lake-io")
            .enable_all()
            .build()
            .expect("the lake's I/O runtime starts")
    })
}

/// Runs `fut` to completion on the lake's runtime and waits for it.
fn block<F>(fut: F) -> F::Output
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    runtime().spawn(async move {
        let _ = tx.send(fut.await);
    });
    rx.recv()
        .expect("the lake's I/O runtime runs every request")
}

fn build_s3(
    bucket: &str,
    options: &LakeS3Config,
) -> Result<Arc<dyn ObjectStore>, object_store::Error> {
    let mut b = AmazonS3Builder::from_env().with_bucket_name(bucket);
    if let Some(e) = &options.endpoint {
        b = b.with_endpoint(e);
    }
    if let Some(r) = &options.region {
        b = b.with_region(r);
    }
    if let Some(k) = &options.access_key_id {
        b = b.with_access_key_id(k);
    }
    if let Some(s) = &options.secret_access_key {
        b = b.with_secret_access_key(s);
    }
    if options.allow_http {
        b = b.with_allow_http(true);
    }
    b.build().map(|s| Arc::new(s) as Arc<dyn ObjectStore>)
}

impl ObjectLake {
    /// The store behind a lake in `bucket` (from
    /// [`tillwatch_config::lake_bucket`] of the root `root`).
    pub(crate) fn open(
        root: &Path,
        bucket: &str,
        options: &LakeS3Config,
    ) -> Result<ObjectLake, LakeError> {
        let store = build_s3(bucket, options).map_err(|source| LakeError::S3Client {
            path: root.to_path_buf(),
            source: Box::new(source),
        })?;
        Ok(ObjectLake {
            store,
            bucket_url: format!("s3://{bucket}"),
            options: options.clone(),
            bucket: bucket.to_string(),
            query_store: OnceLock::new(),
        })
    }

    /// A client of its own for another runtime (DataFusion's).
    pub(crate) fn query_store(&self) -> Arc<dyn ObjectStore> {
        self.query_store
            .get_or_init(|| {
                build_s3(&self.bucket, &self.options).expect("the options built a store once")
            })
            .clone()
    }

    /// The object key of a location under the lake's root.
    fn key(&self, path: &Path) -> Result<ObjectPath, LakeError> {
        let text = path.to_str().unwrap_or_default();
        let rest = text
            .strip_prefix(&self.bucket_url)
            .filter(|r| r.is_empty() || r.starts_with('/'))
            .map(|r| r.trim_start_matches('/'))
            .ok_or_else(|| LakeError::OutsideRoot {
                path: path.to_path_buf(),
                root: self.bucket_url.clone(),
            })?;
        ObjectPath::parse(rest).map_err(|source| LakeError::ObjectKey {
            path: path.to_path_buf(),
            source,
        })
    }

    fn location(&self, key: &ObjectPath) -> PathBuf {
        PathBuf::from(format!("{}/{key}", self.bucket_url))
    }

    fn err(action: &'static str, path: &Path) -> impl FnOnce(object_store::Error) -> LakeError {
        let path = path.to_path_buf();
        move |source| LakeError::Object {
            action,
            path,
            source: Box::new(source),
        }
    }
}

impl Backend {
    pub(crate) fn list(&self, dir: &Path) -> Result<Listing, LakeError> {
        match self {
            Backend::Local => {
                let mut out = Listing::default();
                let entries = match fs::read_dir(dir) {
                    Ok(e) => e,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
                    Err(e) => return Err(io_err("list", dir)(e)),
                };
                for entry in entries {
                    let entry = entry.map_err(io_err("list", dir))?;
                    if entry.file_name().to_string_lossy().starts_with('.') {
                        continue;
                    }
                    let Ok(meta) = entry.metadata() else { continue };
                    if meta.is_dir() {
                        out.dirs.push(entry.path());
                    } else {
                        out.files.push((entry.path(), meta.len()));
                    }
                }
                Ok(out)
            }
            Backend::Object(o) => {
                let prefix = o.key(dir)?;
                let store = o.store.clone();
                let listed = block(async move { store.list_with_delimiter(Some(&prefix)).await })
                    .map_err(ObjectLake::err("list", dir))?;
                Ok(Listing {
                    files: listed
                        .objects
                        .iter()
                        .filter(|m| !m.location.filename().unwrap_or("").starts_with('.'))
                        .map(|m| (o.location(&m.location), m.size))
                        .collect(),
                    dirs: listed
                        .common_prefixes
                        .iter()
                        .map(|p| o.location(p))
                        .collect(),
                })
            }
        }
    }

    /// Every file under `dir`, at any depth, grouped by the directory it
    /// is in: one listing request per 1,000 objects on object storage
    /// rather than one per directory.
    pub(crate) fn list_tree(
        &self,
        dir: &Path,
    ) -> Result<BTreeMap<PathBuf, Vec<(PathBuf, u64)>>, LakeError> {
        let mut out: BTreeMap<PathBuf, Vec<(PathBuf, u64)>> = BTreeMap::new();
        match self {
            Backend::Local => {
                let mut stack = vec![dir.to_path_buf()];
                while let Some(d) = stack.pop() {
                    let listing = self.list(&d)?;
                    stack.extend(listing.dirs);
                    if !listing.files.is_empty() {
                        out.insert(d, listing.files);
                    }
                }
            }
            Backend::Object(o) => {
                let prefix = o.key(dir)?;
                let store = o.store.clone();
                let objects =
                    block(async move { store.list(Some(&prefix)).try_collect::<Vec<_>>().await })
                        .map_err(ObjectLake::err("list", dir))?;
                for m in objects {
                    if m.location.filename().unwrap_or("").starts_with('.') {
                        continue;
                    }
                    let path = o.location(&m.location);
                    let parent = path.parent().map(Path::to_path_buf).unwrap_or_default();
                    out.entry(parent).or_default().push((path, m.size));
                }
            }
        }
        Ok(out)
    }

    /// The whole of one file, `None` when there is none.
    pub(crate) fn get(&self, path: &Path) -> Result<Option<Bytes>, LakeError> {
        match self {
            Backend::Local => match fs::read(path) {
                Ok(b) => Ok(Some(Bytes::from(b))),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(io_err("read", path)(e)),
            },
            Backend::Object(o) => {
                let key = o.key(path)?;
                let store = o.store.clone();
                match block(async move { store.get(&key).await?.bytes().await }) {
                    Ok(b) => Ok(Some(b)),
                    Err(object_store::Error::NotFound { .. }) => Ok(None),
                    Err(e) => Err(ObjectLake::err("read", path)(e)),
                }
            }
        }
    }

    pub(crate) fn exists(&self, path: &Path) -> Result<bool, LakeError> {
        match self {
            Backend::Local => Ok(path.exists()),
            Backend::Object(o) => {
                let key = o.key(path)?;
                let store = o.store.clone();
                match block(async move { store.head(&key).await }) {
                    Ok(_) => Ok(true),
                    Err(object_store::Error::NotFound { .. }) => Ok(false),
                    Err(e) => Err(ObjectLake::err("look up", path)(e)),
                }
            }
        }
    }

    /// Puts `bytes` at `path`, replacing what is there: readers see the
    /// old file or the new one, never part of one, and the new one is
    /// durable when this returns.
    pub(crate) fn put(&self, path: &Path, bytes: Bytes) -> Result<(), LakeError> {
        match self {
            Backend::Local => {
                let dir = path.parent().expect("lake files live in a directory");
                fs::create_dir_all(dir).map_err(io_err("create directory", dir))?;
                let tmp = temp_path(path);
                let mut file = File::create(&tmp).map_err(io_err("create", &tmp))?;
                let written = file
                    .write_all(&bytes)
                    .and_then(|()| file.sync_all())
                    .map_err(io_err("write", &tmp));
                drop(file);
                if let Err(e) = written {
                    // A full disk must not also keep the part it refused:
                    // the retry writes under a new name.
                    let _ = fs::remove_file(&tmp);
                    return Err(e);
                }
                if let Err(e) = fs::rename(&tmp, path) {
                    let _ = fs::remove_file(&tmp);
                    return Err(io_err("rename into place", path)(e));
                }
                sync_dir(dir)
            }
            Backend::Object(o) => {
                let key = o.key(path)?;
                let store = o.store.clone();
                block(async move { store.put(&key, PutPayload::from_bytes(bytes)).await })
                    .map(|_| ())
                    .map_err(ObjectLake::err("write", path))
            }
        }
    }

    /// Removes what a put of `path` cut short may have left: on disk its
    /// temp file; in object storage nothing (a PUT is whole or absent).
    pub(crate) fn discard_partial(&self, path: &Path) -> Result<(), LakeError> {
        match self {
            Backend::Local => Backend::Local.delete(&temp_path(path)),
            Backend::Object(_) => Ok(()),
        }
    }

    /// Deletes `dir` and everything under it, and says how many files
    /// went (hidden temp files included on disk). Nothing there is not an
    /// error.
    pub(crate) fn delete_tree(&self, dir: &Path) -> Result<u64, LakeError> {
        match self {
            Backend::Local => {
                let mut files = 0u64;
                let mut stack = vec![dir.to_path_buf()];
                while let Some(d) = stack.pop() {
                    let entries = match fs::read_dir(&d) {
                        Ok(e) => e,
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                        Err(e) => return Err(io_err("list", &d)(e)),
                    };
                    for entry in entries {
                        let entry = entry.map_err(io_err("list", &d))?;
                        if entry.file_type().is_ok_and(|t| t.is_dir()) {
                            stack.push(entry.path());
                        } else {
                            files += 1;
                        }
                    }
                }
                match fs::remove_dir_all(dir) {
                    Ok(()) => Ok(files),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(files),
                    Err(e) => Err(io_err("remove", dir)(e)),
                }
            }
            Backend::Object(_) => {
                let mut files = 0u64;
                for (_, listed) in self.list_tree(dir)? {
                    for (path, _) in listed {
                        self.delete(&path)?;
                        files += 1;
                    }
                }
                Ok(files)
            }
        }
    }

    /// Deletes one file; one that is not there is not an error.
    pub(crate) fn delete(&self, path: &Path) -> Result<(), LakeError> {
        match self {
            Backend::Local => match fs::remove_file(path) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(io_err("remove", path)(e)),
            },
            Backend::Object(o) => {
                let key = o.key(path)?;
                let store = o.store.clone();
                match block(async move { store.delete(&key).await }) {
                    Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                    Err(e) => Err(ObjectLake::err("delete", path)(e)),
                }
            }
        }
    }
}

/// The hidden name a local file is written under before it is renamed
/// into place; `*.parquet` globs never match it.
pub(crate) fn temp_path(final_path: &Path) -> PathBuf {
    let name = final_path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    final_path.with_file_name(format!(".{name}.tmp"))
}

/// Makes a rename or create in `dir` durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), LakeError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("sync directory", dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_map_to_keys_of_their_own_bucket_only() {
        let options = LakeS3Config {
            endpoint: Some("http://127.0.0.1:9".into()),
            region: Some("us-east-1".into()),
            allow_http: true,
            ..LakeS3Config::default()
        };
        let lake = ObjectLake::open(Path::new("s3://fleet/lake"), "fleet", &options).unwrap();
        let file = Path::new("s3://fleet/lake/battery/date=2026-12-03/hour=06/a.parquet");
        let key = lake.key(file).unwrap();
        assert_eq!(
            key.as_ref(),
            "lake/battery/date=2026-12-03/hour=06/a.parquet"
        );
        assert_eq!(lake.location(&key), file);
        assert_eq!(lake.key(Path::new("s3://fleet")).unwrap().as_ref(), "");
        for elsewhere in ["s3://fleet2/lake/a.parquet", "/var/lib/lake/a.parquet"] {
            let err = lake.key(Path::new(elsewhere)).unwrap_err().to_string();
            assert!(
                err.contains(elsewhere) && err.contains("s3://fleet"),
                "{err}"
            );
        }
        for bad in ["s3:///lake", "gs://fleet/lake"] {
            let err = crate::Lake::open(bad, &options)
                .expect_err("refused")
                .to_string();
            assert!(err.contains(bad), "{err}");
        }
    }
}
