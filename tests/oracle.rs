//! Differential property tests: physmap against a sorted list of pieces.

mod common;

use common::{check, fresh, Oracle};
use physmap::{Config, Error, PhysMap};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    Insert(u64, u64),
    Overwrite(u64, u64),
    Remove(u64, u64),
    /// `insert_shared`: one value for every range, each range its own origin.
    InsertShared(Vec<(u64, u64)>),
}

#[derive(Debug, Clone)]
struct Txn {
    ops: Vec<Op>,
    commit: bool,
}

/// Inclusive ranges mixing huge page-aligned spans, byte-granular registers and the top of
/// the space, clustered around a few places so that they collide often.
fn range(max: u64, page: u64) -> impl Strategy<Value = (u64, u64)> {
    let anchors = vec![
        0,
        0x9_f000 % max,
        0xfec0_0000 % max,
        (1u64 << 40) % max,
        max - (max >> 4),
        max,
    ];
    let anchor = proptest::sample::select(anchors);
    let huge = (anchor.clone(), 0u64..64, 1u64..(1 << 20)).prop_map(move |(a, k, pages)| {
        let s = (a & !(page - 1)).saturating_sub(k * page);
        let len = pages.saturating_mul(page).saturating_mul(1 + (k % 4) * 512);
        (s, s.saturating_add(len - 1).min(max))
    });
    let small = (anchor.clone(), 0u64..0x3000, 1u64..300).prop_map(move |(a, off, len)| {
        let s = a.saturating_sub(off);
        (s, s.saturating_add(len - 1).min(max))
    });
    let top = (0u64..0x2000, 0u64..0x2000).prop_map(move |(x, y)| {
        let s = max - x.max(y);
        (s, max - x.min(y))
    });
    let any = (any::<u64>(), 1u64..(1 << 16)).prop_map(move |(s, len)| {
        let s = s % max;
        (s, s.saturating_add(len).min(max))
    });
    prop_oneof![4 => huge, 4 => small, 1 => top, 1 => any]
}

fn txns(max: u64, page: u64) -> impl Strategy<Value = Vec<Txn>> {
    let op = prop_oneof![
        4 => range(max, page).prop_map(|(s, e)| Op::Insert(s, e)),
        3 => range(max, page).prop_map(|(s, e)| Op::Overwrite(s, e)),
        2 => range(max, page).prop_map(|(s, e)| Op::Remove(s, e)),
        2 => proptest::collection::vec(range(max, page), 0..4).prop_map(Op::InsertShared),
    ];
    let txn = (
        proptest::collection::vec(op, 1..8),
        proptest::bool::weighted(0.8),
    )
        .prop_map(|(ops, commit)| Txn { ops, commit });
    proptest::collection::vec(txn, 1..12)
}

