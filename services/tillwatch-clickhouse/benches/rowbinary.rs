//! RowBinary encoding of staged readings, what every flush does for the
//! ClickHouse spool.
//!
//!   cargo bench -p tillwatch-clickhouse --bench rowbinary

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use tillwatch_clickhouse::encode_parts;
use tillwatch_storage::sample;

fn rowbinary(c: &mut Criterion) {
    let mut group = c.benchmark_group("rowbinary_encode");
    for n in [1_000usize, 10_000, 100_000] {
        let parts = sample::staged(n, None, 1_795_000_000_000).finish();
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::from_parameter(n), &parts, |b, parts| {
            b.iter(|| black_box(encode_parts(parts)))
        });
    }
    group.finish();
}

criterion_group!(benches, rowbinary);
criterion_main!(benches);
