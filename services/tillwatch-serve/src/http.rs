use std::future::Future;
use std::sync::{Arc, OnceLock};

use anyhow::Context;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use axum::routing::get;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tillwatch_api::Access;
use tillwatch_config::Config;
use tillwatch_gateway::GatewayHealth;
use tillwatch_meta::MetaStore;
use tokio::net::TcpListener;

/// The process-wide Prometheus recorder, installed on first use.
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            // Histograms as buckets (not summaries), so dashboards can
            // take quantiles over time and across processes.
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Suffix("_seconds".into()),
                    &[
                        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                        10.0, 30.0,
                    ],
                )
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Suffix("_rows".into()),
                        &[1.0, 10.0, 100.0, 1_000.0, 10_000.0, 100_000.0, 1_000_000.0],
                    )
                })
                .expect("bucket lists are not empty")
                .build_recorder();
            let handle = recorder.handle();
            // Another recorder may already be installed (a test harness);
            // then this handle renders nothing, which the tests would show.
            let _ = metrics::set_global_recorder(recorder);
            // Histogram samples pile up between renders; drain them on a
            // clock too, so a process nobody scrapes does not grow.
            let upkeep = handle.clone();
            std::thread::Builder::new()
                .name("metrics-upkeep".into())
                .spawn(move || {
                    loop {
                        std::thread::sleep(std::time::Duration::from_secs(5));
                        upkeep.run_upkeep();
                    }
                })
                .expect("a thread for the metrics upkeep");
            handle
        })
        .clone()
}

/// What `/readyz` reports for the role this process runs.
#[derive(Clone)]
pub enum Readiness {
    /// Ready while the gateway is connected and subscribed to the broker.
    Gateway(Arc<GatewayHealth>),
    /// Ready while the alerter is subscribed to the broker, or standing by
    /// while another alerter holds the lease (a standby is a healthy
    /// replica); not while it connects or has lost the broker.
    Alerter(Arc<tillwatch_alerter::AlerterHealth>),
    /// Ready while the process serves: the role (api, scheduler) checked
    /// its configuration before it listened, and exits, for the
    /// orchestrator to restart it, when it cannot open its store. The api
    /// role opens its store before it listens.
    Started,
}

#[derive(Clone)]
struct AppState {
    metrics: PrometheusHandle,
    ready: Readiness,
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    let not_ready = match &state.ready {
        Readiness::Gateway(health) => health.not_ready_reason(),
        Readiness::Alerter(health) => (!health.is_ready())
            .then(|| "the alerter is not subscribed to the broker (and not a standby)".to_string()),
        Readiness::Started => None,
    };
    match not_ready {
        None => (StatusCode::OK, "ready\n".to_string()),
        Some(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        ),
    }
}

async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
}

/// The API under `/api/v1` behind the configured tokens: the fleet
/// (devices, merchants, stores, alerts) and, with the scheduler on, the
/// jobs.
pub async fn api_router(config: &Config, store: MetaStore) -> anyhow::Result<Router> {
    let access = Access::new(&config.http.tokens)?;
    let lake = tillwatch_storage::Lake::from_config(config)?;
    let queries = tillwatch_query::Queries::new(
        store.clone(),
        lake,
        config.alerting.rules.battery_low.threshold,
    );
    let mut api =
        tillwatch_api::fleet::router(queries.clone()).merge(tillwatch_api::lake::router(queries));
    if config.scheduler.enabled {
        api = api.merge(tillwatch_api::jobs::router(
            tillwatch_rollups::service::job_queries(config, store).context("the jobs API")?,
        ));
    }
    // The document of exactly these routes, readable without a token.
    let document = Arc::new(tillwatch_api::openapi::document(&api.docs));
    let open = Router::new().route(
        "/api/v1/openapi.json",
        get(move || {
            let document = document.clone();
            async move { axum::Json(document.as_ref().clone()) }
        }),
    );
    Ok(tillwatch_api::protect(api.router, Arc::new(access))
        .merge(open)
        .merge(tillwatch_api::ui::router()))
}

