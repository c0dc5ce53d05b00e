//! `run_alerter`: the alerter fed from MQTT, with delivery beside it. It
//! has a persistent session of its own on every device's status, info and
//! telemetry topics (never a shared group: it needs every device of a
//! store), acks a message once the store has taken what it said and the
//! alerts it changed, and wakes for the next deadline (a silent device, a
//! pending alert coming due, the evaluation interval).
//!
//! Alerters on one shared store take turns: only the holder of the
//! `alerter` lease connects, evaluates and delivers; the others stand by
//! and take over (under the same MQTT client id, so the broker hands them
//! what queued meanwhile) once the holder stops renewing it. So two
//! alerters never both page.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use metrics::counter;
use tillwatch_bus::decode::{DecodeLimits, Decoded, decode_provisioned};
use tillwatch_bus::provisioning::ProvisioningSource;
use tillwatch_bus::{AckToken, BusHealth, ConsumerConfig, Incoming, Release, consume};
use tillwatch_config::Config;
use tillwatch_domain::connectivity::{SilencePolicy, Transition};
use tillwatch_domain::{DeviceId, UtcMillis};
use tillwatch_meta::MetaStore;
use tracing::{error, info, warn};

use crate::deliver::{Receiver, run_delivery};
use crate::{Alerter, AlertingError, Event};

/// Most messages written to the store in one transaction.
const MAX_BATCH: usize = 1000;

/// Counter, by `to` (online, last_will, shutdown, silence).
pub const CONNECTIVITY_CHANGES: &str = "tillwatch_alerter_connectivity_changes_total";

