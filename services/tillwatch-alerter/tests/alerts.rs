//! Alert rules end to end through the [`Alerter`] on an injected clock,
//! on SQLite and on PostgreSQL: a draining battery pages once and resolves
//! once, a flapping one never, a restart neither duplicates nor forgets,
//! a store outage is one store alert with its terminals' pages held, a
//! silence mutes only what it matches, and a closed store does not page.

mod common;

use common::{battery, dev};
use tillwatch_alerter::Alerter;
use tillwatch_alerter::Event;
use tillwatch_config::{AlertingConfig, StoreConfig};
use tillwatch_domain::connectivity::SilencePolicy;
use tillwatch_domain::{
    BootId, DeviceInfo, DeviceStatus, MerchantId, StatusReason, StoreId, UtcMillis,
};
use tillwatch_meta::testing::TestDatabase;
use tillwatch_meta::{AlertFilter, AlertRecord, AlertState, MetaStore, SilenceRecord};

const MIN: i64 = 60_000;

/// Monday 2026-11-23 10:00 in Berlin (09:00 UTC): the stores are open.
fn monday_10am() -> i64 {
    at_berlin("2026-11-23T10:00")
}

fn at_berlin(civil: &str) -> i64 {
    let dt: jiff::civil::DateTime = civil.parse().unwrap();
    dt.to_zoned(jiff::tz::TimeZone::get("Europe/Berlin").unwrap())
        .unwrap()
        .timestamp()
        .as_millisecond()
}

fn info(device: &str, store: &str, at: i64) -> Event {
    Event::Info(DeviceInfo {
        device_id: dev(device),
        boot_id: BootId(1),
        model: "A920".into(),
        serial: format!("SN-{device}"),
        firmware_version: "2.9.0".into(),
        app_version: "4.12.1".into(),
        merchant_id: MerchantId::new("m-1").unwrap(),
        store_id: Some(StoreId::new(store).unwrap()),
        time_zone: "Europe/Berlin".into(),
        at: UtcMillis(at),
    })
}

fn lost(device: &str, at: i64) -> Event {
    Event::Status {
        status: DeviceStatus {
            device_id: dev(device),
            boot_id: BootId(1),
            online: false,
            reason: StatusReason::ConnectionLost,
            at: UtcMillis(0),
        },
        received_at: UtcMillis(at),
    }
}

fn config() -> AlertingConfig {
    let mut c = AlertingConfig {
        stores: ["s-1", "s-2", "s-3"]
            .iter()
            .map(|s| StoreConfig {
                merchant_id: "m-1".into(),
                store_id: s.to_string(),
                name: Some(format!("Store {s}")),
                time_zone: Some("Europe/Berlin".parse().unwrap()),
                hours: "Mon-Fri 08:00-20:00".parse().unwrap(),
            })
            .collect(),
        ..AlertingConfig::default()
    };
    // Battery forecasts are not what these tests are about.
    c.rules.battery_forecast.enabled = false;
    c
}

async fn open(store: &MetaStore, now: i64) -> Alerter {
    Alerter::open(
        store.clone(),
        SilencePolicy::default(),
        &config(),
        "http://tillwatch.test",
        UtcMillis(now),
    )
    .await
    .unwrap()
}

async fn all(store: &MetaStore, rule: &str) -> Vec<AlertRecord> {
    let mut alerts: Vec<_> = store
        .alerts(AlertFilter::All, 1000)
        .await
        .unwrap()
        .into_iter()
        .filter(|a| a.rule == rule)
        .collect();
    alerts.sort_by_key(|a| a.pending_since_ms);
    alerts
}

async fn store_of(url: &str) -> MetaStore {
    let store = MetaStore::connect(url).await.unwrap();
    store.migrate().await.unwrap();
    store
}

/// A fresh store and an alerter opened on it at `at`, having had the info
/// message of each `(terminal, store)` in one batch.
async fn with_terminals(url: &str, at: i64, terminals: &[(&str, &str)]) -> (MetaStore, Alerter) {
    let store = store_of(url).await;
    let mut alerter = open(&store, at).await;
    let infos: Vec<Event> = terminals.iter().map(|(d, s)| info(d, s, at)).collect();
    alerter.handle_batch(&infos, UtcMillis(at)).await.unwrap();
    (store, alerter)
}

