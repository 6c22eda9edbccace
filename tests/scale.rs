//! Scale paths: bulk build (sequential and parallel), diff between generations, range queries.

mod common;

use common::{Oracle, P};
use physmap::{Config, Error, PhysMap};
use proptest::prelude::*;

/// The oracle's diff: elementary intervals where the covering piece differs, merged.
fn oracle_diff(old: &Oracle, new: &Oracle) -> Vec<(u64, u64, Option<u64>, Option<u64>)> {
    let mut cuts: Vec<u128> = Vec::new();
    for p in old.pieces.iter().chain(&new.pieces) {
        cuts.push(p.start as u128);
        cuts.push(p.end as u128 + 1);
    }
    cuts.sort();
    cuts.dedup();
    let find = |o: &Oracle, a: u64| -> Option<P> { o.find(a) };
    let mut out: Vec<(u64, u64, Option<P>, Option<P>)> = Vec::new();
    for w in cuts.windows(2) {
        let (a, b) = (w[0] as u64, (w[1] - 1) as u64);
        let (x, y) = (find(old, a), find(new, a));
        let ident = |p: Option<P>| p.map(|p| (p.start, p.end, p.id));
        if ident(x) == ident(y) {
            continue;
        }
        if let Some(last) = out.last_mut() {
            if last.1 + 1 == a && ident(last.2) == ident(x) && ident(last.3) == ident(y) {
                last.1 = b;
                continue;
            }
        }
        out.push((a, b, x, y));
    }
    out.into_iter()
        .map(|(a, b, x, y)| (a, b, x.map(|p| p.id), y.map(|p| p.id)))
        .collect()
}

#[derive(Debug, Clone)]
enum Op {
    Put(u64, u64),
    Cut(u64, u64),
}

fn ops(max: u64) -> impl Strategy<Value = Vec<Op>> {
    let range =
        (0..max, 1u64..(max / 8)).prop_map(move |(s, len)| (s, s.saturating_add(len - 1).min(max)));
    proptest::collection::vec(
        prop_oneof![2 => range.clone().prop_map(|(s, e)| Op::Put(s, e)), 1 => range.prop_map(|(s, e)| Op::Cut(s, e))],
        1..12,
    )
}

fn apply(map: &PhysMap<u64>, oracle: &mut Oracle, ops: &[Op], next: &mut u64) {
    let mut t = map.transaction();
    for op in ops {
        match *op {
            Op::Put(s, e) => {
                *next += 1;
                t.overwrite(s..=e, *next).unwrap();
                oracle.put(s, e, *next);
            }
            Op::Cut(s, e) => {
                t.remove(s..=e).unwrap();
                oracle.cut(s, e);
            }
        }
    }
    t.commit().unwrap();
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    /// diff agrees with a diff of the two oracles, both ways round, over several commits.
    #[test]
    fn diff_matches_the_oracles(before in proptest::collection::vec(ops((1 << 20) - 1), 1..4), after in proptest::collection::vec(ops((1 << 20) - 1), 1..4)) {
        let config = Config { addr_bits: 20, page_bits: 4, level_bits: 3, ..Config::default() };
        let map = PhysMap::with_config(config).unwrap();
        let (mut oracle, mut next) = (Oracle::default(), 0);
        for o in &before {
            apply(&map, &mut oracle, o, &mut next);
        }
        let (s1, o1) = (map.snapshot(), oracle.clone());
        for o in &after {
            apply(&map, &mut oracle, o, &mut next);
        }
        let s2 = map.snapshot();
        let got: Vec<_> = s2.diff(&s1).into_iter().map(|c| (*c.range.start(), *c.range.end(), c.old.map(|m| *m.value), c.new.map(|m| *m.value))).collect();
        prop_assert_eq!(&got, &oracle_diff(&o1, &oracle));
        let back: Vec<_> = s1.diff(&s2).into_iter().map(|c| (*c.range.start(), *c.range.end(), c.old.map(|m| *m.value), c.new.map(|m| *m.value))).collect();
        prop_assert_eq!(&back, &oracle_diff(&oracle, &o1));
        prop_assert!(s2.diff(&s2).is_empty());
    }

    /// range() returns exactly the pieces overlapping the query, in order.
    #[test]
    fn range_matches_the_oracle(history in proptest::collection::vec(ops((1 << 20) - 1), 1..4), q in (0u64..(1 << 20), 0u64..(1 << 20))) {
        let config = Config { addr_bits: 20, page_bits: 4, level_bits: 3, ..Config::default() };
        let map = PhysMap::with_config(config).unwrap();
        let (mut oracle, mut next) = (Oracle::default(), 0);
        for o in &history {
            apply(&map, &mut oracle, o, &mut next);
        }
        let (lo, hi) = (q.0.min(q.1), q.0.max(q.1));
        let got: Vec<_> = map.snapshot().range(lo..=hi).unwrap().map(|(r, v)| (*r.start(), *r.end(), *v)).collect();
        let want: Vec<_> = oracle.pieces.iter().filter(|p| p.end >= lo && p.start <= hi).map(|p| (p.start, p.end, p.id)).collect();
        prop_assert_eq!(got, want);
    }

    /// A batch through `extend` gives the same tree as the same pieces inserted in small
    /// transactions (which never take the bulk path).
    #[test]
    fn extend_equals_one_at_a_time(segs in proptest::collection::vec((0u64..500, 1u64..16), 1..1500)) {
        let config = Config { addr_bits: 16, page_bits: 2, level_bits: 2, ..Config::default() };
        // Mostly touching ranges (long runs take the bulk path), sometimes a gap.
        let mut ranges = Vec::new();
        let (mut end, mut run_start, mut longest_run) = (0u64, 0u64, 0u64);
        for (gap, len) in segs {
            let s = end + if gap == 0 { 37 } else { 0 };
            if s != end {
                run_start = s;
            }
            let e = s + len - 1;
            if e >= 1 << 16 { break; }
            ranges.push((s, e));
            end = e + 1;
            longest_run = longest_run.max(end - run_start);
        }
        let bulk = PhysMap::from_ranges(config.clone(), ranges.iter().enumerate().map(|(i, &(s, e))| (s..=e, i as u64))).unwrap();
        let single = PhysMap::with_config(config).unwrap();
        // Every other range first, then the rest: no transaction has a run of touching ranges.
        for parity in [0, 1] {
            let mut t = single.transaction();
            for (i, &(s, e)) in ranges.iter().enumerate().filter(|(i, _)| i % 2 == parity) {
                t.insert(s..=e, i as u64).unwrap();
            }
            t.commit().unwrap();
        }
        prop_assert_eq!(bulk.snapshot().canonical_form(), single.snapshot().canonical_form());
        prop_assert_eq!(single.build_counts().bulk, 0);
        if longest_run >= 4096 {
            // It covers an aligned 1 KiB span (height 4) holding over 64 pieces.
            prop_assert!(bulk.build_counts().bulk > 0, "long runs take the bulk path");
        }
        let a: Vec<_> = bulk.snapshot().iter().map(|(r, v)| (r, *v)).collect();
        let b: Vec<_> = single.snapshot().iter().map(|(r, v)| (r, *v)).collect();
        prop_assert_eq!(a, b);
    }
}

