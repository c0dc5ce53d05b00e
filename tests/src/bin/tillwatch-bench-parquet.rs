//! Parquet encoding of staged readings, for the comparison with pyarrow
//! (`tests/bench-parquet`).
//!
//!   tillwatch-bench-parquet READINGS OUT_DIR [REPEAT]
//!
//! Stages READINGS synthetic readings (the four kinds in turn, 1,000
//! terminals) as the gateway does, then encodes each staged part to Parquet
//! with the lake's own encoder (`tillwatch_storage::encode_parquet`, Snappy)
//! REPEAT times (default 5) on this one thread, keeping the best time. The
//! files go to OUT_DIR, one per part, for the baseline to read and write
//! again. Prints one JSON line.

use std::time::Instant;

use tillwatch_storage::{encode_parquet, sample};

/// 2026-11-20T00:00Z: every reading in one hour up to 3.6 million.
const START_MS: i64 = 1_795_132_800_000;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        eprintln!("usage: tillwatch-bench-parquet READINGS OUT_DIR [REPEAT]");
        std::process::exit(2);
    }
    let readings: usize = args[1].parse().expect("READINGS is a number");
    let out = std::path::PathBuf::from(&args[2]);
    let repeat: usize = args
        .get(3)
        .map_or(5, |r| r.parse().expect("REPEAT is a number"));
    let parts = sample::staged(readings, None, START_MS).finish();
    let mut best = f64::INFINITY;
    let mut encoded: Vec<Vec<u8>> = Vec::new();
    for _ in 0..repeat.max(1) {
        let started = Instant::now();
        encoded = parts
            .iter()
            .map(|part| {
                let mut bytes = Vec::with_capacity(1 << 20);
                encode_parquet(part, &mut bytes).expect("encodes");
                bytes
            })
            .collect();
        best = best.min(started.elapsed().as_secs_f64());
    }
    std::fs::create_dir_all(&out).expect("create OUT_DIR");
    for (part, bytes) in parts.iter().zip(&encoded) {
        let name = format!("{}-{}.parquet", part.table.name(), part.hour.start().0);
        std::fs::write(out.join(name), bytes).expect("write a part");
    }
    println!(
        "{}",
        serde_json::json!({
            "readings": readings,
            "files": parts.len(),
            "bytes": encoded.iter().map(Vec::len).sum::<usize>(),
            "best_s": best,
            "readings_per_s": readings as f64 / best,
        })
    );
}
