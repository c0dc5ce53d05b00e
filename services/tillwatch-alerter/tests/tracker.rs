//! The tracker on an injected clock, on SQLite and on PostgreSQL: an
//! unclean disconnect is offline at once, a silent terminal goes offline
//! when its own cadence allows, and a restarted tracker resumes every
//! device, silence deadlines included.

mod common;

use common::{battery, dev};
use tillwatch_alerter::{Event, Tracker};
use tillwatch_domain::connectivity::{ConnState, OfflineReason, SilencePolicy};
use tillwatch_domain::{BootId, DeviceStatus, StatusReason, UtcMillis};
use tillwatch_meta::MetaStore;
use tillwatch_meta::testing::TestDatabase;

/// A healthy reading.
fn telemetry(device: &str, seq: u64, at: i64) -> Event {
    battery(device, seq, at, 60, false)
}

fn status(device: &str, online: bool, reason: StatusReason, at: i64) -> Event {
    Event::Status {
        status: DeviceStatus {
            device_id: dev(device),
            boot_id: BootId(1),
            online,
            reason,
            at: UtcMillis(0),
        },
        received_at: UtcMillis(at),
    }
}

async fn behaviour(url: &str) {
    let store = MetaStore::connect(url).await.unwrap();
    store.migrate().await.unwrap();
    let policy = SilencePolicy::default();
    let mut tracker = Tracker::open(store.clone(), policy).await.unwrap();

    // Two terminals report every 20 s.
    for (device, offset) in [("t-will", 0), ("t-quiet", 500)] {
        tracker
            .handle(status(device, true, StatusReason::Birth, offset))
            .await
            .unwrap();
        for i in 0..10 {
            tracker
                .handle(telemetry(device, i, offset + i as i64 * 20_000))
                .await
                .unwrap();
        }
    }
    let last = 9 * 20_000;

    // t-will loses its connection: the broker's will is offline at once.
    let changes = tracker
        .handle(status(
            "t-will",
            false,
            StatusReason::ConnectionLost,
            last + 3_000,
        ))
        .await
        .unwrap();
    assert_eq!(changes.len(), 1);
    assert_eq!(changes[0].1.to, ConnState::Offline(OfflineReason::LastWill));
    assert_eq!(changes[0].1.at, UtcMillis(last + 3_000));

    // t-quiet just stops sending: offline by silence, 3 × 20 s after its
    // last reading, not before.
    let deadline = last + 500 + 60_000;
    assert_eq!(tracker.next_deadline(), Some(UtcMillis(deadline)));
    assert!(
        tracker
            .tick(UtcMillis(deadline - 1))
            .await
            .unwrap()
            .is_empty()
    );

    // The alerter restarts before the deadline; the new one knows both.
    drop(tracker);
    let mut tracker = Tracker::open(store.clone(), policy).await.unwrap();
    assert_eq!(
        tracker.state(&dev("t-will")).unwrap().state(),
        Some(ConnState::Offline(OfflineReason::LastWill))
    );
    assert_eq!(tracker.next_deadline(), Some(UtcMillis(deadline)));
    let changes = tracker.tick(UtcMillis(deadline + 5_000)).await.unwrap();
    assert_eq!(changes.len(), 1);
    assert_eq!(changes[0].0, dev("t-quiet"));
    assert_eq!(changes[0].1.to, ConnState::Offline(OfflineReason::Silence));
    assert_eq!(
        changes[0].1.at,
        UtcMillis(deadline),
        "dated at the deadline"
    );
    assert_eq!(tracker.next_deadline(), None, "nobody left online");

    // It comes back: online again, in the history.
    let changes = tracker
        .handle(telemetry("t-quiet", 10, deadline + 30_000))
        .await
        .unwrap();
    assert_eq!(changes[0].1.to, ConnState::Online);
    let history = store.connectivity_history("t-quiet", 10).await.unwrap();
    let states: Vec<_> = history.iter().map(|h| h.to).collect();
    assert_eq!(
        states,
        [
            ConnState::Online,
            ConnState::Offline(OfflineReason::Silence),
            ConnState::Online
        ]
    );
    // And the registry saw its readings.
    let device = store.device("t-quiet").await.unwrap().unwrap();
    assert_eq!(device.last_seen_ms, Some(deadline + 30_000));

    // Messages taken as one batch (one transaction): every change of every
    // device is kept, in order, and the newest state wins.
    let t = deadline + 60_000;
    let changes = tracker
        .handle_batch(&[
            telemetry("t-will", 20, t),
            telemetry("t-new", 0, t),
            status("t-will", false, StatusReason::ConnectionLost, t + 1),
            telemetry("t-will", 21, t + 2),
        ])
        .await
        .unwrap();
    let seen: Vec<_> = changes.iter().map(|(d, c)| (d.as_str(), c.to)).collect();
    assert_eq!(
        seen,
        [
            ("t-will", ConnState::Online),
            ("t-new", ConnState::Online),
            ("t-will", ConnState::Offline(OfflineReason::LastWill)),
            ("t-will", ConnState::Online),
        ]
    );
    let history = store.connectivity_history("t-will", 2).await.unwrap();
    assert_eq!(
        history.iter().map(|h| (h.to, h.at_ms)).collect::<Vec<_>>(),
        [
            (ConnState::Online, t + 2),
            (ConnState::Offline(OfflineReason::LastWill), t + 1)
        ]
    );
    drop(tracker);
    let tracker = Tracker::open(store.clone(), policy).await.unwrap();
    assert_eq!(
        tracker.state(&dev("t-will")).unwrap().state(),
        Some(ConnState::Online)
    );
    assert_eq!(
        store.device("t-will").await.unwrap().unwrap().last_seen_ms,
        Some(t + 2)
    );
    assert!(store.device("t-new").await.unwrap().is_some());
}

