//! In-order walks of the pieces overlapping a range ([`Walk`]).

use super::{entries::*, tree::*};
use crate::entry::{Entry, Kind};

impl<'g, V> TreeRef<'g, V> {
    /// The pieces overlapping `[lo, hi]`, in address order, each once.
    pub(crate) fn walk(self, lo: u64, hi: u64) -> Walk<'g, V> {
        self.walk_from(self.root(), lo, hi)
    }

    /// The same, under entry `e` of this tree only.
    pub(crate) fn walk_from(self, e: TreeEntry<'g>, lo: u64, hi: u64) -> Walk<'g, V> {
        Walk {
            tree: self,
            lo,
            hi,
            stack: Vec::new(),
            pending: Vec::new(),
            last: None,
            root: (lo <= hi).then_some(e.get()),
        }
    }
}

/// In-order walk of the pieces overlapping `[lo, hi]`, each piece once.
pub(crate) struct Walk<'g, V> {
    tree: TreeRef<'g, V>,
    lo: u64,
    hi: u64,
    /// (node, next child, end child)
    stack: Vec<(u32, usize, usize)>,
    /// Entries of a flat node or pieces of a sub-page table still to visit (reversed).
    pending: Vec<Entry>,
    last: Option<u32>,
    root: Option<Entry>,
}

impl<'g, V> Walk<'g, V> {
    /// Handles one entry (of the walked tree); returns a piece to yield, if any.
    fn visit(&mut self, e: Entry) -> Option<PieceRef<'g>> {
        match e.kind() {
            Kind::Empty => None,
            Kind::Leaf(p) => self.offer(p),
            Kind::Subpage(class, offset) => {
                let rows = self.tree.table_at(class, offset);
                let pieces = rows.into_iter().rev().map(|(_, p)| Entry::leaf(p));
                self.pending.extend(pieces);
                None
            }
            Kind::Flat(class, offset) => {
                let page_bits = self.tree.geo().page_bits;
                let (lo, hi) = (self.lo >> page_bits, self.hi >> page_bits);
                let rows = self.tree.flat_at(class, offset);
                // The runs that overlap [lo, hi] (a run ends where the next starts).
                let n = rows.partition_point(|r| r.0 <= hi);
                let from = rows[..n].partition_point(|r| r.0 <= lo).saturating_sub(1);
                self.pending.extend(rows[from..n].iter().rev().map(|r| r.1));
                None
            }
            Kind::Node { shift, index } => {
                let h = self.tree.height(shift);
                let base = self.tree.base_of(index);
                let r = self
                    .tree
                    .geo()
                    .children_overlapping(h, base, self.lo, self.hi);
                if !r.is_empty() {
                    self.stack.push((index, r.start, r.end));
                }
                None
            }
        }
    }

    fn offer(&mut self, p: u32) -> Option<PieceRef<'g>> {
        if self.last == Some(p) {
            return None;
        }
        let piece = self.tree.piece_at(p);
        if piece.end < self.lo || piece.start > self.hi {
            return None;
        }
        self.last = Some(p);
        Some(piece)
    }
}

impl<'g, V> Iterator for Walk<'g, V> {
    type Item = PieceRef<'g>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(e) = self.pending.pop() {
                if let Some(hit) = self.visit(e) {
                    return Some(hit);
                }
                continue;
            }
            if let Some(root) = self.root.take() {
                if let Some(hit) = self.visit(root) {
                    return Some(hit);
                }
                continue;
            }
            let top = self.stack.last_mut()?;
            let (node, next, end) = *top;
            if next >= end {
                self.stack.pop();
                continue;
            }
            top.1 += 1;
            let e = self.tree.entry(node, next);
            if let Some(hit) = self.visit(e) {
                return Some(hit);
            }
        }
    }
}
