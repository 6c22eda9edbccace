//! One simulated vCPU: looks addresses up in batches (timed), then checks every answer
//! against the generation that gave it (not timed).

use super::machine::{find, Machine, Val};
use physmap::PhysMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

#[derive(Default)]
pub(crate) struct VcpuReport {
    pub lookups: u64,
    pub busy: Duration,
    pub generations_seen: u64,
    pub last_generation: u64,
    pub mismatches: u64,
    pub first_mismatch: Option<String>,
}

impl VcpuReport {
    /// Lookups per second of time spent inside lookup batches.
    pub(crate) fn rate(&self) -> f64 {
        self.lookups as f64 / self.busy.as_secs_f64().max(1e-9)
    }
}

/// One per vCPU, padded so that progress counters do not share a cache line.
#[repr(align(128))]
#[derive(Default)]
pub(crate) struct Progress(pub AtomicU64);

const BATCH: usize = 1024;

pub(crate) fn run(
    m: &Machine,
    mem: &PhysMap<Val>,
    io: &PhysMap<Val>,
    id: usize,
    stop: &AtomicBool,
    progress: &Progress,
) -> VcpuReport {
    let work = m.workload(id as u64 + 1, 1 << 16);
    let mut mem_r = mem.reader();
    let mut io_r = io.reader();
    let mut rep = VcpuReport::default();
    let mut buf: Vec<(u64, Option<(u32, u64)>)> = vec![(0, None); BATCH];
    let mut i = 0usize;
    // Relaxed: `stop` is a plain flag; nothing is published through it.
    while !stop.load(Ordering::Relaxed) {
        let t0 = Instant::now();
        for slot in buf.iter_mut() {
            let (is_io, a) = work[i & (work.len() - 1)];
            i += 1;
            let reader = if is_io { &mut io_r } else { &mut mem_r };
            // `offset + base` cannot wrap: the parser checked `@offset + (end - start)`,
            // and the moving parts' bases are offsets inside them.
            let r = reader
                .lookup(a)
                .map(|h| (h.value.id, h.offset + h.value.base));
            *slot = (reader.last_generation(), r);
        }
        rep.busy += t0.elapsed();
        for (k, &(g, got)) in buf.iter().enumerate() {
            let (is_io, a) = work[(i - BATCH + k) & (work.len() - 1)];
            let want = if is_io {
                find(&m.io, a)
            } else {
                m.expected_mem(g, a)
            };
            if !is_io && g != rep.last_generation {
                rep.generations_seen += 1;
                rep.last_generation = g;
            }
            if got != want {
                rep.mismatches += 1;
                if rep.first_mismatch.is_none() {
                    let show = |x: Option<(u32, u64)>| match x {
                        Some((id, off)) if is_io => format!("{} +{off:#x}", m.io[id as usize].name),
                        Some((id, off)) => format!("{} +{off:#x}", m.region_name(id)),
                        None => "unassigned".into(),
                    };
                    rep.first_mismatch = Some(format!(
                        "vCPU {id}: {} {a:#x} in generation {g}: got {}, expected {}",
                        if is_io { "port" } else { "address" },
                        show(got),
                        show(want)
                    ));
                }
            }
        }
        rep.lookups += BATCH as u64;
        // Relaxed: a progress counter read only for display.
        progress.0.store(rep.lookups, Ordering::Relaxed);
    }
    rep
}
