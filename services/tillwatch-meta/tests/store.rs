//! The metadata store's behaviour, the same on SQLite and on PostgreSQL
//! (the real server: `TILLWATCH_TEST_POSTGRES_URL`, by default the local
//! one with trust auth; each test gets a database of its own).

use tillwatch_domain::{
    Battery, BootId, DeviceId, DeviceInfo, MerchantId, Reading, Signal, StoreId, UtcMillis,
};
use tillwatch_meta::testing::TestDatabase;
use tillwatch_meta::{AlertFilter, AlertRecord, AlertState, MIGRATIONS, MetaError, MetaStore};

fn info(device: &str, store: &str, at: i64, firmware: &str) -> DeviceInfo {
    DeviceInfo {
        device_id: DeviceId::new(device).unwrap(),
        boot_id: BootId(1),
        model: "A920".into(),
        serial: format!("SN-{device}"),
        firmware_version: firmware.into(),
        app_version: "4.12.1".into(),
        merchant_id: MerchantId::new("m-1").unwrap(),
        store_id: Some(StoreId::new(store).unwrap()),
        time_zone: "Europe/Berlin".into(),
        at: UtcMillis(at),
    }
}

fn battery(device: &str, seq: u64, at: i64, level: u32) -> Reading {
    Reading {
        device_id: DeviceId::new(device).unwrap(),
        boot_id: BootId(1),
        seq,
        sampled_at: UtcMillis(at),
        signal: Signal::Battery(Battery::healthy(level, false)),
    }
}

