//! The terminals' door to the embedded broker. rumqttd checks logins but
//! knows no access rules, so every terminal connection, plain or TLS, is
//! accepted here and relayed to rumqttd's private loopback port packet by
//! packet, and what rumqttd cannot do is done on the way:
//!
//! - A terminal is only itself: with logins (a password file), its
//!   username is its device id, and it may publish (its will included)
//!   only on its own device's topics and subscribe only to them. Without
//!   logins it may publish only on device topics and subscribe only to
//!   one named device's. Anything else closes the connection, logged and
//!   counted (`tillwatch_broker_refused_total{reason}`); the account of
//!   Tillwatch's own clients is refused here (it is for the private port).
//! - Bounded: at most `max_connections` terminals; a connection must say
//!   CONNECT within [`CONNECT_WITHIN`]; packets over [`MAX_PACKET`] are
//!   refused; retained messages (status and info) over
//!   [`MAX_RETAINED_PAYLOAD`] too, so what the broker keeps per terminal
//!   is small.
//! - An accept error (file descriptors exhausted) is logged once per
//!   [`ACCEPT_ERROR_LOG_EVERY`], not once per attempt, and backs off.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use rumqttc::mqttbytes::v4::Packet;
use tillwatch_proto::topic::{DeviceTopic, PREFIX};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tracing::{debug, info, warn};

/// How long a new connection has to send its CONNECT.
pub const CONNECT_WITHIN: Duration = Duration::from_secs(10);
/// The largest MQTT packet taken (rumqttd's own limit).
pub const MAX_PACKET: usize = 1024 * 1024;
/// The largest retained payload taken: a terminal's status and info are
/// a few hundred bytes.
pub const MAX_RETAINED_PAYLOAD: usize = 16 * 1024;
/// How often a failing accept is logged at most.
pub const ACCEPT_ERROR_LOG_EVERY: Duration = Duration::from_secs(10);

/// Why a terminal's connection was closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("publish on {topic:?}: a topic of another terminal than {login:?}")]
    ForeignPublish { login: String, topic: String },
    #[error("publish on {topic:?}: not a Tillwatch device topic (tw/v1/MERCHANT/DEVICE/CHANNEL)")]
    NotADeviceTopic { topic: String },
    #[error("subscribe to {filter:?}: a terminal may subscribe only to its own device's topics")]
    ForeignSubscribe { filter: String },
    #[error("a retained message of {bytes} bytes on {topic:?}: at most {MAX_RETAINED_PAYLOAD}")]
    RetainedTooLarge { topic: String, bytes: usize },
    #[error("no username: this broker requires logins")]
    NoLogin,
    #[error("the account of Tillwatch's own clients may not connect from outside")]
    InternalAccount,
    #[error("the first packet was not CONNECT")]
    NoConnect,
    #[error("no CONNECT within {} s", CONNECT_WITHIN.as_secs())]
    ConnectTimeout,
    #[error("a malformed or oversized MQTT packet: {0}")]
    Malformed(String),
}

impl Refusal {
    /// The metric label: a fixed set, never a device id.
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::ForeignPublish { .. } => "foreign_publish",
            Refusal::NotADeviceTopic { .. } => "not_a_device_topic",
            Refusal::ForeignSubscribe { .. } => "foreign_subscribe",
            Refusal::RetainedTooLarge { .. } => "retained_too_large",
            Refusal::NoLogin => "no_login",
            Refusal::InternalAccount => "internal_account",
            Refusal::NoConnect => "no_connect",
            Refusal::ConnectTimeout => "connect_timeout",
            Refusal::Malformed(_) => "malformed",
        }
    }
}

/// The access rules.
#[derive(Debug, Clone)]
pub struct Gate {
    /// `Some(internal username)` when logins are required.
    pub logins: Option<String>,
}

/// Who is on a connection: the device its login names, or anyone (no
/// logins).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Who {
    Device(String),
    Anyone,
}

