//! Single-thread lookup: physmap (`Reader`, `Snapshot`) against each baseline, per workload.
//! Also the per-lookup cost of pinning a crossbeam-epoch guard (the alternative reclamation
//! scheme DESIGN.md asks to measure), next to the reader's refcounted cache check.

#[path = "common/baselines.rs"]
mod baselines;
#[path = "common/workloads.rs"]
mod workloads;

use baselines::*;
use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use workloads::*;

fn bench_workload(c: &mut Criterion, w: &Workload) {
    let mut g = c.benchmark_group(format!("lookup/{}", w.name));
    g.throughput(Throughput::Elements(w.addrs.len() as u64));
    let map = physmap_of(w);
    let mut reader = map.reader();
    let snap = map.snapshot();
    // Every structure must give the same answers before it is timed.
    for &a in &w.addrs {
        let want = snap.lookup(a).map(|h| (*h.value, h.offset));
        assert!(want.is_some(), "{}: {a:#x} unmapped", w.name);
        assert_eq!(reader.lookup(a).map(|h| (*h.value, h.offset)), want);
    }
    g.bench_function(BenchmarkId::new("physmap-reader", w.name), |b| {
        b.iter(|| {
            let mut sum = 0u64;
            for &a in &w.addrs {
                if let Some(h) = reader.lookup(a) {
                    sum = sum.wrapping_add(*h.value ^ h.offset);
                }
            }
            black_box(sum)
        })
    });
    g.bench_function(BenchmarkId::new("physmap-snapshot", w.name), |b| {
        b.iter(|| {
            let mut sum = 0u64;
            for &a in &w.addrs {
                if let Some(h) = snap.lookup(a) {
                    sum = sum.wrapping_add(*h.value ^ h.offset);
                }
            }
            black_box(sum)
        })
    });
    if w.regions.len() <= 100_000 {
        let mutex = MutexBTree::new(&w.regions);
        let rw = RwLockBTree::new(&w.regions);
        g.bench_function(BenchmarkId::new("mutex-btreemap", w.name), |b| {
            b.iter(|| {
                let mut sum = 0u64;
                for &a in &w.addrs {
                    if let Some((v, off)) = mutex.lookup(a) {
                        sum = sum.wrapping_add(*v ^ off);
                    }
                }
                black_box(sum)
            })
        });
        g.bench_function(BenchmarkId::new("rwlock-btreemap", w.name), |b| {
            b.iter(|| {
                let mut sum = 0u64;
                for &a in &w.addrs {
                    if let Some((v, off)) = rw.lookup(a) {
                        sum = sum.wrapping_add(*v ^ off);
                    }
                }
                black_box(sum)
            })
        });
    }
    let vec = ArcSwapVec::new(&w.regions);
    g.bench_function(BenchmarkId::new("arcswap-vec", w.name), |b| {
        b.iter(|| {
            let mut sum = 0u64;
            for &a in &w.addrs {
                if let Some((v, off)) = vec.lookup(a) {
                    sum = sum.wrapping_add(v ^ off);
                }
            }
            black_box(sum)
        })
    });
    let mut cache = vec.cache();
    g.bench_function(BenchmarkId::new("arcswap-vec-cache", w.name), |b| {
        b.iter(|| {
            let mut sum = 0u64;
            for &a in &w.addrs {
                if let Some((v, off)) = cached_lookup(&mut cache, a) {
                    sum = sum.wrapping_add(v ^ off);
                }
            }
            black_box(sum)
        })
    });
    if w.regions.len() <= 100_000 {
        let qemu = QemuStyle::new(&w.regions);
        for &a in &w.addrs {
            assert_eq!(
                qemu.current.load().lookup(a),
                snap.lookup(a).map(|h| (*h.value, h.offset)),
                "qemu-style {a:#x}"
            );
        }
        // QEMU reads `as->current_map` with atomic_rcu_read on every access (a plain load):
        // the closest equivalent is `arc_swap::Cache`, checked per lookup like our `Reader`.
        let mut qcache = arc_swap::Cache::new(&qemu.current);
        g.bench_function(BenchmarkId::new("qemu-dispatch", w.name), |b| {
            b.iter(|| {
                let mut sum = 0u64;
                for &a in &w.addrs {
                    if let Some((v, off)) = qcache.load().lookup(a) {
                        sum = sum.wrapping_add(v ^ off);
                    }
                }
                black_box(sum)
            })
        });
    }
    if w.name.starts_with("q35") {
        // Epoch-based alternative: pin per lookup, then walk the same tree.
        g.bench_function(BenchmarkId::new("epoch-pin+snapshot", w.name), |b| {
            b.iter(|| {
                let mut sum = 0u64;
                for &a in &w.addrs {
                    let guard = crossbeam_epoch::pin();
                    if let Some(h) = snap.lookup(a) {
                        sum = sum.wrapping_add(*h.value ^ h.offset);
                    }
                    drop(guard);
                }
                black_box(sum)
            })
        });
    }
    g.finish();
}

fn lookups(c: &mut Criterion) {
    for w in [
        q35("q35-4g-virtio.txt", "q35-virtio"),
        q35("q35-booted.txt", "q35-booted"),
        regions_1k(),
        virtio_mem_1t(),
        cvm_1m(),
    ] {
        bench_workload(c, &w);
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30).warm_up_time(std::time::Duration::from_millis(500)).measurement_time(std::time::Duration::from_secs(2));
    targets = lookups
}
criterion_main!(benches);
