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

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};

use jiff::tz::TimeZone;
use tillwatch_config::{AlertingConfig, CorrelationConfig, Severity};
use tillwatch_domain::connectivity::{ConnState, OfflineReason};
use tillwatch_domain::{DeviceInfo, Reading, Signal};
use tillwatch_meta::{
    AlertRecord, AlertState, DeviceRecord, FindingRecord, SilenceRecord, StoreRecord,
};

use crate::matchers::{Matcher, all_match, parse_all};
use crate::rules::{Cmp, Condition, Phase, ThresholdRule};
use tillwatch_domain::hours::{WeeklyHours, time_zone};

/// Values a rule's summary shows beyond those its conditions read.
const EXTRA_VALUES: &[(&str, &str)] = &[
    ("offline_queue", "offline_queue_len"),
    ("battery_forecast", "battery_level_pct"),
    ("battery_forecast", "battery_drain_pct_per_hour"),
    ("battery_forecast", "battery_minutes_to_critical"),
];

pub const STORE_OFFLINE: &str = "store_offline";
pub const MERCHANT_OFFLINE: &str = "merchant_offline";
const OFFLINE: &str = "offline";
/// A store alert resolves once its outage has been over this long.
const STORE_CLEAR_MS: i64 = 120_000;
/// Hysteresis of the battery forecast: fire at a margin under 0 s, clear
/// above this, each held for `FORECAST_FOR_MS`.
const FORECAST_CLEAR_MARGIN_S: f64 = 1800.0;
const FORECAST_FOR_MS: i64 = 300_000;
/// A margin that means "no risk" (charging, not discharging).
const NO_RISK_S: f64 = 1e9;
const HOUR_MS: i64 = 3_600_000;

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

struct DeviceRule {
    rule: ThresholdRule,
    severity: Severity,
    disabled: HashSet<String>,
    summary: fn(&HashMap<&str, f64>) -> String,
}

#[derive(Debug, Default)]
struct DeviceView {
    merchant_id: String,
    store_id: Option<String>,
    model: Option<String>,
    firmware_version: Option<String>,
    app_version: Option<String>,
    time_zone: Option<String>,
    /// First seen after the engine started: its windows are complete.
    new_since_start: bool,
    latest: HashMap<&'static str, (f64, i64)>,
    disconnects: VecDeque<(i64, f64)>,
    crashes: VecDeque<(i64, f64)>,
    /// (sampled at, mean latency, transactions).
    latency: VecDeque<(i64, f64, f64)>,
    /// Levels while discharging.
    battery: VecDeque<(i64, f64)>,
    conn: Option<(ConnState, i64)>,
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
}

fn cond(signal: &'static str, cmp: Cmp, unless: Option<&'static str>) -> Condition {
    Condition {
        signal,
        cmp,
        unless,
    }
}

fn ms(d: std::time::Duration) -> i64 {
    d.as_millis() as i64
}

fn v(signals: &HashMap<&str, f64>, name: &str) -> f64 {
    signals.get(name).copied().unwrap_or(f64::NAN)
}

fn built_in_rules(config: &AlertingConfig) -> Vec<DeviceRule> {
    let r = &config.rules;
    let mut rules = Vec::new();
    let mut add = |enabled: bool,
                   name: &str,
                   severity: Severity,
                   fire: Vec<Condition>,
                   clear: Vec<Condition>,
                   (for_ms, clear_for_ms): (i64, i64),
                   disabled: &[String],
                   summary: fn(&HashMap<&str, f64>) -> String| {
        if enabled {
            rules.push(DeviceRule {
                rule: ThresholdRule {
                    name: name.to_string(),
                    fire,
                    clear,
                    for_ms,
                    clear_for_ms,
                },
                severity,
                disabled: disabled.iter().cloned().collect(),
                summary,
            });
        }
    };
    for (name, rule) in [
        ("battery_low", &r.battery_low),
        ("battery_critical", &r.battery_critical),
    ] {
        add(
            rule.enabled,
            name,
            rule.severity,
            vec![cond(
                "battery_level_pct",
                Cmp::Below(rule.threshold),
                Some("battery_charging"),
            )],
            vec![cond(
                "battery_level_pct",
                Cmp::Above(rule.clear_threshold - 1e-9),
                None,
            )],
            (ms(rule.for_), ms(rule.clear_for)),
            &rule.disabled_merchants,
            |s| {
                format!(
                    "Battery at {} % and not charging",
                    v(s, "battery_level_pct")
                )
            },
        );
    }
    let o = &r.offline;
    add(
        o.enabled,
        OFFLINE,
        o.severity,
        vec![cond("offline", Cmp::Above(0.5), Some("store_closed"))],
        vec![cond("offline", Cmp::Below(0.5), None)],
        (ms(o.for_), 0),
        &o.disabled_merchants,
        |_| "Terminal offline".to_string(),
    );
    let p = &r.poor_connectivity;
    add(
        p.enabled,
        "poor_connectivity",
        p.severity,
        vec![
            cond("rssi_dbm", Cmp::Below(p.rssi_below), None),
            cond(
                "payment_host_latency_ms",
                Cmp::Above(p.latency_above_ms),
                None,
            ),
            cond(
                "disconnects_per_hour",
                Cmp::Above(p.disconnects_per_hour_above),
                None,
            ),
        ],
        vec![
            cond("rssi_dbm", Cmp::Above(p.rssi_clear_above - 1e-9), None),
            cond(
                "payment_host_latency_ms",
                Cmp::Below(p.latency_clear_below_ms + 1e-9),
                None,
            ),
            cond(
                "disconnects_per_hour",
                Cmp::Below(p.disconnects_per_hour_clear_below + 1e-9),
                None,
            ),
        ],
        (ms(p.for_), ms(p.clear_for)),
        &p.disabled_merchants,
        |s| {
            format!(
                "Poor connectivity: RSSI {} dBm, payment host {} ms, {} disconnects in the last hour",
                v(s, "rssi_dbm"),
                v(s, "payment_host_latency_ms"),
                v(s, "disconnects_per_hour")
            )
        },
    );
    let above = |name: &'static str, signal: &'static str, rule: &tillwatch_config::LevelRule| {
        (
            rule.enabled,
            name,
            rule.severity,
            vec![cond(signal, Cmp::Above(rule.threshold), None)],
            vec![cond(signal, Cmp::Below(rule.clear_threshold + 1e-9), None)],
            (ms(rule.for_), ms(rule.clear_for)),
            rule.disabled_merchants.clone(),
        )
    };
    for ((enabled, name, severity, fire, clear, durations, disabled), summary) in [
        (
            above("crash_spike", "crashes_in_window", &r.crash_spike),
            (|s: &HashMap<&str, f64>| {
                format!(
                    "{} app crashes and hangs in the last window",
                    v(s, "crashes_in_window")
                )
            }) as fn(&HashMap<&str, f64>) -> String,
        ),
        (
            above(
                "transaction_latency",
                "transaction_latency_p95_ms",
                &r.transaction_latency,
            ),
            |s| {
                format!(
                    "Transaction latency p95 {} ms",
                    v(s, "transaction_latency_p95_ms").round()
                )
            },
        ),
        (
            above(
                "offline_queue",
                "offline_queue_oldest_age_s",
                &r.offline_queue,
            ),
            |s| {
                format!(
                    "{} payments queued offline, the oldest for {} min: money at risk",
                    v(s, "offline_queue_len"),
                    (v(s, "offline_queue_oldest_age_s") / 60.0).round()
                )
            },
        ),
    ] {
        add(
            enabled, name, severity, fire, clear, durations, &disabled, summary,
        );
    }
    let t = &r.tamper;
    add(
        t.enabled,
        "tamper",
        t.severity,
        vec![cond("tamper_detected", Cmp::Above(0.5), None)],
        vec![cond("tamper_detected", Cmp::Below(0.5), None)],
        (ms(t.for_), 0),
        &t.disabled_merchants,
        |_| "Terminal reports tampering and has locked itself".to_string(),
    );
    let f = &r.battery_forecast;
    add(
        f.enabled,
        "battery_forecast",
        f.severity,
        vec![cond(
            "battery_forecast_margin_s",
            Cmp::Below(0.0),
            Some("store_closed"),
        )],
        vec![cond(
            "battery_forecast_margin_s",
            Cmp::Above(FORECAST_CLEAR_MARGIN_S),
            None,
        )],
        (FORECAST_FOR_MS, FORECAST_FOR_MS),
        &f.disabled_merchants,
        |s| {
            format!(
                "Battery at {} %, falling {:.1} %/h: critical in about {} min, before the store closes",
                v(s, "battery_level_pct"),
                v(s, "battery_drain_pct_per_hour"),
                (v(s, "battery_minutes_to_critical")).round()
            )
        },
    );
    rules
}

