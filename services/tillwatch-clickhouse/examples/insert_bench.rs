//! Insert throughput of the ClickHouse sink's path (RowBinary, batches of
//! `insert_max_rows`) against a real server; `tests/bench-clickhouse` runs
//! it beside `clickhouse-client` inserting the same bytes.
//!
//!   insert_bench URL DATABASE ROWS OUT_FILE
//!
//! Builds ROWS battery readings (1,000 devices), encodes them as RowBinary
//! (writing the bytes to OUT_FILE for the baseline), inserts them, and
//! prints one JSON line.

use std::time::Instant;

use tillwatch_clickhouse::{ClickHouse, Settings, encode_parts, rowbinary};
use tillwatch_domain::{
    Battery, BootId, DeviceId, MerchantId, Reading, Signal, StoreId, UtcMillis,
};
use tillwatch_storage::{Staging, StoredReading, Table};

const CHUNK: usize = 200_000;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, url, database, rows, out] = &args[..] else {
        panic!("usage: insert_bench URL DATABASE ROWS OUT_FILE");
    };
    let rows: usize = rows.parse().expect("ROWS is a number");
    let merchant = MerchantId::new("m-0001").unwrap();
    let store = StoreId::new("s-0001").unwrap();
    let devices: Vec<DeviceId> = (0..1000)
        .map(|i| DeviceId::new(&format!("dev-{i:05}")).unwrap())
        .collect();
    let start = UtcMillis::now().0 - 3_600_000;

    let mut chunks: Vec<(u32, Vec<u8>)> = Vec::new();
    let mut encode_secs = 0.0;
    let mut made = 0usize;
    while made < rows {
        let n = CHUNK.min(rows - made);
        let mut staging = Staging::new();
        for i in made..made + n {
            let reading = Reading {
                device_id: devices[i % devices.len()].clone(),
                boot_id: BootId(7),
                seq: (i / devices.len()) as u64,
                sampled_at: UtcMillis(start + (i / devices.len()) as i64 * 1000),
                signal: Signal::Battery(Battery {
                    level_pct: (i % 100) as u32,
                    charging: i % 3 == 0,
                    temperature_celsius: 31.5,
                    voltage_mv: 4100,
                    health_pct: 92,
                    cycle_count: 310,
                }),
            };
            staging.push_reading(StoredReading {
                reading: &reading,
                merchant_id: &merchant,
                store_id: Some(&store),
                received_at: UtcMillis(start),
            });
        }
        let parts = staging.finish();
        let t = Instant::now();
        let encoded = encode_parts(&parts);
        encode_secs += t.elapsed().as_secs_f64();
        for (_, r, bytes) in encoded {
            chunks.push((r, bytes));
        }
        made += n;
    }
    let all: Vec<u8> = chunks.iter().flat_map(|(_, b)| b.iter().copied()).collect();
    std::fs::write(out, &all).expect("write OUT_FILE");

    let ch = ClickHouse::new(Settings {
        url: url.clone(),
        database: database.clone(),
        user: "default".into(),
        password: None,
        insert_timeout: std::time::Duration::from_secs(300),
    });
    let columns = rowbinary::column_list(Table::Reading(tillwatch_domain::Kind::Battery));
    let t = Instant::now();
    for (_, bytes) in chunks {
        ch.insert_row_binary("battery", &columns, bytes.into())
            .await
            .expect("insert");
    }
    let insert_secs = t.elapsed().as_secs_f64();
    println!(
        "{{\"rows\": {rows}, \"bytes\": {}, \"encode_rows_per_s\": {:.0}, \"insert_rows_per_s\": {:.0}, \"insert_s\": {:.3}, \"columns\": \"{columns}\"}}",
        all.len(),
        rows as f64 / encode_secs,
        rows as f64 / insert_secs,
        insert_secs
    );
}
