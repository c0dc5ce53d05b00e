//! Tillwatch's configuration: one TOML file, environment overrides, and a
//! validation pass that reports every problem at once.
//!
//! Precedence, lowest first: built-in defaults, the TOML file, environment
//! variables `TILLWATCH__<SECTION>__<KEY>` (for example
//! `TILLWATCH__GATEWAY__FLUSH_MAX_AGE=2s`), then command-line flags, which
//! the binary applies to the loaded [`Config`] before calling
//! [`Config::validate`].

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

mod alerting;
mod retention;
mod scheduler;
pub use alerting::*;
pub use retention::*;
pub use scheduler::*;

/// Everything that can go wrong loading a configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("environment variable {var}: {message}")]
    Env { var: String, message: String },
    #[error("invalid configuration:\n  - {}", .0.join("\n  - "))]
    Invalid(Vec<String>),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Root of everything Tillwatch keeps on local disk: the Parquet lake
    /// under `lake/`, the gateway's dedup journal under `gateway/`.
    pub data_dir: PathBuf,
    pub mqtt: MqttConfig,
    pub gateway: GatewayConfig,
    pub http: HttpConfig,
    pub grpc: GrpcConfig,
    pub embedded_broker: EmbeddedBrokerConfig,
    pub clickhouse: ClickHouseConfig,
    pub lake: LakeConfig,
    pub metadata: MetadataConfig,
    pub alerter: AlerterConfig,
    pub alerting: AlertingConfig,
    pub scheduler: SchedulerConfig,
    pub retention: RetentionConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("tillwatch-data"),
            mqtt: MqttConfig::default(),
            gateway: GatewayConfig::default(),
            http: HttpConfig::default(),
            grpc: GrpcConfig::default(),
            embedded_broker: EmbeddedBrokerConfig::default(),
            clickhouse: ClickHouseConfig::default(),
            lake: LakeConfig::default(),
            metadata: MetadataConfig::default(),
            alerter: AlerterConfig::default(),
            alerting: AlertingConfig::default(),
            scheduler: SchedulerConfig::default(),
            retention: RetentionConfig::default(),
        }
    }
}

/// How the gateway reaches the MQTT broker.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MqttConfig {
    /// `mqtt://HOST:PORT`, or `mqtts://HOST:PORT` for TLS (verified against
    /// `ca_file`, else the system's root certificates). Standalone mode
    /// ignores it unless `--broker` is given and runs an embedded broker
    /// instead.
    pub broker: String,
    /// Fixed per gateway: the broker keeps this client's persistent session
    /// (and its unacknowledged messages) under this id.
    pub client_id: String,
    /// When set, subscribe as `$share/<group>/…` so gateways sharing the
    /// group split the stream.
    pub shared_group: Option<String>,
    #[serde(with = "humantime_serde")]
    pub keep_alive: Duration,
    pub username: Option<String>,
    /// Better given as `password_file` (a mounted secret) or through
    /// `TILLWATCH__MQTT__PASSWORD` than written in a file.
    pub password: Option<String>,
    /// A file holding the password (surrounding whitespace is ignored).
    pub password_file: Option<PathBuf>,
    /// `mqtts://` only: the PEM certificate(s) of the CA that signed the
    /// broker's certificate; unset means the system's root certificates.
    pub ca_file: Option<PathBuf>,
}

impl std::fmt::Debug for MqttConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MqttConfig")
            .field("broker", &self.broker)
            .field("client_id", &self.client_id)
            .field("shared_group", &self.shared_group)
            .field("keep_alive", &self.keep_alive)
            .field("username", &self.username)
            .field("password", &redacted(&self.password))
            .field("password_file", &self.password_file)
            .field("ca_file", &self.ca_file)
            .finish()
    }
}

/// How a secret shows in `Debug` output: whether it is set, never what it is.
fn redacted(secret: &Option<String>) -> Option<&'static str> {
    secret.as_ref().map(|_| "<redacted>")
}

/// A URL fit to print: any password in it replaced by `***`.
pub fn without_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    match authority.rsplit_once('@') {
        Some((userinfo, host)) if userinfo.contains(':') => {
            let user = userinfo.split(':').next().unwrap_or_default();
            format!("{scheme}://{user}:***@{host}{path}")
        }
        _ => url.to_string(),
    }
}

impl Default for MqttConfig {
    fn default() -> Self {
        MqttConfig {
            broker: "mqtt://127.0.0.1:1883".into(),
            client_id: "tillwatch-gateway-1".into(),
            shared_group: None,
            keep_alive: Duration::from_secs(30),
            username: None,
            password: None,
            password_file: None,
            ca_file: None,
        }
    }
}

