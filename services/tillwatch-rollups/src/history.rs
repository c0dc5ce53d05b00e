//! Which terminals served a merchant (or one of its stores) on each of the
//! last days, from the `device_health_daily` partitions in the lake:
//!
//! `GET /api/v1/merchants/{merchant_id}/days?store=S&days=7` →
//! `{"merchant_id", "store_id", "days": [{"day", "terminals": [{device_id,
//! store_id, hours_reported, transactions, crashes, hangs, battery_min_pct,
//! minutes_online}]}]}`, newest day first.
//!
//! A terminal belongs to a store for the hours it was there (see
//! `tillwatch_domain::attribution`): one moved mid-day shows on both stores'
//! pages that day, each with its hours there. The ids only filter rows as
//! literal values; nothing from the request becomes SQL text.

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::get;
use datafusion::prelude::{ParquetReadOptions, col, lit};
use serde::Deserialize;
use serde_json::json;
use tillwatch_api::{Answer, ApiError, Doc, Routes, bad};
use tillwatch_scheduler::{Grain, Partition};
use tillwatch_storage::Lake;

use crate::embedded::Embedded;
use crate::jobs::DEVICE_HEALTH_DAILY;

/// The most days one request reads.
pub const MAX_DAYS: u32 = 31;

const COLUMNS: [&str; 8] = [
    "device_id",
    "store_id",
    "hours_reported",
    "transactions",
    "crashes",
    "hangs",
    "battery_min_pct",
    "minutes_online",
];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DaysQuery {
    store: Option<String>,
    days: Option<u32>,
}

/// The newest `days` days with a daily rollup in the lake, newest first.
fn rolled_up_days(lake: &Lake, days: usize) -> Result<Vec<Partition>, String> {
    let dir = lake.root().join(DEVICE_HEALTH_DAILY);
    let mut found: Vec<Partition> = lake
        .subdirectories(&dir)
        .map_err(|e| e.to_string())?
        .into_iter()
        .filter_map(|name| Partition::parse_key(name.strip_prefix("date=")?))
        .filter(|p| p.grain == Grain::Day)
        .collect();
    found.sort_by(|a, b| b.cmp(a));
    found.truncate(days);
    Ok(found)
}

async fn days(
    State(lake): State<Lake>,
    Path(merchant_id): Path<String>,
    q: Result<Query<DaysQuery>, QueryRejection>,
) -> Answer {
    let Query(q) = q?;
    let wanted = q.days.unwrap_or(7);
    if !(1..=MAX_DAYS).contains(&wanted) {
        return Err(bad(format!("days: must be 1 to {MAX_DAYS}, not {wanted}")));
    }
    let failed = |e: String| {
        ApiError(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("reading {DEVICE_HEALTH_DAILY} from the lake: {e}"),
        )
    };
    let listing = lake.clone();
    let partitions = tokio::task::spawn_blocking(move || rolled_up_days(&listing, wanted as usize))
        .await
        .map_err(|e| failed(e.to_string()))?
        .map_err(failed)?;
    let engine = Embedded::new(lake);
    let mut out = Vec::new();
    for day in partitions {
        let path = engine.output_path(DEVICE_HEALTH_DAILY, day);
        let ctx = engine.session();
        let mut frame = ctx
            .read_parquet(path.display().to_string(), ParquetReadOptions::default())
            .await
            .map_err(|e| failed(e.to_string()))?
            .filter(col("merchant_id").eq(lit(merchant_id.clone())))
            .map_err(|e| failed(e.to_string()))?;
        if let Some(store) = &q.store {
            frame = frame
                .filter(col("store_id").eq(lit(store.clone())))
                .map_err(|e| failed(e.to_string()))?;
        }
        let batches = frame
            .select_columns(&COLUMNS)
            .map_err(|e| failed(e.to_string()))?
            .sort(vec![
                col("device_id").sort(true, true),
                col("store_id").sort(true, true),
            ])
            .map_err(|e| failed(e.to_string()))?
            .collect()
            .await
            .map_err(|e| failed(e.to_string()))?;
        let terminals = Embedded::json_rows(&batches).map_err(failed)?;
        out.push(json!({ "day": day.key(), "terminals": terminals }));
    }
    Ok(Json(json!({
        "merchant_id": merchant_id,
        "store_id": q.store,
        "days": out,
    })))
}

/// The route over the lake.
pub fn router(lake: Lake) -> Routes {
    Routes::new()
        .route(
            Doc::get(
                "/api/v1/merchants/{merchant_id}/days",
                "fleet",
                "The terminals that served a merchant or store on each of its last rolled-up days, with their hours there",
            )
            .path_param("merchant_id", "The merchant")
            .query("store", "string", "Only this store")
            .query("days", "integer", "1-31, default 7"),
            get(days),
        )
        .with_state(lake)
}
