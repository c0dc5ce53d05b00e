//! Correlation: terminals of one store offline together are one store
//! alert, stores of one merchant one merchant alert; the grouped alert
//! holds back its members' pages.

use std::collections::{BTreeMap, HashMap};

use tillwatch_meta::AlertState;

use super::catalog::{cond, ms};
use super::lifecycle::{Draft, phase_of};
use super::{Changes, Engine, FLEET, INGEST_OUTAGE, MERCHANT_OFFLINE, OFFLINE, STORE_OFFLINE};
use crate::rules::{Cmp, Phase, ThresholdRule};

/// What a grouped alert is about. Stored (and shown) as text:
/// `store:<merchant>/<store>` and `merchant:<merchant>`; a device's alerts
/// have the device id as their subject.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subject {
    Store { merchant: String, store: String },
    Merchant(String),
}

impl Subject {
    /// The subject of an alert of `rule`, from its stored text: `None` for
    /// a rule that is not a grouped one, or text that is not its form.
    pub fn parse(rule: &str, text: &str) -> Option<Subject> {
        match rule {
            STORE_OFFLINE => {
                let (merchant, store) = text.strip_prefix("store:")?.split_once('/')?;
                Some(Subject::Store {
                    merchant: merchant.to_string(),
                    store: store.to_string(),
                })
            }
            MERCHANT_OFFLINE => Some(Subject::Merchant(
                text.strip_prefix("merchant:")?.to_string(),
            )),
            _ => None,
        }
    }

    pub fn store(merchant: &str, store: &str) -> Subject {
        Subject::Store {
            merchant: merchant.to_string(),
            store: store.to_string(),
        }
    }

    /// The merchant the subject belongs to.
    pub fn merchant(&self) -> &str {
        match self {
            Subject::Store { merchant, .. } | Subject::Merchant(merchant) => merchant,
        }
    }

    /// The (rule, subject) key of its alert.
    pub(super) fn key(&self) -> (String, String) {
        let rule = match self {
            Subject::Store { .. } => STORE_OFFLINE,
            Subject::Merchant(_) => MERCHANT_OFFLINE,
        };
        (rule.to_string(), self.to_string())
    }
}

impl std::fmt::Display for Subject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Subject::Store { merchant, store } => write!(f, "store:{merchant}/{store}"),
            Subject::Merchant(merchant) => write!(f, "merchant:{merchant}"),
        }
    }
}

impl Engine {
    /// Applies a store or merchant alert's step: a firing alert whose list
    /// of members changed (`grown`) takes the new annotations; then the
    /// usual transition.
    /// Steps a grouped alert's rule over `signals`: its phase, whether the
    /// step resolved it, and whether a firing alert's list of members
    /// (the annotation `listing`, now `listed`) changed; `None` when
    /// nothing did.
    fn step_grouped(
        &self,
        key: &(String, String),
        rule: &ThresholdRule,
        signals: &HashMap<&str, f64>,
        (listing, listed): (&str, &str),
        now: i64,
    ) -> Option<(Phase, bool, bool)> {
        let current = self.open.get(key);
        let before = phase_of(current);
        let mut phase = before;
        let event = rule.step(&mut phase, signals, now);
        let grown = matches!(phase, Phase::Firing { .. })
            && current
                .is_some_and(|a| a.annotations.get(listing).map(String::as_str) != Some(listed));
        if phase == before && event.is_none() && !grown {
            return None;
        }
        let resolved = matches!(event, Some(crate::rules::AlertEvent::Resolved { .. }));
        Some((phase, resolved, grown))
    }

    pub(super) fn apply_grouped(
        &mut self,
        subject: &Subject,
        (phase, resolved, grown): (Phase, bool, bool),
        labels: BTreeMap<String, String>,
        annotations: BTreeMap<String, String>,
        now: i64,
        changes: &mut Changes,
    ) {
        let key = subject.key();
        if grown && let Some(record) = self.open.get_mut(&key) {
            record.annotations = annotations.clone();
        }
        let scope = match subject {
            Subject::Store { .. } => "store",
            Subject::Merchant(_) => "merchant",
        };
        let draft = Draft {
            key,
            scope: scope.into(),
            severity: self.correlation.severity,
            labels,
            annotations,
        };
        self.transition(draft, (phase, resolved), now, changes);
    }