/// Ingestion: validation limits and when buffered rows become a file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GatewayConfig {
    /// Larger payloads go to dead letters (which keep their first 4 KiB).
    pub max_payload_bytes: usize,
    /// Flush when this many rows are buffered...
    pub flush_max_rows: usize,
    /// ...or when this many messages await their ack. Keep it below the
    /// broker's in-flight window for this client (Mosquitto's
    /// `max_inflight_messages`; the embedded broker allows 100, so
    /// standalone mode caps it at 80), or the broker stalls until the age
    /// limit below.
    pub flush_max_unacked: usize,
    /// ...or when the oldest buffered row is this old. Messages are acked
    /// only after their flush, so this bounds publish-to-ack latency.
    #[serde(with = "humantime_serde")]
    pub flush_max_age: Duration,
    /// Stop taking messages from the broker while this much is buffered or
    /// being written (back-pressure instead of growing).
    pub max_buffered_bytes: usize,
    /// Sample times further ahead of the gateway's clock are rejected.
    #[serde(with = "humantime_serde")]
    pub max_future: Duration,
    /// Sample times older than this are rejected.
    #[serde(with = "humantime_serde")]
    pub max_age: Duration,
    /// Dead letters stored per second at most (with bursts of ten
    /// seconds' worth); beyond it they are only counted
    /// (`tillwatch_gateway_dead_letters_dropped_total`), so a flood of
    /// garbage cannot fill the lake.
    pub dead_letters_per_second: u32,
    /// Boots of one terminal kept apart in the dedup index within
    /// `max_age`; readings of a boot beyond this are dead-lettered
    /// (`too_many_boots`), so random boot ids cannot grow memory without
    /// bound.
    pub max_boots_per_device: usize,
    /// The operator's record of which merchant (and store) each terminal
    /// belongs to (`device_id,merchant_id[,store_id]` per line). When set,
    /// every consumer of device topics (gateway, alerter) dead-letters a
    /// message from a terminal that is not in it, or that sends under
    /// another merchant or names another store. Read again when it
    /// changes.
    pub provisioning_file: Option<PathBuf>,
    /// After each flush, tell every terminal whose readings it held which
    /// of them are durable (`DurableReadings` on
    /// `tw/v1/MERCHANT/DEVICE/durable`, QoS 0), so firmware that keeps
    /// readings until then loses nothing even when the broker does.
    pub confirm_durable: bool,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            max_payload_bytes: 256 * 1024,
            flush_max_rows: 100_000,
            flush_max_unacked: 20_000,
            flush_max_age: Duration::from_millis(500),
            max_buffered_bytes: 64 * 1024 * 1024,
            max_future: Duration::from_secs(5 * 60),
            max_age: Duration::from_secs(30 * 24 * 3600),
            dead_letters_per_second: 100,
            max_boots_per_device: 1000,
            provisioning_file: None,
            confirm_durable: true,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Serves `/healthz`, `/readyz` and `/metrics` (open, for probes and
    /// scrapers) and the API under `/api/v1` (bearer tokens).
    pub listen: SocketAddr,
    /// Who may call the API: `[[http.tokens]]` with `name`, `role`
    /// (`viewer` reads; `operator` also creates silences, runs backfills
    /// and controls jobs) and `token` or `token_file`. With none, the
    /// standalone and demo commands make a viewer and an operator token for
    /// the run and print them.
    pub tokens: Vec<ApiToken>,
    /// Connections served at once at most; one more is closed at accept.
    pub max_connections: usize,
    /// A client must send a request's headers within this, and an idle
    /// keep-alive connection is closed after it.
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// Serve HTTP (and gRPC) over TLS with this PEM certificate chain,
    /// leaf first, and `tls_key_file` (both or neither).
    pub tls_cert_file: Option<PathBuf>,
    /// The certificate's private key, PEM (PKCS#8, PKCS#1 or SEC1).
    pub tls_key_file: Option<PathBuf>,
}

/// The gRPC API (`tillwatch.api.v1.Fleet`, with server reflection), on
/// its own port beside HTTP; it takes the tokens of `[[http.tokens]]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GrpcConfig {
    /// Off: no gRPC listener.
    pub enabled: bool,
    pub listen: SocketAddr,
    /// How often a `WatchChanges` stream looks for new changes.
    #[serde(with = "humantime_serde")]
    pub change_poll: Duration,
}

impl Default for GrpcConfig {
    fn default() -> Self {
        GrpcConfig {
            enabled: true,
            listen: SocketAddr::from(([127, 0, 0, 1], 9465)),
            change_poll: Duration::from_secs(1),
        }
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 9464)),
            tokens: Vec::new(),
            max_connections: 1024,
            header_read_timeout: Duration::from_secs(10),
            tls_cert_file: None,
            tls_key_file: None,
        }
    }
}

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Reads everything.
    Viewer,
    /// Reads, and changes: silences, backfills, job control.
    Operator,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
        }
    }
}

/// One bearer token of the API.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiToken {
    /// Names the holder in logs and errors (the token itself never is).
    pub name: String,
    pub role: Role,
    /// The token; better given as `token_file` (a mounted secret) or
    /// through the environment than written in a file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// A file holding the token (surrounding whitespace is ignored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
}

/// The shortest token accepted: guessing one must be hopeless.
pub const MIN_TOKEN_LEN: usize = 16;

impl ApiToken {
    /// The token, from the config or its file.
    pub fn secret(&self) -> Result<String, TokenError> {
        let secret = match (&self.token, &self.token_file) {
            (Some(t), None) => t.clone(),
            (None, Some(path)) => std::fs::read_to_string(path)
                .map_err(|source| TokenError::File {
                    path: path.clone(),
                    source,
                })?
                .trim()
                .to_string(),
            _ => return Err(TokenError::NotOne),
        };
        if secret.chars().count() < MIN_TOKEN_LEN {
            return Err(TokenError::TooShort);
        }
        Ok(secret)
    }
}

/// Why an API token cannot be used (never quoting the token).
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("token_file {}: {source}", path.display())]
    File {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("give exactly one of token and token_file")]
    NotOne,
    #[error("the token must have at least {MIN_TOKEN_LEN} characters")]
    TooShort,
}

impl std::fmt::Debug for ApiToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiToken")
            .field("name", &self.name)
            .field("role", &self.role)
            .field("token", &redacted(&self.token))
            .field("token_file", &self.token_file)
            .finish()
    }
}

/// The in-process broker of standalone mode.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EmbeddedBrokerConfig {
    /// Plain MQTT (closed when `tls_listen` is set, unless
    /// `plain_with_tls`).
    pub listen: SocketAddr,
    /// Terminals connected at once at most. Each costs three of the
    /// process's file descriptors (its socket and the relay to rumqttd), so
    /// at most 5,000 under a 20,000 open-file limit.
    pub max_connections: usize,
    /// Keep the plain listener open beside `tls_listen`.
    pub plain_with_tls: bool,
    /// Accept clients without a login on an address reachable from other
    /// machines. Without it, a `listen` or `tls_listen` beyond loopback
    /// needs `password_file`.
    pub allow_anonymous: bool,
    /// Also MQTT over TLS on this address (8883 by convention), with
    /// `cert_file` and `key_file`.
    pub tls_listen: Option<SocketAddr>,
    /// The broker's certificate chain, PEM, leaf first.
    pub cert_file: Option<PathBuf>,
    /// Its private key, PEM (PKCS#8, PKCS#1 or SEC1).
    pub key_file: Option<PathBuf>,
    /// A Mosquitto password file (made with `mosquitto_passwd`): when set,
    /// every client must log in with a username and password found in it,
    /// on both listeners. Give each terminal its own (username = device
    /// id). Tillwatch's own gateway and alerter in the same process use an
    /// account made for the run.
    pub password_file: Option<PathBuf>,
}

