//! The view of one generation's tree ([`TreeRef`]) and its accessors, on the raw reads of
//! [`Held`].

use super::entries::*;
use super::held::Held;
use crate::arena::{table_cap, Storage};
use crate::config::Geometry;
use crate::entry::Entry;
use crate::entry::RECORD;
use crate::version::Version;
use std::marker::PhantomData;

/// A read-only view of one generation's tree (see the module docs).
pub(crate) struct TreeRef<'g, V> {
    pub(super) version: &'g Version<V>,
}

impl<V> Clone for TreeRef<'_, V> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<V> Copy for TreeRef<'_, V> {}

impl<'g, V> TreeRef<'g, V> {
    /// The tree of `version`, for as long as it is borrowed.
    #[inline(always)]
    pub(crate) fn new(version: &'g Version<V>) -> Self {
        TreeRef { version }
    }

    pub(crate) fn root(self) -> TreeEntry<'g> {
        TreeEntry::new(self.version.hot.root)
    }

    pub(crate) fn geo(self) -> &'g Geometry {
        &self.version.geo
    }

    /// The raw reads of this tree ([`Held`]).
    #[inline(always)]
    pub(super) fn held(self) -> Held<'g, V> {
        Held::of(self.version)
    }

    // ----- The accessors. Every index they are given comes from an entry of a tree borrowed
    // for 'g (a `TreeEntry<'g>`, or a table row of one), so the slot is reachable from a
    // generation held for 'g (the version invariant): the rule of `held.rs`.

    /// Entry `i` of the node at unit offset `node` (`i` < fan-out).
    #[inline(always)]
    pub(super) fn entry(self, node: u32, i: usize) -> Entry {
        debug_assert!(i < self.version.geo.fanout);
        self.held().entry(node, i)
    }

    /// First page of the node at unit offset `node`.
    pub(super) fn base_of(self, node: u32) -> u64 {
        let v = self.version;
        // SAFETY: `node` comes from an entry of this tree, held for 'g (I4): its base cell
        // is in a slab chunk that never moves (I1), written before publication (I2) and not
        // written meanwhile (I3).
        unsafe { v.storage.node_base(node, v.geo.fanout) }
    }

    /// The piece of piece id `id`: a piece slot, or a page record's ([`RECORD`]).
    pub(super) fn piece_at(self, id: u32) -> PieceRef<'g> {
        let (held, page_mask) = (self.held(), self.version.hot.page_mask());
        let (piece, record) = if id & RECORD != 0 {
            let (page, section) = held.record(id & !RECORD);
            let start = page << self.version.geo.page_bits;
            (record_piece(start, page_mask, section), true)
        } else {
            (*held.piece(id), false)
        };
        PieceRef {
            piece,
            record,
            _g: PhantomData,
        }
    }

    /// The rows of the sub-page table of class `class` at `offset`, as (first byte, piece
    /// slot).
    pub(super) fn table_at(self, class: u32, offset: u32) -> Vec<(u64, u32)> {
        let (held, rows) = (self.held(), table_cap(class));
        let (page, raw) = (held.table_page(offset, rows), held.table_rows(offset, rows));
        let first = page << self.version.geo.page_bits;
        raw.into_iter()
            .map(|(off, p)| (first + off as u64, p))
            .collect()
    }

    /// The runs of the flat node at `offset`, as (first page, entry).
    pub(super) fn flat_at(self, _class: u32, offset: u32) -> Vec<(u64, Entry)> {
        let (rows, base) = self.held().flat_rows(offset);
        // Rows keep the low 32 bits of the page: the span never crosses a multiple of 2^32
        // pages (rule 3 of `canon.rs`).
        rows.into_iter()
            .map(|(low, e)| (base & !0xffff_ffff | low as u64, Entry::from_bits(e)))
            .collect()
    }

    /// The first page of the span of the flat node at `offset`.
    pub(super) fn flat_base(self, _class: u32, offset: u32) -> u64 {
        self.held().flat_rows(offset).1
    }

    /// The value of a piece of a tree borrowed for 'g.
    #[inline(always)]
    pub(crate) fn value(self, piece: PieceRef<'g>) -> &'g V {
        // SAFETY: `piece` was read from a tree borrowed for 'g (only this module makes
        // `PieceRef`s), so its section is one of a held generation's: live, holding a value,
        // not written meanwhile (I1, I3, I4, I5).
        unsafe { Storage::<V>::value(&piece.piece) }
    }
}

impl<V> Version<V> {
    /// The tree of this generation, readable for as long as `self` is borrowed (the version
    /// invariant in `version.rs`).
    #[inline(always)]
    pub(crate) fn tree(&self) -> TreeRef<'_, V> {
        TreeRef::new(self)
    }
}
