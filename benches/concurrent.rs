//! Reader throughput with 1..N threads, without and with a writer committing continuously.
//! Each measurement runs `threads` readers doing `iters` passes over the workload's 4096
//! addresses; the writer (if any) overwrites one 2 MiB virtio-mem block per commit as fast as
//! it can until the readers are done.

#[path = "common/baselines.rs"]
mod baselines;
#[path = "common/workloads.rs"]
mod workloads;

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Barrier;
use std::time::{Duration, Instant};
use workloads::*;

/// How the writer commits: not at all, back to back, or paced (one commit every `PACE`).
#[derive(Clone, Copy, PartialEq)]
enum Writer {
    None,
    Continuous,
    Paced,
}

/// 10,000 commits a second: far more than a VMM's control plane makes, far fewer than a
/// writer committing back to back.
const PACE: Duration = Duration::from_micros(100);

fn run(
    map: &physmap::PhysMap<u64>,
    addrs: &[u64],
    threads: usize,
    writer: Writer,
    iters: u64,
    commits: &AtomicU64,
) -> Duration {
    let stop = AtomicBool::new(false);
    let ready = Barrier::new(threads + 1);
    std::thread::scope(|s| {
        let stop = &stop;
        let w = (writer != Writer::None).then(|| {
            s.spawn(move || {
                let mut v = 0u64;
                let base = 0x10_0000_0000u64; // a block outside every lookup address
                let mut next = Instant::now();
                while !stop.load(Ordering::Relaxed) {
                    if writer == Writer::Paced {
                        next += PACE;
                        while Instant::now() < next {
                            std::hint::spin_loop();
                            if stop.load(Ordering::Relaxed) {
                                break;
                            }
                        }
                    }
                    let mut t = map.transaction();
                    t.overwrite(base..base + (2 << 20), v).unwrap();
                    t.commit().unwrap();
                    v += 1;
                }
                commits.fetch_add(v, Ordering::Relaxed);
            })
        });
        let readers: Vec<_> = (0..threads)
            .map(|_| {
                let ready = &ready;
                s.spawn(move || {
                    let mut r = map.reader();
                    ready.wait();
                    let mut sum = 0u64;
                    for _ in 0..iters {
                        for &a in addrs {
                            if let Some(h) = r.lookup(a) {
                                sum = sum.wrapping_add(*h.value ^ h.offset);
                            }
                        }
                    }
                    black_box(sum);
                })
            })
            .collect();
        ready.wait();
        let t0 = Instant::now();
        for r in readers {
            r.join().unwrap();
        }
        let elapsed = t0.elapsed();
        stop.store(true, Ordering::Relaxed);
        if let Some(w) = w {
            w.join().unwrap();
        }
        elapsed
    })
}

fn concurrent(c: &mut Criterion) {
    let w = q35("q35-4g-virtio.txt", "q35-virtio");
    let map = physmap_of(&w);
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let mut counts = vec![1, 2, 4, 8];
    counts.retain(|&t| t <= 4 * cores);
    for (writer, name) in [
        (Writer::None, "no-writer"),
        (Writer::Continuous, "with-writer"),
        (Writer::Paced, "with-paced-writer"),
    ] {
        let mut g = c.benchmark_group(format!("readers/{name}"));
        for &t in &counts {
            let commits = AtomicU64::new(0);
            g.throughput(Throughput::Elements((w.addrs.len() * t) as u64));
            g.bench_function(BenchmarkId::from_parameter(t), |b| {
                b.iter_custom(|iters| run(&map, &w.addrs, t, writer, iters, &commits))
            });
        }
        g.finish();
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2));
    targets = concurrent
}
criterion_main!(benches);
