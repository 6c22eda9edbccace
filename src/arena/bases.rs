//! The read side: every raw read of a generation's arrays ([`Bases`]), the SSE2 searches
//! included.

use super::layout::*;
use crate::entry::Entry;
use crate::sync::UnsafeCell;

/// The base addresses of a generation's arrays, copied into its header: every read of the
/// read side goes through here.
pub(crate) struct Bases {
    pub(super) nodes: *const UnsafeCell<u32>,
    pub(super) pieces: *const UnsafeCell<Piece>,
    pub(super) rows: *const UnsafeCell<u32>,
}

impl Clone for Bases {
    fn clone(&self) -> Self {
        *self
    }
}
impl Copy for Bases {}

// Every reader below has the same contract:
//
// # Safety
// The bases are those of a generation the caller holds for the returned lifetime, and the
// slot is reachable from that generation's root: then the cell is inside the array (I1) and
// nothing writes it meanwhile (I3, I4).
impl Bases {
    /// No arrays: the bases of [`Hot::NONE`](crate::version::Hot::NONE), never read through.
    pub(crate) const NULL: Bases = Bases {
        nodes: std::ptr::null(),
        pieces: std::ptr::null(),
        rows: std::ptr::null(),
    };

    /// Entry `i` of the node at unit offset `unit`.
    #[inline(always)]
    pub(crate) unsafe fn entry(&self, unit: u32, i: usize) -> Entry {
        let cell = self.nodes.wrapping_add(unit as usize * NODE_UNIT + i);
        // SAFETY: see the contract above: the node is reachable from a generation the
        // caller holds, so its cells are inside the array that generation holds (I1),
        // written before its publication (I2) and not written while reachable (I3, I4).
        Entry::from_bits(unsafe { (*cell).with(|p| *p) })
    }

    /// The first `out.len()` entries of the node at unit offset `unit`.
    pub(crate) unsafe fn node_entries(&self, unit: u32, out: &mut [Entry]) {
        for (i, o) in out.iter_mut().enumerate() {
            // SAFETY: forwarded contract: the node is reachable from a generation the
            // caller holds (inside its array, I1; not written meanwhile, I3, I4), and `out`
            // is no longer than its fan-out.
            *o = unsafe { self.entry(unit, i) };
        }
    }

    /// Piece `slot`.
    #[inline(always)]
    pub(crate) unsafe fn piece<'a>(&self, slot: u32) -> &'a Piece {
        let cell = self.pieces.wrapping_add(slot as usize);
        // SAFETY: see the contract above: the piece is reachable from a generation the
        // caller holds for 'a, so its cell is inside the array that generation holds (I1),
        // written before its publication (I2) and not written while reachable (I3, I4): the
        // borrow may live for 'a.
        unsafe { (*cell).with(|p| &*p) }
    }

    /// Cell `i` of the row array.
    ///
    /// # Safety
    /// As above: the cell is in a block reachable from a generation the caller holds.
    #[inline(always)]
    unsafe fn row(&self, i: usize) -> u32 {
        // SAFETY: forwarded contract: the block is reachable from a generation the caller
        // holds, so the cell is inside the row array that generation holds (I1), written
        // before its publication (I2) and not written while reachable (I3, I4).
        unsafe { (*self.rows.wrapping_add(i)).with(|p| *p) }
    }

    /// The page record at row-block offset `offset`: `(page, section cell)`.
    #[inline(always)]
    pub(crate) unsafe fn record(&self, offset: u32) -> (u64, *const ()) {
        // SAFETY: see the contract above: `i < RECORD_CELLS`, a cell of a record reachable
        // from a generation the caller holds.
        let cell = |i: usize| unsafe { self.row(offset as usize + i) };
        PageRecord::unpack([cell(0), cell(1), cell(2)])
    }

