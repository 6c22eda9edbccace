//! Many-thread stress: 32 readers and 2 writers (far more threads than this machine's cores),
//! bounded by operation counts so it ends by itself.
//!
//! The layout of every generation is a deterministic function of the generation number, so
//! each reader checks every answer against the layout of the generation that gave it, and
//! every snapshot (some held for thousands of lookups while the writers commit back to
//! back) against its own generation, when taken and when dropped.

use physmap::{Config, PhysMap, Snapshot};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Barrier;

const READERS: usize = 32;
const WRITERS: usize = 2;
/// Commits per writer; `PHYSMAP_STRESS_COMMITS` lowers it under slow tools (valgrind).
fn commits_per_writer() -> u64 {
    std::env::var("PHYSMAP_STRESS_COMMITS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(400)
}
/// Minimum lookups per reader; `PHYSMAP_STRESS_LOOKUPS` lowers it under TSan and valgrind.
fn lookups_per_reader() -> usize {
    std::env::var("PHYSMAP_STRESS_LOOKUPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(40_000)
}
const REGIONS: usize = 24;

/// (start, end, value) of region `r`, or `None` if unmapped, in every generation.
struct Layouts {
    table: Vec<Vec<Option<(u64, u64, u64)>>>,
}

fn mix(mut x: u64) -> u64 {
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51afd7ed558ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ceb9fe1a85ec53);
    x ^ (x >> 33)
}

/// The window region `r` lives in: low RAM, 2 MiB virtio-mem blocks, BAR-like MMIO,
/// byte-sized registers in one page, and the top of the space.
fn window(r: usize) -> (u64, u64) {
    match r % 6 {
        0 => ((r as u64 + 8) << 32, ((r as u64 + 8) << 32) + (1 << 30) - 1),
        1 => (
            0x1_0000_0000 + (r as u64) * (2 << 20),
            0x1_0000_0000 + (r as u64 + 1) * (2 << 20) - 1,
        ),
        2 => (
            0xfe00_0000 + (r as u64) * 0x4000,
            0xfe00_0000 + (r as u64) * 0x4000 + 0x3fff,
        ),
        3 => (
            0xfed0_0000 + (r as u64) * 0x10,
            0xfed0_0000 + (r as u64) * 0x10 + 0xf,
        ),
        4 => (0xcf8 + r as u64, 0xcf8 + r as u64),
        _ => (
            u64::MAX - (r as u64 + 1) * 0x1000 + 1,
            u64::MAX - (r as u64) * 0x1000,
        ),
    }
}

impl Layouts {
    fn new(generations: u64) -> Self {
        for a in 0..REGIONS {
            for b in 0..a {
                let (x, y) = (window(a), window(b));
                assert!(x.1 < y.0 || y.1 < x.0, "windows {a} and {b} overlap");
            }
        }
        let mut table = vec![vec![None; REGIONS]];
        for g in 1..=generations {
            let mut next = table[(g - 1) as usize].clone();
            for (r, slot) in next.iter_mut().enumerate() {
                let h = mix(g * 1000 + r as u64);
                if h % 3 != 0 {
                    continue;
                }
                let (ws, we) = window(r);
                let len = we - ws + 1;
                *slot = match (h >> 8) % 4 {
                    0 => None,
                    1 => Some((ws, we, g)),
                    2 => Some((ws, ws + (len / 2).max(1) - 1, g)),
                    _ => Some((ws + len / 4, we, g)),
                };
            }
            table.push(next);
        }
        Layouts { table }
    }

    fn expected(&self, g: u64, addr: u64) -> Option<u64> {
        self.table[g as usize]
            .iter()
            .flatten()
            .find(|&&(s, e, _)| s <= addr && addr <= e)
            .map(|&(_, _, v)| v)
    }

    fn probes(&self) -> Vec<u64> {
        let mut v = Vec::new();
        for r in 0..REGIONS {
            let (s, e) = window(r);
            let len = e - s + 1;
            for a in [
                s,
                s + len / 4,
                s + len / 2,
                e,
                s.wrapping_sub(1),
                e.wrapping_add(1),
            ] {
                v.push(a);
                v.push(a.saturating_sub(1));
            }
        }
        v
    }
}

#[test]
fn readers_never_see_a_torn_or_stale_map() {
    stress(Config::default());
}

/// The same with flat nodes: their blocks are published, read and reclaimed like tables.
#[test]
fn readers_never_see_a_torn_or_stale_map_with_flat_nodes() {
    stress(Config {
        flat_nodes: true,
        ..Config::default()
    });
}

fn stress(config: Config) {
    let (commits, min_lookups) = (commits_per_writer(), lookups_per_reader());
    let total = WRITERS as u64 * commits;
    let layouts = Layouts::new(total);
    let probes = layouts.probes();
    let map: PhysMap<u64> = PhysMap::with_config(config.clone()).unwrap();
    let mismatches = AtomicU64::new(0);
    let lookups = AtomicU64::new(0);
    let snapshots_checked = AtomicU64::new(0);
    let start = Barrier::new(READERS + WRITERS);
    let writers_left = AtomicU64::new(WRITERS as u64);
    let generation_changes = AtomicU64::new(0);

    let synchronized = AtomicU64::new(0);
    let offline_spells = AtomicU64::new(0);
    std::thread::scope(|s| {
        for w in 0..WRITERS {
            let (map, synchronized) = (&map, &synchronized);
            let (layouts, start, writers_left) = (&layouts, &start, &writers_left);
            s.spawn(move || {
                start.wait();
                for c in 0..commits {
                    if w == 0 && (c % 64 == 63 || c == commits / 2) {
                        // Every reader is looking up or offline: they all get past.
                        let ok = map.synchronize_timeout(std::time::Duration::from_secs(30));
                        assert!(ok, "synchronize timed out");
                        synchronized.fetch_add(1, Ordering::Relaxed);
                    }
                    let mut t = map.transaction();
                    let g = t.base_generation();
                    let (old, new) = (&layouts.table[g as usize], &layouts.table[g as usize + 1]);
                    for r in 0..REGIONS {
                        if old[r] == new[r] {
                            continue;
                        }
                        let (ws, we) = window(r);
                        t.remove(ws..=we).unwrap();
                        if let Some((a, b, v)) = new[r] {
                            t.insert(a..=b, v).unwrap();
                        }
                    }
                    assert_eq!(t.commit().unwrap(), g + 1);
                }
                writers_left.fetch_sub(1, Ordering::Release);
            });
        }
        for id in 0..READERS {
            let (map, layouts, probes) = (&map, &layouts, &probes);
            let (mismatches, lookups, snapshots_checked) =
                (&mismatches, &lookups, &snapshots_checked);
            let offline_spells = &offline_spells;
            let (start, writers_left, generation_changes) =
                (&start, &writers_left, &generation_changes);
            s.spawn(move || {
                start.wait();
                let mut reader = map.reader();
                let mut bad = 0;
                let mut last_gen = 0;
                let mut i = id * 7;
                let mut done = 0;
                let mut changes = 0;
                // Snapshots held at random ages (up to 4 at a time), each checked whole
                // when taken and again when dropped: reclamation must not reuse anything
                // they reach meanwhile, however old they get.
                let mut held: Vec<(Snapshot<u64>, usize)> = Vec::new();
                let whole = |snap: &Snapshot<u64>| {
                    let g = snap.generation();
                    let mut bad = 0;
                    for &a in probes.iter() {
                        bad += (snap.lookup(a).map(|h| *h.value) != layouts.expected(g, a)) as u64;
                    }
                    let mut want: Vec<_> = layouts.table[g as usize]
                        .iter()
                        .flatten()
                        .copied()
                        .collect();
                    want.sort();
                    let got: Vec<_> = snap
                        .iter()
                        .map(|(r, v)| (*r.start(), *r.end(), *v))
                        .collect();
                    bad + (got != want) as u64
                };
                // Readers run for at least `min_lookups` lookups and until both writers
                // are done, so they overlap the whole write phase; both bounds are finite.
                while done < min_lookups || writers_left.load(Ordering::Acquire) > 0 {
                    if id % 4 == 0 && done % 1000 == 0 {
                        // Snapshot path: a whole generation, every probe and the iteration.
                        let snap = map.snapshot();
                        bad += whole(&snap);
                        snapshots_checked.fetch_add(1, Ordering::Relaxed);
                        if held.len() < 4 {
                            let age = (mix(done as u64 ^ id as u64) % 20_000) as usize;
                            held.push((snap, done + age));
                        }
                        held.retain(|(snap, until)| {
                            let keep = *until > done;
                            if !keep {
                                bad += whole(snap);
                                snapshots_checked.fetch_add(1, Ordering::Relaxed);
                            }
                            keep
                        });
                        done += probes.len();
                        continue;
                    }
                    let a = probes[i % probes.len()];
                    i = i.wrapping_mul(31).wrapping_add(17);
                    if id % 4 == 1 && i % 61 == 0 {
                        // A vCPU that halts or enters the guest: offline for a while; its
                        // next lookup goes online again by itself.
                        reader.offline();
                        offline_spells.fetch_add(1, Ordering::Relaxed);
                        if i % 7 == 0 {
                            std::thread::yield_now();
                        }
                    }
                    let got = reader.lookup(a).map(|h| (*h.value, h.offset));
                    let g = reader.last_generation();
                    if g < last_gen {
                        bad += 1; // generations must never go backwards
                    }
                    changes += (g != last_gen) as u64;
                    last_gen = g;
                    let want = layouts.expected(g, a).map(|v| {
                        let (s, _, _) = layouts.table[g as usize]
                            .iter()
                            .flatten()
                            .find(|p| p.2 == v && p.0 <= a && a <= p.1)
                            .unwrap();
                        (v, a - s)
                    });
                    bad += (got != want) as u64;
                    done += 1;
                }
                for (snap, _) in held.drain(..) {
                    bad += whole(&snap);
                }
                mismatches.fetch_add(bad, Ordering::Relaxed);
                generation_changes.fetch_add(changes, Ordering::Relaxed);
                lookups.fetch_add(done as u64, Ordering::Relaxed);
            });
        }
    });

    let mismatches = mismatches.into_inner();
    let lookups = lookups.into_inner();
    eprintln!(
        "stress: {READERS} readers, {WRITERS} writers, {total} commits, {lookups} lookups, {} snapshots checked, {} generation changes seen by readers, {} offline spells, {} synchronizes, {mismatches} mismatches",
        snapshots_checked.into_inner(),
        generation_changes.load(Ordering::Relaxed),
        offline_spells.load(Ordering::Relaxed),
        synchronized.load(Ordering::Relaxed),
    );
    assert!(offline_spells.into_inner() > 0 && synchronized.into_inner() > 0);
    assert!(
        generation_changes.into_inner() > READERS as u64,
        "readers did overlap the writers"
    );
    assert_eq!(mismatches, 0);
    let snap = map.snapshot();
    assert_eq!(snap.generation(), total);

    // Every reader and snapshot is gone: the arena holds exactly a freshly built tree of the
    // same mapping.
    let fresh: PhysMap<u64> = PhysMap::with_config(config).unwrap();
    let mut t = fresh.transaction();
    for &(s, e, v) in layouts.table[total as usize].iter().flatten() {
        t.insert(s..=e, v).unwrap();
    }
    t.commit().unwrap();
    let want = fresh.snapshot().stats();
    let got = snap.stats();
    assert_eq!(
        (
            got.nodes,
            got.flat_nodes,
            got.subpage_tables,
            got.pieces,
            got.bytes
        ),
        (
            want.nodes,
            want.flat_nodes,
            want.subpage_tables,
            want.pieces,
            want.bytes
        )
    );
    drop(snap);
    assert_eq!(map.memory().live_bytes, want.bytes);
}
