//! The one acking MQTT consumer of device topics: connect, subscribe on
//! every connect, notice refusals, hand each message on with its ack
//! token, ack only what the handler gives back as done, reconnect.
//!
//! The handler (the gateway's pipeline, the alerter) reads [`Incoming`]
//! messages from a bounded channel and sends back, in order, the
//! [`AckToken`]s of what it has made durable (with any [`Notice`]s to
//! publish, as a [`Release`]). A full channel stops this
//! loop reading the socket, so the broker holds the rest: back-pressure,
//! never dropping. On shutdown the loop stops taking messages (the broker
//! redelivers them) and runs on only to send the last acks and the
//! DISCONNECT, which goes out once the handler closes its ack channel
//! (30 s at most).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use rumqttc::{
    AsyncClient, ConnectionError, Event, EventLoop, Outgoing, Packet, Publish, QoS,
    SubscribeReasonCode,
};
use tillwatch_config::MqttConfig;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tracing::{error, info, warn};

use crate::session::{SessionError, session, subscriptions};

/// What the broker needs to forget a message once it is handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AckToken {
    pub pkid: u16,
    pub qos: u8,
}

/// A message the handler asks the consumer to publish (QoS 0, not
/// retained): the gateway's notices to terminals of what is durable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    pub topic: String,
    pub payload: Bytes,
}

/// What the handler gives back, in order: the acks of messages it has made
/// durable, then notices to publish.
#[derive(Debug, Default)]
pub struct Release {
    pub acks: Vec<AckToken>,
    pub notices: Vec<Notice>,
}

impl From<Vec<AckToken>> for Release {
    fn from(acks: Vec<AckToken>) -> Release {
        Release {
            acks,
            notices: Vec::new(),
        }
    }
}

/// One message from the broker.
#[derive(Debug)]
pub struct Incoming {
    pub topic: String,
    pub payload: Bytes,
    /// `None` for QoS 0 messages, which need no ack.
    pub ack: Option<AckToken>,
}

/// Whether the consumer is connected and subscribed (what `/readyz` of a
/// gateway reports).
#[derive(Debug, Default)]
pub struct BusHealth {
    connected: AtomicBool,
    subscribed: AtomicBool,
}

impl BusHealth {
    pub fn is_ready(&self) -> bool {
        self.connected.load(Ordering::SeqCst) && self.subscribed.load(Ordering::SeqCst)
    }

    pub fn is_subscribed(&self) -> bool {
        self.subscribed.load(Ordering::SeqCst)
    }

    fn set(&self, connected: bool, subscribed: bool, observer: &dyn BusObserver) {
        self.connected.store(connected, Ordering::SeqCst);
        self.subscribed.store(subscribed, Ordering::SeqCst);
        observer.ready(connected && subscribed);
    }
}

/// What a consumer reports as it goes, for its owner's metrics (the
/// gateway counts them under its own names). Every method does nothing
/// unless overridden.
pub trait BusObserver: Send + Sync {
    /// Connected and subscribed, or not any more.
    fn ready(&self, _ready: bool) {}
    fn connection_error(&self) {}
    /// A message the broker sent again (the DUP flag).
    fn redelivered(&self) {}
    fn acked(&self, _count: usize) {}
}

/// An observer that reports nothing.
pub struct Unobserved;

impl BusObserver for Unobserved {}

/// Why the consumer stopped before it was asked to.
#[derive(Debug, thiserror::Error)]
pub enum ConsumerError {
    #[error(transparent)]
    Session(#[from] SessionError),
    #[error(
        "broker {broker} refused the connection ({reason}); check mqtt.username, mqtt.password and the client id"
    )]
    Refused { broker: String, reason: String },
    #[error("the broker refused the subscription to {0}; check its ACLs")]
    Subscribe(String),
}

/// Who the consumer is on the broker.
#[derive(Debug, Clone)]
pub struct ConsumerConfig {
    pub mqtt: MqttConfig,
    /// Fixed: the broker keeps the persistent session under it.
    pub client_id: String,
    /// Subscribe as `$share/<group>/…` (gateways splitting the stream).
    pub shared_group: Option<String>,
}

/// Runs the consumer until `shutdown` has turned true and the handler has
/// closed `acks` (then the DISCONNECT is sent), or until the connection is
/// refused at first or the subscription is refused. `input` is dropped on
/// the way out, so a handler reading it sees the end.
pub async fn consume(
    config: ConsumerConfig,
    health: Arc<BusHealth>,
    observer: Arc<dyn BusObserver>,
    input: mpsc::Sender<Incoming>,
    acks: mpsc::UnboundedReceiver<Release>,
    shutdown: watch::Receiver<bool>,
) -> Result<(), ConsumerError> {
    let (client, eventloop) = session(&config.mqtt, &config.client_id)?;
    let acker = tokio::spawn(ack_task(client.clone(), acks, observer.clone()));
    let polled = poll_loop(
        client, eventloop, &config, &health, &*observer, input, shutdown,
    )
    .await;
    acker.abort();
    health.set(false, false, &*observer);
    polled
}

