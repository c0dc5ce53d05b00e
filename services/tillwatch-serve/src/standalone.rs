use std::future::Future;
use std::sync::Arc;

use anyhow::Context;
use tillwatch_bus::shutdown_requested;
use tillwatch_config::{ApiToken, Config, Role};
use tillwatch_gateway::{GatewayHealth, run_gateway};
use tillwatch_meta::MetaStore;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::broker::EmbeddedBroker;
use crate::http::{Readiness, serve_http};

/// Flush at 80% of the embedded broker's in-flight window, so the broker
/// never stalls waiting for acks until the age limit.
const EMBEDDED_FLUSH_MAX_UNACKED: usize = EmbeddedBroker::MAX_INFLIGHT * 4 / 5;

/// Tokens made up for one run.
pub struct MadeTokens {
    pub viewer: String,
    pub operator: String,
}

fn random_token() -> std::io::Result<String> {
    use std::io::Read;
    let mut bytes = [0u8; 20];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// With no `[[http.tokens]]` configured, makes a viewer and an operator
/// token for this run (from the OS's random source) and adds them.
pub fn make_tokens(config: &mut Config) -> anyhow::Result<Option<MadeTokens>> {
    if !config.http.tokens.is_empty() {
        return Ok(None);
    }
    let made = MadeTokens {
        viewer: random_token().context("making an API token")?,
        operator: random_token().context("making an API token")?,
    };
    for (name, role, token) in [
        ("viewer", Role::Viewer, &made.viewer),
        ("operator", Role::Operator, &made.operator),
    ] {
        config.http.tokens.push(ApiToken {
            name: name.into(),
            role,
            token: Some(token.clone()),
            token_file: None,
        });
    }
    Ok(Some(made))
}

/// Starts the gRPC API on `listener` over the configured store, lake and
/// tokens, until `shutdown` resolves.
pub fn spawn_grpc(
    config: &Config,
    store: MetaStore,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<JoinHandle<anyhow::Result<()>>> {
    let service = tillwatch_grpc::service(config, store).context("the gRPC API")?;
    tillwatch_grpc::describe_metrics();
    // The same certificate as HTTP, speaking HTTP/2.
    let tls = crate::tls::grpc_acceptor(config).context("grpc TLS (http.tls_cert_file)")?;
    Ok(tokio::spawn(async move {
        tillwatch_grpc::serve(service, listener, tls, shutdown)
            .await
            .map_err(anyhow::Error::from)
    }))
}

/// How long terminals wait for the in-process subscribers at most: past
/// it, the broker opens anyway (with a warning) rather than keep a fleet
/// out because one part is slow to start.
const OPEN_DEADLINE: std::time::Duration = std::time::Duration::from_secs(60);

/// Opens the embedded broker to terminals once the gateway and the alerter
/// have subscribed, so each sees every message a terminal publishes from
/// its first connection on (see [`EmbeddedBroker::start_with`]).
async fn open_when_subscribed(
    broker: &EmbeddedBroker,
    gateway: &GatewayHealth,
    alerter: &tillwatch_alerter::AlerterHealth,
) -> Result<(), crate::broker::EmbeddedBrokerError> {
    let deadline = tokio::time::Instant::now() + OPEN_DEADLINE;
    while !(gateway.is_subscribed() && alerter.is_subscribed()) {
        if tokio::time::Instant::now() >= deadline {
            tracing::warn!(
                gateway = gateway.is_subscribed(),
                alerter = alerter.is_subscribed(),
                "opening the MQTT port to terminals although not every in-process subscriber has \
                 subscribed after {OPEN_DEADLINE:?}; info messages published before it does may be missed"
            );
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    broker.open().await
}

/// Runs the whole product in one process: the gateway (against `broker` if
/// given, else `config.mqtt.broker`), the alerter, the rollup scheduler
/// (unless `scheduler.enabled` is off), the HTTP endpoints on `http` and
/// the gRPC API on `grpc` when given.
pub async fn run_standalone(
    mut config: Config,
    http: TcpListener,
    grpc: Option<TcpListener>,
    broker: Option<&EmbeddedBroker>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    // Install the metrics recorder before anything records.
    crate::http::metrics_handle();
    if let Some(broker) = broker {
        config.mqtt.broker = broker.internal_url();
        // The in-process clients' own account, when logins are required.
        if let Some((user, password)) = broker.internal_login() {
            config.mqtt.username = Some(user.clone());
            config.mqtt.password = Some(password.clone());
        }
        config.gateway.flush_max_unacked = config
            .gateway
            .flush_max_unacked
            .min(EMBEDDED_FLUSH_MAX_UNACKED);
    }
    // One process, one command: standalone keeps the ClickHouse schema
    // current itself (production runs `tillwatch migrate` as a step).
    if let Some(ch) = tillwatch_gateway::clickhouse_client(&config) {
        match tillwatch_clickhouse::migrate(&ch, config.clickhouse_retention()).await {
            Ok(report) => tracing::info!("{report}"),
            Err(e) if e.class.transient() => {
                tracing::warn!(error = %e, "cannot migrate ClickHouse now; readings are spooled until it answers")
            }
            Err(e) => return Err(e).context("ClickHouse"),
        }
    }
    let (stop_tx, stop_rx) = watch::channel(false);
    let stop_tx = Arc::new(stop_tx);
    let external = stop_tx.clone();
    tokio::spawn(async move {
        shutdown.await;
        let _ = external.send(true);
    });
    let health = Arc::new(GatewayHealth::default());
    if let Some(made) = make_tokens(&mut config)? {
        println!(
            "API tokens for this run (set [[http.tokens]] to choose your own):\n  viewer   {}\n  operator {}",
            made.viewer, made.operator
        );
    }
    // One metadata store pool for every role of the process.
    let store = MetaStore::open(&config).await?;
    // The jobs API reads the scheduler's state; the scheduler does not
    // depend on it (it keeps running if the HTTP side fails).
    let api = crate::http::api_router(&config, store.clone()).await?;
    let http = tokio::spawn(serve_http(
        http,
        Readiness::Gateway(health.clone()),
        api,
        crate::http::HttpServing::of(&config).context("http TLS")?,
        shutdown_requested(stop_rx.clone()),
    ));
    // The gRPC API, on the same store, lake and tokens.
    let grpc = match grpc {
        Some(listener) => Some(spawn_grpc(
            &config,
            store.clone(),
            listener,
            shutdown_requested(stop_rx.clone()),
        )?),
        None => None,
    };
    // The alerter beside the gateway, on the same broker and data dir.
    let alerter_health = Arc::new(tillwatch_alerter::AlerterHealth::default());
    let alerter = {
        let config = config.clone();
        let stop = shutdown_requested(stop_rx.clone());
        let health = alerter_health.clone();
        let store = store.clone();
        tokio::spawn(
            async move { tillwatch_alerter::run_alerter(&config, store, health, stop).await },
        )
    };
    // The rollup scheduler over the same lake and metadata store.
    let scheduler = config.scheduler.enabled.then(|| {
        let config = config.clone();
        let stop = shutdown_requested(stop_rx.clone());
        let store = store.clone();
        tokio::spawn(async move { crate::roles::run_scheduler(&config, store, stop).await })
    });
    let gateway = run_gateway(&config, health.clone(), shutdown_requested(stop_rx));
    let gateway = match broker {
        Some(broker) => {
            tokio::pin!(gateway);
            tokio::select! {
                done = &mut gateway => done,
                opened = open_when_subscribed(broker, &health, &alerter_health) => {
                    if let Err(e) = opened {
                        let _ = stop_tx.send(true);
                        let _ = gateway.await;
                        return Err(e).context("the embedded broker");
                    }
                    gateway.await
                }
            }
        }
        None => gateway.await,
    };
    // The gateway only returns early on an error; take the rest down too.
    let _ = stop_tx.send(true);
    let http = http.await.context("the HTTP server task failed")?;
    let alerter = alerter.await.context("the alerter task failed")?;
    if let Some(scheduler) = scheduler {
        scheduler
            .await
            .context("the scheduler task failed")?
            .context("scheduler")?;
    }
    if let Some(grpc) = grpc {
        grpc.await
            .context("the gRPC server task failed")?
            .context("gRPC server")?;
    }
    gateway.context("gateway")?;
    alerter.context("alerter")?;
    http.context("HTTP server")?;
    Ok(())
}
