//! Firmware, app and model cohorts side by side over HTTP, from a day's
//! `fleet_health_daily` partition in the lake:
//!
//! `GET /api/v1/fleet/cohorts?day=2026-11-22` (default: the newest day
//! rolled up) → `{"day", "cohorts": [{firmware_version, app_version, model,
//! devices, transactions, crashes_and_hangs, crashes_per_1000_transactions,
//! txn_latency_p95_ms, battery_drain_pct_per_hour}]}`, worst crash rate
//! first. The day only picks a file; nothing from the request reaches SQL.

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::routing::get;
use serde::Deserialize;
use serde_json::json;
use tillwatch_api::{Answer, ApiError, Doc, Routes, bad, not_found};
use tillwatch_scheduler::{Grain, Partition};
use tillwatch_storage::Lake;

use crate::embedded::Embedded;
use crate::jobs::FLEET_HEALTH_DAILY;

const SQL: &str = "SELECT firmware_version, app_version, model, \
    sum(devices) AS devices, sum(transactions) AS transactions, \
    sum(crashes + hangs) AS crashes_and_hangs, \
    1000.0 * CAST(sum(crashes + hangs) AS DOUBLE) / CAST(CASE WHEN sum(transactions) = 0 THEN NULL ELSE sum(transactions) END AS DOUBLE) AS crashes_per_1000_transactions, \
    avg(txn_latency_p95_ms) AS txn_latency_p95_ms, \
    avg(battery_drain_pct_per_hour) AS battery_drain_pct_per_hour \
    FROM fleet GROUP BY firmware_version, app_version, model \
    ORDER BY crashes_per_1000_transactions DESC NULLS LAST, devices DESC";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CohortsQuery {
    day: Option<String>,
}

/// The newest day with a fleet rollup in the lake.
fn newest_day(lake: &Lake) -> Option<Partition> {
    let dir = lake.root().join(FLEET_HEALTH_DAILY);
    lake.subdirectories(&dir)
        .ok()?
        .into_iter()
        .filter_map(|name| Partition::parse_key(name.strip_prefix("date=")?))
        .filter(|p| p.grain == Grain::Day)
        .max()
}

async fn cohorts(
    State(lake): State<Lake>,
    q: Result<Query<CohortsQuery>, QueryRejection>,
) -> Answer {
    let Query(q) = q?;
    let day = match q.day.as_deref() {
        Some(text) => Partition::parse_key(text)
            .filter(|p| p.grain == Grain::Day)
            .ok_or_else(|| bad(format!("day: {text:?} is not a day like 2026-11-22")))?,
        None => {
            let lake = lake.clone();
            tokio::task::spawn_blocking(move || newest_day(&lake))
                .await
                .ok()
                .flatten()
                .ok_or_else(|| not_found("no day has been rolled up yet"))?
        }
    };
    let engine = Embedded::new(lake);
    let path = engine.output_path(FLEET_HEALTH_DAILY, day);
    if !engine.exists(&path).await.map_err(|e| {
        ApiError(
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            format!("reading the lake: {e}"),
        )
    })? {
        return Err(not_found(format!("{day} has not been rolled up")));
    }
    let failed = |e: String| {
        ApiError(
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            format!("reading {FLEET_HEALTH_DAILY} {day}: {e}"),
        )
    };
    let ctx = engine.session();
    ctx.register_parquet("fleet", path.display().to_string(), Default::default())
        .await
        .map_err(|e| failed(e.to_string()))?;
    let batches = ctx
        .sql(SQL)
        .await
        .map_err(|e| failed(e.to_string()))?
        .collect()
        .await
        .map_err(|e| failed(e.to_string()))?;
    let rows = Embedded::json_rows(&batches).map_err(failed)?;
    Ok(Json(json!({ "day": day.key(), "cohorts": rows })))
}

/// The cohorts route over the lake.
pub fn router(lake: Lake) -> Routes {
    Routes::new()
        .route(
            Doc::get(
                "/api/v1/fleet/cohorts",
                "fleet",
                "Firmware, app and model cohorts side by side for a day, worst crash rate first",
            )
            .query(
                "day",
                "string",
                "A day like 2026-11-22 (default: the newest rolled up)",
            ),
            get(cohorts),
        )
        .with_state(lake)
}