impl Default for EmbeddedBrokerConfig {
    fn default() -> Self {
        EmbeddedBrokerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 1883)),
            max_connections: 5_000,
            plain_with_tls: false,
            allow_anonymous: false,
            tls_listen: None,
            cert_file: None,
            key_file: None,
            password_file: None,
        }
    }
}

/// The ClickHouse sink. Off unless `url` is set; when set, every stored
/// reading also goes to ClickHouse through a durable on-disk spool.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClickHouseConfig {
    /// HTTP interface, `http://HOST:8123` or `https://HOST:8443` (TLS,
    /// verified against the system's root certificates).
    pub url: Option<String>,
    pub database: String,
    pub user: String,
    /// Better given as `password_file` or through
    /// `TILLWATCH__CLICKHOUSE__PASSWORD` than written in a file.
    pub password: Option<String>,
    /// A file holding the password (surrounding whitespace is ignored).
    pub password_file: Option<PathBuf>,
    /// A ClickHouse cluster (a name in the servers' `remote_servers`):
    /// `tillwatch migrate` then creates every table `ON CLUSTER`, the raw
    /// tables sharded by device over replicated local tables (see
    /// `clickhouse/README.md`). Unset for one server.
    pub cluster: Option<String>,
    /// Readings waiting for ClickHouse are kept on local disk up to this
    /// size; when it is full the gateway stops acking (back-pressure).
    pub spool_max_bytes: u64,
    /// Most rows sent in one INSERT when draining the spool.
    pub insert_max_rows: usize,
    /// An INSERT that takes longer is abandoned and retried.
    #[serde(with = "humantime_serde")]
    pub insert_timeout: Duration,
    /// Raw rows older than this are dropped by ClickHouse itself (TTL), on
    /// servers that support it (19.6+); unset means `retention.raw` (and
    /// forever with `retention.enabled = false`). The lake is unaffected.
    #[serde(default, with = "humantime_serde")]
    pub retention: Option<Duration>,
}

impl std::fmt::Debug for ClickHouseConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClickHouseConfig")
            .field("url", &self.url.as_deref().map(without_password))
            .field("database", &self.database)
            .field("user", &self.user)
            .field("password", &redacted(&self.password))
            .field("password_file", &self.password_file)
            .field("cluster", &self.cluster)
            .field("spool_max_bytes", &self.spool_max_bytes)
            .field("insert_max_rows", &self.insert_max_rows)
            .field("insert_timeout", &self.insert_timeout)
            .field("retention", &self.retention)
            .finish()
    }
}

impl Default for ClickHouseConfig {
    fn default() -> Self {
        ClickHouseConfig {
            url: None,
            database: "tillwatch".into(),
            user: "default".into(),
            password: None,
            password_file: None,
            cluster: None,
            spool_max_bytes: 1 << 30,
            insert_max_rows: 200_000,
            insert_timeout: Duration::from_secs(30),
            retention: None,
        }
    }
}

/// Where device registry, state and alerts are kept.
#[derive(Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetadataConfig {
    /// `sqlite://PATH` or `postgres://USER@HOST:PORT/DATABASE`; unset means
    /// `sqlite://<data_dir>/metadata.db`. A URL with a PostgreSQL password
    /// in it is better given as `url_file` (a mounted secret) or through
    /// `TILLWATCH__METADATA__URL` than written in a file.
    pub url: Option<String>,
    /// A file holding the URL (surrounding whitespace is ignored).
    pub url_file: Option<PathBuf>,
}

impl std::fmt::Debug for MetadataConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetadataConfig")
            .field("url", &self.url.as_deref().map(without_password))
            .field("url_file", &self.url_file)
            .finish()
    }
}

/// Where the Parquet lake lives.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LakeConfig {
    /// A directory every role shares (gateways write it, the scheduler and
    /// the API read it), or an S3-compatible bucket as
    /// `s3://bucket/prefix` (reached as `lake.s3` says); unset means
    /// `<data_dir>/lake`. Split deployments point it at one shared volume
    /// or bucket while each gateway keeps its own `data_dir` for its dedup
    /// journal and ClickHouse spool.
    pub path: Option<PathBuf>,
    pub s3: LakeS3Config,
}

/// How to reach the bucket of an `s3://` lake. Unset keys fall back to the
/// standard `AWS_*` environment variables (`AWS_ACCESS_KEY_ID`,
/// `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`, `AWS_ENDPOINT`, …).
#[derive(Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LakeS3Config {
    /// `http(s)://host:port` of a store other than AWS (MinIO, Ceph RGW,
    /// …); requests go path-style to it.
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub access_key_id: Option<String>,
    /// Better given as `secret_access_key_file` (a mounted secret) or
    /// through `AWS_SECRET_ACCESS_KEY` than written in a file.
    pub secret_access_key: Option<String>,
    /// A file holding the secret key (surrounding whitespace is ignored).
    pub secret_access_key_file: Option<PathBuf>,
    /// Allow a plain-HTTP `endpoint` (a store on a private network).
    pub allow_http: bool,
}

/// What a lake root names: `None` for a local directory, the bucket of an
/// `s3://bucket/prefix` URL, or an error saying what is wrong with another
/// URL. The one reading of `lake.path`, for its validation and for opening
/// the lake.
pub fn lake_bucket(root: &Path) -> Result<Option<&str>, LakeRootError> {
    let Some(text) = root.to_str().filter(|t| t.contains("://")) else {
        return Ok(None);
    };
    let Some(rest) = text.strip_prefix("s3://") else {
        return Err(LakeRootError::NotS3(text.to_string()));
    };
    match rest.split('/').next() {
        Some(bucket) if !bucket.is_empty() => Ok(Some(bucket)),
        _ => Err(LakeRootError::NoBucket(text.to_string())),
    }
}