async fn registry_behaviour(store: &MetaStore) {
    let first = store.migrate().await.unwrap();
    assert_eq!(
        first.applied,
        [
            "001_device_registry",
            "002_connectivity",
            "003_alerts",
            "004_jobs",
            "005_job_requests",
            "006_merchants",
            "007_rollup_findings",
            "008_connectivity_history_by_time",
            "009_alerts_by_subject",
            "010_alerts_by_update",
            "011_leases",
            "012_device_attributes",
            "013_job_run_code",
            "014_job_pauses_and_run_notes",
            "015_job_run_messages"
        ]
    );
    let again = store.migrate().await.unwrap();
    assert!(again.applied.is_empty(), "{again:?}");
    assert_eq!(again.already_applied, MIGRATIONS.len());

    let m1 = MerchantId::new("m-1").unwrap();
    // Telemetry first: the device enters the registry on first sight.
    store
        .record_readings(
            &m1,
            &[battery("t-1", 0, 10_000, 80), battery("t-1", 1, 20_000, 79)],
        )
        .await
        .unwrap();
    let d = store.device("t-1").await.unwrap().expect("registered");
    assert_eq!((d.first_seen_ms, d.last_seen_ms), (10_000, Some(20_000)));
    assert_eq!(d.model, None);

    // Its info message fills in the rest; an older retained copy does not
    // overwrite a newer one, and info never counts as activity.
    store
        .record_info(&info("t-1", "s-1", 30_000, "2.9.0"))
        .await
        .unwrap();
    store
        .record_info(&info("t-1", "s-9", 25_000, "2.8.0"))
        .await
        .unwrap();
    let d = store.device("t-1").await.unwrap().unwrap();
    assert_eq!(d.store_id.as_deref(), Some("s-1"));
    assert_eq!(d.firmware_version.as_deref(), Some("2.9.0"));
    assert_eq!(d.time_zone.as_deref(), Some("Europe/Berlin"));
    assert_eq!(d.info_at_ms, Some(30_000));
    assert_eq!(d.last_seen_ms, Some(20_000), "info is not activity");
    assert_eq!(d.first_seen_ms, 10_000);
    // Both versions are history, in the order of their own times; the
    // same info again (a retained copy after a reconnect) adds nothing,
    // and an older one saying the same as the next version moves its
    // start back instead of adding another.
    let history = |store: &MetaStore| {
        let store = store.clone();
        async move {
            store
                .attribute_history("t-1")
                .await
                .unwrap()
                .into_iter()
                .map(|v| (v.valid_from_ms, v.store_id.unwrap_or_default()))
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(
        history(store).await,
        [(25_000, "s-9".to_string()), (30_000, "s-1".to_string())]
    );
    store
        .record_info(&info("t-1", "s-1", 35_000, "2.9.0"))
        .await
        .unwrap();
    store
        .record_info(&info("t-1", "s-9", 20_000, "2.8.0"))
        .await
        .unwrap();
    assert_eq!(
        history(store).await,
        [(20_000, "s-9".to_string()), (30_000, "s-1".to_string())]
    );
    let inputs = store.attribution_inputs().await.unwrap();
    assert_eq!(inputs.spans, [("t-1".to_string(), 10_000, 20_000)]);
    assert_eq!(inputs.versions.len(), 2);
    assert_eq!(
        inputs.versions[1].firmware_version.as_deref(),
        Some("2.9.0")
    );

    // A late reading (replayed after an outage) neither moves last_seen
    // back nor overwrites the newer battery level.
    store
        .record_readings(&m1, &[battery("t-1", 2, 5_000, 12)])
        .await
        .unwrap();
    let d = store.device("t-1").await.unwrap().unwrap();
    assert_eq!((d.first_seen_ms, d.last_seen_ms), (5_000, Some(20_000)));
    let signals = store.latest_signals("t-1").await.unwrap();
    let level = signals
        .iter()
        .find(|s| s.signal == "battery_level_pct")
        .expect("battery level kept");
    assert_eq!((level.value, level.sampled_at_ms), (79.0, 20_000));

    // A device known only by its info message has no last_seen.
    store
        .record_info(&info("t-2", "s-2", 40_000, "2.9.0"))
        .await
        .unwrap();
    assert_eq!(
        store.device("t-2").await.unwrap().unwrap().last_seen_ms,
        None
    );
    assert_eq!(store.device("nope").await.unwrap(), None);

    // Paging by merchant and store, in id order.
    for i in 3..8 {
        store
            .record_info(&info(&format!("t-{i}"), "s-1", 40_000, "2.9.0"))
            .await
            .unwrap();
    }
    let page1 = store
        .devices(Some("m-1"), Some("s-1"), None, 3)
        .await
        .unwrap();
    let ids: Vec<_> = page1.iter().map(|d| d.device_id.as_str()).collect();
    assert_eq!(ids, ["t-1", "t-3", "t-4"]);
    let page2 = store
        .devices(Some("m-1"), Some("s-1"), Some("t-4"), 3)
        .await
        .unwrap();
    let ids: Vec<_> = page2.iter().map(|d| d.device_id.as_str()).collect();
    assert_eq!(ids, ["t-5", "t-6", "t-7"]);
    assert_eq!(store.devices(None, None, None, 100).await.unwrap().len(), 7);
    assert!(
        store
            .devices(Some("m-2"), None, None, 100)
            .await
            .unwrap()
            .is_empty()
    );
}

/// Two services opening one new SQLite file at once (standalone's alerter
/// and scheduler) both migrate it: the second waits for the first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_stores_migrate_one_sqlite_file_at_once() {
    for _ in 0..5 {
        let db = TestDatabase::sqlite();
        let (a, b) = tokio::join!(
            async { MetaStore::connect(&db.url).await?.migrate().await },
            async { MetaStore::connect(&db.url).await?.migrate().await }
        );
        let (a, b) = (a.unwrap(), b.unwrap());
        assert_eq!(a.applied.len() + a.already_applied, MIGRATIONS.len());
        assert_eq!(b.applied.len() + b.already_applied, MIGRATIONS.len());
    }
}

/// Three roles (alerter, scheduler, api) starting on one new PostgreSQL
/// database at once all migrate it: the others wait for the first.
#[tokio::test(flavor = "multi_thread", worker_threads = 3)]
async fn three_stores_migrate_one_new_postgresql_database_at_once() {
    for _ in 0..3 {
        let db = TestDatabase::postgres().await;
        let migrate = || async { MetaStore::connect(&db.url).await?.migrate().await };
        let (a, b, c) = tokio::join!(migrate(), migrate(), migrate());
        for report in [a, b, c] {
            let report = report.unwrap();
            assert_eq!(
                report.applied.len() + report.already_applied,
                MIGRATIONS.len()
            );
        }
        db.drop_it().await;
    }
}

#[tokio::test]
async fn the_registry_on_sqlite() {
    let db = TestDatabase::sqlite();
    let store = MetaStore::connect(&db.url).await.unwrap();
    registry_behaviour(&store).await;
    // The file keeps it: a new connection sees the same.
    drop(store);
    let store = MetaStore::connect(&db.url).await.unwrap();
    assert_eq!(
        store.migrate().await.unwrap().already_applied,
        MIGRATIONS.len()
    );
    assert!(store.device("t-1").await.unwrap().is_some());
}

#[tokio::test]
async fn the_registry_on_postgresql() {
    let db = TestDatabase::postgres().await;
    let store = MetaStore::connect(&db.url).await.unwrap();
    registry_behaviour(&store).await;
    drop(store);
    db.drop_it().await;
}

#[tokio::test]
async fn a_wrong_url_names_what_is_expected() {
    let err = MetaStore::connect("mysql://x/y").await.unwrap_err();
    assert!(matches!(err, MetaError::BadUrl(_)));
    assert!(err.to_string().contains("sqlite://PATH"), "{err}");
}

/// A subject's alert resolving and its next one opening in one batch, the
/// new one first: saved (resolves are written first) rather than refused
/// by the one-open-alert rule, and refused again on every retry (which
/// wedged the alerter's whole message loop).
#[tokio::test]
async fn a_resolve_and_the_next_alert_of_a_subject_save_in_one_batch() {
    let db = TestDatabase::sqlite();
    let store = MetaStore::connect(&db.url).await.unwrap();
    store.migrate().await.unwrap();
    // A subject's alert resolving and its next one opening in one batch,
    // the new one first: saved (resolves are written first), not refused
    // again on every retry.
    let t3 = alert("b-1", "t-3", AlertState::Pending, None);
    store.save_alerts(std::slice::from_ref(&t3)).await.unwrap();
    let mut t3_resolved = t3.clone();
    t3_resolved.state = AlertState::Resolved;
    t3_resolved.resolved_at_ms = Some(3_000);
    let t3_next = alert("b-2", "t-3", AlertState::Pending, None);
    store
        .save_alerts(&[t3_next.clone(), t3_resolved])
        .await
        .unwrap();
    let open = store.alerts(AlertFilter::Open, 10).await.unwrap();
    assert!(open.contains(&t3_next), "{open:?}");
    assert!(!open.iter().any(|a| a.alert_id == "b-1"), "{open:?}");
}

fn alert(id: &str, subject: &str, state: AlertState, notify: Option<AlertState>) -> AlertRecord {
    AlertRecord {
        alert_id: id.into(),
        state,
        fired_at_ms: (state != AlertState::Pending).then_some(2_000),
        resolved_at_ms: (state == AlertState::Resolved).then_some(3_000),
        notify,
        labels: [("device_id".to_string(), subject.to_string())].into(),
        annotations: [("summary".to_string(), "low".to_string())].into(),
        ..AlertRecord::pending("battery_low", subject, "device", "warning", 1_000, 2_000)
    }
}

async fn alerts_behaviour(store: &MetaStore) {
    store.migrate().await.unwrap();
    let firing = alert("a-1", "t-1", AlertState::Firing, Some(AlertState::Firing));
    let pending = alert("a-2", "t-2", AlertState::Pending, None);
    store.save_alerts(&[firing.clone(), pending]).await.unwrap();
    // One open alert per (rule, subject): a second is refused.
    let twin = alert("a-3", "t-1", AlertState::Pending, None);
    assert!(store.save_alerts(&[twin]).await.is_err());
    let open = store.alerts(AlertFilter::Open, 10).await.unwrap();
    assert_eq!(open.len(), 2);
    assert!(open.contains(&firing), "read back whole: {open:?}");

    // Due to a receiver: the firing one only; once delivered, not again
    // until the repeat interval has passed.
    let due = store.due_deliveries("am", 5_000, 0, 0, 100).await.unwrap();
    assert_eq!(due.len(), 1);
    assert_eq!(
        (due[0].alert.alert_id.as_str(), due[0].delivered),
        ("a-1", None)
    );
    assert!(
        store
            .due_deliveries("am", 5_000, 0, 2, 100)
            .await
            .unwrap()
            .is_empty(),
        "below critical"
    );
    store
        .record_delivered("am", &[("a-1".into(), AlertState::Firing)], 5_000)
        .await
        .unwrap();
    assert!(
        store
            .due_deliveries("am", 6_000, 4_000, 0, 100)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        store
            .due_deliveries("am", 66_000, 6_000, 0, 100)
            .await
            .unwrap()
            .len(),
        1,
        "repeat"
    );
    // Another receiver that failed waits out its backoff.
    store
        .record_delivery_failed("hook", &["a-1".into()], 10_000, "connection refused")
        .await
        .unwrap();
    assert!(
        store
            .due_deliveries("hook", 9_000, 0, 0, 100)
            .await
            .unwrap()
            .is_empty()
    );
    let retry = store
        .due_deliveries("hook", 10_000, 0, 0, 100)
        .await
        .unwrap();
    assert_eq!(retry[0].attempts, 1);

    // Resolved: the receiver that held it as firing gets the resolve; one
    // that never got the page gets nothing.
    let mut resolved = firing.clone();
    resolved.state = AlertState::Resolved;
    resolved.resolved_at_ms = Some(7_000);
    resolved.notify = Some(AlertState::Resolved);
    resolved.updated_at_ms = 7_000;
    store.save_alerts(&[resolved]).await.unwrap();
    let due = store.due_deliveries("am", 8_000, 0, 0, 100).await.unwrap();
    assert_eq!((due.len(), due[0].delivered), (1, Some(AlertState::Firing)));
    assert!(
        store
            .due_deliveries("hook", 20_000, 0, 0, 100)
            .await
            .unwrap()
            .is_empty()
    );
    store
        .record_delivered("am", &[("a-1".into(), AlertState::Resolved)], 8_000)
        .await
        .unwrap();
    assert!(
        store
            .due_deliveries("am", 9_000, 9_000, 0, 100)
            .await
            .unwrap()
            .is_empty()
    );
    // With it resolved, a new alert of the same pair may open.
    store
        .save_alerts(&[alert("a-4", "t-1", AlertState::Pending, None)])
        .await
        .unwrap();
    assert_eq!(
        store
            .alerts(AlertFilter::State(AlertState::Resolved), 10)
            .await
            .unwrap()
            .len(),
        1
    );
}

#[tokio::test]
async fn alerts_and_deliveries_on_sqlite() {
    let db = TestDatabase::sqlite();
    alerts_behaviour(&MetaStore::connect(&db.url).await.unwrap()).await;
}

#[tokio::test]
async fn alerts_and_deliveries_on_postgresql() {
    let db = TestDatabase::postgres().await;
    let store = MetaStore::connect(&db.url).await.unwrap();
    alerts_behaviour(&store).await;
    drop(store);
    db.drop_it().await;
}

/// What the rollups read from the store: minutes online from the state
/// history, with the readings expected at the terminal's cadence, and each
/// terminal's zone (its store's, else its own).
async fn rollup_inputs_behaviour(store: &MetaStore) {
    use tillwatch_domain::connectivity::{
        ConnState, ConnectivitySnapshot, OfflineReason, Transition,
    };
    store.migrate().await.unwrap();
    const H: i64 = 1_795_132_800_000;
    const M: i64 = 60_000;
    let snapshot = |state: ConnState, at: i64, gap: Option<f64>| ConnectivitySnapshot {
        state: Some(state),
        since: UtcMillis(at),
        boot: Some(BootId(1)),
        last_telemetry: Some(UtcMillis(at)),
        gap_ms: gap,
    };
    let change = |from: Option<ConnState>, to: ConnState, at: i64| Transition {
        from,
        to,
        at: UtcMillis(at),
    };
    let silence = ConnState::Offline(OfflineReason::Silence);
    // t-1: online since the hour before, silent from :40; reports every 30 s.
    store
        .save_connectivity(
            "t-1",
            &snapshot(ConnState::Online, H - 30 * M, Some(30_000.0)),
            Some(&change(None, ConnState::Online, H - 30 * M)),
        )
        .await
        .unwrap();
    store
        .save_connectivity(
            "t-1",
            &snapshot(silence, H + 40 * M, Some(30_000.0)),
            Some(&change(Some(ConnState::Online), silence, H + 40 * M)),
        )
        .await
        .unwrap();
    // t-2: first seen at :15, cadence not learned yet.
    store
        .save_connectivity(
            "t-2",
            &snapshot(ConnState::Online, H + 15 * M, None),
            Some(&change(None, ConnState::Online, H + 15 * M)),
        )
        .await
        .unwrap();
    let mut got = store.online_time(H, H + 60 * M).await.unwrap();
    got.sort_by(|a, b| a.device_id.cmp(&b.device_id));
    let got: Vec<(String, f64, Option<f64>)> = got
        .into_iter()
        .map(|o| (o.device_id, o.minutes_online, o.readings_expected))
        .collect();
    assert_eq!(
        got,
        [
            ("t-1".to_string(), 40.0, Some(80.0)),
            ("t-2".to_string(), 45.0, None)
        ]
    );
    // The next hour: t-1 silent throughout, t-2 online throughout.
    let next = store.online_time(H + 60 * M, H + 120 * M).await.unwrap();
    assert!(
        next.iter()
            .any(|o| o.device_id == "t-1" && o.minutes_online == 0.0)
    );
    assert!(
        next.iter()
            .any(|o| o.device_id == "t-2" && o.minutes_online == 60.0)
    );

    // Zones: t-1's store is in the directory with its own zone; t-2's is
    // not, so the zone its terminal reports counts.
    store
        .record_info(&info("t-1", "s-1", H, "1.0"))
        .await
        .unwrap();
    store
        .record_info(&info("t-2", "s-2", H, "1.0"))
        .await
        .unwrap();
    store
        .upsert_store(&tillwatch_meta::StoreRecord {
            merchant_id: "m-1".into(),
            store_id: "s-1".into(),
            name: None,
            time_zone: Some("America/New_York".into()),
            hours: None,
            updated_at_ms: H,
        })
        .await
        .unwrap();
    let facts: Vec<(String, Option<String>, Option<String>)> = store
        .device_facts()
        .await
        .unwrap()
        .into_iter()
        .map(|f| (f.device_id, f.time_zone, f.model))
        .collect();
    let some = |s: &str| Some(s.to_string());
    assert_eq!(
        facts,
        [
            ("t-1".into(), some("America/New_York"), some("A920")),
            ("t-2".into(), some("Europe/Berlin"), some("A920"))
        ]
    );
}

#[tokio::test]
async fn rollup_inputs_on_sqlite() {
    let db = TestDatabase::sqlite();
    rollup_inputs_behaviour(&MetaStore::connect(&db.url).await.unwrap()).await;
}

#[tokio::test]
async fn rollup_inputs_on_postgresql() {
    let db = TestDatabase::postgres().await;
    let store = MetaStore::connect(&db.url).await.unwrap();
    rollup_inputs_behaviour(&store).await;
    drop(store);
    db.drop_it().await;
}

/// Pruning deletes what is past its cutoff and keeps what the product
/// still reads: each terminal's newest state change, open alerts, silences
/// not ended long ago.
async fn pruning_behaviour(store: &MetaStore) {
    use tillwatch_domain::connectivity::{
        ConnState, ConnectivitySnapshot, OfflineReason, Transition,
    };
    use tillwatch_meta::{FindingRecord, PruneBefore, SilenceRecord};
    store.migrate().await.unwrap();
    const DAY: i64 = 86_400_000;
    let save = |device: &'static str, to: ConnState, at: i64| async move {
        let snap = ConnectivitySnapshot {
            state: Some(to),
            since: UtcMillis(at),
            boot: Some(BootId(1)),
            last_telemetry: Some(UtcMillis(at)),
            gap_ms: None,
        };
        let change = Transition {
            from: None,
            to,
            at: UtcMillis(at),
        };
        store
            .save_connectivity(device, &snap, Some(&change))
            .await
            .unwrap();
    };
    let offline = ConnState::Offline(OfflineReason::Silence);
    // t-1 changed on days 1, 2 and 20; t-2 only on day 1.
    save("t-1", ConnState::Online, DAY).await;
    save("t-1", offline, 2 * DAY).await;
    save("t-1", ConnState::Online, 20 * DAY).await;
    save("t-2", ConnState::Online, DAY).await;

    let mut old = alert(
        "a-old",
        "t-1",
        AlertState::Resolved,
        Some(AlertState::Resolved),
    );
    old.resolved_at_ms = Some(3 * DAY);
    let mut recent = alert("a-new", "t-2", AlertState::Resolved, None);
    recent.resolved_at_ms = Some(15 * DAY);
    let open = alert(
        "a-open",
        "t-3",
        AlertState::Firing,
        Some(AlertState::Firing),
    );
    store.save_alerts(&[old, recent, open]).await.unwrap();
    store
        .record_delivered("am", &[("a-old".into(), AlertState::Resolved)], 3 * DAY)
        .await
        .unwrap();
    for (id, ends) in [("s-ended", 4 * DAY), ("s-active", 30 * DAY)] {
        store
            .create_silence(&SilenceRecord {
                silence_id: id.into(),
                matchers: vec!["store_id=s-1".into()],
                starts_at_ms: DAY,
                ends_at_ms: ends,
                created_by: "ops".into(),
                comment: "maintenance".into(),
                created_at_ms: DAY,
            })
            .await
            .unwrap();
    }
    let finding = |day_ms| FindingRecord {
        rule: "battery_drain".into(),
        subject: "t-1".into(),
        scope: "device".into(),
        labels: Default::default(),
        summary: "drains".into(),
        value: 1.0,
        day_ms,
    };
    store
        .save_findings("battery_drain", 5 * DAY, 5 * DAY, &[finding(5 * DAY)])
        .await
        .unwrap();

    let cutoff = 10 * DAY;
    let before = PruneBefore {
        connectivity_history_ms: cutoff,
        job_runs_ms: cutoff,
        resolved_alerts_ms: cutoff,
        findings_ms: cutoff,
        silences_ms: cutoff,
    };
    let pruned = store.prune(&before).await.unwrap();
    assert_eq!(
        (
            pruned.connectivity_history,
            pruned.resolved_alerts,
            pruned.alert_deliveries,
            pruned.silences,
            pruned.findings
        ),
        (2, 1, 1, 1, 1),
        "{pruned:?}"
    );
    let at = |h: Vec<tillwatch_meta::HistoryEntry>| h.iter().map(|e| e.at_ms).collect::<Vec<_>>();
    assert_eq!(
        at(store.connectivity_history("t-1", 10).await.unwrap()),
        [20 * DAY]
    );
    assert_eq!(
        at(store.connectivity_history("t-2", 10).await.unwrap()),
        [DAY],
        "a terminal's newest change stays, however old"
    );
    let left: Vec<String> = store
        .alerts(AlertFilter::All, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|a| a.alert_id)
        .collect();
    assert_eq!(left.len(), 2);
    assert!(left.contains(&"a-new".to_string()) && left.contains(&"a-open".to_string()));
    let silences: Vec<String> = store
        .silences(0)
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.silence_id)
        .collect();
    assert_eq!(silences, ["s-active"]);
    assert!(store.findings("battery_drain").await.unwrap().is_empty());
    // Again: nothing more goes.
    let again = store.prune(&before).await.unwrap();
    assert_eq!(again, tillwatch_meta::Pruned::default());
}

#[tokio::test]
async fn pruning_on_sqlite() {
    let db = TestDatabase::sqlite();
    pruning_behaviour(&MetaStore::connect(&db.url).await.unwrap()).await;
}

#[tokio::test]
async fn pruning_on_postgresql() {
    let db = TestDatabase::postgres().await;
    let store = MetaStore::connect(&db.url).await.unwrap();
    pruning_behaviour(&store).await;
    drop(store);
    db.drop_it().await;
}
