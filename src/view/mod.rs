//! [`TreeRef`]: a safe, read-only view of one generation's tree, valid for a lifetime `'g`.
//!
//! A `TreeRef<'g, V>` is made only from a `&'g Version<V>` (see the version invariant in
//! `version.rs`): for `'g`, every slot reachable from its root exists (I1, I2) and is not
//! written (I3, I4). That one fact is what the few `unsafe` blocks below rely on; everything
//! built on them (the lookup, in-order walks, a node's children, the shape, the dump, the
//! fingerprint) is safe code, and the writer reads its current tree through the same view.
//!
//! The walk: the entry's tag says what it is; a node entry carries the shift of its node's
//! index (`entry.rs`), so a path may skip levels. Every lookup ends with "does the piece
//! really hold the address" (QEMU's final check), which makes early leaves, folded holes and
//! skipped levels correct: if a piece holds `addr`, the walk reaches it, because a piece
//! overlaps every span on the path to `addr`.
//!
//! Here: the view and its raw accessors (the read side's only `unsafe`); `entries` (what a
//! view hands out), `find` (the lookup), `walk` (in-order walks), `structure` (the writer's
//! queries: what a node holds, a position's children), `inspect` (shape, fingerprint, dump).

use crate::arena::{table_cap, Piece, Storage, SubEntry, NODE_UNIT};
use crate::canon;
use crate::config::Geometry;
use crate::entry::RECORD;
use crate::entry::{Entry, Kind};
use crate::version::{Hot, Version};
use std::marker::PhantomData;

mod entries;
mod find;
mod inspect;
mod structure;
mod walk;

pub(crate) use entries::*;
pub(crate) use find::*;
pub(crate) use walk::*;

/// A read-only view of one generation's tree (see the module docs).
pub(crate) struct TreeRef<'g, V> {
    version: &'g Version<V>,
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

    // ----- The raw accessors, private to this module: the only `unsafe` of the read side.
    // Every index they are given comes from an entry of a tree borrowed for 'g (a
    // `TreeEntry<'g>`, or a table row of one), so the slot is reachable from a generation
    // held for 'g (the version invariant): exactly the contract of the `Storage` readers.

    /// Entry `i` of the node at unit offset `node` (`i` < fan-out).
    #[inline(always)]
    fn entry(self, node: u32, i: usize) -> Entry {
        debug_assert!(i < self.version.geo.fanout);
        // SAFETY: see above (I1-I4).
        unsafe { self.version.hot.bases.entry(node, i) }
    }

    /// First page of the node at unit offset `node`.
    fn base_of(self, node: u32) -> u64 {
        let v = self.version;
        // SAFETY: see above (I1-I4).
        unsafe { v.storage.node_base(node, v.geo.fanout) }
    }

    /// The piece of piece id `id`: a piece slot, or a page record's ([`RECORD`]).
    fn piece_at(self, id: u32) -> PieceRef<'g> {
        let (bases, page_mask) = (self.version.hot.bases, self.version.hot.page_mask());
        let (piece, record) = if id & RECORD != 0 {
            // SAFETY: see above (I1-I4).
            let (page, section) = unsafe { bases.record(id & !RECORD) };
            let start = page << self.version.geo.page_bits;
            (record_piece(start, page_mask, section), true)
        } else {
            // SAFETY: see above (I1-I4).
            (*unsafe { bases.piece(id) }, false)
        };
        PieceRef {
            piece,
            record,
            _g: PhantomData,
        }
    }

    /// The rows of the sub-page table of class `class` at `offset`, as (first byte, piece
    /// slot).
    fn table_at(self, class: u32, offset: u32) -> Vec<(u64, u32)> {
        let (bases, rows) = (self.version.hot.bases, table_cap(class));
        // SAFETY: see above (I1-I4).
        let (page, raw) = unsafe {
            (
                bases.table_page(offset, rows),
                bases.table_rows(offset, rows),
            )
        };
        let first = page << self.version.geo.page_bits;
        raw.into_iter()
            .map(|(off, p)| (first + off as u64, p))
            .collect()
    }

    /// The runs of the flat node at `offset`, as (first page, entry).
    fn flat_at(self, _class: u32, offset: u32) -> Vec<(u64, Entry)> {
        // SAFETY: see above (I1-I4).
        let (rows, base) = unsafe { self.version.hot.bases.flat_rows(offset) };
        // Rows keep the low 32 bits of the page: the span never crosses a multiple of 2^32
        // pages (rule 3 of `canon.rs`).
        rows.into_iter()
            .map(|(low, e)| (base & !0xffff_ffff | low as u64, Entry::from_bits(e)))
            .collect()
    }

    /// The first page of the span of the flat node at `offset`.
    fn flat_base(self, _class: u32, offset: u32) -> u64 {
        // SAFETY: see above (I1-I4).
        unsafe { self.version.hot.bases.flat_rows(offset) }.1
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
