//! The read side: every question the APIs answer (a terminal's series, the
//! cohorts of a day, who served a merchant on each day, …), as methods of
//! [`Queries`] returning plain typed values or a [`QueryError`].
//!
//! **Architecture Invariant:** this crate knows neither JSON nor HTTP nor
//! protobuf. The HTTP crate (`tillwatch-api`) serialises these values and
//! maps the error's kinds to status codes; the gRPC crate maps them to its
//! messages and codes. Nothing here plans SQL over the lake: the rollups'
//! outputs and the raw tables are read by their known columns, filtered by
//! value ([`tillwatch_storage::Rows`]), so neither API links a query engine.

mod cohorts;
mod days;
mod error;
pub mod series;

use tillwatch_meta::MetaStore;
use tillwatch_storage::Lake;

pub use cohorts::{Cohort, Cohorts};
pub use days::{MAX_DAYS, MerchantDays, ServedDay, TerminalDay};
pub use error::QueryError;
pub use series::{DeviceSeries, Resolution, SeriesRequest};

/// The latest instant a question may name: the end of year 9999, the last
/// a calendar date can show (and far from any overflow).
pub const LATEST_MS: i64 = 253_402_300_799_999;

/// `ms` as an instant between 1970 and [`LATEST_MS`], or an error naming
/// `param`: every time from a client is checked before arithmetic.
pub fn check_instant(param: &'static str, ms: i64) -> Result<i64, QueryError> {
    if (0..=LATEST_MS).contains(&ms) {
        Ok(ms)
    } else {
        Err(QueryError::invalid(
            param,
            format!("{ms} is not a time between 1970 and the end of 9999 in ms since 1970"),
        ))
    }
}

/// The read side over one metadata store and one lake. Cheap to clone.
#[derive(Clone)]
pub struct Queries {
    store: MetaStore,
    lake: Lake,
}

impl Queries {
    pub fn new(store: MetaStore, lake: Lake) -> Queries {
        Queries { store, lake }
    }

    pub fn store(&self) -> &MetaStore {
        &self.store
    }

    pub fn lake(&self) -> &Lake {
        &self.lake
    }
}
