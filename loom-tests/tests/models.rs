//! Loom models of physmap's own publish / read / announce / reclaim / synchronize code.
//!
//! Run with: `RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=3 cargo test -p loom-tests --release`
//!
//! Snapshots (reference-counted) and readers (quiescent-state: they announce the generation
//! they read in a slot of their own) are both modelled; every access to node, piece, row and
//! section cells is tracked, so a slot reused while a reader can still read it is a
//! causality violation.
//!
//! Loom starts each execution on the main thread and, without preemptions, switches only
//! when a thread blocks or ends. So in every model the readers' work is on the main thread
//! (or starts before the writer's) and the writer is spawned: the order loom tries first is
//! the benign one (reads done before the writer runs), and a protocol bug has to be found by
//! preempting a reader mid-way, as it would happen on a real machine
//! (`scripts/loom-mutants.sh` reports the smallest preemption bound that finds each bug).
//!
//! The map under test is tiny (8-bit space, 4-byte pages, 2 bits a level: 3 levels of
//! 4-entry nodes) so that a commit touches few cells, but it has every kind of entry: early
//! leaves, compressed paths, nodes, a sub-page table and a page record.
#![cfg(loom)]

use loom::thread;
use physmap::{Config, PhysMap, Snapshot};
use std::sync::Arc as StdArc;

/// The models' map, with the membarrier protocol (its loom stand-in) unless
/// `PHYSMAP_LOOM_BARRIER=fence`.
fn config() -> Config {
    Config {
        addr_bits: 8,
        page_bits: 2,
        level_bits: 2,
        membarrier: std::env::var("PHYSMAP_LOOM_BARRIER").map_or(true, |v| v != "fence"),
        ..Config::default()
    }
}

/// The mapping the writer publishes as generation `g`, as (start, end, value) pieces.
/// Values carry the generation, so a reader can tell a torn map from a whole one.
fn layout(g: u64) -> Vec<(u64, u64, u64)> {
    match g {
        0 => vec![],
        1 => vec![(0x00, 0x0f, 1), (0x40, 0x41, 1), (0x42, 0x42, 1)],
        2 => vec![(0x00, 0x07, 1), (0x08, 0x47, 2), (0x81, 0x82, 2)],
        3 => vec![(0x08, 0x47, 2), (0x81, 0x81, 3), (0xc0, 0xff, 3)],
        4 => vec![
            (0x10, 0x47, 2),
            (0x81, 0x81, 3),
            (0xc0, 0xc3, 4),
            (0xc4, 0xff, 3),
        ],
        _ => unreachable!(),
    }
}

/// Addresses every check probes.
const PROBES: [u64; 10] = [0x00, 0x07, 0x08, 0x0f, 0x40, 0x42, 0x81, 0x82, 0xc1, 0xc4];

/// Moves the map from generation `g - 1` to `g` in one transaction, with the operations a
/// control plane would use (inserts, overwrites cutting older sections, removes).
fn commit(map: &PhysMap<u64>, g: u64) {
    let mut t = map.transaction();
    match g {
        1 => {
            t.insert(0x00..=0x0f, 1).unwrap();
            t.insert(0x40..=0x41, 1).unwrap();
            t.insert(0x42..=0x42, 1).unwrap();
        }
        2 => {
            t.overwrite(0x08..=0x47, 2).unwrap();
            t.insert(0x81..=0x82, 2).unwrap();
        }
        3 => {
            t.remove(0x00..=0x07).unwrap();
            t.overwrite(0x82..=0x82, 3).unwrap();
            t.remove(0x82..=0x82).unwrap();
            t.overwrite(0x81..=0x81, 3).unwrap();
            t.insert(0xc0..=0xff, 3).unwrap();
        }
        4 => {
            t.remove(0x08..=0x0f).unwrap();
            // One page of `insert_shared`: a page record (in the row array), not a piece.
            t.remove(0xc0..=0xc3).unwrap();
            t.insert_shared(std::iter::once(0xc0..=0xc3), 4).unwrap();
        }
        _ => unreachable!(),
    }
    assert_eq!(t.commit().unwrap(), g);
}

fn expected(g: u64, addr: u64) -> Option<u64> {
    layout(g)
        .into_iter()
        .find(|&(s, e, _)| s <= addr && addr <= e)
        .map(|(_, _, v)| v)
}

