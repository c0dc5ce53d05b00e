//! The in-process MQTT broker of standalone mode: rumqttd on a private
//! loopback port, behind a front ([`front`]) that takes the terminals'
//! connections (plain MQTT, and MQTT over TLS terminated there) and holds
//! each terminal to its own topics; logins are checked against a Mosquitto
//! password file.

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::Duration;

use rumqttd::protocol::v4::V4;
use rumqttd::{ConnectionSettings, LinkType, Router, RouterConfig, Server, ServerSettings};
use tillwatch_config::EmbeddedBrokerConfig;
use tracing::info;

pub mod front;
pub use tillwatch_bus::passwords::{PasswordFile, PasswordFileError};

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
    Tls(#[from] crate::tls::TlsSetupError),
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
    /// Terminals connected at once at most.
    max_connections: usize,
    /// Whether terminals may use plain MQTT (always without TLS; beside
    /// TLS only when `plain_with_tls` asks).
    plain_open: bool,
    /// Until [`EmbeddedBroker::open`]: the terminals' listeners, held.
    closed: std::sync::Mutex<Option<front::Listeners>>,
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
            (Some(_), Some(cert), Some(key)) => Some(crate::tls::acceptor(cert, key, &[])?),
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
            // A publish no subscription matches is dropped, not kept in a
            // log of its own nobody reads.
            dynamic_filters: false,
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
                // The terminals, and this process's own clients.
                max_connections: config.max_connections + 64,
                max_outgoing_packet_count: 200,
                // What one subscription filter keeps for readers that lag:
                // 128 MiB at most (rumqttd's own default is 1 GiB), some
                // 250,000 messages of a terminal's usual size.
                max_segment_size: 16 * 1024 * 1024,
                max_segment_count: 8,
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
        Ok(EmbeddedBroker {
            addr,
            internal_addr,
            tls_addr: tls.as_ref().map(|(_, a, _)| *a),
            internal_login: accounts.map(|a| a.1.clone()),
            max_connections: config.max_connections,
            plain_open: tls.is_none() || config.plain_with_tls,
            closed: std::sync::Mutex::new(Some(front::Listeners {
                plain: Some(plain),
                tls: tls.map(|(l, _, a)| (l, a)),
            })),
        })
    }

    /// Lets terminals in: the front starts accepting on the terminals'
    /// listeners (bound since [`start_with`](EmbeddedBroker::start_with)).
    /// Does nothing the second time.
    pub async fn open(&self) -> Result<(), EmbeddedBrokerError> {
        let Some(mut listeners) = self
            .closed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
        else {
            return Ok(());
        };
        if !self.plain_open {
            // TLS only: the plain port is given up.
            listeners.plain = None;
        }
        let gate = front::Gate {
            logins: self.internal_login.as_ref().map(|(user, _)| user.clone()),
        };
        front::start(listeners, self.internal_addr, gate, self.max_connections)
            .map_err(|e| EmbeddedBrokerError::Start(e.to_string()))?;
        if self.plain_open {
            info!(addr = %self.addr, "embedded MQTT broker open to terminals");
        }
        if let Some(addr) = self.tls_addr {
            info!(%addr, "embedded MQTT broker open to terminals over TLS");
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

    /// Where terminals connect (once [`open`](EmbeddedBroker::open)):
    /// `mqtt://HOST:PORT`, or `mqtts://HOST:PORT` when only TLS is open.
    pub fn url(&self) -> String {
        match self.tls_addr {
            Some(tls) if !self.plain_open => format!("mqtts://{tls}"),
            _ => format!("mqtt://{}", self.addr),
        }
    }

    /// `mqtt://127.0.0.1:PORT` for Tillwatch's own clients in this
    /// process: open from the start.
    pub fn internal_url(&self) -> String {
        format!("mqtt://{}", self.internal_addr)
    }
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
