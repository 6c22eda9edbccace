//! The core contract: shape, bad input, panics, reclamation.

mod common;

use common::{check, Oracle};
use physmap::{checked_range, Config, Error, PhysMap, Snapshot};
use std::ops::{Bound, RangeBounds};

type BadOp = Box<dyn Fn(&mut physmap::Transaction<'_, u8>) -> Result<(), Error>>;

const TIB: u64 = 1 << 40;

fn nodes_of(build: impl FnOnce(&mut physmap::Transaction<'_, u32>)) -> physmap::Stats {
    let map = PhysMap::new();
    let mut txn = map.transaction();
    build(&mut txn);
    txn.commit().unwrap();
    map.snapshot().stats()
}

#[test]
fn one_tib_of_ram_takes_a_handful_of_nodes() {
    let plain = nodes_of(|t| t.insert(0..TIB, 1).unwrap());
    // A leaf at the root: the README's figure.
    assert_eq!(plain.nodes, 0, "{plain:?}");
    assert_eq!(plain.pieces, 1);
    let holed = nodes_of(|t| {
        t.insert(0..TIB, 1).unwrap();
        t.remove(0xa_0000..0x10_0000).unwrap();
    });
    assert_eq!(holed.nodes, 4, "{holed:?}");
    assert_eq!(
        (holed.pieces, holed.sections, holed.subpage_tables),
        (2, 1, 0)
    );
    // And it still answers correctly around the hole and at the end.
    let map = PhysMap::new();
    let mut t = map.transaction();
    t.insert(0..TIB, "ram").unwrap();
    t.remove(0xa_0000..0x10_0000).unwrap();
    t.commit().unwrap();
    let s = map.snapshot();
    assert_eq!(s.lookup(0x9_ffff).unwrap().range, 0..=0x9_ffff);
    assert!(s.lookup(0xa_0000).is_none());
    assert!(s.lookup(0xf_ffff).is_none());
    let h = s.lookup(TIB - 1).unwrap();
    assert_eq!((h.range, h.offset), (0x10_0000..=TIB - 1, TIB - 1));
    assert!(s.lookup(TIB).is_none());
}

#[test]
fn a_port_io_space_is_one_node_of_its_pages() {
    // 16-bit space of 4 KiB pages: one node of 16 entries (64 bytes and its base page), not
    // 512. Every address past the space wraps around the node's index and finds nothing.
    let map = PhysMap::with_config(Config {
        addr_bits: 16,
        ..Config::default()
    })
    .unwrap();
    let mut t = map.transaction();
    t.insert(0x0..=0x7, "dma").unwrap();
    t.insert(0x1000..=0x1fff, "page 1").unwrap();
    t.insert(0xcf8..=0xcff, "pci").unwrap();
    t.insert(0xf000..=0xffff, "top").unwrap();
    t.commit().unwrap();
    let s = map.snapshot();
    let st = s.stats();
    assert_eq!((st.nodes, st.levels), (1, 1), "{st:?}");
    // The node (16 entries of 4 bytes, and its 8-byte base page) and one 8-row sub-page table
    // (8 starts, 8 pieces and the page in two cells, 4 bytes each): 2 KiB in QEMU.
    assert_eq!(st.subpage_tables, 1, "{st:?}");
    assert_eq!(st.tree_bytes, (16 * 4 + 8) + (2 * 8 + 2) * 4, "{st:?}");
    assert_eq!(*s.lookup(0xcfc).unwrap().value, "pci");
    assert_eq!(*s.lookup(0x1234).unwrap().value, "page 1");
    assert_eq!(*s.lookup(0xffff).unwrap().value, "top");
    for past in [
        0x1_0000,
        0x1_0004,
        0x1_1234,
        0x1_0cfc,
        0xffff_ffff,
        u64::MAX,
    ] {
        assert!(s.lookup(past).is_none(), "{past:#x}");
    }
}

#[test]
fn same_mapping_same_shape_whatever_the_history() {
    // History A: pieces inserted in one go, in address order.
    let a = nodes_of(|t| {
        t.insert(0..0xa_0000, 1).unwrap();
        t.insert(0x10_0000..0x8000_0000, 2).unwrap();
        t.insert(0xfed0_0000..=0xfed0_03ff, 3).unwrap();
        t.overwrite(0x60..=0x60, 4).unwrap();
    });
    // History B: big overwrite, then cut down, several commits, reverse order, rollbacks.
    let map = PhysMap::new();
    let mut t = map.transaction();
    t.insert(0xfed0_0000..=0xfed0_03ff, 3).unwrap();
    t.overwrite(0..=u64::MAX, 9).unwrap();
    t.commit().unwrap();
    let mut t = map.transaction();
    t.remove(..).unwrap();
    t.insert(0x10_0000..0x8000_0000, 2).unwrap();
    t.commit().unwrap();
    let mut t = map.transaction();
    t.insert(0..=0xf_ffff, 1).unwrap();
    t.overwrite(0x4000_0000..0x5000_0000, 7).unwrap();
    drop(t); // rolled back
    let mut t = map.transaction();
    t.insert(0..=0xf_ffff, 1).unwrap();
    t.remove(0xa_0000..=0xf_ffff).unwrap();
    t.insert(0xfed0_0000..=0xfed0_03ff, 3).unwrap();
    t.overwrite(0x60..=0x60, 4).unwrap();
    t.commit().unwrap();
    let b = map.snapshot().stats();
    assert_eq!(
        (a.nodes, a.subpage_tables, a.pieces, a.levels),
        (b.nodes, b.subpage_tables, b.pieces, b.levels)
    );
    assert_eq!(a.bytes, b.bytes);
}

#[test]
fn byte_granular_sections_and_the_whole_space() {
    let map = PhysMap::with_config(Config::default()).unwrap();
    let mut t = map.transaction();
    t.insert(0..=u64::MAX, "all").unwrap();
    t.commit().unwrap();
    let s = map.snapshot();
    assert_eq!(s.lookup(u64::MAX).unwrap().offset, u64::MAX);
    assert_eq!(s.lookup(0).unwrap().range, 0..=u64::MAX);
    assert_eq!(s.stats().nodes, 0);

    let mut t = map.transaction();
    for port in [0x60u64, 0x61, 0x64, 0x70, 0x71, 0xcf8, 0xcf9] {
        t.overwrite(port..=port, "port").unwrap();
    }
    t.overwrite(u64::MAX..=u64::MAX, "last byte").unwrap();
    t.commit().unwrap();
    let s = map.snapshot();
    for port in [0x60u64, 0x61, 0x64, 0x70, 0x71, 0xcf8, 0xcf9] {
        let h = s.lookup(port).unwrap();
        assert_eq!((*h.value, h.range, h.offset), ("port", port..=port, 0));
    }
    let h = s.lookup(0x62).unwrap();
    assert_eq!((*h.value, h.range, h.offset), ("all", 0x62..=0x63, 0x62));
    assert_eq!(*s.lookup(u64::MAX).unwrap().value, "last byte");
    assert_eq!(s.lookup(u64::MAX - 1).unwrap().range, 0xcfa..=u64::MAX - 1);
}

#[test]
fn offsets_survive_cuts() {
    let map = PhysMap::new();
    let mut t = map.transaction();
    t.insert(0x1000..0x10_0000, "ram").unwrap();
    t.commit().unwrap();
    let mut t = map.transaction();
    t.overwrite(0x8000..0x9000, "rom").unwrap();
    t.remove(0x2000..0x3000).unwrap();
    t.commit().unwrap();
    let s = map.snapshot();
    let h = s.lookup(0x9123).unwrap();
    assert_eq!(
        (*h.value, h.offset, h.range),
        ("ram", 0x8123, 0x9000..=0xf_ffff)
    );
    let h = s.lookup(0x8123).unwrap();
    assert_eq!((*h.value, h.offset), ("rom", 0x123));
    assert!(s.lookup(0x2fff).is_none());
}

/// `insert_shared`: one section for many ranges, each range its own origin; cuts keep each
/// range's origin; a bad range or an overlap anywhere in the list changes nothing.
#[test]
fn shared_ranges_have_one_section_and_their_own_offsets() {
    let map = PhysMap::new();
    let mut t = map.transaction();
    t.insert(0..0x1000, "low").unwrap();
    let blocks = (1..=8u64).map(|i| i << 21..(i << 21) + 0x10_0000);
    t.insert_shared(blocks, "virtio-mem").unwrap();
    assert_eq!(
        t.insert_shared([0x9000..0xa000, 0x500..0x600], "clash"),
        Err(Error::Overlap {
            range: 0x500..=0x5ff,
            existing: 0..=0xfff
        })
    );
    // Ranges of one call may not overlap each other either (named in address order).
    assert_eq!(
        t.insert_shared([0x9000..0xa000, 0x8000..0x9800], "self-clash"),
        Err(Error::Overlap {
            range: 0x9000..=0x9fff,
            existing: 0x8000..=0x97ff
        })
    );
    #[allow(clippy::reversed_empty_ranges)]
    let inverted = t.insert_shared([0x9000..0xa000, 0x5000..0x4000], "inverted");
    assert!(matches!(inverted, Err(Error::InvertedRange { .. })));
    assert_eq!(
        t.insert_shared(std::iter::empty::<std::ops::Range<u64>>(), "none"),
        Ok(())
    );
    t.commit().unwrap();
    let s = map.snapshot();
    assert_eq!(s.iter().count(), 9);
    assert!(s.lookup(0x9000).is_none());
    let h = s.lookup((3 << 21) + 0x1234).unwrap();
    assert_eq!(
        (*h.value, h.offset, h.range),
        ("virtio-mem", 0x1234, 3 << 21..=(3 << 21) + 0xf_ffff)
    );
    assert_eq!(map.memory().sections, 2);
    drop(s);
    // Cut the middle of one block: both halves keep that block's origin.
    let mut t = map.transaction();
    t.remove((5 << 21) + 0x4000..(5 << 21) + 0x5000).unwrap();
    t.commit().unwrap();
    let s = map.snapshot();
    assert_eq!(s.lookup((5 << 21) + 0x6000).unwrap().offset, 0x6000);
    assert_eq!(s.lookup((5 << 21) + 0x3000).unwrap().offset, 0x3000);
    drop(s);
    // The section goes with its last range.
    let mut t = map.transaction();
    t.remove(1 << 21..).unwrap();
    t.commit().unwrap();
    assert_eq!(map.memory().sections, 1);
}

fn bad_ranges(max: u64) -> Vec<(BadOp, &'static str)> {
    fn b<R: RangeBounds<u64> + Clone + 'static>(r: R) -> BadOp {
        Box::new(move |t| t.insert(r.clone(), 0))
    }
    let mut v: Vec<(BadOp, &'static str)> = vec![
        (b(5..5), "empty a..a"),
        (b(0..0), "empty 0..0"),
        #[allow(clippy::reversed_empty_ranges)]
        (b(5..3), "inverted a..b"),
        #[allow(clippy::reversed_empty_ranges)]
        (b(5..=3), "inverted a..=b"),
        (b(..0), "empty ..0"),
        (
            b((Bound::Excluded(u64::MAX), Bound::Unbounded)),
            "start past u64::MAX",
        ),
        (b((Bound::Excluded(7), Bound::Excluded(8))), "empty (7, 8)"),
        #[allow(clippy::reversed_empty_ranges)]
        (Box::new(|t| t.remove(9..2)), "inverted remove"),
        (Box::new(|t| t.overwrite(9..9, 1)), "empty overwrite"),
    ];
    if max < u64::MAX {
        v.push((b(max..=max + 1), "past the space"));
        v.push((b(0..=max + 1), "ending past the space"));
        v.push((b(max + 1..=u64::MAX), "wholly past the space"));
        v.push((
            Box::new(move |t| t.remove(max..max + 2)),
            "remove past the space",
        ));
    }
    v
}

#[test]
fn bad_ranges_are_errors_and_change_nothing() {
    for config in [
        Config::default(),
        Config {
            addr_bits: 36,
            ..Config::default()
        },
    ] {
        let max = if config.addr_bits == 64 {
            u64::MAX
        } else {
            (1 << config.addr_bits) - 1
        };
        let map = PhysMap::with_config(config).unwrap();
        let mut t = map.transaction();
        t.insert(0x1000..0x2000, 1).unwrap();
        t.insert(0x3000..=0x3000, 2).unwrap();
        t.commit().unwrap();
        let before: Vec<_> = map.snapshot().iter().map(|(r, v)| (r, *v)).collect();
        for (op, what) in bad_ranges(max) {
            let mut t = map.transaction();
            let r = op(&mut t);
            assert!(r.is_err(), "{what}: {r:?}");
            assert!(!r.unwrap_err().to_string().is_empty());
            // The transaction is unchanged and still usable.
            t.insert(0x5000..0x6000, 3).unwrap();
            drop(t);
            let after: Vec<_> = map.snapshot().iter().map(|(r, v)| (r, *v)).collect();
            assert_eq!(before, after, "{what}");
        }
        // Overlaps are refused, name both ranges, and leave the transaction as it was.
        let mut t = map.transaction();
        t.insert(0x8000..0x9000, 7).unwrap();
        let e = t.insert(0x1fff..0x2001, 4).unwrap_err();
        assert_eq!(
            e,
            Error::Overlap {
                range: 0x1fff..=0x2000,
                existing: 0x1000..=0x1fff
            }
        );
        assert!(e.to_string().contains("0x1fff..=0x2000"), "{e}");
        assert!(matches!(
            t.insert(0x8fff..=0x8fff, 4),
            Err(Error::Overlap { .. })
        ));
        t.commit().unwrap();
        let s = map.snapshot();
        assert_eq!(s.iter().count(), 3);
        assert_eq!(*s.lookup(0x1fff).unwrap().value, 1);
    }
    // Inverted ranges report an inclusive end before the start, never a wrapped one.
    let map: PhysMap<u8> = PhysMap::new();
    let mut t = map.transaction();
    for (range, start, end) in [
        ((Bound::Included(5), Bound::Excluded(0)), 5, 0),
        ((Bound::Included(5), Bound::Excluded(3)), 5, 2),
        ((Bound::Included(5), Bound::Included(3)), 5, 3),
        ((Bound::Excluded(5), Bound::Excluded(0)), 6, 0),
    ] {
        let e = t.insert(range, 0).unwrap_err();
        assert_eq!(e, Error::InvertedRange { start, end }, "{range:?}");
        assert!(
            e.to_string().contains(&format!("{start:#x}..={end:#x}")),
            "{e}"
        );
    }
    drop(t);
    assert_eq!(checked_range(u64::MAX, 1).unwrap(), u64::MAX..=u64::MAX);
    assert!(matches!(
        checked_range(u64::MAX, 2),
        Err(Error::Overflow { .. })
    ));
    assert!(checked_range(1 << 63, 1 << 63).is_ok());
    assert!(matches!(
        checked_range((1 << 63) + 1, 1 << 63),
        Err(Error::Overflow { .. })
    ));
}

#[test]
fn nonsense_configs_are_rejected() {
    let bad = [
        Config {
            addr_bits: 0,
            ..Config::default()
        },
        Config {
            addr_bits: 65,
            ..Config::default()
        },
        Config {
            page_bits: 33,
            ..Config::default()
        },
        Config {
            addr_bits: 10,
            page_bits: 12,
            ..Config::default()
        },
        Config {
            level_bits: 0,
            ..Config::default()
        },
        Config {
            level_bits: 17,
            ..Config::default()
        },
        Config {
            page_bits: 0,
            level_bits: 1,
            ..Config::default()
        },
        Config {
            max_nodes: 0,
            ..Config::default()
        },
        Config {
            max_nodes: 1 << 24,
            ..Config::default()
        },
        Config {
            max_pieces: 0,
            ..Config::default()
        },
    ];
    for c in bad {
        assert!(
            matches!(
                PhysMap::<u8>::with_config(c.clone()),
                Err(Error::InvalidConfig { .. })
            ),
            "{c:?}"
        );
    }
    for c in [
        Config {
            addr_bits: 1,
            page_bits: 0,
            level_bits: 1,
            ..Config::default()
        },
        Config {
            addr_bits: 12,
            page_bits: 12,
            ..Config::default()
        },
        Config {
            addr_bits: 64,
            page_bits: 0,
            level_bits: 16,
            ..Config::default()
        },
        Config {
            addr_bits: 48,
            page_bits: 21,
            level_bits: 9,
            ..Config::default()
        },
    ] {
        let map = PhysMap::with_config(c.clone()).unwrap();
        let max = if c.addr_bits == 64 {
            u64::MAX
        } else {
            (1 << c.addr_bits) - 1
        };
        let mut t = map.transaction();
        t.insert(0..=0, 1u8).unwrap();
        t.insert(max..=max, 2).unwrap();
        t.commit().unwrap();
        assert_eq!(*map.snapshot().lookup(max).unwrap().value, 2, "{c:?}");
        assert_eq!(*map.snapshot().lookup(0).unwrap().value, 1, "{c:?}");
    }
}

#[test]
fn capacity_exhausted_is_an_error_and_publishes_nothing() {
    let map = PhysMap::with_config(Config {
        max_nodes: 3,
        max_pieces: 64,
        ..Config::default()
    })
    .unwrap();
    let mut t = map.transaction();
    t.insert(0..0x1000, 0u32).unwrap();
    t.commit().unwrap();
    let before = map.snapshot();
    // More runs under one 2 MiB span than a flat node holds (rule 3), pieces far apart:
    // dense nodes at four heights at least, more than 3.
    let mut t = map.transaction();
    for i in 0..17u64 {
        let at = (1 << 21) + i * 0x2000;
        t.insert(at..at + 0x1000, 10 + i as u32).unwrap();
    }
    t.insert(1 << 50..(1 << 50) + 0x1000, 1).unwrap();
    t.insert(1 << 40..(1 << 40) + 0x1000, 4).unwrap();
    let e = t.commit().unwrap_err();
    assert!(
        matches!(
            e,
            Error::CapacityExhausted {
                kind: physmap::Capacity::Nodes,
                limit: 3
            }
        ),
        "{e}"
    );
    let after = map.snapshot();
    assert_eq!(after.generation(), before.generation());
    assert_eq!(after.iter().count(), 1);
    assert_eq!(map.memory().live_bytes, map.snapshot().stats().bytes);
    drop((before, after));
    let map = PhysMap::with_config(Config {
        max_nodes: 3,
        max_pieces: 8,
        ..Config::default()
    })
    .unwrap();
    let mut t = map.transaction();
    t.insert(0..0x1000, 0u32).unwrap();
    t.commit().unwrap();
    // Sections run out too, at insert time.
    let mut t = map.transaction();
    let mut err = None;
    for i in 0..20u64 {
        if let Err(e) = t.insert(0x10_0000 + i * 0x10..0x10_0000 + i * 0x10 + 1, i as u32) {
            err = Some(e);
            break;
        }
    }
    assert!(
        matches!(
            err,
            Some(Error::CapacityExhausted {
                kind: physmap::Capacity::Sections,
                ..
            })
        ),
        "{err:?}"
    );
    drop(t);
    // The map still works and the failed commits leaked nothing.
    let mut t = map.transaction();
    t.insert(0x2000..0x3000, 9).unwrap();
    t.commit().unwrap();
    assert_eq!(map.snapshot().iter().count(), 2);
    assert_eq!(map.memory().live_bytes, map.snapshot().stats().bytes);
}

#[test]
fn a_panicking_writer_publishes_nothing_and_does_not_wedge_the_map() {
    let map = PhysMap::new();
    let mut t = map.transaction();
    t.insert(0..0x1000, 1u64).unwrap();
    t.commit().unwrap();
    let before: Vec<_> = map.snapshot().iter().map(|(r, v)| (r, *v)).collect();
    std::thread::scope(|s| {
        let r = s
            .spawn(|| {
                let mut t = map.transaction();
                t.remove(..).unwrap();
                t.insert(0x5000..0x6000, 2).unwrap();
                t.overwrite(0..=u64::MAX, 3).unwrap();
                panic!("control plane bug");
            })
            .join();
        assert!(r.is_err());
    });
    let snap = map.snapshot();
    assert_eq!(snap.generation(), 1);
    assert_eq!(
        before,
        snap.iter().map(|(r, v)| (r, *v)).collect::<Vec<_>>()
    );
    let mut t = map.transaction();
    t.insert(0x1000..0x2000, 4).unwrap();
    assert_eq!(t.commit().unwrap(), 2);
    assert_eq!(map.snapshot().iter().count(), 2);
    assert_eq!(map.memory().live_bytes, map.snapshot().stats().bytes);
}

#[test]
fn memory_returns_to_the_newest_tree_over_10000_commits() {
    let map = PhysMap::new();
    let mut oracle = Oracle::default();
    let mut held: Vec<Snapshot<u64>> = Vec::new();
    let mut reader = map.reader();
    let mut peak = 0;
    for i in 0..10_000u64 {
        let mut t = map.transaction();
        // A churning mix: a virtio-mem block, a BAR move, a sub-page register.
        let block = (i * 7919) % 512;
        let s = (4 << 30) + block * (2 << 20);
        if i % 3 == 0 {
            t.remove(s..s + (2 << 20)).unwrap();
            oracle.cut(s, s + (2 << 20) - 1);
        } else {
            t.overwrite(s..s + (2 << 20), i).unwrap();
            oracle.put(s, s + (2 << 20) - 1, i);
        }
        let bar = 0xfe00_0000 + (i % 16) * 0x1000 + (i % 5) * 0x10;
        t.overwrite(bar..bar + 0x20, i).unwrap();
        oracle.put(bar, bar + 0x1f, i);
        t.commit().unwrap();
        if i % 97 == 0 {
            held.push(map.snapshot());
        }
        if i % 1000 == 999 {
            // Old snapshots still see their own generation, entirely.
            for h in &held {
                assert!(h.iter().count() > 0);
            }
            peak = peak.max(map.memory().live_bytes);
            held.clear();
        }
        if i % 10 == 0 {
            reader.lookup(bar);
        }
    }
    drop(reader);
    let snap = map.snapshot();
    check(&snap, &oracle, &[]).unwrap();
    let mem = map.memory();
    let stats = snap.stats();
    assert_eq!(mem.live_bytes, stats.bytes, "{mem:?} vs {stats:?}");
    assert_eq!(mem.nodes, stats.nodes);
    assert_eq!(mem.pieces, stats.pieces);
    assert_eq!(mem.sections, stats.sections);
    assert!(
        peak > stats.bytes,
        "held snapshots did pin garbage ({peak} vs {})",
        stats.bytes
    );
}

#[test]
fn values_are_dropped_once_unreachable() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    struct Counted(Arc<AtomicUsize>);
    impl Drop for Counted {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }
    let drops = Arc::new(AtomicUsize::new(0));
    let map = PhysMap::new();
    let mut t = map.transaction();
    t.insert(0..0x1000, Counted(drops.clone())).unwrap();
    t.insert(0x1000..0x2000, Counted(drops.clone())).unwrap();
    t.commit().unwrap();
    let old = map.snapshot();
    let mut t = map.transaction();
    t.overwrite(0..0x2000, Counted(drops.clone())).unwrap();
    t.insert(0x5000..0x6000, Counted(drops.clone())).unwrap();
    t.overwrite(0x5000..0x6000, Counted(drops.clone())).unwrap(); // never published
    t.commit().unwrap();
    assert_eq!(
        drops.load(Ordering::Relaxed),
        1,
        "only the never-published value is gone"
    );
    let _ = map.memory();
    assert_eq!(
        drops.load(Ordering::Relaxed),
        1,
        "the old snapshot still holds two values"
    );
    assert!(old.lookup(0x1800).is_some());
    drop(old);
    let _ = map.memory();
    assert_eq!(drops.load(Ordering::Relaxed), 3);
    let mut t = map.transaction();
    t.insert(0x9000..0xa000, Counted(drops.clone())).unwrap();
    drop(t);
    assert_eq!(
        drops.load(Ordering::Relaxed),
        4,
        "rolled-back value dropped"
    );
    drop(map);
    assert_eq!(
        drops.load(Ordering::Relaxed),
        6,
        "everything dropped with the map"
    );
}