/// Every probe of `snap` agrees with the layout of the snapshot's own generation.
fn check_whole(snap: &Snapshot<u64>) {
    let g = snap.generation();
    for a in PROBES {
        assert_eq!(
            snap.lookup(a).map(|h| *h.value),
            expected(g, a),
            "generation {g}, addr {a:#x}"
        );
    }
    let pieces: Vec<_> = snap
        .iter()
        .map(|(r, v)| (*r.start(), *r.end(), *v))
        .collect();
    assert_eq!(pieces, layout(g), "generation {g}");
}

/// Once every reader and snapshot is gone: the arena holds exactly the newest tree and no
/// generation is pinned.
fn assert_back_to_newest_tree(map: &PhysMap<u64>) {
    let mem = map.memory();
    assert_eq!(mem.live_bytes, map.snapshot().stats().bytes);
    assert_eq!(mem.pinned_generations, 0);
}

/// Runs `f` under loom (preemption bound from `LOOM_MAX_PREEMPTIONS`, 3 by default) and
/// reports how many interleavings were explored: each run of `f` is one.
fn model(name: &str, f: impl Fn() + Send + Sync + 'static) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let runs = StdArc::new(AtomicUsize::new(0));
    let counter = runs.clone();
    let mut b = loom::model::Builder::new();
    if b.preemption_bound.is_none() {
        b.preemption_bound = Some(3);
    }
    let bound = b.preemption_bound;
    b.check(move || {
        // Relaxed: a statistic, read after `check` has joined every execution.
        counter.fetch_add(1, Ordering::Relaxed);
        f()
    });
    eprintln!(
        "loom model {name}: {} interleavings explored (preemption bound {bound:?})",
        runs.load(Ordering::Relaxed)
    );
}

/// (1) publish vs read: two readers each take two snapshots while the writer publishes two
/// generations; every snapshot is one whole generation, and each reader's generations never
/// go backwards.
#[test]
fn publish_vs_read() {
    model("publish_vs_read", || {
        let map = StdArc::new(PhysMap::with_config(config()).unwrap());
        commit(&map, 1);
        let m = map.clone();
        let writer = thread::spawn(move || {
            commit(&m, 2);
            commit(&m, 3);
        });
        let m = map.clone();
        let other = thread::spawn(move || {
            let a = m.snapshot();
            check_whole(&a);
            let b = m.snapshot();
            check_whole(&b);
            assert!(a.generation() <= b.generation());
        });
        let a = map.snapshot();
        check_whole(&a);
        let b = map.snapshot();
        check_whole(&b);
        assert!(a.generation() <= b.generation());
        writer.join().unwrap();
        other.join().unwrap();
        check_whole(&map.snapshot());
        assert_eq!(map.snapshot().generation(), 3);
    });
}

/// (2) `Reader` refresh racing two commits: every answer matches the generation the reader
/// reports, generations never go backwards, and once the commits have returned the reader
/// answers from the newest. Repeated lookups make the reader try its remembered piece, which
/// must be forgotten when the generation changes.
#[test]
fn reader_refresh_vs_commit() {
    model("reader_refresh_vs_commit", || {
        let map = StdArc::new(PhysMap::with_config(config()).unwrap());
        commit(&map, 1);
        let mut r = map.reader();
        let m = map.clone();
        let writer = thread::spawn(move || {
            commit(&m, 2);
            commit(&m, 3);
        });
        let mut last = 0;
        for a in [0x81u64, 0x81, 0x81, 0x08, 0x81, 0x07] {
            let v = r.lookup(a).map(|h| *h.value);
            let g = r.last_generation();
            assert!(g >= last, "generation went back from {last} to {g}");
            last = g;
            assert_eq!(v, expected(g, a), "generation {g}, addr {a:#x}");
        }
        writer.join().unwrap();
        for _ in 0..3 {
            assert_eq!(r.lookup(0x81).map(|h| *h.value), Some(3));
        }
        assert_eq!(r.refresh(), 3);
        assert_eq!(r.lookup(0x07).map(|h| *h.value), None);
    });
}

