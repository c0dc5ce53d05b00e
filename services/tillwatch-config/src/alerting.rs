//! `[alerting]`: the built-in rules, store-level correlation, stores'
//! opening hours, maintenance windows and where pages go.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tillwatch_domain::hours::WeeklyHours;
use tillwatch_domain::matchers::Matcher;
use tillwatch_domain::written::{Written, Zone};

/// How urgent an alert is; becomes the `severity` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    Warning,
    Critical,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlertingConfig {
    /// Where people open Tillwatch's pages; alert annotations link to
    /// `<public_url>/ui/device?id=<device_id>` (and the merchant page for
    /// store and merchant alerts). Unset: the `http.listen` address.
    pub public_url: Option<String>,
    /// Shorthand for one Alertmanager receiver (also `--alertmanager-url`).
    pub alertmanager_url: Option<String>,
    /// How often alerts are re-evaluated when no reading arrives (pending
    /// alerts coming due, stores opening, silences starting and ending).
    #[serde(with = "humantime_serde")]
    pub evaluation_interval: Duration,
    pub rules: RulesConfig,
    /// Rules over the daily rollups, evaluated when a day's partitions
    /// complete.
    pub rollup_rules: RollupRulesConfig,
    pub correlation: CorrelationConfig,
    pub receivers: Vec<ReceiverConfig>,
    /// Opening hours by store; a terminal of a closed store that is off
    /// does not page.
    pub stores: Vec<StoreConfig>,
    /// Recurring windows in which matching alerts do not page.
    pub maintenance: Vec<MaintenanceConfig>,
}

impl Default for AlertingConfig {
    fn default() -> Self {
        AlertingConfig {
            public_url: None,
            alertmanager_url: None,
            evaluation_interval: Duration::from_secs(15),
            rules: RulesConfig::default(),
            rollup_rules: RollupRulesConfig::default(),
            correlation: CorrelationConfig::default(),
            receivers: Vec::new(),
            stores: Vec::new(),
            maintenance: Vec::new(),
        }
    }
}

/// A rule on one level: fires when the value is past `threshold` for
/// `for`, resolves once it is back past `clear_threshold` for `clear_for`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LevelRule {
    pub enabled: bool,
    pub severity: Severity,
    pub threshold: f64,
    /// On the far side of `threshold`: the hysteresis band between them
    /// keeps a value flapping around the threshold from paging again.
    pub clear_threshold: f64,
    #[serde(rename = "for", with = "humantime_serde")]
    pub for_: Duration,
    #[serde(with = "humantime_serde")]
    pub clear_for: Duration,
    /// Rules over a window of readings (crash spike, transaction latency):
    /// how far back they look.
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub window: Option<Duration>,
    /// Merchants this rule does not apply to.
    pub disabled_merchants: Vec<String>,
}

impl LevelRule {
    fn new(severity: Severity, threshold: f64, clear_threshold: f64, for_s: u64) -> LevelRule {
        LevelRule {
            enabled: true,
            severity,
            threshold,
            clear_threshold,
            for_: Duration::from_secs(for_s),
            clear_for: Duration::from_secs(120),
            window: None,
            disabled_merchants: Vec::new(),
        }
    }

    fn windowed(mut self, window_s: u64) -> LevelRule {
        self.window = Some(Duration::from_secs(window_s));
        self
    }
}

/// A rule on a state (offline, tampered): fires once it has held for `for`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateRule {
    pub enabled: bool,
    pub severity: Severity,
    #[serde(rename = "for", with = "humantime_serde")]
    pub for_: Duration,
    pub disabled_merchants: Vec<String>,
}