/// Feeds a device's battery, one reading a minute from `start`, and
/// ticks the clock between readings.
async fn feed_battery(
    alerter: &mut Alerter,
    device: &str,
    start: i64,
    levels: &[(u32, bool)],
    seq0: u64,
) -> i64 {
    let mut t = start;
    for (i, (level, charging)) in levels.iter().enumerate() {
        t = start + i as i64 * MIN;
        alerter.tick(UtcMillis(t)).await.unwrap();
        alerter
            .handle(
                battery(device, seq0 + i as u64, t, *level, *charging),
                UtcMillis(t),
            )
            .await
            .unwrap();
    }
    t
}

async fn draining_battery_pages_once_and_survives_a_restart(url: &str) {
    let t0 = monday_10am();
    let (store, mut alerter) = with_terminals(url, t0, &[("t-1", "s-1")]).await;
    // 30 % down a point a minute: under 20 % from minute 11.
    let draining: Vec<(u32, bool)> = (0..19).map(|m| (30 - m, false)).collect();
    let t = feed_battery(&mut alerter, "t-1", t0, &draining, 0).await;
    let alerts = all(&store, "battery_low").await;
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    let fired = &alerts[0];
    assert_eq!(fired.state, AlertState::Firing);
    // Under 20 % from minute 11 (19 %); five minutes later, at minute 16,
    // the clock fires it before that minute's reading arrives.
    assert_eq!(
        fired.fired_at_ms,
        Some(t0 + 16 * MIN),
        "5 minutes under 20 %"
    );
    assert_eq!(fired.notify, Some(AlertState::Firing));
    assert_eq!(fired.labels["merchant_id"], "m-1");
    assert_eq!(fired.labels["store_id"], "s-1");
    assert_eq!(fired.labels["model"], "A920");
    assert_eq!(fired.labels["firmware_version"], "2.9.0");
    assert_eq!(fired.labels["severity"], "warning");
    assert_eq!(
        fired.annotations["device_url"],
        "http://tillwatch.test/ui/device?id=t-1"
    );
    assert_eq!(
        fired.annotations["value_battery_level_pct"], "15",
        "the value that fired it"
    );
    assert!(
        fired.annotations["summary"].contains("15 %"),
        "{:?}",
        fired.annotations
    );

    // Restarted while firing: the same alert, still firing, not a new one.
    drop(alerter);
    let mut alerter = open(&store, t + 30_000).await;
    let t = feed_battery(
        &mut alerter,
        "t-1",
        t + MIN,
        &[(12, false), (11, false)],
        100,
    )
    .await;
    let alerts = all(&store, "battery_low").await;
    assert_eq!(alerts.len(), 1);
    assert_eq!(
        (alerts[0].alert_id.as_str(), alerts[0].state),
        (fired.alert_id.as_str(), AlertState::Firing)
    );

    // Plugged in: charging alone does not resolve it; above 25 % for two
    // minutes does, once.
    let charging: Vec<(u32, bool)> = (0..20).map(|m| (12 + 2 * m, true)).collect();
    feed_battery(&mut alerter, "t-1", t + MIN, &charging, 200).await;
    let alerts = all(&store, "battery_low").await;
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    assert_eq!(alerts[0].state, AlertState::Resolved);
    assert_eq!(alerts[0].notify, Some(AlertState::Resolved));
    // 12 + 2m ≥ 25 from m = 7; resolved two minutes later.
    assert_eq!(alerts[0].resolved_at_ms, Some(t + 10 * MIN));
    assert!(
        all(&store, "battery_critical").await.is_empty(),
        "never under 10 %"
    );
}

async fn flapping_battery_never_pages(url: &str) {
    let store = store_of(url).await;
    let t0 = monday_10am();
    let mut alerter = open(&store, t0).await;
    let flapping: Vec<(u32, bool)> = (0..60)
        .map(|m| (if m % 3 == 0 { 22 } else { 19 }, false))
        .collect();
    feed_battery(&mut alerter, "t-flap", t0, &flapping, 0).await;
    let alerts = all(&store, "battery_low").await;
    assert!(
        alerts
            .iter()
            .all(|a| a.fired_at_ms.is_none() && a.notify.is_none()),
        "never fired: {alerts:?}"
    );
    assert!(
        alerts.len() <= 1,
        "pending alerts that went away leave nothing: {alerts:?}"
    );
}

