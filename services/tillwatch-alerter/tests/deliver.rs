//! Delivery to webhooks and the PagerDuty preset, against a small HTTP
//! receiver in the test: the documented bodies, one page per alert until
//! the repeat interval, a resolve only where a page went, and a receiver
//! that fails is retried after its backoff, never skipped.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use serde_json::Value;
use tillwatch_alerter::deliver::{Receiver, ReceiverError};
use tillwatch_config::{ReceiverConfig, ReceiverKind};
use tillwatch_meta::testing::TestDatabase;
use tillwatch_meta::{AlertRecord, AlertState, MetaStore};

#[derive(Clone, Default)]
struct Inbox {
    bodies: Arc<Mutex<Vec<Value>>>,
    /// Answer 503 to this many requests first.
    failures_left: Arc<Mutex<u32>>,
}

async fn take(State(inbox): State<Inbox>, Json(body): Json<Value>) -> StatusCode {
    let mut left = inbox.failures_left.lock().unwrap();
    if *left > 0 {
        *left -= 1;
        return StatusCode::SERVICE_UNAVAILABLE;
    }
    inbox.bodies.lock().unwrap().push(body);
    StatusCode::ACCEPTED
}

async fn receiver_server() -> (String, Inbox) {
    let inbox = Inbox::default();
    let app = axum::Router::new()
        .route("/hook", post(take))
        .with_state(inbox.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, inbox)
}

