use super::*;
use tillwatch_domain::connectivity::OfflineReason;
use tillwatch_domain::{
    AppPerformance, Battery, BootId, Connectivity, DeviceId, NetworkType, PaymentHealth,
};

const MIN: i64 = 60_000;
/// Monday 2026-11-23 09:00 UTC.
const T0: i64 = 1_795_424_400_000;

fn reading(seq: u64, at: i64, signal: Signal) -> Reading {
    Reading {
        device_id: DeviceId::new("t-1").unwrap(),
        boot_id: BootId(1),
        seq,
        sampled_at: UtcMillis(at),
        signal,
    }
}

fn connectivity(rssi: i32, latency: u32, disconnects: u32) -> Signal {
    Signal::Connectivity(Connectivity {
        network_type: NetworkType::Cellular,
        rssi_dbm: rssi,
        payment_host_latency_ms: latency,
        disconnects,
        carrier_or_ssid: "carrier".into(),
    })
}

fn app(transactions: u32, latency: u32, crashes: u32, hangs: u32) -> Signal {
    Signal::AppPerformance(AppPerformance {
        app_version: "4.12.1".into(),
        firmware_version: "2.9.0".into(),
        transactions,
        transaction_latency_avg_ms: latency,
        transaction_latency_max_ms: latency * 2,
        startup_ms: None,
        crashes,
        hangs,
        memory_used_kib: 1000,
        cpu_pct: 10.0,
    })
}

fn payment(queued: u32, oldest_s: u32, tamper: bool) -> Signal {
    Signal::PaymentHealth(PaymentHealth {
        offline_queue_len: queued,
        offline_queue_oldest_age_s: oldest_s,
        tamper_detected: tamper,
        printer_paper_low: false,
    })
}

fn battery(level: u32, charging: bool) -> Signal {
    Signal::Battery(Battery::healthy(level, charging))
}

/// Feeds one signal a minute for `minutes`; returns the rule's alerts
/// as saved, oldest first.
fn run(
    engine: &mut Engine,
    rule: &str,
    minutes: std::ops::Range<i64>,
    signal: impl Fn(i64) -> Signal,
) -> Vec<AlertRecord> {
    let mut saved = Vec::new();
    for m in minutes {
        let mut changes = Changes::default();
        let at = T0 + m * MIN;
        engine.on_readings(
            "m-1",
            "t-1",
            &[reading(m as u64, at, signal(m))],
            UtcMillis(at),
            &mut changes,
        );
        saved.extend(changes.saved.into_values().filter(|a| a.rule == rule));
    }
    saved
}

fn engine() -> Engine {
    Engine::new(&AlertingConfig::default(), "http://tw", UtcMillis(T0))
}

/// Terminal `id` of `merchant`'s `store`, known and online from `T0`.
fn online_at_t0(e: &mut Engine, id: &str, merchant: &str, store: &str, changes: &mut Changes) {
    e.on_info(
        &DeviceInfo {
            device_id: DeviceId::new(id).unwrap(),
            boot_id: BootId(1),
            model: "A920".into(),
            serial: id.to_string(),
            firmware_version: "2".into(),
            app_version: "4".into(),
            merchant_id: tillwatch_domain::MerchantId::new(merchant).unwrap(),
            store_id: Some(tillwatch_domain::StoreId::new(store).unwrap()),
            time_zone: "UTC".into(),
            at: UtcMillis(T0),
        },
        UtcMillis(T0),
        changes,
    );
    e.on_connectivity(id, ConnState::Online, UtcMillis(T0), UtcMillis(T0), changes);
}

fn fired(saved: &[AlertRecord]) -> Vec<i64> {
    let mut at: Vec<i64> = saved.iter().filter_map(|a| a.fired_at_ms).collect();
    at.dedup();
    at.iter().map(|t| (t - T0) / MIN).collect()
}

fn resolved(saved: &[AlertRecord]) -> Vec<i64> {
    saved
        .iter()
        .filter_map(|a| a.resolved_at_ms)
        .map(|t| (t - T0) / MIN)
        .collect()
}