#[test]
fn readers_follow_commits_and_snapshots_are_shareable() {
    fn assert_traits<T: Send + Sync + Clone>() {}
    assert_traits::<Snapshot<String>>();
    fn assert_send<T: Send>() {}
    assert_send::<physmap::Reader<String>>();
    assert_send::<PhysMap<String>>();
    fn assert_sync<T: Sync>() {}
    assert_sync::<PhysMap<String>>();

    let map = PhysMap::new();
    let mut r = map.reader();
    assert_eq!(r.refresh(), 0);
    assert!(r.lookup(0).is_none());
    for g in 1..50u64 {
        let mut t = map.transaction();
        t.overwrite(0..0x1000 * g, g).unwrap();
        t.commit().unwrap();
        let h = r.lookup(0x10).unwrap();
        assert_eq!(*h.value, g);
        assert_eq!(h.range, 0..=0x1000 * g - 1);
        assert_eq!(r.refresh(), g);
    }
    let snap = r.snapshot();
    assert_eq!(snap.range(0x800..0x900).unwrap().count(), 1);
    assert_eq!(snap.range(0x10_0000_0000..).unwrap().count(), 0);
    // Empty ranges are empty, as in std's `BTreeMap::range`, even over a piece and at the
    // ends of the space; inverted and out-of-space ones stay errors.
    use std::ops::Bound::{Excluded, Unbounded};
    assert_eq!(snap.range(0x800..0x800).unwrap().count(), 0);
    assert_eq!(snap.range(0..0).unwrap().count(), 0);
    assert_eq!(
        snap.range((Excluded(u64::MAX), Unbounded)).unwrap().count(),
        0
    );
    assert!(matches!(
        snap.range(std::ops::Range {
            start: 0x900,
            end: 0x800
        }),
        Err(Error::InvertedRange { .. })
    ));
    assert_eq!(snap.range(..).unwrap().count(), 1);
    let small = PhysMap::<u8>::with_config(Config {
        addr_bits: 16,
        ..Config::default()
    })
    .unwrap();
    assert!(matches!(
        small.snapshot().range(0..0x1_0001),
        Err(Error::OutOfSpace { .. })
    ));
    assert_eq!(
        small.snapshot().range(0x2_0000..0x2_0000).unwrap().count(),
        0
    );
}

