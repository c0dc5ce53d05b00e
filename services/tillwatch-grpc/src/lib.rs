//! The gRPC API (`proto/tillwatch/api/v1/fleet.proto`, service
//! `tillwatch.api.v1.Fleet`), served by tonic with server reflection:
//!
//! - `GetDevice`, `ListDevices`: the registry, state and health score the
//!   device page shows (`tillwatch_api::view`).
//! - `GetDeviceSeries`: the same series as `GET /api/v1/devices/{id}/series`.
//! - `ListAlerts`; `CreateSilence` (operator).
//! - `WatchChanges`: alert and connectivity changes for other systems to
//!   follow. The store is the source of truth, so the stream follows it:
//!   every `poll` it reads what changed since the last change it sent (the
//!   same store serves any number of API processes). A follower that
//!   reconnects passes the time of the last change it saw as `since_ms`.
//!
//! Every call needs `authorization: Bearer <token>` metadata with a token
//! of `[[http.tokens]]`: no token or an unknown one is `UNAUTHENTICATED`, a
//! viewer creating a silence `PERMISSION_DENIED`. Bad arguments are
//! `INVALID_ARGUMENT` with a message naming the field, an unknown device
//! `NOT_FOUND`.

use std::collections::{HashSet, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::Stream;
use tillwatch_api::auth::{Caller, Refusal};
use tillwatch_api::{Access, ApiError};
use tillwatch_config::{Config, Role};
use tillwatch_meta::{AlertFilter, AlertRecord, AlertState, DeviceRecord, MetaStore};
use tillwatch_proto::api::v1 as pb;
use tillwatch_query::FleetView;
use tillwatch_query::{Queries, QueryError, Resolution, SeriesRequest};
use tillwatch_storage::Lake;
use tonic::{Request, Response, Status};

/// The service over the metadata store and the lake.
#[derive(Clone)]
pub struct FleetService {
    store: MetaStore,
    queries: Queries,
    access: Arc<Access>,
    poll: Duration,
}

impl FleetService {
    /// `poll`: how often a change stream looks for changes.
    pub fn new(
        store: MetaStore,
        lake: Lake,
        access: Arc<Access>,
        low_battery_pct: f64,
        poll: Duration,
    ) -> FleetService {
        FleetService {
            queries: Queries::new(store.clone(), lake, low_battery_pct),
            store,
            access,
            poll,
        }
    }

    /// The caller, when its token has the `need` role.
    fn authorize<T>(&self, request: &Request<T>, need: Role) -> Result<Caller, Status> {
        let header = request
            .metadata()
            .get("authorization")
            .map(|v| v.to_str().unwrap_or(""));
        let peer = request.remote_addr().map(|a| a.ip());
        self.access
            .check_from(peer, header, need, std::time::Instant::now())
            .map_err(|r| match r {
                Refusal::Unauthenticated(m) => Status::unauthenticated(m),
                Refusal::Forbidden(m) => Status::permission_denied(m),
                Refusal::TooManyFailures(wait_s) => {
                    Status::resource_exhausted(Refusal::too_many(wait_s))
                }
            })
    }
}

/// An HTTP-style API error as the matching gRPC status.
fn status(e: ApiError) -> Status {
    match e.0.as_u16() {
        400 => Status::invalid_argument(e.1),
        404 => Status::not_found(e.1),
        503 => Status::unavailable(e.1),
        _ => Status::internal(e.1),
    }
}

/// The field of a request that a query's parameter comes from.
fn field(param: &str) -> &str {
    match param {
        "from" => "from_ms",
        "to" => "to_ms",
        other => other,
    }
}

/// A read-side error as the matching gRPC status, naming the request's
/// field.
fn query_status(e: QueryError) -> Status {
    match &e {
        QueryError::InvalidArgument { param, message } => Status::invalid_argument(
            tillwatch_query::clipped(format!("{}: {message}", field(param))),
        ),
        QueryError::NotFound(_) => Status::not_found(e.for_client()),
        QueryError::Unavailable(_) => Status::unavailable(e.for_client()),
        QueryError::Internal(_) => Status::internal(e.for_client()),
    }
}

fn store_error(e: tillwatch_meta::MetaError) -> Status {
    query_status(QueryError::from(e))
}

fn device(d: &DeviceRecord, view: &FleetView) -> pb::Device {
    let health = view.health(&d.device_id);
    pb::Device {
        device_id: d.device_id.clone(),
        merchant_id: d.merchant_id.clone(),
        store_id: d.store_id.clone(),
        model: d.model.clone(),
        serial: d.serial.clone(),
        firmware_version: d.firmware_version.clone(),
        app_version: d.app_version.clone(),
        time_zone: d.time_zone.clone(),
        first_seen_ms: d.first_seen_ms,
        last_seen_ms: d.last_seen_ms,
        state: view.state(&d.device_id).map(String::from),
        state_since_ms: view.state_since(&d.device_id),
        health_score: health.score,
        health_grade: health.grade().to_string(),
        health_reasons: health
            .reasons
            .iter()
            .map(|r| pb::HealthReason {
                code: r.code.to_string(),
                points: r.points,
                detail: r.detail.clone(),
            })
            .collect(),
        signals: view.signals(&d.device_id),
    }
}

fn alert(a: &AlertRecord) -> pb::Alert {
    pb::Alert {
        alert_id: a.alert_id.clone(),
        rule: a.rule.clone(),
        subject: a.subject.clone(),
        scope: a.scope.clone(),
        severity: a.severity.clone(),
        state: a.state.as_str().to_string(),
        pending_since_ms: a.pending_since_ms,
        fired_at_ms: a.fired_at_ms,
        resolved_at_ms: a.resolved_at_ms,
        silenced_by: a.silenced_by.clone(),
        labels: a.labels.clone().into_iter().collect(),
        annotations: a.annotations.clone().into_iter().collect(),
        updated_at_ms: a.updated_at_ms,
    }
}

type ChangeStream = Pin<Box<dyn Stream<Item = Result<pb::Change, Status>> + Send>>;

/// Where a change stream is: changes at `cursor_ms` already sent are in
/// `sent` (more may still arrive with the same time).
struct Follow {
    service: FleetService,
    cursor_ms: i64,
    sent: HashSet<String>,
    queue: VecDeque<pb::Change>,
    first: bool,
}

/// How many changes of each kind one look reads.
const PAGE: u32 = 500;

impl Follow {
    /// The next changes after the cursor, oldest first.
    async fn fetch(&mut self) -> Result<(), Status> {
        let store = &self.service.store;
        let alerts = store
            .alerts_changed_since(self.cursor_ms, PAGE)
            .await
            .map_err(store_error)?;
        let states = store
            .connectivity_changes_since(self.cursor_ms, PAGE)
            .await
            .map_err(store_error)?;
        // Up to the older of the two pages' last times when a page is
        // full, so neither kind skips ahead of the other.
        let mut upto = i64::MAX;
        if alerts.len() == PAGE as usize {
            upto = upto.min(alerts.last().map_or(i64::MAX, |a| a.updated_at_ms));
        }
        if states.len() == PAGE as usize {
            upto = upto.min(states.last().map_or(i64::MAX, |(_, h)| h.at_ms));
        }
        let mut found: Vec<(i64, String, pb::Change)> = Vec::new();
        for a in alerts.iter().filter(|a| a.updated_at_ms <= upto) {
            let key = format!("a/{}/{}/{}", a.alert_id, a.state.as_str(), a.updated_at_ms);
            found.push((
                a.updated_at_ms,
                key,
                pb::Change {
                    change: Some(pb::change::Change::Alert(alert(a))),
                },
            ));
        }
        for (device_id, h) in states.iter().filter(|(_, h)| h.at_ms <= upto) {
            let key = format!("d/{device_id}/{}/{}", h.at_ms, h.to.as_str());
            found.push((
                h.at_ms,
                key,
                pb::Change {
                    change: Some(pb::change::Change::DeviceState(pb::DeviceStateChange {
                        device_id: device_id.clone(),
                        at_ms: h.at_ms,
                        from_state: h.from.map(|s| s.as_str().to_string()),
                        to_state: h.to.as_str().to_string(),
                    })),
                },
            ));
        }
        found.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.cmp(&b.1)));
        for (at, key, change) in found {
            if at == self.cursor_ms && self.sent.contains(&key) {
                continue;
            }
            if at > self.cursor_ms {
                self.cursor_ms = at;
                self.sent.clear();
            }
            self.sent.insert(key);
            self.queue.push_back(change);
        }
        Ok(())
    }

    /// The next change, waiting for one.
    async fn next(mut self) -> Option<(Result<pb::Change, Status>, Follow)> {
        loop {
            if let Some(change) = self.queue.pop_front() {
                return Some((Ok(change), self));
            }
            if !self.first {
                tokio::time::sleep(self.service.poll).await;
            }
            self.first = false;
            if let Err(e) = self.fetch().await {
                // Say why and end; the follower reconnects from its last change.
                return Some((Err(e), self));
            }
        }
    }
}

