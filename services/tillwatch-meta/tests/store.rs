//! The metadata store's behaviour, the same on SQLite and on PostgreSQL
//! (the real server: `TILLWATCH_TEST_POSTGRES_URL`, by default the local
//! one with trust auth; each test gets a database of its own).

use tillwatch_domain::{
    Battery, BootId, DeviceId, DeviceInfo, MerchantId, Reading, Signal, StoreId, UtcMillis,
};
use tillwatch_meta::testing::TestDatabase;
use tillwatch_meta::{MetaError, MetaStore};

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
        signal: Signal::Battery(Battery {
            level_pct: level,
            charging: false,
            temperature_celsius: 30.0,
            voltage_mv: 4000,
            health_pct: 90,
            cycle_count: 10,
        }),
    }
}

async fn registry_behaviour(store: &MetaStore) {
    let first = store.migrate().await.unwrap();
    assert_eq!(first.applied, ["001_device_registry", "002_connectivity"]);
    let again = store.migrate().await.unwrap();
    assert!(again.applied.is_empty(), "{again:?}");
    assert_eq!(again.already_applied, 2);

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

#[tokio::test]
async fn the_registry_on_sqlite() {
    let db = TestDatabase::sqlite();
    let store = MetaStore::connect(&db.url).await.unwrap();
    registry_behaviour(&store).await;
    // The file keeps it: a new connection sees the same.
    drop(store);
    let store = MetaStore::connect(&db.url).await.unwrap();
    assert_eq!(store.migrate().await.unwrap().already_applied, 2);
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
