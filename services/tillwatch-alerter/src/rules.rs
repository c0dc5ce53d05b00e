//! Threshold rules with a `for` duration and hysteresis: an alert fires
//! only after its condition has held for `for_ms`, and resolves only after a
//! separate, stricter clearing condition has held for `clear_for_ms`, so a
//! value flapping around one threshold pages once, not every time it
//! crosses. Pure: values and times are passed in.

use std::collections::HashMap;

/// A comparison against a threshold.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Cmp {
    Below(f64),
    Above(f64),
}

impl Cmp {
    fn holds(self, value: f64) -> bool {
        match self {
            Cmp::Below(t) => value < t,
            Cmp::Above(t) => value > t,
        }
    }
}

/// A condition on one signal, void while another (a flag) is set: "battery
/// under 15 % while not charging" is `battery_level_pct Below(15)` unless
/// `battery_charging`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Condition {
    pub signal: &'static str,
    pub cmp: Cmp,
    pub unless: Option<&'static str>,
}

impl Condition {
    /// Whether it holds for these signal values; `None` when the signal is
    /// unknown (no reading of it yet).
    pub fn holds(&self, signals: &HashMap<&str, f64>) -> Option<bool> {
        let value = *signals.get(self.signal)?;
        let excused = self
            .unless
            .and_then(|flag| signals.get(flag))
            .is_some_and(|v| *v != 0.0);
        Some(!excused && self.cmp.holds(value))
    }
}

/// Whether any of `conditions` holds: `None` only when none is known.
pub fn any_holds(conditions: &[Condition], signals: &HashMap<&str, f64>) -> Option<bool> {
    let known: Vec<bool> = conditions.iter().filter_map(|c| c.holds(signals)).collect();
    (!known.is_empty()).then(|| known.contains(&true))
}

/// Whether all of `conditions` hold: `None` when one is unknown.
pub fn all_hold(conditions: &[Condition], signals: &HashMap<&str, f64>) -> Option<bool> {
    conditions
        .iter()
        .map(|c| c.holds(signals))
        .try_fold(true, |all, one| one.map(|h| all && h))
}

#[derive(Debug, Clone, PartialEq)]
pub struct ThresholdRule {
    pub name: String,
    /// Any of these holding (for `for_ms`) fires the rule.
    pub fire: Vec<Condition>,
    /// All of these must hold (for `clear_for_ms`) to resolve; `fire` no
    /// longer holding is not enough. Set them on the far side of the firing
    /// thresholds.
    pub clear: Vec<Condition>,
    pub for_ms: i64,
    pub clear_for_ms: i64,
}

/// Where one (rule, device) pair is in its lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Inactive,
    Pending {
        since: i64,
    },
    Firing {
        since: i64,
    },
    /// Firing, with the clearing condition holding since `since`.
    Clearing {
        fired_at: i64,
        since: i64,
    },
}

/// What the owner of an alert must do.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum AlertEvent {
    Fired { at: i64 },
    Resolved { at: i64, fired_at: i64 },
}

