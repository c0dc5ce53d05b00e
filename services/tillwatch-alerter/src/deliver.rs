//! Delivery: brings each receiver in line with what the alerts say it
//! should hold (see `tillwatch_meta`'s alerts module). A receiver that
//! fails is retried with exponential backoff (1 s doubling to 5 min); its
//! alerts wait in the store meanwhile, so an outage delays pages and never
//! loses one. Sending twice is possible after a crash between sending and
//! recording (a webhook or PagerDuty page is recorded as soon as its
//! request succeeds, so that is the one page in flight); Alertmanager and
//! PagerDuty both deduplicate (by label set and by `dedup_key`), and
//! webhook bodies carry `alert_id` for the same.
//!
//! Bodies:
//! - Alertmanager: `POST <url>/api/v2/alerts` with a JSON array of
//!   `{labels, annotations, startsAt, endsAt, generatorURL}`; a firing
//!   alert's `endsAt` is three repeat intervals ahead (it is re-sent every
//!   interval), a resolved one's is when it resolved.
//! - Webhook: `POST <url>` per alert change with
//!   `{"version": "1", "receiver", "status": "firing"|"resolved", "alert": {…}}`.
//! - PagerDuty Events v2: `{routing_key, event_action: trigger|resolve,
//!   dedup_key: alert_id, payload: {summary, source, severity, …}, links}`.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use metrics::counter;
use serde_json::{Value, json};
use tillwatch_config::{ReceiverConfig, ReceiverKind};
use tillwatch_meta::{AlertRecord, AlertState, Delivery, MetaError, MetaStore};
use tokio::sync::Notify;
use tracing::{info, warn};

/// Counter by `receiver` and `outcome` (sent, failed).
pub const DELIVERIES: &str = "tillwatch_alerter_deliveries_total";
/// Gauge by `receiver`: how long the oldest notification its last attempt
/// could not deliver has been waiting (0 once everything went through).
pub const QUEUE_AGE: &str = "tillwatch_alerter_delivery_queue_age_seconds";
const BATCH: u32 = 200;
const MAX_BACKOFF_MS: i64 = 300_000;

type HttpClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// One configured receiver, ready to send.
pub struct Receiver {
    pub config: ReceiverConfig,
    url: String,
    routing_key: Option<String>,
    client: HttpClient,
}

fn http_client() -> HttpClient {
    let builder = hyper_rustls::HttpsConnectorBuilder::new()
        .with_native_roots()
        .unwrap_or_else(|e| {
            warn!(error = %e, "no system root certificates; https receivers will fail");
            let config = rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .expect("ring supports the default protocol versions")
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
            hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(config)
        });
    Client::builder(TokioExecutor::new()).build(builder.https_or_http().enable_http1().build())
}

/// The page an alert links to: its terminal's, its store's or its
/// merchant's.
fn page_link(a: &AlertRecord) -> Option<String> {
    ["device_url", "store_url", "merchant_url", "fleet_url"]
        .iter()
        .find_map(|k| a.annotations.get(*k).cloned())
}

fn rfc3339(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

/// A receiver that cannot be set up.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReceiverError {
    #[error("receiver {0:?}: no url")]
    NoUrl(String),
    #[error("receiver {receiver:?}: environment variable {var} (its routing key) is not set")]
    NoRoutingKey { receiver: String, var: String },
}

/// Why one delivery did not arrive (retried with backoff).
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    #[error("bad request to {url}: {detail}")]
    Request { url: String, detail: String },
    #[error("{url}: no answer within {timeout:?}")]
    Timeout { url: String, timeout: Duration },
    #[error("{url}: {detail}")]
    Connection { url: String, detail: String },
    /// The receiver answered with an error; `body` is its first 300
    /// characters.
    #[error("{url}: HTTP {status}: {body}")]
    Refused {
        url: String,
        status: hyper::StatusCode,
        body: String,
    },
}

