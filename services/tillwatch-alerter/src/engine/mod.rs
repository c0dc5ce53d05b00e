//! The alert engine: built-in rules over each device's newest signals and
//! short windows of its readings, store-level correlation of offline
//! terminals, silences, maintenance windows and store hours. Pure state and
//! an injected clock: callers feed it what happened and save the alerts it
//! returns.
//!
//! **Architecture Invariant:** one open alert per (rule, subject), and
//! `notify` says what receivers should hold. An alert fires once and stays
//! firing until its clearing condition has held for its clearing duration;
//! nothing here sends anything.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use jiff::tz::TimeZone;
use tillwatch_config::{AlertingConfig, CorrelationConfig};
use tillwatch_domain::connectivity::ConnState;
use tillwatch_domain::{DeviceInfo, Reading, Signal, UtcMillis};
use tillwatch_meta::{AlertRecord, AlertState, DeviceRecord, SilenceRecord, StoreRecord};

use crate::matchers::{Matcher, parse_all};
use tillwatch_domain::hours::{HoursError, TimeZoneError, WeeklyHours, time_zone};

mod catalog;
mod correlation;
mod lifecycle;
#[cfg(test)]
mod tests;
mod windows;

use catalog::{DeviceRule, built_in_rules, ms};
use correlation::Subject;
use windows::DeviceView;

pub const STORE_OFFLINE: &str = "store_offline";
pub const MERCHANT_OFFLINE: &str = "merchant_offline";
/// The fleet-wide drop, and the subject of its one alert.
pub const INGEST_OUTAGE: &str = "ingest_outage";
const FLEET: &str = "fleet";
const OFFLINE: &str = "offline";
/// Hysteresis of the battery forecast: fire at a margin under 0 s, clear
/// above this, each held for `FORECAST_FOR_MS`.
const FORECAST_CLEAR_MARGIN_S: f64 = 1800.0;
const FORECAST_FOR_MS: i64 = 300_000;
/// A margin that means "no risk" (charging, not discharging).
const NO_RISK_S: f64 = 1e9;
const HOUR_MS: i64 = 3_600_000;
/// The least time the alerter's broker connection is down before it pages
/// `ingest_outage` for it.
pub const DEAF_GRACE_MIN_MS: i64 = 30_000;
/// A terminal silent this long (offline, no open alert) leaves the
/// engine's memory; the registry keeps it.
const FORGET_SILENT_AFTER_MS: i64 = 30 * 24 * HOUR_MS;

/// Alerts to write to the store: changed ones, and pending ones that went
/// away without firing.
#[derive(Debug, Default)]
pub struct Changes {
    pub saved: BTreeMap<String, AlertRecord>,
    pub dropped: BTreeSet<String>,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.saved.is_empty() && self.dropped.is_empty()
    }

    fn save(&mut self, record: &AlertRecord) {
        self.dropped.remove(&record.alert_id);
        self.saved.insert(record.alert_id.clone(), record.clone());
    }

    fn drop_alert(&mut self, alert_id: &str) {
        self.saved.remove(alert_id);
        self.dropped.insert(alert_id.to_string());
    }
}

struct StoreView {
    name: Option<String>,
    time_zone: Option<TimeZone>,
    hours: Option<WeeklyHours>,
}

struct Silence {
    id: String,
    matchers: Vec<Matcher>,
    starts_at_ms: i64,
    ends_at_ms: i64,
}

struct Maintenance {
    name: String,
    matchers: Vec<Matcher>,
    schedule: WeeklyHours,
    tz: TimeZone,
}

pub struct Engine {
    rules: Vec<DeviceRule>,
    correlation: CorrelationConfig,
    include_shutdown: bool,
    crash_window_ms: i64,
    latency_window_ms: i64,
    forecast_window_ms: i64,
    forecast_horizon_s: f64,
    battery_critical_pct: f64,
    public_url: String,
    started_at: i64,
    devices: HashMap<String, DeviceView>,
    by_store: HashMap<(String, String), BTreeSet<String>>,
    stores: HashMap<(String, String), StoreView>,
    open: HashMap<(String, String), AlertRecord>,
    /// The rules with an open alert, by subject: an index into `open`.
    open_rules: HashMap<String, BTreeSet<String>>,
    silences: Vec<Silence>,
    maintenance: Vec<Maintenance>,
    /// Since when this alerter has had no broker connection, if so.
    deaf_since: Option<i64>,
    /// When it last started hearing the broker (its SUBACK).
    heard_since: Option<i64>,
}

