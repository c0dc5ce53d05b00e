//! Arrow batch building and Parquet encoding of staged readings.
//!
//!   cargo bench -p tillwatch-storage --bench lake

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use tillwatch_storage::{encode_parquet, sample};

const START_MS: i64 = 1_795_000_000_000;

fn arrow_batches(c: &mut Criterion) {
    let mut group = c.benchmark_group("arrow_batch_build");
    for n in [1_000usize, 10_000, 100_000] {
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, &n| {
            b.iter(|| black_box(sample::staged(n, None, START_MS).finish()))
        });
    }
    group.finish();
}

fn parquet(c: &mut Criterion) {
    let mut group = c.benchmark_group("parquet_encode");
    for n in [1_000usize, 10_000, 100_000] {
        let parts = sample::staged(n, None, START_MS).finish();
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::from_parameter(n), &parts, |b, parts| {
            b.iter(|| {
                let mut bytes = 0;
                for part in parts {
                    let mut out = Vec::with_capacity(1 << 20);
                    encode_parquet(part, &mut out).expect("encodes");
                    bytes += out.len();
                }
                black_box(bytes)
            })
        });
    }
    group.finish();
}

criterion_group!(benches, arrow_batches, parquet);
criterion_main!(benches);
