//! Scale: a 1,000,000-page private/shared pattern built through the bulk path (all cores
//! against one rayon thread), and the diff of a one-range change on maps of 1K and 1M ranges.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use physmap::{Config, PhysMap};
use std::time::Duration;

fn pages(n: u64) -> impl Iterator<Item = (std::ops::Range<u64>, u64)> {
    (0..n).map(|i| (i << 12..(i + 1) << 12, i % 2))
}

fn bulk(c: &mut Criterion) {
    let mut g = c.benchmark_group("bulk-build-1m-pages");
    g.sample_size(10);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    for threads in [1, cores] {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        g.bench_function(
            BenchmarkId::new("extend+commit", format!("{threads}-threads")),
            |b| {
                b.iter(|| {
                    pool.install(|| {
                        PhysMap::from_ranges(Config::default(), pages(1 << 20)).unwrap()
                    })
                })
            },
        );
    }
    // The same pages inserted one call at a time (the per-call path), for reference.
    g.bench_function(
        BenchmarkId::new("insert-each+commit", format!("{cores}-threads")),
        |b| {
            b.iter(|| {
                let map = PhysMap::new();
                let mut t = map.transaction();
                for (r, v) in pages(1 << 20) {
                    t.insert(r, v).unwrap();
                }
                t.commit().unwrap();
                map
            })
        },
    );
    g.finish();
}

fn diff(c: &mut Criterion) {
    let mut g = c.benchmark_group("diff-one-range");
    for n in [1_000u64, 1_000_000] {
        let map = PhysMap::from_ranges(Config::default(), pages(n)).unwrap();
        let before = map.snapshot();
        let mut t = map.transaction();
        let mid = (n / 2) << 12;
        t.overwrite(mid..mid + 0x1000, 9).unwrap();
        t.commit().unwrap();
        let after = map.snapshot();
        assert_eq!(after.diff(&before).len(), 1);
        g.bench_function(BenchmarkId::from_parameter(n), |b| {
            b.iter(|| after.diff(&before))
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(3));
    targets = bulk, diff
}
criterion_main!(benches);