/// A lake root that is a URL but not one the lake can open.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LakeRootError {
    #[error("{0:?} is not a directory or an s3://bucket/prefix URL")]
    NotS3(String),
    #[error("{0:?} names no bucket")]
    NoBucket(String),
}

impl std::fmt::Debug for LakeS3Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LakeS3Config")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &redacted(&self.secret_access_key))
            .field("secret_access_key_file", &self.secret_access_key_file)
            .field("allow_http", &self.allow_http)
            .finish()
    }
}

impl Config {
    /// The lake's root directory, with the default filled in.
    pub fn lake_dir(&self) -> PathBuf {
        self.lake
            .path
            .clone()
            .unwrap_or_else(|| self.data_dir.join("lake"))
    }

    /// How long ClickHouse keeps raw rows (its TTL): `clickhouse.retention`,
    /// else the lake's `retention.raw` while retention is on.
    pub fn clickhouse_retention(&self) -> Option<Duration> {
        self.clickhouse
            .retention
            .or_else(|| self.retention.enabled.then_some(self.retention.raw))
    }

    /// The metadata store's URL, with the default filled in.
    pub fn metadata_url(&self) -> String {
        self.metadata
            .url
            .clone()
            .unwrap_or_else(|| format!("sqlite://{}", self.data_dir.join("metadata.db").display()))
    }
}

/// The alerter's process: device state from MQTT (its rules are under
/// `[alerting]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlerterConfig {
    /// The alerter's persistent MQTT session. Alerters sharing one
    /// metadata store take turns (one active, the others on standby) and
    /// should share this id too: the one taking over then receives what
    /// queued for the session while none was active.
    pub client_id: String,
    /// This alerter's name on the lease that makes it the active one;
    /// unset means `<host>-<pid>`.
    pub name: Option<String>,
    /// How long the active alerter's lease holds unrenewed (it renews every
    /// third of this): how soon a standby takes over from one that died.
    #[serde(with = "humantime_serde")]
    pub lease: Duration,
    /// A device is offline by silence after this many of its usual gaps
    /// between readings...
    pub silence_gaps: f64,
    /// ...but not sooner than this...
    #[serde(with = "humantime_serde")]
    pub silence_floor: Duration,
    /// ...nor later than this.
    #[serde(with = "humantime_serde")]
    pub silence_ceiling: Duration,
    /// The gap assumed until a device's cadence is learned.
    #[serde(with = "humantime_serde")]
    pub silence_initial_gap: Duration,
}

impl Default for AlerterConfig {
    fn default() -> Self {
        AlerterConfig {
            client_id: "tillwatch-alerter-1".into(),
            name: None,
            lease: Duration::from_secs(15),
            silence_gaps: 3.0,
            silence_floor: Duration::from_secs(30),
            silence_ceiling: Duration::from_secs(30 * 60),
            silence_initial_gap: Duration::from_secs(60),
        }
    }
}

/// `<host>-<pid>`: a process's default name on its claims and leases
/// (`fallback` when the host has no name).
pub fn process_name(fallback: &str) -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| fallback.into());
    format!("{host}-{}", std::process::id())
}

/// Why a broker URL is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BrokerUrlError {
    #[error(
        "broker URL {0:?} must start with mqtt:// or mqtts:// (for example mqtt://127.0.0.1:1883)"
    )]
    Scheme(String),
    #[error("broker URL {url:?} has an invalid port {port:?}")]
    Port { url: String, port: String },
    #[error("broker URL {0:?} has no host")]
    NoHost(String),
}

/// Host and port of an `mqtt://HOST:PORT` or `mqtts://HOST:PORT` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerAddr {
    pub host: String,
    pub port: u16,
    /// `mqtts://`: MQTT over TLS.
    pub tls: bool,
}

impl BrokerAddr {
    pub fn parse(url: &str) -> Result<Self, BrokerUrlError> {
        let (rest, tls) = match (url.strip_prefix("mqtt://"), url.strip_prefix("mqtts://")) {
            (Some(rest), _) => (rest, false),
            (_, Some(rest)) => (rest, true),
            _ => return Err(BrokerUrlError::Scheme(url.to_string())),
        };
        let rest = rest.trim_end_matches('/');
        let (host, port) = match rest.rsplit_once(':') {
            Some((host, port)) => {
                let port = port.parse::<u16>().map_err(|_| BrokerUrlError::Port {
                    url: url.to_string(),
                    port: port.to_string(),
                })?;
                (host, port)
            }
            None => (rest, if tls { 8883 } else { 1883 }),
        };
        if host.is_empty() {
            return Err(BrokerUrlError::NoHost(url.to_string()));
        }
        Ok(BrokerAddr {
            host: host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string(),
            port,
            tls,
        })
    }
}

