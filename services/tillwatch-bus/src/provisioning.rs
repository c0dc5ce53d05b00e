//! Which merchant (and store) each terminal belongs to, as the operator
//! provisioned it: the record a message's topic is checked against, so a
//! terminal cannot report under another merchant or move itself to another
//! merchant's store.
//!
//! The record is a CSV file (`provisioning.file`), one terminal per line:
//! `device_id,merchant_id[,store_id]`. An optional first line names the
//! columns; `#` starts a comment. A terminal with a store may name only
//! that store in its info messages; one without a store may name any (the
//! terminal owns which of its merchant's stores it is in). The file is read
//! again when it changes: a file that no longer parses keeps the last good
//! record in force and is reported.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, SystemTime};

use tillwatch_domain::{DeviceId, MerchantId, RejectReason, StoreId};
use tokio::sync::watch;
use tracing::{info, warn};

/// How often the gateway and the alerter look for a changed file.
pub const RELOAD_EVERY: Duration = Duration::from_secs(10);

/// The largest provisioning file read: a million terminals fit.
const MAX_FILE_BYTES: u64 = 128 * 1024 * 1024;

/// One terminal's record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Provisioned {
    pub merchant_id: String,
    /// `None`: any store of the merchant.
    pub store_id: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ProvisioningError {
    #[error("provisioning file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("provisioning file {path} is {bytes} bytes; at most {MAX_FILE_BYTES} are read")]
    TooLarge { path: PathBuf, bytes: u64 },
    #[error("provisioning file{at} line {line}: {message}")]
    Line {
        /// " PATH" when known.
        at: String,
        line: usize,
        message: String,
    },
}

/// Every provisioned terminal.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Provisioning {
    by_device: HashMap<String, Provisioned>,
}

impl Provisioning {
    /// Parses the file's text; an error names the line and what is wrong
    /// with it.
    pub fn parse(text: &str) -> Result<Provisioning, ProvisioningError> {
        let mut by_device: HashMap<String, Provisioned> = HashMap::new();
        let mut first_line: HashMap<String, usize> = HashMap::new();
        let mut seen_data = false;
        for (index, raw) in text.lines().enumerate() {
            let line = index + 1;
            let err = |message: String| ProvisioningError::Line {
                at: String::new(),
                line,
                message,
            };
            let content = raw.split('#').next().unwrap_or_default().trim();
            if content.is_empty() {
                continue;
            }
            let fields: Vec<&str> = content.split(',').map(str::trim).collect();
            if !seen_data && fields.first() == Some(&"device_id") {
                if fields.get(1) != Some(&"merchant_id")
                    || fields.len() > 3
                    || (fields.len() == 3 && fields[2] != "store_id")
                {
                    return Err(err(format!(
                        "the header must be device_id,merchant_id[,store_id], not {content:?}"
                    )));
                }
                seen_data = true;
                continue;
            }
            seen_data = true;
            if !(2..=3).contains(&fields.len()) {
                return Err(err(format!(
                    "{} fields; a line is device_id,merchant_id[,store_id]",
                    fields.len()
                )));
            }
            let device = DeviceId::new(fields[0])
                .map_err(|e| err(format!("device_id {:?}: {e}", clip(fields[0]))))?;
            let merchant = MerchantId::new(fields[1])
                .map_err(|e| err(format!("merchant_id {:?}: {e}", clip(fields[1]))))?;
            let store = match fields.get(2).filter(|s| !s.is_empty()) {
                Some(s) => Some(
                    StoreId::new(s)
                        .map_err(|e| err(format!("store_id {:?}: {e}", clip(s))))?
                        .as_str()
                        .to_string(),
                ),
                None => None,
            };
            let device = device.as_str().to_string();
            if let Some(first) = first_line.get(&device) {
                return Err(err(format!(
                    "terminal {device} is already provisioned on line {first}"
                )));
            }
            first_line.insert(device.clone(), line);
            by_device.insert(
                device,
                Provisioned {
                    merchant_id: merchant.as_str().to_string(),
                    store_id: store,
                },
            );
        }
        Ok(Provisioning { by_device })
    }

    /// Reads and parses `path`.
    pub fn load(path: &Path) -> Result<Provisioning, ProvisioningError> {
        let read = |source| ProvisioningError::Read {
            path: path.to_path_buf(),
            source,
        };
        let bytes = std::fs::metadata(path).map_err(read)?.len();
        if bytes > MAX_FILE_BYTES {
            return Err(ProvisioningError::TooLarge {
                path: path.to_path_buf(),
                bytes,
            });
        }
        let text = std::fs::read_to_string(path).map_err(read)?;
        Provisioning::parse(&text).map_err(|e| match e {
            ProvisioningError::Line { line, message, .. } => ProvisioningError::Line {
                at: format!(" {}", path.display()),
                line,
                message,
            },
            other => other,
        })
    }

    pub fn len(&self) -> usize {
        self.by_device.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_device.is_empty()
    }

    pub fn get(&self, device_id: &str) -> Option<&Provisioned> {
        self.by_device.get(device_id)
    }

    /// Whether `device_id` may send under `merchant_id` (and, for an info
    /// message, name `store_id`): the reason it may not, when it may not.
    pub fn check(
        &self,
        merchant_id: &str,
        device_id: &str,
        store_id: Option<&str>,
    ) -> Result<(), RejectReason> {
        let Some(record) = self.by_device.get(device_id) else {
            return Err(RejectReason::NotProvisioned {
                device_id: device_id.to_string(),
            });
        };
        if record.merchant_id != merchant_id {
            return Err(RejectReason::WrongMerchant {
                device_id: device_id.to_string(),
                provisioned: record.merchant_id.clone(),
                claimed: merchant_id.to_string(),
            });
        }
        if let (Some(provisioned), Some(claimed)) = (&record.store_id, store_id)
            && provisioned != claimed
        {
            return Err(RejectReason::WrongStore {
                device_id: device_id.to_string(),
                provisioned: provisioned.clone(),
                claimed: claimed.to_string(),
            });
        }
        Ok(())
    }
}