/// gRPC calls answered, by method and status code.
pub const REQUESTS: &str = "tillwatch_grpc_requests_total";
/// How long answering took (to the response or the stream's start), by
/// method.
pub const REQUEST_DURATION: &str = "tillwatch_grpc_request_duration_seconds";

/// Counts and times one call, by method and the code it answered with.
fn observed<T>(
    method: &'static str,
    began: std::time::Instant,
    result: Result<T, Status>,
) -> Result<T, Status> {
    let code = match &result {
        Ok(_) => "Ok".to_string(),
        Err(status) => format!("{:?}", status.code()),
    };
    metrics::counter!(REQUESTS, "method" => method, "code" => code).increment(1);
    metrics::histogram!(REQUEST_DURATION, "method" => method).record(began.elapsed().as_secs_f64());
    result
}

/// Registers the metrics' descriptions with the installed recorder.
pub fn describe_metrics() {
    metrics::describe_counter!(REQUESTS, "gRPC calls answered, by method and status code");
    metrics::describe_histogram!(
        REQUEST_DURATION,
        metrics::Unit::Seconds,
        "How long gRPC calls took to answer (a stream: to its start), by method"
    );
}

#[tonic::async_trait]
impl pb::fleet_server::Fleet for FleetService {
    async fn get_device(
        &self,
        request: Request<pb::GetDeviceRequest>,
    ) -> Result<Response<pb::Device>, Status> {
        let began = std::time::Instant::now();
        let result: Result<Response<pb::Device>, Status> = async move {
            self.authorize(&request, Role::Viewer)?;
            let id = request.into_inner().device_id;
            if id.is_empty() {
                return Err(Status::invalid_argument("device_id: give a device id"));
            }
            let Some(d) = self.store.device(&id).await.map_err(store_error)? else {
                return Err(Status::not_found(format!("no device {id:?}")));
            };
            let view = FleetView::load_one(&self.store, &id, self.queries.low_battery_pct())
                .await
                .map_err(store_error)?;
            Ok(Response::new(device(&d, &view)))
        }
        .await;
        observed("GetDevice", began, result)
    }

