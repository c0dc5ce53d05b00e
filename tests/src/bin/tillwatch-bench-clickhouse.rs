//! Insert throughput of the ClickHouse sink's path (RowBinary, batches of
//! `insert_max_rows`) against a real server; `tests/bench-clickhouse` runs
//! it beside `clickhouse-client` inserting the same bytes.
//!
//!   tillwatch-bench-clickhouse URL DATABASE ROWS OUT_FILE
//!
//! Builds ROWS battery readings (1,000 terminals), encodes them as RowBinary
//! (writing the bytes to OUT_FILE for the baseline), inserts them, and
//! prints one JSON line.

use std::time::Instant;

use tillwatch_clickhouse::{ClickHouse, Settings, encode_parts, rowbinary};
use tillwatch_domain::{Kind, UtcMillis};
use tillwatch_storage::{Table, sample};

const CHUNK: usize = 200_000;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, url, database, rows, out] = &args[..] else {
        panic!("usage: tillwatch-bench-clickhouse URL DATABASE ROWS OUT_FILE");
    };
    let rows: usize = rows.parse().expect("ROWS is a number");
    let start = UtcMillis::now().0 - 3_600_000;
    let mut chunks: Vec<Vec<u8>> = Vec::new();
    let mut encode_secs = 0.0;
    let mut made = 0usize;
    while made < rows {
        let n = CHUNK.min(rows - made);
        // Each chunk its own 1,000 terminals' readings, one hour later.
        let chunk_start = start + (made / CHUNK) as i64 * 3_600_000;
        let parts = sample::staged(n, Some(Kind::Battery), chunk_start).finish();
        let t = Instant::now();
        let encoded = encode_parts(&parts);
        encode_secs += t.elapsed().as_secs_f64();
        chunks.extend(encoded.into_iter().map(|(_, _, bytes)| bytes));
        made += n;
    }
    let all: Vec<u8> = chunks.concat();
    std::fs::write(out, &all).expect("write OUT_FILE");

    let ch = ClickHouse::new(Settings {
        url: url.clone(),
        database: database.clone(),
        user: "default".into(),
        password: None,
        insert_timeout: std::time::Duration::from_secs(300),
        cluster: None,
    });
    let columns = rowbinary::column_list(Table::Reading(Kind::Battery));
    let t = Instant::now();
    for bytes in chunks {
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