fn clip(s: &str) -> String {
    s.chars().take(80).collect()
}

/// The provisioning record in force, shared by the tasks that check
/// messages, and read again from its file when the file changes.
#[derive(Debug, Clone)]
pub struct ProvisioningSource {
    path: PathBuf,
    current: Arc<RwLock<Arc<Provisioning>>>,
    /// The file's modification time and length when last read.
    seen: Arc<Mutex<Option<(SystemTime, u64)>>>,
}

impl ProvisioningSource {
    /// Reads `path`; an error (missing, unreadable, a bad line) stops the
    /// service from starting, naming the file and line.
    pub fn open(path: &Path) -> Result<ProvisioningSource, ProvisioningError> {
        let stamp = stamp(path);
        let provisioning = Provisioning::load(path)?;
        info!(path = %path.display(), terminals = provisioning.len(), "provisioning record loaded");
        Ok(ProvisioningSource {
            path: path.to_path_buf(),
            current: Arc::new(RwLock::new(Arc::new(provisioning))),
            seen: Arc::new(Mutex::new(stamp)),
        })
    }

    /// The record in force.
    pub fn current(&self) -> Arc<Provisioning> {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Reads the file again when its modification time or length changed:
    /// `Ok(true)` when a new record is in force. On an error the previous
    /// record stays in force (and the file is read again next time).
    pub fn reload_if_changed(&self) -> Result<bool, ProvisioningError> {
        let now = stamp(&self.path);
        let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        if now == *seen {
            return Ok(false);
        }
        let provisioning = Provisioning::load(&self.path)?;
        *seen = now;
        info!(path = %self.path.display(), terminals = provisioning.len(), "provisioning record reloaded");
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(provisioning);
        Ok(true)
    }

    /// Checks the file every `every` until `shutdown` turns true.
    pub fn spawn_reloader(&self, every: Duration, mut shutdown: watch::Receiver<bool>) {
        let source = self.clone();
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(every);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = ticks.tick() => {}
                    _ = shutdown.wait_for(|s| *s) => return,
                }
                let reload = source.clone();
                let result = tokio::task::spawn_blocking(move || reload.reload_if_changed()).await;
                if let Ok(Err(e)) = result {
                    warn!(error = %e, "provisioning file not reloaded; the previous record stays in force");
                }
            }
        });
    }
}

fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "\
# terminals as provisioned
device_id,merchant_id,store_id
t-1, m-1, s-1
t-2,m-1,        # any store of m-1
t-3,m-2
";

    #[test]
    fn a_terminal_may_send_only_under_its_merchant_and_store() {
        let p = Provisioning::parse(FILE).unwrap();
        assert_eq!(p.len(), 3);
        assert!(p.check("m-1", "t-1", Some("s-1")).is_ok());
        assert!(p.check("m-1", "t-1", None).is_ok());
        assert!(p.check("m-1", "t-2", Some("anything")).is_ok());
        let code = |r: Result<(), RejectReason>| r.unwrap_err().code();
        assert_eq!(code(p.check("m-2", "t-1", None)), "wrong_merchant");
        assert_eq!(code(p.check("m-1", "t-1", Some("s-9"))), "wrong_store");
        assert_eq!(code(p.check("m-1", "t-9", None)), "not_provisioned");
        let said = p.check("m-2", "t-1", None).unwrap_err().to_string();
        assert!(
            said.contains("t-1") && said.contains("m-1") && said.contains("m-2"),
            "{said}"
        );
    }

    #[test]
    fn a_bad_line_is_named() {
        for (text, needle) in [
            ("t-1\n", "line 1: 1 fields"),
            (
                "t-1,m-1\nt-1,m-2\n",
                "line 2: terminal t-1 is already provisioned on line 1",
            ),
            ("t 1,m-1\n", "line 1: device_id \"t 1\""),
            ("t-1,m/1\n", "merchant_id"),
            ("t-1,m-1,..\n", "store_id"),
            ("device_id,store_id\n", "the header"),
            ("t-1,m-1,s-1,x\n", "4 fields"),
        ] {
            let e = Provisioning::parse(text).unwrap_err().to_string();
            assert!(e.contains(needle), "{text:?}: {e}");
        }
    }

    #[test]
    fn a_changed_file_is_read_again_and_a_broken_one_keeps_the_last_good_record() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("terminals.csv");
        std::fs::write(&path, "t-1,m-1\n").unwrap();
        let source = ProvisioningSource::open(&path).unwrap();
        assert!(!source.reload_if_changed().unwrap(), "unchanged");
        std::fs::write(&path, "t-1,m-1\nt-2,m-1,s-2\n").unwrap();
        assert!(source.reload_if_changed().unwrap());
        assert_eq!(source.current().len(), 2);
        std::fs::write(&path, "t-1,m-1\nt-2\n").unwrap();
        let e = source.reload_if_changed().unwrap_err().to_string();
        assert!(e.contains("terminals.csv line 2"), "{e}");
        assert_eq!(source.current().len(), 2, "the last good record stays");
        assert!(ProvisioningSource::open(&dir.path().join("missing.csv")).is_err());
    }
}