    async fn list_devices(
        &self,
        request: Request<pb::ListDevicesRequest>,
    ) -> Result<Response<pb::ListDevicesResponse>, Status> {
        let began = std::time::Instant::now();
        let result: Result<Response<pb::ListDevicesResponse>, Status> = async move {
            self.authorize(&request, Role::Viewer)?;
            let q = request.into_inner();
            let size = match q.page_size {
                0 => 100,
                n @ 1..=1000 => n,
                n => {
                    return Err(Status::invalid_argument(format!(
                        "page_size: must be 1 to 1000 (or 0 for 100), not {n}"
                    )));
                }
            };
            if !q.store_id.is_empty() && q.merchant_id.is_empty() {
                return Err(Status::invalid_argument(
                    "store_id: give merchant_id too (store ids are per merchant)",
                ));
            }
            let some = |s: &str| (!s.is_empty()).then(|| s.to_string());
            let found = self
                .store
                .devices(
                    some(&q.merchant_id).as_deref(),
                    some(&q.store_id).as_deref(),
                    some(&q.page_token).as_deref(),
                    size,
                )
                .await
                .map_err(store_error)?;
            let view = self.queries.views().get().await.map_err(store_error)?;
            let next = if found.len() == size as usize {
                found
                    .last()
                    .map(|d| d.device_id.clone())
                    .unwrap_or_default()
            } else {
                String::new()
            };
            Ok(Response::new(pb::ListDevicesResponse {
                devices: found.iter().map(|d| device(d, &view)).collect(),
                next_page_token: next,
            }))
        }
        .await;
        observed("ListDevices", began, result)
    }

