//! What the fleet looks like now, read from the store in a handful of
//! queries (not one per terminal): each terminal's connectivity state,
//! newest signals, firing alerts and recent drops, and from them its
//! health score (`tillwatch_domain::health`). [`ViewCache`] keeps the
//! whole fleet's view for a moment, so the fleet and merchant pages of many
//! users cost one load between them.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use schemars::JsonSchema;
use serde::Serialize;
use tillwatch_domain::UtcMillis;
use tillwatch_domain::connectivity::{ConnState, ConnectivitySnapshot};
use tillwatch_domain::health::{self, FiringAlert, Health, HealthInput};
use tillwatch_meta::{AlertFilter, AlertState, DeviceRecord, MetaError, MetaStore};

const DAY_MS: i64 = 24 * 3_600_000;

static NO_SIGNALS: std::sync::LazyLock<HashMap<String, f64>> =
    std::sync::LazyLock::new(HashMap::new);

/// The state of every terminal (or of one), at `now_ms`.
pub struct FleetView {
    pub now_ms: i64,
    /// Every terminal in id order (empty for [`FleetView::load_one`]).
    pub devices: Vec<DeviceRecord>,
    low_battery_pct: f64,
    conn: HashMap<String, ConnectivitySnapshot>,
    signals: HashMap<String, HashMap<String, f64>>,
    firing: HashMap<String, Vec<FiringAlert>>,
    drops: HashMap<String, u32>,
}

impl FleetView {
    /// Every terminal's state.
    pub async fn load(store: &MetaStore, low_battery_pct: f64) -> Result<FleetView, MetaError> {
        let now_ms = UtcMillis::now().0;
        let conn = store.load_connectivity().await?.into_iter().collect();
        let mut signals: HashMap<String, HashMap<String, f64>> = HashMap::new();
        for (device, s) in store.all_latest_signals().await? {
            signals.entry(device).or_default().insert(s.signal, s.value);
        }
        let mut firing: HashMap<String, Vec<FiringAlert>> = HashMap::new();
        for a in store
            .alerts(AlertFilter::State(AlertState::Firing), 100_000)
            .await?
        {
            if a.scope == "device" {
                firing.entry(a.subject).or_default().push(FiringAlert {
                    rule: a.rule,
                    severity: a.severity,
                });
            }
        }
        let drops = store.offline_drops_since(None, now_ms - DAY_MS).await?;
        let mut devices = Vec::new();
        loop {
            let after = devices.last().map(|d: &DeviceRecord| d.device_id.clone());
            let page = store.devices(None, None, after.as_deref(), 5000).await?;
            let last = page.len() < 5000;
            devices.extend(page);
            if last {
                break;
            }
        }
        Ok(FleetView {
            now_ms,
            devices,
            low_battery_pct,
            conn,
            signals,
            firing,
            drops,
        })
    }

    /// One terminal's state.
    pub async fn load_one(
        store: &MetaStore,
        device_id: &str,
        low_battery_pct: f64,
    ) -> Result<FleetView, MetaError> {
        let now_ms = UtcMillis::now().0;
        let conn = store
            .device_connectivity(device_id)
            .await?
            .map(|c| (device_id.to_string(), c))
            .into_iter()
            .collect();
        let values = store
            .latest_signals(device_id)
            .await?
            .into_iter()
            .map(|s| (s.signal, s.value))
            .collect();
        let alerts: Vec<FiringAlert> = store
            .subject_alerts(device_id, 100)
            .await?
            .into_iter()
            .filter(|a| a.state == AlertState::Firing)
            .map(|a| FiringAlert {
                rule: a.rule,
                severity: a.severity,
            })
            .collect();
        let drops = store
            .offline_drops_since(Some(device_id), now_ms - DAY_MS)
            .await?;
        Ok(FleetView {
            now_ms,
            devices: Vec::new(),
            low_battery_pct,
            conn,
            signals: HashMap::from([(device_id.to_string(), values)]),
            firing: HashMap::from([(device_id.to_string(), alerts)]),
            drops,
        })
    }

    /// `Some(true)` online, `Some(false)` offline, `None` never seen online.
    pub fn online(&self, device_id: &str) -> Option<bool> {
        let state = self.conn.get(device_id)?.state?;
        Some(state == ConnState::Online)
    }

    pub fn low_battery(&self, device_id: &str) -> bool {
        self.signals
            .get(device_id)
            .and_then(|s| s.get("battery_level_pct"))
            .is_some_and(|v| *v < self.low_battery_pct)
    }

    pub fn alerting(&self, device_id: &str) -> bool {
        self.firing.get(device_id).is_some_and(|a| !a.is_empty())
    }

