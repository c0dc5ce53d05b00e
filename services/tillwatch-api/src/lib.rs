//! The HTTP API under `/api/v1`, as JSON:
//!
//! - [`auth`]: every request carries `Authorization: Bearer <token>`; a
//!   `viewer` token reads (GET), an `operator` token also changes (POST,
//!   PUT, DELETE: silences, backfills, job control). Missing or unknown
//!   tokens get 401, a viewer asking for a change 403.
//! - [`error`]: errors are `{"error": "…"}` saying what was wrong with the
//!   request: 404 for an unknown device, 400 naming the bad parameter.
//! - [`fleet`]: the fleet's counts by merchant and store, devices (with
//!   filters and keyset paging), one device's detail, merchants, stores,
//!   alerts.
//! - [`jobs`]: the scheduler's jobs, runs, lineage, backfills and their
//!   progress.
//! - [`lake`]: a terminal's series, the cohorts of a day, who served a
//!   merchant on each day (answered from the lake by `tillwatch-query`).
//! - [`silences`]: list, create and end silences.
//!
//! - [`openapi`]: routes are declared with their documentation
//!   ([`Routes`]), and the OpenAPI document is made from the same
//!   declarations.
//!
//! `/healthz`, `/readyz`, `/metrics` and `/api/v1/openapi.json` are served
//! beside it without a token (probes, scrapers, tools), by
//! `tillwatch-serve`.

pub mod auth;
pub mod error;
pub mod fleet;
pub mod jobs;
pub mod lake;
pub mod openapi;
pub mod silences;
pub mod ui;

pub use auth::{Access, AccessError, protect};
pub use error::{Answer, ApiError, bad, not_found};
pub use openapi::{Doc, Routes};