    /// The fleet-wide drop: `fleet_min_devices` terminals and
    /// `fleet_min_fraction` of every terminal known went offline within
    /// the correlation window. One `ingest_outage` alert, which holds every
    /// merchant, store and terminal page under it; it resolves once fewer
    /// than that share are offline, for `clear_after`.
    pub(super) fn evaluate_fleet(&mut self, now: i64, changes: &mut Changes) {
        if !self.correlation.enabled {
            return;
        }
        let window = ms(self.correlation.window);
        let (mut known, mut offline, mut recent) = (0u32, 0u32, 0u32);
        for view in self.devices.values() {
            let Some((state, since)) = view.conn else {
                continue;
            };
            known += 1;
            if self.counts_as_offline(state) {
                offline += 1;
                if since >= now - window {
                    recent += 1;
                }
            }
        }
        let c = &self.correlation;
        let total = f64::from(known.max(1));
        // The alerter's own broker connection, down past the wait: no
        // terminal can be heard, which is one outage, not theirs.
        let deaf = self
            .deaf_since
            .filter(|since| now >= since.saturating_add(self.deaf_grace_ms()));
        let outage = deaf.is_some()
            || (recent >= c.fleet_min_devices && f64::from(recent) / total >= c.fleet_min_fraction);
        let over = self.deaf_since.is_none()
            && (offline < c.fleet_min_devices || f64::from(offline) / total < c.fleet_min_fraction);
        let signals = HashMap::from([
            ("fleet_outage", f64::from(u8::from(outage))),
            ("fleet_outage_over", f64::from(u8::from(over))),
        ]);
        let rule = ThresholdRule {
            name: INGEST_OUTAGE.into(),
            fire: vec![cond("fleet_outage", Cmp::Above(0.5), None)],
            clear: vec![cond("fleet_outage_over", Cmp::Above(0.5), None)],
            for_ms: 0,
            clear_for_ms: ms(self.correlation.clear_after),
        };
        let key = (INGEST_OUTAGE.to_string(), FLEET.to_string());
        // A firing alert follows the drop: how many are offline now.
        let summary = match self.deaf_since {
            Some(since) => format!(
                "the alerter has had no connection to the MQTT broker since {}: no \
                 terminal can be heard, so none is paged on its own until the broker \
                 is back",
                jiff::Timestamp::from_millisecond(since)
                    .map(|t| t.strftime("%Y-%m-%d %H:%M:%S UTC").to_string())
                    .unwrap_or_else(|_| since.to_string())
            ),
            None => format!(
                "{offline} of {known} terminals are offline, {recent} of them within {}: the \
                 cause is likely the broker, the network in front of it or the gateway, not \
                 the stores",
                humantime::format_duration(self.correlation.window)
            ),
        };
        let Some((phase, resolved, grown)) =
            self.step_grouped(&key, &rule, &signals, ("summary", &summary), now)
        else {
            return;
        };
        let labels = BTreeMap::from([("scope".to_string(), "fleet".to_string())]);
        let annotations = BTreeMap::from([
            ("summary".to_string(), summary),
            ("fleet_url".to_string(), self.page_url("", &[])),
        ]);
        if grown && let Some(record) = self.open.get_mut(&key) {
            record.annotations = annotations.clone();
        }
        let draft = Draft {
            key,
            scope: "fleet".into(),
            severity: self.correlation.severity,
            labels,
            annotations,
        };
        self.transition(draft, (phase, resolved), now, changes);
        // Hold back (or release) everything under it.
        let subjects: Vec<String> = self.open_rules.keys().cloned().collect();
        for subject in subjects {
            self.settle_subject(&subject, now, changes);
        }
    }

    /// A merchant alert while `merchant_min_stores` of its stores are out.
    pub(super) fn evaluate_merchant(&mut self, merchant: &str, now: i64, changes: &mut Changes) {
        let of_merchant = |rule: &str, subject: &str| match Subject::parse(rule, subject) {
            Some(Subject::Store { merchant: m, store }) if m == merchant => Some(store),
            _ => None,
        };
        let mut out: Vec<String> = self
            .open
            .values()
            .filter(|a| a.state == AlertState::Firing)
            .filter_map(|a| of_merchant(&a.rule, &a.subject))
            .collect();
        out.sort();
        let subject = Subject::Merchant(merchant.to_string());
        let key = subject.key();
        let min = self.correlation.merchant_min_stores as usize;
        let signals = HashMap::from([("stores_out", out.len() as f64)]);
        let rule = ThresholdRule {
            name: MERCHANT_OFFLINE.into(),
            fire: vec![cond("stores_out", Cmp::Above(min as f64 - 0.5), None)],
            clear: vec![cond("stores_out", Cmp::Below(min as f64 - 0.5), None)],
            for_ms: 0,
            clear_for_ms: ms(self.correlation.clear_after),
        };
        let listed = out.join(",");
        let Some(step) = self.step_grouped(&key, &rule, &signals, ("offline_stores", &listed), now)
        else {
            return;
        };
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
                self.page_url("merchant", &[("id", merchant)]),
            ),
        ]);
        self.apply_grouped(&subject, step, labels, annotations, now, changes);
        self.settle_subject(&key.1, now, changes);
        // Hold back (or release) its stores' and terminals' pages.
        let subjects: Vec<String> = self
            .open
            .keys()
            .filter(|(rule, subject)| {
                of_merchant(rule, subject).is_some()
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

    pub(super) fn evaluate_store(
        &mut self,
        merchant: &str,
        store: &str,
        now: i64,
        changes: &mut Changes,
    ) {
        if !self.correlation.enabled {
            return;
        }
        let subject = Subject::store(merchant, store);
        let key = subject.key();
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
            clear_for_ms: ms(self.correlation.clear_after),
        };
        names.truncate(50);
        // A firing store alert follows its outage: which terminals are down.
        let listed = names.join(",");
        let step = self.step_grouped(&key, &rule, &signals, ("offline_devices", &listed), now);
        if let Some(step) = step {
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
                    self.page_url("merchant", &[("id", merchant), ("store", store)]),
                ),
            ]);
            self.apply_grouped(&subject, step, labels, annotations, now, changes);
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
}
