//! The in-process MQTT broker of standalone mode (rumqttd), with optional
//! MQTT over TLS (terminated here, in front of rumqttd's plain listener) and
//! logins checked against a Mosquitto password file.

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rumqttd::protocol::v4::V4;
use rumqttd::{ConnectionSettings, LinkType, Router, RouterConfig, Server, ServerSettings};
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
    #[error("the embedded broker failed to start: listening on {addr}: {source}")]
    Listener {
        addr: SocketAddr,
        source: Box<EmbeddedBrokerError>,
    },
    #[error("embedded_broker.password_file: {0}")]
    Passwords(#[from] PasswordFileError),
    #[error("embedded_broker TLS: {0}")]
    Tls(String),
}

/// A running embedded broker. rumqttd offers no way to stop it: it lives
/// until the process exits.
pub struct EmbeddedBroker {
    /// Where terminals connect, once open.
    addr: SocketAddr,
    /// Where Tillwatch's own clients connect (loopback), open from the start.
    internal_addr: SocketAddr,
    tls_addr: Option<SocketAddr>,
    /// The account Tillwatch's own clients log in with when logins are
    /// required.
    internal_login: Option<(String, String)>,
    /// Until [`EmbeddedBroker::open`]: what it starts.
    closed: std::sync::Mutex<Option<Closed>>,
}

impl EmbeddedBroker {
    /// Unacknowledged messages rumqttd sends one client at most (its
    /// `MAX_INFLIGHT`, fixed in rumqttd 0.20 whatever the settings say).
    pub const MAX_INFLIGHT: usize = 100;

    /// Starts a broker on `listen` (port 0 picks a free port), plain MQTT
    /// only, closed to terminals until [`open`](EmbeddedBroker::open).
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
    ///
    /// Terminals cannot connect yet: the broker listens only on a private
    /// loopback port for Tillwatch's own clients ([`internal_url`]) until
    /// [`open`] lets terminals in. Standalone opens once its gateway and
    /// alerter have subscribed, so no message a terminal publishes (its
    /// info, above all) predates their subscriptions: rumqttd hands a new
    /// subscription only as many retained messages as its in-flight window
    /// has room for (100), and silently drops the rest, so a subscriber
    /// that came late would miss most of a fleet's info messages.
    ///
    /// [`internal_url`]: EmbeddedBroker::internal_url
    /// [`open`]: EmbeddedBroker::open
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
        // Terminals' listeners are bound here, to report a taken port
        // clearly and to resolve port 0, and held until `open`: nobody else
        // takes the port meanwhile, and a terminal that connects early
        // waits in the backlog (then retries) instead of being refused.
        let plain = bind_std(config.listen)?;
        let addr = local_addr(&plain, config.listen)?;
        let tls = match (config.tls_listen, acceptor) {
            (Some(listen), Some(acceptor)) => {
                let listener = bind_std(listen)?;
                let tls_addr = local_addr(&listener, listen)?;
                Some((listener, tls_addr, acceptor))
            }
            _ => None,
        };
        let loopback = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));

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
        let server = |name: &str, listen: SocketAddr| ServerSettings {
            name: name.into(),
            listen,
            tls: None,
            next_connection_delay_ms: 0,
            connections: connections.clone(),
        };
        let router = Router::new(
            0,
            RouterConfig {
                max_connections: config.max_connections,
                max_outgoing_packet_count: 200,
                max_segment_size: 100 * 1024 * 1024,
                max_segment_count: 10,
                custom_segment: None,
                initialized_filters: None,
                shared_subscriptions_strategy: Default::default(),
            },
        );
        let router_tx = router.spawn();
        // The private port rumqttd binds itself, free a moment ago: should
        // another process take it in between, its bind fails, and another
        // free port is tried.
        let mut attempts = 0;
        let internal_addr = loop {
            let internal_addr = {
                let probe = bind_std(loopback)?;
                local_addr(&probe, loopback)?
            };
            let listening = spawn_server(Server::new(
                server("tillwatch-internal", internal_addr),
                router_tx.clone(),
                V4,
            ))?;
            match bound(&listening, internal_addr) {
                Ok(()) => break internal_addr,
                Err(e) if attempts < 5 => {
                    attempts += 1;
                    tracing::debug!(error = %e, "the private port was taken; trying another");
                }
                Err(e) => return Err(e),
            }
        };
        info!(%internal_addr, "embedded MQTT broker listening for Tillwatch's own clients");
        let public = Server::new(server("tillwatch-embedded", addr), router_tx, V4);
        Ok(EmbeddedBroker {
            addr,
            internal_addr,
            tls_addr: tls.as_ref().map(|(_, a, _)| *a),
            internal_login: accounts.map(|a| a.1.clone()),
            closed: std::sync::Mutex::new(Some(Closed {
                plain,
                public,
                tls: tls.map(|(l, _, a)| (l, a)),
            })),
        })
    }

    /// Lets terminals in: rumqttd takes the plain listener's port over and
    /// the TLS front starts accepting. Returns once terminals can connect;
    /// does nothing the second time.
    pub async fn open(&self) -> Result<(), EmbeddedBrokerError> {
        let Some(closed) = self
            .closed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
        else {
            return Ok(());
        };
        // rumqttd binds the address itself: give the port up just before.
        drop(closed.plain);
        let listening = spawn_server(closed.public)?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            match listening.try_recv() {
                Ok(Ok(())) => break,
                Ok(Err(e)) => {
                    return Err(EmbeddedBrokerError::Start(format!(
                        "listening on {}: {e}",
                        self.addr
                    )));
                }
                Err(_) if tokio::time::Instant::now() > deadline => {
                    return Err(EmbeddedBrokerError::NotListening(self.addr));
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
            }
        }
        info!(addr = %self.addr, "embedded MQTT broker open to terminals");
        if let Some((listener, acceptor)) = closed.tls {
            start_tls_front(listener, self.internal_addr, acceptor)?;
            if let Some(addr) = self.tls_addr {
                info!(%addr, "embedded MQTT broker open to terminals over TLS");
            }
        }
        Ok(())
    }

    /// Whether terminals can connect yet.
    pub fn is_open(&self) -> bool {
        self.closed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .is_none()
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

    /// `mqtt://HOST:PORT` for terminals (once [`open`](EmbeddedBroker::open)).
    pub fn url(&self) -> String {
        format!("mqtt://{}", self.addr)
    }

    /// `mqtt://127.0.0.1:PORT` for Tillwatch's own clients in this
    /// process: open from the start.
    pub fn internal_url(&self) -> String {
        format!("mqtt://{}", self.internal_addr)
    }
}

