//! Every raw read of a generation's arrays ([`Held`]), the SSE2 searches included: the read
//! side's `unsafe`, in one place.
//!
//! A [`Held<'g, V>`] is a copy of the header of a version of `V`s whose tree is readable for
//! `'g`: made from a `&'g Version<V>` ([`Held::of`]), or, by a [`Reader`](crate::Reader),
//! from the header copy of the generation it announced ([`Held::new`], `unsafe`: the
//! announcement is the reader's to keep). Its reads take the offsets and slots that entries
//! of its tree carry; **the rule of this module and of `view`** (the only users of these
//! `pub(super)` reads) is that every offset or slot given to them was read from the same tree
//! (its root, an entry, a table row), or from a tree of the same map held as long: then the
//! cell is inside the array the tree holds (I1), written before its publication (I2), and
//! not written while the tree is held (I3, I4).

use crate::arena::*;
use crate::entry::Entry;
use crate::sync::UnsafeCell;
use crate::version::{Hot, Version};
use std::marker::PhantomData;

/// The header of a version of `V`s, with its tree readable for `'g` (see the module docs).
pub(crate) struct Held<'g, V> {
    hot: Hot,
    /// Where the bus's walks of one region start (`Held::find_near`).
    #[cfg_attr(not(feature = "bus"), allow(dead_code))]
    near: Near,
    _g: PhantomData<&'g V>,
}

/// Where the walk of every address of one region of `2^NEAR_BITS` bytes (`addr >> NEAR_BITS
/// == key`) goes on from, past the nodes whose children span a region or more
/// ([`Held::near_start`]): an entry of the tree it was found in, remembered by a bus's
/// reader between dispatches as a CPU's paging-structure caches remember upper-level entries.
/// `key` 0 is none (region 0 starts at [`Hot::low`], kept with the version).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Near {
    /// The region (`addr >> NEAR_BITS`), 1 to `u16::MAX`; 0 for none.
    pub(crate) key: u16,
    /// The entry its walks go on from.
    pub(crate) entry: Entry,
}

impl Near {
    /// No region remembered.
    pub(crate) const NONE: Near = Near {
        key: 0,
        entry: Entry::EMPTY,
    };
}

impl<V> Clone for Held<'_, V> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<V> Copy for Held<'_, V> {}

impl<'g, V> Held<'g, V> {
    /// The tree of `version`, for as long as it is borrowed (the version invariant, I4).
    #[inline(always)]
    pub(crate) fn of(version: &'g Version<V>) -> Self {
        Held {
            hot: version.hot,
            near: Near::NONE,
            _g: PhantomData,
        }
    }

    /// The tree whose header is `hot`, with the region its walks remember.
    ///
    /// # Safety
    /// `hot` is a copy of the header of a version of `V`s whose tree stays readable for `'g`:
    /// a counted reference to the version, or an announcement of its generation, lives for
    /// `'g` (I4, I8); `near` is [`Near::NONE`] or was returned by [`Held::find_near`] on a
    /// `Held` of the same version (its entry is one of this tree's: I9).
    #[inline(always)]
    pub(crate) unsafe fn new(hot: Hot, near: Near) -> Self {
        Held {
            hot,
            near,
            _g: PhantomData,
        }
    }

    /// The region remembered ([`Near`]).
    #[cfg(feature = "bus")]
    #[inline(always)]
    pub(crate) fn near(&self) -> Near {
        self.near
    }

    /// The header.
    #[inline(always)]
    pub(crate) fn hot(&self) -> &Hot {
        &self.hot
    }

    /// Entry `i` of the node at unit offset `unit`.
    #[inline(always)]
    pub(super) fn entry(self, unit: u32, i: usize) -> Entry {
        let k = unit as usize * NODE_UNIT + i;
        // SAFETY: the node is reachable from this tree (the rule above), which is held for
        // 'g, and `i` < its fan-out: the cell is inside the array the tree holds (I1),
        // written before its publication (I2) and not written while reachable (I3, I4).
        Entry::from_bits(unsafe { (*self.hot.bases.nodes.add(k)).with(|p| *p) })
    }

    /// The first `out.len()` entries of the node at unit offset `unit`.
    pub(super) fn node_entries(self, unit: u32, out: &mut [Entry]) {
        for (i, o) in out.iter_mut().enumerate() {
            *o = self.entry(unit, i);
        }
    }

