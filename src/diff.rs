//! What changed between two generations, found by walking both trees together and skipping
//! every subtree they share (same entry = same slots = same content, since a slot is not
//! reused while either generation is held).

use crate::arena::{Piece, Storage};
use crate::config::Geometry;
use crate::tree::{self, Entry, Kind, Walk};
use std::ops::RangeInclusive;

/// What a byte range maps to on one side of a [`Change`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapping<'a, V> {
    /// The section's value.
    pub value: &'a V,
    /// The whole piece (contiguous mapped range) the bytes belong to.
    pub piece: RangeInclusive<u64>,
    /// The section's origin (`offset = addr - origin`).
    pub origin: u64,
}

/// A byte range that maps differently in two generations: unmapped, mapped to another
/// section, or to the same section through a different piece (the piece was cut or grown).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change<'a, V> {
    /// The bytes concerned (inclusive), a maximal run with the same old and new piece.
    pub range: RangeInclusive<u64>,
    /// What they mapped to in the older generation.
    pub old: Option<Mapping<'a, V>>,
    /// What they map to in the newer generation.
    pub new: Option<Mapping<'a, V>>,
}

/// A raw change: (first byte, last byte, old piece, new piece).
pub(crate) type RawChange = (u64, u64, Option<Piece>, Option<Piece>);

fn same(a: &Option<Piece>, b: &Option<Piece>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(x), Some(y)) => {
            x.start == y.start && x.end == y.end && x.section == y.section && x.value == y.value
        }
        _ => false,
    }
}

/// Appends to `out`, in address order, the changes between `old` and `new` at the position
/// of height `h` at page `base`.
///
/// # Safety
/// Both entries must be reachable from generations of `storage` the caller holds.
pub(crate) unsafe fn diff<V>(
    storage: &Storage<V>,
    geo: &Geometry,
    old: Entry,
    new: Entry,
    h: u32,
    base: u64,
    out: &mut Vec<RawChange>,
) {
    if old == new {
        return;
    }
    let has_node = |e: Entry| matches!(e.kind(), Kind::Node { .. });
    if h > 0 && (has_node(old) || has_node(new)) {
        let child_pages = geo.entry_pages(h - 1);
        // SAFETY: forwarded contract.
        let (a, b) = unsafe {
            (
                tree::children(storage, geo, old, h, base),
                tree::children(storage, geo, new, h, base),
            )
        };
        for (i, (&a, &b)) in a.iter().zip(&b).enumerate() {
            if a != b {
                let cb = (base as u128 + i as u128 * child_pages) as u64;
                // SAFETY: children of reachable entries are reachable.
                unsafe { diff(storage, geo, a, b, h - 1, cb, out) };
            }
        }
        return;
    }
    // Leaves, tables or nothing on both sides: compare their pieces over this span.
    let (lo, hi) = geo.span(h, base);
    // SAFETY: forwarded contract.
    let (a, b): (Vec<Piece>, Vec<Piece>) = unsafe {
        (
            Walk::new(storage, *geo, old, lo, hi)
                .map(|(_, p)| p)
                .collect(),
            Walk::new(storage, *geo, new, lo, hi)
                .map(|(_, p)| p)
                .collect(),
        )
    };
    sweep(&a, &b, lo, hi, out);
}

/// The changes between two sorted piece lists over `[lo, hi]`.
pub(crate) fn sweep(a: &[Piece], b: &[Piece], lo: u64, hi: u64, out: &mut Vec<RawChange>) {
    let (mut i, mut j) = (0, 0);
    let mut x = lo as u128;
    let hi = hi as u128;
    while x <= hi {
        while i < a.len() && (a[i].end as u128) < x {
            i += 1;
        }
        while j < b.len() && (b[j].end as u128) < x {
            j += 1;
        }
        let pa = a.get(i).filter(|p| p.start as u128 <= x).copied();
        let pb = b.get(j).filter(|p| p.start as u128 <= x).copied();
        // The next point where either side changes.
        let mut next = hi + 1;
        for (p, list, k) in [(pa, a, i), (pb, b, j)] {
            match p {
                Some(p) => next = next.min(p.end as u128 + 1),
                None => {
                    if let Some(q) = list.get(k) {
                        next = next.min(q.start as u128);
                    }
                }
            }
        }
        if !same(&pa, &pb) {
            push(out, (x as u64, (next - 1) as u64, pa, pb));
        }
        x = next;
    }
}

/// Appends a change, merging it with the previous one when they touch and agree.
pub(crate) fn push(out: &mut Vec<RawChange>, c: RawChange) {
    if let Some(last) = out.last_mut() {
        if last.1.checked_add(1) == Some(c.0) && same(&last.2, &c.2) && same(&last.3, &c.3) {
            last.1 = c.1;
            return;
        }
    }
    out.push(c);
}