#[test]
fn poor_connectivity_fires_on_any_bad_signal_and_clears_only_when_all_are_good() {
    let mut e = engine();
    // Weak signal from minute 5 to 30, then good.
    let saved = run(&mut e, "poor_connectivity", 0..60, |m| {
        connectivity(if (5..30).contains(&m) { -105 } else { -70 }, 200, 0)
    });
    assert_eq!(fired(&saved), [15], "ten minutes under -100 dBm");
    assert_eq!(resolved(&saved), [40], "ten minutes back above -95 dBm");
    // A link dropping 10 times an hour, signal fine.
    let mut e = engine();
    let saved = run(&mut e, "poor_connectivity", 0..60, |m| {
        connectivity(-70, 200, u32::from(m % 6 == 0))
    });
    // The seventh drop (minute 36) is over 6 an hour; ten minutes on.
    assert_eq!(fired(&saved), [46], "disconnects per hour above 6");
}

#[test]
fn crash_spikes_latency_queue_and_tamper() {
    let mut e = engine();
    let saved = run(&mut e, "crash_spike", 0..20, |m| {
        app(10, 400, u32::from(m == 5 || m == 6 || m == 7 || m == 8), 0)
    });
    assert_eq!(fired(&saved), [8], "a fourth crash within 15 minutes");

    let mut e = engine();
    let saved = run(&mut e, "transaction_latency", 0..40, |m| {
        app(20, if m >= 10 { 4000 } else { 500 }, 0, 0)
    });
    // p95 over 15 minutes passes 3 s once slow minutes are over 5 % of
    // the transactions (minute 10), then five minutes of `for`.
    assert_eq!(fired(&saved), [15]);

    let mut e = engine();
    let saved = run(&mut e, "offline_queue", 0..10, |m| {
        payment(3, if m >= 4 { 5 * 3600 } else { 600 }, false)
    });
    assert_eq!(fired(&saved), [4], "payments queued over 4 hours: at once");
    assert!(saved.last().unwrap().annotations["summary"].contains("money at risk"));

    let mut e = engine();
    let saved = run(&mut e, "tamper", 0..3, |m| payment(0, 0, m >= 1));
    assert_eq!(fired(&saved), [1]);
    assert_eq!(saved[0].severity, "critical");
}

#[test]
fn a_battery_that_will_not_last_until_closing_time_warns() {
    let mut config = AlertingConfig::default();
    config.stores.push(tillwatch_config::StoreConfig {
        merchant_id: "m-1".into(),
        store_id: "s-1".into(),
        name: None,
        time_zone: Some("UTC".parse().unwrap()),
        hours: "Mon-Fri 08:00-20:00".parse().unwrap(),
    });
    let mut e = Engine::new(&config, "http://tw", UtcMillis(T0));
    e.set_store(StoreRecord {
        merchant_id: "m-1".into(),
        store_id: "s-1".into(),
        name: None,
        time_zone: Some("UTC".into()),
        hours: Some("Mon-Fri 08:00-20:00".into()),
        updated_at_ms: 0,
    })
    .unwrap();
    let mut changes = Changes::default();
    e.on_info(
        &DeviceInfo {
            device_id: DeviceId::new("t-1").unwrap(),
            boot_id: BootId(1),
            model: "A920".into(),
            serial: "S".into(),
            firmware_version: "2".into(),
            app_version: "4".into(),
            merchant_id: tillwatch_domain::MerchantId::new("m-1").unwrap(),
            store_id: Some(tillwatch_domain::StoreId::new("s-1").unwrap()),
            time_zone: "UTC".into(),
            at: UtcMillis(T0),
        },
        UtcMillis(T0),
        &mut changes,
    );
    // From 09:00, 80 % falling 10 %/h: critical (10 %) at 16:00, before
    // closing at 20:00. A forecast needs ten minutes of history, then
    // five minutes of `for`.
    let saved = run(&mut e, "battery_forecast", 0..30, |m| {
        battery(80 - (m / 6) as u32, false)
    });
    assert_eq!(fired(&saved), [15], "{saved:?}");
    let summary = &saved.last().unwrap().annotations["summary"];
    assert!(
        summary.contains("%/h") && summary.contains("before the store closes"),
        "{summary}"
    );
    // The same drain on a battery that lasts past closing: no warning.
    let mut e = Engine::new(&config, "http://tw", UtcMillis(T0));
    let saved = run(&mut e, "battery_forecast", 0..30, |m| {
        battery(100 - (m / 30) as u32, false)
    });
    assert!(fired(&saved).is_empty());
}