async fn report_every_20s(alerter: &mut Alerter, devices: &[&str], from: i64, to: i64) {
    let mut t = from;
    let mut seq = 0;
    while t <= to {
        alerter.tick(UtcMillis(t)).await.unwrap();
        for d in devices {
            alerter
                .handle(battery(d, seq, t, 80, false), UtcMillis(t))
                .await
                .unwrap();
        }
        seq += 1;
        t += 20_000;
    }
}

async fn tick_until(alerter: &mut Alerter, from: i64, to: i64) {
    let mut t = from;
    while t <= to {
        alerter.tick(UtcMillis(t)).await.unwrap();
        t += 5_000;
    }
}

async fn store_outage_is_one_alert_with_terminal_pages_held(url: &str) {
    let store = store_of(url).await;
    let t0 = monday_10am();
    let mut alerter = open(&store, t0).await;
    let store_1 = ["a-1", "a-2", "a-3", "a-4", "a-5"];
    for d in store_1 {
        alerter
            .handle(info(d, "s-1", t0), UtcMillis(t0))
            .await
            .unwrap();
    }
    alerter
        .handle(info("b-1", "s-2", t0), UtcMillis(t0))
        .await
        .unwrap();
    let mut everyone = store_1.to_vec();
    everyone.push("b-1");
    report_every_20s(&mut alerter, &everyone, t0, t0 + 5 * MIN).await;

    // Four of store 1's five terminals drop within 30 s; store 2's only
    // terminal drops too.
    let t = t0 + 5 * MIN + 5_000;
    for (i, d) in ["a-1", "a-2", "a-3", "a-4", "b-1"].iter().enumerate() {
        let at = t + i as i64 * 7_000;
        alerter.tick(UtcMillis(at)).await.unwrap();
        alerter.handle(lost(d, at), UtcMillis(at)).await.unwrap();
    }
    // a-5 keeps reporting; a few minutes pass.
    report_every_20s(&mut alerter, &["a-5"], t + 40_000, t + 4 * MIN).await;

    let store_alerts = all(&store, "store_offline").await;
    assert_eq!(store_alerts.len(), 1, "{store_alerts:?}");
    let outage = &store_alerts[0];
    assert_eq!(outage.state, AlertState::Firing);
    assert_eq!(outage.notify, Some(AlertState::Firing), "the one page");
    assert_eq!(outage.subject, "store:m-1/s-1");
    assert_eq!(outage.labels["store_id"], "s-1");
    assert!(
        outage.annotations["summary"].contains("4 of 5"),
        "{:?}",
        outage.annotations
    );

    let offline = all(&store, "offline").await;
    let held: Vec<_> = offline
        .iter()
        .filter(|a| a.subject.starts_with("a-"))
        .collect();
    assert_eq!(
        held.len(),
        4,
        "each terminal's alert stays visible: {offline:?}"
    );
    for a in &held {
        assert_eq!(a.state, AlertState::Firing);
        assert_eq!(a.held_by.as_deref(), Some(outage.alert_id.as_str()));
        assert_eq!(a.notify, None, "held back: no page of its own");
    }
    let lone = offline
        .iter()
        .find(|a| a.subject == "b-1")
        .expect("b-1 alerts");
    assert_eq!(
        (lone.state, lone.held_by.as_ref(), lone.notify),
        (AlertState::Firing, None, Some(AlertState::Firing))
    );

    // Store 1 comes back: the store alert resolves.
    let back = t + 5 * MIN;
    report_every_20s(&mut alerter, &store_1, back, back + 3 * MIN).await;
    let outage = &all(&store, "store_offline").await[0];
    assert_eq!(outage.state, AlertState::Resolved);
    for a in all(&store, "offline")
        .await
        .iter()
        .filter(|a| a.subject.starts_with("a-"))
    {
        assert_eq!(a.state, AlertState::Resolved);
        assert_eq!(
            a.notify,
            Some(AlertState::Resolved),
            "a resolve only goes where a page went"
        );
    }
}