impl ThresholdRule {
    /// Moves `phase` on, given the signals as of `at`; returns the page or
    /// the resolve to send, if any.
    pub fn step(
        &self,
        phase: &mut Phase,
        signals: &HashMap<&str, f64>,
        at: i64,
    ) -> Option<AlertEvent> {
        let fire = any_holds(&self.fire, signals);
        let clear = all_hold(&self.clear, signals);
        match *phase {
            Phase::Inactive => {
                if fire == Some(true) {
                    *phase = Phase::Pending { since: at };
                    return self.step(phase, signals, at);
                }
                None
            }
            Phase::Pending { since } => match fire {
                Some(true) if at - since >= self.for_ms => {
                    *phase = Phase::Firing { since: at };
                    Some(AlertEvent::Fired { at })
                }
                Some(true) => None,
                _ => {
                    *phase = Phase::Inactive;
                    None
                }
            },
            Phase::Firing { since } => {
                if clear == Some(true) {
                    *phase = Phase::Clearing {
                        fired_at: since,
                        since: at,
                    };
                    return self.step(phase, signals, at);
                }
                None
            }
            Phase::Clearing { fired_at, since } => {
                if clear != Some(true) {
                    *phase = Phase::Firing { since: fired_at };
                    return None;
                }
                if at - since >= self.clear_for_ms {
                    *phase = Phase::Inactive;
                    return Some(AlertEvent::Resolved { at, fired_at });
                }
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: i64 = 60_000;

    fn battery_low() -> ThresholdRule {
        ThresholdRule {
            name: "battery_low".into(),
            fire: vec![Condition {
                signal: "battery_level_pct",
                cmp: Cmp::Below(15.0),
                unless: Some("battery_charging"),
            }],
            clear: vec![Condition {
                signal: "battery_level_pct",
                cmp: Cmp::Above(20.0),
                unless: None,
            }],
            for_ms: 5 * MIN,
            clear_for_ms: MIN,
        }
    }

    fn signals(level: f64, charging: bool) -> HashMap<&'static str, f64> {
        HashMap::from([
            ("battery_level_pct", level),
            ("battery_charging", if charging { 1.0 } else { 0.0 }),
        ])
    }

    /// Feeds (minute, level, charging) samples; returns the events.
    fn run(rule: &ThresholdRule, samples: &[(i64, f64, bool)]) -> Vec<AlertEvent> {
        let mut phase = Phase::Inactive;
        samples
            .iter()
            .filter_map(|(m, level, charging)| {
                rule.step(&mut phase, &signals(*level, *charging), m * MIN)
            })
            .collect()
    }

    #[test]
    fn a_draining_battery_pages_once_after_the_for_duration_and_resolves_once_charged() {
        let mut samples: Vec<(i64, f64, bool)> =
            (0..30).map(|m| (m, 30.0 - m as f64, false)).collect();
        // Plugged in at minute 30, climbing a point a minute from 11 %.
        samples.extend((30..50).map(|m| (m, 11.0 + (m - 30) as f64, true)));
        let events = run(&battery_low(), &samples);
        // Under 15 % from minute 16; five minutes later it fires; charging
        // does not resolve it until the level is above 20 % (minute 40) for
        // a minute.
        assert_eq!(
            events,
            [
                AlertEvent::Fired { at: 21 * MIN },
                AlertEvent::Resolved {
                    at: 41 * MIN,
                    fired_at: 21 * MIN
                }
            ],
            "fired once, resolved once"
        );
    }

    #[test]
    fn a_level_flapping_around_the_threshold_does_not_page_repeatedly() {
        // 14 / 16 / 14 / 16 …: never five minutes below 15 % in a row.
        let flapping: Vec<_> = (0..60)
            .map(|m| (m, if m % 2 == 0 { 14.0 } else { 16.0 }, false))
            .collect();
        assert!(run(&battery_low(), &flapping).is_empty());

        // Firing, then flapping between 18 and 22: no resolve until it stays
        // above 20 % for the clearing minute.
        let mut samples: Vec<_> = (0..10).map(|m| (m, 10.0, false)).collect();
        samples.extend((10..30).map(|m| (m, if m % 2 == 0 { 22.0 } else { 18.0 }, false)));
        samples.extend((30..33).map(|m| (m, 25.0, false)));
        let events = run(&battery_low(), &samples);
        assert_eq!(
            events,
            [
                AlertEvent::Fired { at: 5 * MIN },
                AlertEvent::Resolved {
                    at: 31 * MIN,
                    fired_at: 5 * MIN
                }
            ]
        );
    }

    #[test]
    fn charging_excuses_a_low_battery_and_unknown_signals_never_fire() {
        let charging: Vec<_> = (0..30).map(|m| (m, 5.0, true)).collect();
        assert!(run(&battery_low(), &charging).is_empty());
        let mut phase = Phase::Inactive;
        assert_eq!(battery_low().step(&mut phase, &HashMap::new(), 0), None);
        assert_eq!(phase, Phase::Inactive);
    }

    #[test]
    fn any_of_several_conditions_fires_and_all_must_clear() {
        let rssi = |cmp| Condition {
            signal: "rssi_dbm",
            cmp,
            unless: None,
        };
        let latency = |cmp| Condition {
            signal: "payment_host_latency_ms",
            cmp,
            unless: None,
        };
        let fire = [rssi(Cmp::Below(-100.0)), latency(Cmp::Above(1500.0))];
        let clear = [rssi(Cmp::Above(-95.0)), latency(Cmp::Below(1000.0))];
        let s = |r: f64, l: f64| HashMap::from([("rssi_dbm", r), ("payment_host_latency_ms", l)]);
        assert_eq!(any_holds(&fire, &s(-80.0, 2000.0)), Some(true));
        assert_eq!(any_holds(&fire, &s(-80.0, 200.0)), Some(false));
        assert_eq!(all_hold(&clear, &s(-80.0, 1200.0)), Some(false));
        assert_eq!(all_hold(&clear, &s(-80.0, 200.0)), Some(true));
        let only_rssi = HashMap::from([("rssi_dbm", -120.0)]);
        assert_eq!(any_holds(&fire, &only_rssi), Some(true));
        assert_eq!(
            all_hold(&clear, &only_rssi),
            None,
            "unknown latency: cannot clear"
        );
        assert_eq!(any_holds(&fire, &HashMap::new()), None);
    }

    #[test]
    fn an_immediate_rule_fires_on_the_first_sample() {
        let tamper = ThresholdRule {
            name: "tamper".into(),
            fire: vec![Condition {
                signal: "tamper_detected",
                cmp: Cmp::Above(0.5),
                unless: None,
            }],
            clear: vec![Condition {
                signal: "tamper_detected",
                cmp: Cmp::Below(0.5),
                unless: None,
            }],
            for_ms: 0,
            clear_for_ms: 0,
        };
        let mut phase = Phase::Inactive;
        let on = HashMap::from([("tamper_detected", 1.0)]);
        let off = HashMap::from([("tamper_detected", 0.0)]);
        assert_eq!(
            tamper.step(&mut phase, &on, 7),
            Some(AlertEvent::Fired { at: 7 })
        );
        assert_eq!(tamper.step(&mut phase, &on, 8), None);
        assert_eq!(
            tamper.step(&mut phase, &off, 9),
            Some(AlertEvent::Resolved { at: 9, fired_at: 7 })
        );
    }
}