/// A rule on the pipeline itself, raised by another role (the scheduler)
/// and delivered by the alerter: only whether it pages, and how loudly.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineRule {
    pub enabled: bool,
    pub severity: Severity,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OfflineRule {
    pub enabled: bool,
    pub severity: Severity,
    /// Also long enough for a store outage to be recognised and paged once
    /// (see `[alerting.correlation]`), and for a reboot to pass unpaged.
    #[serde(rename = "for", with = "humantime_serde")]
    pub for_: Duration,
    /// Page for a terminal switched off cleanly too (by default only lost
    /// connections and silence page).
    pub include_shutdown: bool,
    pub disabled_merchants: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoorConnectivityRule {
    pub enabled: bool,
    pub severity: Severity,
    /// Fires when RSSI is under this (dBm)…
    pub rssi_below: f64,
    pub rssi_clear_above: f64,
    /// …or the payment host's round trip is over this (ms)…
    pub latency_above_ms: f64,
    pub latency_clear_below_ms: f64,
    /// …or the link dropped more than this often in the last hour.
    pub disconnects_per_hour_above: f64,
    pub disconnects_per_hour_clear_below: f64,
    #[serde(rename = "for", with = "humantime_serde")]
    pub for_: Duration,
    #[serde(with = "humantime_serde")]
    pub clear_for: Duration,
    pub disabled_merchants: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatteryForecastRule {
    pub enabled: bool,
    pub severity: Severity,
    /// Discharge rate from the readings of this last stretch.
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    /// Warn when the battery reaches `battery_critical.threshold` within
    /// this, for a store without opening hours; with hours, before closing.
    #[serde(with = "humantime_serde")]
    pub horizon: Duration,
    pub disabled_merchants: Vec<String>,
}

/// Each rule's keys are optional: a rule's own defaults fill in the rest.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RulesConfig {
    /// Battery level (%) while not charging.
    pub battery_low: LevelRule,
    pub battery_critical: LevelRule,
    pub offline: OfflineRule,
    pub poor_connectivity: PoorConnectivityRule,
    /// Crashes plus hangs within `window`.
    pub crash_spike: LevelRule,
    /// 95th percentile of transaction time (ms) within `window`.
    pub transaction_latency: LevelRule,
    /// Age (seconds) of the oldest payment taken offline and not yet sent.
    pub offline_queue: LevelRule,
    pub tamper: StateRule,
    pub battery_forecast: BatteryForecastRule,
    /// A gateway's ingest watermark stopped advancing for
    /// `scheduler.watermark_stall_after` (found by the scheduler).
    pub ingest_watermark_stalled: PipelineRule,
    /// A job's partition failed its last retry (found by the scheduler;
    /// labels `job`, `owner`, `partition`). Resolves when it succeeds.
    pub job_failed: PipelineRule,
    /// A job's partition was not done within the job's `sla` (found by the
    /// scheduler). Resolves when it succeeds.
    pub job_sla_missed: PipelineRule,
}

impl Default for RulesConfig {
    fn default() -> Self {
        let mut offline_queue = LevelRule::new(Severity::Critical, 4.0 * 3600.0, 600.0, 0);
        offline_queue.clear_for = Duration::ZERO;
        RulesConfig {
            battery_low: LevelRule::new(Severity::Warning, 20.0, 25.0, 300),
            battery_critical: LevelRule::new(Severity::Critical, 10.0, 15.0, 60),
            offline: OfflineRule {
                enabled: true,
                severity: Severity::Critical,
                for_: Duration::from_secs(60),
                include_shutdown: false,
                disabled_merchants: Vec::new(),
            },
            poor_connectivity: PoorConnectivityRule {
                enabled: true,
                severity: Severity::Warning,
                rssi_below: -100.0,
                rssi_clear_above: -95.0,
                latency_above_ms: 1500.0,
                latency_clear_below_ms: 1000.0,
                disconnects_per_hour_above: 6.0,
                disconnects_per_hour_clear_below: 3.0,
                for_: Duration::from_secs(600),
                clear_for: Duration::from_secs(600),
                disabled_merchants: Vec::new(),
            },
            crash_spike: LevelRule::new(Severity::Warning, 3.0, 1.0, 0).windowed(900),
            transaction_latency: LevelRule::new(Severity::Warning, 3000.0, 2000.0, 300)
                .windowed(900),
            offline_queue,
            tamper: StateRule {
                enabled: true,
                severity: Severity::Critical,
                for_: Duration::ZERO,
                disabled_merchants: Vec::new(),
            },
            battery_forecast: BatteryForecastRule {
                enabled: true,
                severity: Severity::Warning,
                window: Duration::from_secs(3600),
                horizon: Duration::from_secs(2 * 3600),
                disabled_merchants: Vec::new(),
            },
            ingest_watermark_stalled: PipelineRule {
                enabled: true,
                severity: Severity::Warning,
            },
            job_failed: PipelineRule {
                enabled: true,
                severity: Severity::Warning,
            },
            job_sla_missed: PipelineRule {
                enabled: true,
                severity: Severity::Warning,
            },
        }
    }
}

impl<'de> Deserialize<'de> for RulesConfig {
    fn deserialize<D: serde::Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let given = toml::Table::deserialize(de)?;
        let mut full = toml::Table::try_from(RulesConfig::default()).map_err(D::Error::custom)?;
        for (rule, keys) in given {
            let Some(toml::Value::Table(base)) = full.get_mut(&rule) else {
                let known: Vec<&String> = full.keys().collect();
                return Err(D::Error::custom(format!(
                    "unknown rule `{rule}`, expected one of {known:?}"
                )));
            };
            let toml::Value::Table(keys) = keys else {
                return Err(D::Error::custom(format!("rule `{rule}` must be a table")));
            };
            base.extend(keys);
        }
        fn take<T: serde::de::DeserializeOwned, E: Error>(
            full: &mut toml::Table,
            rule: &str,
        ) -> Result<T, E> {
            let value = full.remove(rule).expect("every rule has defaults");
            T::deserialize(value).map_err(|e| E::custom(format!("rule `{rule}`: {e}")))
        }
        Ok(RulesConfig {
            battery_low: take(&mut full, "battery_low")?,
            battery_critical: take(&mut full, "battery_critical")?,
            offline: take(&mut full, "offline")?,
            poor_connectivity: take(&mut full, "poor_connectivity")?,
            crash_spike: take(&mut full, "crash_spike")?,
            transaction_latency: take(&mut full, "transaction_latency")?,
            offline_queue: take(&mut full, "offline_queue")?,
            tamper: take(&mut full, "tamper")?,
            battery_forecast: take(&mut full, "battery_forecast")?,
            ingest_watermark_stalled: take(&mut full, "ingest_watermark_stalled")?,
            job_failed: take(&mut full, "job_failed")?,
            job_sla_missed: take(&mut full, "job_sla_missed")?,
        })
    }
}