    async fn get_device_series(
        &self,
        request: Request<pb::GetDeviceSeriesRequest>,
    ) -> Result<Response<pb::DeviceSeries>, Status> {
        let began = std::time::Instant::now();
        let result: Result<Response<pb::DeviceSeries>, Status> = async move {
            self.authorize(&request, Role::Viewer)?;
            let q = request.into_inner();
            let given = |ms: i64| (ms != 0).then_some(ms);
            let resolution = match q.resolution.as_str() {
                "" => Resolution::Auto,
                text => Resolution::parse(text).map_err(query_status)?,
            };
            let answer = self
                .queries
                .device_series(
                    SeriesRequest {
                        device_id: q.device_id,
                        from_ms: given(q.from_ms),
                        to_ms: given(q.to_ms),
                        resolution,
                    },
                    tillwatch_domain::UtcMillis::now().0,
                )
                .await
                .map_err(query_status)?;
            Ok(Response::new(pb::DeviceSeries {
                device_id: answer.device_id,
                resolution: answer.resolution.as_str().to_string(),
                from_ms: answer.from_ms,
                to_ms: answer.to_ms,
                series: answer
                    .series
                    .into_iter()
                    .map(|(name, points)| pb::Series {
                        name,
                        points: points
                            .into_iter()
                            .map(|(at_ms, value)| pb::Point { at_ms, value })
                            .collect(),
                    })
                    .collect(),
            }))
        }
        .await;
        observed("GetDeviceSeries", began, result)
    }

    async fn list_alerts(
        &self,
        request: Request<pb::ListAlertsRequest>,
    ) -> Result<Response<pb::ListAlertsResponse>, Status> {
        let began = std::time::Instant::now();
        let result: Result<Response<pb::ListAlertsResponse>, Status> = async move {
            self.authorize(&request, Role::Viewer)?;
            let q = request.into_inner();
            let filter = match q.state.as_str() {
                "" | "open" => AlertFilter::Open,
                "all" => AlertFilter::All,
                other => AlertState::parse(other)
                    .map(AlertFilter::State)
                    .ok_or_else(|| {
                        Status::invalid_argument(format!(
                            "state: {other:?} is not open, all, pending, firing or resolved"
                        ))
                    })?,
            };
            let limit = match q.limit {
                0 => 100,
                n @ 1..=10_000 => n,
                n => {
                    return Err(Status::invalid_argument(format!(
                        "limit: must be 1 to 10000 (or 0 for 100), not {n}"
                    )));
                }
            };
            let alerts = self
                .store
                .alerts(filter, limit)
                .await
                .map_err(store_error)?;
            Ok(Response::new(pb::ListAlertsResponse {
                alerts: alerts.iter().map(alert).collect(),
            }))
        }
        .await;
        observed("ListAlerts", began, result)
    }

    type WatchChangesStream = ChangeStream;

    async fn watch_changes(
        &self,
        request: Request<pb::WatchChangesRequest>,
    ) -> Result<Response<ChangeStream>, Status> {
        let began = std::time::Instant::now();
        let result: Result<Response<ChangeStream>, Status> = async move {
            self.authorize(&request, Role::Viewer)?;
            let since = request.into_inner().since_ms;
            if since < 0 {
                return Err(Status::invalid_argument(
                    "since_ms: must be 0 (only new changes) or a time in ms since 1970",
                ));
            }
            let cursor_ms = if since == 0 {
                tillwatch_domain::UtcMillis::now().0
            } else {
                since
            };
            let follow = Follow {
                service: self.clone(),
                cursor_ms,
                sent: HashSet::new(),
                queue: VecDeque::new(),
                first: true,
            };
            let stream = futures_util::stream::unfold(follow, Follow::next);
            Ok(Response::new(Box::pin(stream) as ChangeStream))
        }
        .await;
        observed("WatchChanges", began, result)
    }