/// (3) reclamation: a snapshot of generation 1 checked and then dropped, a `Reader`
/// following the commits on another thread, while the writer commits three times and reuses
/// the slots the first commits retired. Loom checks every access to node, piece, table and
/// section cells (no read may race a reuse); at the end the arena holds exactly the newest
/// tree.
#[test]
fn reclaim_vs_reuse() {
    model("reclaim_vs_reuse", || {
        let map = StdArc::new(PhysMap::with_config(config()).unwrap());
        commit(&map, 1);
        let old = map.snapshot();
        let mut r = map.reader();
        let m = map.clone();
        let writer = thread::spawn(move || {
            commit(&m, 2);
            commit(&m, 3);
            commit(&m, 4);
        });
        let follower = thread::spawn(move || {
            for a in [0x40u64, 0xc1] {
                let v = r.lookup(a).map(|h| *h.value);
                assert_eq!(v, expected(r.last_generation(), a), "addr {a:#x}");
            }
            drop(r);
        });
        check_whole(&old);
        drop(old);
        writer.join().unwrap();
        follower.join().unwrap();
        let snap = map.snapshot();
        check_whole(&snap);
        let mem = map.memory();
        let stats = snap.stats();
        assert_eq!(mem.live_bytes, stats.bytes, "{mem:?} {stats:?}");
        assert_eq!(
            (mem.nodes, mem.pieces, mem.sections),
            (stats.nodes, stats.pieces, stats.sections)
        );
        assert_eq!(stats.pieces, layout(4).len());
    });
}

/// (3b) a reader that leaves an old generation by going offline, racing two commits: the
/// writer reuses what it read only after it left (every cell access is tracked), and once it
/// is gone the arena holds exactly the newest tree.
#[test]
fn reader_drops_last_old_generation() {
    model("reader_drops_last_old_generation", || {
        let map = StdArc::new(PhysMap::with_config(config()).unwrap());
        commit(&map, 1);
        let mut r = map.reader();
        assert_eq!(r.lookup(0x40).map(|h| *h.value), Some(1));
        let m = map.clone();
        let writer = thread::spawn(move || {
            commit(&m, 2);
            commit(&m, 3);
        });
        for a in [0x40u64, 0x08] {
            let v = r.lookup(a).map(|h| *h.value);
            assert_eq!(v, expected(r.last_generation(), a));
        }
        r.offline();
        drop(r);
        writer.join().unwrap();
        let mem = map.memory();
        assert_eq!(mem.live_bytes, map.snapshot().stats().bytes);
    });
}

/// (4) a writer that abandons a transaction mid-way, racing readers: nothing it did is ever
/// seen, and the next writer proceeds. Loom treats any panic as a failed model, so the
/// writer drops the transaction instead: that is exactly what unwinding does (the
/// transaction's `Drop` rolls back and the lock is released). A real panic on a real thread
/// is exercised in `tests/core.rs` and `tests/panics.rs`.
#[test]
fn panicking_writer_vs_readers() {
    model("panicking_writer_vs_readers", || {
        let map = StdArc::new(PhysMap::with_config(config()).unwrap());
        commit(&map, 1);
        let mut r = map.reader();
        let mut r2 = map.reader();
        let m = map.clone();
        let writer = thread::spawn(move || {
            let mut t = m.transaction();
            t.overwrite(0x00..=0xff, 99).unwrap();
            t.remove(0x40..=0x4f).unwrap();
            drop(t); // as unwinding would
            commit(&m, 2);
        });
        let other = thread::spawn(move || {
            for a in [0x40u64, 0x08, 0x81] {
                let v = r2.lookup(a).map(|h| *h.value);
                assert_ne!(v, Some(99));
                assert_eq!(v, expected(r2.last_generation(), a));
            }
        });
        for a in [0x00u64, 0x40, 0x82] {
            let v = r.lookup(a).map(|h| *h.value);
            assert_ne!(v, Some(99));
            assert_eq!(v, expected(r.last_generation(), a));
        }
        writer.join().unwrap();
        other.join().unwrap();
        check_whole(&map.snapshot());
        assert_eq!(map.snapshot().generation(), 2);
    });
}

