//! Bounded garbage: a held snapshot, or a reader idle online, costs what its own generation's
//! tree holds, however many commits follow (interval-based reclamation, `src/reclaim.rs`).
//!
//! The map is q35-like (RAM below and above 4 GiB, 200 small MMIO ranges); each commit
//! remaps one page (a page conversion, a one-page device moving), 20,000 times. Bound:
//! `live_bytes` at most twice the held trees plus the newest tree, plus 64 KiB.

use physmap::{PhysMap, Snapshot};

const COMMITS: u64 = 20_000;
const SLACK: usize = 64 << 10;

fn q35_like() -> PhysMap<u64> {
    let map = PhysMap::new();
    let mut t = map.transaction();
    t.insert(0..0x8000_0000, 1).unwrap();
    t.insert(0x1_0000_0000..0x2_8000_0000, 2).unwrap();
    for i in 0..200u64 {
        let s = 0xfe00_0000 + i * 0x1000 + (i % 7) * 0x100;
        t.insert(s..s + 0x80, 100 + i).unwrap();
    }
    t.commit().unwrap();
    map
}

fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 31)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    x ^ (x >> 29)
}

/// Commit `i`: one page of RAM (among 4096) gets a section of its own.
fn one_page_commit(map: &PhysMap<u64>, i: u64) {
    let page = 0x4000_0000 + (mix(i) % 4096) * 0x1000;
    let mut t = map.transaction();
    t.overwrite(page..page + 0x1000, 1000 + i).unwrap();
    t.commit().unwrap();
}

/// `live_bytes` against the bound, given the bytes of the trees held meanwhile.
fn check_bound(map: &PhysMap<u64>, held: usize, when: &str) -> usize {
    let live = map.memory().live_bytes;
    let newest = map.snapshot().stats().bytes;
    let bound = 2 * (held + newest) + SLACK;
    eprintln!("{when}: live {live} bytes, held trees {held}, newest {newest}, bound {bound}");
    assert!(
        live <= bound,
        "{when}: live {live} bytes > 2 x (held {held} + newest {newest}) + 64 KiB"
    );
    live
}

/// Every snapshot still answers from its own generation (what the bound must not cost).
fn still_whole(snap: &Snapshot<u64>) {
    let g = snap.generation();
    let pieces = snap.iter().count();
    assert!(pieces >= 202, "generation {g}: {pieces} pieces");
    assert_eq!(snap.lookup(0x10_0000).map(|h| *h.value), Some(1));
    for p in snap.iter().filter(|(_, &v)| v >= 1000) {
        assert!(
            *p.1 - 1000 < g,
            "generation {g} holds a piece of a later commit"
        );
    }
}

#[test]
fn one_held_snapshot_costs_one_tree() {
    let map = q35_like();
    let held = map.snapshot();
    let held_bytes = held.stats().bytes;
    for i in 0..COMMITS {
        one_page_commit(&map, i);
        if i % 2500 == 2499 {
            check_bound(&map, held_bytes, &format!("after {} commits", i + 1));
        }
    }
    let mem = map.memory();
    assert_eq!(mem.pinned_generations, 1, "{mem:?}");
    assert!(mem.pinned_bytes <= held_bytes, "{mem:?} vs {held_bytes}");
    still_whole(&held);
    drop(held);
    assert_eq!(map.memory().live_bytes, map.snapshot().stats().bytes);
}

#[test]
fn eight_snapshots_2500_commits_apart_cost_eight_trees() {
    let map = q35_like();
    let mut held = Vec::new();
    let mut held_bytes = 0;
    for i in 0..COMMITS {
        if i % 2500 == 0 {
            let snap = map.snapshot();
            held_bytes += snap.stats().bytes;
            held.push(snap);
        }
        one_page_commit(&map, i);
        if i % 1000 == 999 {
            check_bound(&map, held_bytes, &format!("after {} commits", i + 1));
        }
    }
    let mem = map.memory();
    assert_eq!(mem.pinned_generations, 8, "{mem:?}");
    assert!(mem.pinned_bytes <= held_bytes, "{mem:?} vs {held_bytes}");
    for snap in &held {
        still_whole(snap);
    }
    // Dropped one by one, oldest last: each drop gives back what only it held.
    let mut last = map.memory().live_bytes;
    while let Some(snap) = held.pop() {
        drop(snap);
        let live = map.memory().live_bytes;
        assert!(live < last, "{live} vs {last}");
        last = live;
    }
    assert_eq!(last, map.snapshot().stats().bytes);
}

#[test]
fn an_idle_online_reader_costs_one_tree() {
    let map = q35_like();
    let mut vcpu = map.reader();
    assert_eq!(vcpu.lookup(0xfe00_0000).map(|h| *h.value), Some(100));
    let held_bytes = map.snapshot().stats().bytes;
    // The vCPU thread forgot `offline()`: it stays online at its generation.
    for i in 0..COMMITS {
        one_page_commit(&map, i);
        if i % 2500 == 2499 {
            check_bound(&map, held_bytes, &format!("after {} commits", i + 1));
        }
    }
    let mem = map.memory();
    assert_eq!(mem.pinned_generations, 1, "{mem:?}");
    assert!(mem.pinned_bytes <= held_bytes, "{mem:?} vs {held_bytes}");
    assert!(vcpu.is_online());
    assert_eq!(vcpu.last_generation(), 1);
    // Looking up again moves it to the newest generation: back to the newest tree.
    assert_eq!(vcpu.lookup(0x10_0000).map(|h| *h.value), Some(1));
    assert_eq!(map.memory().live_bytes, map.snapshot().stats().bytes);
}

/// A writer committing back to back past a forgotten snapshot no longer runs out of nodes:
/// 100,000 commits of a 2 MiB block (a node each) stay within the bound.
#[test]
fn a_forgotten_snapshot_does_not_exhaust_capacity() {
    let map = q35_like();
    let forgotten = map.snapshot();
    let held_bytes = forgotten.stats().bytes;
    for i in 0..100_000u64 {
        let block = 0x3_0000_0000 + (i % 512) * (2 << 20);
        let mut t = map.transaction();
        t.overwrite(block + 0x1000..block + 0x3000, i).unwrap();
        t.commit().unwrap();
    }
    check_bound(&map, held_bytes, "after 100,000 commits");
    still_whole(&forgotten);
}