/// Weighted 95th percentile of per-interval mean latencies.
fn p95(samples: &VecDeque<(i64, f64, f64)>) -> f64 {
    let mut by_latency: Vec<(f64, f64)> = samples
        .iter()
        .filter(|s| s.2 > 0.0)
        .map(|s| (s.1, s.2))
        .collect();
    let total: f64 = by_latency.iter().map(|s| s.1).sum();
    if total == 0.0 {
        return 0.0;
    }
    by_latency.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut seen = 0.0;
    for (latency, count) in &by_latency {
        seen += count;
        if seen >= 0.95 * total {
            return *latency;
        }
    }
    by_latency.last().map(|s| s.0).unwrap_or(0.0)
}

/// Least-squares slope of (ms, level), in % per hour.
fn slope_per_hour(samples: &VecDeque<(i64, f64)>) -> f64 {
    let n = samples.len() as f64;
    let t0 = samples.front().map(|s| s.0).unwrap_or(0);
    let (mut sx, mut sy, mut sxx, mut sxy) = (0.0, 0.0, 0.0, 0.0);
    for &(t, y) in samples {
        let x = (t - t0) as f64 / HOUR_MS as f64;
        sx += x;
        sy += y;
        sxx += x * x;
        sxy += x * y;
    }
    let denominator = n * sxx - sx * sx;
    if denominator.abs() < 1e-12 {
        0.0
    } else {
        (n * sxy - sx * sy) / denominator
    }
}

fn prune<T>(window: &mut VecDeque<T>, time: impl Fn(&T) -> i64, from: i64) {
    while window.front().is_some_and(|s| time(s) < from) {
        window.pop_front();
    }
}

fn sum(window: &VecDeque<(i64, f64)>, from: i64) -> f64 {
    window
        .iter()
        .filter(|s| s.0 >= from)
        .fold(0.0, |total, s| total + s.1)
}

/// A value as people read it: whole numbers without decimals, others to
/// two places.
fn shown(value: f64) -> String {
    if value.fract() == 0.0 && value.abs() < 1e15 {
        format!("{}", value as i64)
    } else {
        format!("{value:.2}")
    }
}

fn phase_of(record: Option<&AlertRecord>) -> Phase {
    match record {
        None => Phase::Inactive,
        Some(r) => match (r.state, r.fired_at_ms, r.clearing_since_ms) {
            (AlertState::Firing, Some(fired_at), Some(since)) => {
                Phase::Clearing { fired_at, since }
            }
            (AlertState::Firing, Some(since), None) => Phase::Firing { since },
            (AlertState::Pending, _, _) => Phase::Pending {
                since: r.pending_since_ms,
            },
            _ => Phase::Inactive,
        },
    }
}

fn store_subject(merchant: &str, store: &str) -> String {
    format!("store:{merchant}/{store}")
}

/// Checks what `Config::validate` cannot: store hours, time zones and
/// maintenance matchers, each problem naming its key.
pub fn check_config(config: &AlertingConfig) -> Result<(), String> {
    let mut problems = Vec::new();
    if let Err(e) = Engine::new(config, "", 0) {
        problems.push(e);
    }
    for (i, s) in config.stores.iter().enumerate() {
        let key = format!("alerting.stores[{i}] ({}/{})", s.merchant_id, s.store_id);
        if let Err(e) = WeeklyHours::parse(&s.hours) {
            problems.push(format!("{key}.hours: {e}"));
        }
        if let Some(Err(e)) = s.time_zone.as_deref().map(time_zone) {
            problems.push(format!("{key}.time_zone: {e}"));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("; "))
    }
}