/// (3c) reclamation order: slots that generation 1 shares with generation 2 and that commit 3
/// retires must not be reused while a reader still holds generation 1, even though nobody
/// holds generation 2 any more.
#[test]
fn reclaim_in_order_past_a_held_generation() {
    model("reclaim_in_order_past_a_held_generation", || {
        let map = StdArc::new(PhysMap::with_config(config()).unwrap());
        let mut t = map.transaction();
        t.insert(0x00..=0x01, 1).unwrap(); // two pieces in page 0: a sub-page table
        t.insert(0x02..=0x03, 1).unwrap();
        t.insert(0x80..=0x83, 1).unwrap();
        t.commit().unwrap();
        let old = map.snapshot();
        let mut r = map.reader();
        let m = map.clone();
        // Commit 2 leaves page 0's subtree shared with generation 1; commit 3 retires it;
        // commit 4 allocates again.
        let writer = thread::spawn(move || {
            for (g, range) in [(2u64, 0x80..=0x83u64), (3, 0x00..=0x01), (4, 0x40..=0x41)] {
                let mut t = m.transaction();
                t.overwrite(range, g).unwrap();
                t.commit().unwrap();
            }
        });
        // A `Reader` that follows the commits meanwhile, dropping each generation it leaves.
        let follower = thread::spawn(move || {
            for a in [0x00u64, 0x80, 0x40] {
                let g = r.refresh();
                let v = r.lookup(a).map(|h| *h.value);
                assert!(r.last_generation() >= g);
                if v.is_some() {
                    assert!(v <= Some(r.last_generation()), "addr {a:#x}");
                }
            }
        });
        for a in [0x00u64, 0x02, 0x80] {
            assert_eq!(old.lookup(a).map(|h| *h.value), Some(1), "addr {a:#x}");
        }
        drop(old);
        writer.join().unwrap();
        follower.join().unwrap();
        assert_back_to_newest_tree(&map);
    });
}

// ----- Quiescent-state readers (`qsbr.rs`).

/// (5) announce vs reclaim: a reader keeps looking up while the writer commits three times,
/// each transaction reclaiming what the readers moved past. No cell the reader reads is
/// reused under it; every answer is its generation's; memory returns to the newest tree.
#[test]
fn announce_vs_reclaim() {
    model("announce_vs_reclaim", || {
        let map = StdArc::new(PhysMap::with_config(config()).unwrap());
        commit(&map, 1);
        let mut r = map.reader();
        let m = map.clone();
        let writer = thread::spawn(move || {
            commit(&m, 2);
            commit(&m, 3);
            commit(&m, 4);
        });
        for a in [0x40u64, 0x08, 0x81, 0xc1] {
            let v = r.lookup(a).map(|h| *h.value);
            assert_eq!(v, expected(r.last_generation(), a), "addr {a:#x}");
        }
        writer.join().unwrap();
        assert_eq!(r.lookup(0xc1).map(|h| *h.value), Some(4));
        drop(r);
        assert_back_to_newest_tree(&map);
    });
}

/// (6) offline / online vs reclaim: a reader goes offline and back online (by looking up)
/// while the writer commits and reclaims: going online must not pick a generation whose
/// garbage the writer is freeing.
#[test]
fn offline_online_vs_reclaim() {
    model("offline_online_vs_reclaim", || {
        let map = StdArc::new(PhysMap::with_config(config()).unwrap());
        commit(&map, 1);
        let mut r = map.reader();
        assert_eq!(r.lookup(0x00).map(|h| *h.value), Some(1));
        r.offline();
        let m = map.clone();
        let writer = thread::spawn(move || {
            commit(&m, 2);
            commit(&m, 3);
        });
        for a in [0x40u64, 0x08] {
            let v = r.lookup(a).map(|h| *h.value);
            assert_eq!(v, expected(r.last_generation(), a), "addr {a:#x}");
            r.offline();
            assert!(!r.is_online());
        }
        writer.join().unwrap();
        let mem = map.memory();
        assert_eq!(
            mem.live_bytes,
            map.snapshot().stats().bytes,
            "offline readers pin nothing: {mem:?}"
        );
        drop(r);
    });
}