/// How the HTTP server serves (`[http]`): how many connections it takes,
/// how long a client may take to send a request's headers, and TLS when
/// configured.
#[derive(Clone)]
pub struct HttpServing {
    pub max_connections: usize,
    pub header_read_timeout: std::time::Duration,
    pub tls: Option<tokio_rustls::TlsAcceptor>,
}

impl HttpServing {
    /// As `config` says; reads the TLS files, naming them when they fail.
    pub fn of(config: &Config) -> Result<HttpServing, crate::tls::TlsSetupError> {
        let tls = match (&config.http.tls_cert_file, &config.http.tls_key_file) {
            (Some(cert), Some(key)) => Some(crate::tls::acceptor(cert, key, &[b"http/1.1"])?),
            _ => None,
        };
        Ok(HttpServing {
            max_connections: config.http.max_connections,
            header_read_timeout: config.http.header_read_timeout,
            tls,
        })
    }
}

/// Serves `/healthz` (the process is up), `/readyz` (see [`Readiness`]),
/// `/metrics` (Prometheus text) and the routes of `api` until `shutdown`
/// resolves, as `serving` says (over TLS when it has an acceptor), within
/// its limits: a connection that sends no request headers
/// within `header_read_timeout` (idle keep-alive included) is closed, and
/// at `max_connections` a new connection makes the oldest one close
/// (after its request in flight, if any; counted in
/// `tillwatch_http_connections_shed_total`), so idle sockets can neither
/// exhaust the process's file descriptors nor lock probes and users out.
pub async fn serve_http(
    listener: TcpListener,
    ready: Readiness,
    api: Router,
    serving: HttpServing,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let state = AppState {
        metrics: metrics_handle(),
        ready,
    };
    metrics::describe_counter!(
        HTTP_REQUESTS,
        "HTTP requests answered, by route pattern, method and status"
    );
    metrics::describe_histogram!(
        HTTP_REQUEST_DURATION,
        metrics::Unit::Seconds,
        "How long HTTP requests took to answer, by route pattern"
    );
    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
        .merge(api)
        .layer(axum::middleware::from_fn(observe_request));
    serve_bounded(listener, app, serving, shutdown).await;
    Ok(())
}

/// HTTP requests answered, by route (its pattern, `unmatched` for none),
/// method and status.
pub const HTTP_REQUESTS: &str = "tillwatch_http_requests_total";
/// How long answering took, by route.
pub const HTTP_REQUEST_DURATION: &str = "tillwatch_http_request_duration_seconds";

/// Counts and times each request. Labels come from the route's pattern
/// (`/api/v1/devices/{id}`), never the path itself, and from a fixed set
/// of methods, so no client can grow the label set.
async fn observe_request(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let route = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let method: &'static str = match request.method().as_str() {
        "GET" => "GET",
        "POST" => "POST",
        "PUT" => "PUT",
        "PATCH" => "PATCH",
        "DELETE" => "DELETE",
        "HEAD" => "HEAD",
        "OPTIONS" => "OPTIONS",
        _ => "other",
    };
    let began = std::time::Instant::now();
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    metrics::counter!(HTTP_REQUESTS, "route" => route.clone(), "method" => method, "status" => status)
        .increment(1);
    metrics::histogram!(HTTP_REQUEST_DURATION, "route" => route)
        .record(began.elapsed().as_secs_f64());
    response
}

/// The open connections, oldest first, each with what asks it to close.
#[derive(Default)]
struct Open {
    next: u64,
    connections: std::collections::BTreeMap<u64, tokio::sync::oneshot::Sender<()>>,
}

