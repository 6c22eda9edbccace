//! `physmap simulate`: vCPUs looking up addresses while a control plane changes the topology.
//!
//! The topology of generation `g` is a pure function of `g` ([`Topology::of`]), so every vCPU
//! can check every answer against the generation that gave it.

use super::json::Json;
use super::DEFAULT_MACHINE;
use clap::Args;
use physmap::mtree::{Dump, FlatRange};
use physmap::{PhysMap, Transaction};
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

#[derive(Args)]
pub(crate) struct SimArgs {
    /// vCPU threads [default: the machine's available parallelism]
    #[arg(long)]
    vcpus: Option<usize>,
    /// How long to run, in seconds.
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// Pause between control-plane commits, in microseconds.
    #[arg(long, default_value_t = 200)]
    commit_interval_us: u64,
    /// Memory map to load (`info mtree -f` dump) instead of the built-in q35.
    #[arg(long)]
    machine: Option<PathBuf>,
    /// Machine-readable output (no progress line).
    #[arg(long)]
    json: bool,
    /// Testing aid: every 8th commit also maps a region the topology does not have, so the
    /// vCPUs' checking must report wrong answers.
    #[arg(long, hide = true)]
    inject_fault: bool,
}

impl Default for SimArgs {
    fn default() -> Self {
        SimArgs {
            vcpus: None,
            seconds: 3.0,
            commit_interval_us: 200,
            machine: None,
            json: false,
            inject_fault: false,
        }
    }
}

/// A map value: which region, and the region offset of the section's origin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Val {
    id: u32,
    base: u64,
}

const BAR_SIZE: u64 = 0x4000;
const BAR_STRIDE: u64 = 0x1_0000;
const BAR_SLOTS: u64 = 8;
const DIMM_SIZE: u64 = 1 << 30;
const VMEM_BLOCK: u64 = 2 << 20;
const VMEM_BLOCKS: u64 = 64;

/// Where the moving parts live, chosen from the gaps of the loaded machine.
struct Machine {
    name: String,
    mem: Vec<FlatRange>,
    io: Vec<FlatRange>,
    bar_base: u64,
    dimm_base: u64,
    vmem_base: u64,
    /// Index (in `mem`) of the ROM range toggled to RAM, if the machine has one.
    rom: Option<usize>,
    ids: Ids,
}

#[derive(Clone, Copy)]
struct Ids {
    bar: u32,
    dimm: u32,
    vmem: u32,
    rom_as_ram: u32,
}

/// The dynamic part of generation `g`.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Topology {
    bar_slot: u64,
    dimm: bool,
    vmem: u64,
    rom_as_ram: bool,
}

impl Topology {
    fn of(g: u64) -> Topology {
        let mut vmem = 0;
        for k in 0..VMEM_BLOCKS {
            // Each block toggles every 64 generations, phases spread: ~2 changes a commit.
            if (g + 61 * k) % 128 < 64 {
                vmem |= 1 << k;
            }
        }
        Topology {
            bar_slot: (g / 2) % BAR_SLOTS,
            dimm: (g / 3) % 2 == 1,
            vmem,
            rom_as_ram: (g / 5) % 2 == 1,
        }
    }
}

