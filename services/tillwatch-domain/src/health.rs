//! A terminal's health score, 0 to 100, with the reasons that took points
//! off: what a support agent reads first when a merchant calls.
//!
//! The score starts at 100; each finding below takes its points off, and
//! the score never goes under 0. Findings come from what is known now (the
//! connectivity state, the newest value of each signal, the open alerts,
//! the recent connectivity changes), so the card and the fleet's worst
//! list agree without reading the lake.
//!
//! | finding | points |
//! |---|---|
//! | offline | 50 |
//! | tamper detected | 40 |
//! | each firing alert: critical / warning / other | 25 / 10 / 5 |
//! | no telemetry for 3 reporting intervals while called online | 20 |
//! | battery below the low threshold, not charging | 20 (below twice the threshold: 5) |
//! | payments waiting in the offline queue | 15 (10 or more: 25) |
//! | payment host round trip over 1,500 ms | 15 (over 800 ms: 5) |
//! | signal under -100 dBm | 15 (under -90 dBm: 5) |
//! | crashes in the newest app report | 15; hangs 5 |
//! | 3 or more connectivity drops in 24 hours | 10 (6 or more: 20) |
//! | printer paper low | 3 |

use std::collections::HashMap;

/// One finding behind a score.
#[derive(Debug, Clone, PartialEq)]
pub struct HealthReason {
    /// Stable name for tools: `offline`, `alert`, `battery_low`, …
    pub code: &'static str,
    /// Points taken off.
    pub points: u32,
    /// What a person reads, with the figures.
    pub detail: String,
}

/// A score and its reasons, most points first.
#[derive(Debug, Clone, PartialEq)]
pub struct Health {
    pub score: u32,
    pub reasons: Vec<HealthReason>,
}

impl Health {
    /// `healthy` (80 and over), `degraded` (50 to 79) or `unhealthy`.
    pub fn grade(&self) -> &'static str {
        match self.score {
            80.. => "healthy",
            50..80 => "degraded",
            _ => "unhealthy",
        }
    }
}

/// An open alert as the score sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct FiringAlert {
    pub rule: String,
    pub severity: String,
}

/// What the score is computed from (borrowed: the fleet page scores every
/// terminal).
#[derive(Debug, Clone)]
pub struct HealthInput<'a> {
    pub now_ms: i64,
    /// `Some(true)` online, `Some(false)` offline, `None` never seen.
    pub online: Option<bool>,
    /// Since when the current state holds.
    pub state_since_ms: Option<i64>,
    /// Why it is offline (`last_will`, `shutdown`, `silence`).
    pub offline_reason: Option<String>,
    pub last_telemetry_ms: Option<i64>,
    pub cadence_ms: Option<f64>,
    /// Newest value of each signal ([`crate::signals::SIGNAL_NAMES`]).
    pub signals: &'a HashMap<String, f64>,
    pub firing: &'a [FiringAlert],
    /// Changes to an offline state in the last 24 hours.
    pub drops_24h: u32,
    pub low_battery_pct: f64,
}

fn minutes(ms: i64) -> String {
    let m = (ms.max(0) / 60_000) as u64;
    match m {
        0 => "under a minute".to_string(),
        1..=119 => format!("{m} min"),
        120..=2879 => format!("{} h {} min", m / 60, m % 60),
        _ => format!("{} days", m / 1440),
    }
}