/// Online readers on an old generation hold its garbage; once they move on (a lookup), go
/// offline or are dropped, the arena shrinks back to exactly the newest tree, in another
/// thread as well as this one.
#[test]
fn memory_returns_to_the_newest_tree_once_readers_move_on() {
    let map = std::sync::Arc::new(PhysMap::new());
    let churn = |map: &PhysMap<u64>, from: u64| {
        for i in from..from + 200 {
            let mut t = map.transaction();
            let s = (4 << 30) + (i % 64) * (2 << 20);
            t.overwrite(s..s + (2 << 20), i).unwrap();
            t.overwrite(
                0xfe00_0000 + (i % 8) * 0x10..0xfe00_0000 + (i % 8) * 0x10 + 8,
                i,
            )
            .unwrap();
            t.commit().unwrap();
        }
    };
    let exact = |map: &PhysMap<u64>| {
        let mem = map.memory();
        let stats = map.snapshot().stats();
        (mem.pinned_generations, mem.live_bytes, stats.bytes)
    };
    churn(&map, 0);
    let (pinned, live, newest) = exact(&map);
    assert_eq!((pinned, live), (0, newest), "no reader, no snapshot");

    // Reader A (this thread) and reader B (another thread) hold the current generation.
    let mut a = map.reader();
    a.lookup(0xfe00_0000);
    let (to_b, b_rx) = std::sync::mpsc::channel::<&'static str>();
    let (b_done, done_rx) = std::sync::mpsc::channel::<()>();
    let m = map.clone();
    let b = std::thread::spawn(move || {
        let mut r = m.reader();
        r.lookup(0xfe00_0000);
        b_done.send(()).unwrap();
        while let Ok(cmd) = b_rx.recv() {
            match cmd {
                "lookup" => drop(r.lookup(0xfe00_0000)),
                "offline" => r.offline(),
                _ => break,
            }
            b_done.send(()).unwrap();
        }
    });
    done_rx.recv().unwrap();
    let held = map.snapshot().stats().bytes;
    churn(&map, 1000);
    let (pinned, live, newest) = exact(&map);
    // Both readers announce one generation: they pin its tree, not the 200 commits since.
    assert_eq!(pinned, 1, "both readers pin their one generation");
    assert!(
        newest < live && live <= newest + held,
        "{live} vs {newest} + {held}"
    );

    // A moves on; B still holds the old generation.
    a.lookup(0xfe00_0000);
    let (pinned, live, _) = exact(&map);
    assert!(pinned == 1 && live > newest, "B still pins: {pinned}");

    // B moves on: back to the newest tree.
    to_b.send("lookup").unwrap();
    done_rx.recv().unwrap();
    let (pinned, live, newest) = exact(&map);
    assert_eq!((pinned, live), (0, newest), "readers moved on");

    // Offline readers pin nothing however long they stay away.
    to_b.send("offline").unwrap();
    done_rx.recv().unwrap();
    a.offline();
    churn(&map, 2000);
    let (pinned, live, newest) = exact(&map);
    assert_eq!((pinned, live), (0, newest), "readers offline");

    // Online again: pins what it announced until it moves on; dropping it releases it.
    a.lookup(0xfe00_0000);
    churn(&map, 3000);
    assert_eq!(exact(&map).0, 1);
    drop(a);
    to_b.send("quit").unwrap();
    b.join().unwrap();
    let (pinned, live, newest) = exact(&map);
    assert_eq!((pinned, live), (0, newest), "reader dropped");
}