impl Machine {
    fn load(path: Option<&PathBuf>) -> Result<Machine, String> {
        let (name, text) = match path {
            Some(p) => (
                p.display().to_string(),
                std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()))?,
            ),
            None => (DEFAULT_MACHINE.0.to_string(), DEFAULT_MACHINE.1.to_string()),
        };
        let dump = Dump::parse(&text, &name).map_err(|e| e.to_string())?;
        let mem = dump
            .find("memory")
            .ok_or_else(|| {
                format!(
                    "{name}: no \"memory\" address space (has: {})",
                    dump.address_space_names().join(", ")
                )
            })?
            .ranges
            .clone();
        let io = dump
            .find("I/O")
            .map(|fv| fv.ranges.clone())
            .unwrap_or_default();
        if mem.is_empty() {
            return Err(format!("{name}: the \"memory\" FlatView has no ranges"));
        }
        let mut sorted: Vec<(u64, u64)> = mem.iter().map(|r| (r.start, r.end)).collect();
        sorted.sort();
        // BAR window: the first gap of at least 1 MiB in 2 GiB..4 GiB.
        let mut cursor = 0x8000_0000u64;
        let mut bar_base = None;
        for &(s, e) in &sorted {
            if s >= cursor && s - cursor >= 1 << 20 && cursor < 0x1_0000_0000 {
                bar_base = Some(cursor);
                break;
            }
            cursor = cursor.max(e.saturating_add(1)).next_multiple_of(1 << 20);
        }
        let bar_base = bar_base.ok_or_else(|| {
            format!("{name}: no free 1 MiB window below 4 GiB for the moving BAR")
        })?;
        let top = sorted
            .iter()
            .map(|r| r.1)
            .max()
            .unwrap_or(0)
            .max(0xffff_ffff);
        let dimm_base = top
            .checked_add(1)
            .map(|t| t.next_multiple_of(DIMM_SIZE))
            .ok_or("no room above the map")?;
        let vmem_base = dimm_base + DIMM_SIZE;
        let rom = mem
            .iter()
            .position(|r| r.kind == "rom" && r.end < 0x10_0000);
        let n = mem.len() as u32;
        let ids = Ids {
            bar: n,
            dimm: n + 1,
            vmem: n + 2,
            rom_as_ram: n + 3,
        };
        Ok(Machine {
            name,
            mem,
            io,
            bar_base,
            dimm_base,
            vmem_base,
            rom,
            ids,
        })
    }

    fn region_name(&self, id: u32) -> &str {
        match id {
            i if i == self.ids.bar => "moving-bar",
            i if i == self.ids.dimm => "dimm0",
            i if i == self.ids.vmem => "virtio-mem0",
            i if i == self.ids.rom_as_ram => "shadow-ram",
            i => &self.mem[i as usize].name,
        }
    }

    fn bar(&self, slot: u64) -> (u64, u64) {
        let s = self.bar_base + slot * BAR_STRIDE;
        (s, s + BAR_SIZE - 1)
    }

    fn build(&self, map: &PhysMap<Val>, io: &PhysMap<Val>) {
        // Each flat range is a section whose value names the range and its region offset.
        let flat = |ranges: &[FlatRange]| -> Vec<(std::ops::RangeInclusive<u64>, Val)> {
            let val = |i: usize, r: &FlatRange| Val {
                id: i as u32,
                base: r.offset,
            };
            ranges
                .iter()
                .enumerate()
                .map(|(i, r)| (r.start..=r.end, val(i, r)))
                .collect()
        };
        let mut t = map.transaction();
        t.extend(flat(&self.mem))
            .expect("flat ranges do not overlap");
        self.apply(&mut t, None, Topology::of(1));
        assert_eq!(t.commit().expect("initial map"), 1);
        let mut t = io.transaction();
        t.extend(flat(&self.io))
            .expect("flat ranges do not overlap");
        t.commit().expect("I/O map");
    }

    /// Changes the map from topology `old` (None: nothing dynamic mapped yet) to `new`.
    fn apply(&self, t: &mut Transaction<'_, Val>, old: Option<Topology>, new: Topology) {
        let ids = self.ids;
        if old.map(|o| o.bar_slot) != Some(new.bar_slot) {
            if let Some(o) = old {
                let (s, e) = self.bar(o.bar_slot);
                t.remove(s..=e).unwrap();
            }
            let (s, e) = self.bar(new.bar_slot);
            t.insert(
                s..=e,
                Val {
                    id: ids.bar,
                    base: 0,
                },
            )
            .unwrap();
        }
        if old.map(|o| o.dimm) != Some(new.dimm) {
            let range = self.dimm_base..self.dimm_base + DIMM_SIZE;
            if new.dimm {
                // overwrite, not insert: `--inject-fault` may have left something there.
                t.overwrite(
                    range,
                    Val {
                        id: ids.dimm,
                        base: 0,
                    },
                )
                .unwrap();
            } else {
                t.remove(range).unwrap();
            }
        }
        let before = old.map_or(0, |o| o.vmem);
        for k in 0..VMEM_BLOCKS {
            let (was, is) = (before >> k & 1 == 1, new.vmem >> k & 1 == 1);
            if was != is {
                let s = self.vmem_base + k * VMEM_BLOCK;
                if is {
                    t.insert(
                        s..s + VMEM_BLOCK,
                        Val {
                            id: ids.vmem,
                            base: k * VMEM_BLOCK,
                        },
                    )
                    .unwrap();
                } else {
                    t.remove(s..s + VMEM_BLOCK).unwrap();
                }
            }
        }
        if let Some(i) = self.rom {
            if old.map(|o| o.rom_as_ram) != Some(new.rom_as_ram) {
                let r = &self.mem[i];
                let val = if new.rom_as_ram {
                    Val {
                        id: ids.rom_as_ram,
                        base: r.offset,
                    }
                } else {
                    Val {
                        id: i as u32,
                        base: r.offset,
                    }
                };
                t.overwrite(r.start..=r.end, val).unwrap();
            }
        }
    }

    /// What generation `g` must answer for memory address `a`: (region, region offset).
    fn expected_mem(&self, g: u64, a: u64) -> Option<(u32, u64)> {
        let topo = Topology::of(g);
        let (bs, be) = self.bar(topo.bar_slot);
        if (bs..=be).contains(&a) {
            return Some((self.ids.bar, a - bs));
        }
        if topo.dimm && (self.dimm_base..self.dimm_base + DIMM_SIZE).contains(&a) {
            return Some((self.ids.dimm, a - self.dimm_base));
        }
        if (self.vmem_base..self.vmem_base + VMEM_BLOCKS * VMEM_BLOCK).contains(&a) {
            let k = (a - self.vmem_base) / VMEM_BLOCK;
            return (topo.vmem >> k & 1 == 1).then_some((self.ids.vmem, a - self.vmem_base));
        }
        if let Some(i) = self.rom {
            let r = &self.mem[i];
            if topo.rom_as_ram && (r.start..=r.end).contains(&a) {
                return Some((self.ids.rom_as_ram, a - r.start + r.offset));
            }
        }
        find(&self.mem, a)
    }

    /// Addresses a vCPU will look up, drawn like exits: mostly RAM, some MMIO, some port I/O.
    fn workload(&self, seed: u64, n: usize) -> Vec<(bool, u64)> {
        let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let ram: Vec<&FlatRange> = self
            .mem
            .iter()
            .filter(|r| r.kind == "ram" || r.kind == "rom")
            .collect();
        let big = ram.iter().max_by_key(|r| r.end - r.start).copied();
        let mmio: Vec<&FlatRange> = self.mem.iter().filter(|r| r.kind == "i/o").collect();
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            let pick = next() % 100;
            let r = next();
            let within = |s: u64, e: u64| s + r % (e - s + 1).max(1);
            let item = match pick {
                0..=54 => big.map(|b| (false, within(b.start, b.end))),
                55..=64 => Some((
                    false,
                    within(self.dimm_base, self.dimm_base + DIMM_SIZE - 1),
                )),
                65..=74 => Some((
                    false,
                    within(
                        self.vmem_base,
                        self.vmem_base + VMEM_BLOCKS * VMEM_BLOCK - 1,
                    ),
                )),
                75..=79 => ram
                    .get(r as usize % ram.len().max(1))
                    .map(|x| (false, within(x.start, x.end))),
                80..=86 => Some((
                    false,
                    within(self.bar_base, self.bar_base + BAR_SLOTS * BAR_STRIDE - 1),
                )),
                87..=94 => mmio
                    .get(r as usize % mmio.len().max(1))
                    .map(|x| (false, within(x.start, x.end))),
                _ => self
                    .io
                    .get(r as usize % self.io.len().max(1))
                    .map(|x| (true, within(x.start, x.end))),
            };
            out.extend(item);
        }
        out
    }
}

