//! The in-process MQTT broker of standalone mode (rumqttd), with optional
//! MQTT over TLS (terminated here, in front of rumqttd's plain listener) and
//! logins checked against a Mosquitto password file.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rumqttd::{Broker, Config, ConnectionSettings, RouterConfig, ServerSettings};
use tillwatch_config::EmbeddedBrokerConfig;
use tracing::{debug, info};

mod passwords;
pub use passwords::{PasswordFile, PasswordFileError};

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
    #[error("embedded_broker.password_file: {0}")]
    Passwords(#[from] PasswordFileError),
    #[error("embedded_broker TLS: {0}")]
    Tls(String),
}

/// A running embedded broker. rumqttd offers no way to stop it: it lives
/// until the process exits.
pub struct EmbeddedBroker {
    addr: SocketAddr,
    tls_addr: Option<SocketAddr>,
    /// The account Tillwatch's own clients log in with when logins are
    /// required.
    internal_login: Option<(String, String)>,
}

impl EmbeddedBroker {
    /// Unacknowledged messages rumqttd sends one client at most (its
    /// `MAX_INFLIGHT`, fixed in rumqttd 0.20 whatever the settings say).
    pub const MAX_INFLIGHT: usize = 100;

    /// Starts a broker on `listen` (port 0 picks a free port) and waits
    /// until it accepts connections: open, plain MQTT only.
    pub fn start(listen: SocketAddr, max_connections: usize) -> Result<Self, EmbeddedBrokerError> {
        EmbeddedBroker::start_with(&EmbeddedBrokerConfig {
            listen,
            max_connections,
            ..EmbeddedBrokerConfig::default()
        })
    }

