//! How many telemetry messages a second the alerter takes on a metadata
//! store: `cargo run --release -p tillwatch-alerter --example
//! alerter_throughput -- [sqlite|postgres] [devices] [messages] [batch]`:
//! the run loop writes whatever messages are ready as one batch (at most
//! 1000); `batch` 1 is one message at a time.

use std::time::Instant;

use tillwatch_alerter::{Alerter, Event};
use tillwatch_config::AlertingConfig;
use tillwatch_domain::connectivity::SilencePolicy;
use tillwatch_domain::{Battery, BootId, DeviceId, MerchantId, Reading, Signal, UtcMillis};
use tillwatch_meta::MetaStore;
use tillwatch_meta::testing::TestDatabase;

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let backend = args.get(1).map(String::as_str).unwrap_or("sqlite");
    let devices: u64 = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(1000);
    let messages: u64 = args.get(3).and_then(|a| a.parse().ok()).unwrap_or(20_000);
    let batch_size: usize = args.get(4).and_then(|a| a.parse().ok()).unwrap_or(500);
    let db = match backend {
        "postgres" => TestDatabase::postgres().await,
        _ => TestDatabase::sqlite(),
    };
    let store = MetaStore::connect(&db.url).await.unwrap();
    store.migrate().await.unwrap();
    let t0 = UtcMillis::now().0;
    let mut alerter = Alerter::open(
        store,
        SilencePolicy::default(),
        &AlertingConfig::default(),
        "http://tw",
        UtcMillis(t0),
    )
    .await
    .unwrap();
    let merchant = MerchantId::new("m-1").unwrap();
    let started = Instant::now();
    let mut batch = Vec::new();
    for i in 0..messages {
        let device = DeviceId::new(&format!("t-{}", i % devices)).unwrap();
        let at = t0 + (i / devices) as i64 * 60_000;
        let event = Event::Telemetry {
            merchant_id: merchant.clone(),
            device_id: device.clone(),
            readings: vec![Reading {
                device_id: device,
                boot_id: BootId(1),
                seq: i / devices,
                sampled_at: UtcMillis(at),
                signal: Signal::Battery(Battery::healthy(80, false)),
            }],
            received_at: UtcMillis(at),
        };
        batch.push(event);
        if batch.len() >= batch_size || i + 1 == messages {
            alerter.handle_batch(&batch, UtcMillis(at)).await.unwrap();
            batch.clear();
        }
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{backend}, batches of {batch_size}: {messages} telemetry messages from {devices} terminals in {secs:.2} s: {:.0} messages/s",
        messages as f64 / secs
    );
    db.drop_it().await;
}
