//! The MQTT session every Tillwatch consumer of device topics holds: a
//! persistent session (fixed client id, no clean start) with manual acks,
//! subscribed to every device channel.

use rumqttc::{AsyncClient, EventLoop, MqttOptions, QoS, SubscribeFilter};
use tillwatch_config::{BrokerAddr, MqttConfig};
use tillwatch_proto::topic::Channel;

/// Why a session could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("mqtt.broker: {0}")]
    Broker(#[from] tillwatch_config::BrokerUrlError),
    #[error("MQTT over TLS: {0}")]
    Tls(#[from] tillwatch_proto::tls::TlsError),
}

/// Largest packet the client accepts: MQTT's own maximum. Oversized
/// payloads must reach the decoder to be dead-lettered; a client-side limit
/// would drop the connection and the broker would redeliver the same
/// message forever.
const MAX_INCOMING_PACKET: usize = 268_435_455;

/// How long a write to the broker may wait before the connection counts as
/// lost. rumqttc's default (5 s) is far too short under load: a broker
/// busy with a backlog reads its clients' acks slowly, and dropping the
/// connection then makes it resend every unacked message, more load on a
/// broker already behind, and the consumer never catches up. A dead peer
/// is still found by the keep-alive.
const BROKER_WRITE_TIMEOUT_SECS: u64 = 120;

/// A persistent session (fixed `client_id`, no clean start) with manual
/// acks on the configured broker: what every Tillwatch consumer of device
/// topics uses, so nothing is acked before it is handled. Acks queue in a
/// large request channel while the event loop is busy.
pub fn session(
    config: &MqttConfig,
    client_id: &str,
) -> Result<(AsyncClient, EventLoop), SessionError> {
    let addr = BrokerAddr::parse(&config.broker)?;
    let mut options = MqttOptions::new(client_id, addr.host, addr.port);
    options
        .set_clean_session(false)
        .set_manual_acks(true)
        .set_keep_alive(config.keep_alive)
        .set_max_packet_size(MAX_INCOMING_PACKET, 1024 * 1024);
    if let Some(user) = &config.username {
        options.set_credentials(user.clone(), config.password.clone().unwrap_or_default());
    }
    if addr.tls {
        options.set_transport(tillwatch_proto::tls::client_transport(
            config.ca_file.as_deref(),
        )?);
    }
    let (client, mut eventloop) = AsyncClient::new(options, 16 * 1024);
    let mut network = rumqttc::NetworkOptions::new();
    network.set_connection_timeout(BROKER_WRITE_TIMEOUT_SECS);
    eventloop.set_network_options(network);
    Ok((client, eventloop))
}

/// QoS 1 filters for every device channel (telemetry, status, info), in
/// the shared group `shared_group` when given.
pub fn subscriptions(shared_group: Option<&str>) -> Vec<SubscribeFilter> {
    Channel::ALL
        .iter()
        .map(|c| {
            let filter = c.filter();
            let path = match shared_group {
                Some(group) => format!("$share/{group}/{filter}"),
                None => filter,
            };
            SubscribeFilter::new(path, QoS::AtLeastOnce)
        })
        .collect()
}