impl Engine {
    /// Checks the configuration's hours, zones and matchers, naming the
    /// key at fault.
    pub fn new(config: &AlertingConfig, public_url: &str, now: i64) -> Result<Engine, String> {
        let mut maintenance = Vec::new();
        for (i, m) in config.maintenance.iter().enumerate() {
            let key = format!("alerting.maintenance[{i}] ({:?})", m.name);
            maintenance.push(Maintenance {
                name: m.name.clone(),
                matchers: parse_all(&m.matchers).map_err(|e| format!("{key}.matchers: {e}"))?,
                schedule: WeeklyHours::parse(&m.schedule)
                    .map_err(|e| format!("{key}.schedule: {e}"))?,
                tz: time_zone(&m.time_zone).map_err(|e| format!("{key}.time_zone: {e}"))?,
            });
        }
        let r = &config.rules;
        Ok(Engine {
            rules: built_in_rules(config),
            correlation: config.correlation.clone(),
            include_shutdown: r.offline.include_shutdown,
            crash_window_ms: r.crash_spike.window.map(ms).unwrap_or(15 * 60_000),
            latency_window_ms: r.transaction_latency.window.map(ms).unwrap_or(15 * 60_000),
            forecast_window_ms: ms(r.battery_forecast.window),
            forecast_horizon_s: r.battery_forecast.horizon.as_secs_f64(),
            battery_critical_pct: r.battery_critical.threshold,
            public_url: public_url.trim_end_matches('/').to_string(),
            started_at: now,
            devices: HashMap::new(),
            by_store: HashMap::new(),
            stores: HashMap::new(),
            open: HashMap::new(),
            open_rules: HashMap::new(),
            silences: Vec::new(),
            maintenance,
        })
    }