/// A transaction that changes nothing (no edit, or only refused ones, or removing what is not
/// mapped) publishes nothing: readers keep their generation.
#[test]
fn a_transaction_that_changes_nothing_publishes_nothing() {
    let map: PhysMap<u32> = PhysMap::new();
    let mut t = map.transaction();
    t.insert(0x1000..0x2000, 1).unwrap();
    let g = t.commit().unwrap();
    let mut r = map.reader();
    assert_eq!(r.refresh(), g);
    assert_eq!(map.transaction().commit().unwrap(), g);
    let mut t = map.transaction();
    assert!(t.insert(0x1800..0x1900, 2).is_err());
    t.remove(0x8000..0x9000).unwrap();
    assert_eq!(t.commit().unwrap(), g);
    assert_eq!((r.refresh(), map.snapshot().generation()), (g, g));
    let mut t = map.transaction();
    t.remove(0x1000..0x1800).unwrap();
    assert_eq!(t.commit().unwrap(), g + 1);
    assert_eq!(r.lookup(0x1000).map(|h| *h.value), None);
}

/// The pages of `insert_shared` (a confidential VM's shared pages) are 12-byte page records,
/// not 32-byte pieces: same answers, and the page check still rejects addresses a compressed
/// path leads to them. Other one-page pieces stay pieces.
#[test]
fn shared_pages_are_page_records() {
    // Fewer pages under Miri (the same paths: the pages span several nodes either way).
    let n: u64 = if cfg!(miri) { 600 } else { 4096 };
    for flat_nodes in [false, true] {
        let config = Config {
            flat_nodes,
            ..Config::default()
        };
        let map = PhysMap::with_config(config.clone()).unwrap();
        let mut t = map.transaction();
        // n alternating pages: shared ones in one section, private ones one section each
        // would be n / 2 sections: give them one too.
        let shared = (0..n).step_by(2).map(|i| i << 12..(i + 1) << 12);
        let private = (1..n).step_by(2).map(|i| i << 12..(i + 1) << 12);
        t.insert_shared(shared, "shared").unwrap();
        t.insert_shared(private, "private").unwrap();
        // A page cut out of a larger section keeps its origin: a piece, not a record.
        t.insert(1 << 30..(1 << 30) + 0x2000, "cut").unwrap();
        t.remove(1 << 30..(1 << 30) + 0x1000).unwrap();
        t.insert((1 << 30) + 0x2000..(1 << 30) + 0x3000, "second")
            .unwrap();
        // A lone shared page far away: reached through a compressed path.
        t.insert_shared(std::iter::once(0x7f_0000_0000..0x7f_0000_1000), "lone")
            .unwrap();
        t.commit().unwrap();
        let snap = map.snapshot();
        let s = snap.stats();
        assert_eq!((s.pieces, s.sections), (n as usize + 3, 5), "{s:?}");
        // Only the shared pages are records.
        assert_eq!(s.page_records, n as usize + 1, "{s:?}");
        for i in [0u64, 1, 2, 3, n * 3 / 4, n - 1] {
            let at = (i << 12) + 0x123;
            let h = snap.lookup(at).unwrap();
            let want = if i % 2 == 0 { "shared" } else { "private" };
            assert_eq!((*h.value, h.offset), (want, 0x123), "{at:#x}");
            assert_eq!(h.range, i << 12..=(i << 12) + 0xfff);
        }
        assert!(snap.lookup(n << 12).is_none());
        let h = snap.lookup((1 << 30) + 0x1010).unwrap();
        let cut = (1 << 30) + 0x1000..=(1 << 30) + 0x1fff;
        assert_eq!((*h.value, h.offset, h.range), ("cut", 0x1010, cut));
        let h = snap.lookup((1 << 30) + 0x2010).unwrap();
        assert_eq!((*h.value, h.offset), ("second", 0x10));
        assert!(snap.lookup((1 << 30) + 0x10).is_none());
        let h = snap.lookup(0x7f_0000_0fff).unwrap();
        assert_eq!((*h.value, h.offset), ("lone", 0xfff));
        // Same low page bits at every height of the skipped levels: all misses.
        for bit in 12..64 {
            let at = 0x7f_0000_0010 ^ 1 << bit;
            if let Some(h) = snap.lookup(at) {
                assert!(h.range.contains(&at), "{at:#x} answered {h:?}");
            }
            assert!(
                snap.lookup(at).map_or(true, |h| *h.value != "lone"),
                "{at:#x}"
            );
        }
        // A reader answers the same, repeats included.
        let mut r = map.reader();
        for at in [0x10, 0x20, 0x1010, 0x1010, 0x1010, 0x2010, 0x7f_0000_0010] {
            let h = r.lookup(at).unwrap();
            assert_eq!(
                (h.offset, *h.range.start()),
                (at & 0xfff, at & !0xfff),
                "{at:#x}"
            );
        }
        // Bytes: a record is 12 bytes where a piece is 32.
        let pieces_only = s.bytes - s.tree_bytes;
        assert!(pieces_only < n as usize * 16, "{s:?}");
        // Removing and overwriting records frees them; nothing is lost.
        let mut t = map.transaction();
        let half = n / 2;
        t.remove(0..half << 12).unwrap();
        t.overwrite(half << 12..(half + 1) << 12, "over").unwrap();
        t.commit().unwrap();
        drop((snap, r));
        let s = map.snapshot().stats();
        // Pages half + 1 .. n and the lone page (page half was overwritten by a plain insert).
        assert_eq!(s.page_records, (n - half - 1 + 1) as usize, "{s:?}");
        assert_eq!(map.memory().live_bytes, map.snapshot().stats().bytes);
        assert_eq!(map.memory().page_records, s.page_records);
        // The same mapping built in one go has the same tree.
        let fresh = PhysMap::with_config(config).unwrap();
        let mut t = fresh.transaction();
        for (range, v) in map.snapshot().iter() {
            t.insert(range, *v).unwrap();
        }
        t.commit().unwrap();
        let (a, b) = (map.snapshot().stats(), fresh.snapshot().stats());
        assert_eq!((a.nodes, a.flat_nodes), (b.nodes, b.flat_nodes));
        assert_eq!(b.page_records, 0, "plain inserts make pieces");
    }
}

