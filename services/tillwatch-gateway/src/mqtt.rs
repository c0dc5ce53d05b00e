//! The MQTT side: a persistent session with manual acks, the poll loop, and
//! the task that sends acks once the pipeline says the data is durable.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use metrics::{counter, gauge};
use rumqttc::{
    AsyncClient, ConnectionError, Event, EventLoop, Outgoing, Packet, Publish, QoS,
    SubscribeReasonCode,
};
use tillwatch_bus::subscriptions;
use tillwatch_config::MqttConfig;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tracing::{error, info, warn};

use crate::GatewayError;
use crate::metrics as m;
use crate::pipeline::{AckToken, Incoming};

/// Whether the gateway is connected and subscribed; read by `/readyz`.
#[derive(Debug, Default)]
pub struct GatewayHealth {
    connected: AtomicBool,
    subscribed: AtomicBool,
}

impl GatewayHealth {
    pub fn is_ready(&self) -> bool {
        self.connected.load(Ordering::SeqCst) && self.subscribed.load(Ordering::SeqCst)
    }

    fn set(&self, connected: bool, subscribed: bool) {
        self.connected.store(connected, Ordering::SeqCst);
        self.subscribed.store(subscribed, Ordering::SeqCst);
        gauge!(m::BROKER_CONNECTED).set(if connected && subscribed { 1.0 } else { 0.0 });
    }
}

/// Sends acks released by the pipeline, in order; disconnects cleanly once
/// the pipeline has finished and every ack is queued.
pub(crate) async fn ack_task(
    client: AsyncClient,
    mut acks: mpsc::UnboundedReceiver<Vec<AckToken>>,
) {
    while let Some(tokens) = acks.recv().await {
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
        counter!(m::ACKS_SENT).increment(tokens.len() as u64);
    }
    let _ = client.disconnect().await;
}

/// Polls the broker connection until shutdown has drained the pipeline and
/// the disconnect is sent.
pub(crate) async fn poll_loop(
    client: AsyncClient,
    mut eventloop: EventLoop,
    config: MqttConfig,
    health: Arc<GatewayHealth>,
    input: mpsc::Sender<Incoming>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), GatewayError> {
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
                stop_by = Some(Instant::now() + Duration::from_secs(30));
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
                    info!(broker = %config.broker, "reconnected to the broker");
                } else {
                    info!(broker = %config.broker, session_present = ack.session_present, "connected to the broker");
                }
                health.set(true, false);
                // Re-assert the subscriptions on every connect: a resumed
                // session keeps them, but a changed filter or a broker that
                // lost its state would otherwise go unnoticed.
                if let Err(e) = client.try_subscribe_many(filters.clone()) {
                    error!(error = %e, "could not queue the subscription");
                }
            }
            Ok(Event::Incoming(Packet::SubAck(ack))) => {
                if ack
                    .return_codes
                    .iter()
                    .any(|c| matches!(c, SubscribeReasonCode::Failure))
                {
                    return Err(GatewayError::Subscribe(
                        filters
                            .iter()
                            .map(|f| f.path.clone())
                            .collect::<Vec<_>>()
                            .join(", "),
                    ));
                }
                info!(filters = ?filters.iter().map(|f| &f.path).collect::<Vec<_>>(), "subscribed");
                health.set(true, true);
            }
            Ok(Event::Incoming(Packet::Publish(publish))) => {
                if stopping {
                    continue;
                }
                if publish.dup {
                    counter!(m::REDELIVERIES).increment(1);
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
                // Blocks while the pipeline's buffer is full: back-pressure
                // reaches the broker because this loop stops reading. The
                // usual case, room in the channel, skips the select.
                let message = match input.try_send(message) {
                    Ok(()) => continue,
                    Err(mpsc::error::TrySendError::Full(message)) => message,
                    Err(mpsc::error::TrySendError::Closed(_)) => {
                        stop_by.get_or_insert_with(|| Instant::now() + Duration::from_secs(30));
                        continue;
                    }
                };
                tokio::select! {
                    sent = input.send(message) => {
                        if sent.is_err() {
                            stop_by.get_or_insert_with(|| Instant::now() + Duration::from_secs(30));
                        }
                    }
                    _ = shutdown.wait_for(|s| *s) => {
                        stop_by.get_or_insert_with(|| Instant::now() + Duration::from_secs(30));
                    }
                }
            }
            Ok(Event::Outgoing(Outgoing::Disconnect)) => {
                info!("disconnected from the broker");
                break;
            }
            Ok(_) => {}
            Err(e) => {
                health.set(false, false);
                if stopping {
                    break;
                }
                counter!(m::BROKER_CONNECTION_ERRORS).increment(1);
                if let ConnectionError::ConnectionRefused(code) = &e
                    && !ever_connected
                {
                    return Err(GatewayError::Refused {
                        broker: config.broker.clone(),
                        reason: format!("{code:?}"),
                    });
                }
                if failing_since.is_none() {
                    failing_since = Some(Instant::now());
                    warn!(broker = %config.broker, error = %e, "broker connection lost; retrying every second");
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = shutdown.wait_for(|s| *s) => break,
                }
            }
        }
    }
    health.set(false, false);
    Ok(())
}