/// A connection on the open list, taken off it when its task ends.
struct Registered {
    id: u64,
    open: Arc<std::sync::Mutex<Open>>,
    /// Connections whose task still runs, and the notice each gives when
    /// it ends.
    live: Arc<(std::sync::atomic::AtomicUsize, tokio::sync::Notify)>,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .connections
            .remove(&self.id);
        self.live
            .0
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        self.live.1.notify_one();
    }
}

/// A connection's stream, plain or TLS.
trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}

async fn serve_bounded(
    listener: TcpListener,
    app: Router,
    limits: HttpServing,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    use hyper_util::rt::{TokioIo, TokioTimer};
    let open = Arc::new(std::sync::Mutex::new(Open::default()));
    let live = Arc::new((
        std::sync::atomic::AtomicUsize::new(0),
        tokio::sync::Notify::new(),
    ));
    let mut last_error_logged: Option<std::time::Instant> = None;
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors, most often: say so now and
                    // then, and give the process a moment.
                    if last_error_logged.is_none_or(|t| t.elapsed().as_secs() >= 10) {
                        tracing::warn!(error = %e, "the HTTP server cannot accept connections");
                        last_error_logged = Some(std::time::Instant::now());
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let (close_tx, close_rx) = tokio::sync::oneshot::channel();
        let id = {
            let mut open = open
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            while open.connections.len() >= limits.max_connections {
                if let Some((_, oldest)) = open.connections.pop_first() {
                    let _ = oldest.send(());
                    metrics::counter!("tillwatch_http_connections_shed_total").increment(1);
                }
            }
            let id = open.next;
            open.next += 1;
            open.connections.insert(id, close_tx);
            id
        };
        // Handlers see who connected (the failed-token limit is per address).
        let service =
            hyper_util::service::TowerToHyperService::new(tower::ServiceExt::map_request(
                app.clone(),
                move |mut request: hyper::Request<hyper::body::Incoming>| {
                    request
                        .extensions_mut()
                        .insert(axum::extract::ConnectInfo(peer));
                    request
                },
            ));
        live.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let registered = Registered {
            id,
            open: open.clone(),
            live: live.clone(),
        };
        let (tls, header_read_timeout) = (limits.tls.clone(), limits.header_read_timeout);
        tokio::spawn(async move {
            let _registered = registered;
            let io: Option<Box<dyn Io>> = match tls {
                None => Some(Box::new(tcp)),
                // The handshake has the headers' time.
                Some(acceptor) => {
                    match tokio::time::timeout(header_read_timeout, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => Some(Box::new(stream)),
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "TLS handshake failed");
                            None
                        }
                        Err(_) => None,
                    }
                }
            };
            let Some(io) = io else {
                return;
            };
            let mut http1 = hyper::server::conn::http1::Builder::new();
            http1
                .timer(TokioTimer::new())
                .header_read_timeout(header_read_timeout)
                .max_buf_size(64 * 1024);
            let connection = http1.serve_connection(TokioIo::new(io), service);
            let mut connection = std::pin::pin!(connection);
            let mut close_rx = close_rx;
            let mut closing = false;
            let ended = loop {
                tokio::select! {
                    ended = connection.as_mut() => break ended,
                    // Shed, or the server stops: close after the request
                    // in flight, at once when idle.
                    _ = &mut close_rx, if !closing => {
                        closing = true;
                        connection.as_mut().graceful_shutdown();
                    }
                }
            };
            if let Err(e) = ended {
                tracing::debug!(%peer, error = %e, "HTTP connection ended");
            }
        });
    }
    // Requests in flight finish (10 s at most); idle connections close at
    // once.
    let connections = std::mem::take(
        &mut open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .connections,
    );
    for (_, close) in connections {
        let _ = close.send(());
    }
    let drained = async {
        loop {
            let notified = live.1.notified();
            if live.0.load(std::sync::atomic::Ordering::SeqCst) == 0 {
                return;
            }
            notified.await;
        }
    };
    let _ = tokio::time::timeout(std::time::Duration::from_secs(10), drained).await;
}