    /// Starts a broker as `config` says: the plain listener, the TLS one
    /// when `tls_listen` is set, logins when `password_file` is set. Files
    /// are read (and errors reported, named) before anything listens.
    pub fn start_with(config: &EmbeddedBrokerConfig) -> Result<Self, EmbeddedBrokerError> {
        let accounts = match &config.password_file {
            Some(path) => {
                let file = PasswordFile::read(path)?;
                info!(accounts = file.len(), file = %path.display(), "MQTT logins required");
                Some(Arc::new((file, internal_login())))
            }
            None => None,
        };
        let acceptor = match (&config.tls_listen, &config.cert_file, &config.key_file) {
            (Some(_), Some(cert), Some(key)) => Some(tls_acceptor(cert, key)?),
            _ => None,
        };
        let listen = config.listen;
        let max_connections = config.max_connections;
        let tls_listen = config.tls_listen;
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

        let mut connections = ConnectionSettings {
            connection_timeout_ms: 60_000,
            max_payload_size: 1024 * 1024,
            max_inflight_count: Self::MAX_INFLIGHT,
            auth: None,
            external_auth: None,
            dynamic_filters: true,
        };
        if let Some(accounts) = &accounts {
            let accounts = accounts.clone();
            connections.set_auth_handler(move |client_id, username, password| {
                let accounts = accounts.clone();
                async move {
                    let (file, (user, pass)) = &*accounts;
                    let ok = (username == *user && password == *pass)
                        || file.verify(&username, &password);
                    if !ok {
                        info!(%client_id, %username, "MQTT login refused");
                    }
                    ok
                }
            });
        }
        let server = ServerSettings {
            name: "tillwatch-embedded".into(),
            listen: addr,
            tls: None,
            next_connection_delay_ms: 0,
            connections,
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
        let tls_addr = match (tls_listen, acceptor) {
            (Some(tls_listen), Some(acceptor)) => {
                let tls_addr = start_tls_front(tls_listen, addr, acceptor)?;
                info!(addr = %tls_addr, "embedded MQTT broker listening for TLS");
                Some(tls_addr)
            }
            _ => None,
        };
        Ok(EmbeddedBroker {
            addr,
            tls_addr,
            internal_login: accounts.map(|a| a.1.clone()),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Where it takes MQTT over TLS, when it does.
    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.tls_addr
    }

    /// `(username, password)` for Tillwatch's own clients in this process,
    /// when the broker requires logins.
    pub fn internal_login(&self) -> Option<&(String, String)> {
        self.internal_login.as_ref()
    }

    /// `mqtt://HOST:PORT` for clients.
    pub fn url(&self) -> String {
        format!("mqtt://{}", self.addr)
    }
}

/// An account for this process's own clients: a random name and password,
/// never written anywhere.
fn internal_login() -> (String, String) {
    use ring::rand::SecureRandom;
    let rng = ring::rand::SystemRandom::new();
    let mut bytes = [0u8; 32];
    rng.fill(&mut bytes)
        .expect("the system's random source works");
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    (
        format!("tillwatch-internal-{}", hex(&bytes[..4])),
        hex(&bytes[4..]),
    )
}

fn tls_acceptor(cert: &Path, key: &Path) -> Result<tokio_rustls::TlsAcceptor, EmbeddedBrokerError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let bad = |what: &str, path: &Path, e: &dyn std::fmt::Display| {
        EmbeddedBrokerError::Tls(format!("{what} {}: {e}", path.display()))
    };
    let chain = CertificateDer::pem_file_iter(cert)
        .map_err(|e| bad("cert_file", cert, &e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad("cert_file", cert, &e))?;
    if chain.is_empty() {
        return Err(bad("cert_file", cert, &"no PEM certificate in it"));
    }
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| bad("key_file", key, &e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| EmbeddedBrokerError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, key_der)
        .map_err(|e| bad("cert_file and key_file", cert, &e))?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// Takes TLS on `listen` and relays each connection, decrypted, to the
/// plain listener at `backend`, on threads of its own (like rumqttd's).
fn start_tls_front(
    listen: SocketAddr,
    backend: SocketAddr,
    acceptor: tokio_rustls::TlsAcceptor,
) -> Result<SocketAddr, EmbeddedBrokerError> {
    let bind_error = |source| EmbeddedBrokerError::Bind {
        addr: listen,
        source,
    };
    let listener = TcpListener::bind(listen).map_err(bind_error)?;
    listener.set_nonblocking(true).map_err(bind_error)?;
    let addr = listener.local_addr().map_err(bind_error)?;
    // A wildcard plain listener is reached on loopback.
    let backend = match backend.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), backend.port())
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::new(IpAddr::V6(std::net::Ipv6Addr::LOCALHOST), backend.port())
        }
        _ => backend,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("embedded-broker-tls")
        .enable_all()
        .build()
        .map_err(|e| EmbeddedBrokerError::Start(e.to_string()))?;
    std::thread::Builder::new()
        .name("embedded-broker-tls".into())
        .spawn(move || {
            runtime.block_on(async move {
                let listener = match tokio::net::TcpListener::from_std(listener) {
                    Ok(l) => l,
                    Err(e) => {
                        tracing::error!(error = %e, "the TLS listener failed");
                        return;
                    }
                };
                loop {
                    let (tcp, peer) = match listener.accept().await {
                        Ok(accepted) => accepted,
                        Err(e) => {
                            debug!(error = %e, "TLS accept failed");
                            continue;
                        }
                    };
                    let acceptor = acceptor.clone();
                    tokio::spawn(async move {
                        let handshake =
                            tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp));
                        let mut tls = match handshake.await {
                            Ok(Ok(tls)) => tls,
                            Ok(Err(e)) => {
                                info!(%peer, error = %e, "TLS handshake failed");
                                return;
                            }
                            Err(_) => {
                                info!(%peer, "TLS handshake timed out");
                                return;
                            }
                        };
                        let Ok(mut plain) = tokio::net::TcpStream::connect(backend).await else {
                            return;
                        };
                        let _ = plain.set_nodelay(true);
                        let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
                    });
                }
            })
        })
        .map_err(|e| EmbeddedBrokerError::Start(e.to_string()))?;
    Ok(addr)
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