/// A store from the metadata store whose zone or hours do not parse (the
/// configuration's stores are checked at load; the merchant directory
/// checks its rows, but the table may be written by others).
#[derive(Debug, thiserror::Error)]
pub enum StoreRecordError {
    #[error("store {merchant_id}/{store_id}: {source}")]
    TimeZone {
        merchant_id: String,
        store_id: String,
        #[source]
        source: TimeZoneError,
    },
    #[error("store {merchant_id}/{store_id}: hours {source}")]
    Hours {
        merchant_id: String,
        store_id: String,
        #[source]
        source: HoursError,
    },
}

impl Engine {
    /// The address of one of Tillwatch's pages (`/ui/device`,
    /// `/ui/merchant`) with its query, as a browser opens it from an
    /// alert.
    fn page_url(&self, page: &str, query: &[(&str, &str)]) -> String {
        let query = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(query)
            .finish();
        if query.is_empty() {
            format!("{}/ui/{page}", self.public_url)
        } else {
            format!("{}/ui/{page}?{query}", self.public_url)
        }
    }

    /// The jobs page.
    pub(crate) fn jobs_url(&self) -> String {
        self.page_url("jobs", &[])
    }

    /// The page of terminal `device_id`.
    pub(crate) fn device_url(&self, device_id: &str) -> String {
        self.page_url("device", &[("id", device_id)])
    }

    /// An engine for `config` (its hours, zones and matchers were parsed
    /// when it loaded).
    pub fn new(config: &AlertingConfig, public_url: &str, now: UtcMillis) -> Engine {
        let maintenance = config
            .maintenance
            .iter()
            .map(|m| Maintenance {
                name: m.name.clone(),
                matchers: m.matchers.iter().map(|w| w.value().clone()).collect(),
                schedule: m.schedule.value().clone(),
                tz: m.time_zone.value().clone(),
            })
            .collect();
        let r = &config.rules;
        Engine {
            rules: built_in_rules(config),
            correlation: config.correlation.clone(),
            include_shutdown: r.offline.include_shutdown,
            crash_window_ms: r.crash_spike.window.map(ms).unwrap_or(15 * 60_000),
            latency_window_ms: r.transaction_latency.window.map(ms).unwrap_or(15 * 60_000),
            forecast_window_ms: ms(r.battery_forecast.window),
            forecast_horizon_s: r.battery_forecast.horizon.as_secs_f64(),
            battery_critical_pct: r.battery_critical.threshold,
            public_url: public_url.trim_end_matches('/').to_string(),
            started_at: now.0,
            devices: HashMap::new(),
            by_store: HashMap::new(),
            stores: HashMap::new(),
            open: HashMap::new(),
            open_rules: HashMap::new(),
            silences: Vec::new(),
            maintenance,
            deaf_since: None,
            heard_since: None,
        }
    }

    /// Resumes from the store: the registry, open alerts, stores.
    pub fn restore(
        &mut self,
        devices: Vec<DeviceRecord>,
        open: Vec<AlertRecord>,
        stores: Vec<StoreRecord>,
    ) -> Result<(), StoreRecordError> {
        for d in devices {
            let view = self.devices.entry(d.device_id.clone()).or_default();
            view.merchant_id = d.merchant_id;
            view.model = d.model;
            view.firmware_version = d.firmware_version;
            view.app_version = d.app_version;
            view.time_zone = d.time_zone;
            view.last_seen_ms = view.last_seen_ms.max(
                d.last_seen_ms
                    .unwrap_or(d.first_seen_ms)
                    .max(d.info_at_ms.unwrap_or(i64::MIN)),
            );
            self.place(&d.device_id, d.store_id);
        }
        for a in open {
            self.insert_open((a.rule.clone(), a.subject.clone()), a);
        }
        for s in stores {
            self.set_store(s)?;
        }
        Ok(())
    }

    /// Resumes a device's newest signal values (windows start empty).
    pub fn restore_signal(&mut self, device_id: &str, signal: &str, value: f64, at: UtcMillis) {
        let Some(name) = tillwatch_domain::signals::SIGNAL_NAMES
            .iter()
            .find(|n| **n == signal)
        else {
            return;
        };
        let view = self.devices.entry(device_id.to_string()).or_default();
        view.latest.insert(name, (value, at.0));
    }

