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

/// Serves `/healthz` (the process is up), `/readyz` (see [`Readiness`]),
/// `/metrics` (Prometheus text) and the routes of `api` until `shutdown`
/// resolves.
pub async fn serve_http(
    listener: TcpListener,
    ready: Readiness,
    api: Router,
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
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}
