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

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::routing::get;
use serde::Deserialize;
use serde_json::{Value, json};
use tillwatch_meta::{AlertFilter, AlertRecord, AlertState, DeviceRecord, MetaStore};

use crate::error::{Answer, bad, not_found};
use crate::openapi::{Doc, Routes};
use crate::view::{FleetView, ViewCache, health_json};
use std::sync::Arc;

fn device_json(d: &DeviceRecord) -> Value {
    json!({
        "device_id": d.device_id,
        "merchant_id": d.merchant_id,
        "store_id": d.store_id,
        "model": d.model,
        "serial": d.serial,
        "firmware_version": d.firmware_version,
        "app_version": d.app_version,
        "time_zone": d.time_zone,
        "first_seen_ms": d.first_seen_ms,
        "last_seen_ms": d.last_seen_ms,
    })
}

/// An alert as the API shows it.
pub fn alert_json(a: &AlertRecord) -> Value {
    json!({
        "alert_id": a.alert_id,
        "rule": a.rule,
        "subject": a.subject,
        "scope": a.scope,
        "severity": a.severity,
        "state": a.state.as_str(),
        "pending_since_ms": a.pending_since_ms,
        "fired_at_ms": a.fired_at_ms,
        "resolved_at_ms": a.resolved_at_ms,
        "silenced_by": a.silenced_by,
        "held_by": a.held_by,
        "labels": a.labels,
        "annotations": a.annotations,
        "updated_at_ms": a.updated_at_ms,
    })
}

