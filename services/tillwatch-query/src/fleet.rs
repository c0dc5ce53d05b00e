//! The fleet from the metadata store: counts by merchant and store with
//! the least healthy terminals, pages of terminals, one terminal's card,
//! one merchant's or store's page, merchants, stores and alerts.

use std::collections::{BTreeMap, HashMap};

use schemars::JsonSchema;
use serde::Serialize;
use tillwatch_domain::connectivity::ConnState;
use tillwatch_meta::{AlertFilter, AlertRecord, AlertState, DeviceRecord};

use crate::view::{DeviceState, FleetView, HealthScore};
use crate::{Queries, QueryError};

/// A terminal's registry entry.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct Device {
    pub device_id: String,
    pub merchant_id: String,
    pub store_id: Option<String>,
    pub model: Option<String>,
    pub serial: Option<String>,
    pub firmware_version: Option<String>,
    pub app_version: Option<String>,
    /// An IANA time zone, from the terminal's info message.
    pub time_zone: Option<String>,
    /// Its first reading or info message.
    pub first_seen_ms: i64,
    /// Its newest reading's sample time; `null` until a reading arrives.
    pub last_seen_ms: Option<i64>,
}

impl From<&DeviceRecord> for Device {
    fn from(d: &DeviceRecord) -> Device {
        Device {
            device_id: d.device_id.clone(),
            merchant_id: d.merchant_id.clone(),
            store_id: d.store_id.clone(),
            model: d.model.clone(),
            serial: d.serial.clone(),
            firmware_version: d.firmware_version.clone(),
            app_version: d.app_version.clone(),
            time_zone: d.time_zone.clone(),
            first_seen_ms: d.first_seen_ms,
            last_seen_ms: d.last_seen_ms,
        }
    }
}

/// An alert about a terminal, a store or a merchant.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct Alert {
    pub alert_id: String,
    /// The rule that raised it (`battery_low`, `device_offline`, …).
    pub rule: String,
    /// A device id, `store:<merchant>/<store>` or `merchant:<merchant>`.
    pub subject: String,
    /// `device`, `store` or `merchant`.
    pub scope: String,
    pub severity: String,
    /// `pending`, `firing` or `resolved`.
    pub state: &'static str,
    pub pending_since_ms: i64,
    pub fired_at_ms: Option<i64>,
    pub resolved_at_ms: Option<i64>,
    /// The silence or maintenance window muting it.
    pub silenced_by: Option<String>,
    /// The store or merchant alert its page is held back for.
    pub held_by: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub updated_at_ms: i64,
}

impl From<&AlertRecord> for Alert {
    fn from(a: &AlertRecord) -> Alert {
        Alert {
            alert_id: a.alert_id.clone(),
            rule: a.rule.clone(),
            subject: a.subject.clone(),
            scope: a.scope.clone(),
            severity: a.severity.clone(),
            state: a.state.as_str(),
            pending_since_ms: a.pending_since_ms,
            fired_at_ms: a.fired_at_ms,
            resolved_at_ms: a.resolved_at_ms,
            silenced_by: a.silenced_by.clone(),
            held_by: a.held_by.clone(),
            labels: a.labels.clone(),
            annotations: a.annotations.clone(),
            updated_at_ms: a.updated_at_ms,
        }
    }
}

/// How many terminals of a group are in each state.
#[derive(Debug, Clone, Default, PartialEq, Serialize, JsonSchema)]
pub struct Counts {
    pub devices: u64,
    pub online: u64,
    pub offline: u64,
    /// Never seen online.
    pub unknown: u64,
    pub low_battery: u64,
    /// With a device alert firing.
    pub alerting: u64,
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
}

/// A terminal in a list: its registry entry and its state now.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct DeviceBrief {
    #[serde(flatten)]
    pub device: Device,
    #[serde(flatten)]
    pub state: DeviceState,
}

fn brief(view: &FleetView, d: &DeviceRecord) -> DeviceBrief {
    DeviceBrief {
        device: d.into(),
        state: view.brief(&d.device_id),
    }
}

/// A store's counts on the fleet page.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct StoreCounts {
    /// `null` for the merchant's terminals that name no store.
    pub store_id: Option<String>,
    #[serde(flatten)]
    pub counts: Counts,
}

/// A merchant's counts on the fleet page, with its stores'.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct MerchantCounts {
    pub merchant_id: String,
    /// Its name in the merchant directory.
    pub name: Option<String>,
    #[serde(flatten)]
    pub counts: Counts,
    pub stores: Vec<StoreCounts>,
}

