//! `tillwatch`: one binary, one subcommand per role. The command line lives
//! in this library so the integration tests can build the same binary.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use tillwatch_config::{Config, SchedulerConfig};
use tillwatch_serve::roles::{bind, signalled};
use tillwatch_serve::{EmbeddedBroker, run_standalone};
use tokio::net::TcpListener;

mod alerts;
mod console;
pub mod history;
mod jobs;
mod progress;

#[derive(Debug, Parser)]
#[command(
    name = "tillwatch",
    version,
    about = "Telemetry for payment-terminal fleets"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Everything in one process, with an embedded MQTT broker unless
    /// --broker names one.
    Standalone(StandaloneArgs),
    /// Standalone plus a simulated fleet: see the product work in one command.
    Demo(DemoArgs),
    /// The ingestion gateway alone, against an external broker.
    Gateway(GatewayArgs),
    /// The HTTP API, dashboards and gRPC API alone, over the shared
    /// metadata store and lake (stateless; run several behind a balancer).
    Api(ApiArgs),
    /// The alerter alone: every terminal's connectivity state and registry,
    /// from the broker into the metadata store.
    Alerter(AlerterArgs),
    /// Alerts and silences, from the metadata store.
    #[command(subcommand)]
    Alerts(alerts::AlertsCommand),
    /// The rollup scheduler alone: runs the jobs' due partitions (standalone
    /// runs it too).
    Scheduler(jobs::SchedulerArgs),
    /// Rollup jobs: list, runs, clear, backfill, lineage.
    #[command(subcommand)]
    Jobs(jobs::JobsCommand),
    /// Create or update the ClickHouse schema (idempotent; records what it applied).
    Migrate(MigrateArgs),
    /// ClickHouse maintenance.
    #[command(subcommand)]
    Clickhouse(ClickhouseCommand),
    /// Print the default configuration as TOML.
    GenerateConfig,
    /// Load a configuration (file, then TILLWATCH__… variables) and run
    /// every check the services run at start-up; exits non-zero naming
    /// each bad key.
    CheckConfig(CheckConfigArgs),
}

#[derive(Debug, Subcommand)]
enum ClickhouseCommand {
    /// Load a date range of the lake into ClickHouse (safe to repeat).
    Backfill(BackfillArgs),
}

/// Overrides for `[clickhouse]`.
#[derive(Debug, Args)]
struct ClickHouseFlags {
    /// ClickHouse HTTP URL, e.g. http://127.0.0.1:8123 (config: clickhouse.url).
    #[arg(long)]
    clickhouse_url: Option<String>,
    /// ClickHouse database (config: clickhouse.database).
    #[arg(long)]
    clickhouse_database: Option<String>,
}

impl ClickHouseFlags {
    fn apply(&self, config: &mut Config) {
        if let Some(url) = &self.clickhouse_url {
            config.clickhouse.url = Some(url.clone());
        }
        if let Some(db) = &self.clickhouse_database {
            config.clickhouse.database = db.clone();
        }
    }
}

/// Overrides for `[alerting]`.
#[derive(Debug, Args)]
struct AlertingFlags {
    /// Send alerts to this Prometheus Alertmanager, e.g. http://127.0.0.1:9093
    /// (config: alerting.alertmanager_url; more receivers in [[alerting.receivers]]).
    #[arg(long)]
    alertmanager_url: Option<String>,
}

impl AlertingFlags {
    fn apply(&self, config: &mut Config) {
        if let Some(url) = &self.alertmanager_url {
            config.alerting.alertmanager_url = Some(url.clone());
        }
    }
}

#[derive(Debug, Args)]
struct AlerterArgs {
    #[command(flatten)]
    common: Common,
    /// The MQTT broker, mqtt://HOST:PORT (config: mqtt.broker).
    #[arg(long)]
    broker: Option<String>,
    /// sqlite://PATH or postgres://… (config: metadata.url).
    #[arg(long)]
    metadata_url: Option<String>,
    #[command(flatten)]
    alerting: AlertingFlags,
}

#[derive(Debug, Args)]
struct CheckConfigArgs {
    #[command(flatten)]
    common: Common,
    /// Do not read secret files (`token_file`, `password_file`,
    /// `url_file`): list them instead (for checking a deployment's
    /// configuration where its secrets are not mounted).
    #[arg(long)]
    no_secret_files: bool,
}