#[test]
fn a_merchant_wide_outage_is_one_merchant_alert_over_its_stores() {
    let mut e = engine();
    let mut changes = Changes::default();
    for i in 0..12 {
        online_at_t0(
            &mut e,
            &format!("d-{i}"),
            "m-1",
            &format!("s-{}", i / 3),
            &mut changes,
        );
    }
    // Stores 0, 1 and 2 lose every terminal within a minute; store 3 is fine.
    for i in 0..9 {
        let at = T0 + MIN + i as i64 * 5_000;
        let id = format!("d-{i}");
        e.on_connectivity(
            &id,
            ConnState::Offline(OfflineReason::LastWill),
            UtcMillis(at),
            UtcMillis(at),
            &mut changes,
        );
    }
    e.sweep(UtcMillis(T0 + 5 * MIN), &mut changes);
    let open: Vec<&AlertRecord> = e.open_alerts().collect();
    let merchant: Vec<_> = open.iter().filter(|a| a.rule == MERCHANT_OFFLINE).collect();
    assert_eq!(merchant.len(), 1);
    assert_eq!(merchant[0].notify, Some(AlertState::Firing));
    assert_eq!(merchant[0].annotations["offline_stores"], "s-0,s-1,s-2");
    let stores: Vec<_> = open.iter().filter(|a| a.rule == STORE_OFFLINE).collect();
    assert_eq!(stores.len(), 3);
    assert!(
        stores
            .iter()
            .all(|a| a.held_by.as_deref() == Some(merchant[0].alert_id.as_str()))
    );
    // The stores waited (alerting.correlation.wait) and the merchant's
    // outage formed within it: one page, the merchant's.
    assert_eq!(stores.iter().filter(|a| a.notify.is_some()).count(), 0);
    let terminals: Vec<_> = open.iter().filter(|a| a.rule == OFFLINE).collect();
    assert_eq!(terminals.len(), 9);
    assert!(
        terminals
            .iter()
            .all(|a| a.notify.is_none() && a.held_by.is_some()),
        "{terminals:?}"
    );
    assert_eq!(
        merchant[0].annotations["merchant_url"],
        "http://tw/ui/merchant?id=m-1"
    );
    let s0 = stores
        .iter()
        .find(|a| a.subject == "store:m-1/s-0")
        .unwrap();
    assert_eq!(
        s0.annotations["store_url"],
        "http://tw/ui/merchant?id=m-1&store=s-0"
    );

    // Every terminal is back at minute 6. The stores clear after their
    // two minutes; the merchant, whose stores are all clear, follows
    // within two more minutes of evaluation ticks, with no further input.
    let back = T0 + 6 * MIN;
    for i in 0..9 {
        e.on_connectivity(
            &format!("d-{i}"),
            ConnState::Online,
            UtcMillis(back),
            UtcMillis(back),
            &mut changes,
        );
    }
    let mut resolved_at = BTreeMap::new();
    for tick in 0..=(8 * 4) {
        let now = back + tick * 15_000;
        let mut changes = Changes::default();
        e.sweep(UtcMillis(now), &mut changes);
        for a in changes.saved.into_values() {
            if let Some(at) = a.resolved_at_ms {
                resolved_at.insert((a.rule.clone(), a.subject.clone()), at);
            }
        }
    }
    let open: Vec<&AlertRecord> = e.open_alerts().collect();
    assert!(open.is_empty(), "still open: {open:?}");
    let merchant_resolved =
        resolved_at[&(MERCHANT_OFFLINE.to_string(), "merchant:m-1".to_string())];
    let last_store = resolved_at
        .iter()
        .filter(|((rule, _), _)| rule == STORE_OFFLINE)
        .map(|(_, at)| *at)
        .max()
        .expect("the stores resolved");
    assert!(last_store <= back + 2 * MIN + 15_000, "{resolved_at:?}");
    assert!(
        (last_store..=last_store + 2 * MIN + 15_000).contains(&merchant_resolved),
        "{resolved_at:?}"
    );
}