impl Config {
    /// Defaults, then `path` if given, then `TILLWATCH__…` variables from
    /// `env`. Not validated yet: flags may still change it.
    pub fn load(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let (mut table, source, text) = match path {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.to_path_buf(),
                    source,
                })?;
                let table: toml::Table = toml::from_str(&text).map_err(|e| ConfigError::Parse {
                    path: path.to_path_buf(),
                    message: e.to_string(),
                })?;
                (table, path.to_path_buf(), Some(text))
            }
            None => (toml::Table::new(), PathBuf::from("<defaults>"), None),
        };
        let parse = |table: &toml::Table| Config::deserialize(toml::Value::Table(table.clone()));
        let mut config = parse(&table).map_err(|e| {
            // Read from the file's own text, the error names its line.
            let spanned = text
                .as_deref()
                .and_then(|t| toml::from_str::<Config>(t).err());
            ConfigError::Parse {
                path: source,
                message: spanned.map_or_else(|| e.to_string(), |s| s.to_string()),
            }
        })?;
        let mut env_vars: Vec<(String, String)> = env
            .into_iter()
            .filter(|(k, _)| k.starts_with("TILLWATCH__"))
            .collect();
        env_vars.sort();
        // One variable at a time, so an error names the variable at fault.
        for (var, value) in &env_vars {
            let before = table.clone();
            apply_env(&mut table, var, value, true)?;
            config = match parse(&table) {
                Ok(config) => config,
                // `1234` is a number to TOML but may be meant as a string
                // (an all-digit password): try the text as it is.
                Err(typed) => {
                    table = before;
                    apply_env(&mut table, var, value, false)?;
                    parse(&table).map_err(|_| ConfigError::Env {
                        var: var.clone(),
                        message: typed.to_string(),
                    })?
                }
            };
        }
        Ok(config)
    }

    /// Reads every secret given as a file (`mqtt.password_file`,
    /// `clickhouse.password_file`, `metadata.url_file`,
    /// `lake.s3.secret_access_key_file`) into its value, so
    /// a missing or unreadable secret stops the process at start, named.
    /// Errors name the key and the file, never the contents. (API tokens'
    /// `token_file`s are read when the API starts.)
    pub fn read_secret_files(&mut self) -> Result<(), ConfigError> {
        let mut errors = Vec::new();
        for (key, value, file) in self.secret_fields() {
            let Some(path) = file else { continue };
            if value.is_some() {
                errors.push(format!("give one of {key} and {key}_file, not both"));
                continue;
            }
            match std::fs::read_to_string(path) {
                Ok(text) if !text.trim().is_empty() => *value = Some(text.trim().to_string()),
                Ok(_) => errors.push(format!("{key}_file {}: the file is empty", path.display())),
                Err(e) => errors.push(format!("{key}_file {}: {e}", path.display())),
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid(errors))
        }
    }

    /// Every secret that may be given as a file: its key, its value and
    /// the `<key>_file` that holds it.
    pub fn secret_fields(&mut self) -> [(&'static str, &mut Option<String>, &Option<PathBuf>); 4] {
        [
            (
                "mqtt.password",
                &mut self.mqtt.password,
                &self.mqtt.password_file,
            ),
            (
                "clickhouse.password",
                &mut self.clickhouse.password,
                &self.clickhouse.password_file,
            ),
            (
                "metadata.url",
                &mut self.metadata.url,
                &self.metadata.url_file,
            ),
            (
                "lake.s3.secret_access_key",
                &mut self.lake.s3.secret_access_key,
                &self.lake.s3.secret_access_key_file,
            ),
        ]
    }

    /// Parses a configuration from TOML text (no environment).
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: PathBuf::from("<inline>"),
            message: e.to_string(),
        })
    }

    /// The defaults as a commented TOML document.
    pub fn default_toml() -> String {
        let body = toml::to_string_pretty(&Config::default()).expect("the defaults serialize");
        format!(
            "# Tillwatch configuration. Every key is optional; these are the defaults.\n\
             # Environment variables TILLWATCH__<SECTION>__<KEY> override this file,\n\
             # and command-line flags override both.\n\
             # Set clickhouse.url (for example \"http://127.0.0.1:8123\") to store readings\n\
             # in ClickHouse as well as the Parquet lake, then run `tillwatch migrate`.\n\n{body}"
        )
    }

    /// Checks the whole configuration and reports every problem found:
    /// each section checks itself, then the checks that span sections.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut errors = Vec::new();
        if self.data_dir.as_os_str().is_empty() {
            errors.push("data_dir: must not be empty".to_string());
        }
        self.lake.validate(&mut errors);
        self.mqtt.validate(&mut errors);
        self.grpc.validate(&mut errors);
        self.gateway.validate(&mut errors);
        self.clickhouse.validate(&mut errors);
        self.metadata.validate(&mut errors);
        self.alerter.validate(&mut errors);
        self.alerting.validate(&mut errors);
        self.scheduler.validate(&mut errors);
        self.retention.validate(&mut errors);
        self.http.validate(&mut errors);
        self.embedded_broker.validate(&mut errors);
        self.validate_across(&mut errors);
        if errors.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid(errors))
        }
    }

    /// What one section cannot check alone.
    fn validate_across(&self, errors: &mut Vec<String>) {
        if self.grpc.enabled && self.grpc.listen == self.http.listen && self.grpc.listen.port() != 0
        {
            errors.push(format!(
                "grpc.listen: {} is also http.listen; give gRPC its own port",
                self.grpc.listen
            ));
        }
        if self.alerter.client_id == self.mqtt.client_id {
            errors.push(
                "alerter.client_id: must differ from mqtt.client_id (each keeps its own session)"
                    .into(),
            );
        }
        // A gateway refreshes its watermark every second and after each
        // flush: a stall time within that would leave healthy gateways out.
        let refresh = self.gateway.flush_max_age.max(Duration::from_secs(1));
        if self.scheduler.watermark_stall_after <= refresh * 2 {
            errors.push(format!(
                "scheduler.watermark_stall_after: {:?} would count healthy gateways as stalled; \
                 give more than twice gateway.flush_max_age and at least 2s (default 5m)",
                self.scheduler.watermark_stall_after
            ));
        }
        if self.scheduler.engine == RollupEngine::Clickhouse && self.clickhouse.url.is_none() {
            errors.push(
                "scheduler.engine: \"clickhouse\" needs clickhouse.url (or use \"embedded\")"
                    .into(),
            );
        }
    }
}

impl LakeConfig {
    fn validate(&self, errors: &mut Vec<String>) {
        if self.path.as_ref().is_some_and(|p| p.as_os_str().is_empty()) {
            errors.push("lake.path: must not be empty (leave it out for <data_dir>/lake)".into());
        }
        match self.path.as_deref().map(lake_bucket) {
            Some(Err(e)) => errors.push(format!("lake.path: {e}")),
            Some(Ok(Some(_))) => {}
            _ if self.s3 != LakeS3Config::default() => {
                errors.push("lake.s3: only used when lake.path is an s3:// URL".into())
            }
            _ => {}
        }
        if let Some(e) = &self.s3.endpoint {
            if !(e.starts_with("http://") || e.starts_with("https://")) {
                errors.push(format!("lake.s3.endpoint: {e:?} is not an http(s):// URL"));
            } else if e.starts_with("http://") && !self.s3.allow_http {
                errors.push(format!(
                    "lake.s3.endpoint: {e:?} is plain HTTP; set lake.s3.allow_http = true to use it"
                ));
            }
        }
    }
}