#[derive(Debug, Args)]
struct ApiArgs {
    #[command(flatten)]
    common: Common,
    /// sqlite://PATH or postgres://… (config: metadata.url).
    #[arg(long)]
    metadata_url: Option<String>,
}

#[derive(Debug, Args)]
struct MigrateArgs {
    #[command(flatten)]
    common: Common,
    #[command(flatten)]
    clickhouse: ClickHouseFlags,
    /// Print the SQL a server of --server-version would get, and apply nothing.
    #[arg(long, requires = "server_version")]
    print_sql: bool,
    /// With --print-sql: the server version to render for, e.g. 18.16 or 24.8.
    #[arg(long)]
    server_version: Option<String>,
    /// Lay the schema out on this ClickHouse cluster (config:
    /// clickhouse.cluster): every statement ON CLUSTER, raw tables sharded
    /// by device over replicated local tables.
    #[arg(long)]
    cluster: Option<String>,
}

#[derive(Debug, Args)]
struct BackfillArgs {
    #[command(flatten)]
    common: Common,
    #[command(flatten)]
    clickhouse: ClickHouseFlags,
    /// First UTC day to load, YYYY-MM-DD.
    #[arg(long)]
    from: chrono::NaiveDate,
    /// Last UTC day to load (inclusive), YYYY-MM-DD.
    #[arg(long)]
    to: chrono::NaiveDate,
}

#[derive(Debug, Args)]
struct Common {
    /// TOML configuration file (see `tillwatch generate-config`).
    #[arg(long, env = "TILLWATCH_CONFIG")]
    config: Option<PathBuf>,
    /// Where the lake and the gateway's state live (config: data_dir).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Address for /healthz, /readyz and /metrics (config: http.listen).
    #[arg(long)]
    http_listen: Option<SocketAddr>,
}

#[derive(Debug, Args)]
struct StandaloneArgs {
    #[command(flatten)]
    common: Common,
    /// Use this broker (mqtt://HOST:PORT) instead of the embedded one.
    #[arg(long)]
    broker: Option<String>,
    /// Address of the embedded MQTT broker (config: embedded_broker.listen).
    #[arg(long)]
    mqtt_listen: Option<SocketAddr>,
    #[command(flatten)]
    clickhouse: ClickHouseFlags,
    #[command(flatten)]
    alerting: AlertingFlags,
    /// Where the logs go: `auto` (a file in the data dir, `tillwatch.log`,
    /// with a status line on the terminal, when attached to one and
    /// RUST_LOG is unset; stderr otherwise), `stderr`, or a file's path.
    #[arg(long, default_value = "auto")]
    log: console::LogTo,
}

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
struct GatewayArgs {
    #[command(subcommand)]
    action: Option<GatewayAction>,
    #[command(flatten)]
    common: Common,
    /// The MQTT broker, mqtt://HOST:PORT (config: mqtt.broker).
    #[arg(long)]
    broker: Option<String>,
    #[command(flatten)]
    clickhouse: ClickHouseFlags,
}

#[derive(Debug, Subcommand)]
enum GatewayAction {
    /// Take a gateway out of the ingest watermark for good: its record in
    /// the lake goes, so the rollups stop waiting for it at once (a stalled
    /// one is left out after scheduler.watermark_stall_after anyway).
    Retire(RetireArgs),
}

#[derive(Debug, Args)]
struct RetireArgs {
    /// The gateway's MQTT client id (its mqtt.client_id).
    client_id: String,
    /// Retire it even though it advanced its watermark recently (it seems
    /// to be running: it would write its record again).
    #[arg(long)]
    force: bool,
    #[command(flatten)]
    common: Common,
}

#[derive(Debug, Args)]
struct DemoArgs {
    #[command(flatten)]
    standalone: StandaloneArgs,
    /// Simulated terminals.
    #[arg(long, default_value_t = 60)]
    devices: usize,
    #[arg(long, default_value_t = 4)]
    merchants: usize,
    /// Time between a terminal's readings.
    #[arg(long, default_value_t = 2_000)]
    interval_ms: u64,
    /// How much simulated past to play before the live fleet starts (from
    /// the start of that UTC day), so the pages have days of history; 0
    /// for none. A data dir that has a past keeps it.
    #[arg(long, default_value = "7d", value_parser = humantime::parse_duration)]
    history: Duration,
}