/// Rules over the daily rollups. They raise alerts like the live rules
/// (same lifecycle, silences and delivery); an alert resolves when a later
/// day no longer meets its rule.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RollupRulesConfig {
    pub cohort_regression: CohortRegressionRule,
    pub chronic_poor_connectivity: ChronicConnectivityRule,
    pub battery_health: BatteryHealthRule,
}

impl Default for CohortRegressionRule {
    fn default() -> Self {
        CohortRegressionRule {
            enabled: true,
            severity: Severity::Warning,
            factor: 2.0,
            baseline_days: 7,
            min_transactions: 200,
        }
    }
}

impl Default for ChronicConnectivityRule {
    fn default() -> Self {
        ChronicConnectivityRule {
            enabled: true,
            severity: Severity::Warning,
            min_days: 3,
            of_days: 7,
            rssi_median_below: -85.0,
            host_latency_p95_above_ms: 1000.0,
            disconnects_above: 24,
        }
    }
}

impl Default for BatteryHealthRule {
    fn default() -> Self {
        BatteryHealthRule {
            enabled: true,
            severity: Severity::Warning,
            below_pct: 70,
            drop_pct: 5,
            drop_days: 7,
        }
    }
}

/// A firmware/app cohort whose crash rate (crashes and hangs per 1,000
/// transactions) or transaction latency p95 on a day is at least `factor`
/// times its level over the previous `baseline_days`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CohortRegressionRule {
    pub enabled: bool,
    pub severity: Severity,
    pub factor: f64,
    pub baseline_days: u32,
    /// A cohort with fewer transactions on the day is not judged.
    pub min_transactions: u64,
}