/// Tiny geometries too (the loom models' 8-bit space of 4-byte pages): a shared page is a
/// record, found through compressed paths, and only for its own page.
#[test]
fn page_records_in_a_tiny_space() {
    let map = PhysMap::with_config(Config {
        addr_bits: 8,
        page_bits: 2,
        level_bits: 2,
        ..Config::default()
    })
    .unwrap();
    let mut t = map.transaction();
    t.insert(0xc4..=0xff, 3u64).unwrap();
    t.insert_shared(std::iter::once(0xc0..=0xc3), 4).unwrap();
    t.commit().unwrap();
    let s = map.snapshot();
    assert_eq!(s.stats().page_records, 1);
    let h = s.lookup(0xc1).unwrap();
    assert_eq!((*h.value, h.offset, h.range), (4, 1, 0xc0..=0xc3));
    for a in (0..0xc0).chain([0xc4, 0xff]) {
        assert_ne!(s.lookup(a).map(|h| *h.value), Some(4), "{a:#x}");
    }
}

/// `max_pieces` bounds pieces and page records together.
#[test]
fn page_records_count_against_max_pieces() {
    let map = PhysMap::with_config(Config {
        max_pieces: 4,
        ..Config::default()
    })
    .unwrap();
    let mut t = map.transaction();
    t.insert_shared((0..3u64).map(|i| i << 13..(i << 13) + 0x1000), 1u8)
        .unwrap();
    t.insert(0x10_0000..0x10_2000, 2).unwrap();
    t.commit().unwrap();
    assert_eq!(map.snapshot().stats().page_records, 3);
    let mut t = map.transaction();
    t.insert(0x20_0000..0x20_1000, 3).unwrap();
    let e = t.commit().unwrap_err();
    assert!(
        matches!(
            e,
            Error::CapacityExhausted {
                kind: physmap::Capacity::Pieces,
                limit: 4
            }
        ),
        "{e}"
    );
    assert_eq!(map.snapshot().iter().count(), 4);
    assert_eq!(map.memory().live_bytes, map.snapshot().stats().bytes);
}