impl MqttConfig {
    fn validate(&self, errors: &mut Vec<String>) {
        match BrokerAddr::parse(&self.broker) {
            Err(e) => errors.push(format!("mqtt.broker: {e}")),
            Ok(addr) if !addr.tls && self.ca_file.is_some() => errors.push(
                "mqtt.ca_file: only used with an mqtts:// broker; mqtt.broker is plain mqtt://"
                    .into(),
            ),
            Ok(_) => {}
        }
        if self.client_id.is_empty() || self.client_id.len() > 64 {
            errors.push("mqtt.client_id: must be 1 to 64 characters".into());
        }
        if let Some(group) = &self.shared_group
            && (group.is_empty() || group.contains(['/', '+', '#']))
        {
            errors.push(format!(
                "mqtt.shared_group: {group:?} must be non-empty without / + #"
            ));
        }
        if self.keep_alive < Duration::from_secs(5) {
            errors.push("mqtt.keep_alive: must be at least 5s".into());
        }
    }
}

impl GrpcConfig {
    fn validate(&self, errors: &mut Vec<String>) {
        if self.change_poll < Duration::from_millis(10) {
            errors.push("grpc.change_poll: must be at least 10ms".into());
        }
    }
}

impl GatewayConfig {
    fn validate(&self, errors: &mut Vec<String>) {
        if self.max_payload_bytes < 64 {
            errors.push("gateway.max_payload_bytes: must be at least 64".into());
        }
        if self.flush_max_rows == 0 {
            errors.push("gateway.flush_max_rows: must be at least 1".into());
        }
        if self.flush_max_unacked == 0 || self.flush_max_unacked > 65_535 {
            errors.push(
                "gateway.flush_max_unacked: must be 1 to 65535 (MQTT packet ids are 16-bit)".into(),
            );
        }
        if self.flush_max_age.is_zero() {
            errors.push("gateway.flush_max_age: must be more than 0s".into());
        }
        if self.max_buffered_bytes < self.max_payload_bytes.saturating_mul(4) {
            errors.push(format!(
                "gateway.max_buffered_bytes: {} is too small; make it at least 4 × gateway.max_payload_bytes ({})",
                self.max_buffered_bytes,
                self.max_payload_bytes.saturating_mul(4)
            ));
        }
        if self.max_age.is_zero() {
            errors.push("gateway.max_age: must be more than 0s".into());
        }
        if !(1..=1_000_000).contains(&self.max_boots_per_device) {
            errors.push("gateway.max_boots_per_device: must be 1 to 1000000".into());
        }
    }
}

impl ClickHouseConfig {
    fn validate(&self, errors: &mut Vec<String>) {
        if let Some(url) = &self.url
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            errors.push(format!(
                "clickhouse.url: {url:?} must start with http:// or https:// (the HTTP interface, usually port 8123)"
            ));
        }
        if self.database.is_empty()
            || !self
                .database
                .chars()
                .all(|ch| ch.is_ascii_alphanumeric() || ch == '_')
        {
            errors.push(format!(
                "clickhouse.database: {:?} must be non-empty letters, digits and _",
                self.database
            ));
        }
        if self.spool_max_bytes < 16 * 1024 * 1024 {
            errors.push("clickhouse.spool_max_bytes: must be at least 16 MiB".into());
        }
        if self.insert_max_rows == 0 {
            errors.push("clickhouse.insert_max_rows: must be at least 1".into());
        }
        if self.insert_timeout.is_zero() {
            errors.push("clickhouse.insert_timeout: must be more than 0s".into());
        }
        if self
            .retention
            .is_some_and(|r| r < Duration::from_secs(86_400))
        {
            errors.push("clickhouse.retention: must be at least 1 day".into());
        }
    }
}

impl MetadataConfig {
    fn validate(&self, errors: &mut Vec<String>) {
        if let Some(url) = &self.url
            && !(url.starts_with("sqlite:")
                || url.starts_with("postgres://")
                || url.starts_with("postgresql://"))
        {
            errors.push(format!(
                "metadata.url: {url:?} must be sqlite://PATH or postgres://USER@HOST:PORT/DATABASE"
            ));
        }
    }
}

impl AlerterConfig {
    fn validate(&self, errors: &mut Vec<String>) {
        if self.client_id.is_empty() || self.client_id.len() > 64 {
            errors.push("alerter.client_id: must be 1 to 64 characters".into());
        }
        if self.silence_gaps.is_nan() || self.silence_gaps < 1.0 {
            errors.push("alerter.silence_gaps: must be at least 1".into());
        }
        if self.silence_floor.is_zero() || self.silence_floor > self.silence_ceiling {
            errors.push(
                "alerter.silence_floor: must be more than 0s and at most alerter.silence_ceiling"
                    .into(),
            );
        }
        if self.lease < Duration::from_secs(1) {
            errors.push("alerter.lease: must be at least 1s".into());
        }
    }
}

/// The most terminals the embedded broker takes (see
/// [`EmbeddedBrokerConfig::max_connections`]).
pub const MAX_EMBEDDED_CONNECTIONS: usize = 5_000;

impl HttpConfig {
    fn validate(&self, errors: &mut Vec<String>) {
        if !(1..=10_000).contains(&self.max_connections) {
            errors.push(format!(
                "http.max_connections: {} is not between 1 and 10000",
                self.max_connections
            ));
        }
        if self.tls_cert_file.is_some() != self.tls_key_file.is_some() {
            errors.push("http.tls_cert_file and http.tls_key_file: give both or neither".into());
        }
        if !(Duration::from_secs(1)..=Duration::from_secs(600)).contains(&self.header_read_timeout)
        {
            errors.push(format!(
                "http.header_read_timeout: {:?} is not between 1s and 10m",
                self.header_read_timeout
            ));
        }
        let mut names = std::collections::BTreeSet::new();
        for (i, t) in self.tokens.iter().enumerate() {
            let at = format!("http.tokens[{i}] ({:?})", t.name);
            if t.name.trim().is_empty() {
                errors.push(format!("http.tokens[{i}].name: must not be empty"));
            } else if !names.insert(t.name.as_str()) {
                errors.push(format!("{at}: the name is used twice"));
            }
            if let Err(e) = t.secret() {
                errors.push(format!("{at}: {e}"));
            }
        }
    }
}