/// What [`EmbeddedBroker::open`] starts.
struct Closed {
    /// The terminals' plain port, held.
    plain: TcpListener,
    public: Server<V4>,
    tls: Option<(TcpListener, tokio_rustls::TlsAcceptor)>,
}

fn bind_std(listen: SocketAddr) -> Result<TcpListener, EmbeddedBrokerError> {
    TcpListener::bind(listen).map_err(|source| EmbeddedBrokerError::Bind {
        addr: listen,
        source,
    })
}

fn local_addr(
    listener: &TcpListener,
    listen: SocketAddr,
) -> Result<SocketAddr, EmbeddedBrokerError> {
    listener
        .local_addr()
        .map_err(|source| EmbeddedBrokerError::Bind {
            addr: listen,
            source,
        })
}

/// Runs one of rumqttd's listeners on a thread of its own, as rumqttd's
/// `Broker::start` does. The receiver says whether it bound its address:
/// rumqttd binds in the first poll of `Server::start` (before that poll
/// returns pending on its first accept), and only logs a failure, so the
/// first poll is watched here.
/// Whether a listener bound its address, or what stopped it.
type Bound = Result<(), EmbeddedBrokerError>;

fn spawn_server(
    mut server: Server<V4>,
) -> Result<std::sync::mpsc::Receiver<Bound>, EmbeddedBrokerError> {
    let (bound_tx, bound_rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("embedded-broker".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(r) => r,
                Err(e) => {
                    let _ = bound_tx.send(Err(EmbeddedBrokerError::Start(e.to_string())));
                    return;
                }
            };
            runtime.block_on(async move {
                let serving = server.start(LinkType::Remote);
                tokio::pin!(serving);
                tokio::select! {
                    biased;
                    failed = &mut serving => {
                        let _ = bound_tx.send(Err(EmbeddedBrokerError::Start(format!("{failed:?}"))));
                        return;
                    }
                    _ = std::future::ready(()) => {
                        let _ = bound_tx.send(Ok(()));
                    }
                }
                if let Err(e) = serving.await {
                    tracing::error!(error = ?e, "the embedded broker's listener failed");
                }
            });
        })
        .map_err(|e| EmbeddedBrokerError::Start(e.to_string()))?;
    Ok(bound_rx)
}

/// Whether a listener spawned by [`spawn_server`] bound its address
/// (waiting 10 s at most).
fn bound(
    rx: &std::sync::mpsc::Receiver<Bound>,
    addr: SocketAddr,
) -> Result<(), EmbeddedBrokerError> {
    match rx.recv_timeout(Duration::from_secs(10)) {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(EmbeddedBrokerError::Listener {
            addr,
            source: Box::new(e),
        }),
        Err(_) => Err(EmbeddedBrokerError::NotListening(addr)),
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

/// Takes TLS on `listener` and relays each connection, decrypted, to the
/// plain listener at `backend` (loopback), on threads of its own (like
/// rumqttd's).
fn start_tls_front(
    listener: TcpListener,
    backend: SocketAddr,
    acceptor: tokio_rustls::TlsAcceptor,
) -> Result<(), EmbeddedBrokerError> {
    let listen = local_addr(&listener, backend)?;
    listener
        .set_nonblocking(true)
        .map_err(|source| EmbeddedBrokerError::Bind {
            addr: listen,
            source,
        })?;
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
    Ok(())
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
