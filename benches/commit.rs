//! Commit latency of a one-range change on maps of 1K, 100K and 1M ranges (each a 4 KiB page,
//! alternating values, as a confidential VM's private/shared conversions), against the
//! baselines' way of doing the same change.

#[path = "common/baselines.rs"]
mod baselines;
#[path = "common/workloads.rs"]
mod workloads;

use baselines::*;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use std::time::Duration;

fn pages(n: u64) -> Vec<Region> {
    (0..n)
        .map(|i| Region {
            start: i << 12,
            end: (i << 12) + 0xfff,
            value: i % 2,
        })
        .collect()
}

fn commits(c: &mut Criterion) {
    let mut g = c.benchmark_group("commit");
    for n in [1_000u64, 100_000, 1_000_000] {
        let regions = pages(n);
        let mid = (n / 2) << 12;
        let map: physmap::PhysMap<u64> = physmap::PhysMap::new();
        let mut t = map.transaction();
        for r in &regions {
            t.insert(r.start..=r.end, r.value).unwrap();
        }
        t.commit().unwrap();
        let mut v = 0u64;
        g.bench_function(BenchmarkId::new("physmap", n), |b| {
            b.iter(|| {
                v ^= 1;
                let mut t = map.transaction();
                t.overwrite(mid..mid + 0x1000, v).unwrap();
                t.commit().unwrap()
            })
        });
        // An old snapshot held meanwhile, as by a listener that lags up to 1,000 commits
        // behind (renewed every 1,000 commits: held for ever, it would pin the garbage of
        // every commit made since, without bound): reclamation must not make commits slower.
        let mut held = map.snapshot();
        let mut since = 0u32;
        g.bench_function(BenchmarkId::new("physmap-with-old-snapshot-held", n), |b| {
            b.iter(|| {
                v ^= 1;
                let mut t = map.transaction();
                t.overwrite(mid..mid + 0x1000, v).unwrap();
                let g = t.commit().unwrap();
                since += 1;
                if since == 1000 {
                    held = map.snapshot();
                    since = 0;
                }
                g
            })
        });
        drop(held);
        if n <= 100_000 {
            let qemu = QemuStyle::new(&regions);
            g.bench_function(BenchmarkId::new("qemu-full-rebuild", n), |b| {
                b.iter(|| {
                    v ^= 1;
                    qemu.replace(Region {
                        start: mid,
                        end: mid + 0xfff,
                        value: v,
                    });
                })
            });
        }
        let vec = ArcSwapVec::new(&regions);
        g.bench_function(BenchmarkId::new("arcswap-vec-clone-sort", n), |b| {
            b.iter(|| {
                v ^= 1;
                vec.replace(Region {
                    start: mid,
                    end: mid + 0xfff,
                    value: v,
                });
            })
        });
        let rw = RwLockBTree::new(&regions[..regions.len().min(100_000)]);
        g.bench_function(BenchmarkId::new("rwlock-btreemap-in-place", n), |b| {
            b.iter(|| {
                v ^= 1;
                rw.replace(Region {
                    start: mid,
                    end: mid + 0xfff,
                    value: v,
                });
            })
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10).warm_up_time(Duration::from_millis(300)).measurement_time(Duration::from_secs(2));
    targets = commits
}
criterion_main!(benches);