fn pages(n: u64) -> impl Iterator<Item = (std::ops::Range<u64>, u64)> {
    (0..n).map(|i| (i << 12..(i + 1) << 12, i % 2))
}

#[test]
fn parallel_bulk_build_of_a_million_pages_is_the_canonical_tree() {
    // 1M private/shared pages: whole 1 GiB spans of 262144 pages take the parallel branch.
    let bulk = PhysMap::from_ranges(Config::default(), pages(1 << 20)).unwrap();
    assert!(
        bulk.build_counts().parallel > 0,
        "the parallel branch was taken"
    );
    assert!(bulk.build_counts().bulk > 0);
    // The same mapping, built by the sequential span-by-span path: even pages, then odd.
    let single = PhysMap::new();
    for parity in [0, 1] {
        let mut t = single.transaction();
        for (r, v) in pages(1 << 20).filter(|(_, v)| *v == parity) {
            t.insert(r, v).unwrap();
        }
        t.commit().unwrap();
    }
    assert_eq!(single.build_counts().parallel, 0);
    let (a, b) = (bulk.snapshot(), single.snapshot());
    assert_eq!(a.stats().nodes, b.stats().nodes);
    assert_eq!(a.canonical_form(), b.canonical_form());
    let want: Vec<_> = pages(1 << 20)
        .map(|(r, v)| (r.start, r.end - 1, v))
        .collect();
    let got: Vec<_> = a.iter().map(|(r, v)| (*r.start(), *r.end(), *v)).collect();
    assert_eq!(got, want);
    for i in (0..1u64 << 20).step_by(997) {
        let h = a.lookup((i << 12) + 0x123).unwrap();
        assert_eq!(
            (*h.value, h.range.clone(), h.offset),
            (i % 2, (i << 12)..=(i << 12) + 0xfff, 0x123)
        );
    }
    assert!(a.lookup(1 << 32).is_none());
    assert_eq!(bulk.memory().live_bytes, a.stats().bytes);
}

