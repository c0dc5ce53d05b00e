use std::future::Future;
use std::sync::{Arc, OnceLock};

use anyhow::Context;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use axum::routing::get;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
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
            let recorder = PrometheusBuilder::new().build_recorder();
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
    let ready = match &state.ready {
        Readiness::Gateway(health) => health.is_ready(),
        Readiness::Alerter(health) => health.is_ready(),
        Readiness::Started => true,
    };
    if ready {
        (StatusCode::OK, "ready\n")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: the gateway is not connected and subscribed to the broker\n",
        )
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

/// How many connections the HTTP server takes and how long a client may
/// take to send a request's headers (`[http]`).
#[derive(Debug, Clone, Copy)]
pub struct HttpLimits {
    pub max_connections: usize,
    pub header_read_timeout: std::time::Duration,
}

impl HttpLimits {
    pub fn of(config: &Config) -> HttpLimits {
        HttpLimits {
            max_connections: config.http.max_connections,
            header_read_timeout: config.http.header_read_timeout,
        }
    }
}

/// Serves `/healthz` (the process is up), `/readyz` (see [`Readiness`]),
/// `/metrics` (Prometheus text) and the routes of `api` until `shutdown`
/// resolves, within `limits`: a connection that sends no request headers
/// within `header_read_timeout` (idle keep-alive included) is closed, and
/// at `max_connections` a new connection makes the oldest one close
/// (after its request in flight, if any; counted in
/// `tillwatch_http_connections_shed_total`), so idle sockets can neither
/// exhaust the process's file descriptors nor lock probes and users out.
pub async fn serve_http(
    listener: TcpListener,
    ready: Readiness,
    api: Router,
    limits: HttpLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let state = AppState {
        metrics: metrics_handle(),
        ready,
    };
    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
        .merge(api);
    serve_bounded(listener, app, limits, shutdown).await;
    Ok(())
}

/// The open connections, oldest first, each with what asks it to close.
#[derive(Default)]
struct Open {
    next: u64,
    connections: std::collections::BTreeMap<u64, tokio::sync::oneshot::Sender<()>>,
}

async fn serve_bounded(
    listener: TcpListener,
    app: Router,
    limits: HttpLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    use hyper_util::rt::{TokioIo, TokioTimer};
    let open = Arc::new(std::sync::Mutex::new(Open::default()));
    let closed_one = Arc::new(tokio::sync::Notify::new());
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
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        let mut http1 = hyper::server::conn::http1::Builder::new();
        http1
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout)
            .max_buf_size(64 * 1024);
        let connection = http1.serve_connection(TokioIo::new(tcp), service);
        let (open, closed_one) = (open.clone(), closed_one.clone());
        tokio::spawn(async move {
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
            open.lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .connections
                .remove(&id);
            // Let go of the list before saying so: the server's stop waits
            // until nobody holds it.
            drop(open);
            closed_one.notify_one();
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
            let notified = closed_one.notified();
            if Arc::strong_count(&open) == 1 {
                return;
            }
            notified.await;
        }
    };
    let _ = tokio::time::timeout(std::time::Duration::from_secs(10), drained).await;
}
