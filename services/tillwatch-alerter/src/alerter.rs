//! [`Alerter`]: the tracker (device state) and the engine (alerts) fed the
//! same events, with what they decide kept in the metadata store. Time is
//! passed in, so tests drive it with an injected clock.

use tillwatch_config::AlertingConfig;
use tillwatch_domain::connectivity::{SilencePolicy, Transition};
use tillwatch_domain::{DeviceId, UtcMillis};
use tillwatch_meta::{AlertFilter, AlertRecord, AlertState, MetaError, MetaStore, StoreRecord};

use crate::engine::{Changes, Engine};
use crate::{Event, Tracker, TrackerError};

#[derive(Debug, thiserror::Error)]
pub enum AlertingError {
    #[error(transparent)]
    StoreRecord(#[from] crate::engine::StoreRecordError),
    #[error(transparent)]
    Tracker(#[from] TrackerError),
    #[error(transparent)]
    Store(#[from] MetaError),
}

/// Counter, by `rule`: alert changes the metadata store refused and the
/// alerter set aside (see the log line for which); anything above zero
/// needs a look.
pub const ALERTS_REFUSED: &str = "tillwatch_alerter_alerts_refused_total";

pub struct Alerter {
    tracker: Tracker,
    engine: Engine,
    store: MetaStore,
    /// Alert changes not yet in the store.
    unsaved: Changes,
    sweep_every_ms: i64,
    next_sweep: i64,
    /// The newest store change applied (stores come from the configuration
    /// and from the merchant directory job, which may run elsewhere).
    stores_seen_ms: i64,
    /// The newest rollup rule evaluation applied.
    findings_seen_ms: i64,
    rollup_rules: tillwatch_config::RollupRulesConfig,
    /// Found by the scheduler, paged from here like the rollup rules.
    watermark_rule: tillwatch_config::PipelineRule,
    /// `job_failed` and `job_sla_missed`, found by the scheduler.
    job_rules: [tillwatch_config::PipelineRule; 2],
    /// Alerts changed in the store since [`Alerter::take_changed`].
    changed: bool,
}

impl Alerter {
    /// Resumes from the store: device states, open alerts, stores (the
    /// configuration's stores written first), silences.
    pub async fn open(
        store: MetaStore,
        policy: SilencePolicy,
        config: &AlertingConfig,
        public_url: &str,
        now: UtcMillis,
    ) -> Result<Alerter, AlertingError> {
        Alerter::open_listening(store, policy, config, public_url, now, true).await
    }

    /// [`Alerter::open`] for an alerter that is not subscribed yet
    /// (`listening` false): no terminal goes offline for a silence from
    /// before it hears the broker, so a restarted alerter does not take
    /// every terminal offline before its session's backlog arrives (see
    /// [`Alerter::set_listening`]).
    pub async fn open_listening(
        store: MetaStore,
        policy: SilencePolicy,
        config: &AlertingConfig,
        public_url: &str,
        now: UtcMillis,
        listening: bool,
    ) -> Result<Alerter, AlertingError> {
        for s in &config.stores {
            store
                .upsert_store(&StoreRecord {
                    merchant_id: s.merchant_id.clone(),
                    store_id: s.store_id.clone(),
                    name: s.name.clone(),
                    time_zone: s.time_zone.as_ref().map(|z| z.text().to_string()),
                    hours: Some(s.hours.text().to_string()),
                    updated_at_ms: now.0,
                })
                .await?;
        }
        let tracker = Tracker::open(store.clone(), policy).await?;
        let mut engine = Engine::new(config, public_url, now);
        let mut devices = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = store.devices(None, None, after.as_deref(), 1000).await?;
            let Some(last) = page.last() else { break };
            after = Some(last.device_id.clone());
            devices.extend(page);
        }
        for d in &devices {
            if let Ok(id) = DeviceId::new(&d.device_id)
                && let Some(conn) = tracker.state(&id)
                && let Some(state) = conn.state()
            {
                engine.restore_connectivity(&d.device_id, state, conn.since());
            }
        }
        let open = store.alerts(AlertFilter::Open, u32::MAX >> 1).await?;
        let stores = store.stores().await?;
        let stores_seen_ms = stores.iter().map(|s| s.updated_at_ms).max().unwrap_or(0);
        engine.restore(devices, open, stores)?;
        for (device, s) in store.all_latest_signals().await? {
            engine.restore_signal(&device, &s.signal, s.value, UtcMillis(s.sampled_at_ms));
        }
        let mut alerter = Alerter {
            tracker,
            engine,
            store,
            unsaved: Changes::default(),
            sweep_every_ms: config.evaluation_interval.as_millis() as i64,
            next_sweep: now.0,
            stores_seen_ms,
            findings_seen_ms: i64::MIN,
            rollup_rules: config.rollup_rules.clone(),
            watermark_rule: config.rules.ingest_watermark_stalled.clone(),
            job_rules: [
                config.rules.job_failed.clone(),
                config.rules.job_sla_missed.clone(),
            ],
            changed: false,
        };
        if !listening {
            alerter.set_listening(false, now);
        }
        alerter.tick(now).await?;
        Ok(alerter)
    }

    /// Applies one event. An error means nothing changed: retry with the
    /// same event. Alert changes the store did not take are kept: see
    /// [`Alerter::has_unsaved`].
    pub async fn handle(
        &mut self,
        event: Event,
        now: UtcMillis,
    ) -> Result<Vec<(DeviceId, Transition)>, AlertingError> {
        self.handle_batch(std::slice::from_ref(&event), now).await
    }

    /// [`Alerter::handle`] for many events: one store transaction for the
    /// device state, one for the alerts they changed.
    pub async fn handle_batch(
        &mut self,
        events: &[Event],
        now: UtcMillis,
    ) -> Result<Vec<(DeviceId, Transition)>, AlertingError> {
        let transitions = self.tracker.handle_batch(events).await?;
        let changes = &mut self.unsaved;
        for event in events {
            match event {
                Event::Info(info) => self.engine.on_info(info, now, changes),
                Event::Telemetry {
                    merchant_id,
                    device_id,
                    readings,
                    ..
                } => self.engine.on_readings(
                    merchant_id.as_str(),
                    device_id.as_str(),
                    readings,
                    now,
                    changes,
                ),
                Event::Status { .. } => {}
            }
        }
        for (device, t) in &transitions {
            self.engine
                .on_connectivity(device.as_str(), t.to, t.at, now, changes);
        }
        if let Err(e) = self.flush().await {
            tracing::warn!(error = %e, "alert changes not saved yet");
        }
        Ok(transitions)
    }

    /// Whether alert changes wait for the store: [`Alerter::flush`] before
    /// acking what caused them.
    pub fn has_unsaved(&self) -> bool {
        !self.unsaved.is_empty()
    }

    /// Writes alert changes not yet in the store.
    pub async fn flush(&mut self) -> Result<(), AlertingError> {
        if self.unsaved.is_empty() {
            return Ok(());
        }
        let saved: Vec<_> = self.unsaved.saved.values().cloned().collect();
        let dropped: Vec<_> = self.unsaved.dropped.iter().cloned().collect();
        match self.store.save_alerts(&saved).await {
            Ok(()) => {}
            // One change the store refuses would fail the whole batch the
            // same way on every retry, and the loop that retries it would
            // take no more messages: save them apart instead.
            Err(e) if e.is_refusal() => self.save_apart(&saved).await?,
            Err(e) => return Err(e.into()),
        }
        self.store.drop_alerts(&dropped).await?;
        self.unsaved = Changes::default();
        self.changed = true;
        Ok(())
    }

    /// Saves alerts one at a time, resolves first, and sets aside (logged,
    /// counted in [`ALERTS_REFUSED`]) each one the store refuses, such as an
    /// open alert of a rule and subject that another writer already holds
    /// open. A failure to reach the store stops it: the next flush saves the
    /// whole batch again (saving is idempotent).
    async fn save_apart(&self, alerts: &[AlertRecord]) -> Result<(), AlertingError> {
        let mut ordered: Vec<&AlertRecord> = alerts.iter().collect();
        ordered.sort_by_key(|a| a.state != AlertState::Resolved);
        for alert in ordered {
            match self.store.save_alerts(std::slice::from_ref(alert)).await {
                Ok(()) => {}
                Err(e) if e.is_refusal() => {
                    metrics::counter!(ALERTS_REFUSED, "rule" => alert.rule.clone()).increment(1);
                    tracing::error!(
                        alert_id = %alert.alert_id,
                        rule = %alert.rule,
                        subject = %alert.subject,
                        state = alert.state.as_str(),
                        error = %e,
                        "the metadata store refused an alert change; set aside so the rest are saved"
                    );
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// The clock reached `now`: silent devices go offline, pending alerts
    /// come due, and every `evaluation_interval` everything is re-evaluated
    /// with the silences as stored now.
    pub async fn tick(
        &mut self,
        now: UtcMillis,
    ) -> Result<Vec<(DeviceId, Transition)>, AlertingError> {
        let transitions = self.tracker.tick(now).await?;
        for (device, t) in &transitions {
            self.engine
                .on_connectivity(device.as_str(), t.to, t.at, now, &mut self.unsaved);
        }
        let due = self.engine.next_deadline().is_some_and(|d| d <= now);
        if now.0 >= self.next_sweep || due {
            let silences = self.store.silences(now.0).await?;
            for problem in self.engine.set_silences(silences) {
                tracing::warn!(%problem, "silence ignored");
            }
            if now.0 >= self.next_sweep {
                self.refresh_stores().await?;
                self.refresh_findings(now).await?;
            }
            self.engine.sweep(now, &mut self.unsaved);
            if now.0 >= self.next_sweep {
                self.next_sweep = now.0 + self.sweep_every_ms;
            }
        }
        self.flush().await?;
        Ok(transitions)
    }

    /// Applies store hours and time zones changed since the last look
    /// (changes in the same millisecond as the last are applied again,
    /// which is harmless). A store whose hours do not parse keeps its
    /// previous ones and is reported.
    async fn refresh_stores(&mut self) -> Result<(), AlertingError> {
        let changed = self
            .store
            .stores_updated_after(self.stores_seen_ms - 1)
            .await?;
        for s in changed {
            self.stores_seen_ms = self.stores_seen_ms.max(s.updated_at_ms);
            if let Err(problem) = self.engine.set_store(s) {
                tracing::warn!(%problem, "store ignored");
            }
        }
        Ok(())
    }

    /// Raises and resolves the alerts of the rules over the rollups whose
    /// findings changed since the last look (the scheduler writes them when
    /// a day's rollups complete, possibly in another process).
    async fn refresh_findings(&mut self, now: UtcMillis) -> Result<(), AlertingError> {
        use tillwatch_config::Severity;
        let r = &self.rollup_rules;
        let w = &self.watermark_rule;
        let [failed, late] = &self.job_rules;
        let rules: [(&str, bool, Severity); 6] = [
            ("ingest_watermark_stalled", w.enabled, w.severity),
            ("job_failed", failed.enabled, failed.severity),
            ("job_sla_missed", late.enabled, late.severity),
            (
                "cohort_regression",
                r.cohort_regression.enabled,
                r.cohort_regression.severity,
            ),
            (
                "chronic_poor_connectivity",
                r.chronic_poor_connectivity.enabled,
                r.chronic_poor_connectivity.severity,
            ),
            (
                "battery_health",
                r.battery_health.enabled,
                r.battery_health.severity,
            ),
        ];
        // Evaluations in the same millisecond as the last are applied again
        // (harmless: nothing changes), so none is missed.
        let after = self.findings_seen_ms.saturating_sub(1);
        for evaluation in self.store.evaluations_after(after).await? {
            self.findings_seen_ms = self.findings_seen_ms.max(evaluation.evaluated_at_ms);
            let Some((rule, enabled, severity)) =
                rules.iter().find(|(name, _, _)| *name == evaluation.rule)
            else {
                continue;
            };
            let findings = if *enabled {
                self.store.findings(rule).await?
            } else {
                Vec::new()
            };
            self.engine
                .set_rollup_findings(rule, *severity, findings, now, &mut self.unsaved);
        }
        Ok(())
    }

    /// This alerter's broker connection went down (`false`) or came back
    /// (`true`) at `now`: while it is down no terminal is silent on its
    /// account, and if it stays down past the correlation wait the one
    /// `ingest_outage` page says so (see [`Tracker::set_listening`]).
    pub fn set_listening(&mut self, listening: bool, now: UtcMillis) {
        let first = self.tracker.listening_since().is_none();
        if self.tracker.set_listening(listening, now) {
            self.engine.set_hearing(
                self.tracker.deaf_since().map(|t| t.0),
                self.tracker.listening_since().map(|t| t.0),
            );
            // Re-evaluated at once (the fleet alert starts clearing).
            self.next_sweep = self.next_sweep.min(now.0);
            match (listening, first) {
                (true, true) => {
                    tracing::debug!("the alerter hears the broker: silences count from now")
                }
                (true, false) => tracing::info!(
                    "the alerter hears the broker again: every online terminal has its allowed silence from now"
                ),
                (false, true) => {}
                (false, false) => tracing::warn!(
                    "the alerter lost the broker: no terminal goes offline by silence until it is back"
                ),
            }
        }
    }

    /// When [`Alerter::tick`] next has work.
    pub fn next_deadline(&mut self) -> UtcMillis {
        let mut next = self.next_sweep;
        if let Some(d) = self.tracker.next_deadline() {
            next = next.min(d.0);
        }
        if let Some(d) = self.engine.next_deadline() {
            next = next.min(d.0);
        }
        UtcMillis(next)
    }

    /// Whether alerts changed in the store since the last call: time to
    /// deliver.
    pub fn take_changed(&mut self) -> bool {
        std::mem::take(&mut self.changed)
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    pub fn tracker(&self) -> &Tracker {
        &self.tracker
    }

    pub fn store(&self) -> &MetaStore {
        &self.store
    }
}