fn run(config: Config, history: Vec<Txn>, probes: Vec<u64>) -> Result<(), TestCaseError> {
    let map: PhysMap<u64> = PhysMap::with_config(config.clone()).unwrap();
    let mut oracle = Oracle::default();
    let mut next_id = 1;
    let mut held = Vec::new();
    for txn in history {
        let mut t = map.transaction();
        let mut o = oracle.clone();
        for op in txn.ops {
            let id = next_id;
            next_id += 1;
            match op {
                Op::Insert(s, e) => {
                    let r = t.insert(s..=e, id);
                    if o.overlaps(s, e) {
                        prop_assert!(
                            matches!(r, Err(Error::Overlap { .. })),
                            "insert {s:#x}..={e:#x}: {r:?}"
                        );
                    } else {
                        prop_assert_eq!(r, Ok(()));
                        o.put(s, e, id);
                    }
                }
                Op::Overwrite(s, e) => {
                    prop_assert_eq!(t.overwrite(s..=e, id), Ok(()));
                    o.put(s, e, id);
                }
                Op::Remove(s, e) => {
                    prop_assert_eq!(t.remove(s..=e), Ok(()));
                    o.cut(s, e);
                }
                Op::InsertShared(ranges) => {
                    let r = t.insert_shared(ranges.iter().map(|&(s, e)| s..=e), id);
                    let clash = ranges.iter().enumerate().any(|(i, &(s, e))| {
                        o.overlaps(s, e)
                            || ranges[i + 1..].iter().any(|&(s2, e2)| s2 <= e && s <= e2)
                    });
                    if clash {
                        prop_assert!(
                            matches!(r, Err(Error::Overlap { .. })),
                            "insert_shared {ranges:x?}: {r:?}"
                        );
                    } else {
                        prop_assert_eq!(r, Ok(()));
                        for &(s, e) in &ranges {
                            o.put(s, e, id);
                        }
                    }
                }
            }
        }
        if txn.commit {
            let before = map.snapshot();
            let g = t.commit().unwrap();
            // A transaction that changed the mapping publishes a new generation; one that
            // changed nothing (every edit refused, or none) may publish nothing.
            if o != oracle {
                prop_assert_eq!(g, before.generation() + 1);
            } else {
                prop_assert!(g == before.generation() || g == before.generation() + 1);
            }
            prop_assert_eq!(map.snapshot().generation(), g);
            // Keep the superseded snapshot with what it must still answer.
            held.push((before, oracle.clone()));
            oracle = o;
        } else {
            drop(t);
        }
        let snap = map.snapshot();
        check(&snap, &oracle, &probes).map_err(TestCaseError::fail)?;
        // Canonical shape: same as the mapping built in one go.
        let fresh = fresh(config.clone(), &oracle).snapshot();
        let (f, s) = (fresh.stats(), snap.stats());
        prop_assert_eq!(
            (s.nodes, s.flat_nodes, s.subpage_tables, s.pieces),
            (f.nodes, f.flat_nodes, f.subpage_tables, f.pieces)
        );
        prop_assert!(
            snap.canonical_form() == fresh.canonical_form(),
            "not canonical"
        );
    }
    // Old snapshots still answer exactly as when they were taken, whatever came after
    // (nothing reachable from them was reused or written).
    for (old, expected) in &held {
        check(old, expected, &probes).map_err(TestCaseError::fail)?;
    }
    drop(held);
    let snap = map.snapshot();
    prop_assert_eq!(map.memory().live_bytes, snap.stats().bytes);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn default_geometry(history in txns(u64::MAX, 4096), probes in proptest::collection::vec(any::<u64>(), 32)) {
        run(Config::default(), history, probes)?;
    }

    #[test]
    fn default_geometry_with_flat_nodes(history in txns(u64::MAX, 4096), probes in proptest::collection::vec(any::<u64>(), 32)) {
        run(Config { flat_nodes: true, ..Config::default() }, history, probes)?;
    }

    #[test]
    fn small_geometry_with_flat_nodes(history in txns((1 << 20) - 1, 16), probes in proptest::collection::vec(0u64..(1 << 20), 32)) {
        let config = Config { addr_bits: 20, page_bits: 4, level_bits: 3, flat_nodes: true, ..Config::default() };
        run(config, history, probes)?;
    }

    #[test]
    fn mid_geometry(history in txns((1 << 24) - 1, 16), probes in proptest::collection::vec(0u64..(1 << 24), 32)) {
        // 64-entry nodes over 2^20 pages: 4 levels, wide enough for sparse nodes.
        let config = Config { addr_bits: 24, page_bits: 4, level_bits: 6, ..Config::default() };
        run(config, history, probes)?;
    }

    #[test]
    fn mid_geometry_with_flat_nodes(history in txns((1 << 24) - 1, 16), probes in proptest::collection::vec(0u64..(1 << 24), 32)) {
        // 64-entry nodes (264 bytes) are bigger than a flat node: flat nodes of one level too.
        let config = Config { addr_bits: 24, page_bits: 4, level_bits: 6, flat_nodes: true, ..Config::default() };
        run(config, history, probes)?;
    }

    #[test]
    fn one_node_space(history in txns((1 << 16) - 1, 16), probes in proptest::collection::vec(any::<u64>(), 32)) {
        // A 16-bit space of 4 KiB pages (port I/O) is one node of its 16 pages; probes past
        // the space wrap around its index and must find nothing.
        let config = Config { addr_bits: 16, ..Config::default() };
        run(config, history, probes)?;
    }

    #[test]
    fn small_geometry(history in txns((1 << 20) - 1, 16), probes in proptest::collection::vec(0u64..(1 << 20), 32)) {
        // 20-bit space, 16-byte pages, 3 bits a level: deep trees, many sub-page tables.
        let config = Config { addr_bits: 20, page_bits: 4, level_bits: 3, ..Config::default() };
        run(config, history, probes)?;
    }
}
