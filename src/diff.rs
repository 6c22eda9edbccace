//! What changed between two generations, found by walking both trees together and skipping
//! every subtree they share (same entry = same slots = same content, since a slot is not
//! reused while either generation is held).

use crate::entry::Kind;
use crate::view::{PieceRef, TreeEntry, TreeRef};
use std::ops::RangeInclusive;

/// What a byte range maps to on one side of a [`Change`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapping<'a, V> {
    /// The section's value.
    pub value: &'a V,
    /// The whole piece (contiguous mapped range) the bytes belong to.
    pub piece: RangeInclusive<u64>,
    /// The piece's origin (`offset = addr - origin`): the start of the range its section was
    /// made for.
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
pub(crate) type RawChange<'g> = (u64, u64, Option<PieceRef<'g>>, Option<PieceRef<'g>>);

/// Same piece: same bytes and same section (the section cell identifies the section: a slot
/// is not reused while either generation is held).
fn same(a: &Option<PieceRef<'_>>, b: &Option<PieceRef<'_>>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(x), Some(y)) => x.start == y.start && x.end == y.end && x.section == y.section,
        _ => false,
    }
}

/// Appends to `out`, in address order, the changes between `old` (an entry of `older`) and
/// `new` (an entry of `newer`) at the position of height `h` at page `base`. The two trees
/// share one storage, so an entry equal on both sides is the same subtree and is skipped.
pub(crate) fn diff<'g, V>(
    older: TreeRef<'g, V>,
    newer: TreeRef<'g, V>,
    old: TreeEntry<'g>,
    new: TreeEntry<'g>,
    h: u32,
    base: u64,
    out: &mut Vec<RawChange<'g>>,
) {
    if old.get() == new.get() {
        return;
    }
    // Descend where a node stands on either side, unless a flat node does (its span has no
    // nodes of its own to descend into: its pieces are compared below).
    let has_node = |e: TreeEntry<'_>| matches!(e.kind(), Kind::Node { .. });
    let has_flat = |e: TreeEntry<'_>| matches!(e.kind(), Kind::Flat(..));
    if h > 0 && (has_node(old) || has_node(new)) && !has_flat(old) && !has_flat(new) {
        let geo = newer.geo();
        let a = older.children(old, h, base);
        let b = newer.children(new, h, base);
        for i in 0..a.len() {
            let (a, b) = (a.at(i), b.at(i));
            if a.get() != b.get() {
                diff(older, newer, a, b, h - 1, geo.child_base(h, base, i), out);
            }
        }
        return;
    }
    // Leaves, tables or nothing on both sides: compare their pieces over this span.
    let (lo, hi) = newer.geo().span(h, base);
    let a: Vec<_> = older.walk_from(old, lo, hi).collect();
    let b: Vec<_> = newer.walk_from(new, lo, hi).collect();
    sweep(&a, &b, lo, hi, out);
}

/// The changes between two sorted piece lists over `[lo, hi]`.
pub(crate) fn sweep<'g>(
    a: &[PieceRef<'g>],
    b: &[PieceRef<'g>],
    lo: u64,
    hi: u64,
    out: &mut Vec<RawChange<'g>>,
) {
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
fn push<'g>(out: &mut Vec<RawChange<'g>>, c: RawChange<'g>) {
    if let Some(last) = out.last_mut() {
        if last.1.checked_add(1) == Some(c.0) && same(&last.2, &c.2) && same(&last.3, &c.3) {
            last.1 = c.1;
            return;
        }
    }
    out.push(c);
}