#[derive(Debug, thiserror::Error)]
pub enum AlerterError {
    #[error(transparent)]
    Receiver(#[from] crate::deliver::ReceiverError),
    #[error(transparent)]
    Store(#[from] tillwatch_meta::MetaError),
    #[error(transparent)]
    Alerting(#[from] AlertingError),
    #[error(transparent)]
    Bus(#[from] tillwatch_bus::ConsumerError),
    #[error(transparent)]
    Provisioning(#[from] tillwatch_bus::provisioning::ProvisioningError),
}

/// Where alert annotations link to: `alerting.public_url`, else the HTTP
/// listener (https when it serves TLS). A listener on every interface has
/// no address a browser can open, so that case is warned about.
pub fn public_url(config: &Config) -> String {
    if let Some(url) = &config.alerting.public_url {
        return url.clone();
    }
    let http = &config.http;
    if http.listen.ip().is_unspecified() {
        tracing::warn!(
            listen = %http.listen,
            "alerting.public_url is not set and http.listen is every interface: \
             the links in alerts will not open; set alerting.public_url to the \
             address people reach Tillwatch at"
        );
    }
    let scheme = if http.tls_cert_file.is_some() {
        "https"
    } else {
        "http"
    };
    format!("{scheme}://{}", http.listen)
}

/// Retries `$op` (an expression giving a future of a `Result`) with
/// backoff until it succeeds (→ `Some`), or `$shutdown` resolves (→ `None`).
/// A macro, not a function over a closure: a closure returning a future
/// that borrows the alerter cannot be proven `Send` for every lifetime.
macro_rules! retrying {
    ($what:expr, $op:expr, $shutdown:expr) => {{
        let mut backoff = Duration::from_millis(100);
        loop {
            match $op.await {
                Ok(v) => break Some(v),
                Err(e) => {
                    error!(error = %e, retry_in = ?backoff, "{}", $what);
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = &mut $shutdown => break None,
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }};
}

/// How long a terminal may be silent before it counts as offline, as
/// `[alerter]` sets it.
pub fn silence_policy(config: &Config) -> SilencePolicy {
    let a = &config.alerter;
    SilencePolicy {
        gaps: a.silence_gaps,
        floor_ms: a.silence_floor.as_millis() as i64,
        ceiling_ms: a.silence_ceiling.as_millis() as i64,
        initial_gap_ms: a.silence_initial_gap.as_millis() as i64,
    }
}

fn to_event(decoded: Decoded, received_at: UtcMillis) -> Option<Event> {
    match decoded {
        Decoded::Telemetry {
            merchant_id,
            device_id,
            readings,
            ..
        } if !readings.is_empty() => Some(Event::Telemetry {
            merchant_id,
            device_id,
            readings,
            received_at,
        }),
        Decoded::Status(status) => Some(Event::Status {
            status,
            received_at,
        }),
        Decoded::Info(info) => Some(Event::Info(info)),
        _ => None,
    }
}

fn report(changes: &[(DeviceId, Transition)]) {
    for (device, t) in changes {
        counter!(CONNECTIVITY_CHANGES, "to" => t.to.as_str()).increment(1);
        // Routine: one line per change would drown the log of a fleet.
        tracing::debug!(
            device = %device,
            from = t.from.map(|s| s.as_str()).unwrap_or("unknown"),
            to = t.to.as_str(),
            at_ms = t.at.0,
            "connectivity changed"
        );
    }
}

/// The lease the active alerter holds.
pub const LEASE: &str = "alerter";

/// Gauge: 1 while this process is the active alerter, 0 on standby.
pub const ACTIVE: &str = "tillwatch_alerter_active";

/// Whether this alerter is subscribed to the broker (set on the broker's
/// SUBACK, cleared when the connection drops) or standing by while another
/// alerter holds the lease. Standalone lets terminals into its embedded
/// broker only once it is subscribed (see
/// `tillwatch_serve::EmbeddedBroker::open`); the alerter role's `/readyz`
/// answers from it.
#[derive(Debug, Default)]
pub struct AlerterHealth {
    /// The active alerter's consumer on the device bus.
    bus: Arc<BusHealth>,
    standby: std::sync::atomic::AtomicBool,
}

impl AlerterHealth {
    pub fn is_subscribed(&self) -> bool {
        self.bus.is_subscribed()
    }

    /// Subscribed, or a healthy standby.
    pub fn is_ready(&self) -> bool {
        self.is_subscribed() || self.standby.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn set_standby(&self, standby: bool) {
        self.standby
            .store(standby, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Tells the alerter loop when its consumer is subscribed and when its
/// connection drops (the silence of terminals it cannot hear is not
/// theirs).
struct Listening(tokio::sync::watch::Sender<bool>);

impl tillwatch_bus::BusObserver for Listening {
    fn ready(&self, ready: bool) {
        self.0.send_replace(ready);
    }
}

/// How a turn as the active alerter ended.
enum Turn {
    Stopped,
    LostLease,
}

/// Runs until `shutdown` resolves: on standby until it holds the
/// `alerter` lease, then as the active alerter for as long as it keeps it.
pub async fn run_alerter(
    config: &Config,
    store: MetaStore,
    health: Arc<AlerterHealth>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), AlerterError> {
    metrics::describe_counter!(
        CONNECTIVITY_CHANGES,
        "Device connectivity changes, by the state entered"
    );
    metrics::describe_counter!(
        crate::ALERTS_REFUSED,
        "Alert changes the metadata store refused and the alerter set aside, by rule"
    );
    metrics::describe_gauge!(
        ACTIVE,
        "1 while this alerter is the active one, 0 on standby"
    );
    let holder = config
        .alerter
        .name
        .clone()
        .unwrap_or_else(|| tillwatch_config::process_name("alerter"));
    let lease = config.alerter.lease;
    tokio::pin!(shutdown);
    loop {
        metrics::gauge!(ACTIVE).set(0.0);
        // Stand by until the lease is free (or lapsed).
        let mut announced = false;
        loop {
            let now = UtcMillis::now().0;
            match store
                .acquire_lease(LEASE, &holder, now, now + lease.as_millis() as i64)
                .await
            {
                Ok(true) => break,
                Ok(false) => {
                    health.set_standby(true);
                    if !announced {
                        let current = store.lease_holder(LEASE).await.ok().flatten();
                        info!(holder = ?current.map(|c| c.0), "another alerter is active; standing by");
                        announced = true;
                    }
                }
                Err(e) => {
                    warn!(error = %e, "cannot reach the metadata store for the alerter lease")
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(lease / 3) => {}
                _ = &mut shutdown => return Ok(()),
            }
        }
        health.set_standby(false);
        info!(%holder, "this alerter is now the active one");
        metrics::gauge!(ACTIVE).set(1.0);
        match lead(config, &store, &holder, &health, &mut shutdown).await? {
            Turn::Stopped => {
                if let Err(e) = store.release_lease(LEASE, &holder).await {
                    warn!(error = %e, "cannot give the alerter lease up; it lapses by itself");
                }
                metrics::gauge!(ACTIVE).set(0.0);
                info!("alerter stopped");
                return Ok(());
            }
            Turn::LostLease => {
                warn!(
                    "this alerter lost its lease (the metadata store was unreachable for too long, or it was too slow to renew); standing by"
                );
            }
        }
    }
}

/// One turn as the active alerter: until `shutdown`, or until the lease
/// cannot be renewed.
async fn lead(
    config: &Config,
    store: &MetaStore,
    holder: &str,
    health: &AlerterHealth,
    mut shutdown: &mut std::pin::Pin<&mut (impl Future<Output = ()> + Send)>,
) -> Result<Turn, AlerterError> {
    let lease = config.alerter.lease;
    let mut renew = tokio::time::interval(lease / 3);
    renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    renew.tick().await;
    let mut held_until = UtcMillis::now().0 + lease.as_millis() as i64;
    let mut lost = false;
    let receivers = config
        .alerting
        .all_receivers()
        .into_iter()
        .map(|r| Receiver::new(r, |var| std::env::var(var).ok()))
        .collect::<Result<Vec<_>, _>>()?;
    // The same record the gateway checks: a terminal cannot move itself to
    // another merchant's store here either.
    let provisioning = match &config.gateway.provisioning_file {
        Some(path) => Some(ProvisioningSource::open(path)?),
        None => None,
    };
    // Deaf until the first SUBACK: a terminal silent meanwhile (or while
    // no alerter ran) gets its allowed silence counted from then.
    let mut alerter = Alerter::open_listening(
        store.clone(),
        silence_policy(config),
        &config.alerting,
        &public_url(config),
        UtcMillis::now(),
        false,
    )
    .await?;
    info!(
        receivers = receivers.len(),
        devices_tracked = alerter.tracker().len(),
        "alerter ready"
    );
    let wake = Arc::new(tokio::sync::Notify::new());
    let (stop_delivery, mut delivery_stopped) = tokio::sync::watch::channel(());
    let delivery = tokio::spawn(run_delivery(
        store.clone(),
        receivers,
        wake.clone(),
        async move {
            let _ = delivery_stopped.changed().await;
        },
    ));

    // Its own session, never a shared group: it needs every device. The
    // consumer hands messages over as they come and acks what this loop
    // gives back once the store has it.
    let (input_tx, mut input) = tokio::sync::mpsc::channel::<Incoming>(MAX_BATCH);
    let (ack_tx, ack_rx) = tokio::sync::mpsc::unbounded_channel::<Release>();
    let (stop_consumer, consumer_stop) = tokio::sync::watch::channel(false);
    let stop_rx = consumer_stop.clone();
    let (listening_tx, mut listening) = tokio::sync::watch::channel(false);
    let consumer = tokio::spawn(consume(
        ConsumerConfig {
            mqtt: config.mqtt.clone(),
            client_id: config.alerter.client_id.clone(),
            shared_group: None,
        },
        health.bus.clone(),
        Arc::new(Listening(listening_tx)),
        input_tx,
        ack_rx,
        consumer_stop,
    ));
    let limits = DecodeLimits::from_config(&config.gateway);
    if let Some(source) = &provisioning {
        source.spawn_reloader(tillwatch_bus::provisioning::RELOAD_EVERY, stop_rx);
    }
    // Messages taken but not yet in the store, and their acks: written as
    // one batch as soon as no more are ready (or the batch is full).
    let mut batch: Vec<Event> = Vec::new();
    let mut batch_acks: Vec<AckToken> = Vec::new();
    loop {
        if alerter.take_changed() {
            wake.notify_one();
        }
        let next = alerter.next_deadline();
        let wake_at = tokio::time::Instant::now()
            + Duration::from_millis((next.0 - UtcMillis::now().0).max(0) as u64);
        let full = batch.len() >= MAX_BATCH;
        tokio::select! {
            biased;
            _ = &mut shutdown => break,
            _ = renew.tick() => {
                let now = UtcMillis::now().0;
                match store.acquire_lease(LEASE, holder, now, now + lease.as_millis() as i64).await {
                    Ok(true) => held_until = now + lease.as_millis() as i64,
                    Ok(false) => {
                        lost = true;
                        break;
                    }
                    Err(e) => {
                        warn!(error = %e, "cannot renew the alerter lease");
                        if now + (lease / 3).as_millis() as i64 >= held_until {
                            lost = true;
                            break;
                        }
                    }
                }
            }
            Ok(()) = listening.changed() => {
                let up = *listening.borrow_and_update();
                alerter.set_listening(up, UtcMillis::now());
            }
            message = input.recv(), if !full => match message {
                Some(message) => {
                    let now = UtcMillis::now();
                    let provisioned = provisioning.as_ref().map(ProvisioningSource::current);
                    let decoded = decode_provisioned(
                        &message.topic,
                        &message.payload,
                        now,
                        &limits,
                        provisioned.as_deref(),
                    );
                    batch.extend(to_event(decoded, now));
                    batch_acks.extend(message.ack);
                }
                // The consumer stopped on its own: the broker refused it.
                None => break,
            },
            // Nothing more ready (or the batch is full): store the batch.
            _ = std::future::ready(()), if !batch.is_empty() || !batch_acks.is_empty() => {
                // Not acked until the store has it; a stop leaves it for
                // the broker to redeliver.
                let handled = retrying!(
                    "cannot record device state",
                    alerter.handle_batch(&batch, UtcMillis::now()),
                    shutdown
                );
                let Some(changes) = handled else {
                    warn!("stopping while the metadata store fails; unstored messages stay unacked");
                    break;
                };
                report(&changes);
                if retrying!("cannot save alerts", alerter.flush(), shutdown).is_none() {
                    break;
                }
                batch.clear();
                let _ = ack_tx.send(std::mem::take(&mut batch_acks).into());
            }
            _ = tokio::time::sleep_until(wake_at) => {
                match alerter.tick(UtcMillis::now()).await {
                    Ok(changes) => report(&changes),
                    Err(e) => {
                        error!(error = %e, "evaluating alerts failed; retrying");
                        tokio::select! {
                            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                            _ = &mut shutdown => break,
                        }
                    }
                }
            }
        }
    }
    // The consumer stops taking messages, sends the acks queued, then the
    // DISCONNECT once this side's ack channel is closed (2 s at most here:
    // what is not acked by then is redelivered).
    let _ = stop_consumer.send(true);
    drop(ack_tx);
    drop(input);
    let consumed = match tokio::time::timeout(Duration::from_secs(2), consumer).await {
        Ok(Ok(result)) => result,
        Ok(Err(_)) | Err(_) => Ok(()),
    };
    drop(stop_delivery);
    let _ = delivery.await;
    consumed?;
    Ok(if lost { Turn::LostLease } else { Turn::Stopped })
}