async fn silence_mutes_what_it_matches_and_silent_devices_page(url: &str) {
    let store = store_of(url).await;
    let t0 = monday_10am();
    let mut alerter = open(&store, t0).await;
    alerter
        .handle(info("q-1", "s-2", t0), UtcMillis(t0))
        .await
        .unwrap();
    alerter
        .handle(info("q-2", "s-3", t0), UtcMillis(t0))
        .await
        .unwrap();
    store
        .create_silence(&SilenceRecord {
            silence_id: "planned-work".into(),
            matchers: vec![
                "store_id=s-2".into(),
                "alertname=~offline|poor_connectivity".into(),
            ],
            starts_at_ms: t0,
            ends_at_ms: t0 + 60 * MIN,
            created_by: "ops@example.com".into(),
            comment: "router swap".into(),
            created_at_ms: t0,
        })
        .await
        .unwrap();
    report_every_20s(&mut alerter, &["q-1", "q-2"], t0, t0 + 5 * MIN).await;
    // Both go quiet without a word: offline by silence, then the alert.
    tick_until(&mut alerter, t0 + 5 * MIN, t0 + 10 * MIN).await;
    let offline = all(&store, "offline").await;
    assert_eq!(offline.len(), 2, "{offline:?}");
    let muted = offline.iter().find(|a| a.subject == "q-1").unwrap();
    assert_eq!(muted.state, AlertState::Firing);
    assert_eq!(muted.silenced_by.as_deref(), Some("silence:planned-work"));
    assert_eq!(muted.notify, None);
    let paged = offline.iter().find(|a| a.subject == "q-2").unwrap();
    assert_eq!(
        (paged.silenced_by.as_ref(), paged.notify),
        (None, Some(AlertState::Firing))
    );
    // The silence is ended early: the muted alert pages at the next sweep.
    assert!(
        store
            .expire_silence("planned-work", t0 + 11 * MIN)
            .await
            .unwrap()
    );
    tick_until(&mut alerter, t0 + 11 * MIN, t0 + 12 * MIN).await;
    let muted = all(&store, "offline")
        .await
        .into_iter()
        .find(|a| a.subject == "q-1")
        .unwrap();
    assert_eq!(
        (muted.silenced_by, muted.notify),
        (None, Some(AlertState::Firing))
    );
}

async fn closed_store_at_night_does_not_page(url: &str) {
    let night = at_berlin("2026-11-24T02:00");
    let (store, mut alerter) = with_terminals(url, night, &[("n-1", "s-1")]).await;
    report_every_20s(&mut alerter, &["n-1"], night, night + 3 * MIN).await;
    let off = night + 3 * MIN + 10_000;
    alerter
        .handle(lost("n-1", off), UtcMillis(off))
        .await
        .unwrap();
    tick_until(&mut alerter, off, off + 30 * MIN).await;
    assert!(
        all(&store, "offline").await.is_empty(),
        "closed: no alert, not even pending"
    );
    // Still off when the store opens at 08:00: now it pages.
    let opening = at_berlin("2026-11-24T08:00");
    tick_until(&mut alerter, opening - MIN, opening + 2 * MIN).await;
    let offline = all(&store, "offline").await;
    assert_eq!(offline.len(), 1, "{offline:?}");
    assert_eq!(offline[0].state, AlertState::Firing);
    assert!(offline[0].pending_since_ms >= opening);
}

/// A terminal's battery alert resolves and its next one opens within one
/// batch of messages (a backlog after a reconnect): the flush holds both,
/// the resolve and the new pending alert of the same rule and subject, and
/// the store takes it (the new one first used to break the one-open-alert
/// rule on every retry and stop the alerter taking messages).
async fn a_resolve_and_the_next_alert_in_one_batch(url: &str) {
    let t0 = monday_10am();
    let (store, mut alerter) = with_terminals(url, t0, &[("t-1", "s-1")]).await;
    // 15 % for ten minutes: fired at minute 5.
    let low: Vec<(u32, bool)> = (0..10).map(|_| (15, false)).collect();
    let t = feed_battery(&mut alerter, "t-1", t0, &low, 0).await;
    // Charged to 40 % at the next minute (clearing starts), then nothing
    // for a while, then one batch: still 40 % two and a half minutes on
    // (resolves it), and 15 % again half a minute later (opens the next).
    let clearing = t + MIN;
    alerter
        .handle(battery("t-1", 100, clearing, 40, true), UtcMillis(clearing))
        .await
        .unwrap();
    let (a, b) = (clearing + 150_000, clearing + 180_000);
    alerter
        .handle_batch(
            &[
                battery("t-1", 101, a, 40, false),
                battery("t-1", 102, b, 15, false),
            ],
            UtcMillis(b),
        )
        .await
        .unwrap();
    assert!(!alerter.has_unsaved(), "the batch's flush did not save");
    alerter.tick(UtcMillis(b + 1_000)).await.unwrap();

    let alerts = all(&store, "battery_low").await;
    assert_eq!(alerts.len(), 2, "{alerts:?}");
    assert_eq!(alerts[0].state, AlertState::Resolved, "{:?}", alerts[0]);
    assert_eq!(alerts[0].fired_at_ms, Some(t0 + 5 * MIN));
    assert_eq!(alerts[0].notify, Some(AlertState::Resolved));
    assert_eq!(alerts[1].state, AlertState::Pending, "{:?}", alerts[1]);
    assert_eq!(alerts[1].pending_since_ms, b);
    assert_ne!(alerts[0].alert_id, alerts[1].alert_id);

    // And the next one fires on its own time: five minutes under 20 %.
    let later: Vec<(u32, bool)> = (0..6).map(|_| (15, false)).collect();
    feed_battery(&mut alerter, "t-1", b + MIN, &later, 200).await;
    let alerts = all(&store, "battery_low").await;
    assert_eq!(alerts[1].state, AlertState::Firing, "{alerts:?}");
    assert_eq!(alerts[1].fired_at_ms, Some(b + 5 * MIN));
}