fn limit(value: Option<u32>, default: u32, max: u32) -> Result<u32, crate::ApiError> {
    let v = value.unwrap_or(default);
    if (1..=max).contains(&v) {
        Ok(v)
    } else {
        Err(bad(format!("limit: must be 1 to {max}, not {v}")))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DevicesQuery {
    merchant: Option<String>,
    store: Option<String>,
    after: Option<String>,
    limit: Option<u32>,
}

async fn devices(
    State(store): State<MetaStore>,
    q: Result<Query<DevicesQuery>, QueryRejection>,
) -> Answer {
    let Query(q) = q?;
    if q.store.is_some() && q.merchant.is_none() {
        return Err(bad("store: give merchant too (store ids are per merchant)"));
    }
    let limit = limit(q.limit, 100, 1000)?;
    let found = store
        .devices(
            q.merchant.as_deref(),
            q.store.as_deref(),
            q.after.as_deref(),
            limit,
        )
        .await?;
    let next = (found.len() == limit as usize)
        .then(|| found.last().map(|d| d.device_id.clone()))
        .flatten();
    Ok(Json(json!({
        "devices": found.iter().map(device_json).collect::<Vec<_>>(),
        "next_after": next,
    })))
}

async fn device(State(fleet): State<Fleet>, Path(id): Path<String>) -> Answer {
    let store = &fleet.store;
    let Some(d) = store.device(&id).await? else {
        return Err(not_found(format!("no device {id:?}")));
    };
    let connectivity = store.device_connectivity(&id).await?.map(|c| {
        json!({
            "state": c.state.map(|s| s.as_str()),
            "online": c.state == Some(tillwatch_domain::connectivity::ConnState::Online),
            "since_ms": c.since.0,
            "last_telemetry_ms": c.last_telemetry.map(|t| t.0),
            "cadence_ms": c.gap_ms,
        })
    });
    let history: Vec<Value> = store
        .connectivity_history(&id, 50)
        .await?
        .iter()
        .map(|h| {
            json!({
                "at_ms": h.at_ms,
                "from": h.from.map(|s| s.as_str()),
                "to": h.to.as_str(),
            })
        })
        .collect();
    let signals: BTreeMap<String, Value> = store
        .latest_signals(&id)
        .await?
        .into_iter()
        .map(|s| {
            (
                s.signal,
                json!({ "value": s.value, "sampled_at_ms": s.sampled_at_ms }),
            )
        })
        .collect();
    let alerts: Vec<Value> = store
        .subject_alerts(&id, 50)
        .await?
        .iter()
        .map(alert_json)
        .collect();
    let health = FleetView::load_one(store, &id, fleet.low_battery_pct)
        .await?
        .health(&id);
    Ok(Json(json!({
        "device": device_json(&d),
        "health": health_json(&health),
        "connectivity": connectivity,
        "connectivity_history": history,
        "signals": signals,
        "alerts": alerts,
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SearchQuery {
    q: Option<String>,
    limit: Option<u32>,
}

async fn search(
    State(store): State<MetaStore>,
    q: Result<Query<SearchQuery>, QueryRejection>,
) -> Answer {
    let Query(q) = q?;
    let text = q.q.as_deref().map(str::trim).unwrap_or_default();
    if text.is_empty() || text.chars().count() > 100 {
        return Err(bad(
            "q: give a device id, serial, merchant or store (1 to 100 characters)",
        ));
    }
    let limit = limit(q.limit, 20, 1000)?;
    let found = store.search_devices(text, limit).await?;
    Ok(Json(json!({
        "devices": found.iter().map(device_json).collect::<Vec<_>>(),
    })))
}

async fn merchants(State(store): State<MetaStore>) -> Answer {
    let list: Vec<Value> = store
        .merchants()
        .await?
        .iter()
        .map(|m| json!({ "merchant_id": m.merchant_id, "name": m.name }))
        .collect();
    Ok(Json(json!({ "merchants": list })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StoresQuery {
    merchant: Option<String>,
}

async fn stores(
    State(store): State<MetaStore>,
    q: Result<Query<StoresQuery>, QueryRejection>,
) -> Answer {
    let Query(q) = q?;
    let list: Vec<Value> = store
        .stores()
        .await?
        .iter()
        .filter(|s| q.merchant.as_ref().is_none_or(|m| *m == s.merchant_id))
        .map(|s| {
            json!({
                "merchant_id": s.merchant_id,
                "store_id": s.store_id,
                "name": s.name,
                "time_zone": s.time_zone,
                "hours": s.hours,
            })
        })
        .collect();
    Ok(Json(json!({ "stores": list })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AlertsQuery {
    state: Option<String>,
    limit: Option<u32>,
}

async fn alerts(
    State(store): State<MetaStore>,
    q: Result<Query<AlertsQuery>, QueryRejection>,
) -> Answer {
    let Query(q) = q?;
    let filter = match q.state.as_deref().unwrap_or("open") {
        "open" => AlertFilter::Open,
        "all" => AlertFilter::All,
        other => AlertState::parse(other)
            .map(AlertFilter::State)
            .ok_or_else(|| {
                bad(format!(
                    "state: {other:?} is not open, all, pending, firing or resolved"
                ))
            })?,
    };
    let limit = limit(q.limit, 100, 10_000)?;
    let list: Vec<Value> = store
        .alerts(filter, limit)
        .await?
        .iter()
        .map(alert_json)
        .collect();
    Ok(Json(json!({ "alerts": list })))
}

/// What the fleet routes read beside the store.
#[derive(Clone)]
pub struct Fleet {
    pub store: MetaStore,
    /// A terminal whose newest battery level is below this is low
    /// (`alerting.rules.battery_low.threshold`).
    pub low_battery_pct: f64,
    /// The whole fleet's state for the fleet and merchant pages, a couple
    /// of seconds old at most ([`Fleet::new`]).
    pub views: Arc<ViewCache>,
}

/// How old the fleet and merchant pages' state may be: loading 10,000
/// terminals' state takes about half a second, and many people watching
/// the pages then share one load.
pub const VIEW_TTL: std::time::Duration = std::time::Duration::from_secs(2);

impl Fleet {
    pub fn new(store: MetaStore, low_battery_pct: f64) -> Fleet {
        Fleet {
            views: Arc::new(ViewCache::new(store.clone(), low_battery_pct, VIEW_TTL)),
            store,
            low_battery_pct,
        }
    }
}

#[derive(Default)]
struct Counts {
    devices: u64,
    online: u64,
    offline: u64,
    unknown: u64,
    low_battery: u64,
    alerting: u64,
}

impl Counts {
    fn add(&mut self, view: &FleetView, device_id: &str) {
        self.devices += 1;
        match view.online(device_id) {
            Some(true) => self.online += 1,
            Some(false) => self.offline += 1,
            None => self.unknown += 1,
        }
        self.low_battery += u64::from(view.low_battery(device_id));
        self.alerting += u64::from(view.alerting(device_id));
    }

    fn json(&self) -> Value {
        json!({
            "devices": self.devices,
            "online": self.online,
            "offline": self.offline,
            "unknown": self.unknown,
            "low_battery": self.low_battery,
            "alerting": self.alerting,
        })
    }
}

/// How many of the least healthy terminals the fleet page lists.
const WORST: usize = 25;

async fn summary(State(fleet): State<Fleet>) -> Answer {
    use std::collections::HashMap;
    let store = &fleet.store;
    let view = fleet.views.get().await?;
    let names: HashMap<String, Option<String>> = store
        .merchants()
        .await?
        .into_iter()
        .map(|m| (m.merchant_id, m.name))
        .collect();
    let mut total = Counts::default();
    let mut by_merchant: BTreeMap<String, (Counts, BTreeMap<String, Counts>)> = BTreeMap::new();
    let mut worst: Vec<(u32, DeviceRecord)> = Vec::new();
    for d in &view.devices {
        total.add(&view, &d.device_id);
        let merchant = by_merchant.entry(d.merchant_id.clone()).or_default();
        merchant.0.add(&view, &d.device_id);
        let store_key = d.store_id.clone().unwrap_or_default();
        merchant
            .1
            .entry(store_key)
            .or_default()
            .add(&view, &d.device_id);
        let score = view.health(&d.device_id).score;
        if score < 100 {
            worst.push((score, d.clone()));
        }
    }
    worst.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.device_id.cmp(&b.1.device_id)));
    let worst: Vec<Value> = worst
        .iter()
        .take(WORST)
        .map(|(_, d)| device_brief(&view, d))
        .collect();
    let merchants: Vec<Value> = by_merchant
        .iter()
        .map(|(id, (counts, stores))| {
            let mut m = counts.json();
            m["merchant_id"] = json!(id);
            m["name"] = json!(names.get(id).cloned().flatten());
            m["stores"] = stores
                .iter()
                .map(|(store_id, c)| {
                    let mut s = c.json();
                    s["store_id"] = json!((!store_id.is_empty()).then_some(store_id));
                    s
                })
                .collect();
            m
        })
        .collect();
    Ok(Json(json!({
        "as_of_ms": view.now_ms,
        "totals": total.json(),
        "low_battery_below_pct": fleet.low_battery_pct,
        "worst": worst,
        "merchants": merchants,
    })))
}

/// A terminal in a list: its registry entry and its state now.
fn device_brief(view: &FleetView, d: &DeviceRecord) -> Value {
    let mut v = device_json(d);
    if let (Value::Object(out), Value::Object(state)) = (&mut v, view.brief(&d.device_id)) {
        out.extend(state);
    }
    v
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MerchantQuery {
    store: Option<String>,
}

/// One merchant (or one of its stores): its stores with their counts, its
/// terminals with their state and health, least healthy first, and the
/// alerts about the merchant and its stores.
async fn merchant(
    State(fleet): State<Fleet>,
    Path(merchant_id): Path<String>,
    q: Result<Query<MerchantQuery>, QueryRejection>,
) -> Answer {
    let Query(q) = q?;
    let store = &fleet.store;
    let record = store
        .merchants()
        .await?
        .into_iter()
        .find(|m| m.merchant_id == merchant_id);
    let stores: Vec<_> = store
        .stores()
        .await?
        .into_iter()
        .filter(|s| s.merchant_id == merchant_id)
        .collect();
    let view = fleet.views.get().await?;
    let devices: Vec<&DeviceRecord> = view
        .devices
        .iter()
        .filter(|d| d.merchant_id == merchant_id)
        .filter(|d| q.store.is_none() || d.store_id == q.store)
        .collect();
    if record.is_none() && stores.is_empty() && devices.is_empty() {
        return Err(not_found(format!("no merchant {merchant_id:?}")));
    }
    if let Some(wanted) = &q.store
        && devices.is_empty()
        && !stores.iter().any(|s| s.store_id == *wanted)
    {
        return Err(not_found(format!(
            "store: merchant {merchant_id:?} has no store {wanted:?}"
        )));
    }
    let mut total = Counts::default();
    let mut by_store: BTreeMap<String, Counts> = BTreeMap::new();
    for d in &devices {
        total.add(&view, &d.device_id);
        by_store
            .entry(d.store_id.clone().unwrap_or_default())
            .or_default()
            .add(&view, &d.device_id);
    }
    let mut store_list: Vec<Value> = stores
        .iter()
        .filter(|s| q.store.as_ref().is_none_or(|w| *w == s.store_id))
        .map(|s| {
            let mut v = by_store.remove(&s.store_id).unwrap_or_default().json();
            v["store_id"] = json!(s.store_id);
            v["name"] = json!(s.name);
            v["time_zone"] = json!(s.time_zone);
            v["hours"] = json!(s.hours);
            v
        })
        .collect();
    // Stores the terminals name that the directory does not know.
    for (id, c) in by_store {
        let mut v = c.json();
        v["store_id"] = json!((!id.is_empty()).then_some(id));
        store_list.push(v);
    }
    let mut subjects = vec![format!("merchant:{merchant_id}")];
    match &q.store {
        Some(s) => subjects = vec![format!("store:{merchant_id}/{s}")],
        None => subjects.extend(
            store_list
                .iter()
                .filter_map(|s| s["store_id"].as_str())
                .map(|s| format!("store:{merchant_id}/{s}")),
        ),
    }
    let mut alerts = Vec::new();
    for subject in &subjects {
        alerts.extend(store.subject_alerts(subject, 50).await?);
    }
    alerts.sort_by_key(|a| (a.state == AlertState::Resolved, -a.updated_at_ms));
    let mut scored: Vec<(u32, &DeviceRecord)> = devices
        .iter()
        .map(|d| (view.health(&d.device_id).score, *d))
        .collect();
    scored.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.device_id.cmp(&b.1.device_id)));
    Ok(Json(json!({
        "as_of_ms": view.now_ms,
        "low_battery_below_pct": fleet.low_battery_pct,
        "merchant_id": merchant_id,
        "name": record.and_then(|m| m.name),
        "store_id": q.store,
        "totals": total.json(),
        "stores": store_list,
        "devices": scored.iter().map(|(_, d)| device_brief(&view, d)).collect::<Vec<_>>(),
        "alerts": alerts.iter().map(alert_json).collect::<Vec<_>>(),
    })))
}

/// The fleet and silence routes over the metadata store (not yet behind
/// tokens: see [`crate::protect`]).
pub fn router(fleet: Fleet) -> Routes {
    let store = fleet.store.clone();
    Routes::new()
        .route(
            Doc::get(
                "/api/v1/fleet",
                "fleet",
                "Counts for the fleet, each merchant and each store",
            ),
            get(summary),
        )
        .route(
            Doc::get(
                "/api/v1/devices/{device_id}",
                "fleet",
                "One terminal: registry, health score and reasons, connectivity state and changes, newest signals, alerts",
            )
            .path_param("device_id", "The terminal"),
            get(device),
        )
        .route(
            Doc::get(
                "/api/v1/merchants/{merchant_id}",
                "fleet",
                "One merchant or store: its stores with counts, its terminals least healthy first, merchant and store alerts",
            )
            .path_param("merchant_id", "The merchant")
            .query("store", "string", "Only this store"),
            get(merchant),
        )
        .with_state(fleet)
        .merge(store_routes(store.clone()))
        .merge(crate::silences::router(store))
}

fn store_routes(store: MetaStore) -> Routes {
    Routes::new()
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
            .query("limit", "integer", "1-1000, default 100"),
            get(devices),
        )
        .route(
            Doc::get(
                "/api/v1/search",
                "fleet",
                "Terminals by device id, serial, merchant or store (exact, or id/serial prefix)",
            )
            .query_required("q", "string", "What to look for")
            .query("limit", "integer", "1-1000, default 20"),
            get(search),
        )
        .route(
            Doc::get(
                "/api/v1/merchants",
                "fleet",
                "Merchants with their directory names",
            ),
            get(merchants),
        )
        .route(
            Doc::get(
                "/api/v1/stores",
                "fleet",
                "Stores with time zone and opening hours",
            )
            .query("merchant", "string", "Only this merchant's"),
            get(stores),
        )
        .route(
            Doc::get("/api/v1/alerts", "alerts", "Alerts, newest change first")
                .query(
                    "state",
                    "string",
                    "open (default), all, pending, firing or resolved",
                )
                .query("limit", "integer", "1-10000, default 100"),
            get(alerts),
        )
        .with_state(store)
}
