//! Single-thread lookup, per map and address mix: physmap (`Reader`, `Snapshot`) against the
//! QEMU-style walk (the reference) and the baselines VMMs use today, all in the same run.
//!
//! - `lookup/<map>/<mix>`: the real QEMU maps of `tests/data` with the four mixes of
//!   `workloads::Mix` (MMIO exits, device DMA over the RAM ranges, the low 64 GiB, bursts);
//! - `lookup-large/<map>`: q35 plus 1 TiB of virtio-mem (8K and 64K plugged runs) and 1M
//!   alternating private/shared pages, addresses spread over the RAM ranges;
//! - `lookup-scaling/<n>`: synthetic maps of 10 to 1M ranges (the plot in BENCHMARKS.md);
//! - `lookup-epoch`: what pinning a crossbeam-epoch guard per lookup would add.
//!
//! Each iteration looks up 65,536 addresses; figures are per lookup. Every structure is
//! checked to answer exactly as physmap does before it is timed.

#[path = "common/baselines.rs"]
mod baselines;
#[path = "common/workloads.rs"]
mod workloads;

use baselines::*;
use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use workloads::*;

/// Times `lookup` over the workload's addresses as one benchmark of `group`.
fn time<F: FnMut(u64) -> Option<(u64, u64)>>(
    g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    id: &str,
    addrs: &[u64],
    mut lookup: F,
) {
    g.bench_function(BenchmarkId::from_parameter(id), |b| {
        b.iter(|| {
            let mut sum = 0u64;
            for &a in addrs {
                if let Some((v, off)) = lookup(black_box(a)) {
                    sum = sum.wrapping_add(v ^ off);
                }
            }
            black_box(sum)
        })
    });
}

/// Which structures a group times.
#[derive(Clone, Copy)]
struct Set {
    locks: bool,
}

/// Whether to set up `group` at all: `PHYSMAP_BENCH=<substring>` skips the (slow) building
/// of the others, where criterion's own filter would still build every map.
fn wanted(group: &str) -> bool {
    std::env::var("PHYSMAP_BENCH").map_or(true, |f| group.contains(&f))
}

fn bench_workload(c: &mut Criterion, group: &str, w: &Workload, set: Set) {
    if !wanted(group) {
        return;
    }
    let mut g = c.benchmark_group(group);
    g.throughput(Throughput::Elements(w.addrs.len() as u64));
    let map = physmap_of(w);
    let mut reader = map.reader();
    let snap = map.snapshot();
    let qemu = QemuStyle::new(&w.regions);
    let vec = ArcSwapVec::new(&w.regions);
    let rw = set.locks.then(|| RwLockBTree::new(&w.regions));
    // Every structure must give the same answers before it is timed.
    for &a in &w.addrs {
        let want = snap.lookup(a).map(|h| (*h.value, h.offset));
        assert_eq!(
            reader.lookup(a).map(|h| (*h.value, h.offset)),
            want,
            "{a:#x}"
        );
        assert_eq!(qemu.current.load().lookup(a), want, "qemu-style {a:#x}");
        assert_eq!(vec.lookup(a), want, "arcswap-vec {a:#x}");
        if let Some(rw) = &rw {
            assert_eq!(rw.lookup(a).map(|(v, o)| (*v, o)), want, "rwlock {a:#x}");
        }
    }
    time(&mut g, "physmap-reader", &w.addrs, |a| {
        reader.lookup(a).map(|h| (*h.value, h.offset))
    });
    time(&mut g, "physmap-snapshot", &w.addrs, |a| {
        snap.lookup(a).map(|h| (*h.value, h.offset))
    });
    // QEMU reads `as->current_map` with an RCU dereference on every access (a plain load):
    // the closest equivalent is `arc_swap::Cache`, checked per lookup like our `Reader`.
    let mut qcache = arc_swap::Cache::new(&qemu.current);
    time(&mut g, "qemu-dispatch", &w.addrs, |a| {
        qcache.load().lookup(a)
    });
    time(&mut g, "arcswap-vec", &w.addrs, |a| vec.lookup(a));
    if let Some(rw) = &rw {
        time(&mut g, "rwlock-btreemap", &w.addrs, |a| {
            rw.lookup(a).map(|(v, o)| (*v, o))
        });
    }
    g.finish();
}

fn real(c: &mut Criterion) {
    for m in real_maps() {
        for mix in Mix::ALL {
            let w = m.workload(mix);
            bench_workload(c, &format!("lookup/{}", w.name), &w, Set { locks: true });
        }
    }
}

fn large(c: &mut Criterion) {
    for make in [|| q35_virtio_mem(8), || q35_virtio_mem(64), cvm_map] {
        if !wanted("lookup-large/") {
            return;
        }
        let m = make();
        let w = m.workload(Mix::Ram);
        bench_workload(
            c,
            &format!("lookup-large/{}", m.name),
            &w,
            Set { locks: true },
        );
    }
}

fn scaling(c: &mut Criterion) {
    for n in [10u64, 100, 1_000, 10_000, 100_000, 1_000_000] {
        if !wanted(&format!("lookup-scaling/{n}")) {
            continue;
        }
        let w = ranges_n(n);
        bench_workload(c, &format!("lookup-scaling/{n}"), &w, Set { locks: true });
    }
}

/// The two layouts in the same run: dense nodes (the default) and flat nodes
/// (`Config::flat_nodes`), snapshot lookups on every real map and mix.
fn flat(c: &mut Criterion) {
    for m in real_maps() {
        for mix in Mix::ALL {
            let w = m.workload(mix);
            let group = format!("lookup-flat/{}", w.name);
            if !wanted(&group) {
                continue;
            }
            let mut g = c.benchmark_group(group);
            g.throughput(Throughput::Elements(w.addrs.len() as u64));
            let dense = physmap_of(&w).snapshot();
            let flat = physmap_with(
                &w,
                physmap::Config {
                    flat_nodes: true,
                    ..physmap::Config::default()
                },
            )
            .snapshot();
            assert!(flat.stats().flat_nodes > 0 && dense.stats().flat_nodes == 0);
            for &a in &w.addrs {
                let want = dense.lookup(a).map(|h| (*h.value, h.offset));
                assert_eq!(flat.lookup(a).map(|h| (*h.value, h.offset)), want, "{a:#x}");
            }
            time(&mut g, "dense", &w.addrs, |a| {
                dense.lookup(a).map(|h| (*h.value, h.offset))
            });
            time(&mut g, "flat", &w.addrs, |a| {
                flat.lookup(a).map(|h| (*h.value, h.offset))
            });
            g.finish();
        }
    }
}

fn epoch(c: &mut Criterion) {
    if !wanted("lookup-epoch") {
        return;
    }
    // Epoch-based alternative to the Reader's cache: pin per lookup, then walk the same tree.
    let w = Map::from_dump("q35-24-virtio-net.txt").workload(Mix::Mmio);
    let map = physmap_of(&w);
    let snap = map.snapshot();
    let mut g = c.benchmark_group("lookup-epoch");
    g.throughput(Throughput::Elements(w.addrs.len() as u64));
    time(&mut g, "physmap-snapshot", &w.addrs, |a| {
        snap.lookup(a).map(|h| (*h.value, h.offset))
    });
    time(&mut g, "epoch-pin+snapshot", &w.addrs, |a| {
        let guard = crossbeam_epoch::pin();
        let r = snap.lookup(a).map(|h| (*h.value, h.offset));
        drop(guard);
        r
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(std::time::Duration::from_millis(300))
        .measurement_time(std::time::Duration::from_millis(1200));
    targets = real, large, scaling, flat, epoch
}
criterion_main!(benches);