/// The configuration's own checks (store hours, time zones and matchers
/// were parsed when it loaded), then the scheduler's (job settings), so a
/// bad value is refused before anything starts.
pub(crate) fn validate(config: &Config) -> anyhow::Result<()> {
    config.validate()?;
    let receivers = config.alerting.receiver_names();
    tillwatch_rollups::catalog::catalog(
        &config.scheduler,
        &config.retention,
        &receivers,
        tillwatch_rollups::service::engine(config).is_some(),
        tillwatch_domain::UtcMillis::now().0,
    )
    .map_err(|errors| anyhow::anyhow!("invalid configuration:\n  - {}", errors.join("\n  - ")))?;
    Ok(())
}

/// The configuration with its secret files read.
fn load(common: &Common) -> anyhow::Result<Config> {
    let mut config = load_unread(common)?;
    config.read_secret_files()?;
    Ok(config)
}

/// The configuration as given: secret files named, not read.
fn load_unread(common: &Common) -> anyhow::Result<Config> {
    let mut config = Config::load(common.config.as_deref(), std::env::vars())?;
    if let Some(dir) = &common.data_dir {
        config.data_dir = dir.clone();
    }
    if let Some(addr) = common.http_listen {
        config.http.listen = addr;
    }
    Ok(config)
}

fn standalone_config(args: &StandaloneArgs) -> anyhow::Result<Config> {
    let mut config = load(&args.common)?;
    if let Some(addr) = args.mqtt_listen {
        config.embedded_broker.listen = addr;
    }
    if let Some(broker) = &args.broker {
        config.mqtt.broker = broker.clone();
    }
    args.clickhouse.apply(&mut config);
    args.alerting.apply(&mut config);
    validate(&config)?;
    Ok(config)
}

/// Starts the embedded broker off the async workers: it waits, blocking,
/// until the broker accepts connections.
async fn start_broker(
    config: tillwatch_config::EmbeddedBrokerConfig,
) -> anyhow::Result<EmbeddedBroker> {
    let broker = tokio::task::spawn_blocking(move || EmbeddedBroker::start_with(&config))
        .await
        .context("the embedded broker's start-up task failed")??;
    Ok(broker)
}

/// Sends the logs to a file when `--log` says so (or, attended, by
/// default); then a status line is drawn: [`console::status_line`].
fn route_logs(log: &console::LogTo, config: &Config) -> anyhow::Result<Option<PathBuf>> {
    let file = console::log_file(log, &config.data_dir);
    if let Some(path) = &file {
        console::log_to_file(path)?;
    }
    Ok(file)
}

/// Makes this run's API tokens when none are configured, and prints them
/// (before the status line starts).
fn print_tokens(config: &mut Config) -> anyhow::Result<()> {
    if let Some(made) = tillwatch_serve::make_tokens(config)? {
        println!(
            "API tokens for this run (set [[http.tokens]] to choose your own):\n  viewer   {}\n  operator {}",
            made.viewer, made.operator
        );
    }
    Ok(())
}

/// Draws the status line until `stop` (attended only); join it after.
async fn spawn_status(
    config: &Config,
    log: Option<PathBuf>,
    stop: tokio::sync::watch::Receiver<bool>,
) -> Option<tokio::task::JoinHandle<()>> {
    if log.is_none() || !console::attended() {
        return None;
    }
    let store = tillwatch_meta::MetaStore::open(config).await.ok()?;
    Some(tokio::spawn(console::status_line(store, log, stop)))
}