    /// Resumes from the store: the registry, open alerts, stores.
    pub fn restore(
        &mut self,
        devices: Vec<DeviceRecord>,
        open: Vec<AlertRecord>,
        stores: Vec<StoreRecord>,
    ) -> Result<(), String> {
        for d in devices {
            let view = self.devices.entry(d.device_id.clone()).or_default();
            view.merchant_id = d.merchant_id;
            view.model = d.model;
            view.firmware_version = d.firmware_version;
            view.app_version = d.app_version;
            view.time_zone = d.time_zone;
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
    pub fn restore_signal(&mut self, device_id: &str, signal: &str, value: f64, at: i64) {
        let Some(name) = tillwatch_domain::signals::SIGNAL_NAMES
            .iter()
            .find(|n| **n == signal)
        else {
            return;
        };
        let view = self.devices.entry(device_id.to_string()).or_default();
        view.latest.insert(name, (value, at));
    }

    /// Resumes a device's connectivity state, without evaluating.
    pub fn restore_connectivity(&mut self, device_id: &str, state: ConnState, since: i64) {
        self.devices.entry(device_id.to_string()).or_default().conn = Some((state, since));
    }

    pub fn set_store(&mut self, s: StoreRecord) -> Result<(), String> {
        let what = format!("store {}/{}", s.merchant_id, s.store_id);
        let view = StoreView {
            name: s.name,
            time_zone: s
                .time_zone
                .as_deref()
                .map(time_zone)
                .transpose()
                .map_err(|e| format!("{what}: {e}"))?,
            hours: s
                .hours
                .as_deref()
                .map(WeeklyHours::parse)
                .transpose()
                .map_err(|e| format!("{what}: hours {e}"))?,
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

    pub fn on_info(&mut self, info: &DeviceInfo, now: i64, changes: &mut Changes) {
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
        self.place(id, info.store_id.as_ref().map(|s| s.as_str().to_string()));
        self.evaluate_device(id, now, changes);
    }

    pub fn on_readings(
        &mut self,
        merchant_id: &str,
        device_id: &str,
        readings: &[Reading],
        now: i64,
        changes: &mut Changes,
    ) {
        let keep_from = now
            - HOUR_MS
                .max(self.crash_window_ms)
                .max(self.latency_window_ms);
        let forecast_from = now - self.forecast_window_ms;
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
        prune(&mut view.disconnects, |s| s.0, keep_from);
        prune(&mut view.crashes, |s| s.0, keep_from);
        prune(&mut view.latency, |s| s.0, keep_from);
        prune(&mut view.battery, |s| s.0, forecast_from);
        self.evaluate_device(device_id, now, changes);
    }

    /// A device's connectivity changed (from the tracker).
    pub fn on_connectivity(
        &mut self,
        device_id: &str,
        state: ConnState,
        since: i64,
        now: i64,
        changes: &mut Changes,
    ) {
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

    fn counts_as_offline(&self, state: ConnState) -> bool {
        match state {
            ConnState::Online => false,
            ConnState::Offline(OfflineReason::Shutdown) => self.include_shutdown,
            ConnState::Offline(_) => true,
        }
    }

    fn store_of(&self, view: &DeviceView) -> Option<&StoreView> {
        let store = view.store_id.as_ref()?;
        self.stores.get(&(view.merchant_id.clone(), store.clone()))
    }

    /// The store's hours and zone (falling back to the terminal's zone).
    fn store_hours(&self, view: &DeviceView) -> Option<(&WeeklyHours, TimeZone)> {
        let store = self.store_of(view)?;
        let hours = store.hours.as_ref()?;
        let tz = match &store.time_zone {
            Some(tz) => tz.clone(),
            None => time_zone(view.time_zone.as_deref()?).ok()?,
        };
        Some((hours, tz))
    }

    fn signals(&self, view: &DeviceView, now: i64) -> HashMap<&'static str, f64> {
        let mut s: HashMap<&'static str, f64> = view
            .latest
            .iter()
            .map(|(k, (value, _))| (*k, *value))
            .collect();
        if let Some((state, _)) = view.conn {
            s.insert(
                "offline",
                f64::from(u8::from(self.counts_as_offline(state))),
            );
        }
        let hours = self.store_hours(view);
        if let Some((hours, tz)) = &hours {
            s.insert("store_closed", f64::from(u8::from(!hours.is_open(now, tz))));
        }
        let warm = |window: i64| view.new_since_start || now - self.started_at >= window;
        if warm(HOUR_MS) {
            s.insert(
                "disconnects_per_hour",
                sum(&view.disconnects, now - HOUR_MS),
            );
        }
        if warm(self.crash_window_ms) {
            s.insert(
                "crashes_in_window",
                sum(&view.crashes, now - self.crash_window_ms),
            );
        }
        if warm(self.latency_window_ms) {
            let from = now - self.latency_window_ms;
            let recent: VecDeque<_> = view
                .latency
                .iter()
                .filter(|x| x.0 >= from)
                .copied()
                .collect();
            s.insert("transaction_latency_p95_ms", p95(&recent));
        }
        if let Some(margin) = self.forecast(view, &mut s, hours, now) {
            s.insert("battery_forecast_margin_s", margin);
        }
        s
    }

    /// Seconds to spare between the battery reaching critical and the
    /// store closing (or the horizon); also records the drain rate.
    fn forecast(
        &self,
        view: &DeviceView,
        s: &mut HashMap<&'static str, f64>,
        hours: Option<(&WeeklyHours, TimeZone)>,
        now: i64,
    ) -> Option<f64> {
        let (&level, &charging) = (s.get("battery_level_pct")?, s.get("battery_charging")?);
        if charging != 0.0 || level <= self.battery_critical_pct {
            return Some(NO_RISK_S);
        }
        let samples = &view.battery;
        let span = samples.back()?.0 - samples.front()?.0;
        if samples.len() < 3 || span < 10 * 60_000 {
            return None;
        }
        let drain = -slope_per_hour(samples);
        if drain <= 0.0 {
            return Some(NO_RISK_S);
        }
        let to_critical_s = (level - self.battery_critical_pct) / drain * 3600.0;
        s.insert("battery_drain_pct_per_hour", (drain * 10.0).round() / 10.0);
        s.insert("battery_minutes_to_critical", to_critical_s / 60.0);
        let until_s = match hours {
            Some((hours, tz)) => f64::from(hours.minutes_to_close(now, &tz)?) * 60.0,
            None => self.forecast_horizon_s,
        };
        Some(to_critical_s - until_s)
    }

    fn device_labels(&self, device_id: &str, view: &DeviceView) -> BTreeMap<String, String> {
        let mut labels = BTreeMap::from([
            ("scope".to_string(), "device".to_string()),
            ("device_id".to_string(), device_id.to_string()),
            ("merchant_id".to_string(), view.merchant_id.clone()),
        ]);
        for (k, value) in [
            ("store_id", &view.store_id),
            ("model", &view.model),
            ("firmware_version", &view.firmware_version),
            ("app_version", &view.app_version),
        ] {
            if let Some(value) = value {
                labels.insert(k.to_string(), value.clone());
            }
        }
        labels
    }

    fn evaluate_device(&mut self, device_id: &str, now: i64, changes: &mut Changes) {
        let Some(view) = self.devices.get(device_id) else {
            return;
        };
        let signals = self.signals(view, now);
        let mut updates = Vec::new();
        for rule in &self.rules {
            let key = (rule.rule.name.clone(), device_id.to_string());
            let current = self.open.get(&key);
            let mut phase = phase_of(current);
            if rule.disabled.contains(&view.merchant_id) {
                if current.is_some() {
                    updates.push((key, Phase::Inactive, true, String::new()));
                }
                continue;
            }
            let event = rule.rule.step(&mut phase, &signals, now);
            if phase != phase_of(current) || event.is_some() {
                let resolved = matches!(event, Some(crate::rules::AlertEvent::Resolved { .. }));
                updates.push((key, phase, resolved, (rule.summary)(&signals)));
            }
        }
        let labels = self.device_labels(device_id, view);
        for (key, phase, resolved, summary) in updates {
            let Some(rule) = self.rules.iter().find(|r| r.rule.name == key.0) else {
                continue;
            };
            let severity = rule.severity;
            // The values the rule looks at (and the ones its summary uses).
            let mut annotations: BTreeMap<String, String> = rule
                .rule
                .fire
                .iter()
                .chain(&rule.rule.clear)
                .flat_map(|c| [Some(c.signal), c.unless])
                .flatten()
                .chain(
                    EXTRA_VALUES
                        .iter()
                        .filter(|(r, _)| *r == key.0)
                        .map(|(_, s)| *s),
                )
                .filter(|name| *name != "store_closed")
                .filter_map(|name| Some((format!("value_{name}"), shown(*signals.get(name)?))))
                .collect();
            annotations.insert(
                "device_url".into(),
                format!("{}/devices/{device_id}", self.public_url),
            );
            annotations.insert("summary".into(), summary);
            self.transition(
                key,
                "device",
                severity,
                phase,
                resolved,
                labels.clone(),
                annotations,
                now,
                changes,
            );
        }
        if self.open_rules.contains_key(device_id) {
            self.settle_subject(device_id, now, changes);
        }
    }

    /// Moves one (rule, subject) to `phase`, creating, updating, resolving
    /// or dropping its record.
    #[allow(clippy::too_many_arguments)]
    fn transition(
        &mut self,
        key: (String, String),
        scope: &str,
        severity: Severity,
        phase: Phase,
        resolved: bool,
        mut labels: BTreeMap<String, String>,
        annotations: BTreeMap<String, String>,
        now: i64,
        changes: &mut Changes,
    ) {
        labels.insert("alertname".into(), key.0.clone());
        labels.insert("severity".into(), severity.as_str().into());
        match (self.remove_open(&key), phase) {
            (None, Phase::Inactive) => {}
            (Some(mut record), Phase::Inactive) => {
                if resolved || record.state == AlertState::Firing {
                    record.state = AlertState::Resolved;
                    record.resolved_at_ms = Some(now);
                    record.clearing_since_ms = None;
                    record.notify = Some(AlertState::Resolved);
                    record.updated_at_ms = now;
                    changes.save(&record);
                } else {
                    changes.drop_alert(&record.alert_id);
                }
            }
            (existing, phase) => {
                let mut record = existing.unwrap_or_else(|| {
                    let since = match phase {
                        Phase::Pending { since } | Phase::Firing { since } => since,
                        Phase::Clearing { fired_at, .. } => fired_at,
                        Phase::Inactive => now,
                    };
                    AlertRecord {
                        alert_id: format!("{}:{}:{since}", key.0, key.1),
                        rule: key.0.clone(),
                        subject: key.1.clone(),
                        scope: scope.to_string(),
                        severity: severity.as_str().into(),
                        state: AlertState::Pending,
                        pending_since_ms: since,
                        fired_at_ms: None,
                        clearing_since_ms: None,
                        resolved_at_ms: None,
                        held_by: None,
                        silenced_by: None,
                        notify: None,
                        labels: labels.clone(),
                        annotations: annotations.clone(),
                        updated_at_ms: now,
                    }
                });
                let was_firing = record.state == AlertState::Firing;
                match phase {
                    Phase::Pending { .. } => {}
                    Phase::Firing { since } => {
                        record.state = AlertState::Firing;
                        record.fired_at_ms = Some(since);
                        record.clearing_since_ms = None;
                    }
                    Phase::Clearing { fired_at, since } => {
                        record.state = AlertState::Firing;
                        record.fired_at_ms = Some(fired_at);
                        record.clearing_since_ms = Some(since);
                    }
                    Phase::Inactive => unreachable!("handled above"),
                }
                if !was_firing {
                    // The values that made it fire.
                    record.labels = labels;
                    record.annotations = annotations;
                }
                record.updated_at_ms = now;
                changes.save(&record);
                self.insert_open(key, record);
            }
        }
    }

    fn insert_open(&mut self, key: (String, String), record: AlertRecord) {
        self.open_rules
            .entry(key.1.clone())
            .or_default()
            .insert(key.0.clone());
        self.open.insert(key, record);
    }

    fn remove_open(&mut self, key: &(String, String)) -> Option<AlertRecord> {
        if let Some(rules) = self.open_rules.get_mut(&key.1) {
            rules.remove(&key.0);
            if rules.is_empty() {
                self.open_rules.remove(&key.1);
            }
        }
        self.open.remove(key)
    }

    /// Recomputes what holds, silences and should be sent for the open
    /// alerts of one subject.
    fn settle_subject(&mut self, subject: &str, now: i64, changes: &mut Changes) {
        let keys: Vec<(String, String)> = self
            .open_rules
            .get(subject)
            .into_iter()
            .flatten()
            .map(|rule| (rule.clone(), subject.to_string()))
            .collect();
        for key in keys {
            let held_by = self.holder(&key);
            let record = &self.open[&key];
            let silenced_by = self.silencer(&record.labels, now);
            let notify = match record.state {
                AlertState::Firing
                    if silenced_by.is_none()
                        && (held_by.is_none() || record.notify == Some(AlertState::Firing)) =>
                {
                    Some(AlertState::Firing)
                }
                _ => None,
            };
            if (&held_by, &silenced_by, notify)
                != (&record.held_by, &record.silenced_by, record.notify)
            {
                let record = self.open.get_mut(&key).expect("listed");
                record.held_by = held_by;
                record.silenced_by = silenced_by;
                record.notify = notify;
                record.updated_at_ms = now;
                changes.save(record);
            }
        }
    }

    /// The store or merchant alert a page is held back for: a terminal's
    /// offline page for its store's (or merchant's) outage, a store's for
    /// its merchant's.
    fn holder(&self, (rule, subject): &(String, String)) -> Option<String> {
        let firing = |rule: &str, subject: String| {
            self.open
                .get(&(rule.to_string(), subject))
                .filter(|a| a.state == AlertState::Firing)
                .map(|a| a.alert_id.clone())
        };
        if rule == STORE_OFFLINE {
            let merchant = subject.strip_prefix("store:")?.split('/').next()?;
            return firing(MERCHANT_OFFLINE, format!("merchant:{merchant}"));
        }
        if rule != OFFLINE {
            return None;
        }
        let view = self.devices.get(subject)?;
        let store = view
            .store_id
            .as_ref()
            .and_then(|s| firing(STORE_OFFLINE, store_subject(&view.merchant_id, s)));
        store.or_else(|| firing(MERCHANT_OFFLINE, format!("merchant:{}", view.merchant_id)))
    }

    /// Applies a store or merchant alert's step: a firing alert whose list
    /// of members changed (`grown`) takes the new annotations; then the
    /// usual transition.
    #[allow(clippy::too_many_arguments)]
    fn apply_grouped(
        &mut self,
        key: &(String, String),
        scope: &str,
        (phase, resolved, grown): (Phase, bool, bool),
        labels: BTreeMap<String, String>,
        annotations: BTreeMap<String, String>,
        now: i64,
        changes: &mut Changes,
    ) {
        if grown && let Some(record) = self.open.get_mut(key) {
            record.annotations = annotations.clone();
        }
        let severity = self.correlation.severity;
        self.transition(
            key.clone(),
            scope,
            severity,
            phase,
            resolved,
            labels,
            annotations,
            now,
            changes,
        );
    }

    /// A merchant alert while `merchant_min_stores` of its stores are out.
    fn evaluate_merchant(&mut self, merchant: &str, now: i64, changes: &mut Changes) {
        let prefix = format!("store:{merchant}/");
        let mut out: Vec<String> = self
            .open
            .values()
            .filter(|a| {
                a.rule == STORE_OFFLINE
                    && a.state == AlertState::Firing
                    && a.subject.starts_with(&prefix)
            })
            .map(|a| a.subject[prefix.len()..].to_string())
            .collect();
        out.sort();
        let key = (MERCHANT_OFFLINE.to_string(), format!("merchant:{merchant}"));
        let min = self.correlation.merchant_min_stores as usize;
        let signals = HashMap::from([("stores_out", out.len() as f64)]);
        let rule = ThresholdRule {
            name: MERCHANT_OFFLINE.into(),
            fire: vec![cond("stores_out", Cmp::Above(min as f64 - 0.5), None)],
            clear: vec![cond("stores_out", Cmp::Below(min as f64 - 0.5), None)],
            for_ms: 0,
            clear_for_ms: STORE_CLEAR_MS,
        };
        let before = phase_of(self.open.get(&key));
        let mut phase = before;
        let event = rule.step(&mut phase, &signals, now);
        let listed = out.join(",");
        let grown = matches!(phase, Phase::Firing { .. })
            && self
                .open
                .get(&key)
                .is_some_and(|a| a.annotations.get("offline_stores") != Some(&listed));
        if phase == before && event.is_none() && !grown {
            return;
        }
        let resolved = matches!(event, Some(crate::rules::AlertEvent::Resolved { .. }));
        let labels = BTreeMap::from([
            ("scope".to_string(), "merchant".to_string()),
            ("merchant_id".to_string(), merchant.to_string()),
        ]);
        let annotations = BTreeMap::from([
            (
                "summary".to_string(),
                format!(
                    "{} stores of merchant {merchant} have most terminals offline",
                    out.len()
                ),
            ),
            ("offline_stores".to_string(), listed),
            (
                "merchant_url".to_string(),
                format!("{}/merchants/{merchant}", self.public_url),
            ),
        ]);
        self.apply_grouped(
            &key,
            "merchant",
            (phase, resolved, grown),
            labels,
            annotations,
            now,
            changes,
        );
        self.settle_subject(&key.1, now, changes);
        // Hold back (or release) its stores' and terminals' pages.
        let subjects: Vec<String> = self
            .open
            .keys()
            .filter(|(rule, subject)| {
                (rule == STORE_OFFLINE && subject.starts_with(&prefix))
                    || (rule == OFFLINE
                        && self
                            .devices
                            .get(subject)
                            .is_some_and(|d| d.merchant_id == merchant))
            })
            .map(|(_, s)| s.clone())
            .collect();
        for subject in subjects {
            self.settle_subject(&subject, now, changes);
        }
    }

    fn silencer(&self, labels: &BTreeMap<String, String>, now: i64) -> Option<String> {
        for s in &self.silences {
            if s.starts_at_ms <= now && now < s.ends_at_ms && all_match(&s.matchers, labels) {
                return Some(format!("silence:{}", s.id));
            }
        }
        for m in &self.maintenance {
            if m.schedule.is_open(now, &m.tz) && all_match(&m.matchers, labels) {
                return Some(format!("maintenance:{}", m.name));
            }
        }
        None
    }

    fn evaluate_store(&mut self, merchant: &str, store: &str, now: i64, changes: &mut Changes) {
        if !self.correlation.enabled {
            return;
        }
        let key = (STORE_OFFLINE.to_string(), store_subject(merchant, store));
        let members = self
            .by_store
            .get(&(merchant.to_string(), store.to_string()))
            .cloned()
            .unwrap_or_default();
        let window = ms(self.correlation.window);
        let (mut offline, mut recent, mut names) = (0u32, 0u32, Vec::new());
        let mut closed = None;
        for id in &members {
            let Some(view) = self.devices.get(id) else {
                continue;
            };
            if closed.is_none() {
                closed = self.store_hours(view).map(|(h, tz)| !h.is_open(now, &tz));
            }
            if let Some((state, since)) = view.conn
                && self.counts_as_offline(state)
            {
                offline += 1;
                names.push(id.as_str());
                if since >= now - window {
                    recent += 1;
                }
            }
        }
        let total = members.len().max(1) as f64;
        let c = &self.correlation;
        let outage = recent >= c.min_devices && f64::from(offline) / total >= c.min_fraction;
        let over = offline < c.min_devices || f64::from(offline) / total < c.min_fraction;
        let mut signals = HashMap::from([
            ("store_outage", f64::from(u8::from(outage))),
            ("store_outage_over", f64::from(u8::from(over))),
        ]);
        if let Some(closed) = closed {
            signals.insert("store_closed", f64::from(u8::from(closed)));
        }
        let rule = ThresholdRule {
            name: STORE_OFFLINE.into(),
            fire: vec![cond("store_outage", Cmp::Above(0.5), Some("store_closed"))],
            clear: vec![cond("store_outage_over", Cmp::Above(0.5), None)],
            for_ms: 0,
            clear_for_ms: STORE_CLEAR_MS,
        };
        let before = phase_of(self.open.get(&key));
        let mut phase = before;
        let event = rule.step(&mut phase, &signals, now);
        names.truncate(50);
        let listed = names.join(",");
        // A firing store alert follows its outage: which terminals are down.
        let grown = matches!(phase, Phase::Firing { .. })
            && self
                .open
                .get(&key)
                .is_some_and(|a| a.annotations.get("offline_devices") != Some(&listed));
        if phase != before || event.is_some() || grown {
            let resolved = matches!(event, Some(crate::rules::AlertEvent::Resolved { .. }));
            let name = self
                .stores
                .get(&(merchant.to_string(), store.to_string()))
                .and_then(|s| s.name.clone())
                .unwrap_or_else(|| store.to_string());
            let labels = BTreeMap::from([
                ("scope".to_string(), "store".to_string()),
                ("merchant_id".to_string(), merchant.to_string()),
                ("store_id".to_string(), store.to_string()),
            ]);
            let annotations = BTreeMap::from([
                (
                    "summary".to_string(),
                    format!(
                        "{offline} of {} terminals of store {name} are offline",
                        members.len()
                    ),
                ),
                ("offline_devices".to_string(), listed),
                (
                    "store_url".to_string(),
                    format!("{}/merchants/{merchant}/stores/{store}", self.public_url),
                ),
            ]);
            self.apply_grouped(
                &key,
                "store",
                (phase, resolved, grown),
                labels,
                annotations,
                now,
                changes,
            );
            // The merchant first, for the same reason as the store before
            // its terminals.
            self.evaluate_merchant(merchant, now, changes);
            self.settle_subject(&key.1, now, changes);
            // Hold back (or release) the store's terminals' offline pages.
            for id in &members {
                self.settle_subject(id, now, changes);
            }
        }
    }

    /// Alerts of a rule over the rollups (`[alerting.rollup_rules]`):
    /// `findings` is everything the rule's newest evaluation flagged. Each
    /// flagged subject fires (at once: the day already passed its test);
    /// an open alert of the rule whose subject is no longer flagged
    /// resolves. Silences, maintenance windows and delivery apply as to
    /// any alert.
    pub fn set_rollup_findings(
        &mut self,
        rule: &str,
        severity: Severity,
        findings: Vec<FindingRecord>,
        now: i64,
        changes: &mut Changes,
    ) {
        let flagged: BTreeSet<String> = findings.iter().map(|f| f.subject.clone()).collect();
        let gone: Vec<(String, String)> = self
            .open
            .keys()
            .filter(|(r, subject)| r == rule && !flagged.contains(subject))
            .cloned()
            .collect();
        for key in gone {
            let scope = self.open[&key].scope.clone();
            let subject = key.1.clone();
            self.transition(
                key,
                &scope,
                severity,
                Phase::Inactive,
                true,
                BTreeMap::new(),
                BTreeMap::new(),
                now,
                changes,
            );
            self.settle_subject(&subject, now, changes);
        }
        for f in findings {
            let key = (rule.to_string(), f.subject.clone());
            let phase = Phase::Firing { since: now };
            let mut annotations = BTreeMap::from([
                ("summary".to_string(), f.summary.clone()),
                ("value".to_string(), shown(f.value)),
            ]);
            // A rule over the rollups says which day it read; a pipeline
            // finding (a stalled gateway) is about now.
            if f.scope != "gateway" {
                annotations.insert(
                    "day".to_string(),
                    jiff::Timestamp::from_millisecond(f.day_ms)
                        .map(|t| t.strftime("%Y-%m-%d").to_string())
                        .unwrap_or_default(),
                );
            }
            if f.scope == "device" {
                annotations.insert(
                    "device_url".into(),
                    format!("{}/devices/{}", self.public_url, f.subject),
                );
            }
            // Already firing: a newer day's summary replaces the old one so
            // the page says what is true now; nothing else changes.
            if let Some(record) = self.open.get_mut(&key)
                && record.state == AlertState::Firing
            {
                if record.annotations.get("summary") != Some(&f.summary) {
                    record.annotations = annotations;
                    record.updated_at_ms = now;
                    changes.save(record);
                }
                continue;
            }
            self.transition(
                key,
                &f.scope,
                severity,
                phase,
                false,
                f.labels,
                annotations,
                now,
                changes,
            );
            self.settle_subject(&f.subject, now, changes);
        }
    }

    /// Re-evaluates everything: pending alerts come due, stores open and
    /// close, silences and maintenance windows start and end.
    pub fn sweep(&mut self, now: i64, changes: &mut Changes) {
        let ids: Vec<String> = self.devices.keys().cloned().collect();
        for id in &ids {
            self.evaluate_device(id, now, changes);
        }
        let stores: Vec<(String, String)> = self.by_store.keys().cloned().collect();
        for (merchant, store) in stores {
            self.evaluate_store(&merchant, &store, now, changes);
        }
        let subjects: Vec<String> = self.open_rules.keys().cloned().collect();
        for subject in subjects {
            self.settle_subject(&subject, now, changes);
        }
    }

    /// When a pending or clearing alert next comes due without new input.
    pub fn next_deadline(&self) -> Option<i64> {
        self.open
            .values()
            .filter_map(|a| {
                let (for_ms, clear_for_ms) =
                    if a.rule == STORE_OFFLINE || a.rule == MERCHANT_OFFLINE {
                        (0, STORE_CLEAR_MS)
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
            .min()
    }

    pub fn open_alerts(&self) -> impl Iterator<Item = &AlertRecord> {
        self.open.values()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tillwatch_domain::{
        AppPerformance, Battery, BootId, Connectivity, DeviceId, NetworkType, PaymentHealth,
        UtcMillis,
    };

    const MIN: i64 = 60_000;
    /// Monday 2026-11-23 09:00 UTC.
    const T0: i64 = 1_795_424_400_000;

    fn reading(seq: u64, at: i64, signal: Signal) -> Reading {
        Reading {
            device_id: DeviceId::new("t-1").unwrap(),
            boot_id: BootId(1),
            seq,
            sampled_at: UtcMillis(at),
            signal,
        }
    }

    fn connectivity(rssi: i32, latency: u32, disconnects: u32) -> Signal {
        Signal::Connectivity(Connectivity {
            network_type: NetworkType::Cellular,
            rssi_dbm: rssi,
            payment_host_latency_ms: latency,
            disconnects,
            carrier_or_ssid: "carrier".into(),
        })
    }

    fn app(transactions: u32, latency: u32, crashes: u32, hangs: u32) -> Signal {
        Signal::AppPerformance(AppPerformance {
            app_version: "4.12.1".into(),
            firmware_version: "2.9.0".into(),
            transactions,
            transaction_latency_avg_ms: latency,
            transaction_latency_max_ms: latency * 2,
            startup_ms: None,
            crashes,
            hangs,
            memory_used_kib: 1000,
            cpu_pct: 10.0,
        })
    }

    fn payment(queued: u32, oldest_s: u32, tamper: bool) -> Signal {
        Signal::PaymentHealth(PaymentHealth {
            offline_queue_len: queued,
            offline_queue_oldest_age_s: oldest_s,
            tamper_detected: tamper,
            printer_paper_low: false,
        })
    }

    fn battery(level: u32, charging: bool) -> Signal {
        Signal::Battery(Battery {
            level_pct: level,
            charging,
            temperature_celsius: 30.0,
            voltage_mv: 4000,
            health_pct: 90,
            cycle_count: 1,
        })
    }

    /// Feeds one signal a minute for `minutes`; returns the rule's alerts
    /// as saved, oldest first.
    fn run(
        engine: &mut Engine,
        rule: &str,
        minutes: std::ops::Range<i64>,
        signal: impl Fn(i64) -> Signal,
    ) -> Vec<AlertRecord> {
        let mut saved = Vec::new();
        for m in minutes {
            let mut changes = Changes::default();
            let at = T0 + m * MIN;
            engine.on_readings(
                "m-1",
                "t-1",
                &[reading(m as u64, at, signal(m))],
                at,
                &mut changes,
            );
            saved.extend(changes.saved.into_values().filter(|a| a.rule == rule));
        }
        saved
    }

    fn engine() -> Engine {
        Engine::new(&AlertingConfig::default(), "http://tw", T0).unwrap()
    }

    fn fired(saved: &[AlertRecord]) -> Vec<i64> {
        let mut at: Vec<i64> = saved.iter().filter_map(|a| a.fired_at_ms).collect();
        at.dedup();
        at.iter().map(|t| (t - T0) / MIN).collect()
    }

    fn resolved(saved: &[AlertRecord]) -> Vec<i64> {
        saved
            .iter()
            .filter_map(|a| a.resolved_at_ms)
            .map(|t| (t - T0) / MIN)
            .collect()
    }

    #[test]
    fn poor_connectivity_fires_on_any_bad_signal_and_clears_only_when_all_are_good() {
        let mut e = engine();
        // Weak signal from minute 5 to 30, then good.
        let saved = run(&mut e, "poor_connectivity", 0..60, |m| {
            connectivity(if (5..30).contains(&m) { -105 } else { -70 }, 200, 0)
        });
        assert_eq!(fired(&saved), [15], "ten minutes under -100 dBm");
        assert_eq!(resolved(&saved), [40], "ten minutes back above -95 dBm");
        // A link dropping 10 times an hour, signal fine.
        let mut e = engine();
        let saved = run(&mut e, "poor_connectivity", 0..60, |m| {
            connectivity(-70, 200, u32::from(m % 6 == 0))
        });
        // The seventh drop (minute 36) is over 6 an hour; ten minutes on.
        assert_eq!(fired(&saved), [46], "disconnects per hour above 6");
    }

    #[test]
    fn bad_hours_zones_and_matchers_in_the_config_are_named() {
        let mut config = AlertingConfig::default();
        assert!(check_config(&config).is_ok());
        config.stores.push(tillwatch_config::StoreConfig {
            merchant_id: "m-1".into(),
            store_id: "s-1".into(),
            name: None,
            time_zone: Some("Europe/Nowhere".into()),
            hours: "Mon-Fri 8-20".into(),
        });
        config
            .maintenance
            .push(tillwatch_config::MaintenanceConfig {
                name: "nightly".into(),
                matchers: vec!["merchant".into()],
                schedule: "Sun 02:00-04:00".into(),
                time_zone: "UTC".into(),
            });
        let err = check_config(&config).unwrap_err();
        assert!(err.contains("alerting.stores[0] (m-1/s-1).hours"), "{err}");
        assert!(
            err.contains("alerting.stores[0] (m-1/s-1).time_zone"),
            "{err}"
        );
        assert!(
            err.contains("alerting.maintenance[0] (\"nightly\").matchers"),
            "{err}"
        );
    }

    #[test]
    fn crash_spikes_latency_queue_and_tamper() {
        let mut e = engine();
        let saved = run(&mut e, "crash_spike", 0..20, |m| {
            app(10, 400, u32::from(m == 5 || m == 6 || m == 7 || m == 8), 0)
        });
        assert_eq!(fired(&saved), [8], "a fourth crash within 15 minutes");

        let mut e = engine();
        let saved = run(&mut e, "transaction_latency", 0..40, |m| {
            app(20, if m >= 10 { 4000 } else { 500 }, 0, 0)
        });
        // p95 over 15 minutes passes 3 s once slow minutes are over 5 % of
        // the transactions (minute 10), then five minutes of `for`.
        assert_eq!(fired(&saved), [15]);

        let mut e = engine();
        let saved = run(&mut e, "offline_queue", 0..10, |m| {
            payment(3, if m >= 4 { 5 * 3600 } else { 600 }, false)
        });
        assert_eq!(fired(&saved), [4], "payments queued over 4 hours: at once");
        assert!(saved.last().unwrap().annotations["summary"].contains("money at risk"));

        let mut e = engine();
        let saved = run(&mut e, "tamper", 0..3, |m| payment(0, 0, m >= 1));
        assert_eq!(fired(&saved), [1]);
        assert_eq!(saved[0].severity, "critical");
    }

    #[test]
    fn a_battery_that_will_not_last_until_closing_time_warns() {
        let mut config = AlertingConfig::default();
        config.stores.push(tillwatch_config::StoreConfig {
            merchant_id: "m-1".into(),
            store_id: "s-1".into(),
            name: None,
            time_zone: Some("UTC".into()),
            hours: "Mon-Fri 08:00-20:00".into(),
        });
        let mut e = Engine::new(&config, "http://tw", T0).unwrap();
        e.set_store(StoreRecord {
            merchant_id: "m-1".into(),
            store_id: "s-1".into(),
            name: None,
            time_zone: Some("UTC".into()),
            hours: Some("Mon-Fri 08:00-20:00".into()),
            updated_at_ms: 0,
        })
        .unwrap();
        let mut changes = Changes::default();
        e.on_info(
            &DeviceInfo {
                device_id: DeviceId::new("t-1").unwrap(),
                boot_id: BootId(1),
                model: "A920".into(),
                serial: "S".into(),
                firmware_version: "2".into(),
                app_version: "4".into(),
                merchant_id: tillwatch_domain::MerchantId::new("m-1").unwrap(),
                store_id: Some(tillwatch_domain::StoreId::new("s-1").unwrap()),
                time_zone: "UTC".into(),
                at: UtcMillis(T0),
            },
            T0,
            &mut changes,
        );
        // From 09:00, 80 % falling 10 %/h: critical (10 %) at 16:00, before
        // closing at 20:00. A forecast needs ten minutes of history, then
        // five minutes of `for`.
        let saved = run(&mut e, "battery_forecast", 0..30, |m| {
            battery(80 - (m / 6) as u32, false)
        });
        assert_eq!(fired(&saved), [15], "{saved:?}");
        let summary = &saved.last().unwrap().annotations["summary"];
        assert!(
            summary.contains("%/h") && summary.contains("before the store closes"),
            "{summary}"
        );
        // The same drain on a battery that lasts past closing: no warning.
        let mut e = Engine::new(&config, "http://tw", T0).unwrap();
        let saved = run(&mut e, "battery_forecast", 0..30, |m| {
            battery(100 - (m / 30) as u32, false)
        });
        assert!(fired(&saved).is_empty());
    }

    #[test]
    fn a_merchant_wide_outage_is_one_merchant_alert_over_its_stores() {
        let mut e = engine();
        let mut changes = Changes::default();
        let store_of = |i: usize| format!("s-{}", i / 3);
        for i in 0..12 {
            let id = format!("d-{i}");
            e.on_info(
                &DeviceInfo {
                    device_id: DeviceId::new(&id).unwrap(),
                    boot_id: BootId(1),
                    model: "A920".into(),
                    serial: id.clone(),
                    firmware_version: "2".into(),
                    app_version: "4".into(),
                    merchant_id: tillwatch_domain::MerchantId::new("m-1").unwrap(),
                    store_id: Some(tillwatch_domain::StoreId::new(&store_of(i)).unwrap()),
                    time_zone: "UTC".into(),
                    at: UtcMillis(T0),
                },
                T0,
                &mut changes,
            );
            e.on_connectivity(&id, ConnState::Online, T0, T0, &mut changes);
        }
        // Stores 0, 1 and 2 lose every terminal within a minute; store 3 is fine.
        for i in 0..9 {
            let at = T0 + MIN + i as i64 * 5_000;
            let id = format!("d-{i}");
            e.on_connectivity(
                &id,
                ConnState::Offline(OfflineReason::LastWill),
                at,
                at,
                &mut changes,
            );
        }
        e.sweep(T0 + 5 * MIN, &mut changes);
        let open: Vec<&AlertRecord> = e.open_alerts().collect();
        let merchant: Vec<_> = open.iter().filter(|a| a.rule == MERCHANT_OFFLINE).collect();
        assert_eq!(merchant.len(), 1);
        assert_eq!(merchant[0].notify, Some(AlertState::Firing));
        assert_eq!(merchant[0].annotations["offline_stores"], "s-0,s-1,s-2");
        let stores: Vec<_> = open.iter().filter(|a| a.rule == STORE_OFFLINE).collect();
        assert_eq!(stores.len(), 3);
        assert!(
            stores
                .iter()
                .all(|a| a.held_by.as_deref() == Some(merchant[0].alert_id.as_str()))
        );
        // Stores paged before the merchant alert formed keep their page;
        // the one that made it a merchant outage is held back.
        assert_eq!(stores.iter().filter(|a| a.notify.is_some()).count(), 2);
        let terminals: Vec<_> = open.iter().filter(|a| a.rule == OFFLINE).collect();
        assert_eq!(terminals.len(), 9);
        assert!(
            terminals
                .iter()
                .all(|a| a.notify.is_none() && a.held_by.is_some()),
            "{terminals:?}"
        );
    }
}