fn firing(id: &str) -> AlertRecord {
    AlertRecord {
        alert_id: id.into(),
        state: AlertState::Firing,
        fired_at_ms: Some(61_000),
        notify: Some(AlertState::Firing),
        labels: [
            ("alertname", "battery_critical"),
            ("device_id", "t-1"),
            ("merchant_id", "m-1"),
            ("store_id", "s-1"),
            ("severity", "critical"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect(),
        annotations: [
            ("summary", "Battery at 8 % and not charging"),
            ("device_url", "http://tw.test/ui/device?id=t-1"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect(),
        ..AlertRecord::pending(
            "battery_critical",
            "t-1",
            "device",
            "critical",
            1_000,
            61_000,
        )
    }
}

fn resolved(mut a: AlertRecord, at: i64) -> AlertRecord {
    a.state = AlertState::Resolved;
    a.resolved_at_ms = Some(at);
    a.notify = Some(AlertState::Resolved);
    a.updated_at_ms = at;
    a
}

fn config(kind: ReceiverKind, url: &str) -> ReceiverConfig {
    ReceiverConfig {
        name: format!("{kind:?}").to_lowercase(),
        kind,
        url: Some(url.into()),
        repeat: Some(Duration::from_secs(3600)),
        timeout: Duration::from_secs(5),
        min_severity: None,
        routing_key_env: None,
    }
}

fn no_env(_: &str) -> Option<String> {
    None
}

async fn store() -> (TestDatabase, MetaStore) {
    let db = TestDatabase::sqlite();
    let store = MetaStore::connect(&db.url).await.unwrap();
    store.migrate().await.unwrap();
    (db, store)
}

#[tokio::test]
async fn a_webhook_gets_one_page_repeats_after_its_interval_and_the_resolve() {
    let (_db, store) = store().await;
    let (url, inbox) = receiver_server().await;
    let hook = Receiver::new(config(ReceiverKind::Webhook, &url), no_env).unwrap();
    let alert = firing("battery_critical:t-1:1000");
    store
        .save_alerts(std::slice::from_ref(&alert))
        .await
        .unwrap();

    assert_eq!(hook.deliver_due(&store, 100_000).await.unwrap(), 1);
    assert_eq!(
        hook.deliver_due(&store, 101_000).await.unwrap(),
        0,
        "no second page"
    );
    {
        let bodies = inbox.bodies.lock().unwrap();
        let body = &bodies[0];
        assert_eq!(body["version"], "1");
        assert_eq!(body["status"], "firing");
        assert_eq!(body["alert"]["alert_id"], "battery_critical:t-1:1000");
        assert_eq!(body["alert"]["labels"]["store_id"], "s-1");
        assert_eq!(
            body["alert"]["annotations"]["summary"],
            "Battery at 8 % and not charging"
        );
        assert_eq!(body["alert"]["fired_at"], "1970-01-01T00:01:01Z");
    }
    // An hour on (the repeat interval): a reminder.
    assert_eq!(
        hook.deliver_due(&store, 100_000 + 3_600_000).await.unwrap(),
        1
    );

    store
        .save_alerts(&[resolved(alert, 4_000_000)])
        .await
        .unwrap();
    assert_eq!(hook.deliver_due(&store, 4_000_001).await.unwrap(), 1);
    assert_eq!(
        hook.deliver_due(&store, 9_000_000).await.unwrap(),
        0,
        "resolved once"
    );
    let bodies = inbox.bodies.lock().unwrap();
    assert_eq!(bodies.len(), 3);
    assert_eq!(bodies[2]["status"], "resolved");
}

#[tokio::test]
async fn a_failing_receiver_is_retried_after_its_backoff_and_gets_the_page() {
    let (_db, store) = store().await;
    let (url, inbox) = receiver_server().await;
    *inbox.failures_left.lock().unwrap() = 2;
    let hook = Receiver::new(config(ReceiverKind::Webhook, &url), no_env).unwrap();
    store.save_alerts(&[firing("a-1")]).await.unwrap();

    assert_eq!(hook.deliver_due(&store, 10_000).await.unwrap(), 0, "503");
    // Backoff 1 s, then 2 s.
    assert_eq!(
        hook.deliver_due(&store, 10_500).await.unwrap(),
        0,
        "not before 1 s"
    );
    assert_eq!(
        hook.deliver_due(&store, 11_000).await.unwrap(),
        0,
        "503 again"
    );
    assert_eq!(
        hook.deliver_due(&store, 12_500).await.unwrap(),
        0,
        "not before 2 s"
    );
    assert_eq!(
        hook.deliver_due(&store, 13_000).await.unwrap(),
        1,
        "delivered"
    );
    assert_eq!(inbox.bodies.lock().unwrap().len(), 1);
    // Nothing is lost to a receiver that is not even listening: it waits.
    let gone = Receiver::new(
        config(ReceiverKind::Webhook, "http://127.0.0.1:9/hook"),
        no_env,
    )
    .unwrap();
    assert_eq!(gone.deliver_due(&store, 13_000).await.unwrap(), 0);
}

#[tokio::test]
async fn the_pagerduty_preset_triggers_and_resolves_by_dedup_key() {
    let (_db, store) = store().await;
    let (url, inbox) = receiver_server().await;
    let env = |var: &str| (var == "PD_ROUTING_KEY").then(|| "R0UT1NG".to_string());
    let mut pd = config(ReceiverKind::Pagerduty, &url);
    pd.routing_key_env = Some("PD_ROUTING_KEY".into());
    let pd = Receiver::new(pd, env).unwrap();
    let alert = firing("battery_critical:t-1:1000");
    store
        .save_alerts(std::slice::from_ref(&alert))
        .await
        .unwrap();
    assert_eq!(pd.deliver_due(&store, 100_000).await.unwrap(), 1);
    store
        .save_alerts(&[resolved(alert, 200_000)])
        .await
        .unwrap();
    assert_eq!(pd.deliver_due(&store, 200_001).await.unwrap(), 1);
    let bodies = inbox.bodies.lock().unwrap();
    assert_eq!(bodies[0]["routing_key"], "R0UT1NG");
    assert_eq!(bodies[0]["event_action"], "trigger");
    assert_eq!(bodies[0]["dedup_key"], "battery_critical:t-1:1000");
    assert_eq!(bodies[0]["payload"]["severity"], "critical");
    assert_eq!(bodies[0]["payload"]["source"], "t-1");
    assert_eq!(
        bodies[0]["payload"]["summary"],
        "Battery at 8 % and not charging"
    );
    assert_eq!(
        bodies[0]["links"][0]["href"],
        "http://tw.test/ui/device?id=t-1"
    );
    assert_eq!(bodies[1]["event_action"], "resolve");
    assert_eq!(bodies[1]["dedup_key"], "battery_critical:t-1:1000");

    let err = Receiver::new(
        ReceiverConfig {
            routing_key_env: Some("TW_TEST_UNSET_VARIABLE".into()),
            ..config(ReceiverKind::Pagerduty, &url)
        },
        env,
    )
    .err()
    .expect("refused");
    assert_eq!(
        err,
        ReceiverError::NoRoutingKey {
            receiver: "pagerduty".into(),
            var: "TW_TEST_UNSET_VARIABLE".into()
        }
    );
    assert!(err.to_string().contains("TW_TEST_UNSET_VARIABLE"), "{err}");
}

/// A job's alert with `notify = ["risk-pager"]` (its `notify` label) goes
/// to that receiver only, firing and resolved; another receiver never
/// sees it, and its own alerts still reach it, even with more skipped
/// alerts than fit one batch.
#[tokio::test]
async fn a_jobs_alert_goes_only_to_the_receivers_it_names() {
    let (_db, store) = store().await;
    let (risk_url, risk_inbox) = receiver_server().await;
    let (ops_url, ops_inbox) = receiver_server().await;
    let mut risk = config(ReceiverKind::Webhook, &risk_url);
    risk.name = "risk-pager".into();
    let risk = Receiver::new(risk, no_env).unwrap();
    let mut ops = config(ReceiverKind::Webhook, &ops_url);
    ops.name = "ops".into();
    let ops = Receiver::new(ops, no_env).unwrap();

    let job_alert = |i: usize| {
        let mut a = firing(&format!("job_failed:job:breaks/p{i:03}"));
        a.rule = "job_failed".into();
        a.subject = format!("job:breaks/p{i:03}");
        a.scope = "job".into();
        a.labels = [
            ("alertname", "job_failed"),
            ("job", "breaks"),
            ("owner", "payments-risk"),
            ("notify", "risk-pager,finance-mail"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        a.updated_at_ms = 1_000 + i as i64;
        a
    };
    // More of the team's alerts than one delivery batch (200), older than
    // an ordinary alert for everyone.
    let team: Vec<AlertRecord> = (0..250).map(job_alert).collect();
    store.save_alerts(&team).await.unwrap();
    let mut everyone = firing("battery_critical:t-1:1000");
    everyone.updated_at_ms = 50_000;
    store
        .save_alerts(std::slice::from_ref(&everyone))
        .await
        .unwrap();

    let mut sent_to_ops = 0;
    for round in 0..3 {
        sent_to_ops += ops.deliver_due(&store, 100_000 + round).await.unwrap();
    }
    assert_eq!(sent_to_ops, 1, "ops gets its own alert, none of the team's");
    {
        let bodies = ops_inbox.bodies.lock().unwrap();
        assert_eq!(bodies.len(), 1);
        assert_eq!(bodies[0]["alert"]["alert_id"], "battery_critical:t-1:1000");
    }
    let mut sent_to_risk = 0;
    for round in 0..3 {
        sent_to_risk += risk.deliver_due(&store, 100_000 + round).await.unwrap();
    }
    assert_eq!(
        sent_to_risk, 251,
        "the team's pager gets its alerts and the fleet's"
    );

    // The fix: the team's alerts resolve, to the team's pager only.
    let resolved_all: Vec<AlertRecord> = team.into_iter().map(|a| resolved(a, 200_000)).collect();
    store.save_alerts(&resolved_all).await.unwrap();
    let mut resolves = 0;
    for round in 0..3 {
        resolves += risk.deliver_due(&store, 200_001 + round).await.unwrap();
        assert_eq!(ops.deliver_due(&store, 200_001 + round).await.unwrap(), 0);
    }
    assert_eq!(resolves, 250);
    assert_eq!(ops_inbox.bodies.lock().unwrap().len(), 1);
    let risk_bodies = risk_inbox.bodies.lock().unwrap();
    assert_eq!(
        risk_bodies
            .iter()
            .filter(|b| b["status"] == "resolved" && b["alert"]["labels"]["job"] == "breaks")
            .count(),
        250
    );
}