/// (7) synchronize vs a reader mid-lookup: the writer unmaps a device, synchronizes, then
/// tears the device down (writes its state); a reader that found the device reads its state
/// while it holds the `Hit`. If `synchronize` returned while the reader could still hold a
/// `Hit` from the older generation, the teardown would race the read (a causality
/// violation loom reports).
#[test]
fn synchronize_vs_reader_mid_lookup() {
    use loom::cell::UnsafeCell;
    model("synchronize_vs_reader_mid_lookup", || {
        let map = StdArc::new(PhysMap::with_config(config()).unwrap());
        let mut t = map.transaction();
        t.insert(0x40..=0x47, 7u64).unwrap();
        t.insert(0x80..=0x87, 8u64).unwrap();
        t.commit().unwrap();
        #[allow(clippy::arc_with_non_send_sync)] // loom cells are shared by design
        let device = StdArc::new(UnsafeCell::new(1u64)); // 1: alive
        let mut r = map.reader();
        let (m, d) = (map.clone(), device.clone());
        let writer = thread::spawn(move || {
            let mut t = m.transaction();
            t.remove(0x40..=0x47).unwrap();
            t.commit().unwrap();
            m.synchronize();
            // Tear the device down: nobody may be reading it any more.
            d.with_mut(|p| unsafe { *p = 0 });
        });
        for a in [0x40u64, 0x80, 0x44] {
            if let Some(h) = r.lookup(a) {
                if *h.value == 7 {
                    // Dispatching to the device while holding the hit.
                    assert_eq!(
                        device.with(|p| unsafe { *p }),
                        1,
                        "device used after teardown"
                    );
                }
            }
        }
        r.offline();
        writer.join().unwrap();
        assert_eq!(r.lookup(0x44).map(|h| *h.value), None);
    });
}

/// (8) a reader dropped mid-way: one reader thread looks up and is dropped while the writer
/// commits, synchronizes and reclaims; the dropped reader holds nothing afterwards.
#[test]
fn reader_dropped_mid_way() {
    model("reader_dropped_mid_way", || {
        let map = StdArc::new(PhysMap::with_config(config()).unwrap());
        commit(&map, 1);
        let mut r = map.reader();
        let m = map.clone();
        let writer = thread::spawn(move || {
            commit(&m, 2);
            m.synchronize();
            commit(&m, 3);
        });
        for a in [0x40u64, 0x81] {
            let v = r.lookup(a).map(|h| *h.value);
            assert_eq!(v, expected(r.last_generation(), a), "addr {a:#x}");
        }
        drop(r);
        writer.join().unwrap();
        assert!(map.synchronize_timeout(std::time::Duration::from_secs(1)));
        assert_back_to_newest_tree(&map);
    });
}

/// (9) a reader's remembered piece belongs to its generation: after three lookups in the
/// same piece the reader tries that piece first; a commit that cuts the piece, racing the
/// reader, must make it forget the piece (and the writer may only reuse the piece's slot once
/// the reader moved on).
#[test]
fn reader_forgets_its_piece_on_a_new_generation() {
    model("reader_forgets_its_piece_on_a_new_generation", || {
        let map = StdArc::new(PhysMap::with_config(config()).unwrap());
        commit(&map, 1);
        commit(&map, 2);
        let mut r = map.reader();
        for _ in 0..3 {
            assert_eq!(r.lookup(0x81).map(|h| *h.value), Some(2)); // piece 0x81..=0x82
        }
        let m = map.clone();
        let writer = thread::spawn(move || {
            commit(&m, 3); // 0x82 unmapped, 0x81 now its own piece
            commit(&m, 4);
        });
        for a in [0x82u64, 0x81] {
            let v = r.lookup(a).map(|h| *h.value);
            assert_eq!(v, expected(r.last_generation(), a), "addr {a:#x}");
        }
        writer.join().unwrap();
        assert_eq!(r.lookup(0x82).map(|h| *h.value), None);
        assert_eq!(r.lookup(0x81).map(|h| *h.value), Some(3));
    });
}