fn find(ranges: &[FlatRange], a: u64) -> Option<(u32, u64)> {
    ranges
        .iter()
        .position(|r| r.start <= a && a <= r.end)
        .map(|i| (i as u32, a - ranges[i].start + ranges[i].offset))
}

#[derive(Default)]
struct VcpuReport {
    lookups: u64,
    busy: Duration,
    generations_seen: u64,
    last_generation: u64,
    mismatches: u64,
    first_mismatch: Option<String>,
}

/// One per vCPU, padded so that progress counters do not share a cache line.
#[repr(align(128))]
#[derive(Default)]
struct Progress(AtomicU64);

const BATCH: usize = 1024;

fn vcpu(
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
            *slot = if is_io {
                let r = io_r
                    .lookup(a)
                    .map(|h| (h.value.id, h.offset + h.value.base));
                (io_r.last_generation(), r)
            } else {
                let r = mem_r
                    .lookup(a)
                    .map(|h| (h.value.id, h.offset + h.value.base));
                (mem_r.last_generation(), r)
            };
        }
        rep.busy += t0.elapsed();
        // Check the batch (outside the timed part).
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

/// A tree's size for `--json`.
fn tree_json(s: &physmap::Stats) -> Json {
    Json::obj()
        .num("nodes", s.nodes as u64)
        .num("subpage_tables", s.subpage_tables as u64)
        .num("pieces", s.pieces as u64)
        .num("bytes", s.bytes as u64)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

pub(crate) fn run(args: SimArgs) -> Result<i32, String> {
    if !(args.seconds > 0.0 && args.seconds <= 86_400.0) {
        return Err(format!("--seconds {} must be in (0, 86400]", args.seconds));
    }
    let vcpus = args
        .vcpus
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
    if vcpus == 0 || vcpus > 4096 {
        return Err(format!("--vcpus {vcpus} must be in 1..=4096"));
    }
    let m = Machine::load(args.machine.as_ref())?;
    let mem: PhysMap<Val> = PhysMap::new();
    let io: PhysMap<Val> = PhysMap::new();
    m.build(&mem, &io);
    let stop = AtomicBool::new(false);
    let progress: Vec<Progress> = (0..vcpus).map(|_| Progress::default()).collect();
    let interval = Duration::from_micros(args.commit_interval_us);
    let show_progress = !args.json && std::io::stderr().is_terminal();
    if !args.json {
        eprintln!(
            "physmap simulate: {} ({} memory ranges, {} I/O ranges), {vcpus} vCPUs, {} s, a commit every {} µs",
            m.name,
            m.mem.len(),
            m.io.len(),
            args.seconds,
            args.commit_interval_us
        );
    }
    let started = Instant::now();
    let (reports, latencies) = std::thread::scope(|s| {
        let handles: Vec<_> = (0..vcpus)
            .map(|id| {
                let (m, mem, io, stop, p) = (&m, &mem, &io, &stop, &progress[id]);
                s.spawn(move || vcpu(m, mem, io, id, stop, p))
            })
            .collect();
        let control = s.spawn(|| {
            let mut lat = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let t0 = Instant::now();
                let mut t = mem.transaction();
                let g = t.base_generation() + 1;
                m.apply(&mut t, Some(Topology::of(g - 1)), Topology::of(g));
                if args.inject_fault && g % 8 == 0 {
                    // A wrong section over the whole DIMM window, undone by the next DIMM change.
                    t.overwrite(
                        m.dimm_base..m.dimm_base + DIMM_SIZE,
                        Val {
                            id: m.ids.bar,
                            base: 0,
                        },
                    )
                    .unwrap();
                }
                t.commit().expect("commit");
                lat.push(t0.elapsed());
                if !interval.is_zero() {
                    std::thread::sleep(interval);
                }
            }
            lat
        });
        let deadline = started + Duration::from_secs_f64(args.seconds);
        let mut last_print = Instant::now();
        let mut last_total = 0u64;
        while Instant::now() < deadline {
            std::thread::sleep(
                Duration::from_millis(50).min(deadline.saturating_duration_since(Instant::now())),
            );
            if show_progress && last_print.elapsed() >= Duration::from_millis(500) {
                let total: u64 = progress.iter().map(|p| p.0.load(Ordering::Relaxed)).sum();
                let rate = (total - last_total) as f64 / last_print.elapsed().as_secs_f64();
                eprint!(
                    "\r  {:5.1} s  generation {:>8}  {:8.1} M lookups/s (incl. checking)   ",
                    started.elapsed().as_secs_f64(),
                    mem.snapshot().generation(),
                    rate / 1e6
                );
                let _ = std::io::stderr().flush();
                last_total = total;
                last_print = Instant::now();
            }
        }
        stop.store(true, Ordering::Relaxed);
        let reports: Vec<VcpuReport> = handles
            .into_iter()
            .map(|h| h.join().expect("vCPU thread"))
            .collect();
        (reports, control.join().expect("control plane thread"))
    });
    let wall = started.elapsed().as_secs_f64();
    if show_progress {
        eprintln!();
    }
    let mut lat = latencies;
    lat.sort();
    let (p50, p99) = (percentile(&lat, 0.50), percentile(&lat, 0.99));
    let total_lookups: u64 = reports.iter().map(|r| r.lookups).sum();
    let mismatches: u64 = reports.iter().map(|r| r.mismatches).sum();
    let mem_snap = mem.snapshot();
    let ms = mem_snap.stats();
    let is = io.snapshot().stats();
    let rate = |r: &VcpuReport| r.lookups as f64 / r.busy.as_secs_f64().max(1e-9);
    let total_rate: f64 = reports.iter().map(rate).sum();
    if args.json {
        let out = Json::obj()
            .str_field("machine", &m.name)
            .num("vcpus", vcpus as u64)
            .float("seconds", wall)
            .arr(
                "per_vcpu",
                reports
                    .iter()
                    .enumerate()
                    .map(|(i, r)| {
                        Json::obj()
                            .num("vcpu", i as u64)
                            .num("lookups", r.lookups)
                            .float("lookups_per_second", rate(r))
                            .float("ns_per_lookup", 1e9 / rate(r))
                            .num("generations_seen", r.generations_seen)
                            .num("mismatches", r.mismatches)
                    })
                    .collect(),
            )
            .num("lookups", total_lookups)
            .float("lookups_per_second", total_rate)
            .num("commits", lat.len() as u64)
            .float("commit_p50_us", p50.as_secs_f64() * 1e6)
            .float("commit_p99_us", p99.as_secs_f64() * 1e6)
            .num("generation", mem_snap.generation())
            .field("memory_map", tree_json(&ms))
            .field("io_map", tree_json(&is))
            .num("mismatches", mismatches);
        println!("{out}");
    } else {
        println!(
            "{:>6} {:>14} {:>12} {:>10} {:>17} {:>11}",
            "vCPU", "lookups", "M lookups/s", "ns/lookup", "generations seen", "mismatches"
        );
        for (i, r) in reports.iter().enumerate() {
            println!(
                "{i:>6} {:>14} {:>12.1} {:>10.1} {:>17} {:>11}",
                r.lookups,
                rate(r) / 1e6,
                1e9 / rate(r),
                r.generations_seen,
                r.mismatches
            );
        }
        println!(
            "{:>6} {:>14} {:>12.1} {:>10.1} {:>17} {:>11}",
            "total",
            total_lookups,
            total_rate / 1e6,
            1e9 * vcpus as f64 / total_rate,
            "",
            mismatches
        );
        println!("(rates count time inside lookup batches; checking every answer is done between batches)");
        println!(
            "control plane: {} commits in {wall:.1} s, commit latency p50 {:.1} µs, p99 {:.1} µs; newest generation {}",
            lat.len(),
            p50.as_secs_f64() * 1e6,
            p99.as_secs_f64() * 1e6,
            mem_snap.generation()
        );
        println!(
            "memory map: {} nodes, {} sub-page tables, {} pieces, {} bytes; I/O map: {} nodes, {} sub-page tables, {} pieces, {} bytes",
            ms.nodes, ms.subpage_tables, ms.pieces, ms.bytes, is.nodes, is.subpage_tables, is.pieces, is.bytes
        );
    }
    if mismatches > 0 {
        for r in &reports {
            if let Some(msg) = &r.first_mismatch {
                eprintln!("physmap: wrong answer: {msg}");
            }
        }
        eprintln!("physmap: {mismatches} wrong answers");
        return Ok(1);
    }
    Ok(0)
}
