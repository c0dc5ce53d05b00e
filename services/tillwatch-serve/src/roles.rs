//! The roles run as processes of their own: each role's setup (its probes
//! and metrics on `http.listen`, its listeners, the metadata store opened
//! once with [`MetaStore::open`]) and the process's shutdown signal. The
//! binary parses the command line into a [`Config`] and calls one of these.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use tillwatch_bus::shutdown_requested;
use tillwatch_config::Config;
use tillwatch_meta::MetaStore;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::http::{Readiness, api_router, metrics_handle, serve_http};
use crate::standalone::spawn_grpc;

/// Binds `addr`; the error names the setting (`flag`) that chooses it.
pub async fn bind(addr: SocketAddr, flag: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}; choose another address with {flag}"))
}

/// Resolves on SIGINT or SIGTERM.
pub async fn signalled() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("shutting down: flushing and acknowledging what is buffered");
}

/// A role's shutdown signal: SIGINT or SIGTERM turns it true.
pub fn stop_on_signal() -> watch::Receiver<bool> {
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        signalled().await;
        let _ = stop_tx.send(true);
    });
    stop_rx
}

/// Every role process serves `/healthz`, `/readyz` and `/metrics` (and
/// the role's own routes) on `http.listen`, for probes and scraping; the
/// address goes to stdout as `http listening on ADDR`.
async fn role_http(
    config: &Config,
    ready: Readiness,
    routes: axum::Router,
    stop: &watch::Receiver<bool>,
) -> anyhow::Result<JoinHandle<std::io::Result<()>>> {
    let http = bind(config.http.listen, "--http-listen").await?;
    println!("http listening on {}", http.local_addr()?);
    Ok(tokio::spawn(serve_http(
        http,
        ready,
        routes,
        crate::http::HttpServing::of(config).context("http TLS")?,
        shutdown_requested(stop.clone()),
    )))
}

/// Runs `role` beside its probe server until it returns.
async fn with_probes<F>(
    config: &Config,
    ready: Readiness,
    role: impl FnOnce(watch::Receiver<bool>) -> F,
) -> anyhow::Result<()>
where
    F: Future<Output = anyhow::Result<()>>,
{
    // Install the metrics recorder before the role records anything.
    metrics_handle();
    let stop = stop_on_signal();
    let server = role_http(config, ready, axum::Router::new(), &stop).await?;
    let result = role(stop).await;
    server.abort();
    result
}

/// The ingestion gateway against `mqtt.broker`.
pub async fn gateway(config: Config) -> anyhow::Result<()> {
    let health = Arc::new(tillwatch_gateway::GatewayHealth::default());
    with_probes(&config, Readiness::Gateway(health.clone()), |stop| async {
        tillwatch_gateway::run_gateway(&config, health, shutdown_requested(stop))
            .await
            .context("gateway")
    })
    .await
}

/// The alerter: connectivity, the registry and alerts, from the broker
/// into the metadata store.
pub async fn alerter(config: Config) -> anyhow::Result<()> {
    let health = Arc::new(tillwatch_alerter::AlerterHealth::default());
    with_probes(&config, Readiness::Alerter(health.clone()), |stop| async {
        let store = MetaStore::open(&config).await?;
        tillwatch_alerter::run_alerter(&config, store, health, shutdown_requested(stop))
            .await
            .context("alerter")
    })
    .await
}

/// The rollup scheduler over the metadata store and the lake.
pub async fn scheduler(config: Config) -> anyhow::Result<()> {
    with_probes(&config, Readiness::Started, |stop| async {
        let store = MetaStore::open(&config).await?;
        run_scheduler(&config, store, shutdown_requested(stop))
            .await
            .context("scheduler")
    })
    .await
}

/// The scheduler process (`tillwatch_scheduler::process`) over the
/// configured jobs and engine (`tillwatch_rollups::service::open`) and the
/// lake's snapshot, until `shutdown` resolves.
pub(crate) async fn run_scheduler(
    config: &Config,
    store: MetaStore,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    use tillwatch_rollups::{declared, service};
    tillwatch_rollups::retention::describe_metrics();
    let settings = tillwatch_scheduler::process::Settings {
        tick: config.scheduler.tick,
        stall_after: config.scheduler.watermark_stall_after,
    };
    // The teams' declarations as loaded; a change (checked every tick)
    // loads them again and the scheduler goes on with the new set.
    let mut changes = declared::watch_stamp(config.scheduler.jobs_dir.clone(), settings.tick);
    let mut shutdown = std::pin::pin!(shutdown);
    // A configuration that does not load at start is an error; one that
    // stops loading after a change (a file caught half written, an
    // operator's setting naming a job that is gone) leaves the jobs as
    // loaded before running, never a scheduler that stopped.
    let (mut runner, mut lake) = service::open(config, store.clone(), service::wall_clock())?;
    loop {
        tracing::info!(
            jobs = runner.catalog().jobs().len(),
            engine = if service::engine(config).is_some() { "clickhouse" } else { "embedded" },
            tick = ?config.scheduler.tick,
            "scheduler running"
        );
        let snapshot = || service::snapshot(&runner, lake.clone(), settings.stall_after);
        let reload = std::sync::atomic::AtomicBool::new(false);
        let until = async {
            tokio::select! {
                () = shutdown.as_mut() => {}
                Ok(()) = changes.changed() => {
                    changes.borrow_and_update();
                    reload.store(true, std::sync::atomic::Ordering::SeqCst);
                }
            }
        };
        tillwatch_scheduler::process::run(&runner, snapshot, settings, until).await?;
        if !reload.load(std::sync::atomic::Ordering::SeqCst) {
            return Ok(());
        }
        tracing::info!("the job declarations changed; loading them again");
        match service::open(config, store.clone(), service::wall_clock()) {
            Ok((loaded, loaded_lake)) => (runner, lake) = (loaded, loaded_lake),
            Err(e) => tracing::error!(
                error = %e,
                "the changed job declarations do not load; the jobs loaded before go on running"
            ),
        }
    }
}

/// The API role: the HTTP API, the dashboards and (when enabled) the gRPC
/// API over the shared metadata store and lake. Stateless: run as many as
/// the dashboards' users need behind one load balancer.
pub async fn api(config: Config) -> anyhow::Result<()> {
    anyhow::ensure!(
        !config.http.tokens.is_empty(),
        "http.tokens is empty: the api role serves nobody without tokens; add [[http.tokens]] \
         entries (name, role, token_file) to the config"
    );
    metrics_handle();
    let stop = stop_on_signal();
    // The store is opened and migrated here, before the listener is served:
    // a process that answers /readyz can answer the API.
    let store = MetaStore::open(&config).await?;
    let routes = api_router(&config, store.clone()).await?;
    let grpc = match config.grpc.enabled {
        true => {
            let listener = bind(config.grpc.listen, "grpc.listen").await?;
            println!("grpc listening on {}", listener.local_addr()?);
            Some(spawn_grpc(
                &config,
                store,
                listener,
                shutdown_requested(stop.clone()),
            )?)
        }
        false => None,
    };
    let http = role_http(&config, Readiness::Started, routes, &stop).await?;
    http.await
        .context("the HTTP server task failed")?
        .context("HTTP server")?;
    if let Some(grpc) = grpc {
        grpc.await
            .context("the gRPC server task failed")?
            .context("gRPC server")?;
    }
    Ok(())
}