    /// `online`, `last_will`, `shutdown` or `silence`; `None` until first
    /// seen online.
    pub fn state(&self, device_id: &str) -> Option<&'static str> {
        Some(self.conn.get(device_id)?.state?.as_str())
    }

    /// Since when the terminal's current state holds.
    pub fn state_since(&self, device_id: &str) -> Option<i64> {
        let c = self.conn.get(device_id)?;
        c.state.map(|_| c.since.0)
    }

    /// The newest value of each of the terminal's signals.
    pub fn signals(&self, device_id: &str) -> HashMap<String, f64> {
        self.signals.get(device_id).cloned().unwrap_or_default()
    }

    /// The health score of one terminal.
    pub fn health(&self, device_id: &str) -> Health {
        let conn = self.conn.get(device_id);
        let state = conn.and_then(|c| c.state);
        health::score(&HealthInput {
            now_ms: self.now_ms,
            online: state.map(|s| s == ConnState::Online),
            state_since_ms: conn.map(|c| c.since.0),
            offline_reason: state
                .filter(|s| *s != ConnState::Online)
                .map(|s| s.as_str().to_string()),
            last_telemetry_ms: conn.and_then(|c| c.last_telemetry.map(|t| t.0)),
            cadence_ms: conn.and_then(|c| c.gap_ms),
            signals: self.signals.get(device_id).unwrap_or(&NO_SIGNALS),
            firing: self.firing.get(device_id).map_or(&[], Vec::as_slice),
            drops_24h: self.drops.get(device_id).copied().unwrap_or(0),
            low_battery_pct: self.low_battery_pct,
        })
    }

    /// A terminal's state for lists: online, score, grade, main reason.
    pub fn brief(&self, device_id: &str) -> DeviceState {
        let h = self.health(device_id);
        DeviceState {
            online: self.online(device_id),
            state: self.state(device_id),
            health_score: h.score,
            health_grade: h.grade(),
            main_reason: h.reasons.first().map(|r| r.detail.clone()),
            low_battery: self.low_battery(device_id),
            alerting: self.alerting(device_id),
        }
    }
}

/// A terminal's state now, as lists show it.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct DeviceState {
    /// `true` online, `false` offline, `null` never seen online.
    pub online: Option<bool>,
    /// `online`, `last_will`, `shutdown` or `silence`; `null` until first
    /// seen online.
    pub state: Option<&'static str>,
    /// 0 to 100.
    pub health_score: u32,
    /// `healthy`, `degraded` or `unhealthy`.
    pub health_grade: &'static str,
    /// The finding that costs the most points.
    pub main_reason: Option<String>,
    pub low_battery: bool,
    /// A device alert is firing.
    pub alerting: bool,
}

/// A health score and the findings behind it, most points first.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct HealthScore {
    /// 100 less the points of each reason.
    pub score: u32,
    /// `healthy` (80 and over), `degraded` (50 to 79) or `unhealthy`.
    pub grade: &'static str,
    pub reasons: Vec<HealthFinding>,
}

/// One finding behind a score.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct HealthFinding {
    /// Stable name for tools: `offline`, `alert`, `battery_low`, …
    pub code: &'static str,
    /// Points taken off.
    pub points: u32,
    /// What a person reads, with the figures.
    pub detail: String,
}

impl From<&Health> for HealthScore {
    fn from(h: &Health) -> HealthScore {
        HealthScore {
            score: h.score,
            grade: h.grade(),
            reasons: h
                .reasons
                .iter()
                .map(|r| HealthFinding {
                    code: r.code,
                    points: r.points,
                    detail: r.detail.clone(),
                })
                .collect(),
        }
    }
}

/// The whole fleet's view, loaded at most once per `ttl` however many
/// requests want it (one load at a time; the others wait for it).
pub struct ViewCache {
    store: MetaStore,
    low_battery_pct: f64,
    ttl: Duration,
    slot: tokio::sync::Mutex<Option<(Instant, Arc<FleetView>)>>,
}

impl ViewCache {
    pub fn new(store: MetaStore, low_battery_pct: f64, ttl: Duration) -> ViewCache {
        ViewCache {
            store,
            low_battery_pct,
            ttl,
            slot: tokio::sync::Mutex::new(None),
        }
    }

    /// A view at most `ttl` old.
    pub async fn get(&self) -> Result<Arc<FleetView>, MetaError> {
        let mut slot = self.slot.lock().await;
        if let Some((at, view)) = slot.as_ref()
            && at.elapsed() < self.ttl
        {
            return Ok(view.clone());
        }
        let view = Arc::new(FleetView::load(&self.store, self.low_battery_pct).await?);
        *slot = Some((Instant::now(), view.clone()));
        Ok(view)
    }
}