/// The score for `input`.
pub fn score(input: &HealthInput<'_>) -> Health {
    let mut reasons = Vec::new();
    let mut add = |code, points, detail: String| {
        reasons.push(HealthReason {
            code,
            points,
            detail,
        })
    };
    let signal = |name: &str| input.signals.get(name).copied();

    match input.online {
        Some(false) => {
            let why = match input.offline_reason.as_deref() {
                Some("last_will") => " (connection lost)",
                Some("shutdown") => " (shut down)",
                Some("silence") => " (stopped reporting)",
                _ => "",
            };
            let since = input
                .state_since_ms
                .map(|s| format!(" for {}", minutes(input.now_ms - s)))
                .unwrap_or_default();
            add("offline", 50, format!("Offline{why}{since}"));
        }
        None => add("never_online", 50, "Never seen online".to_string()),
        Some(true) => {
            if let (Some(last), Some(cadence)) = (input.last_telemetry_ms, input.cadence_ms)
                && cadence > 0.0
                && (input.now_ms - last) as f64 > 3.0 * cadence
            {
                add(
                    "telemetry_late",
                    20,
                    format!(
                        "No telemetry for {} (reports every {} s)",
                        minutes(input.now_ms - last),
                        (cadence / 1000.0).round()
                    ),
                );
            }
        }
    }
    if signal("tamper_detected").is_some_and(|v| v >= 0.5) {
        add(
            "tamper",
            40,
            "Tamper detected: take the terminal out of service".to_string(),
        );
    }
    for alert in input.firing {
        let points = match alert.severity.as_str() {
            "critical" => 25,
            "warning" => 10,
            _ => 5,
        };
        add(
            "alert",
            points,
            format!("Alert {} is firing ({})", alert.rule, alert.severity),
        );
    }
    let charging = signal("battery_charging").is_some_and(|v| v >= 0.5);
    if let Some(level) = signal("battery_level_pct")
        && !charging
    {
        let low = input.low_battery_pct;
        if level < low {
            add(
                "battery_low",
                20,
                format!("Battery at {level:.0}%, below {low:.0}%, not charging"),
            );
        } else if level < 2.0 * low {
            add(
                "battery_low",
                5,
                format!("Battery at {level:.0}%, not charging"),
            );
        }
    }
    if let Some(queue) = signal("offline_queue_len")
        && queue >= 1.0
    {
        let age = signal("offline_queue_oldest_age_s")
            .map(|s| format!(", oldest {}", minutes((s * 1000.0) as i64)))
            .unwrap_or_default();
        let points = if queue >= 10.0 { 25 } else { 15 };
        add(
            "offline_queue",
            points,
            format!("{queue:.0} payment(s) waiting to reach the host{age}"),
        );
    }
    if let Some(ms) = signal("payment_host_latency_ms") {
        if ms > 1500.0 {
            add(
                "host_latency",
                15,
                format!("Payment host round trip {ms:.0} ms (over 1,500 ms)"),
            );
        } else if ms > 800.0 {
            add(
                "host_latency",
                5,
                format!("Payment host round trip {ms:.0} ms (over 800 ms)"),
            );
        }
    }
    if let Some(dbm) = signal("rssi_dbm") {
        if dbm < -100.0 {
            add("weak_signal", 15, format!("Weak signal: {dbm:.0} dBm"));
        } else if dbm < -90.0 {
            add("weak_signal", 5, format!("Fair signal: {dbm:.0} dBm"));
        }
    }
    if let Some(n) = signal("crashes")
        && n >= 1.0
    {
        add(
            "crashes",
            15,
            format!("{n:.0} app crash(es) in the newest report"),
        );
    }
    if let Some(n) = signal("hangs")
        && n >= 1.0
    {
        add(
            "hangs",
            5,
            format!("{n:.0} app hang(s) in the newest report"),
        );
    }
    if input.drops_24h >= 3 {
        let points = if input.drops_24h >= 6 { 20 } else { 10 };
        add(
            "flapping",
            points,
            format!(
                "Went offline {} times in the last 24 hours",
                input.drops_24h
            ),
        );
    }
    if signal("printer_paper_low").is_some_and(|v| v >= 0.5) {
        add("paper_low", 3, "Printer paper low".to_string());
    }
    reasons.sort_by_key(|r| std::cmp::Reverse(r.points));
    let lost: u32 = reasons.iter().map(|r| r.points).sum();
    Health {
        score: 100u32.saturating_sub(lost),
        reasons,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 10_000_000;

    /// A terminal's state, owned, for the borrowed input.
    struct Case {
        online: Option<bool>,
        offline_reason: Option<String>,
        state_since_ms: Option<i64>,
        last_telemetry_ms: Option<i64>,
        signals: HashMap<String, f64>,
        firing: Vec<FiringAlert>,
        drops_24h: u32,
    }

    impl Case {
        fn score(&self) -> Health {
            score(&HealthInput {
                now_ms: NOW,
                online: self.online,
                state_since_ms: self.state_since_ms,
                offline_reason: self.offline_reason.clone(),
                last_telemetry_ms: self.last_telemetry_ms,
                cadence_ms: Some(60_000.0),
                signals: &self.signals,
                firing: &self.firing,
                drops_24h: self.drops_24h,
                low_battery_pct: 15.0,
            })
        }
    }

    fn healthy() -> Case {
        Case {
            online: Some(true),
            offline_reason: None,
            state_since_ms: Some(0),
            last_telemetry_ms: Some(9_990_000),
            signals: HashMap::from([
                ("battery_level_pct".to_string(), 80.0),
                ("battery_charging".to_string(), 0.0),
                ("rssi_dbm".to_string(), -60.0),
                ("payment_host_latency_ms".to_string(), 200.0),
                ("offline_queue_len".to_string(), 0.0),
                ("crashes".to_string(), 0.0),
            ]),
            firing: Vec::new(),
            drops_24h: 0,
        }
    }

    #[test]
    fn a_well_terminal_scores_full_marks_with_no_reasons() {
        let h = healthy().score();
        assert_eq!(h.score, 100);
        assert!(h.reasons.is_empty());
        assert_eq!(h.grade(), "healthy");
    }

    #[test]
    fn each_problem_is_a_reason_with_its_figures_worst_first() {
        let mut input = healthy();
        input.signals.insert("battery_level_pct".into(), 9.0);
        input.signals.insert("offline_queue_len".into(), 3.0);
        input.signals.insert("rssi_dbm".into(), -95.0);
        input.firing.push(FiringAlert {
            rule: "battery_low".into(),
            severity: "warning".into(),
        });
        let h = input.score();
        let codes: Vec<_> = h.reasons.iter().map(|r| (r.code, r.points)).collect();
        assert_eq!(
            codes,
            [
                ("battery_low", 20),
                ("offline_queue", 15),
                ("alert", 10),
                ("weak_signal", 5)
            ]
        );
        assert_eq!(h.score, 50);
        assert_eq!(h.grade(), "degraded");
        assert!(h.reasons[0].detail.contains("9%"), "{:?}", h.reasons[0]);
        assert!(h.reasons[1].detail.contains('3'), "{:?}", h.reasons[1]);
    }

    #[test]
    fn charging_excuses_a_low_battery() {
        let mut input = healthy();
        input.signals.insert("battery_level_pct".into(), 5.0);
        input.signals.insert("battery_charging".into(), 1.0);
        assert_eq!(input.score().score, 100);
    }

    #[test]
    fn offline_says_why_and_for_how_long_and_the_score_floors_at_zero() {
        let mut input = healthy();
        input.online = Some(false);
        input.offline_reason = Some("last_will".into());
        input.state_since_ms = Some(NOW - 2 * 3_600_000 - 5 * 60_000);
        let h = input.score();
        assert_eq!(h.score, 50);
        assert_eq!(
            h.reasons[0].detail,
            "Offline (connection lost) for 2 h 5 min"
        );
        input.signals.insert("tamper_detected".into(), 1.0);
        input.drops_24h = 7;
        for _ in 0..3 {
            input.firing.push(FiringAlert {
                rule: "offline".into(),
                severity: "critical".into(),
            });
        }
        let h = input.score();
        assert_eq!(h.score, 0);
        assert_eq!(h.grade(), "unhealthy");
    }

    #[test]
    fn late_telemetry_counts_only_past_three_intervals() {
        let mut input = healthy();
        input.last_telemetry_ms = Some(NOW - 170_000);
        assert_eq!(input.score().score, 100);
        input.last_telemetry_ms = Some(NOW - 190_000);
        let h = input.score();
        assert_eq!(h.reasons[0].code, "telemetry_late");
        assert_eq!(h.score, 80);
    }
}