/// An open alert of t-1's rule written by another writer (a second
/// alerter in a split brain, a hand edit) that this alerter never loaded:
/// the store refuses this alerter's own t-1 alert. That refusal used to
/// fail every flush the same way and stop the alerter's message loop; now
/// the refused alert is set aside and t-2's page still opens and resolves.
async fn an_alert_the_store_refuses_does_not_stop_the_others(url: &str) {
    let t0 = monday_10am();
    let (store, mut alerter) = with_terminals(url, t0, &[("t-1", "s-1"), ("t-2", "s-1")]).await;
    let foreign = AlertRecord {
        alert_id: "written-elsewhere".into(),
        ..AlertRecord::pending("battery_low", "t-1", "device", "warning", t0, t0)
    };
    store
        .save_alerts(std::slice::from_ref(&foreign))
        .await
        .unwrap();

    // Both drain to 15 % in the same minutes, so each flush carries both
    // terminals' alerts; then t-2 is charged back to 40 %.
    let mut t = t0;
    for minute in 1..=20 {
        t = t0 + minute * MIN;
        alerter.tick(UtcMillis(t)).await.unwrap();
        let t2_level = if minute <= 10 { 15 } else { 40 };
        alerter
            .handle_batch(
                &[
                    battery("t-1", minute as u64, t, 15, false),
                    battery("t-2", minute as u64, t, t2_level, minute > 10),
                ],
                UtcMillis(t),
            )
            .await
            .unwrap();
        assert!(!alerter.has_unsaved(), "minute {minute}: a flush is stuck");
    }
    alerter.tick(UtcMillis(t + MIN)).await.unwrap();

    let alerts = all(&store, "battery_low").await;
    let of = |device: &str| -> Vec<&AlertRecord> {
        alerts.iter().filter(|a| a.subject == device).collect()
    };
    let t2 = of("t-2");
    assert_eq!(t2.len(), 1, "{alerts:?}");
    // Under 20 % from minute 1, fired five minutes on, resolved two
    // minutes above 25 % after minute 11.
    assert_eq!(t2[0].fired_at_ms, Some(t0 + 6 * MIN), "{:?}", t2[0]);
    assert_eq!(t2[0].state, AlertState::Resolved, "{:?}", t2[0]);
    assert_eq!(t2[0].notify, Some(AlertState::Resolved));
    // t-1 keeps the other writer's alert, untouched, and nothing else.
    let t1 = of("t-1");
    assert_eq!(t1.len(), 1, "{alerts:?}");
    assert_eq!(t1[0].alert_id, "written-elsewhere");
    assert_eq!(t1[0].state, AlertState::Pending);
}

macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            use super::*;
            $(
                #[tokio::test]
                async fn $name() {
                    let db = TestDatabase::sqlite();
                    super::$name(&db.url).await;
                }
            )*
        }
        mod postgres {
            use super::*;
            $(
                #[tokio::test]
                async fn $name() {
                    let db = TestDatabase::postgres().await;
                    super::$name(&db.url).await;
                    db.drop_it().await;
                }
            )*
        }
    };
}

on_both_backends!(
    draining_battery_pages_once_and_survives_a_restart,
    flapping_battery_never_pages,
    store_outage_is_one_alert_with_terminal_pages_held,
    silence_mutes_what_it_matches_and_silent_devices_page,
    closed_store_at_night_does_not_page,
    an_alert_the_store_refuses_does_not_stop_the_others,
    a_resolve_and_the_next_alert_in_one_batch,
);