#[test]
fn parallel_branch_in_a_small_space_with_byte_pages() {
    // 65536 four-byte pieces fill a 256 KiB span of 1-byte pages: above the parallel
    // threshold. With flat nodes, every 64-page span (16 pieces) is one (built in the
    // parallel tasks' local sinks; a 64-entry node is bigger than a flat node).
    for flat_nodes in [false, true] {
        let config = Config {
            addr_bits: 20,
            page_bits: 0,
            level_bits: 6,
            flat_nodes,
            ..Config::default()
        };
        let bulk = PhysMap::from_ranges(
            config.clone(),
            (0..65536u64).map(|i| (4 * i..=4 * i + 3, i)),
        )
        .unwrap();
        assert!(bulk.build_counts().parallel > 0);
        assert_eq!(bulk.snapshot().stats().flat_nodes > 0, flat_nodes);
        let single = PhysMap::with_config(config).unwrap();
        for parity in [0, 1] {
            let mut t = single.transaction();
            for i in (0..65536u64).filter(|i| i % 2 == parity) {
                t.insert(4 * i..=4 * i + 3, i).unwrap();
            }
            t.commit().unwrap();
        }
        assert_eq!(
            bulk.snapshot().canonical_form(),
            single.snapshot().canonical_form()
        );
        for a in [0u64, 1, 4095, 65535, 65536, 262_143, 262_144] {
            assert_eq!(
                bulk.snapshot().lookup(a).map(|h| *h.value),
                single.snapshot().lookup(a).map(|h| *h.value)
            );
        }
        assert_eq!(bulk.memory().live_bytes, bulk.snapshot().stats().bytes);
    }
}

#[test]
fn extend_is_all_or_nothing() {
    let map = PhysMap::new();
    let mut t = map.transaction();
    t.insert(0x10_0000..0x20_0000, 0u64).unwrap();
    t.commit().unwrap();
    let before = map.snapshot().canonical_form();
    let mut t = map.transaction();
    // Overlap inside the batch.
    let e = t
        .extend([(0x1000..0x3000, 1u64), (0x2000..0x4000, 2)])
        .unwrap_err();
    assert_eq!(
        e,
        Error::Overlap {
            range: 0x2000..=0x3fff,
            existing: 0x1000..=0x2fff
        }
    );
    // Overlap with the map.
    let e = t
        .extend([(0x1000..0x2000, 1u64), (0x1f_f000..0x20_1000, 2)])
        .unwrap_err();
    assert!(
        matches!(&e, Error::Overlap { existing, .. } if *existing == (0x10_0000..=0x1f_ffff)),
        "{e}"
    );
    // An invalid range anywhere.
    #[allow(clippy::reversed_empty_ranges)]
    let e = t
        .extend([(0x1000..0x2000, 1u64), (0x5000..0x4000, 2)])
        .unwrap_err();
    assert!(matches!(e, Error::InvertedRange { .. }));
    t.commit().unwrap();
    assert_eq!(map.snapshot().canonical_form(), before);
    assert_eq!(map.snapshot().iter().count(), 1);
    // Capacity: refused before anything is allocated.
    let small = PhysMap::with_config(Config {
        max_pieces: 10,
        ..Config::default()
    })
    .unwrap();
    let mut t = small.transaction();
    assert!(matches!(
        t.extend((0..20u64).map(|i| (i << 12..(i + 1) << 12, i))),
        Err(Error::CapacityExhausted { .. })
    ));
    t.extend((0..5u64).map(|i| (i << 12..(i + 1) << 12, i)))
        .unwrap();
    drop(t); // rolled back
    assert_eq!(small.snapshot().iter().count(), 0);
    assert_eq!(small.memory().sections, 0);
}

#[test]
fn diff_of_a_one_range_change_touches_only_that_range() {
    let map = PhysMap::from_ranges(Config::default(), pages(100_000)).unwrap();
    let s1 = map.snapshot();
    let mut t = map.transaction();
    t.overwrite(50_000 << 12..50_001 << 12, 7).unwrap();
    t.commit().unwrap();
    let s2 = map.snapshot();
    let d = s2.diff(&s1);
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].range, (50_000 << 12)..=(50_001 << 12) - 1);
    assert_eq!(
        (
            d[0].old.as_ref().map(|m| *m.value),
            d[0].new.as_ref().map(|m| *m.value)
        ),
        (Some(0), Some(7))
    );
    assert_eq!(d[0].new.as_ref().unwrap().origin, 50_000 << 12);
}

#[test]
fn a_long_run_takes_the_bulk_path_and_matches_the_sequential_tree() {
    let config = Config {
        addr_bits: 16,
        page_bits: 2,
        level_bits: 2,
        ..Config::default()
    };
    let bulk =
        PhysMap::from_ranges(config.clone(), (0..2000u64).map(|i| (i * 8..i * 8 + 8, i))).unwrap();
    assert!(bulk.build_counts().bulk > 0);
    assert_eq!(
        bulk.build_counts().parallel,
        0,
        "2000 pieces stay below the parallel threshold"
    );
    let single = PhysMap::with_config(config).unwrap();
    for parity in [0, 1] {
        let mut t = single.transaction();
        for i in (0..2000u64).filter(|i| i % 2 == parity) {
            t.insert(i * 8..i * 8 + 8, i).unwrap();
        }
        t.commit().unwrap();
    }
    assert_eq!(single.build_counts().bulk, 0);
    assert_eq!(
        bulk.snapshot().canonical_form(),
        single.snapshot().canonical_form()
    );
}
