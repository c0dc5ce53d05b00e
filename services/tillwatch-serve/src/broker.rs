//! The in-process MQTT broker of standalone mode (rumqttd).

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use rumqttd::{Broker, Config, ConnectionSettings, RouterConfig, ServerSettings};
use tracing::info;

#[derive(Debug, thiserror::Error)]
pub enum EmbeddedBrokerError {
    #[error(
        "cannot listen for MQTT on {addr}: {source}; choose another address with --mqtt-listen"
    )]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("the embedded broker did not start listening on {0} within 10 s")]
    NotListening(SocketAddr),
    #[error("the embedded broker failed to start: {0}")]
    Start(String),
}

/// A running embedded broker. rumqttd offers no way to stop it: it lives
/// until the process exits.
pub struct EmbeddedBroker {
    addr: SocketAddr,
}

impl EmbeddedBroker {
    /// Unacknowledged messages rumqttd sends one client at most (its
    /// `MAX_INFLIGHT`, fixed in rumqttd 0.20 whatever the settings say).
    pub const MAX_INFLIGHT: usize = 100;

    /// Starts a broker on `listen` (port 0 picks a free port) and waits
    /// until it accepts connections.
    pub fn start(listen: SocketAddr, max_connections: usize) -> Result<Self, EmbeddedBrokerError> {
        // rumqttd binds on its own thread and only logs a failure, so bind
        // here first to report a taken port clearly and to resolve port 0.
        // The port is free again between this drop and rumqttd's bind: a
        // short window, acceptable for a local standalone process.
        let probe = TcpListener::bind(listen).map_err(|source| EmbeddedBrokerError::Bind {
            addr: listen,
            source,
        })?;
        let addr = probe
            .local_addr()
            .map_err(|source| EmbeddedBrokerError::Bind {
                addr: listen,
                source,
            })?;
        drop(probe);

        let server = ServerSettings {
            name: "tillwatch-embedded".into(),
            listen: addr,
            tls: None,
            next_connection_delay_ms: 0,
            connections: ConnectionSettings {
                connection_timeout_ms: 60_000,
                max_payload_size: 1024 * 1024,
                max_inflight_count: Self::MAX_INFLIGHT,
                auth: None,
                external_auth: None,
                dynamic_filters: true,
            },
        };
        let config = Config {
            id: 0,
            router: RouterConfig {
                max_connections,
                max_outgoing_packet_count: 200,
                max_segment_size: 100 * 1024 * 1024,
                max_segment_count: 10,
                custom_segment: None,
                initialized_filters: None,
                shared_subscriptions_strategy: Default::default(),
            },
            v4: Some(HashMap::from([("1".to_string(), server)])),
            ..Default::default()
        };
        let mut broker = Broker::new(config);
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("embedded-broker".into())
            .spawn(move || {
                // start() blocks for the broker's lifetime on success.
                if let Err(e) = broker.start() {
                    let _ = ready_tx.send(e.to_string());
                }
            })
            .map_err(|e| EmbeddedBrokerError::Start(e.to_string()))?;

        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(message) = ready_rx.try_recv() {
                return Err(EmbeddedBrokerError::Start(message));
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                break;
            }
            if Instant::now() > deadline {
                return Err(EmbeddedBrokerError::NotListening(addr));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        info!(%addr, "embedded MQTT broker listening");
        Ok(EmbeddedBroker { addr })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `mqtt://HOST:PORT` for clients.
    pub fn url(&self) -> String {
        format!("mqtt://{}", self.addr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_taken_port_names_the_flag_to_change() {
        let taken = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap();
        let err = EmbeddedBroker::start(addr, 10)
            .err()
            .expect("the port is taken")
            .to_string();
        assert!(err.contains("--mqtt-listen"), "{err}");
        assert!(err.contains(&addr.to_string()), "{err}");
    }
}