impl Gate {
    /// Who a CONNECT says it is, and whether its will is its own.
    pub fn connect(&self, connect: &rumqttc::mqttbytes::v4::Connect) -> Result<Who, Refusal> {
        let who = match &self.logins {
            None => Who::Anyone,
            Some(internal) => {
                let login = connect.login.as_ref().ok_or(Refusal::NoLogin)?;
                if login.username == *internal {
                    return Err(Refusal::InternalAccount);
                }
                Who::Device(login.username.clone())
            }
        };
        if let Some(will) = &connect.last_will {
            may_publish(&who, &will.topic, will.retain, will.message.len())?;
        }
        Ok(who)
    }

    /// Whether `who` may send `packet`.
    pub fn check(&self, who: &Who, packet: &Packet) -> Result<(), Refusal> {
        match packet {
            Packet::Publish(p) => may_publish(who, &p.topic, p.retain, p.payload.len()),
            Packet::Subscribe(s) => s
                .filters
                .iter()
                .try_for_each(|f| may_subscribe(who, &f.path)),
            Packet::Connect(_) => Err(Refusal::Malformed("a second CONNECT".into())),
            _ => Ok(()),
        }
    }
}

/// A publish is allowed on a device topic, of the login's own device.
pub fn may_publish(who: &Who, topic: &str, retain: bool, bytes: usize) -> Result<(), Refusal> {
    let Some(parsed) = DeviceTopic::parse(topic) else {
        return Err(Refusal::NotADeviceTopic {
            topic: topic.to_string(),
        });
    };
    if let Who::Device(login) = who
        && parsed.device_id != login
    {
        return Err(Refusal::ForeignPublish {
            login: login.clone(),
            topic: topic.to_string(),
        });
    }
    if retain && bytes > MAX_RETAINED_PAYLOAD {
        return Err(Refusal::RetainedTooLarge {
            topic: topic.to_string(),
            bytes,
        });
    }
    Ok(())
}

/// A subscription is allowed when it can match only one device's topics,
/// named literally (the login's own, with logins):
/// `tw/v1/MERCHANT-or-+/DEVICE/…`.
pub fn may_subscribe(who: &Who, filter: &str) -> Result<(), Refusal> {
    let refused = || Refusal::ForeignSubscribe {
        filter: filter.to_string(),
    };
    let rest = filter
        .strip_prefix(PREFIX)
        .and_then(|r| r.strip_prefix('/'))
        .ok_or_else(refused)?;
    let mut levels = rest.split('/');
    let merchant = levels.next().ok_or_else(refused)?;
    let device = levels.next().ok_or_else(refused)?;
    let literal = |level: &str| !level.is_empty() && !level.contains(['+', '#']);
    if !(literal(merchant) || merchant == "+") || !literal(device) || levels.next().is_none() {
        return Err(refused());
    }
    match who {
        Who::Device(login) if device != login => Err(refused()),
        _ => Ok(()),
    }
}

