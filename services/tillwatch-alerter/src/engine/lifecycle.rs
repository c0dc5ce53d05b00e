//! The alert lifecycle: a rule's step moves one (rule, subject) through
//! pending, firing, clearing and resolved; open alerts are held back for
//! their store's or merchant's, silenced, and marked for delivery.

use std::collections::{BTreeMap, BTreeSet};

use tillwatch_config::Severity;
use tillwatch_domain::UtcMillis;
use tillwatch_meta::{AlertRecord, AlertState, FindingRecord};

use super::catalog::{EXTRA_VALUES, shown};
use super::correlation::Subject;
use super::windows::DeviceView;
use super::{Changes, Engine, FLEET, INGEST_OUTAGE, MERCHANT_OFFLINE, OFFLINE, STORE_OFFLINE};
use crate::matchers::all_match;
use crate::rules::Phase;

pub(super) fn phase_of(record: Option<&AlertRecord>) -> Phase {
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

/// An alert as a rule's evaluation describes it, before its lifecycle
/// step: which (rule, subject), its scope, severity, labels and
/// annotations.
pub(super) struct Draft {
    pub(super) key: (String, String),
    pub(super) scope: String,
    pub(super) severity: Severity,
    pub(super) labels: BTreeMap<String, String>,
    pub(super) annotations: BTreeMap<String, String>,
}

impl Engine {
    pub(super) fn device_labels(
        &self,
        device_id: &str,
        view: &DeviceView,
    ) -> BTreeMap<String, String> {
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

    pub(super) fn evaluate_device(&mut self, device_id: &str, now: i64, changes: &mut Changes) {
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
            annotations.insert("device_url".into(), self.device_url(device_id));
            annotations.insert("summary".into(), summary);
            let draft = Draft {
                key,
                scope: "device".into(),
                severity,
                labels: labels.clone(),
                annotations,
            };
            self.transition(draft, (phase, resolved), now, changes);
        }
        if self.open_rules.contains_key(device_id) {
            self.settle_subject(device_id, now, changes);
        }
    }

    /// Moves one (rule, subject) to `phase` (`resolved`: its rule's step
    /// resolved it), creating, updating, resolving or dropping its record.
    pub(super) fn transition(
        &mut self,
        draft: Draft,
        (phase, resolved): (Phase, bool),
        now: i64,
        changes: &mut Changes,
    ) {
        let Draft {
            key,
            scope,
            severity,
            mut labels,
            annotations,
        } = draft;
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
                        labels: labels.clone(),
                        annotations: annotations.clone(),
                        ..AlertRecord::pending(
                            &key.0,
                            &key.1,
                            &scope,
                            severity.as_str(),
                            since,
                            now,
                        )
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

    pub(super) fn insert_open(&mut self, key: (String, String), record: AlertRecord) {
        self.open_rules
            .entry(key.1.clone())
            .or_default()
            .insert(key.0.clone());
        self.open.insert(key, record);
    }

    pub(super) fn remove_open(&mut self, key: &(String, String)) -> Option<AlertRecord> {
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
    pub(super) fn settle_subject(&mut self, subject: &str, now: i64, changes: &mut Changes) {
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
            // Still within the correlation wait: not paged yet, in case its
            // store's or merchant's outage forms.
            let waiting = self
                .correlation_wait_ends(record)
                .is_some_and(|end| now < end);
            // An alert whose cause is already gone (clearing) never starts
            // paging: released by a resolving fleet or merchant alert, it
            // would page an outage that is over.
            let clearing = record.clearing_since_ms.is_some();
            let notify = match record.state {
                AlertState::Firing
                    if silenced_by.is_none()
                        && (record.notify == Some(AlertState::Firing)
                            || (held_by.is_none() && !waiting && !clearing)) =>
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
    pub(super) fn holder(&self, (rule, subject): &(String, String)) -> Option<String> {
        let firing = |rule: &str, subject: String| {
            self.open
                .get(&(rule.to_string(), subject))
                .filter(|a| a.state == AlertState::Firing)
                .map(|a| a.alert_id.clone())
        };
        // Under everything, the fleet-wide drop.
        let fleet = || firing(INGEST_OUTAGE, FLEET.to_string());
        if rule == MERCHANT_OFFLINE {
            return fleet();
        }
        if rule == STORE_OFFLINE {
            let merchant = Subject::parse(rule, subject)?.merchant().to_string();
            return firing(MERCHANT_OFFLINE, Subject::Merchant(merchant).to_string())
                .or_else(fleet);
        }
        if rule != OFFLINE {
            return None;
        }
        let Some(view) = self.devices.get(subject) else {
            return fleet();
        };
        let store = view.store_id.as_ref().and_then(|s| {
            firing(
                STORE_OFFLINE,
                Subject::store(&view.merchant_id, s).to_string(),
            )
        });
        store
            .or_else(|| {
                firing(
                    MERCHANT_OFFLINE,
                    Subject::Merchant(view.merchant_id.clone()).to_string(),
                )
            })
            .or_else(fleet)
    }

    pub(super) fn silencer(&self, labels: &BTreeMap<String, String>, now: i64) -> Option<String> {
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
        now: UtcMillis,
        changes: &mut Changes,
    ) {
        let now = now.0;
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
            let draft = Draft {
                key,
                scope,
                severity,
                labels: BTreeMap::new(),
                annotations: BTreeMap::new(),
            };
            self.transition(draft, (Phase::Inactive, true), now, changes);
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
            // finding (a stalled gateway, a job's partition) is about now.
            if f.scope != "gateway" && f.scope != "job" {
                annotations.insert(
                    "day".to_string(),
                    jiff::Timestamp::from_millisecond(f.day_ms)
                        .map(|t| t.strftime("%Y-%m-%d").to_string())
                        .unwrap_or_default(),
                );
            }
            if f.scope == "device" {
                annotations.insert("device_url".into(), self.device_url(&f.subject));
            }
            if f.scope == "job" {
                annotations.insert("jobs_url".into(), self.jobs_url());
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
            let draft = Draft {
                key,
                scope: f.scope.clone(),
                severity,
                labels: f.labels,
                annotations,
            };
            self.transition(draft, (phase, false), now, changes);
            self.settle_subject(&f.subject, now, changes);
        }
    }
}