    /// Resumes a device's connectivity state, without evaluating.
    pub fn restore_connectivity(&mut self, device_id: &str, state: ConnState, since: UtcMillis) {
        let view = self.devices.entry(device_id.to_string()).or_default();
        view.conn = Some((state, since.0));
        view.last_seen_ms = view.last_seen_ms.max(since.0);
    }

    pub fn set_store(&mut self, s: StoreRecord) -> Result<(), StoreRecordError> {
        let view = StoreView {
            name: s.name,
            time_zone: s
                .time_zone
                .as_deref()
                .map(time_zone)
                .transpose()
                .map_err(|source| StoreRecordError::TimeZone {
                    merchant_id: s.merchant_id.clone(),
                    store_id: s.store_id.clone(),
                    source,
                })?,
            hours: s
                .hours
                .as_deref()
                .map(WeeklyHours::parse)
                .transpose()
                .map_err(|source| StoreRecordError::Hours {
                    merchant_id: s.merchant_id.clone(),
                    store_id: s.store_id.clone(),
                    source,
                })?,
        };
        self.stores.insert((s.merchant_id, s.store_id), view);
        Ok(())
    }

    /// Replaces the silences; a bad matcher is skipped and reported.
    pub fn set_silences(&mut self, silences: Vec<SilenceRecord>) -> Vec<String> {
        let mut problems = Vec::new();
        self.silences = silences
            .into_iter()
            .filter_map(|s| match parse_all(&s.matchers) {
                Ok(matchers) => Some(Silence {
                    id: s.silence_id,
                    matchers,
                    starts_at_ms: s.starts_at_ms,
                    ends_at_ms: s.ends_at_ms,
                }),
                Err(e) => {
                    problems.push(format!("silence {}: {e}", s.silence_id));
                    None
                }
            })
            .collect();
        problems
    }

    fn place(&mut self, device_id: &str, store_id: Option<String>) {
        let view = self
            .devices
            .get_mut(device_id)
            .expect("placed after insert");
        if view.store_id == store_id {
            return;
        }
        if let Some(old) = view.store_id.take()
            && let Some(set) = self.by_store.get_mut(&(view.merchant_id.clone(), old))
        {
            set.remove(device_id);
        }
        if let Some(new) = &store_id {
            self.by_store
                .entry((view.merchant_id.clone(), new.clone()))
                .or_default()
                .insert(device_id.to_string());
        }
        view.store_id = store_id;
    }

    pub fn on_info(&mut self, info: &DeviceInfo, now: UtcMillis, changes: &mut Changes) {
        let now = now.0;
        let id = info.device_id.as_str();
        let started = self.started_at;
        let view = self
            .devices
            .entry(id.to_string())
            .or_insert_with(|| DeviceView {
                new_since_start: now >= started,
                ..Default::default()
            });
        view.merchant_id = info.merchant_id.as_str().to_string();
        view.model = Some(info.model.clone());
        view.firmware_version = Some(info.firmware_version.clone());
        view.app_version = Some(info.app_version.clone());
        view.time_zone = (!info.time_zone.is_empty()).then(|| info.time_zone.clone());
        view.last_seen_ms = view.last_seen_ms.max(now);
        self.place(id, info.store_id.as_ref().map(|s| s.as_str().to_string()));
        self.evaluate_device(id, now, changes);
    }