/// Sends the acks the handler releases, in order, and its notices;
/// disconnects cleanly once the handler has finished and every ack is
/// queued.
async fn ack_task(
    client: AsyncClient,
    mut releases: mpsc::UnboundedReceiver<Release>,
    observer: Arc<dyn BusObserver>,
) {
    while let Some(Release {
        acks: tokens,
        notices,
    }) = releases.recv().await
    {
        for token in &tokens {
            let qos = match token.qos {
                2 => QoS::ExactlyOnce,
                _ => QoS::AtLeastOnce,
            };
            let mut publish = Publish::new("", qos, Vec::new());
            publish.pkid = token.pkid;
            if client.ack(&publish).await.is_err() {
                // The event loop is gone; the broker redelivers what was
                // not acked.
                return;
            }
        }
        observer.acked(tokens.len());
        for notice in notices {
            // At most once: a lost notice costs the terminal a resend.
            if client
                .publish_bytes(notice.topic, QoS::AtMostOnce, false, notice.payload)
                .await
                .is_err()
            {
                return;
            }
        }
    }
    let _ = client.disconnect().await;
}

/// How long the last acks may take once shutdown begins.
const STOP_GRACE: Duration = Duration::from_secs(30);

async fn poll_loop(
    client: AsyncClient,
    mut eventloop: EventLoop,
    config: &ConsumerConfig,
    health: &BusHealth,
    observer: &dyn BusObserver,
    input: mpsc::Sender<Incoming>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), ConsumerError> {
    let broker = &config.mqtt.broker;
    let filters = subscriptions(config.shared_group.as_deref());
    let mut ever_connected = false;
    let mut failing_since: Option<Instant> = None;
    // Set once shutdown begins: from then on publishes are left unacked
    // for the broker to redeliver, and the loop only runs to send the last
    // acks and the disconnect.
    let mut stop_by: Option<Instant> = None;
    loop {
        let stopping = stop_by.is_some();
        let event = tokio::select! {
            event = eventloop.poll() => event,
            _ = shutdown.wait_for(|s| *s), if !stopping => {
                stop_by = Some(Instant::now() + STOP_GRACE);
                continue;
            }
            _ = tokio::time::sleep_until(stop_by.unwrap_or_else(Instant::now)), if stopping => {
                warn!("gave up waiting to send the last acks; the broker will redeliver those messages");
                break;
            }
        };
        match event {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                ever_connected = true;
                if failing_since.take().is_some() {
                    info!(%broker, client_id = %config.client_id, "reconnected to the broker");
                } else {
                    info!(%broker, client_id = %config.client_id, session_present = ack.session_present, "connected to the broker");
                }
                health.set(true, false, observer);
                // Re-assert the subscriptions on every connect: a resumed
                // session keeps them, but a changed filter or a broker that
                // lost its state would otherwise go unnoticed.
                if let Err(e) = client.try_subscribe_many(filters.clone()) {
                    error!(error = %e, "could not queue the subscription");
                }
            }
            Ok(Event::Incoming(Packet::SubAck(ack))) => {
                let paths = || filters.iter().map(|f| f.path.as_str()).collect::<Vec<_>>();
                if ack
                    .return_codes
                    .iter()
                    .any(|c| matches!(c, SubscribeReasonCode::Failure))
                {
                    return Err(ConsumerError::Subscribe(paths().join(", ")));
                }
                info!(filters = ?paths(), client_id = %config.client_id, "subscribed");
                health.set(true, true, observer);
            }
            Ok(Event::Incoming(Packet::Publish(publish))) => {
                if stopping {
                    continue;
                }
                if publish.dup {
                    observer.redelivered();
                }
                let ack = match publish.qos {
                    QoS::AtMostOnce => None,
                    QoS::AtLeastOnce => Some(AckToken {
                        pkid: publish.pkid,
                        qos: 1,
                    }),
                    QoS::ExactlyOnce => Some(AckToken {
                        pkid: publish.pkid,
                        qos: 2,
                    }),
                };
                let message = Incoming {
                    topic: publish.topic,
                    payload: publish.payload,
                    ack,
                };
                // Waits while the handler's channel is full: back-pressure
                // reaches the broker because this loop stops reading. The
                // usual case, room in the channel, skips the select.
                let message = match input.try_send(message) {
                    Ok(()) => continue,
                    Err(mpsc::error::TrySendError::Full(message)) => message,
                    Err(mpsc::error::TrySendError::Closed(_)) => {
                        stop_by.get_or_insert_with(|| Instant::now() + STOP_GRACE);
                        continue;
                    }
                };
                tokio::select! {
                    sent = input.send(message) => {
                        if sent.is_err() {
                            stop_by.get_or_insert_with(|| Instant::now() + STOP_GRACE);
                        }
                    }
                    _ = shutdown.wait_for(|s| *s) => {
                        stop_by.get_or_insert_with(|| Instant::now() + STOP_GRACE);
                    }
                }
            }
            Ok(Event::Outgoing(Outgoing::Disconnect)) => {
                info!(client_id = %config.client_id, "disconnected from the broker");
                break;
            }
            Ok(_) => {}
            Err(e) => {
                health.set(false, false, observer);
                if stopping {
                    break;
                }
                observer.connection_error();
                if let ConnectionError::ConnectionRefused(code) = &e
                    && !ever_connected
                {
                    return Err(ConsumerError::Refused {
                        broker: broker.clone(),
                        reason: format!("{code:?}"),
                    });
                }
                if failing_since.is_none() {
                    failing_since = Some(Instant::now());
                    warn!(%broker, error = %e, "broker connection lost; retrying every second");
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = shutdown.wait_for(|s| *s) => break,
                }
            }
        }
    }
    Ok(())
}
