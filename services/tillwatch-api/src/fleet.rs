//! The fleet over HTTP:
//!
//! | method and path | what |
//! |---|---|
//! | `GET /api/v1/fleet` | counts (devices, online, offline, never seen online, low battery, alerting) for the fleet, each merchant and each store; the least healthy terminals |
//! | `GET /api/v1/devices?merchant=&store=&after=&limit=` | terminals in id order, `limit` (1-1000, default 100) after the id `after`; `next_after` continues |
//! | `GET /api/v1/devices/{device_id}` | one terminal: registry, health score with its reasons, connectivity state and its recent changes, newest signals, its alerts |
//! | `GET /api/v1/search?q=&limit=` | terminals whose id, serial, merchant or store is `q`, or whose id or serial starts with it |
//! | `GET /api/v1/merchants` | merchants, with their names from the directory |
//! | `GET /api/v1/merchants/{merchant_id}?store=` | one merchant or store: stores with counts, terminals least healthy first, merchant and store alerts |
//! | `GET /api/v1/stores?merchant=` | stores, with time zone and opening hours |
//! | `GET /api/v1/alerts?state=&limit=` | alerts, newest change first; `state` is `open` (default), `all`, `pending`, `firing` or `resolved` |

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::routing::get;
use serde::Deserialize;
use tillwatch_query::fleet::{
    AlertList, DeviceCard, DeviceList, DevicePage, FleetSummary, MerchantList, MerchantPage,
    StoreList,
};
use tillwatch_query::{AlertsWanted, Queries};

use crate::ApiError;
use crate::openapi::{Doc, Routes};

/// A typed JSON answer or an error.
type Typed<T> = Result<Json<T>, ApiError>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DevicesQuery {
    merchant: Option<String>,
    store: Option<String>,
    after: Option<String>,
    limit: Option<u32>,
}

async fn devices(
    State(queries): State<Queries>,
    q: Result<Query<DevicesQuery>, QueryRejection>,
) -> Typed<DevicePage> {
    let Query(q) = q?;
    Ok(Json(
        queries
            .devices(
                q.merchant.as_deref(),
                q.store.as_deref(),
                q.after.as_deref(),
                q.limit,
            )
            .await?,
    ))
}

async fn device(State(queries): State<Queries>, Path(id): Path<String>) -> Typed<DeviceCard> {
    Ok(Json(queries.device_card(&id).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SearchQuery {
    q: Option<String>,
    limit: Option<u32>,
}

async fn search(
    State(queries): State<Queries>,
    q: Result<Query<SearchQuery>, QueryRejection>,
) -> Typed<DeviceList> {
    let Query(q) = q?;
    Ok(Json(
        queries
            .search(q.q.as_deref().unwrap_or_default(), q.limit)
            .await?,
    ))
}

async fn merchants(State(queries): State<Queries>) -> Typed<MerchantList> {
    Ok(Json(queries.merchants().await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StoresQuery {
    merchant: Option<String>,
}

async fn stores(
    State(queries): State<Queries>,
    q: Result<Query<StoresQuery>, QueryRejection>,
) -> Typed<StoreList> {
    let Query(q) = q?;
    Ok(Json(queries.stores(q.merchant.as_deref()).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AlertsQuery {
    state: Option<String>,
    limit: Option<u32>,
}

async fn alerts(
    State(queries): State<Queries>,
    q: Result<Query<AlertsQuery>, QueryRejection>,
) -> Typed<AlertList> {
    let Query(q) = q?;
    let wanted = q
        .state
        .as_deref()
        .map(|s| AlertsWanted::parse("state", s))
        .transpose()?
        .unwrap_or_default();
    Ok(Json(queries.alerts(wanted, q.limit).await?))
}

async fn summary(State(queries): State<Queries>) -> Typed<FleetSummary> {
    Ok(Json(queries.fleet_summary().await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MerchantQuery {
    store: Option<String>,
}

async fn merchant(
    State(queries): State<Queries>,
    Path(merchant_id): Path<String>,
    q: Result<Query<MerchantQuery>, QueryRejection>,
) -> Typed<MerchantPage> {
    let Query(q) = q?;
    Ok(Json(
        queries
            .merchant_page(&merchant_id, q.store.as_deref())
            .await?,
    ))
}

/// The fleet and silence routes over the metadata store (not yet behind
/// tokens: see [`crate::protect`]).
pub fn router(queries: Queries) -> Routes {
    let store = queries.store().clone();
    Routes::new()
        .route(
            Doc::get(
                "/api/v1/fleet",
                "fleet",
                "Counts for the fleet, each merchant and each store",
            )
            .returns::<FleetSummary>(),
            get(summary),
        )
        .route(
            Doc::get(
                "/api/v1/devices/{device_id}",
                "fleet",
                "One terminal: registry, health score and reasons, connectivity state and changes, newest signals, alerts",
            )
            .path_param("device_id", "The terminal")
            .returns::<DeviceCard>(),
            get(device),
        )
        .route(
            Doc::get(
                "/api/v1/merchants/{merchant_id}",
                "fleet",
                "One merchant or store: its stores with counts, its terminals least healthy first, merchant and store alerts",
            )
            .path_param("merchant_id", "The merchant")
            .query("store", "string", "Only this store")
            .returns::<MerchantPage>(),
            get(merchant),
        )
        .route(
            Doc::get(
                "/api/v1/devices",
                "fleet",
                "Terminals in id order, a page at a time",
            )
            .query("merchant", "string", "Only this merchant's")
            .query("store", "string", "Only this store's (with merchant)")
            .query(
                "after",
                "string",
                "The page after this device id (next_after)",
            )
            .query("limit", "integer", "1-1000, default 100")
            .returns::<DevicePage>(),
            get(devices),
        )
        .route(
            Doc::get(
                "/api/v1/search",
                "fleet",
                "Terminals by device id, serial, merchant or store (exact, or id/serial prefix)",
            )
            .query_required("q", "string", "What to look for")
            .query("limit", "integer", "1-1000, default 20")
            .returns::<DeviceList>(),
            get(search),
        )
        .route(
            Doc::get(
                "/api/v1/merchants",
                "fleet",
                "Merchants with their directory names",
            )
            .returns::<MerchantList>(),
            get(merchants),
        )
        .route(
            Doc::get(
                "/api/v1/stores",
                "fleet",
                "Stores with time zone and opening hours",
            )
            .query("merchant", "string", "Only this merchant's")
            .returns::<StoreList>(),
            get(stores),
        )
        .route(
            Doc::get("/api/v1/alerts", "alerts", "Alerts, newest change first")
                .query(
                    "state",
                    "string",
                    "open (default), all, pending, firing or resolved",
                )
                .query("limit", "integer", "1-10000, default 100")
            .returns::<AlertList>(),
            get(alerts),
        )
        .with_state(queries)
        .merge(crate::silences::router(store))
}
