//! The routes answered from the lake (through `tillwatch-query`):
//!
//! - `GET /api/v1/devices/{device_id}/series?from=&to=&resolution=`: one
//!   terminal's series; `from`, `to` in ms since 1970 or RFC 3339
//!   (`2026-11-22T06:00:00Z`), default the last 24 hours, at most 31 days
//!   apart; `resolution` `raw` (at most 6 hours), `hour` or `auto`.
//! - `GET /api/v1/fleet/cohorts?day=2026-11-22`: the cohorts of a day
//!   (default the newest rolled up), worst crash rate first.
//! - `GET /api/v1/merchants/{merchant_id}/days?store=&days=7`: the
//!   terminals that served a merchant or store on each of its last days.

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::routing::get;
use serde::Deserialize;
use tillwatch_domain::UtcMillis;
use tillwatch_query::{
    Cohorts, DeviceSeries, MerchantDays, Queries, QueryError, Resolution, SeriesRequest,
};

use crate::{ApiError, Doc, Routes};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SeriesQuery {
    from: Option<String>,
    to: Option<String>,
    resolution: Option<String>,
}

/// Milliseconds since 1970, or an RFC 3339 instant, for the parameter
/// `name`.
pub fn instant(name: &'static str, text: &str) -> Result<i64, ApiError> {
    if let Ok(ms) = text.parse::<i64>() {
        return Ok(ms);
    }
    text.parse::<jiff::Timestamp>()
        .map(|t| t.as_millisecond())
        .map_err(|_| {
            QueryError::invalid(
                name,
                format!(
                    "{text:?} is neither milliseconds since 1970 nor an RFC 3339 time like 2026-11-22T06:00:00Z"
                ),
            )
            .into()
        })
}

async fn series(
    State(q): State<Queries>,
    Path(device_id): Path<String>,
    params: Result<Query<SeriesQuery>, QueryRejection>,
) -> Result<Json<DeviceSeries>, ApiError> {
    let Query(p) = params?;
    let request = SeriesRequest {
        device_id,
        from_ms: p.from.as_deref().map(|t| instant("from", t)).transpose()?,
        to_ms: p.to.as_deref().map(|t| instant("to", t)).transpose()?,
        resolution: p
            .resolution
            .as_deref()
            .map(Resolution::parse)
            .transpose()?
            .unwrap_or_default(),
    };
    Ok(Json(q.device_series(request, UtcMillis::now().0).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CohortsQuery {
    day: Option<String>,
}

async fn cohorts(
    State(q): State<Queries>,
    params: Result<Query<CohortsQuery>, QueryRejection>,
) -> Result<Json<Cohorts>, ApiError> {
    let Query(p) = params?;
    Ok(Json(q.cohorts(p.day.as_deref()).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DaysQuery {
    store: Option<String>,
    days: Option<u32>,
}

async fn days(
    State(q): State<Queries>,
    Path(merchant_id): Path<String>,
    params: Result<Query<DaysQuery>, QueryRejection>,
) -> Result<Json<MerchantDays>, ApiError> {
    let Query(p) = params?;
    Ok(Json(
        q.merchant_days(&merchant_id, p.store.as_deref(), p.days)
            .await?,
    ))
}

/// The routes over the lake.
pub fn router(queries: Queries) -> Routes {
    Routes::new()
        .route(
            Doc::get(
                "/api/v1/devices/{device_id}/series",
                "fleet",
                "A terminal's time series: every reading up to 6 hours, the hourly rollup beyond",
            )
            .path_param("device_id", "The terminal")
            .query(
                "from",
                "string",
                "Start: ms since 1970 or RFC 3339 (default: 24 h before to)",
            )
            .query(
                "to",
                "string",
                "End: ms since 1970 or RFC 3339 (default: now)",
            )
            .query("resolution", "string", "auto (default), raw or hour")
            .returns::<DeviceSeries>(),
            get(series),
        )
        .route(
            Doc::get(
                "/api/v1/fleet/cohorts",
                "fleet",
                "Firmware, app and model cohorts side by side for a day, worst crash rate first",
            )
            .query("day", "string", "A day like 2026-11-22 (default: the newest rolled up)")
            .returns::<Cohorts>()
            .not_found("No day has been rolled up yet, or not the day asked for"),
            get(cohorts),
        )
        .route(
            Doc::get(
                "/api/v1/merchants/{merchant_id}/days",
                "fleet",
                "The terminals that served a merchant or store on each of its last rolled-up days, with their hours there",
            )
            .path_param("merchant_id", "The merchant")
            .query("store", "string", "Only this store")
            .query("days", "integer", "1-31, default 7")
            .returns::<MerchantDays>(),
            get(days),
        )
        .with_state(queries)
}
