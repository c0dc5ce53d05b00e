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
pub mod fleet;
pub mod jobs;
pub mod series;
pub mod view;

use std::sync::Arc;

use tillwatch_meta::MetaStore;
use tillwatch_storage::Lake;

pub use cohorts::{Cohort, Cohorts};
pub use days::{MAX_DAYS, MerchantDays, ServedDay, TerminalDay};
pub use error::{MAX_CLIENT_MESSAGE, QueryError, clipped};
pub use fleet::AlertsWanted;
pub use series::{DeviceSeries, Resolution, SeriesRequest};
pub use view::{FleetView, ViewCache};

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

/// How old the fleet and merchant pages' state may be: loading 10,000
/// terminals' state takes about half a second, and many people watching
/// the pages then share one load.
pub const VIEW_TTL: std::time::Duration = std::time::Duration::from_secs(2);

/// The read side over one metadata store and one lake. Cheap to clone.
#[derive(Clone)]
pub struct Queries {
    store: MetaStore,
    lake: Lake,
    /// A terminal whose newest battery level is below this is low
    /// (`alerting.rules.battery_low.threshold`).
    low_battery_pct: f64,
    /// The whole fleet's state for the fleet and merchant pages, at most
    /// [`VIEW_TTL`] old.
    views: Arc<ViewCache>,
}

impl Queries {
    pub fn new(store: MetaStore, lake: Lake, low_battery_pct: f64) -> Queries {
        Queries {
            views: Arc::new(ViewCache::new(store.clone(), low_battery_pct, VIEW_TTL)),
            store,
            lake,
            low_battery_pct,
        }
    }

    /// Below which battery level a terminal counts as low.
    pub fn low_battery_pct(&self) -> f64 {
        self.low_battery_pct
    }

    /// The whole fleet's state, shared by the pages for a moment.
    pub fn views(&self) -> &ViewCache {
        &self.views
    }

    pub fn store(&self) -> &MetaStore {
        &self.store
    }

    pub fn lake(&self) -> &Lake {
        &self.lake
    }
}