    pub fn on_readings(
        &mut self,
        merchant_id: &str,
        device_id: &str,
        readings: &[Reading],
        now: UtcMillis,
        changes: &mut Changes,
    ) {
        let now = now.0;
        let (keep_from, forecast_from) = self.windows_from(now);
        let view = self
            .devices
            .entry(device_id.to_string())
            .or_insert_with(|| DeviceView {
                new_since_start: true,
                ..Default::default()
            });
        if view.merchant_id.is_empty() {
            view.merchant_id = merchant_id.to_string();
        }
        view.last_seen_ms = view.last_seen_ms.max(now);
        for reading in readings {
            let t = reading.sampled_at.0;
            for (signal, value) in tillwatch_domain::signals::signals_of(reading) {
                let newer = view.latest.get(signal).is_none_or(|(_, at)| *at <= t);
                if newer {
                    view.latest.insert(signal, (value, t));
                }
            }
            match &reading.signal {
                Signal::Connectivity(c) => {
                    view.disconnects.push_back((t, f64::from(c.disconnects)))
                }
                Signal::AppPerformance(a) => {
                    view.crashes
                        .push_back((t, f64::from(a.crashes) + f64::from(a.hangs)));
                    view.latency.push_back((
                        t,
                        f64::from(a.transaction_latency_avg_ms),
                        f64::from(a.transactions),
                    ));
                }
                Signal::Battery(b) if b.charging => view.battery.clear(),
                Signal::Battery(b) => view.battery.push_back((t, f64::from(b.level_pct))),
                Signal::PaymentHealth(_) => {}
            }
        }
        // Readings may arrive out of order after an outage; windows are
        // judged by sample time, so keep them sorted.
        view.disconnects.make_contiguous().sort_by_key(|s| s.0);
        view.crashes.make_contiguous().sort_by_key(|s| s.0);
        view.latency.make_contiguous().sort_by_key(|s| s.0);
        view.battery.make_contiguous().sort_by_key(|s| s.0);
        view.prune(keep_from, forecast_from);
        self.evaluate_device(device_id, now, changes);
    }

    /// Where the windows start at `now`: (disconnects, crashes and
    /// latency; the battery forecast).
    fn windows_from(&self, now: i64) -> (i64, i64) {
        let keep_from = now
            - HOUR_MS
                .max(self.crash_window_ms)
                .max(self.latency_window_ms);
        (keep_from, now - self.forecast_window_ms)
    }

    /// Frees what no rule can use any more: samples that left every
    /// window of a device that went quiet, and devices silent since
    /// before `FORGET_SILENT_AFTER_MS` that are not online and have no
    /// open alert (they stay in the registry; their next message brings
    /// them back). Returns how many devices were forgotten.
    fn forget_old(&mut self, now: i64) -> usize {
        let (keep_from, forecast_from) = self.windows_from(now);
        let cutoff = now.saturating_sub(FORGET_SILENT_AFTER_MS);
        let mut forget = Vec::new();
        for (id, view) in self.devices.iter_mut() {
            view.prune(keep_from, forecast_from);
            let online = matches!(view.conn, Some((ConnState::Online, _)));
            if view.last_seen_ms < cutoff && !online && !self.open_rules.contains_key(id) {
                forget.push(id.clone());
            }
        }
        for id in &forget {
            self.place(id, None);
            self.devices.remove(id);
        }
        if !forget.is_empty() {
            self.by_store.retain(|_, members| !members.is_empty());
            self.devices.shrink_to_fit();
        }
        forget.len()
    }

    /// A device's connectivity changed (from the tracker).
    pub fn on_connectivity(
        &mut self,
        device_id: &str,
        state: ConnState,
        since: UtcMillis,
        now: UtcMillis,
        changes: &mut Changes,
    ) {
        let (since, now) = (since.0, now.0);
        let started = self.started_at;
        let view = self
            .devices
            .entry(device_id.to_string())
            .or_insert_with(|| DeviceView {
                new_since_start: now >= started,
                ..Default::default()
            });
        view.conn = Some((state, since));
        let store = view.store_id.clone().map(|s| (view.merchant_id.clone(), s));
        self.evaluate_device(device_id, now, changes);
        if let Some((merchant, store)) = store {
            self.evaluate_store(&merchant, &store, now, changes);
        }
    }

    /// Re-evaluates everything: pending alerts come due, stores open and
    /// close, silences and maintenance windows start and end.
    pub fn sweep(&mut self, now: UtcMillis, changes: &mut Changes) {
        let now = now.0;
        let forgotten = self.forget_old(now);
        if forgotten > 0 {
            tracing::debug!(
                devices = forgotten,
                "alerter forgot terminals silent for 30 days"
            );
        }
        let ids: Vec<String> = self.devices.keys().cloned().collect();
        for id in &ids {
            self.evaluate_device(id, now, changes);
        }
        let stores: Vec<(String, String)> = self.by_store.keys().cloned().collect();
        for (merchant, store) in stores {
            self.evaluate_store(&merchant, &store, now, changes);
        }
        // A merchant alert clears on its own clock once its stores have:
        // no store changes any more to evaluate it, so the tick does.
        let merchants: Vec<String> = self
            .open
            .keys()
            .filter_map(|(rule, subject)| match Subject::parse(rule, subject) {
                Some(Subject::Merchant(merchant)) => Some(merchant),
                _ => None,
            })
            .collect();
        for merchant in merchants {
            self.evaluate_merchant(&merchant, now, changes);
        }
        // Fleet-wide, on the tick only (it looks at every terminal): within
        // the correlation wait, so merchants and stores wait for it.
        self.evaluate_fleet(now, changes);
        let subjects: Vec<String> = self.open_rules.keys().cloned().collect();
        for subject in subjects {
            self.settle_subject(&subject, now, changes);
        }
    }