/// What the engine holds per terminal is bounded: samples leave memory
/// when they leave every window, even if the terminal goes quiet, and a
/// terminal silent for 30 days that is neither online nor alerting is
/// forgotten (its next message brings it back).
#[test]
fn quiet_terminals_give_their_memory_back() {
    let mut e = engine();
    let mut changes = Changes::default();
    for (seq, id) in ["quiet", "online", "alerting"].into_iter().enumerate() {
        e.on_readings(
            "m-1",
            id,
            &[reading(seq as u64, T0, app(10, 300, 1, 0))],
            UtcMillis(T0),
            &mut changes,
        );
    }
    e.on_connectivity(
        "online",
        ConnState::Online,
        UtcMillis(T0),
        UtcMillis(T0),
        &mut changes,
    );
    e.on_connectivity(
        "alerting",
        ConnState::Offline(OfflineReason::LastWill),
        UtcMillis(T0),
        UtcMillis(T0),
        &mut changes,
    );
    assert_eq!(e.devices["quiet"].crashes.len(), 1);

    e.sweep(UtcMillis(T0 + 2 * HOUR_MS), &mut changes);
    assert!(
        e.devices["quiet"].crashes.is_empty() && e.devices["quiet"].latency.is_empty(),
        "samples out of every window are dropped without a new reading"
    );
    assert!(
        e.open_rules.contains_key("alerting"),
        "the offline alert is open"
    );

    e.sweep(UtcMillis(T0 + 31 * 24 * HOUR_MS), &mut changes);
    let mut left: Vec<&str> = e.devices.keys().map(String::as_str).collect();
    left.sort_unstable();
    assert_eq!(left, ["alerting", "online"]);

    // Its next reading brings it back.
    let back = T0 + 32 * 24 * HOUR_MS;
    e.on_readings(
        "m-1",
        "quiet",
        &[reading(9, back, battery(80, false))],
        UtcMillis(back),
        &mut changes,
    );
    assert_eq!(e.devices["quiet"].latest["battery_level_pct"].0, 80.0);
}

/// A terminal's offline alert waits `alerting.correlation.wait` for a
/// store outage before it pages on its own; the engine says when the wait
/// ends so the alerter wakes for it.
#[test]
fn a_lone_offline_terminal_pages_once_the_correlation_wait_is_over() {
    // Offline fires at once, so the wait is all that holds the page.
    let mut config = AlertingConfig::default();
    config.rules.offline.for_ = std::time::Duration::ZERO;
    let mut e = Engine::new(&config, "http://tw", UtcMillis(T0));
    let mut changes = Changes::default();
    for i in 0..4 {
        online_at_t0(&mut e, &format!("d-{i}"), "m-1", "s-0", &mut changes);
    }
    let off = T0 + MIN;
    e.on_connectivity(
        "d-0",
        ConnState::Offline(OfflineReason::LastWill),
        UtcMillis(off),
        UtcMillis(off),
        &mut changes,
    );
    let wait = config.correlation.wait.as_millis() as i64;
    assert_eq!(e.next_deadline(), Some(UtcMillis(off + wait)));
    let paged = |e: &Engine| {
        e.open_alerts()
            .filter(|a| a.rule == OFFLINE && a.notify == Some(AlertState::Firing))
            .count()
    };
    e.sweep(UtcMillis(off + wait - 1_000), &mut changes);
    assert_eq!(paged(&e), 0, "still waiting for a store outage");
    e.sweep(UtcMillis(off + wait), &mut changes);
    assert_eq!(paged(&e), 1, "no outage formed: it pages on its own");
    assert_eq!(e.next_deadline(), None);
}

