//! Times lookups outside criterion, for A/B runs of two builds of physmap in one session:
//! `cargo run --release -p physmap-tools --bin lookup_driver -- MAP MIX MODE [ROUNDS]`, where MAP is a
//! dump of `tests/data`, MIX one of `mmio`, `ram`, `low64g`, `bursts` (`benches/common`), and
//! MODE one of
//!
//! - `snapshot`, `reader`: lookups in a loop the compiler sees whole (as criterion's);
//! - `snapshot-call`, `reader-call`: each lookup through an `#[inline(never)]` function, as a
//!   VMM makes one per exit (the snapshot's header is loaded each time);
//! - `qemu`: the QEMU-style walk of `benches/common`, for normalising two runs.
//!
//! Prints `MODE: N ns/lookup`. For the build before a change, copy this file and
//! `benches/common` into a worktree of the old commit and build it there (as an example, if
//! that commit has no `tools/`).

#[path = "../../../benches/common/baselines.rs"]
mod baselines;
#[path = "../../../benches/common/workloads.rs"]
mod workloads;

use baselines::QemuStyle;
use std::hint::black_box;
use workloads::{Map, Mix};

fn run(addrs: &[u64], rounds: usize, mut f: impl FnMut(u64) -> Option<(u64, u64)>) -> u64 {
    let mut sum = 0u64;
    for _ in 0..rounds {
        for &a in addrs {
            if let Some((v, o)) = f(black_box(a)) {
                sum = sum.wrapping_add(v ^ o);
            }
        }
    }
    sum
}

#[inline(never)]
fn snapshot_call(snap: &physmap::Snapshot<u64>, a: u64) -> Option<(u64, u64)> {
    snap.lookup(a).map(|h| (*h.value, h.offset))
}

#[inline(never)]
fn reader_call(r: &mut physmap::Reader<u64>, a: u64) -> Option<(u64, u64)> {
    r.lookup(a).map(|h| (*h.value, h.offset))
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 4 {
        eprintln!("usage: lookup_driver MAP MIX MODE [ROUNDS]");
        std::process::exit(2);
    }
    let mix = match args[2].as_str() {
        "mmio" => Mix::Mmio,
        "ram" => Mix::Ram,
        "low64g" => Mix::Low64G,
        "bursts" => Mix::Bursts,
        other => {
            eprintln!("unknown mix {other}");
            std::process::exit(2);
        }
    };
    let rounds: usize = args
        .get(4)
        .map_or(Ok(20), |s| s.parse())
        .unwrap_or_else(|e| {
            eprintln!("bad ROUNDS: {e}");
            std::process::exit(2);
        });
    let w = Map::from_dump(&args[1]).workload(mix);
    // `FLAT=1` builds the flat layout (`Config::flat_nodes`).
    let flat = std::env::var_os("FLAT").is_some_and(|v| v == "1");
    let map = workloads::physmap_with(
        &w,
        physmap::Config {
            flat_nodes: flat,
            ..physmap::Config::default()
        },
    );
    let snap = map.snapshot();
    let mut reader = map.reader();
    let qemu = QemuStyle::new(&w.regions);
    let mut qcache = arc_swap::Cache::new(&qemu.current);
    let mode = args[3].as_str();
    let t0 = std::time::Instant::now();
    let sum = match mode {
        "snapshot" => run(&w.addrs, rounds, |a| {
            snap.lookup(a).map(|h| (*h.value, h.offset))
        }),
        "reader" => run(&w.addrs, rounds, |a| {
            reader.lookup(a).map(|h| (*h.value, h.offset))
        }),
        "snapshot-call" => run(&w.addrs, rounds, |a| snapshot_call(&snap, a)),
        "reader-call" => run(&w.addrs, rounds, |a| reader_call(&mut reader, a)),
        "qemu" => run(&w.addrs, rounds, |a| qcache.load().lookup(a)),
        other => {
            eprintln!("unknown mode {other}");
            std::process::exit(2);
        }
    };
    let ns = t0.elapsed().as_nanos() as f64 / (rounds * w.addrs.len()) as f64;
    println!("{mode}: {ns:.2} ns/lookup (checksum {sum})");
}