impl EmbeddedBrokerConfig {
    fn validate(&self, errors: &mut Vec<String>) {
        if !(1..=MAX_EMBEDDED_CONNECTIONS).contains(&self.max_connections) {
            errors.push(format!(
                "embedded_broker.max_connections: {} is not between 1 and {MAX_EMBEDDED_CONNECTIONS} \
                 (each terminal holds three of the process's file descriptors)",
                self.max_connections
            ));
        }
        let beyond_loopback = [Some(self.listen), self.tls_listen]
            .into_iter()
            .flatten()
            .find(|a| !a.ip().is_loopback());
        if let Some(addr) = beyond_loopback
            && self.password_file.is_none()
            && !self.allow_anonymous
        {
            errors.push(format!(
                "embedded_broker: {addr} is reachable from other machines and no \
                 password_file is set, so anyone could publish as any terminal; set \
                 embedded_broker.password_file, or allow_anonymous = true to accept that"
            ));
        }
        match (self.tls_listen, &self.cert_file, &self.key_file) {
            (Some(_), Some(_), Some(_)) | (None, None, None) => {}
            (Some(_), _, _) => errors.push(
                "embedded_broker.tls_listen: needs embedded_broker.cert_file and embedded_broker.key_file"
                    .into(),
            ),
            (None, _, _) => errors.push(
                "embedded_broker.cert_file, key_file: only used with embedded_broker.tls_listen"
                    .into(),
            ),
        }
    }
}

fn env_key(var: &str) -> Vec<String> {
    var.trim_start_matches("TILLWATCH__")
        .split("__")
        .map(|s| s.to_ascii_lowercase())
        .collect()
}