async fn standalone(args: StandaloneArgs) -> anyhow::Result<()> {
    let mut config = standalone_config(&args)?;
    let log = route_logs(&args.log, &config)?;
    let broker = match &args.broker {
        Some(_) => None,
        None => Some(start_broker(config.embedded_broker.clone()).await?),
    };
    let http = bind(config.http.listen, "--http-listen").await?;
    let grpc = match config.grpc.enabled {
        true => Some(bind(config.grpc.listen, "grpc.listen").await?),
        false => None,
    };
    print_where(&config, &http, grpc.as_ref(), broker.as_ref())?;
    print_tokens(&mut config)?;
    let (stop_status, status_stop) = tokio::sync::watch::channel(false);
    let status = spawn_status(&config, log, status_stop).await;
    let result = run_standalone(config, http, grpc, broker.as_ref(), signalled()).await;
    let _ = stop_status.send(true);
    if let Some(status) = status {
        let _ = status.await;
    }
    result
}

fn print_where(
    config: &Config,
    http: &TcpListener,
    grpc: Option<&TcpListener>,
    broker: Option<&EmbeddedBroker>,
) -> anyhow::Result<()> {
    let http = http.local_addr()?;
    let mqtt = broker
        .map(|b| b.url())
        .unwrap_or_else(|| config.mqtt.broker.clone());
    let lake = config.lake_dir();
    println!("Tillwatch is running.");
    println!("  dashboards    http://{http}/ui/   (asks for an API token, printed below)");
    println!(
        "  API           http://{http}/api/v1/   (OpenAPI: http://{http}/api/v1/openapi.json)"
    );
    if let Some(grpc) = grpc {
        println!(
            "  gRPC API      {}   (tillwatch.api.v1.Fleet, with reflection; same tokens)",
            grpc.local_addr()?
        );
    }
    println!("  MQTT broker   {mqtt}   (terminals publish to tw/v1/<merchant>/<device>/telemetry)");
    if let Some(tls) = broker.and_then(EmbeddedBroker::tls_addr)
        && !mqtt.starts_with("mqtts://")
    {
        println!("  MQTT over TLS mqtts://{tls}");
    }
    if broker.is_some_and(|b| b.internal_login().is_some()) {
        println!("  MQTT logins   required (embedded_broker.password_file)");
    }
    println!("  metrics       http://{http}/metrics");
    println!("  health        http://{http}/healthz  http://{http}/readyz");
    println!("  Parquet lake  {}", lake.display());
    println!(
        "  device state  {} (registry and connectivity of every terminal)",
        tillwatch_meta::without_password(&config.metadata_url())
    );
    let receivers: Vec<String> = config
        .alerting
        .all_receivers()
        .iter()
        .map(|r| format!("{} ({:?})", r.name, r.kind).to_lowercase())
        .collect();
    println!(
        "  alerts        tillwatch alerts list --data-dir {}   (sent to: {})",
        config.data_dir.display(),
        if receivers.is_empty() {
            "no receiver; add --alertmanager-url".to_string()
        } else {
            receivers.join(", ")
        }
    );
    if let Some(url) = &config.clickhouse.url {
        println!(
            "  ClickHouse    {url} database {} (query the *_final views or device_latest)",
            config.clickhouse.database
        );
    }
    println!(
        "  query it      duckdb -c \"SELECT device_id, count(*) FROM read_parquet('{}/battery/**/*.parquet', hive_partitioning = true) GROUP BY 1\"",
        lake.display()
    );
    Ok(())
}

/// Binds `wanted`, or a free port on the same host when it is taken.
fn free_or_default(wanted: SocketAddr, what: &str) -> SocketAddr {
    match std::net::TcpListener::bind(wanted) {
        Ok(_) => wanted,
        Err(_) => {
            let fallback = SocketAddr::new(wanted.ip(), 0);
            println!(
                "{what} port {} is taken; using a free one instead",
                wanted.port()
            );
            fallback
        }
    }
}

