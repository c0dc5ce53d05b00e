//! What the scheduler computes on every tick to find hours whose
//! attribution changed: each hour's fingerprint over a fleet's identity
//! histories, and one hour's owners (what an hourly rollup run reads).
//!
//!   cargo bench -p tillwatch-domain --bench attribution

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use tillwatch_domain::attribution::{Terminal, Version, hour_fingerprints};

const HOUR: i64 = 3_600_000;
const DAYS: i64 = 30;

/// A terminal per id, reporting for `DAYS` days; every tenth moved store once
/// and every hundredth twice, at minutes that fall inside an hour.
fn fleet<'a>(ids: &'a [String], stores: &'a [String]) -> Vec<Terminal<'a>> {
    ids.iter()
        .enumerate()
        .map(|(i, id)| {
            let mut versions = vec![Version {
                valid_from_ms: 0,
                merchant_id: "m-1",
                store_id: Some(&stores[i % stores.len()]),
            }];
            for k in 1..=(usize::from(i % 10 == 0) + usize::from(i % 100 == 0)) {
                versions.push(Version {
                    valid_from_ms: (i as i64 % (DAYS * 24)) * HOUR / k as i64 + 1_234_567,
                    merchant_id: "m-1",
                    store_id: Some(&stores[(i + k) % stores.len()]),
                });
            }
            versions.sort_by_key(|v| v.valid_from_ms);
            versions.dedup_by_key(|v| v.valid_from_ms);
            Terminal {
                device_id: id,
                first_ms: 0,
                last_ms: DAYS * 24 * HOUR - 1,
                versions,
            }
        })
        .collect()
}

fn attribution(c: &mut Criterion) {
    let stores: Vec<String> = (0..500).map(|s| format!("s-{s:04}")).collect();
    let mut group = c.benchmark_group("attribution");
    group.sample_size(10);
    for n in [1_000usize, 20_000] {
        let ids: Vec<String> = (0..n).map(|i| format!("term-{i:05}")).collect();
        let terminals = fleet(&ids, &stores);
        group.bench_with_input(
            BenchmarkId::new("hour_fingerprints_30_days", n),
            &terminals,
            |b, t| b.iter(|| black_box(hour_fingerprints(t, 0, DAYS * 24 * HOUR))),
        );
        group.bench_with_input(
            BenchmarkId::new("owners_of_one_hour", n),
            &terminals,
            |b, t| {
                b.iter(|| {
                    black_box(
                        t.iter()
                            .filter_map(|t| t.owner(100 * HOUR, 101 * HOUR))
                            .count(),
                    )
                })
            },
        );
    }
    group.finish();
}

criterion_group!(benches, attribution);
criterion_main!(benches);