    /// Piece `slot`.
    #[inline(always)]
    pub(super) fn piece(self, slot: u32) -> &'g Piece {
        // SAFETY: the piece is reachable from this tree (the rule above), which is held for
        // 'g: its cell is inside the array the tree holds (I1), written before its
        // publication (I2) and not written while reachable (I3, I4): the borrow may live
        // for 'g.
        unsafe { (*self.hot.bases.pieces.add(slot as usize)).with(|p| &*p) }
    }

    /// The block of the row array at offset `offset` (the rule above: a record's, a table's
    /// or a flat node's of the tree).
    #[inline(always)]
    fn block(self, offset: usize) -> Block<'g> {
        Block {
            first: self.hot.bases.rows.wrapping_add(offset),
            _g: PhantomData,
        }
    }

    /// The page record at row-block offset `offset`: `(page, section cell)`.
    #[inline(always)]
    pub(super) fn record(self, offset: u32) -> (u64, *const ()) {
        let block = self.block(offset as usize);
        let cell = |i: usize| block.get(i);
        PageRecord::unpack([cell(0), cell(1), cell(2)])
    }

    /// The piece of the row of a sub-page table (at row-block offset `offset`, of size class
    /// `class`) that holds page offset `off`: the row with the last start `<= off`, if any.
    ///
    /// A block is `rows` ([`table_cap`]) starts (page offsets, ascending, padded with
    /// `u32::MAX`; stored biased, [`KEY_BIAS`]), then `rows` pieces (padded with the last one, so that a padding row found
    /// for `off == u32::MAX` still gives the right piece), then the page number in two cells.
    #[inline(always)]
    pub(super) fn table_piece(self, offset: u32, class: u32, off: u32) -> Option<u32> {
        let block = self.block(offset as usize);
        let cell = |i: usize| block.get(i);
        // The starts are stored biased ([`KEY_BIAS`]): a start `<= off` is a signed `<=`.
        let key = (off ^ KEY_BIAS) as i32;
        let at_most = |i: usize| cell(i) as i32 <= key;
        let (rows, n) = if class == 0 {
            // The common table: one line, counted without a branch.
            (
                MIN_TABLE_ROWS,
                MIN_TABLE_ROWS - self.above(offset as usize, key),
            )
        } else {
            // Binary search: the number of starts `<= off`.
            let rows = table_cap(class);
            let (mut lo, mut len) = (0, rows);
            while len > 1 {
                let half = len / 2;
                if at_most(lo + half) {
                    lo += half;
                }
                len -= half;
            }
            (rows, lo + at_most(lo) as usize)
        };
        Some(cell(rows + n.checked_sub(1)?))
    }

    /// How many of the [`MIN_TABLE_ROWS`] biased starts from row cell `first` (a sub-page
    /// table's, see [`Held::table_piece`]) are above `key`.
    /// (The rule above: `first` is the first cell of a table of the tree.)
    #[inline(always)]
    fn above(self, first: usize, key: i32) -> usize {
        #[cfg(all(target_arch = "x86_64", not(loom), not(miri)))]
        {
            use std::arch::x86_64::*;
            const _: () = assert!(MIN_TABLE_ROWS == 8, "two SSE2 vectors of starts");
            // The cells are `repr(transparent)` `u32`s, contiguous in the array (`Cells`).
            let starts = self.hot.bases.rows.wrapping_add(first) as *const __m128i;
            // SAFETY: SSE2 is part of the x86_64 baseline, so these intrinsics are always
            // available; the loads read the table's first `MIN_TABLE_ROWS` cells, inside
            // a table of this tree, held for 'g (the rule above): inside the row array it
            // holds (I1), written before publication (I2) and not written meanwhile (I3, I4).
            unsafe {
                let k = _mm_set1_epi32(key);
                // -1 in each lane whose start is above `key`; summed across the lanes, minus
                // the count. No constant to load (an unsigned compare would need one).
                let a = _mm_cmpgt_epi32(_mm_loadu_si128(starts), k);
                let b = _mm_cmpgt_epi32(_mm_loadu_si128(starts.wrapping_add(1)), k);
                let v = _mm_add_epi32(a, b);
                let v = _mm_add_epi32(v, _mm_shuffle_epi32::<0b01_00_11_10>(v));
                let v = _mm_add_epi32(v, _mm_shuffle_epi32::<0b10_11_00_01>(v));
                _mm_cvtsi128_si32(v).unsigned_abs() as usize
            }
        }
        #[cfg(not(all(target_arch = "x86_64", not(loom), not(miri))))]
        {
            let block = self.block(first);
            let cell = |i: usize| block.get(i) as i32;
            (0..MIN_TABLE_ROWS).filter(|&i| cell(i) > key).count()
        }
    }

    /// The entry of the run of the flat node at row-block offset `offset` (the layout of
    /// [`FLAT_CELLS`]) that holds the page whose low 32 bits are `key`; empty if none does
    /// (then the page lies outside the node's span, where nothing is mapped).
    ///
    /// Without a branch, and without a second dependent load: every row compares its first
    /// and last key with `key`, at most one matches, and the entries are masked with the
    /// matches and OR-ed together.
    #[inline(always)]
    pub(super) fn flat_entry(self, offset: u32, key: u32) -> Entry {
        let key = (key ^ KEY_BIAS) as i32;
        #[cfg(all(target_arch = "x86_64", not(loom), not(miri)))]
        {
            use std::arch::x86_64::*;
            // The cells are `repr(transparent)` `u32`s, contiguous in the array (`Cells`).
            let first = self.hot.bases.rows.wrapping_add(offset as usize);
            let rows = first as *const __m128i;
            // Each run ends before the next run's first key.
            let next = first.wrapping_add(1) as *const __m128i;
            let entries = first.wrapping_add(FLAT_ENTRIES) as *const __m128i;
            // SAFETY: SSE2 is part of the x86_64 baseline, so these intrinsics are always
            // available; the loads read cells `0 .. FLAT_ENTRIES + FLAT_ROWS` of the block,
            // which is reachable from this tree, held for 'g (the rule above): inside the row
            // array it holds (I1), written before publication (I2) and not written meanwhile
            // (I3, I4).
            let bits = unsafe {
                let k = _mm_set1_epi32(key);
                let lane = |j: usize| {
                    let first = _mm_loadu_si128(rows.wrapping_add(j));
                    let next = _mm_loadu_si128(next.wrapping_add(j));
                    let entry = _mm_loadu_si128(entries.wrapping_add(j));
                    // first <= key < next
                    let hit = _mm_andnot_si128(_mm_cmpgt_epi32(first, k), _mm_cmpgt_epi32(next, k));
                    _mm_and_si128(hit, entry)
                };
                // A tree of ORs over the lanes (`FLAT_ROWS / 4` of them, a power of two).
                let mut v = [_mm_setzero_si128(); FLAT_ROWS / 4];
                for (j, x) in v.iter_mut().enumerate() {
                    *x = lane(j);
                }
                let mut n = FLAT_ROWS / 4;
                while n > 1 {
                    n /= 2;
                    for j in 0..n {
                        v[j] = _mm_or_si128(v[j], v[j + n]);
                    }
                }
                let v = v[0];
                let v = _mm_or_si128(v, _mm_shuffle_epi32::<0b01_00_11_10>(v));
                let v = _mm_or_si128(v, _mm_shuffle_epi32::<0b10_11_00_01>(v));
                _mm_cvtsi128_si32(v) as u32
            };
            Entry::from_bits(bits)
        }
        #[cfg(not(all(target_arch = "x86_64", not(loom), not(miri))))]
        {
            let block = self.block(offset as usize);
            let cell = |i: usize| block.get(i);
            let mut bits = 0;
            for i in 0..FLAT_ROWS {
                let (lo, next) = (cell(i) as i32, cell(i + 1) as i32);
                bits |=
                    cell(FLAT_ENTRIES + i) & 0u32.wrapping_sub((lo <= key && key < next) as u32);
            }
            Entry::from_bits(bits)
        }
    }

    /// The runs of a flat node (see [`Held::flat_entry`]) as (low 32 bits of the first page,
    /// entry bits), and the first page of its span.
    pub(super) fn flat_rows(self, offset: u32) -> (Vec<(u32, u32)>, u64) {
        let block = self.block(offset as usize);
        let cell = |i: usize| block.get(i);
        let n = cell(FLAT_RUNS) as usize;
        let rows = (0..n)
            .map(|i| (cell(i) ^ KEY_BIAS, cell(FLAT_ENTRIES + i)))
            .collect();
        let base = cell(FLAT_BASE) as u64 | (cell(FLAT_BASE + 1) as u64) << 32;
        (rows, base)
    }

    /// The page (number) a sub-page table (see [`Held::table_piece`]) is for: the two cells
    /// after its rows.
    pub(super) fn table_page(self, offset: u32, rows: usize) -> u64 {
        let block = self.block(offset as usize + 2 * rows);
        let cell = |i: usize| block.get(i) as u64;
        cell(0) | cell(1) << 32
    }

    /// The real rows of a sub-page table (see [`Held::table_piece`]), as (page offset,
    /// piece): the rows before the padding, which repeats the last piece.
    pub(super) fn table_rows(self, offset: u32, rows: usize) -> Vec<(u32, u32)> {
        let block = self.block(offset as usize);
        let cell = |i: usize| block.get(i);
        let n = table_real_rows(rows, |k| cell(rows + k));
        (0..n)
            .map(|i| (cell(i) ^ KEY_BIAS, cell(rows + i)))
            .collect()
    }
}

/// A block of a tree's row array (a record, a table, a flat node), readable for `'g`: made
/// only by [`Held::block`] from an offset of the tree (the rule above).
#[derive(Clone, Copy)]
struct Block<'g> {
    first: *const UnsafeCell<u32>,
    _g: PhantomData<&'g ()>,
}

impl Block<'_> {
    /// Cell `i` of the block (`i` inside the block's layout, `layout.rs`).
    #[inline(always)]
    fn get(self, i: usize) -> u32 {
        // SAFETY: the block is reachable from a tree held for 'g (the rule above) and `i` is
        // inside it: the cell is inside the row array the tree holds (I1), written before its
        // publication (I2) and not written while reachable (I3, I4).
        unsafe { (*self.first.add(i)).with(|p| *p) }
    }
}

#[cfg(all(test, not(loom)))]
mod tests;