/// (10) synchronize vs a reader that keeps going offline and online (as a device bus's
/// vCPUs do around each dispatch): `synchronize` checks each reader once, not all at the
/// same moment, so it must be right that a reader seen offline (or past the target) once
/// never answers from an older generation afterwards. The reader dispatches to a device
/// while holding its `Hit`; the writer unmaps the device, synchronizes and tears it down.
#[test]
fn synchronize_vs_reader_going_offline_and_online() {
    use loom::cell::UnsafeCell;
    model("synchronize_vs_reader_going_offline_and_online", || {
        let map = StdArc::new(PhysMap::with_config(config()).unwrap());
        let mut t = map.transaction();
        t.insert(0x40..=0x47, 7u64).unwrap();
        t.commit().unwrap();
        #[allow(clippy::arc_with_non_send_sync)] // loom cells are shared by design
        let device = StdArc::new(UnsafeCell::new(1u64));
        let mut r = map.reader();
        let (m, d) = (map.clone(), device.clone());
        let writer = thread::spawn(move || {
            let mut t = m.transaction();
            t.remove(0x40..=0x47).unwrap();
            t.commit().unwrap();
            m.synchronize();
            d.with_mut(|p| unsafe { *p = 0 });
        });
        for _ in 0..2 {
            if let Some(h) = r.lookup(0x44) {
                assert_eq!(*h.value, 7);
                assert_eq!(
                    device.with(|p| unsafe { *p }),
                    1,
                    "device used after teardown"
                );
            }
            r.offline();
        }
        writer.join().unwrap();
    });
}

// ----- Interval-based reclamation (`reclaim.rs`).

/// (11) a held snapshot pins only its own tree: a snapshot of generation 2 is read while the
/// writer commits 3 and 4. What generation 3 alone reached (born in 3, retired by 4: the
/// piece 0xc0..=0xff) is freed and its slot reused meanwhile; nothing generation 2 reaches
/// is (every cell access is tracked: a reuse under the snapshot's reads is a causality
/// violation). Afterwards the arena holds exactly generation 2's tree and the newest one
/// (they share no piece), not generation 3's garbage.
#[test]
fn held_snapshot_pins_only_its_own_tree() {
    model("held_snapshot_pins_only_its_own_tree", || {
        let map = StdArc::new(PhysMap::with_config(config()).unwrap());
        commit(&map, 1);
        commit(&map, 2);
        let held = map.snapshot();
        let m = map.clone();
        let writer = thread::spawn(move || {
            commit(&m, 3);
            commit(&m, 4);
        });
        // Another holder: a snapshot taken at a random age and dropped (it may pin 2, 3 or 4
        // for a while).
        let m = map.clone();
        let passer = thread::spawn(move || {
            let snap = m.snapshot();
            check_whole(&snap);
        });
        check_whole(&held);
        writer.join().unwrap();
        passer.join().unwrap();
        check_whole(&held);
        let newest = map.snapshot().stats();
        let mem = map.memory();
        assert_eq!(mem.pinned_generations, 1, "{mem:?}");
        assert_eq!(
            mem.pieces,
            held.stats().pieces + newest.pieces,
            "generation 3's own piece was freed: {mem:?}"
        );
        drop(held);
        assert_back_to_newest_tree(&map);
    });
}

/// (12) an idle online reader pins only its own generation: a reader that found piece
/// 0x81..=0x82 of generation 2 keeps reading its section through the `Hit` while the writer
/// commits 3 (which retires that section) and 4 (which makes a new section, reusing a freed
/// slot). The section the reader reads is not reused under it; what generation 3 alone
/// reached is freed though the reader stays on generation 2.
#[test]
fn idle_reader_pins_only_its_own_generation() {
    model("idle_reader_pins_only_its_own_generation", || {
        let map = StdArc::new(PhysMap::with_config(config()).unwrap());
        commit(&map, 1);
        commit(&map, 2);
        let stats2 = map.snapshot().stats();
        let mut r = map.reader();
        let m = map.clone();
        let hit = r.lookup(0x81).unwrap();
        let writer = thread::spawn(move || {
            commit(&m, 3);
            commit(&m, 4);
        });
        // Another reader follows the commits (its announcements come and go as pins).
        let mut follower = map.reader();
        let other = thread::spawn(move || {
            for a in [0x81u64, 0xc1] {
                let v = follower.lookup(a).map(|h| *h.value);
                assert_eq!(v, expected(follower.last_generation(), a), "addr {a:#x}");
            }
        });
        for _ in 0..2 {
            assert_eq!(*hit.value, 2, "the section under the reader's Hit");
        }
        writer.join().unwrap();
        other.join().unwrap();
        assert_eq!(map.memory().pinned_generations, 1);
        assert_eq!(*hit.value, 2);
        let newest = map.snapshot().stats();
        assert_eq!(map.memory().pieces, stats2.pieces + newest.pieces);
        assert_eq!(r.lookup(0xc1).map(|h| *h.value), Some(4));
        assert_back_to_newest_tree(&map);
    });
}