/// Every terminal of four merchants (three stores each) drops within ten
/// seconds: one `ingest_outage` page, which holds every merchant, store
/// and terminal alert under it; when they are back, all of it resolves.
#[test]
fn a_fleet_wide_drop_is_one_ingest_outage_page_that_resolves() {
    let mut e = engine();
    let mut changes = Changes::default();
    let ids: Vec<String> = (0..36).map(|i| format!("d-{i}")).collect();
    for (i, id) in ids.iter().enumerate() {
        let (merchant, store) = (format!("m-{}", i / 9), format!("s-{}", i / 3));
        online_at_t0(&mut e, id, &merchant, &store, &mut changes);
    }
    let drop = T0 + MIN;
    for (i, id) in ids.iter().enumerate() {
        let at = drop + (i as i64 % 10) * 1_000;
        e.on_connectivity(
            id,
            ConnState::Offline(OfflineReason::LastWill),
            UtcMillis(at),
            UtcMillis(at),
            &mut changes,
        );
    }
    // The alerter's tick, every 15 s, for five minutes.
    for tick in 1..=20 {
        e.sweep(UtcMillis(drop + tick * 15_000), &mut changes);
    }
    let open: Vec<&AlertRecord> = e.open_alerts().collect();
    let paged: Vec<&str> = open
        .iter()
        .filter(|a| a.notify == Some(AlertState::Firing))
        .map(|a| a.rule.as_str())
        .collect();
    assert_eq!(paged, [INGEST_OUTAGE], "{open:?}");
    let count = |rule: &str| open.iter().filter(|a| a.rule == rule).count();
    assert_eq!(
        (
            count(MERCHANT_OFFLINE),
            count(STORE_OFFLINE),
            count(OFFLINE)
        ),
        (4, 12, 36),
        "every level is there, held"
    );
    let fleet = open.iter().find(|a| a.rule == INGEST_OUTAGE).unwrap();
    assert!(
        fleet.annotations["summary"].starts_with("36 of 36 terminals are offline"),
        "{fleet:?}"
    );
    assert_eq!(fleet.annotations["fleet_url"], "http://tw/ui/");

    // All back at once: everything resolves within the clearing time
    // (two minutes per level, the fleet last).
    let back = drop + 6 * MIN;
    for id in &ids {
        e.on_connectivity(
            id,
            ConnState::Online,
            UtcMillis(back),
            UtcMillis(back),
            &mut changes,
        );
    }
    // The fleet alert resolves first; the merchant and store alerts it
    // held, still clearing then, must not page an outage that is over.
    let mut paged_after = BTreeSet::new();
    for tick in 1..=40 {
        let mut step = Changes::default();
        e.sweep(UtcMillis(back + tick * 15_000), &mut step);
        paged_after.extend(
            step.saved
                .values()
                .filter(|a| a.notify == Some(AlertState::Firing) && a.rule != INGEST_OUTAGE)
                .map(|a| a.rule.clone()),
        );
    }
    let open: Vec<&AlertRecord> = e.open_alerts().collect();
    assert!(open.is_empty(), "still open: {open:?}");
    assert!(
        paged_after.is_empty(),
        "paged after the outage ended: {paged_after:?}"
    );
}