/// A terminal with poor connectivity on `min_days` of the last `of_days`
/// days: a day is poor when its median RSSI is below `rssi_median_below`,
/// its payment-host latency p95 above `host_latency_p95_above_ms` or its
/// link drops above `disconnects_above`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ChronicConnectivityRule {
    pub enabled: bool,
    pub severity: Severity,
    pub min_days: u32,
    pub of_days: u32,
    pub rssi_median_below: f64,
    pub host_latency_p95_above_ms: f64,
    pub disconnects_above: u64,
}

/// A terminal whose battery health (capacity left) is below `below_pct`,
/// or fell by `drop_pct` points or more within `drop_days` days.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BatteryHealthRule {
    pub enabled: bool,
    pub severity: Severity,
    pub below_pct: u32,
    pub drop_pct: u32,
    pub drop_days: u32,
}

/// One store-level alert instead of a page per terminal when a store drops.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CorrelationConfig {
    pub enabled: bool,
    /// Terminals that went offline within this window count together.
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    /// A store alert needs at least this many of its terminals offline…
    pub min_devices: u32,
    /// …and at least this share of the terminals it has.
    pub min_fraction: f64,
    /// A merchant alert (holding its store alerts) needs this many stores down.
    pub merchant_min_stores: u32,
    /// A fleet-wide drop (`ingest_outage`, holding every merchant, store and
    /// terminal alert under it) needs at least this many terminals gone
    /// offline within `window`…
    pub fleet_min_devices: u32,
    /// …and at least this share of every terminal known: so many at once
    /// points at the broker, the network in front of it or the gateway.
    pub fleet_min_fraction: f64,
    /// How long a terminal's offline alert and a store's alert wait, once
    /// firing, for the store or merchant outage they may be part of before
    /// they page on their own (Alertmanager's `group_wait`, one level up):
    /// a store outage is one page, not its first terminals' pages and
    /// then the store's. The price is this much delay before any offline
    /// page. Zero pages at once.
    #[serde(with = "humantime_serde")]
    pub wait: Duration,
    /// A store or merchant alert resolves once its outage has been over
    /// this long.
    #[serde(with = "humantime_serde")]
    pub clear_after: Duration,
    pub severity: Severity,
}