/// `Stats` counts sections exactly whatever the size of the value: zero-sized values (a
/// `PhysMap<()>` of "which ranges are MMIO") all have the same address, byte values pack
/// tightly, 4 KiB values are large. `Memory::live_bytes` agrees with `Stats::bytes`, and a
/// new section over the same bytes is a change for `diff`.
#[test]
fn stats_and_diff_are_exact_for_any_value_size() {
    fn exact<V: Clone>(value: V) {
        let map = PhysMap::new();
        let mut t = map.transaction();
        t.insert(0..0x8000_0000, value.clone()).unwrap();
        for i in 0..3000u64 {
            let s = 0xfe00_0000 + i * 0x100;
            t.insert(s..s + 0x40, value.clone()).unwrap();
        }
        t.commit().unwrap();
        let before = map.snapshot();
        let stats = before.stats();
        let name = std::any::type_name::<V>();
        assert_eq!((stats.pieces, stats.sections), (3001, 3001), "{name}");
        assert_eq!(map.memory().live_bytes, stats.bytes, "{name}");
        // The same bytes, a new section: one change, of exactly those bytes.
        let mut t = map.transaction();
        t.overwrite(0xfe00_0100..0xfe00_0140, value.clone())
            .unwrap();
        t.commit().unwrap();
        let after = map.snapshot();
        let changes: Vec<_> = after.diff(&before).into_iter().map(|c| c.range).collect();
        assert_eq!(changes, vec![0xfe00_0100..=0xfe00_013f], "{name}");
        drop(before);
        let stats = after.stats();
        assert_eq!(stats.sections, 3001, "{name}");
        assert_eq!(map.memory().live_bytes, stats.bytes, "{name}");
        // Shared pages (page records) too.
        let mut t = map.transaction();
        t.insert_shared(
            (0..64u64).map(|p| (1 << 40) + (p << 13)..(1 << 40) + (p << 13) + 4096),
            value.clone(),
        )
        .unwrap();
        t.commit().unwrap();
        drop(after);
        let stats = map.snapshot().stats();
        assert_eq!((stats.sections, stats.page_records), (3002, 64), "{name}");
        assert_eq!(map.memory().live_bytes, stats.bytes, "{name}");
    }
    exact(());
    exact(7u8);
    exact([9u8; 4096]);
}