async fn demo(args: DemoArgs) -> anyhow::Result<()> {
    let mut config = standalone_config(&args.standalone)?;
    if args.standalone.common.data_dir.is_none() && args.standalone.common.config.is_none() {
        config.data_dir = PathBuf::from("tillwatch-demo-data");
    }
    let log = route_logs(&args.standalone.log, &config)?;
    // The simulated stores trade in Europe/London: their days end within
    // two hours of UTC's, so yesterday is rolled up soon after midnight
    // (the default waits for every zone on earth, until noon UTC).
    if config.scheduler.local_day_utc_offsets == SchedulerConfig::default().local_day_utc_offsets {
        config.scheduler.local_day_utc_offsets = [0, 2];
    }
    let sim = tillwatch_sim::SimConfig {
        devices: args.devices,
        merchants: args.merchants.min(args.devices.max(1)),
        interval: Duration::from_millis(args.interval_ms.max(100)),
        faults: tillwatch_sim::Faults::all(),
        ..Default::default()
    };
    play_history(&mut config, &sim, args.history).await?;
    let broker = match &args.standalone.broker {
        Some(_) => None,
        None => {
            let listen = match args.standalone.mqtt_listen {
                Some(addr) => addr,
                None => free_or_default(config.embedded_broker.listen, "MQTT"),
            };
            Some(
                start_broker(tillwatch_config::EmbeddedBrokerConfig {
                    listen,
                    ..config.embedded_broker.clone()
                })
                .await?,
            )
        }
    };
    let http_addr = match args.standalone.common.http_listen {
        Some(addr) => addr,
        None => free_or_default(config.http.listen, "HTTP"),
    };
    let http = bind(http_addr, "--http-listen").await?;
    let grpc = match config.grpc.enabled {
        true => Some(bind(free_or_default(config.grpc.listen, "gRPC"), "grpc.listen").await?),
        false => None,
    };
    print_where(&config, &http, grpc.as_ref(), broker.as_ref())?;
    let sim = tillwatch_sim::SimConfig {
        broker: broker
            .as_ref()
            .map(|b| b.url())
            .unwrap_or_else(|| config.mqtt.broker.clone()),
        ..sim
    };
    println!(
        "  fleet         {} simulated terminals of {} merchants, one reading every {} ms each; Ctrl-C stops",
        sim.devices, sim.merchants, args.interval_ms
    );
    print_tokens(&mut config)?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stop_tx = Arc::new(stop_tx);
    let sim_stop = stop_rx.clone();
    let fleet = tokio::spawn(async move { tillwatch_sim::run(sim, sim_stop).await });
    let gateway_stop = tillwatch_bus::shutdown_requested(stop_rx.clone());
    let signal_tx = stop_tx.clone();
    tokio::spawn(async move {
        signalled().await;
        let _ = signal_tx.send(true);
    });
    let status = spawn_status(&config, log, stop_rx.clone()).await;
    let result = run_standalone(config, http, grpc, broker.as_ref(), gateway_stop).await;
    let _ = stop_tx.send(true);
    if let Some(status) = status {
        let _ = status.await;
    }
    if let Ok(Ok(report)) = fleet.await {
        println!("fleet: {}", serde_json_line(&report));
    }
    result
}

/// `demo --history`: plays the fleet's past from the start of the UTC
/// day `span` ago, unless the data dir has one; the jobs start there.
async fn play_history(
    config: &mut Config,
    fleet: &tillwatch_sim::SimConfig,
    span: Duration,
) -> anyhow::Result<()> {
    if span.is_zero() || history::played_before(config)? {
        return Ok(());
    }
    if config.clickhouse.url.is_some() {
        // The past goes to the lake and the metadata store only; rollups on
        // ClickHouse would find none of it there.
        println!(
            "The demo's history is played into the lake only: with ClickHouse configured it is \
             skipped (give --history 0 to say so)."
        );
        return Ok(());
    }
    let now_ms = tillwatch_domain::UtcMillis::now().0;
    let back = i64::try_from(span.as_millis()).unwrap_or(i64::MAX);
    let day = 86_400_000;
    let from = now_ms.saturating_sub(back).div_euclid(day) * day;
    let start = tillwatch_rollups::catalog::parse_start(&config.scheduler.start, now_ms)
        .unwrap_or(i64::MAX);
    if start > from {
        config.scheduler.start = jiff::Timestamp::from_millisecond(from)
            .map(|t| t.to_zoned(jiff::tz::TimeZone::UTC).date().to_string())
            .context("the history's first day")?;
    }
    println!(
        "Preparing the demo: playing {} days of the past of {} terminals (one of them goes quiet before now) into {} …",
        (now_ms - from + day - 1) / day,
        fleet.devices + 1,
        config.data_dir.display()
    );
    let played = history::play(config, fleet, from, now_ms).await?;
    println!(
        "  played {} readings, {} job runs, {} alerts ({} resolved since) in {:.0} s",
        played.readings, played.runs, played.alerts_fired, played.alerts_resolved, played.took_s
    );
    println!();
    Ok(())
}