/// The next whole packet on `from`: its bytes as sent and as parsed;
/// `None` at a clean end of stream.
async fn next_packet<R: AsyncRead + Unpin>(
    from: &mut R,
    buf: &mut BytesMut,
) -> Result<Option<(Bytes, Packet)>, FrontError> {
    loop {
        match rumqttc::mqttbytes::check(buf.iter(), MAX_PACKET) {
            Ok(header) => {
                let frame = buf.split_to(header.frame_length()).freeze();
                let mut copy = BytesMut::from(&frame[..]);
                let packet = Packet::read(&mut copy, MAX_PACKET)
                    .map_err(|e| Refusal::Malformed(e.to_string()))?;
                return Ok(Some((frame, packet)));
            }
            Err(rumqttc::mqttbytes::Error::InsufficientBytes(_)) => {
                if from.read_buf(buf).await? == 0 {
                    return Ok(None);
                }
            }
            Err(e) => return Err(Refusal::Malformed(e.to_string()).into()),
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum FrontError {
    #[error(transparent)]
    Refused(#[from] Refusal),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Relays one terminal's connection to rumqttd at `backend`, checking
/// every packet the terminal sends; rumqttd's answers pass as they are.
async fn relay<S>(client: S, backend: SocketAddr, gate: &Gate, peer: SocketAddr)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (mut from_client, mut to_client) = tokio::io::split(client);
    let mut buf = BytesMut::with_capacity(4096);
    let first =
        match tokio::time::timeout(CONNECT_WITHIN, next_packet(&mut from_client, &mut buf)).await {
            Ok(Ok(Some(first))) => first,
            Ok(Ok(None)) => return,
            Ok(Err(e)) => return refused(peer, None, e),
            Err(_) => return refused(peer, None, Refusal::ConnectTimeout.into()),
        };
    let who = match &first.1 {
        Packet::Connect(connect) => match gate.connect(connect) {
            Ok(who) => who,
            Err(e) => return refused(peer, None, e.into()),
        },
        _ => return refused(peer, None, Refusal::NoConnect.into()),
    };
    let Ok(upstream) = TcpStream::connect(backend).await else {
        warn!(%peer, "the embedded broker's private port did not answer");
        return;
    };
    let _ = upstream.set_nodelay(true);
    let (mut from_broker, mut to_broker) = upstream.into_split();
    let up = async {
        to_broker.write_all(&first.0).await?;
        while let Some((frame, packet)) = next_packet(&mut from_client, &mut buf).await? {
            gate.check(&who, &packet)?;
            to_broker.write_all(&frame).await?;
        }
        Ok::<(), FrontError>(())
    };
    let down = tokio::io::copy(&mut from_broker, &mut to_client);
    tokio::select! {
        ended = up => {
            if let Err(e) = ended {
                refused(peer, Some(&who), e);
            }
        }
        _ = down => {}
    }
}

fn refused(peer: SocketAddr, who: Option<&Who>, e: FrontError) {
    match e {
        FrontError::Refused(refusal) => {
            metrics::counter!("tillwatch_broker_refused_total", "reason" => refusal.reason())
                .increment(1);
            let login = match who {
                Some(Who::Device(d)) => d.as_str(),
                _ => "",
            };
            info!(%peer, login, reason = %refusal, "MQTT connection closed");
        }
        FrontError::Io(e) => debug!(%peer, error = %e, "MQTT connection ended"),
    }
}

/// The terminals' listeners: plain, and TLS with its acceptor.
pub struct Listeners {
    pub plain: Option<std::net::TcpListener>,
    pub tls: Option<(std::net::TcpListener, tokio_rustls::TlsAcceptor)>,
}

/// Starts taking terminals on `listeners`, relaying them to `backend`, on
/// a runtime of its own (two threads, like rumqttd's listeners).
pub fn start(
    listeners: Listeners,
    backend: SocketAddr,
    gate: Gate,
    max_connections: usize,
) -> std::io::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("embedded-broker-front")
        .enable_all()
        .build()?;
    let gate = Arc::new(gate);
    let permits = Arc::new(Semaphore::new(max_connections));
    let mut all: Vec<_> = listeners.plain.map(|p| (p, None)).into_iter().collect();
    if let Some((listener, acceptor)) = listeners.tls {
        all.push((listener, Some(acceptor)));
    }
    for (listener, _) in &all {
        listener.set_nonblocking(true)?;
    }
    std::thread::Builder::new()
        .name("embedded-broker-front".into())
        .spawn(move || {
            runtime.block_on(async move {
                let mut serving = Vec::new();
                for (listener, tls) in all {
                    match tokio::net::TcpListener::from_std(listener) {
                        Ok(listener) => serving.push(tokio::spawn(serve(
                            listener,
                            tls,
                            backend,
                            gate.clone(),
                            permits.clone(),
                        ))),
                        Err(e) => warn!(error = %e, "an MQTT listener failed"),
                    }
                }
                for s in serving {
                    let _ = s.await;
                }
            })
        })?;
    Ok(())
}

async fn serve(
    listener: tokio::net::TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    backend: SocketAddr,
    gate: Arc<Gate>,
    permits: Arc<Semaphore>,
) {
    let mut last_error_logged: Option<Instant> = None;
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Most often out of file descriptors: say so now and then,
                // and give the process a moment to free some.
                if last_error_logged.is_none_or(|t| t.elapsed() >= ACCEPT_ERROR_LOG_EVERY) {
                    warn!(error = %e, "the embedded broker cannot accept connections");
                    last_error_logged = Some(Instant::now());
                }
                metrics::counter!("tillwatch_broker_accept_errors_total").increment(1);
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            metrics::counter!("tillwatch_broker_refused_total", "reason" => "too_many_connections")
                .increment(1);
            debug!(%peer, "MQTT connection refused: at embedded_broker.max_connections");
            continue;
        };
        let gate = gate.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let _ = tcp.set_nodelay(true);
            match tls {
                None => relay(tcp, backend, &gate, peer).await,
                Some(acceptor) => {
                    match tokio::time::timeout(CONNECT_WITHIN, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => relay(stream, backend, &gate, peer).await,
                        Ok(Err(e)) => info!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => info!(%peer, "TLS handshake timed out"),
                    }
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(d: &str) -> Who {
        Who::Device(d.into())
    }

    #[test]
    fn a_terminal_publishes_only_on_its_own_topics() {
        let t1 = device("t-1");
        for channel in ["telemetry", "status", "info"] {
            let own = format!("tw/v1/m-1/t-1/{channel}");
            assert_eq!(may_publish(&t1, &own, false, 100), Ok(()));
            let other = format!("tw/v1/m-1/t-2/{channel}");
            assert!(matches!(
                may_publish(&t1, &other, false, 100),
                Err(Refusal::ForeignPublish { .. })
            ));
        }
        for topic in [
            "tw/v1/m-1/t-1/telemetry/x",
            "junk",
            "tw/v1/m-1/t-1",
            "$SYS/x",
        ] {
            assert!(matches!(
                may_publish(&t1, topic, false, 1),
                Err(Refusal::NotADeviceTopic { .. })
            ));
            assert!(may_publish(&Who::Anyone, topic, false, 1).is_err());
        }
        assert_eq!(
            may_publish(&Who::Anyone, "tw/v1/m-1/t-2/telemetry", false, 1),
            Ok(())
        );
        assert!(matches!(
            may_publish(&t1, "tw/v1/m-1/t-1/info", true, MAX_RETAINED_PAYLOAD + 1),
            Err(Refusal::RetainedTooLarge { .. })
        ));
    }

    #[test]
    fn a_terminal_subscribes_only_to_its_own_device() {
        let t1 = device("t-1");
        for ok in ["tw/v1/m-1/t-1/#", "tw/v1/+/t-1/ack", "tw/v1/m-1/t-1/+"] {
            assert_eq!(may_subscribe(&t1, ok), Ok(()), "{ok}");
            assert_eq!(may_subscribe(&Who::Anyone, ok), Ok(()), "{ok}");
        }
        for refused in [
            "#",
            "tw/#",
            "tw/v1/#",
            "tw/v1/+/+/telemetry",
            "tw/v1/m-1/+/status",
            "tw/v1/m-1/#",
            "tw/v1/+/t-1",
            "tw/v1/m-1/t-2/#",
            "tw/v1/m+/t-1/#",
            "$SYS/#",
        ] {
            assert!(may_subscribe(&t1, refused).is_err(), "{refused}");
        }
        assert!(may_subscribe(&Who::Anyone, "tw/v1/+/+/telemetry").is_err());
        assert_eq!(may_subscribe(&Who::Anyone, "tw/v1/m-1/t-2/#"), Ok(()));
    }

    #[test]
    fn logins_name_the_device_and_the_internal_account_stays_inside() {
        use rumqttc::mqttbytes::QoS;
        use rumqttc::mqttbytes::v4::{Connect, LastWill, Login};
        let gate = Gate {
            logins: Some("tillwatch-internal-x".into()),
        };
        let mut connect = Connect::new("c-1");
        assert_eq!(gate.connect(&connect), Err(Refusal::NoLogin));
        connect.login = Some(Login::new("tillwatch-internal-x", "p"));
        assert_eq!(gate.connect(&connect), Err(Refusal::InternalAccount));
        connect.login = Some(Login::new("t-1", "p"));
        assert_eq!(gate.connect(&connect), Ok(device("t-1")));
        connect.last_will = Some(LastWill::new(
            "tw/v1/m-1/t-2/status",
            "x",
            QoS::AtLeastOnce,
            true,
        ));
        assert!(matches!(
            gate.connect(&connect),
            Err(Refusal::ForeignPublish { .. })
        ));
        let open = Gate { logins: None };
        assert_eq!(open.connect(&Connect::new("c")), Ok(Who::Anyone));
    }
}