    /// When a firing offline, store or merchant alert that has not paged
    /// yet stops waiting for the store, merchant or fleet-wide outage it
    /// may belong to
    /// (`alerting.correlation.wait`, counted from when its condition
    /// began, so a rule's own `for` counts towards it); `None` for any
    /// other alert.
    ///
    /// While the alerter cannot hear the broker the wait does not end (a
    /// broker going down publishes every terminal's last will: not the
    /// terminals' doing); once it hears again, each such alert gets the
    /// whole wait from then, for its terminal to come back.
    fn correlation_wait_ends(&self, a: &AlertRecord) -> Option<i64> {
        let waits = self.correlation.enabled
            && (a.rule == OFFLINE || a.rule == STORE_OFFLINE || a.rule == MERCHANT_OFFLINE)
            && a.state == AlertState::Firing
            && a.notify.is_none()
            && a.held_by.is_none()
            && a.silenced_by.is_none();
        waits.then(|| {
            if self.deaf_since.is_some() {
                return i64::MAX;
            }
            let from = self
                .heard_since
                .map_or(a.pending_since_ms, |h| h.max(a.pending_since_ms));
            from.saturating_add(ms(self.correlation.wait))
        })
    }

    /// When a pending or clearing alert next comes due without new input.
    pub fn next_deadline(&self) -> Option<UtcMillis> {
        self.open
            .values()
            .filter_map(|a| {
                let (for_ms, clear_for_ms) = if a.rule == STORE_OFFLINE
                    || a.rule == MERCHANT_OFFLINE
                    || a.rule == INGEST_OUTAGE
                {
                    (0, ms(self.correlation.clear_after))
                } else {
                    let r = &self.rules.iter().find(|r| r.rule.name == a.rule)?.rule;
                    (r.for_ms, r.clear_for_ms)
                };
                match (a.state, a.clearing_since_ms) {
                    (AlertState::Pending, _) => Some(a.pending_since_ms + for_ms),
                    (AlertState::Firing, Some(since)) => Some(since + clear_for_ms),
                    _ => None,
                }
            })
            .chain(
                self.open
                    .values()
                    .filter_map(|a| self.correlation_wait_ends(a))
                    .filter(|&end| end != i64::MAX),
            )
            .chain(
                self.deaf_since
                    .filter(|_| self.correlation.enabled && !self.fleet_alert_firing())
                    .map(|since| since.saturating_add(self.deaf_grace_ms())),
            )
            .min()
            .map(UtcMillis)
    }

    /// How long the alerter's own broker connection may be down before
    /// that is paged: the correlation wait, and at least
    /// [`DEAF_GRACE_MIN_MS`] (a reconnect takes a moment).
    pub(crate) fn deaf_grace_ms(&self) -> i64 {
        ms(self.correlation.wait).max(DEAF_GRACE_MIN_MS)
    }

    fn fleet_alert_firing(&self) -> bool {
        self.open
            .get(&(INGEST_OUTAGE.to_string(), FLEET.to_string()))
            .is_some_and(|a| a.state == AlertState::Firing)
    }

    /// Since when the alerter has not heard the broker (`deaf_since`;
    /// `None`: it does), and when it last started hearing it. Deafness
    /// lasting past the correlation wait is an `ingest_outage` at the next
    /// sweep; meanwhile no terminal, store or merchant alert pages.
    pub fn set_hearing(&mut self, deaf_since: Option<i64>, heard_since: Option<i64>) {
        self.deaf_since = deaf_since;
        self.heard_since = heard_since;
    }

    pub fn open_alerts(&self) -> impl Iterator<Item = &AlertRecord> {
        self.open.values()
    }
}