fn serde_json_line(report: &tillwatch_sim::Report) -> String {
    format!(
        "{} readings acked, {} late, {} duplicates, {} invalid messages sent",
        report.readings,
        report.late_readings,
        report.duplicates_sent,
        report.invalid_messages()
    )
}

/// `tillwatch gateway retire CLIENT_ID`.
async fn retire_gateway(args: RetireArgs) -> anyhow::Result<()> {
    let config = load(&args.common)?;
    validate(&config)?;
    let lake = tillwatch_storage::Lake::from_config(&config)?;
    let writer = args.client_id.clone();
    let stall_after = config.scheduler.watermark_stall_after;
    let (records, retired) = tokio::task::spawn_blocking(move || {
        let records = lake.watermarks()?;
        let now = tillwatch_domain::UtcMillis::now().0;
        let recent = records
            .iter()
            .find(|(w, _)| *w == writer)
            .filter(|(_, at)| now.saturating_sub(*at) < stall_after.as_millis() as i64);
        if let Some((_, at)) = recent
            && !args.force
        {
            anyhow::bail!(
                "gateway {writer} advanced its ingest watermark {} s ago: it looks alive and would \
                 record it again; stop it first, or give --force",
                now.saturating_sub(*at) / 1000
            );
        }
        let retired = lake.retire_writer(&writer)?;
        Ok::<_, anyhow::Error>((records, retired))
    })
    .await
    .context("the retire task failed")??;
    if retired {
        println!(
            "gateway {} retired: the rollups no longer wait for it",
            args.client_id
        );
        Ok(())
    } else {
        let known: Vec<&str> = records.iter().map(|(w, _)| w.as_str()).collect();
        anyhow::bail!(
            "no gateway {:?} has a watermark in {}; the gateways there are: {}",
            args.client_id,
            config.lake_dir().display(),
            if known.is_empty() {
                "none".to_string()
            } else {
                known.join(", ")
            }
        )
    }
}

async fn gateway(args: GatewayArgs) -> anyhow::Result<()> {
    if let Some(GatewayAction::Retire(retire)) = args.action {
        return retire_gateway(retire).await;
    }
    let mut config = load(&args.common)?;
    if let Some(broker) = args.broker {
        config.mqtt.broker = broker;
    }
    args.clickhouse.apply(&mut config);
    validate(&config)?;
    tillwatch_serve::roles::gateway(config).await
}

fn check_config(args: CheckConfigArgs) -> anyhow::Result<()> {
    let mut config = load_unread(&args.common)?;
    if args.no_secret_files {
        for (key, _, file) in config.secret_fields() {
            if let Some(path) = file {
                println!("{key}: read from {} (not checked)", path.display());
            }
        }
    } else {
        config.read_secret_files()?;
    }
    if args.no_secret_files {
        for token in &mut config.http.tokens {
            if token.token.is_some() {
                continue;
            }
            if let Some(path) = token.token_file.take() {
                println!(
                    "http.tokens {:?}: reads its token from {} (not checked)",
                    token.name,
                    path.display()
                );
                // A stand-in of the shortest accepted length, so the rest
                // of the checks run as they would with the file mounted.
                token.token = Some("x".repeat(tillwatch_config::MIN_TOKEN_LEN));
            }
        }
    }
    validate(&config)?;
    if let Some(path) = &config.gateway.provisioning_file {
        let source = tillwatch_bus::provisioning::ProvisioningSource::open(path)?;
        println!(
            "gateway.provisioning_file: {} terminals provisioned in {}",
            source.current().len(),
            path.display()
        );
    }
    println!("configuration OK");
    Ok(())
}

/// The API role: the HTTP API, the dashboards and (when enabled) the gRPC
/// API over the shared metadata store and lake. Stateless: run as many as
/// the dashboards' users need behind one load balancer.
async fn api(args: ApiArgs) -> anyhow::Result<()> {
    let mut config = load(&args.common)?;
    if let Some(url) = args.metadata_url {
        config.metadata.url = Some(url);
    }
    validate(&config)?;
    tillwatch_serve::roles::api(config).await
}

