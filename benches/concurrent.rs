//! Readers under a busy writer, and how long `synchronize` takes.
//!
//! 1. **Pairs** (the figure BENCHMARKS.md quotes): `threads` readers look up for a fixed time
//!    without a writer, then with a writer committing back to back, alternately, seven pairs
//!    per reader count; each pair gives the ratio of lookups per second with the writer to
//!    without (and, third in each round, with a writer sleeping between commits, at most 10,000 a
//!    second).
//!    Medians and spreads are printed and written to
//!    `target/physmap-bench/concurrent.json`. Two address mixes: MMIO exits spread over the
//!    q35-24-virtio-net map, and the friendly mostly-RAM mix of the q35 map with virtio.
//! 2. **Criterion** groups `readers/{no-writer,with-writer,with-paced-writer}/<threads>` (time
//!    per 65,536 lookups per reader), for the history of the figure.
//! 3. **`synchronize` latency**: a writer commits and then synchronizes (2,000 times with 2
//!    readers, 300 times with 32), with readers that look up continuously, and with readers that go offline between
//!    bursts of lookups as vCPUs do around `KVM_RUN` (sleeping 20 µs, as time spent in the
//!    guest); p50 and p99.
//!
//! The writer overwrites one 2 MiB block outside every lookup address per commit.

#[path = "common/baselines.rs"]
mod baselines;
#[path = "common/workloads.rs"]
mod workloads;

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::fmt::Write as _;
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

/// At most 10,000 commits a second (the writer sleeps between commits; the rate reached is
/// reported): far more than a VMM's control plane makes, far fewer than a writer committing
/// back to back.
const PACE: Duration = Duration::from_micros(100);

/// A 2 MiB block outside every lookup address.
const BLOCK: u64 = 0x10_0000_0000;

fn writer_loop(map: &physmap::PhysMap<u64>, writer: Writer, stop: &AtomicBool) -> u64 {
    let mut v = 0u64;
    let mut next = Instant::now();
    // Relaxed: a plain stop flag.
    while !stop.load(Ordering::Relaxed) {
        if writer == Writer::Paced {
            // Sleeping, not spinning: a spinning writer would take a core from the readers.
            next += PACE;
            if let Some(wait) = next.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
        }
        let mut t = map.transaction();
        t.overwrite(BLOCK..BLOCK + (2 << 20), v).unwrap();
        t.commit().unwrap();
        v += 1;
    }
    v
}