impl Default for CorrelationConfig {
    fn default() -> Self {
        CorrelationConfig {
            enabled: true,
            window: Duration::from_secs(300),
            min_devices: 3,
            min_fraction: 0.5,
            merchant_min_stores: 3,
            fleet_min_devices: 10,
            fleet_min_fraction: 0.5,
            wait: Duration::from_secs(30),
            clear_after: Duration::from_secs(120),
            severity: Severity::Critical,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReceiverKind {
    /// Prometheus Alertmanager's v2 API; `url` is its base URL.
    Alertmanager,
    /// A JSON POST per alert change (see ARCHITECTURE.md for the body).
    Webhook,
    /// PagerDuty Events API v2 (`url` defaults to PagerDuty's endpoint).
    Pagerduty,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReceiverConfig {
    pub name: String,
    pub kind: ReceiverKind,
    #[serde(default)]
    pub url: Option<String>,
    /// A firing alert is sent again this often (Alertmanager: keeps it
    /// alive, default 1m; others: a reminder, default 4h).
    #[serde(default, with = "humantime_serde")]
    pub repeat: Option<Duration>,
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Only alerts of at least this severity.
    #[serde(default)]
    pub min_severity: Option<Severity>,
    /// PagerDuty: the environment variable holding the integration's
    /// routing key (never the key itself in a file).
    #[serde(default)]
    pub routing_key_env: Option<String>,
}

fn default_timeout() -> Duration {
    Duration::from_secs(10)
}

/// The PagerDuty Events API v2 endpoint.
pub const PAGERDUTY_EVENTS_URL: &str = "https://events.pagerduty.com/v2/enqueue";

impl ReceiverConfig {
    pub fn alertmanager(url: &str) -> ReceiverConfig {
        ReceiverConfig {
            name: "alertmanager".into(),
            kind: ReceiverKind::Alertmanager,
            url: Some(url.to_string()),
            repeat: None,
            timeout: default_timeout(),
            min_severity: None,
            routing_key_env: None,
        }
    }

    pub fn repeat_or_default(&self) -> Duration {
        self.repeat.unwrap_or(match self.kind {
            ReceiverKind::Alertmanager => Duration::from_secs(60),
            _ => Duration::from_secs(4 * 3600),
        })
    }

    pub fn url_or_default(&self) -> Option<&str> {
        match (&self.url, self.kind) {
            (Some(url), _) => Some(url),
            (None, ReceiverKind::Pagerduty) => Some(PAGERDUTY_EVENTS_URL),
            (None, _) => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    pub merchant_id: String,
    pub store_id: String,
    #[serde(default)]
    pub name: Option<String>,
    /// IANA name, e.g. `Europe/Berlin`; unset: the terminals' own.
    #[serde(default)]
    pub time_zone: Option<Zone>,
    /// e.g. `"Mon-Fri 08:00-20:00, Sat 09:00-14:00"`; days not named are
    /// closed; `24h` for always open.
    pub hours: Written<WeeklyHours>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MaintenanceConfig {
    pub name: String,
    /// Label matchers, all of which must match: `label=value`,
    /// `label!=value`, `label=~regex`, `label!~regex`.
    pub matchers: Vec<Written<Matcher>>,
    /// When, in the same form as store hours, e.g. `"Sun 02:00-04:00"`.
    pub schedule: Written<WeeklyHours>,
    /// IANA time zone of `schedule`.
    #[serde(default = "utc")]
    pub time_zone: Zone,
}

fn utc() -> Zone {
    "UTC".parse().expect("the zone database knows UTC")
}

impl AlertingConfig {
    /// Every receiver, the `alertmanager_url` shorthand included.
    pub fn all_receivers(&self) -> Vec<ReceiverConfig> {
        let mut all = self.receivers.clone();
        if let Some(url) = &self.alertmanager_url
            && !all
                .iter()
                .any(|r| r.kind == ReceiverKind::Alertmanager && r.url.as_deref() == Some(url))
        {
            all.push(ReceiverConfig::alertmanager(url));
        }
        all
    }

    /// The names of [`AlertingConfig::all_receivers`] (what a job's
    /// `notify` may name).
    pub fn receiver_names(&self) -> Vec<String> {
        self.all_receivers().into_iter().map(|r| r.name).collect()
    }

    pub(crate) fn validate(&self, errors: &mut Vec<String>) {
        let rr = &self.rollup_rules;
        let key = "alerting.rollup_rules";
        if rr.cohort_regression.factor.is_nan() || rr.cohort_regression.factor <= 1.0 {
            errors.push(format!(
                "{key}.cohort_regression.factor: must be more than 1"
            ));
        }
        if !(1..=60).contains(&rr.cohort_regression.baseline_days) {
            errors.push(format!(
                "{key}.cohort_regression.baseline_days: must be 1 to 60"
            ));
        }
        let c = &rr.chronic_poor_connectivity;
        if !(1..=60).contains(&c.of_days) || c.min_days == 0 || c.min_days > c.of_days {
            errors.push(format!(
                "{key}.chronic_poor_connectivity: min_days must be 1 to of_days, of_days 1 to 60"
            ));
        }
        let b = &rr.battery_health;
        if b.below_pct > 100 || b.drop_pct > 100 || !(1..=60).contains(&b.drop_days) {
            errors.push(format!(
                "{key}.battery_health: below_pct and drop_pct are 0 to 100, drop_days 1 to 60"
            ));
        }
        let r = &self.rules;
        let mut level = |name: &str, rule: &LevelRule, above: bool, windowed: bool| {
            let key = format!("alerting.rules.{name}");
            let far_side = if above {
                rule.clear_threshold <= rule.threshold
            } else {
                rule.clear_threshold >= rule.threshold
            };
            if !rule.threshold.is_finite() || !rule.clear_threshold.is_finite() || !far_side {
                errors.push(format!(
                    "{key}.clear_threshold: {} must be {} threshold {} (the hysteresis band)",
                    rule.clear_threshold,
                    if above { "at most" } else { "at least" },
                    rule.threshold
                ));
            }
            match (rule.window, windowed) {
                (Some(w), true) if w.is_zero() => {
                    errors.push(format!("{key}.window: must be more than 0s"));
                }
                (None, true) => errors.push(format!("{key}.window: must be set")),
                (Some(_), false) => errors.push(format!(
                    "{key}.window: this rule looks at the newest reading; remove window"
                )),
                _ => {}
            }
        };
        level("battery_low", &r.battery_low, false, false);
        level("battery_critical", &r.battery_critical, false, false);
        level("crash_spike", &r.crash_spike, true, true);
        level("transaction_latency", &r.transaction_latency, true, true);
        level("offline_queue", &r.offline_queue, true, false);
        let p = &r.poor_connectivity;
        if p.rssi_clear_above < p.rssi_below
            || p.latency_clear_below_ms > p.latency_above_ms
            || p.disconnects_per_hour_clear_below > p.disconnects_per_hour_above
        {
            errors.push(
                "alerting.rules.poor_connectivity: each clearing value must be on the good side of its firing value"
                    .into(),
            );
        }
        if r.battery_forecast.window < Duration::from_secs(600) {
            errors.push("alerting.rules.battery_forecast.window: must be at least 10m".into());
        }
        let c = &self.correlation;
        if c.min_devices < 2 {
            errors.push("alerting.correlation.min_devices: must be at least 2".into());
        }
        if !(c.min_fraction > 0.0 && c.min_fraction <= 1.0) {
            errors.push("alerting.correlation.min_fraction: must be in (0, 1]".into());
        }
        if c.merchant_min_stores < 2 {
            errors.push("alerting.correlation.merchant_min_stores: must be at least 2".into());
        }
        if c.fleet_min_devices < 2 {
            errors.push("alerting.correlation.fleet_min_devices: must be at least 2".into());
        }
        if !(c.fleet_min_fraction > 0.0 && c.fleet_min_fraction <= 1.0) {
            errors.push("alerting.correlation.fleet_min_fraction: must be in (0, 1]".into());
        }
        if c.wait > Duration::from_secs(3600) {
            errors.push("alerting.correlation.wait: must be at most 1h".into());
        }
        if c.clear_after > Duration::from_secs(86_400) {
            errors.push("alerting.correlation.clear_after: must be at most 24h".into());
        }
        if self.evaluation_interval < Duration::from_secs(1) {
            errors.push("alerting.evaluation_interval: must be at least 1s".into());
        }
        let mut names = std::collections::HashSet::new();
        for (i, rc) in self.all_receivers().iter().enumerate() {
            let key = format!("alerting.receivers[{i}] ({:?})", rc.name);
            if rc.name.is_empty() || !names.insert(rc.name.clone()) {
                errors.push(format!("{key}.name: must be non-empty and unique"));
            }
            match rc.url_or_default() {
                None => errors.push(format!(
                    "{key}.url: must be set for a {:?} receiver",
                    rc.kind
                )),
                Some(url) if !(url.starts_with("http://") || url.starts_with("https://")) => {
                    errors.push(format!(
                        "{key}.url: {url:?} must start with http:// or https://"
                    ));
                }
                _ => {}
            }
            if rc.kind == ReceiverKind::Pagerduty && rc.routing_key_env.is_none() {
                errors.push(format!(
                    "{key}.routing_key_env: name the environment variable holding the PagerDuty routing key"
                ));
            }
            if rc.timeout.is_zero() {
                errors.push(format!("{key}.timeout: must be more than 0s"));
            }
            if rc.repeat.is_some_and(|d| d < Duration::from_secs(1)) {
                errors.push(format!("{key}.repeat: must be at least 1s"));
            }
        }
        for (i, s) in self.stores.iter().enumerate() {
            if s.merchant_id.is_empty() || s.store_id.is_empty() {
                errors.push(format!(
                    "alerting.stores[{i}]: merchant_id and store_id must be set"
                ));
            }
        }
        for (i, m) in self.maintenance.iter().enumerate() {
            if m.matchers.is_empty() {
                errors.push(format!(
                    "alerting.maintenance[{i}] ({:?}).matchers: at least one, or it would silence everything",
                    m.name
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::Config;
    use std::time::Duration;

    #[test]
    fn hours_zones_and_matchers_are_parsed_at_load_and_a_bad_one_names_its_line() {
        let config = Config::from_toml(
            r#"
            [[alerting.stores]]
            merchant_id = "m-1"
            store_id = "s-1"
            time_zone = "Europe/Berlin"
            hours = "Mon-Fri 08:00-20:00"
            [[alerting.maintenance]]
            name = "nightly"
            matchers = ["merchant_id=~m-.*"]
            schedule = "Sun 02:00-04:00"
            "#,
        )
        .unwrap();
        let store = &config.alerting.stores[0];
        assert_eq!(store.hours.text(), "Mon-Fri 08:00-20:00");
        assert_eq!(store.time_zone.as_ref().unwrap().text(), "Europe/Berlin");
        let window = &config.alerting.maintenance[0];
        assert_eq!(window.time_zone.text(), "UTC", "the default zone");
        let labels = [("merchant_id".to_string(), "m-7".to_string())].into();
        assert!(window.matchers[0].matches(&labels));
        // Written back as written.
        let again = Config::from_toml(&toml::to_string(&config).unwrap()).unwrap();
        assert_eq!(again.alerting, config.alerting);

        for (bad, named) in [
            (
                "[[alerting.stores]]\nmerchant_id = \"m-1\"\nstore_id = \"s-1\"\nhours = \"Mon-Fri 8-20\"\n",
                "Mon-Fri 8-20",
            ),
            (
                "[[alerting.stores]]\nmerchant_id = \"m-1\"\nstore_id = \"s-1\"\nhours = \"24h\"\ntime_zone = \"Europe/Nowhere\"\n",
                "Europe/Nowhere",
            ),
            (
                "[[alerting.maintenance]]\nname = \"nightly\"\nmatchers = [\"merchant\"]\nschedule = \"Sun 02:00-04:00\"\n",
                "matcher \"merchant\"",
            ),
        ] {
            let err = Config::from_toml(bad).unwrap_err().to_string();
            assert!(err.contains(named), "{err}");
            assert!(err.contains("line "), "the line is named: {err}");
            // The same from a file (which goes through the environment's
            // overrides first).
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("tillwatch.toml");
            std::fs::write(&path, bad).unwrap();
            let err = Config::load(Some(&path), []).unwrap_err().to_string();
            assert!(err.contains(named), "{err}");
            assert!(err.contains("line "), "the line is named: {err}");
        }
    }

    #[test]
    fn rollup_rules_and_the_directory_source_are_a_few_lines_and_mistakes_are_named() {
        let config = Config::from_toml(
            r#"
            [alerting.rollup_rules.battery_health]
            below_pct = 60
            [scheduler.merchant_directory]
            url = "postgres://reader:secret@crm.internal/crm"
            query = "SELECT id AS merchant_id, shop AS store_id FROM shops"
            "#,
        )
        .unwrap();
        config.validate().unwrap();
        let r = &config.alerting.rollup_rules;
        assert_eq!(r.battery_health.below_pct, 60);
        assert_eq!(r.battery_health.drop_pct, 5, "its own default");
        assert_eq!(r.cohort_regression.factor, 2.0);
        let source = config.scheduler.merchant_directory.as_ref().unwrap();
        assert!(!format!("{source:?}").contains("secret"), "{source:?}");

        let wrong = Config::from_toml(
            "[alerting.rollup_rules.battery_health]
below = 60
",
        )
        .unwrap_err()
        .to_string();
        assert!(wrong.contains("below"), "{wrong}");
        let invalid = Config::from_toml(
            r#"
            [alerting.rollup_rules.chronic_poor_connectivity]
            min_days = 9
            [scheduler]
            local_day_utc_offsets = [2, 14]
            [scheduler.merchant_directory]
            url = "mysql://crm"
            query = " "
            [[http.tokens]]
            name = "support"
            role = "viewer"
            token = "short"
            [[http.tokens]]
            name = "support"
            role = "operator"
            token_file = "/nonexistent/tillwatch-token"
            "#,
        )
        .unwrap()
        .validate()
        .unwrap_err()
        .to_string();
        for needle in [
            "alerting.rollup_rules.chronic_poor_connectivity",
            "scheduler.merchant_directory.url",
            "scheduler.merchant_directory.query",
            "scheduler.local_day_utc_offsets: [2, 14]",
            "http.tokens[0] (\"support\"): the token must have at least 16 characters",
            "http.tokens[1] (\"support\"): the name is used twice",
            "token_file /nonexistent/tillwatch-token",
        ] {
            assert!(invalid.contains(needle), "{needle} missing from {invalid}");
        }
    }

    #[test]
    fn a_rule_given_in_part_keeps_its_own_defaults_for_the_rest() {
        let config = Config::from_toml(
            "[alerting.rules.battery_critical]\nthreshold = 8\n\n[alerting.rules.offline]\nfor = \"0s\"\n",
        )
        .unwrap();
        let r = &config.alerting.rules;
        assert_eq!(r.battery_critical.threshold, 8.0);
        assert_eq!(r.battery_critical.clear_threshold, 15.0, "its own default");
        assert_eq!(r.battery_low.threshold, 20.0);
        assert_eq!(r.offline.for_, Duration::ZERO);
        config.validate().unwrap();
    }

    #[test]
    fn unknown_rules_and_keys_are_named() {
        let err = Config::from_toml("[alerting.rules.battery_lo]\nthreshold = 8\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("battery_lo") && err.contains("battery_low"),
            "{err}"
        );
        let err = Config::from_toml("[alerting.rules.tamper]\nthreshold = 8\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("tamper") && err.contains("threshold"), "{err}");
    }

    #[test]
    fn a_clearing_threshold_on_the_wrong_side_and_a_receiver_without_url_are_refused() {
        let config = Config::from_toml(
            "[alerting.rules.battery_low]\nclear_threshold = 10\n\n[[alerting.receivers]]\nname = \"ops\"\nkind = \"webhook\"\n",
        )
        .unwrap();
        let err = config.validate().unwrap_err().to_string();
        assert!(
            err.contains("alerting.rules.battery_low.clear_threshold"),
            "{err}"
        );
        assert!(err.contains("\"ops\"") && err.contains(".url"), "{err}");
    }

    #[test]
    fn the_alertmanager_shorthand_adds_one_receiver() {
        let mut config = Config::default();
        config.alerting.alertmanager_url = Some("http://127.0.0.1:9093".into());
        let all = config.alerting.all_receivers();
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].repeat_or_default(), Duration::from_secs(60));
        config.validate().unwrap();
    }
}
