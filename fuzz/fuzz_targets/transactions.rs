//! Random transaction sequences against an interval oracle (`tests/common`): inserts,
//! overwrites, removes, batches, commits, rollbacks, held snapshots and readers, on small
//! geometries. After every commit the snapshot, a reader and every held snapshot agree with
//! their oracles, the tree is the canonical one of its mapping, and with nothing held the
//! arena is exactly the newest tree.
#![no_main]

#[path = "../../tests/common/mod.rs"]
mod common;

use arbitrary::Arbitrary;
use common::{check, fresh, Oracle};
use libfuzzer_sys::fuzz_target;
use physmap::{Config, PhysMap, Snapshot};

#[derive(Arbitrary, Debug)]
enum Op {
    Insert { start: u16, len: u16 },
    Overwrite { start: u16, len: u16 },
    Remove { start: u16, len: u16 },
    Extend { start: u16, len: u8, count: u8 },
    Commit,
    Rollback,
    Hold,
    Release,
}

#[derive(Arbitrary, Debug)]
struct Input {
    geometry: u8,
    ops: Vec<Op>,
}

fn config(g: u8) -> Config {
    let (addr_bits, page_bits, level_bits) = match g % 4 {
        0 => (16, 4, 2),
        1 => (16, 0, 3),
        2 => (20, 12, 9),
        _ => (64, 12, 9),
    };
    Config {
        addr_bits,
        page_bits,
        level_bits,
        // Both layouts: bit 2 of the geometry byte turns flat nodes on.
        flat_nodes: g & 4 != 0,
        ..Config::default()
    }
}

/// Last address of the space.
fn max(cfg: &Config) -> u64 {
    if cfg.addr_bits == 64 {
        u64::MAX
    } else {
        (1u64 << cfg.addr_bits) - 1
    }
}

/// `[start, start + len]` scaled into the space (inclusive; never empty).
fn range(cfg: &Config, start: u16, len: u16) -> (u64, u64) {
    let max = max(cfg);
    let scale = if cfg.addr_bits > 16 { 1u64 << (cfg.addr_bits.min(40) - 16) } else { 1 };
    let s = (start as u64 * scale).min(max);
    let e = s.saturating_add(len as u64 * scale).min(max);
    (s, e)
}

fuzz_target!(|input: Input| {
    let cfg = config(input.geometry);
    let map: PhysMap<u64> = PhysMap::with_config(cfg.clone()).unwrap();
    let mut committed = Oracle::default();
    let mut working = committed.clone();
    let mut txn = Some(map.transaction());
    let mut held: Vec<(Snapshot<u64>, Oracle)> = Vec::new();
    let mut reader = None;
    let mut next_id = 1u64;
    for op in input.ops.into_iter().take(64) {
        let t = txn.get_or_insert_with(|| map.transaction());
        match op {
            Op::Insert { start, len } => {
                let (s, e) = range(&cfg, start, len);
                let ok = t.insert(s..=e, next_id).is_ok();
                assert_eq!(ok, !working.overlaps(s, e), "insert {s:#x}..={e:#x}");
                if ok {
                    working.put(s, e, next_id);
                }
            }
            Op::Overwrite { start, len } => {
                let (s, e) = range(&cfg, start, len);
                t.overwrite(s..=e, next_id).unwrap();
                working.put(s, e, next_id);
            }
            Op::Remove { start, len } => {
                let (s, e) = range(&cfg, start, len);
                t.remove(s..=e).unwrap();
                working.cut(s, e);
            }
            Op::Extend { start, len, count } => {
                let (s0, _) = range(&cfg, start, 0);
                let (_, step) = range(&cfg, 0, len as u16);
                let batch: Vec<(u64, u64)> = (0..count as u64 % 40)
                    .map_while(|k| {
                        let s = s0.checked_add(k.checked_mul(step + 1)?)?;
                        Some((s, s.checked_add(step)?))
                    })
                    .filter(|&(_, e)| e <= max(&cfg))
                    .collect();
                let ok = !batch.iter().any(|&(s, e)| working.overlaps(s, e));
                let ids: Vec<u64> = (0..batch.len() as u64).map(|k| next_id + k).collect();
                let r = t.extend(batch.iter().zip(&ids).map(|(&(s, e), &id)| (s..=e, id)));
                assert_eq!(r.is_ok(), ok, "extend {batch:x?}");
                if ok {
                    for (&(s, e), &id) in batch.iter().zip(&ids) {
                        working.put(s, e, id);
                    }
                    next_id += ids.len() as u64;
                }
            }
            Op::Commit => {
                txn.take().unwrap().commit().unwrap();
                committed = working.clone();
                let snap = map.snapshot();
                check(&snap, &committed, &[]).unwrap();
                let r = reader.get_or_insert_with(|| map.reader());
                for a in committed.probes() {
                    let got = r.lookup(a).map(|h| (*h.value, h.offset));
                    let want = committed.find(a).map(|p| (p.id, a - p.origin));
                    assert_eq!(got, want, "reader at {a:#x}");
                }
                assert_eq!(
                    snap.canonical_form(),
                    fresh(cfg.clone(), &committed).snapshot().canonical_form(),
                    "not the canonical tree"
                );
                for (s, o) in &held {
                    check(s, o, &[]).unwrap();
                }
            }
            Op::Rollback => {
                txn = None;
                working = committed.clone();
            }
            Op::Hold => held.push((map.snapshot(), committed.clone())),
            Op::Release => {
                held.pop();
            }
        }
        next_id += 1;
    }
    drop(txn);
    drop(held);
    drop(reader);
    let mem = map.memory();
    assert_eq!(mem.live_bytes, map.snapshot().stats().bytes, "{mem:?}");
});