async fn alerter(args: AlerterArgs) -> anyhow::Result<()> {
    let mut config = load(&args.common)?;
    if let Some(broker) = args.broker {
        config.mqtt.broker = broker;
    }
    if let Some(url) = args.metadata_url {
        config.metadata.url = Some(url);
    }
    args.alerting.apply(&mut config);
    validate(&config)?;
    tillwatch_serve::roles::alerter(config).await
}

fn clickhouse_config(common: &Common, flags: &ClickHouseFlags) -> anyhow::Result<Config> {
    let mut config = load(common)?;
    flags.apply(&mut config);
    validate(&config)?;
    Ok(config)
}

fn require_clickhouse(config: &Config) -> anyhow::Result<tillwatch_clickhouse::ClickHouse> {
    tillwatch_gateway::clickhouse_client(config).context(
        "no ClickHouse configured: set clickhouse.url in the config, TILLWATCH__CLICKHOUSE__URL, or --clickhouse-url",
    )
}

async fn migrate(args: MigrateArgs) -> anyhow::Result<()> {
    let mut config = clickhouse_config(&args.common, &args.clickhouse)?;
    if let Some(cluster) = args.cluster {
        config.clickhouse.cluster = Some(cluster);
    }
    if args.print_sql {
        let version = args.server_version.as_deref().unwrap_or_default();
        let version = tillwatch_storage::clickhouse_ddl::ServerVersion::parse(version)
            .context("--server-version")?;
        let database = &config.clickhouse.database;
        for m in tillwatch_storage::clickhouse_ddl::MIGRATIONS {
            println!("-- {:03}_{}", m.version, m.name);
            let statements = m.statements(
                database,
                version.features(),
                config.clickhouse.cluster.as_deref(),
            )?;
            for statement in statements {
                println!("{statement};\n");
            }
        }
        return Ok(());
    }
    let ch = require_clickhouse(&config)?;
    let report = tillwatch_clickhouse::migrate(&ch, config.clickhouse_retention()).await?;
    println!("{report}");
    Ok(())
}

async fn backfill(args: BackfillArgs) -> anyhow::Result<()> {
    let config = clickhouse_config(&args.common, &args.clickhouse)?;
    let ch = require_clickhouse(&config)?;
    let lake = tillwatch_storage::Lake::from_config(&config)?;
    let started = std::time::Instant::now();
    let mut bar = progress::Bar::new();
    let report = tillwatch_clickhouse::backfill(
        &ch,
        &lake,
        args.from,
        args.to,
        config.clickhouse.insert_max_rows,
        |p| bar.draw(p, started.elapsed()),
    )
    .await?;
    bar.finish();
    println!(
        "backfilled {} rows from {} files into {} partitions in {:.1} s",
        report.rows,
        report.files,
        report.partitions,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Parses the command line, runs the chosen role and returns its exit code.
pub fn run_cli() -> std::process::ExitCode {
    let cli = Cli::parse();
    // A role that may log to a file writes no colour codes.
    let log = match &cli.command {
        Command::Standalone(a) => Some(&a.log),
        Command::Demo(d) => Some(&d.standalone.log),
        _ => None,
    };
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && log.is_none_or(|l| *l == console::LogTo::Stderr);
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,rumqttd=off".into()),
        )
        .with_ansi(ansi)
        .with_writer(|| console::LogWriter)
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Standalone(args) => standalone(args).await,
            Command::Demo(args) => demo(args).await,
            Command::Gateway(args) => gateway(args).await,
            Command::Api(args) => api(args).await,
            Command::Alerter(args) => alerter(args).await,
            Command::Alerts(command) => alerts::run(command).await,
            Command::Scheduler(args) => jobs::scheduler(args).await,
            Command::Jobs(command) => jobs::run(command).await,
            Command::Migrate(args) => migrate(args).await,
            Command::Clickhouse(ClickhouseCommand::Backfill(args)) => backfill(args).await,
            Command::CheckConfig(args) => check_config(args),
            Command::GenerateConfig => {
                print!("{}", Config::default_toml());
                Ok(())
            }
        }
    });
    // The embedded broker's threads never end; leave without waiting.
    runtime.shutdown_timeout(Duration::from_secs(1));
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