/// Runs `threads` readers over `addrs` until each did `passes` passes (or, with `passes` 0,
/// for `time`); returns (elapsed, lookups, commits).
fn run(
    map: &physmap::PhysMap<u64>,
    addrs: &[u64],
    threads: usize,
    writer: Writer,
    passes: u64,
    time: Duration,
) -> (Duration, u64, u64) {
    let stop = AtomicBool::new(false);
    let ready = Barrier::new(threads + 1);
    let total = AtomicU64::new(0);
    std::thread::scope(|s| {
        let (stop, total, ready) = (&stop, &total, &ready);
        let w = (writer != Writer::None).then(|| s.spawn(move || writer_loop(map, writer, stop)));
        let readers: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(move || {
                    let mut r = map.reader();
                    ready.wait();
                    let t0 = Instant::now();
                    let (mut sum, mut done) = (0u64, 0u64);
                    loop {
                        for &a in addrs {
                            if let Some(h) = r.lookup(a) {
                                sum = sum.wrapping_add(*h.value ^ h.offset);
                            }
                        }
                        done += 1;
                        if (passes > 0 && done == passes) || (passes == 0 && t0.elapsed() >= time) {
                            break;
                        }
                    }
                    black_box(sum);
                    // Relaxed: read after the scope joins this thread.
                    total.fetch_add(done * addrs.len() as u64, Ordering::Relaxed);
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
        let commits = w.map_or(0, |w| w.join().unwrap());
        (elapsed, total.load(Ordering::Relaxed), commits)
    })
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Part 1: interleaved pairs.
fn pairs(json: &mut String) {
    let mixes = [
        ("q35-24-virtio-net/mmio", {
            let m = Map::from_dump("q35-24-virtio-net.txt");
            m.workload(Mix::Mmio)
        }),
        ("q35-virtio/90%-ram", q35("q35-4g-virtio.txt", "q35-virtio")),
    ];
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    println!("\nReaders' lookups per second with a writer committing back to back, relative to without (7 interleaved pairs of 0.5 s each; {cores} cores)\n");
    println!("| mix | readers | without writer: M lookups/s (median) | with writer: M lookups/s (median) | commits/s (median) | ratio median | ratio min..max | ratio with a paced writer (sleeping between commits), median |");
    println!("|---|---|---|---|---|---|---|---|");
    json.push_str("\"pairs\":[");
    let mut first = true;
    for (name, w) in &mixes {
        let map = physmap_of(w);
        for threads in [1usize, 2, 8] {
            let (mut without, mut with, mut ratios, mut commits) = (vec![], vec![], vec![], vec![]);
            let (mut paced, mut paced_commits) = (vec![], vec![]);
            let time = Duration::from_millis(500);
            for _ in 0..7 {
                let (e0, n0, _) = run(&map, &w.addrs, threads, Writer::None, 0, time);
                let (e1, n1, c1) = run(&map, &w.addrs, threads, Writer::Continuous, 0, time);
                let (e2, n2, c2) = run(&map, &w.addrs, threads, Writer::Paced, 0, time);
                let (r0, r1) = (n0 as f64 / e0.as_secs_f64(), n1 as f64 / e1.as_secs_f64());
                without.push(r0);
                with.push(r1);
                ratios.push(r1 / r0);
                commits.push(c1 as f64 / e1.as_secs_f64());
                paced.push(n2 as f64 / e2.as_secs_f64() / r0);
                paced_commits.push(c2 as f64 / e2.as_secs_f64());
            }
            for v in [
                &mut without,
                &mut with,
                &mut ratios,
                &mut commits,
                &mut paced,
            ] {
                v.sort_by(|a, b| a.partial_cmp(b).unwrap());
            }
            let med = |v: &[f64]| percentile(v, 0.5);
            println!(
                "| {name} | {threads} | {:.1} | {:.1} | {:.0} | **{:.1} %** | {:.1} .. {:.1} % | {:.1} % at {:.0} commits/s |",
                med(&without) / 1e6,
                med(&with) / 1e6,
                med(&commits),
                med(&ratios) * 100.0,
                ratios[0] * 100.0,
                ratios[ratios.len() - 1] * 100.0,
                med(&paced) * 100.0,
                med(&paced_commits)
            );
            if !first {
                json.push(',');
            }
            first = false;
            let list = |v: &[f64]| {
                v.iter()
                    .map(|x| format!("{x:.4}"))
                    .collect::<Vec<_>>()
                    .join(",")
            };
            let _ = write!(
                json,
                "{{\"mix\":\"{name}\",\"readers\":{threads},\"without\":[{}],\"with\":[{}],\"ratios\":[{}],\"commits_per_s\":[{}],\"paced_ratios\":[{}],\"paced_commits_per_s\":[{}]}}",
                list(&without),
                list(&with),
                list(&ratios),
                list(&commits),
                list(&paced),
                list(&paced_commits)
            );
        }
    }
    json.push(']');
}

/// Part 3: `synchronize` latency with `threads` readers, looking up continuously or going
/// offline between bursts (as vCPUs around `KVM_RUN`).
fn sync_latency(json: &mut String) {
    let w = Map::from_dump("q35-24-virtio-net.txt").workload(Mix::Mmio);
    let map = physmap_of(&w);
    println!("\n`synchronize()` latency (commit, then synchronize; 2,000 rounds with 2 readers, 300 with 32; {} cores)\n", std::thread::available_parallelism().map_or(2, |n| n.get()));
    println!("| readers | readers' behaviour | p50 | p99 | max |");
    println!("|---|---|---|---|---|");
    json.push_str(",\"synchronize\":[");
    let mut first = true;
    for threads in [2usize, 32] {
        for offline_between in [false, true] {
            let stop = AtomicBool::new(false);
            // Every reader has looked up once before the first round: otherwise the rounds
            // can end before most of 32 readers on a few cores first run, and measure none.
            let started = std::sync::Barrier::new(threads + 1);
            let mut lat: Vec<f64> = std::thread::scope(|s| {
                let (map, stop, addrs, started) = (&map, &stop, &w.addrs, &started);
                for id in 0..threads {
                    s.spawn(move || {
                        let mut r = map.reader();
                        let mut i = id * 977;
                        let mut sum = 0u64;
                        if let Some(h) = r.lookup(addrs[i % addrs.len()]) {
                            sum = *h.value;
                        }
                        started.wait();
                        // Relaxed: a plain stop flag.
                        while !stop.load(Ordering::Relaxed) {
                            // A burst of lookups (an exit's worth of work), then, as a vCPU
                            // re-entering the guest, offline.
                            for _ in 0..64 {
                                i = (i + 1) % addrs.len();
                                if let Some(h) = r.lookup(addrs[i]) {
                                    sum = sum.wrapping_add(*h.value);
                                }
                            }
                            if offline_between {
                                // Back into the guest for a while: offline, holding nothing.
                                r.offline();
                                std::thread::sleep(Duration::from_micros(20));
                            }
                        }
                        black_box(sum);
                    });
                }
                started.wait();
                // Fewer rounds with 32 readers: each waits for 32 threads on a few cores.
                let rounds = if threads > 8 { 300 } else { 2000 };
                let mut lat = Vec::with_capacity(rounds as usize);
                for v in 0..rounds {
                    let mut t = map.transaction();
                    t.overwrite(BLOCK..BLOCK + (2 << 20), v).unwrap();
                    t.commit().unwrap();
                    let t0 = Instant::now();
                    map.synchronize();
                    lat.push(t0.elapsed().as_secs_f64() * 1e6);
                }
                stop.store(true, Ordering::Relaxed);
                lat
            });
            lat.sort_by(|a, b| a.partial_cmp(b).unwrap());
            let behaviour = if offline_between {
                "offline between bursts of 64 lookups (20 µs in the guest)"
            } else {
                "looking up continuously"
            };
            println!(
                "| {threads} | {behaviour} | {:.1} µs | {:.1} µs | {:.1} µs |",
                percentile(&lat, 0.5),
                percentile(&lat, 0.99),
                lat[lat.len() - 1]
            );
            if !first {
                json.push(',');
            }
            first = false;
            let _ = write!(
                json,
                "{{\"readers\":{threads},\"offline_between\":{offline_between},\"p50_us\":{:.2},\"p99_us\":{:.2},\"max_us\":{:.2}}}",
                percentile(&lat, 0.5),
                percentile(&lat, 0.99),
                lat[lat.len() - 1]
            );
        }
    }
    json.push(']');
}

fn concurrent(c: &mut Criterion) {
    // `PHYSMAP_BENCH=synchronize` runs the `synchronize` table alone (without writing the
    // JSON the report reads).
    if std::env::var("PHYSMAP_BENCH").is_ok_and(|f| f == "synchronize") {
        sync_latency(&mut String::new());
        return;
    }
    let mut json = String::from("{");
    pairs(&mut json);
    sync_latency(&mut json);
    json.push('}');
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/physmap-bench");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("concurrent.json"), json).unwrap();

    let w = Map::from_dump("q35-24-virtio-net.txt").workload(Mix::Mmio);
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
            g.throughput(Throughput::Elements((w.addrs.len() * t) as u64));
            g.bench_function(BenchmarkId::from_parameter(t), |b| {
                b.iter_custom(|iters| run(&map, &w.addrs, t, writer, iters, Duration::ZERO).0)
            });
        }
        g.finish();
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10).warm_up_time(Duration::from_millis(300)).measurement_time(Duration::from_secs(2));
    targets = concurrent
}
criterion_main!(benches);