/// The fleet page: counts for the fleet, each merchant and each store, and
/// the least healthy terminals.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct FleetSummary {
    /// When the state shown was read.
    pub as_of_ms: i64,
    pub totals: Counts,
    /// A terminal below this battery level counts as low.
    pub low_battery_below_pct: f64,
    /// At most 25 terminals scoring under 100, least healthy first.
    pub worst: Vec<DeviceBrief>,
    pub merchants: Vec<MerchantCounts>,
}

/// A page of terminals in id order.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct DevicePage {
    pub devices: Vec<Device>,
    /// Give as `after` for the next page; `null` on the last.
    pub next_after: Option<String>,
}

/// Terminals found by a search.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct DeviceList {
    pub devices: Vec<Device>,
}

/// A terminal's saved connectivity state.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct Connectivity {
    /// `online`, `last_will`, `shutdown` or `silence`; `null` until first
    /// seen online.
    pub state: Option<&'static str>,
    pub online: bool,
    pub since_ms: i64,
    pub last_telemetry_ms: Option<i64>,
    /// Its learned reporting interval.
    pub cadence_ms: Option<f64>,
}

/// A change of a terminal's connectivity.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct ConnectivityChange {
    pub at_ms: i64,
    pub from: Option<&'static str>,
    pub to: &'static str,
}

/// The newest value of a signal.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct SignalValue {
    pub value: f64,
    pub sampled_at_ms: i64,
}

/// One terminal's card.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct DeviceCard {
    pub device: Device,
    pub health: HealthScore,
    /// `null` until the terminal has been seen.
    pub connectivity: Option<Connectivity>,
    /// Its latest 50 connectivity changes, newest first.
    pub connectivity_history: Vec<ConnectivityChange>,
    /// The newest value of each signal, by signal name.
    pub signals: BTreeMap<String, SignalValue>,
    /// Its latest 50 alerts.
    pub alerts: Vec<Alert>,
}

/// A merchant as the merchant directory names it.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct Merchant {
    pub merchant_id: String,
    pub name: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct MerchantList {
    pub merchants: Vec<Merchant>,
}

/// A store from the merchant directory.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct Store {
    pub merchant_id: String,
    pub store_id: String,
    pub name: Option<String>,
    /// An IANA time zone.
    pub time_zone: Option<String>,
    /// Opening hours, e.g. `Mon-Fri 08:00-20:00, Sat 09:00-14:00`.
    pub hours: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct StoreList {
    pub stores: Vec<Store>,
}

#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct AlertList {
    pub alerts: Vec<Alert>,
}

/// A store on a merchant's page: its directory entry (absent for a store
/// only its terminals name) and its counts.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct MerchantStore {
    /// `null` for the merchant's terminals that name no store.
    pub store_id: Option<String>,
    pub name: Option<String>,
    pub time_zone: Option<String>,
    pub hours: Option<String>,
    #[serde(flatten)]
    pub counts: Counts,
}

/// One merchant's (or one of its stores') page.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct MerchantPage {
    pub as_of_ms: i64,
    pub low_battery_below_pct: f64,
    pub merchant_id: String,
    pub name: Option<String>,
    /// The store asked for, if one was.
    pub store_id: Option<String>,
    pub totals: Counts,
    pub stores: Vec<MerchantStore>,
    /// Its terminals, least healthy first.
    pub devices: Vec<DeviceBrief>,
    /// The merchant's and its stores' alerts, open ones first, newest
    /// change first.
    pub alerts: Vec<Alert>,
}

/// Which alerts to list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AlertsWanted {
    /// Pending or firing.
    #[default]
    Open,
    All,
    In(AlertState),
}

impl AlertsWanted {
    /// `open`, `all`, `pending`, `firing` or `resolved`, for `param`.
    pub fn parse(param: &'static str, text: &str) -> Result<AlertsWanted, QueryError> {
        match text {
            "open" => Ok(AlertsWanted::Open),
            "all" => Ok(AlertsWanted::All),
            other => AlertState::parse(other)
                .map(AlertsWanted::In)
                .ok_or_else(|| {
                    QueryError::invalid(
                        param,
                        format!("{other:?} is not open, all, pending, firing or resolved"),
                    )
                }),
        }
    }
}

/// `value` (or `default`) when it is 1 to `max`, else an error naming
/// `limit`.
fn limit(value: Option<u32>, default: u32, max: u32) -> Result<u32, QueryError> {
    let v = value.unwrap_or(default);
    if (1..=max).contains(&v) {
        Ok(v)
    } else {
        Err(QueryError::invalid(
            "limit",
            format!("must be 1 to {max}, not {v}"),
        ))
    }
}

/// How many of the least healthy terminals the fleet page lists.
const WORST: usize = 25;

