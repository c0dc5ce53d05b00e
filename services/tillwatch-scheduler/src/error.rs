//! Why a run failed, by kind: the run history records its text, the
//! retries apply to every kind, and the kind tells an operator where to
//! look (the engine, the lake, the metadata store, the job's own inputs).

use std::fmt::Display;
use std::time::Duration;

/// How one run of one partition failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JobError {
    /// The engine (DataFusion or ClickHouse) refused or failed a query.
    #[error("{0}")]
    Query(String),
    /// An input could not be read: a lake file, the metadata store, a
    /// source database. `what` names it.
    #[error("reading {what}: {detail}")]
    Read { what: String, detail: String },
    /// The output could not be encoded or written. `what` names it.
    #[error("writing {what}: {detail}")]
    Write { what: String, detail: String },
    /// An input is there but does not hold what the job needs (a missing
    /// raw table, a source row that breaks the contract).
    #[error("{0}")]
    Input(String),
    /// The job is not one this engine runs.
    #[error("the {engine} engine has no job {job:?}")]
    UnknownJob { engine: &'static str, job: String },
    /// The job needs a part of the configuration that is not there.
    #[error("{0} is not configured")]
    NotConfigured(&'static str),
    /// The run took longer than the job's timeout and was stopped.
    #[error("timed out after {0:?}")]
    TimedOut(Duration),
    /// Another scheduler took the partition over (or the claim could not be
    /// renewed in time), so this run was stopped.
    #[error("stopped: its claim on the partition could not be renewed")]
    ClaimLost,
}

impl JobError {
    /// The engine failed a query (planning, executing, collecting).
    pub fn query(error: impl Display) -> Self {
        Self::Query(error.to_string())
    }

    /// Reading `what` failed.
    pub fn read(what: impl Display, error: impl Display) -> Self {
        Self::Read {
            what: what.to_string(),
            detail: error.to_string(),
        }
    }

    /// Writing (or encoding) `what` failed.
    pub fn write(what: impl Display, error: impl Display) -> Self {
        Self::Write {
            what: what.to_string(),
            detail: error.to_string(),
        }
    }

    /// An input does not hold what the job needs.
    pub fn input(message: impl Display) -> Self {
        Self::Input(message.to_string())
    }
}
