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
//!   CONNECT within [`CONNECT_WITHIN`]; packets over [`MAX_PACKET`](tillwatch_bus::access::MAX_PACKET) are
//!   refused; retained messages (status and info) over
//!   [`MAX_RETAINED_PAYLOAD`](tillwatch_bus::access::MAX_RETAINED_PAYLOAD) too, so what the broker keeps per terminal
//!   is small.
//! - An accept error (file descriptors exhausted) is logged once per
//!   [`ACCEPT_ERROR_LOG_EVERY`], not once per attempt, and backs off.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use rumqttc::mqttbytes::v4::Packet;
pub use tillwatch_bus::access::Gate;
use tillwatch_bus::access::{CONNECT_WITHIN, Refusal, Who, next_frame};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tracing::{debug, info, warn};

/// How often a failing accept is logged at most.
pub const ACCEPT_ERROR_LOG_EVERY: Duration = Duration::from_secs(10);

/// The next whole packet on `from`: its bytes as sent and as parsed;
/// `None` at a clean end of stream.
async fn next_packet<R: AsyncRead + Unpin>(
    from: &mut R,
    buf: &mut BytesMut,
) -> Result<Option<(Bytes, Packet)>, FrontError> {
    loop {
        if let Some(packet) = next_frame(buf)? {
            return Ok(Some(packet));
        }
        if from.read_buf(buf).await? == 0 {
            return Ok(None);
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