    async fn create_silence(
        &self,
        request: Request<pb::CreateSilenceRequest>,
    ) -> Result<Response<pb::Silence>, Status> {
        let began = std::time::Instant::now();
        let result: Result<Response<pb::Silence>, Status> = async move {
            let author = self.authorize(&request, Role::Operator)?.name;
            let q = request.into_inner();
            let made = tillwatch_api::silences::create_silence(
                &self.store,
                q.matchers,
                &q.duration,
                q.comment,
                author,
            )
            .await
            .map_err(|e| status(ApiError(e.0, e.1.replacen("for:", "duration:", 1))))?;
            Ok(Response::new(pb::Silence {
                silence_id: made.silence_id,
                matchers: made.matchers,
                starts_at_ms: made.starts_at_ms,
                ends_at_ms: made.ends_at_ms,
                created_by: made.created_by,
                comment: made.comment,
            }))
        }
        .await;
        observed("CreateSilence", began, result)
    }
}

/// Serves the API and server reflection on `listener` until `shutdown`,
/// over TLS when given an acceptor.
pub async fn serve(
    service: FleetService,
    listener: tokio::net::TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .expect("the API's descriptors are valid (checked by the proto crate's tests)");
    let server = tonic::transport::Server::builder()
        .add_service(pb::fleet_server::FleetServer::new(service))
        .add_service(reflection);
    match tls {
        None => {
            server
                .serve_with_incoming_shutdown(
                    tonic::transport::server::TcpIncoming::from(listener),
                    shutdown,
                )
                .await
        }
        Some(acceptor) => {
            server
                .serve_with_incoming_shutdown(tls_incoming(listener, acceptor), shutdown)
                .await
        }
    }
}

/// A TLS connection for tonic.
struct TlsConnection(tokio_rustls::server::TlsStream<tokio::net::TcpStream>);

impl tonic::transport::server::Connected for TlsConnection {
    type ConnectInfo = ();
    fn connect_info(&self) -> Self::ConnectInfo {}
}

impl tokio::io::AsyncRead for TlsConnection {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for TlsConnection {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// Connections on `listener`, each through its TLS handshake (10 s at
/// most, each on a task of its own so a slow one holds nobody up).
fn tls_incoming(
    listener: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
) -> impl futures_util::Stream<Item = Result<TlsConnection, std::io::Error>> {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            // Ends, letting the port go, once the server stops reading.
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                _ = tx.closed() => return,
            };
            let (tcp, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::debug!(error = %e, "gRPC accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            };
            let (tx, acceptor) = (tx.clone(), acceptor.clone());
            tokio::spawn(async move {
                let handshake = acceptor.accept(tcp);
                match tokio::time::timeout(std::time::Duration::from_secs(10), handshake).await {
                    Ok(Ok(stream)) => {
                        let _ = tx.send(TlsConnection(stream)).await;
                    }
                    Ok(Err(e)) => tracing::debug!(%peer, error = %e, "gRPC TLS handshake failed"),
                    Err(_) => tracing::debug!(%peer, "gRPC TLS handshake timed out"),
                }
            });
        }
    });
    futures_util::stream::unfold(
        rx,
        |mut rx| async move { rx.recv().await.map(|c| (Ok(c), rx)) },
    )
}

/// Why the service cannot start.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error(transparent)]
    Tokens(#[from] tillwatch_api::AccessError),
    #[error("the lake: {0}")]
    Lake(#[from] tillwatch_storage::LakeError),
}

/// The service for `config` over `store`: its lake and tokens.
pub fn service(config: &Config, store: MetaStore) -> Result<FleetService, SetupError> {
    let access = Access::new(&config.http.tokens)?;
    Ok(FleetService::new(
        store,
        Lake::from_config(config)?,
        Arc::new(access),
        config.alerting.rules.battery_low.threshold,
        config.grpc.change_poll,
    ))
}