#[tokio::test]
async fn the_tracker_on_sqlite() {
    let db = TestDatabase::sqlite();
    behaviour(&db.url).await;
}

#[tokio::test]
async fn the_tracker_on_postgresql() {
    let db = TestDatabase::postgres().await;
    behaviour(&db.url).await;
    db.drop_it().await;
}

/// The alerter's own broker connection is down for ten minutes: nobody
/// goes offline by silence meanwhile (nothing could be heard), and once it
/// is back each terminal gets its allowed silence from then. One that
/// speaks stays online; one that does not goes offline a full allowed
/// silence after the reconnect.
#[tokio::test]
async fn silence_while_the_alerter_cannot_hear_is_not_the_terminals() {
    let db = TestDatabase::sqlite();
    let store = MetaStore::connect(&db.url).await.unwrap();
    store.migrate().await.unwrap();
    let mut tracker = Tracker::open(store, SilencePolicy::default())
        .await
        .unwrap();
    for device in ["t-back", "t-gone"] {
        for i in 0..10 {
            tracker
                .handle(telemetry(device, i, i as i64 * 20_000))
                .await
                .unwrap();
        }
    }
    let last = 9 * 20_000;
    assert!(tracker.set_listening(false, UtcMillis(last + 1_000)));
    assert!(!tracker.set_listening(false, UtcMillis(last + 2_000)));
    assert_eq!(tracker.next_deadline(), None, "no deadline while deaf");
    let lost = tracker.tick(UtcMillis(last + 600_000)).await.unwrap();
    assert!(lost.is_empty(), "{lost:?}");

    let back = last + 600_000;
    assert!(tracker.set_listening(true, UtcMillis(back)));
    assert_eq!(tracker.next_deadline(), Some(UtcMillis(back + 60_000)));
    tracker
        .handle(telemetry("t-back", 11, back + 5_000))
        .await
        .unwrap();
    assert!(
        tracker
            .tick(UtcMillis(back + 59_999))
            .await
            .unwrap()
            .is_empty()
    );
    let changes = tracker.tick(UtcMillis(back + 60_000)).await.unwrap();
    let seen: Vec<_> = changes
        .iter()
        .map(|(d, c)| (d.as_str(), c.to, c.at))
        .collect();
    assert_eq!(
        seen,
        [(
            "t-gone",
            ConnState::Offline(OfflineReason::Silence),
            UtcMillis(back + 60_000)
        )]
    );
    assert_eq!(
        tracker.state(&dev("t-back")).unwrap().state(),
        Some(ConnState::Online)
    );
}
