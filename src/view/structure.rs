//! The writer's structural queries on a tree: what a node or table holds, a position's
//! canonical children.

use super::{entries::*, tree::*};
use crate::arena::{node_slot, table_cap, SubEntry};
use crate::entry::{Entry, Kind};
use std::marker::PhantomData;

impl<'g, V> TreeRef<'g, V> {
    /// Height and first page of a node entry of this tree.
    pub(crate) fn node_info(self, e: TreeEntry<'g>) -> Option<(u32, u64)> {
        match e.kind() {
            Kind::Node { shift, index } => Some((self.height(shift), self.base_of(index))),
            _ => None,
        }
    }

    /// The entries of node `index` (of height `h`) that lie inside the space.
    pub(super) fn entries(self, index: u32, h: u32) -> impl Iterator<Item = TreeEntry<'g>> + 'g {
        let n = self.geo().children_in_space(h, self.base_of(index));
        (0..n).map(move |i| TreeEntry::new(self.entry(index, i)))
    }

    /// Whether node entry `e` of this tree holds exactly `kids` (a fan-out of entries).
    pub(crate) fn node_holds(self, e: TreeEntry<'g>, kids: &[Entry]) -> bool {
        match e.kind() {
            Kind::Node { index, .. } => kids
                .iter()
                .enumerate()
                .all(|(i, k)| self.entry(index, i) == *k),
            _ => false,
        }
    }

    /// Whether `e` is a flat node of this tree holding exactly `rows` (first page, entry).
    pub(crate) fn flat_holds(self, e: TreeEntry<'g>, rows: &[(u64, Entry)]) -> bool {
        match e.kind() {
            Kind::Flat(class, offset) => self.flat_at(class, offset) == rows,
            _ => false,
        }
    }

    /// The sub-page table under `e` (an entry of this tree) for the page holding `addr`,
    /// if there is one.
    pub(crate) fn table_under(self, e: TreeEntry<'g>, addr: u64) -> Option<TreeEntry<'g>> {
        let geo = self.geo();
        let mut e = e.get();
        loop {
            match e.kind() {
                Kind::Node { shift, index } => {
                    e = self.entry(index, ((addr >> shift) & geo.mask) as usize);
                }
                Kind::Flat(class, offset) => {
                    let page = addr >> geo.page_bits;
                    let rows = self.flat_at(class, offset);
                    e = rows
                        .iter()
                        .rev()
                        .find(|r| r.0 <= page)
                        .map_or(Entry::EMPTY, |r| r.1);
                }
                Kind::Subpage(class, offset) => {
                    let rows = table_cap(class);
                    // `offset` comes from a table entry of this tree, `rows` is its class's.
                    let page = self.held().table_page(offset, rows);
                    return (page == addr >> geo.page_bits).then_some(TreeEntry::new(e));
                }
                Kind::Empty | Kind::Leaf(_) => return None,
            }
        }
    }

    /// Whether table entry `e` of this tree holds exactly `rows`.
    pub(crate) fn table_holds(self, e: TreeEntry<'g>, rows: &[SubEntry]) -> bool {
        match e.kind() {
            Kind::Subpage(class, offset) => self
                .table_at(class, offset)
                .into_iter()
                .eq(rows.iter().map(|r| (r.start, r.piece))),
            _ => false,
        }
    }

    /// The number of the node at unit offset `index` (its slot), for listings.
    pub(super) fn node_number(self, index: u32) -> u32 {
        node_slot(index, self.geo().fanout)
    }

    /// The height of the node a node entry with `shift` points to.
    pub(super) fn height(self, shift: u32) -> u32 {
        self.geo().height_of_shift(shift)
    }

    /// The canonical entries of the children of the position of height `h > 0` at page
    /// `base` whose entry is `e`: a fan-out-sized vector, entries past the space left empty.
    /// Filled by ranges, not child by child: a leaf stands for every child its piece
    /// overlaps, a compressed node or table for the one child that holds it.
    pub(crate) fn children(self, e: TreeEntry<'g>, h: u32, base: u64) -> Kids<'g> {
        let geo = self.geo();
        let run = |range: std::ops::Range<usize>| Kids {
            repr: Repr::Run(range, e.get()),
            fanout: geo.fanout,
            _g: PhantomData,
        };
        match e.kind() {
            Kind::Empty => run(0..0),
            Kind::Leaf(p) => {
                let piece = self.piece_at(p);
                run(geo.children_overlapping(h, base, piece.start, piece.end))
            }
            Kind::Subpage(class, offset) => {
                match geo.child_holding(h, base, self.table_at(class, offset)[0].0) {
                    Some(i) => run(i..i + 1),
                    None => run(0..0),
                }
            }
            // A flat node standing here through a compressed path (the callers never ask
            // for the children of a flat node's own span: `rebuild` builds that span afresh,
            // `diff` walks it).
            Kind::Flat(class, offset) => {
                let at = self.flat_base(class, offset) << geo.page_bits;
                match geo.child_holding(h, base, at) {
                    Some(i) => run(i..i + 1),
                    None => run(0..0),
                }
            }
            Kind::Node { shift, index } if self.height(shift) == h => {
                let mut kids = vec![Entry::EMPTY; geo.fanout];
                let n = geo.children_in_space(h, base);
                // A node of this tree; `n` <= fan-out.
                self.held().node_entries(index, &mut kids[..n]);
                Kids {
                    repr: Repr::Dense(kids),
                    fanout: geo.fanout,
                    _g: PhantomData,
                }
            }
            Kind::Node { index, .. } => {
                let at = self.base_of(index) << geo.page_bits;
                match geo.child_holding(h, base, at) {
                    Some(i) => run(i..i + 1),
                    None => run(0..0),
                }
            }
        }
    }
}
