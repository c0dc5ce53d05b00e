//! The rule catalog: the built-in device rules, their conditions and
//! summaries, and the values each page shows.

use std::collections::{HashMap, HashSet};

use tillwatch_config::{AlertingConfig, Severity};

use super::{FORECAST_CLEAR_MARGIN_S, FORECAST_FOR_MS, OFFLINE};
use crate::rules::{Cmp, Condition, ThresholdRule};

/// Values a rule's summary shows beyond those its conditions read.
pub(super) const EXTRA_VALUES: &[(&str, &str)] = &[
    ("offline_queue", "offline_queue_len"),
    ("battery_forecast", "battery_level_pct"),
    ("battery_forecast", "battery_drain_pct_per_hour"),
    ("battery_forecast", "battery_minutes_to_critical"),
];

pub(super) struct DeviceRule {
    pub(super) rule: ThresholdRule,
    pub(super) severity: Severity,
    pub(super) disabled: HashSet<String>,
    pub(super) summary: fn(&HashMap<&str, f64>) -> String,
}

pub(super) fn cond(signal: &'static str, cmp: Cmp, unless: Option<&'static str>) -> Condition {
    Condition {
        signal,
        cmp,
        unless,
    }
}

pub(super) fn ms(d: std::time::Duration) -> i64 {
    d.as_millis() as i64
}

pub(super) fn v(signals: &HashMap<&str, f64>, name: &str) -> f64 {
    signals.get(name).copied().unwrap_or(f64::NAN)
}

pub(super) fn built_in_rules(config: &AlertingConfig) -> Vec<DeviceRule> {
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

/// A value as people read it: whole numbers without decimals, others to
/// two places.
pub(super) fn shown(value: f64) -> String {
    if value.fract() == 0.0 && value.abs() < 1e15 {
        format!("{}", value as i64)
    } else {
        format!("{value:.2}")
    }
}