/// The alerter's own broker connection drops: no terminal can be heard.
/// A short blip pages nothing; lasting past the correlation wait it is one
/// `ingest_outage` page that says the broker is lost, which resolves once
/// the connection is back (with the clearing time of the fleet alert).
#[test]
fn losing_the_broker_is_one_ingest_outage_page_and_it_ends() {
    let mut e = engine();
    let mut changes = Changes::default();
    for i in 0..6 {
        online_at_t0(&mut e, &format!("d-{i}"), "m-1", "s-1", &mut changes);
    }
    let fleet_paged = |e: &Engine| {
        e.open_alerts()
            .filter(|a| a.rule == INGEST_OUTAGE && a.notify == Some(AlertState::Firing))
            .count()
    };
    // A ten-second blip.
    let blip = T0 + MIN;
    e.set_hearing(Some(blip), None);
    assert_eq!(e.next_deadline(), Some(UtcMillis(blip + 30_000)));
    e.sweep(UtcMillis(blip + 10_000), &mut changes);
    e.set_hearing(None, Some(blip + 10_000));
    e.sweep(UtcMillis(blip + 15_000), &mut changes);
    assert_eq!(e.open_alerts().count(), 0, "a blip pages nothing");
    assert_eq!(e.next_deadline(), None);

    // Down for five minutes: paged once the wait is over, not before. The
    // broker, going down, published d-0's last will just before.
    let lost = T0 + 10 * MIN;
    e.on_connectivity(
        "d-0",
        ConnState::Offline(OfflineReason::LastWill),
        UtcMillis(lost - 100),
        UtcMillis(lost - 100),
        &mut changes,
    );
    e.set_hearing(Some(lost), Some(blip + 10_000));
    e.sweep(UtcMillis(lost + 29_999), &mut changes);
    assert_eq!(fleet_paged(&e), 0);
    let mut when = None;
    for tick in 1..=20 {
        let at = lost + 15_000 * tick;
        e.sweep(UtcMillis(at), &mut changes);
        if when.is_none() && fleet_paged(&e) == 1 {
            when = Some(at);
        }
        if when.is_some() {
            assert_ne!(
                e.next_deadline(),
                Some(UtcMillis(lost + 30_000)),
                "a paged outage is not due again"
            );
        }
    }
    assert_eq!(when, Some(lost + 30_000));
    let paged: Vec<&AlertRecord> = e
        .open_alerts()
        .filter(|a| a.notify == Some(AlertState::Firing))
        .collect();
    assert_eq!(paged.len(), 1, "only the fleet alert pages: {paged:?}");
    assert!(
        paged[0].annotations["summary"].contains("no connection to the MQTT broker since"),
        "{:?}",
        paged[0]
    );

    // Back: the fleet alert resolves after its clearing time; d-0, which
    // did not come back, pages on its own once that is over (its wait
    // counted from the reconnect).
    let back = lost + 5 * MIN;
    e.set_hearing(None, Some(back));
    for tick in 1..=12 {
        e.sweep(UtcMillis(back + tick * 15_000), &mut changes);
    }
    let fleet = changes
        .saved
        .values()
        .find(|a| a.rule == INGEST_OUTAGE)
        .unwrap();
    assert_eq!(fleet.state, AlertState::Resolved, "{fleet:?}");
    let open: Vec<&AlertRecord> = e.open_alerts().collect();
    assert_eq!(open.len(), 1, "{open:?}");
    assert_eq!(
        (
            open[0].rule.as_str(),
            open[0].subject.as_str(),
            open[0].notify
        ),
        (OFFLINE, "d-0", Some(AlertState::Firing))
    );
}

/// A terminal whose last will the broker published as it went down, and
/// which is back within the correlation wait of the alerter hearing the
/// broker again, never pages, even when the outage was too short for a
/// fleet alert.
#[test]
fn a_will_from_a_broker_going_down_does_not_page_if_the_terminal_returns() {
    // Offline fires at once and waits 10 s for an outage to form: without
    // knowing it was deaf, the alerter would page d-0 10 s into the 20.
    let mut config = AlertingConfig::default();
    config.rules.offline.for_ = std::time::Duration::ZERO;
    config.correlation.wait = std::time::Duration::from_secs(10);
    let mut e = Engine::new(&config, "http://tw", UtcMillis(T0));
    let mut changes = Changes::default();
    online_at_t0(&mut e, "d-0", "m-1", "s-1", &mut changes);
    let lost = T0 + MIN;
    e.on_connectivity(
        "d-0",
        ConnState::Offline(OfflineReason::LastWill),
        UtcMillis(lost - 100),
        UtcMillis(lost - 100),
        &mut changes,
    );
    e.set_hearing(Some(lost), Some(T0));
    // 20 s deaf (under the 30 s the fleet alert waits): nothing pages,
    // though d-0's own wait ended meanwhile.
    for tick in 1..=4 {
        e.sweep(UtcMillis(lost + tick * 5_000), &mut changes);
    }
    let back = lost + 20_000;
    e.set_hearing(None, Some(back));
    e.sweep(UtcMillis(back), &mut changes);
    assert!(
        e.open_alerts().all(|a| a.notify.is_none()),
        "{:?}",
        e.open_alerts().collect::<Vec<_>>()
    );
    assert_eq!(e.next_deadline(), Some(UtcMillis(back + 10_000)));
    // It reconnects 3 s after the alerter did.
    e.on_connectivity(
        "d-0",
        ConnState::Online,
        UtcMillis(back + 3_000),
        UtcMillis(back + 3_000),
        &mut changes,
    );
    for tick in 1..=20 {
        e.sweep(UtcMillis(back + tick * 15_000), &mut changes);
    }
    assert!(
        changes
            .saved
            .values()
            .all(|a| a.notify != Some(AlertState::Firing)),
        "paged: {:?}",
        changes.saved
    );
}