impl Queries {
    /// The fleet page.
    pub async fn fleet_summary(&self) -> Result<FleetSummary, QueryError> {
        let view = self.views.get().await?;
        let names: HashMap<String, Option<String>> = self
            .store
            .merchants()
            .await?
            .into_iter()
            .map(|m| (m.merchant_id, m.name))
            .collect();
        let mut totals = Counts::default();
        let mut by_merchant: BTreeMap<String, (Counts, BTreeMap<String, Counts>)> = BTreeMap::new();
        let mut worst: Vec<(u32, &DeviceRecord)> = Vec::new();
        for d in &view.devices {
            totals.add(&view, &d.device_id);
            let merchant = by_merchant.entry(d.merchant_id.clone()).or_default();
            merchant.0.add(&view, &d.device_id);
            merchant
                .1
                .entry(d.store_id.clone().unwrap_or_default())
                .or_default()
                .add(&view, &d.device_id);
            let score = view.health(&d.device_id).score;
            if score < 100 {
                worst.push((score, d));
            }
        }
        worst.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.device_id.cmp(&b.1.device_id)));
        let worst = worst
            .iter()
            .take(WORST)
            .map(|(_, d)| brief(&view, d))
            .collect();
        let merchants = by_merchant
            .into_iter()
            .map(|(id, (counts, stores))| MerchantCounts {
                name: names.get(&id).cloned().flatten(),
                merchant_id: id,
                counts,
                stores: stores
                    .into_iter()
                    .map(|(store_id, counts)| StoreCounts {
                        store_id: (!store_id.is_empty()).then_some(store_id),
                        counts,
                    })
                    .collect(),
            })
            .collect();
        Ok(FleetSummary {
            as_of_ms: view.now_ms,
            totals,
            low_battery_below_pct: self.low_battery_pct,
            worst,
            merchants,
        })
    }

    /// Terminals in id order, `limit` (1 to 1,000, default 100) after the
    /// id `after`, of one merchant or store.
    pub async fn devices(
        &self,
        merchant: Option<&str>,
        store: Option<&str>,
        after: Option<&str>,
        limit: Option<u32>,
    ) -> Result<DevicePage, QueryError> {
        if store.is_some() && merchant.is_none() {
            return Err(QueryError::invalid(
                "store",
                "give merchant too (store ids are per merchant)",
            ));
        }
        let limit = self::limit(limit, 100, 1000)?;
        let found = self.store.devices(merchant, store, after, limit).await?;
        let next_after = (found.len() == limit as usize)
            .then(|| found.last().map(|d| d.device_id.clone()))
            .flatten();
        Ok(DevicePage {
            devices: found.iter().map(Device::from).collect(),
            next_after,
        })
    }

    /// Terminals whose id, serial, merchant or store is `text`, or whose
    /// id or serial starts with it.
    pub async fn search(&self, text: &str, limit: Option<u32>) -> Result<DeviceList, QueryError> {
        let text = text.trim();
        if text.is_empty() || text.chars().count() > 100 {
            return Err(QueryError::invalid(
                "q",
                "give a device id, serial, merchant or store (1 to 100 characters)",
            ));
        }
        let limit = self::limit(limit, 20, 1000)?;
        let found = self.store.search_devices(text, limit).await?;
        Ok(DeviceList {
            devices: found.iter().map(Device::from).collect(),
        })
    }

    /// One terminal's card.
    pub async fn device_card(&self, id: &str) -> Result<DeviceCard, QueryError> {
        let store = &self.store;
        let Some(d) = store.device(id).await? else {
            return Err(QueryError::NotFound(format!("no device {id:?}")));
        };
        let connectivity = store.device_connectivity(id).await?.map(|c| Connectivity {
            state: c.state.map(|s| s.as_str()),
            online: c.state == Some(ConnState::Online),
            since_ms: c.since.0,
            last_telemetry_ms: c.last_telemetry.map(|t| t.0),
            cadence_ms: c.gap_ms,
        });
        let connectivity_history = store
            .connectivity_history(id, 50)
            .await?
            .iter()
            .map(|h| ConnectivityChange {
                at_ms: h.at_ms,
                from: h.from.map(|s| s.as_str()),
                to: h.to.as_str(),
            })
            .collect();
        let signals = store
            .latest_signals(id)
            .await?
            .into_iter()
            .map(|s| {
                (
                    s.signal,
                    SignalValue {
                        value: s.value,
                        sampled_at_ms: s.sampled_at_ms,
                    },
                )
            })
            .collect();
        let alerts = store
            .subject_alerts(id, 50)
            .await?
            .iter()
            .map(Alert::from)
            .collect();
        let health = FleetView::load_one(store, id, self.low_battery_pct)
            .await?
            .health(id);
        Ok(DeviceCard {
            device: (&d).into(),
            health: (&health).into(),
            connectivity,
            connectivity_history,
            signals,
            alerts,
        })
    }

    /// Merchants, with their names from the directory.
    pub async fn merchants(&self) -> Result<MerchantList, QueryError> {
        let merchants = self
            .store
            .merchants()
            .await?
            .into_iter()
            .map(|m| Merchant {
                merchant_id: m.merchant_id,
                name: m.name,
            })
            .collect();
        Ok(MerchantList { merchants })
    }

    /// Stores (of one merchant), with time zone and opening hours.
    pub async fn stores(&self, merchant: Option<&str>) -> Result<StoreList, QueryError> {
        let stores = self
            .store
            .stores()
            .await?
            .into_iter()
            .filter(|s| merchant.is_none_or(|m| m == s.merchant_id))
            .map(|s| Store {
                merchant_id: s.merchant_id,
                store_id: s.store_id,
                name: s.name,
                time_zone: s.time_zone,
                hours: s.hours,
            })
            .collect();
        Ok(StoreList { stores })
    }

    /// Alerts, newest change first; `limit` 1 to 10,000 (default 100).
    pub async fn alerts(
        &self,
        wanted: AlertsWanted,
        limit: Option<u32>,
    ) -> Result<AlertList, QueryError> {
        let filter = match wanted {
            AlertsWanted::Open => AlertFilter::Open,
            AlertsWanted::All => AlertFilter::All,
            AlertsWanted::In(state) => AlertFilter::State(state),
        };
        let limit = self::limit(limit, 100, 10_000)?;
        let alerts = self
            .store
            .alerts(filter, limit)
            .await?
            .iter()
            .map(Alert::from)
            .collect();
        Ok(AlertList { alerts })
    }

    /// One merchant (or one of its stores): its stores with their counts,
    /// its terminals least healthy first, and the alerts about the
    /// merchant and its stores.
    pub async fn merchant_page(
        &self,
        merchant_id: &str,
        wanted_store: Option<&str>,
    ) -> Result<MerchantPage, QueryError> {
        let store = &self.store;
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
        let view = self.views.get().await?;
        let devices: Vec<&DeviceRecord> = view
            .devices
            .iter()
            .filter(|d| d.merchant_id == merchant_id)
            .filter(|d| wanted_store.is_none() || d.store_id.as_deref() == wanted_store)
            .collect();
        if record.is_none() && stores.is_empty() && devices.is_empty() {
            return Err(QueryError::NotFound(format!("no merchant {merchant_id:?}")));
        }
        if let Some(wanted) = wanted_store
            && devices.is_empty()
            && !stores.iter().any(|s| s.store_id == wanted)
        {
            return Err(QueryError::NotFound(format!(
                "store: merchant {merchant_id:?} has no store {wanted:?}"
            )));
        }
        let mut totals = Counts::default();
        let mut by_store: BTreeMap<String, Counts> = BTreeMap::new();
        for d in &devices {
            totals.add(&view, &d.device_id);
            by_store
                .entry(d.store_id.clone().unwrap_or_default())
                .or_default()
                .add(&view, &d.device_id);
        }
        let mut store_list: Vec<MerchantStore> = stores
            .into_iter()
            .filter(|s| wanted_store.is_none_or(|w| w == s.store_id))
            .map(|s| MerchantStore {
                counts: by_store.remove(&s.store_id).unwrap_or_default(),
                store_id: Some(s.store_id),
                name: s.name,
                time_zone: s.time_zone,
                hours: s.hours,
            })
            .collect();
        // Stores the terminals name that the directory does not know.
        for (id, counts) in by_store {
            store_list.push(MerchantStore {
                store_id: (!id.is_empty()).then_some(id),
                name: None,
                time_zone: None,
                hours: None,
                counts,
            });
        }
        let subjects: Vec<String> = match wanted_store {
            Some(s) => vec![format!("store:{merchant_id}/{s}")],
            None => std::iter::once(format!("merchant:{merchant_id}"))
                .chain(
                    store_list
                        .iter()
                        .filter_map(|s| s.store_id.as_deref())
                        .map(|s| format!("store:{merchant_id}/{s}")),
                )
                .collect(),
        };
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
        Ok(MerchantPage {
            as_of_ms: view.now_ms,
            low_battery_below_pct: self.low_battery_pct,
            merchant_id: merchant_id.to_string(),
            name: record.and_then(|m| m.name),
            store_id: wanted_store.map(str::to_string),
            totals,
            stores: store_list,
            devices: scored.iter().map(|(_, d)| brief(&view, d)).collect(),
            alerts: alerts.iter().map(Alert::from).collect(),
        })
    }
}