impl Receiver {
    /// `env` looks up the environment variable naming a PagerDuty routing
    /// key (`|v| std::env::var(v).ok()` in production).
    pub fn new(
        config: ReceiverConfig,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Receiver, ReceiverError> {
        let url = config
            .url_or_default()
            .ok_or_else(|| ReceiverError::NoUrl(config.name.clone()))?
            .trim_end_matches('/')
            .to_string();
        let routing_key = match &config.routing_key_env {
            Some(var) => Some(env(var).ok_or_else(|| ReceiverError::NoRoutingKey {
                receiver: config.name.clone(),
                var: var.clone(),
            })?),
            None => None,
        };
        Ok(Receiver {
            config,
            url,
            routing_key,
            client: http_client(),
        })
    }

    fn severity_rank(&self) -> i64 {
        match self.config.min_severity {
            None | Some(tillwatch_config::Severity::Info) => 0,
            Some(tillwatch_config::Severity::Warning) => 1,
            Some(tillwatch_config::Severity::Critical) => 2,
        }
    }

    async fn post(&self, url: &str, body: &Value) -> Result<(), DeliveryError> {
        let request = hyper::Request::post(url)
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .header(hyper::header::USER_AGENT, "tillwatch-alerter")
            .body(Full::new(Bytes::from(body.to_string())))
            .map_err(|e| DeliveryError::Request {
                url: url.to_string(),
                detail: e.to_string(),
            })?;
        let response = tokio::time::timeout(self.config.timeout, self.client.request(request))
            .await
            .map_err(|_| DeliveryError::Timeout {
                url: url.to_string(),
                timeout: self.config.timeout,
            })?
            .map_err(|e| DeliveryError::Connection {
                url: url.to_string(),
                detail: e.to_string(),
            })?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let body: String =
            tokio::time::timeout(Duration::from_secs(2), response.into_body().collect())
                .await
                .ok()
                .and_then(|b| b.ok())
                .map(|b| {
                    String::from_utf8_lossy(&b.to_bytes())
                        .chars()
                        .take(300)
                        .collect()
                })
                .unwrap_or_default();
        Err(DeliveryError::Refused {
            url: url.to_string(),
            status,
            body,
        })
    }

    fn alertmanager_alert(&self, a: &AlertRecord, now: i64) -> Value {
        let ends = match a.notify {
            Some(AlertState::Resolved) => a.resolved_at_ms.unwrap_or(now),
            _ => now + 3 * self.config.repeat_or_default().as_millis() as i64,
        };
        json!({
            "labels": a.labels,
            "annotations": a.annotations,
            "startsAt": rfc3339(a.fired_at_ms.unwrap_or(a.pending_since_ms)),
            "endsAt": rfc3339(ends),
            "generatorURL": page_link(a).unwrap_or_default(),
        })
    }

    fn webhook_body(&self, a: &AlertRecord) -> Value {
        json!({
            "version": "1",
            "receiver": self.config.name,
            "status": a.notify.map(|n| n.as_str()).unwrap_or("firing"),
            "alert": {
                "alert_id": a.alert_id,
                "rule": a.rule,
                "subject": a.subject,
                "scope": a.scope,
                "severity": a.severity,
                "labels": a.labels,
                "annotations": a.annotations,
                "pending_since": rfc3339(a.pending_since_ms),
                "fired_at": a.fired_at_ms.map(rfc3339),
                "resolved_at": a.resolved_at_ms.map(rfc3339),
            }
        })
    }

    fn pagerduty_body(&self, a: &AlertRecord) -> Value {
        let resolve = a.notify == Some(AlertState::Resolved);
        let mut details: BTreeMap<String, String> = a.labels.clone();
        details.extend(a.annotations.clone());
        let link = page_link(a);
        json!({
            "routing_key": self.routing_key,
            "event_action": if resolve { "resolve" } else { "trigger" },
            "dedup_key": a.alert_id,
            "payload": {
                "summary": a.annotations.get("summary").cloned().unwrap_or_else(|| a.rule.clone()),
                "source": a.subject,
                "severity": a.severity,
                "timestamp": rfc3339(a.fired_at_ms.unwrap_or(a.pending_since_ms)),
                "component": a.labels.get("model").cloned().unwrap_or_default(),
                "group": format!("{}/{}", a.labels.get("merchant_id").map(String::as_str).unwrap_or(""), a.labels.get("store_id").map(String::as_str).unwrap_or("")),
                "class": a.rule,
                "custom_details": details,
            },
            "links": link.map(|href| vec![json!({"href": href, "text": "Tillwatch"})]).unwrap_or_default(),
        })
    }

    /// Sends what is due now; returns how many alerts went out.
    pub async fn deliver_due(&self, store: &MetaStore, now: i64) -> Result<usize, MetaError> {
        let repeat_ms = self.config.repeat_or_default().as_millis() as i64;
        let due = store
            .due_deliveries(
                &self.config.name,
                now,
                now - repeat_ms,
                self.severity_rank(),
                BATCH,
            )
            .await?;
        if due.is_empty() {
            return Ok(0);
        }
        // A job's alert names the receivers that deliver it; to the others
        // it is recorded as held without a request, so it is not due for
        // them again (and never crowds out their own alerts).
        let (due, others): (Vec<Delivery>, Vec<Delivery>) = due
            .into_iter()
            .partition(|d| d.alert.is_for(&self.config.name));
        if !others.is_empty() {
            let held: Vec<(String, AlertState)> = others.iter().map(holding).collect();
            store
                .record_delivered(&self.config.name, &held, now)
                .await?;
        }
        if due.is_empty() {
            return Ok(0);
        }
        let mut sent = Vec::new();
        let mut failed: Vec<(Vec<&Delivery>, DeliveryError)> = Vec::new();
        match self.config.kind {
            ReceiverKind::Alertmanager => {
                let body = Value::Array(
                    due.iter()
                        .map(|d| self.alertmanager_alert(&d.alert, now))
                        .collect(),
                );
                match self
                    .post(&format!("{}/api/v2/alerts", self.url), &body)
                    .await
                {
                    Ok(()) => sent.extend(due.iter()),
                    Err(e) => failed.push((due.iter().collect(), e)),
                }
            }
            ReceiverKind::Webhook | ReceiverKind::Pagerduty => {
                for d in &due {
                    let body = if self.config.kind == ReceiverKind::Webhook {
                        self.webhook_body(&d.alert)
                    } else {
                        self.pagerduty_body(&d.alert)
                    };
                    match self.post(&self.url, &body).await {
                        // One page per request: recorded at once, so a
                        // crash re-sends at most the page in flight.
                        Ok(()) => self.record_sent(store, &[d], now).await?,
                        Err(e) => failed.push((vec![d], e)),
                    }
                }
            }
        }
        let name = self.config.name.clone();
        self.record_sent(store, &sent, now).await?;
        let failed_count: usize = failed.iter().map(|(d, _)| d.len()).sum();
        let oldest_waiting = failed
            .iter()
            .flat_map(|(d, _)| d.iter().map(|d| d.alert.updated_at_ms))
            .min();
        metrics::gauge!(QUEUE_AGE, "receiver" => name.clone()).set(
            oldest_waiting.map_or(0.0, |since| {
                now.saturating_sub(since).max(0) as f64 / 1000.0
            }),
        );
        for (deliveries, error) in failed {
            let attempts = deliveries.iter().map(|d| d.attempts).max().unwrap_or(0);
            let backoff = (1000i64 << attempts.clamp(0, 20)).min(MAX_BACKOFF_MS);
            let ids: Vec<String> = deliveries
                .iter()
                .map(|d| d.alert.alert_id.clone())
                .collect();
            warn!(receiver = %name, alerts = ids.len(), retry_in_ms = backoff, %error, "alert delivery failed");
            store
                .record_delivery_failed(&name, &ids, now + backoff, &error.to_string())
                .await?;
            counter!(DELIVERIES, "receiver" => name.clone(), "outcome" => "failed")
                .increment(ids.len() as u64);
        }
        Ok(due.len() - failed_count)
    }

    async fn record_sent(
        &self,
        store: &MetaStore,
        sent: &[&Delivery],
        now: i64,
    ) -> Result<(), MetaError> {
        if sent.is_empty() {
            return Ok(());
        }
        let name = &self.config.name;
        let states: Vec<(String, AlertState)> = sent.iter().map(|d| holding(d)).collect();
        store.record_delivered(name, &states, now).await?;
        counter!(DELIVERIES, "receiver" => name.clone(), "outcome" => "sent")
            .increment(sent.len() as u64);
        for d in sent {
            info!(receiver = %name, alert = %d.alert.alert_id, state = ?d.alert.notify, "alert delivered");
        }
        Ok(())
    }
}

/// What a receiver holds of an alert once it is delivered: its alert id
/// and the state it was delivered in.
fn holding(d: &Delivery) -> (String, AlertState) {
    (
        d.alert.alert_id.clone(),
        d.alert.notify.unwrap_or(AlertState::Firing),
    )
}

/// Delivers until `shutdown`: at once when `wake` is notified (an alert
/// changed), and every second for repeats and retries.
pub async fn run_delivery(
    store: MetaStore,
    receivers: Vec<Receiver>,
    wake: Arc<Notify>,
    shutdown: impl Future<Output = ()>,
) {
    metrics::describe_counter!(DELIVERIES, "Alert notifications, by receiver and outcome");
    metrics::describe_gauge!(
        QUEUE_AGE,
        metrics::Unit::Seconds,
        "How long the oldest notification the receiver's last attempt could not deliver has waited (0 when all went through), by receiver"
    );
    for receiver in &receivers {
        let name = receiver.config.name.clone();
        for outcome in ["sent", "failed"] {
            counter!(DELIVERIES, "receiver" => name.clone(), "outcome" => outcome).increment(0);
        }
        metrics::gauge!(QUEUE_AGE, "receiver" => name).set(0.0);
    }
    tokio::pin!(shutdown);
    loop {
        let now = tillwatch_domain::UtcMillis::now().0;
        for receiver in &receivers {
            // Until nothing more is due (a batch at a time).
            loop {
                match receiver.deliver_due(&store, now).await {
                    Ok(n) if n == BATCH as usize => continue,
                    Ok(_) => break,
                    Err(e) => {
                        warn!(receiver = %receiver.config.name, error = %e, "delivery bookkeeping failed");
                        break;
                    }
                }
            }
        }
        tokio::select! {
            _ = wake.notified() => {}
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = &mut shutdown => return,
        }
    }
}