fn apply_env(
    table: &mut toml::Table,
    var: &str,
    value: &str,
    typed: bool,
) -> Result<(), ConfigError> {
    let path = env_key(var);
    if path.iter().any(|p| p.is_empty()) {
        return Err(ConfigError::Env {
            var: var.into(),
            message: "expected TILLWATCH__<SECTION>__<KEY>".into(),
        });
    }
    // A value that parses as TOML (a number, a boolean, a quoted string) is
    // taken as such; anything else is a plain string.
    let parsed = typed
        .then(|| toml::from_str::<toml::Table>(&format!("v = {value}")).ok())
        .flatten()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(value.to_string()));
    let (last, sections) = path.split_last().expect("at least one part");
    let mut current = table;
    for section in sections {
        let entry = current
            .entry(section.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        current = entry.as_table_mut().ok_or_else(|| ConfigError::Env {
            var: var.into(),
            message: format!("{section} is not a section"),
        })?;
    }
    current.insert(last.clone(), parsed);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env() -> Vec<(String, String)> {
        Vec::new()
    }

    #[test]
    fn generated_defaults_load_back_unchanged() {
        let text = Config::default_toml();
        assert_eq!(Config::from_toml(&text).unwrap(), Config::default());
        Config::default().validate().unwrap();
    }

    #[test]
    fn unknown_keys_are_rejected_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tw.toml");
        std::fs::write(&path, "[gateway]\nflush_max_rowz = 5\n").unwrap();
        let err = Config::load(Some(&path), no_env()).unwrap_err().to_string();
        assert!(err.contains("flush_max_rowz"), "{err}");
        assert!(err.contains("tw.toml"), "{err}");
    }

    #[test]
    fn environment_overrides_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tw.toml");
        std::fs::write(
            &path,
            "[gateway]\nflush_max_age = \"3s\"\nflush_max_rows = 7\n",
        )
        .unwrap();
        let env = vec![
            (
                "TILLWATCH__GATEWAY__FLUSH_MAX_AGE".to_string(),
                "250ms".to_string(),
            ),
            (
                "TILLWATCH__MQTT__SHARED_GROUP".to_string(),
                "gw".to_string(),
            ),
            ("UNRELATED".to_string(), "x".to_string()),
        ];
        let config = Config::load(Some(&path), env).unwrap();
        assert_eq!(config.gateway.flush_max_age, Duration::from_millis(250));
        assert_eq!(config.gateway.flush_max_rows, 7);
        assert_eq!(config.mqtt.shared_group.as_deref(), Some("gw"));
    }

    #[test]
    fn an_all_digit_password_from_the_environment_stays_text() {
        let env = vec![
            (
                "TILLWATCH__MQTT__PASSWORD".to_string(),
                "0123456".to_string(),
            ),
            (
                "TILLWATCH__GATEWAY__FLUSH_MAX_ROWS".to_string(),
                "99".to_string(),
            ),
        ];
        let config = Config::load(None, env).unwrap();
        assert_eq!(config.mqtt.password.as_deref(), Some("0123456"));
        assert_eq!(config.gateway.flush_max_rows, 99);
        // A number where one is due still fails by name when it is not one.
        let env = vec![(
            "TILLWATCH__GATEWAY__FLUSH_MAX_ROWS".to_string(),
            "many".to_string(),
        )];
        let err = Config::load(None, env).unwrap_err().to_string();
        assert!(err.contains("TILLWATCH__GATEWAY__FLUSH_MAX_ROWS"), "{err}");
    }

    #[test]
    fn an_s3_lake_is_checked_and_its_key_read_from_a_file_never_shown() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("s3-key");
        std::fs::write(&key, "s3-s3cret\n").unwrap();
        let env = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<Vec<_>>()
        };
        let mut config = Config::load(
            None,
            env(&[
                ("TILLWATCH__LAKE__PATH", "s3://fleet-lake/prod"),
                ("TILLWATCH__LAKE__S3__ENDPOINT", "http://minio:9000"),
                ("TILLWATCH__LAKE__S3__ALLOW_HTTP", "true"),
                (
                    "TILLWATCH__LAKE__S3__SECRET_ACCESS_KEY_FILE",
                    key.to_str().unwrap(),
                ),
            ]),
        )
        .unwrap();
        config.validate().unwrap();
        config.read_secret_files().unwrap();
        assert_eq!(
            config.lake.s3.secret_access_key.as_deref(),
            Some("s3-s3cret")
        );
        assert_eq!(config.lake_dir(), PathBuf::from("s3://fleet-lake/prod"));
        assert!(!format!("{config:?}").contains("s3-s3cret"));

        let problems = |pairs: &[(&str, &str)]| match Config::load(None, env(pairs)) {
            Ok(c) => c.validate().unwrap_err().to_string(),
            Err(e) => e.to_string(),
        };
        let err = problems(&[("TILLWATCH__LAKE__PATH", "s3:///prod")]);
        assert!(
            err.contains("lake.path") && err.contains("no bucket"),
            "{err}"
        );
        let err = problems(&[("TILLWATCH__LAKE__PATH", "gs://fleet/prod")]);
        assert!(err.contains("s3://bucket/prefix"), "{err}");
        let err = problems(&[("TILLWATCH__LAKE__S3__REGION", "eu-west-1")]);
        assert!(err.contains("lake.s3: only used"), "{err}");
        let err = problems(&[
            ("TILLWATCH__LAKE__PATH", "s3://fleet-lake"),
            ("TILLWATCH__LAKE__S3__ENDPOINT", "http://minio:9000"),
        ]);
        assert!(err.contains("lake.s3.allow_http"), "{err}");
    }

    #[test]
    fn secrets_come_from_files_and_never_show_in_debug_output() {
        let dir = tempfile::tempdir().unwrap();
        let mqtt = dir.path().join("mqtt");
        let pg = dir.path().join("pg");
        std::fs::write(&mqtt, "mqtt-s3cret\n").unwrap();
        std::fs::write(&pg, "postgres://tw:pg-s3cret@db:5432/tillwatch\n").unwrap();
        let env = vec![
            (
                "TILLWATCH__MQTT__PASSWORD_FILE".to_string(),
                mqtt.display().to_string(),
            ),
            (
                "TILLWATCH__METADATA__URL_FILE".to_string(),
                pg.display().to_string(),
            ),
            (
                "TILLWATCH__CLICKHOUSE__PASSWORD".to_string(),
                "ch-s3cret".to_string(),
            ),
        ];
        let mut config = Config::load(None, env).unwrap();
        config.read_secret_files().unwrap();
        assert_eq!(config.mqtt.password.as_deref(), Some("mqtt-s3cret"));
        assert_eq!(
            config.metadata_url(),
            "postgres://tw:pg-s3cret@db:5432/tillwatch"
        );
        let shown = format!("{config:?}");
        for secret in ["mqtt-s3cret", "pg-s3cret", "ch-s3cret"] {
            assert!(!shown.contains(secret), "{secret} shows in {shown}");
        }
        assert!(
            shown.contains("postgres://tw:***@db:5432/tillwatch"),
            "{shown}"
        );

        // Both forms, or a missing file: refused, naming the key and file.
        config.mqtt.password_file = Some(dir.path().join("nope"));
        config.mqtt.password = None;
        config.clickhouse.password_file = Some(mqtt.clone());
        let err = config.read_secret_files().unwrap_err().to_string();
        assert!(err.contains("mqtt.password_file"), "{err}");
        assert!(err.contains("nope"), "{err}");
        assert!(
            err.contains("give one of clickhouse.password and clickhouse.password_file"),
            "{err}"
        );
        assert!(!err.contains("s3cret"), "{err}");
    }

    #[test]
    fn printed_urls_keep_everything_but_the_password() {
        for (url, shown) in [
            ("postgres://u:p@h:5432/db", "postgres://u:***@h:5432/db"),
            ("postgres://u@h/db", "postgres://u@h/db"),
            ("sqlite:///var/lib/x.db", "sqlite:///var/lib/x.db"),
            ("http://h:8123/?a=b@c", "http://h:8123/?a=b@c"),
            ("no url", "no url"),
        ] {
            assert_eq!(without_password(url), shown);
        }
    }

    #[test]
    fn a_bad_environment_key_names_the_variable() {
        let env = vec![(
            "TILLWATCH__GATEWAY__FLUSH_MAX_AGEE".to_string(),
            "1s".to_string(),
        )];
        let err = Config::load(None, env).unwrap_err().to_string();
        assert!(err.contains("TILLWATCH__GATEWAY__FLUSH_MAX_AGEE"), "{err}");
    }

    #[test]
    fn validation_reports_every_problem() {
        let mut config = Config::default();
        config.mqtt.broker = "tcp://x".into();
        config.gateway.flush_max_rows = 0;
        config.mqtt.shared_group = Some("a/b".into());
        config.clickhouse.url = Some("localhost:8123".into());
        let err = config.validate().unwrap_err().to_string();
        assert!(err.contains("mqtt.broker"), "{err}");
        assert!(err.contains("gateway.flush_max_rows"), "{err}");
        assert!(err.contains("mqtt.shared_group"), "{err}");
        assert!(err.contains("clickhouse.url"), "{err}");
    }

    #[test]
    fn broker_urls_parse() {
        assert_eq!(
            BrokerAddr::parse("mqtt://10.0.0.5:1884").unwrap(),
            BrokerAddr {
                host: "10.0.0.5".into(),
                port: 1884,
                tls: false,
            }
        );
        assert_eq!(BrokerAddr::parse("mqtt://broker").unwrap().port, 1883);
        let tls = BrokerAddr::parse("mqtts://broker").unwrap();
        assert_eq!((tls.port, tls.tls), (8883, true));
        assert!(BrokerAddr::parse("mqtt://h:99999").is_err());
        assert!(BrokerAddr::parse("http://h:1").is_err());
    }
}
