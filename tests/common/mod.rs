//! A deliberately simple oracle: a sorted list of pieces, edited by splitting.
#![allow(dead_code)]

use physmap::{PhysMap, Snapshot};

/// One mapped piece: inclusive range, origin of its section, section id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct P {
    pub start: u64,
    pub end: u64,
    pub origin: u64,
    pub id: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Oracle {
    pub pieces: Vec<P>,
}

impl Oracle {
    pub fn overlaps(&self, s: u64, e: u64) -> bool {
        self.pieces.iter().any(|p| p.start <= e && s <= p.end)
    }

    pub fn cut(&mut self, s: u64, e: u64) {
        let mut out = Vec::new();
        for p in self.pieces.drain(..) {
            if p.end < s || p.start > e {
                out.push(p);
                continue;
            }
            if p.start < s {
                out.push(P { end: s - 1, ..p });
            }
            if p.end > e {
                out.push(P { start: e + 1, ..p });
            }
        }
        self.pieces = out;
    }

    pub fn put(&mut self, s: u64, e: u64, id: u64) {
        self.cut(s, e);
        self.pieces.push(P {
            start: s,
            end: e,
            origin: s,
            id,
        });
        self.pieces.sort_by_key(|p| p.start);
    }

    pub fn find(&self, a: u64) -> Option<P> {
        self.pieces
            .iter()
            .copied()
            .find(|p| p.start <= a && a <= p.end)
    }

    /// Addresses worth probing: every piece boundary and its neighbours.
    pub fn probes(&self) -> Vec<u64> {
        let mut v = Vec::new();
        for p in &self.pieces {
            for a in [p.start, p.end] {
                v.push(a);
                v.push(a.wrapping_sub(1));
                v.push(a.wrapping_add(1));
            }
            v.push(p.start + (p.end - p.start) / 2);
            // The same place in other children of every level: reached through compressed
            // paths and folded holes, which must find nothing there.
            v.extend((4..64).map(|b| p.start ^ 1 << b));
        }
        v
    }
}

/// Checks a snapshot against the oracle: `iter` exactly, `lookup` at `extra` and every
/// boundary ±1. Returns a description of the first disagreement.
pub fn check(snap: &Snapshot<u64>, oracle: &Oracle, extra: &[u64]) -> Result<(), String> {
    let got: Vec<(u64, u64, u64)> = snap
        .iter()
        .map(|(r, v)| (*r.start(), *r.end(), *v))
        .collect();
    let want: Vec<(u64, u64, u64)> = oracle
        .pieces
        .iter()
        .map(|p| (p.start, p.end, p.id))
        .collect();
    if got != want {
        return Err(format!("iter differs:\n got  {got:x?}\n want {want:x?}"));
    }
    for &a in oracle.probes().iter().chain(extra) {
        let got = snap
            .lookup(a)
            .map(|h| (*h.value, *h.range.start(), *h.range.end(), h.offset));
        let want = oracle.find(a).map(|p| (p.id, p.start, p.end, a - p.origin));
        if got != want {
            return Err(format!("lookup({a:#x}): got {got:x?}, want {want:x?}"));
        }
    }
    Ok(())
}

/// The same mapping built from scratch, one insert per piece.
pub fn fresh(config: physmap::Config, oracle: &Oracle) -> PhysMap<u64> {
    let map = PhysMap::with_config(config).unwrap();
    let mut txn = map.transaction();
    for p in &oracle.pieces {
        txn.insert(p.start..=p.end, p.id).unwrap();
    }
    txn.commit().unwrap();
    map
}