    /// The piece of the row of a sub-page table (at row-block offset `offset`, of size class
    /// `class`) that holds page offset `off`: the row with the last start `<= off`, if any.
    ///
    /// A block is `rows` ([`table_cap`]) starts (page offsets, ascending, padded with
    /// `u32::MAX`; stored biased, [`KEY_BIAS`]), then `rows` pieces (padded with the last one, so that a padding row found
    /// for `off == u32::MAX` still gives the right piece), then the page number in two cells.
    #[inline(always)]
    pub(crate) unsafe fn table_piece(&self, offset: u32, class: u32, off: u32) -> Option<u32> {
        // SAFETY: see the contract above: `i < 2 * rows`, a start or piece of a table
        // reachable from a generation the caller holds.
        let cell = |i: usize| unsafe { self.row(offset as usize + i) };
        // The starts are stored biased ([`KEY_BIAS`]): a start `<= off` is a signed `<=`.
        let key = (off ^ KEY_BIAS) as i32;
        let at_most = |i: usize| cell(i) as i32 <= key;
        let (rows, n) = if class == 0 {
            // The common table: one line, counted without a branch.
            // SAFETY: `above` reads the `MIN_TABLE_ROWS` starts of this class-0 table, a
            // table reachable from a generation the caller holds (the contract above).
            (
                MIN_TABLE_ROWS,
                MIN_TABLE_ROWS - unsafe { self.above(offset as usize, key) },
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
    /// table's, see [`Bases::table_piece`]) are above `key`.
    ///
    /// # Safety
    /// As [`Bases::table_piece`]: `first` is the first cell of a reachable table block.
    #[inline(always)]
    unsafe fn above(&self, first: usize, key: i32) -> usize {
        #[cfg(all(target_arch = "x86_64", not(loom), not(miri)))]
        {
            use std::arch::x86_64::*;
            const _: () = assert!(MIN_TABLE_ROWS == 8, "two SSE2 vectors of starts");
            // The cells are `repr(transparent)` `u32`s, contiguous in the array (`Cells`).
            let starts = self.rows.wrapping_add(first) as *const __m128i;
            // SAFETY: SSE2 is part of the x86_64 baseline, so these intrinsics are always
            // available; the loads read the table's first `MIN_TABLE_ROWS` cells, inside
            // its reachable block (the contract above, I1), written before publication (I2)
            // and not written meanwhile (I3, I4).
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
            // SAFETY: `i < MIN_TABLE_ROWS`: a start of the reachable table block (the
            // forwarded contract).
            let cell = |i: usize| unsafe { self.row(first + i) } as i32;
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
    pub(crate) unsafe fn flat_entry(&self, offset: u32, key: u32) -> Entry {
        let key = (key ^ KEY_BIAS) as i32;
        #[cfg(all(target_arch = "x86_64", not(loom), not(miri)))]
        {
            use std::arch::x86_64::*;
            // The cells are `repr(transparent)` `u32`s, contiguous in the array (`Cells`).
            let first = self.rows.wrapping_add(offset as usize);
            let rows = first as *const __m128i;
            // Each run ends before the next run's first key.
            let next = first.wrapping_add(1) as *const __m128i;
            let entries = first.wrapping_add(FLAT_ENTRIES) as *const __m128i;
            // SAFETY: SSE2 is part of the x86_64 baseline, so these intrinsics are always
            // available; the loads read cells `0 .. FLAT_ENTRIES + FLAT_ROWS` of the block,
            // which is reachable from a generation the caller holds (the contract above):
            // inside the row array it holds (I1), written before publication (I2) and not
            // written meanwhile (I3, I4).
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
            // SAFETY: see the contract above: `i < FLAT_ENTRIES + FLAT_ROWS`, a cell of a
            // flat node reachable from a generation the caller holds.
            let cell = |i: usize| unsafe { self.row(offset as usize + i) };
            let mut bits = 0;
            for i in 0..FLAT_ROWS {
                let (lo, next) = (cell(i) as i32, cell(i + 1) as i32);
                bits |=
                    cell(FLAT_ENTRIES + i) & 0u32.wrapping_sub((lo <= key && key < next) as u32);
            }
            Entry::from_bits(bits)
        }
    }

    /// The runs of a flat node (see [`Bases::flat_entry`]) as (low 32 bits of the first page,
    /// entry bits), and the first page of its span.
    pub(crate) unsafe fn flat_rows(&self, offset: u32) -> (Vec<(u32, u32)>, u64) {
        // SAFETY: see the contract above: `i < FLAT_CELLS`, a cell of a flat node reachable
        // from a generation the caller holds.
        let cell = |i: usize| unsafe { self.row(offset as usize + i) };
        let n = cell(FLAT_BASE + 2) as usize;
        let rows = (0..n)
            .map(|i| (cell(i) ^ KEY_BIAS, cell(FLAT_ENTRIES + i)))
            .collect();
        let base = cell(FLAT_BASE) as u64 | (cell(FLAT_BASE + 1) as u64) << 32;
        (rows, base)
    }

    /// The page (number) a sub-page table (see [`Bases::table_piece`]) is for: the two cells
    /// after its rows.
    pub(crate) unsafe fn table_page(&self, offset: u32, rows: usize) -> u64 {
        // SAFETY: see the contract above: the table is reachable from a generation the
        // caller holds, and its page is in the two cells after its `2 * rows` rows, the
        // block's last two.
        let cell = |i: usize| unsafe { self.row(offset as usize + 2 * rows + i) } as u64;
        cell(0) | cell(1) << 32
    }

    /// The real rows of a sub-page table (see [`Bases::table_piece`]), as (page offset,
    /// piece): the rows before the padding, which repeats the last piece.
    pub(crate) unsafe fn table_rows(&self, offset: u32, rows: usize) -> Vec<(u32, u32)> {
        // SAFETY: see the contract above: `i < 2 * rows`, a start or piece of a table
        // reachable from a generation the caller holds.
        let cell = |i: usize| unsafe { self.row(offset as usize + i) };
        let mut out: Vec<(u32, u32)> = Vec::with_capacity(rows);
        for i in 0..rows {
            let piece = cell(rows + i);
            if out.last().is_some_and(|&(_, last)| last == piece) {
                break; // padding: two rows of one table never share a piece
            }
            out.push((cell(i) ^ KEY_BIAS, piece));
        }
        out
    }
}
