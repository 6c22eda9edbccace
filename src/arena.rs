//! The arena: where trees live, shared by all generations.
//!
//! - Nodes, pieces and sub-page rows live in three contiguous arrays ([`Cells`]) that grow by
//!   copying: the writer allocates a twice larger array, copies every cell and builds on in
//!   it, while generations built before keep the array they were built in (each [`Version`]
//!   holds its arrays, [`Arrays`]). So a lookup reaches any slot with one multiply-add from a
//!   base pointer it read with the root, and a slot's address never changes while a
//!   generation that uses the array lives (invariant I1 of `ARCHITECTURE.md`).
//! - Node base pages and section values live in a [`Slab`]: chunks that never move, shared
//!   by all generations (`Storage`), because pieces point straight at their section's cell.
//!
//! Which slots are in use is the writer's bookkeeping ([`Arena`], [`SlabAlloc`]); when a slot
//! may be written is the reclamation protocol's (I3, I4). This module owns every raw cell
//! access of the crate: the readers' ([`Bases`], `Storage::value`) and the writer's
//! (`Arena::write_*`, `Storage::write_section`, `take_section`), each `unsafe` with the
//! invariant it needs spelled out here, once.
//!
//! [`Version`]: crate::version::Version

use crate::entry::{as_words, Entry, NODE_LIMIT, RECORD, SLOT_LIMIT, TABLE_OFFSET_LIMIT};
use crate::sync::{Arc, AtomicPtr, Ordering, UnsafeCell};
use crate::Error;
use std::mem::MaybeUninit;
use std::ptr;

/// Most chunks a slab can have: enough for 2^30 slots from a first chunk of 4.
#[cfg(not(loom))]
const MAX_CHUNKS: usize = 32;
/// Under loom, few and tiny chunks keep the number of modelled objects small.
#[cfg(loom)]
const MAX_CHUNKS: usize = 8;

/// log2 of the first chunk of the node-base slab, and of the initial node array (in nodes).
const SMALL_FIRST: u32 = if cfg!(loom) { 1 } else { 4 };
/// log2 of the first chunk of the section slab, and of the initial piece array (in slots).
const LARGE_FIRST: u32 = if cfg!(loom) { 1 } else { 6 };

/// Node entries are addressed in units of this many cells (see `entry.rs`): one 64-byte
/// line of the node array; a node takes at least one, and starts on a cache line.
pub(crate) const NODE_UNIT: usize = 16;

/// Rows of the smallest sub-page table block: one 64-byte line of 8 starts and 8 pieces.
pub(crate) const MIN_TABLE_ROWS: usize = 8;
/// Size classes a table entry can name (4 bits).
const TABLE_CLASSES: u32 = 16;

/// Rows of a table block of size class `class`, the one rule: 8, 12, 16, 24, 32, 48, 64, 96
/// (steps of a half or a third, so that a table wastes at most a third of its rows), then
/// doubling, 128 to 16,384 (a page holding more pieces is a capacity error).
#[inline]
pub(crate) fn table_cap(class: u32) -> usize {
    if class < 8 {
        (2 + (class as usize & 1)) << (class / 2 + 2)
    } else {
        128 << (class - 8)
    }
}

/// The smallest class holding `rows` rows, if any does.
fn table_class(rows: usize) -> Option<u32> {
    (0..TABLE_CLASSES).find(|&c| table_cap(c) >= rows)
}
/// Rows of every flat node's block (the most runs rule 3 of `canon.rs` stores flat): one
/// size, so that the lookup searches it without a branch on its size.
pub(crate) const FLAT_ROWS: usize = 16;
/// A flat node's block, in cells of the row array: the runs' first keys and one more key
/// (a run ends before the next key, so the key after the last run's is one past the span,
/// which rule 3 keeps below 2^32), then the runs' entries ([`FLAT_ROWS`] cells; padding rows have empty entries,
/// so whatever they match adds nothing), then the first page of the node's span in two cells,
/// then the number of runs.
const FLAT_CELLS: usize = (FLAT_ROWS + 1) + FLAT_ROWS + 3;
/// Where a flat node's entries start in its block.
const FLAT_ENTRIES: usize = FLAT_ROWS + 1;
/// Where a flat node's span's first page starts in its block (then the number of runs).
const FLAT_BASE: usize = 2 * FLAT_ROWS + 1;
/// Bytes of a flat node's block.
pub(crate) const FLAT_BYTES: usize = FLAT_CELLS * std::mem::size_of::<u32>();
/// Flat nodes' keys and sub-page tables' starts are stored and compared as
/// `key ^ KEY_BIAS`, as `i32`: that turns their unsigned order into the signed one SSE2
/// compares without a constant to load (an unsigned vector compare needs one, from a line
/// of its own).
const KEY_BIAS: u32 = 0x8000_0000;

/// One mapped, contiguous piece of a section: 32 bytes, so that in the piece array (64-byte
/// aligned blocks, [`Cells`]) a piece never straddles two cache lines. (Not `align(32)`: a
/// lookup unpacks a page record into a `Piece` on its stack, which would then be realigned.
/// Under loom it is, so that a cell with loom's bookkeeping still tiles a block.)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(not(loom), repr(C))]
#[cfg_attr(loom, repr(C, align(32)))]
pub(crate) struct Piece {
    /// First byte.
    pub start: u64,
    /// Last byte (inclusive).
    pub end: u64,
    /// Start address of the `insert`/`overwrite` that created the section.
    pub origin: u64,
    /// The section's cell (slots never move, I1), so that a lookup reads the value without
    /// locating the slot; two pieces of one generation share it iff they share a section.
    /// Null only in unused piece slots.
    pub section: *const (),
}

// SAFETY: a piece is plain data; its section address is only dereferenced through
// `Storage::value`, whose contract (a generation holding the piece is held) makes the read
// sound on any thread.
unsafe impl Send for Piece {}
// SAFETY: as above.
unsafe impl Sync for Piece {}

impl Default for Piece {
    fn default() -> Self {
        Piece {
            start: 0,
            end: 0,
            origin: 0,
            section: ptr::null(),
        }
    }
}

/// A page record: a piece of an `insert_shared` section that is exactly one page with its
/// origin at its start (the writer decides, `writer/rebuild.rs`), in [`RECORD_CELLS`] cells of the row array (12 bytes)
/// instead of a 32-byte [`Piece`], named by a leaf entry of its own (`entry.rs`). The fields,
/// packed in 96 bits (the one rule, with its round-trip test):
///
/// ```text
///  cell 0: page number, bits 0..32
///  cell 1: page number, bits 32..40 | section cell address, bits 0..24 (<< 8)
///  cell 2: section cell address, bits 24..56
/// ```
///
/// It holds its page, so the lookup's final check needs nothing else, and its section's cell
/// (below 2^56: every user-space address of x86-64, 5-level paging included, and of
/// AArch64), so the value is one load away as for a piece. Pieces that
/// do not fit stay [`Piece`]s.
pub(crate) struct PageRecord;

/// Cells of a page record.
pub(crate) const RECORD_CELLS: usize = 3;

impl PageRecord {
    const PAGE_BITS: u32 = 40;
    const CELL_BITS: u32 = 56;

    /// The cells of the record of the one-page piece of `page` and section cell `section`,
    /// if they fit.
    pub(crate) fn pack(page: u64, section: *const ()) -> Option<[u32; RECORD_CELLS]> {
        // An `as` cast exposes the provenance: the lookup makes the pointer back from the
        // address (the `usize as` cast in `unpack`).
        let cell = section as usize as u64;
        if page >= 1 << Self::PAGE_BITS || cell >= 1 << Self::CELL_BITS {
            return None;
        }
        Some([
            page as u32,
            (page >> 32) as u32 | (cell as u32) << 8,
            (cell >> 24) as u32,
        ])
    }

    /// `(page, section cell)` of a record's cells.
    #[inline(always)]
    pub(crate) fn unpack(c: [u32; RECORD_CELLS]) -> (u64, *const ()) {
        let page = c[0] as u64 | ((c[1] & 0xff) as u64) << 32;
        let cell = (c[1] >> 8) as u64 | (c[2] as u64) << 24;
        (page, cell as usize as *const ())
    }
}

/// One row of a sub-page table: from byte `start` (clamped to the page) on, piece `piece`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct SubEntry {
    pub start: u64,
    pub piece: u32,
}

// ---------------------------------------------------------------------------------------------
// Contiguous arrays.

/// A contiguous array of cells, in 64-byte-aligned blocks of `N` cells (so that a node, a
/// table or a piece starts on a cache line). Which cells a reader may read, and when the
/// writer may write one, is the reclamation protocol's business (I3, I4); this type only owns
/// the memory.
pub(crate) struct Cells<T, const N: usize> {
    blocks: Box<[Block<T, N>]>,
}

#[repr(C, align(64))]
struct Block<T, const N: usize>([UnsafeCell<T>; N]);

// SAFETY: cells are written only by the writer while unreachable from any generation that
// can be read (I3), and read through generations that keep the array alive: sharing the
// array between threads is sharing `T`s that are never written while shared.
unsafe impl<T: Send + Sync, const N: usize> Sync for Cells<T, N> {}
// SAFETY: as above; the array owns its `T`s.
unsafe impl<T: Send + Sync, const N: usize> Send for Cells<T, N> {}

impl<T: Copy + Default, const N: usize> Cells<T, N> {
    /// Blocks have no padding, so cell `i` is `i` cells from the base (see [`Cells::base`]).
    const FLAT: () =
        assert!(std::mem::size_of::<Block<T, N>>() == N * std::mem::size_of::<UnsafeCell<T>>());

    fn new(len: usize) -> Self {
        Self::filled(len, |_| T::default())
    }

    /// `len` cells (rounded up to whole blocks), cell `i` holding `init(i)`.
    fn filled(len: usize, init: impl Fn(usize) -> T) -> Self {
        #[allow(clippy::let_unit_value)]
        let () = Self::FLAT;
        let blocks = (0..len.div_ceil(N))
            .map(|b| Block(std::array::from_fn(|k| UnsafeCell::new(init(b * N + k)))))
            .collect();
        Cells { blocks }
    }

    fn len(&self) -> usize {
        self.blocks.len() * N
    }

    /// An array of `len` cells holding a copy of this one's (the writer growing an array).
    fn grown(&self, len: usize) -> Self {
        Self::filled(len, |i| {
            if i < self.len() {
                // SAFETY: only the writer writes cells (I6), and it is the caller.
                self.cell(i).with(|p| unsafe { *p })
            } else {
                T::default()
            }
        })
    }

    /// The first cell: cell `i` is at `base().add(i)` (blocks are flat, `FLAT`).
    fn base(&self) -> *const UnsafeCell<T> {
        self.blocks.as_ptr() as *const UnsafeCell<T>
    }

    /// Cell `i`, for the writer (I6).
    fn cell(&self, i: usize) -> &UnsafeCell<T> {
        &self.blocks[i / N].0[i % N]
    }
}

/// The arrays a generation's tree lives in; a [`Version`](crate::version::Version) holds
/// them, so their cells outlive every reference to the version (I1).
#[derive(Clone)]
pub(crate) struct Arrays {
    nodes: Arc<Cells<u32, NODE_UNIT>>,
    pieces: Arc<Cells<Piece, 2>>,
    rows: Arc<Cells<u32, 16>>,
}

impl Arrays {
    /// Their base addresses, for the lookup.
    pub(crate) fn bases(&self) -> Bases {
        Bases {
            nodes: self.nodes.base(),
            pieces: self.pieces.base(),
            rows: self.rows.base(),
        }
    }
}

/// The base addresses of a generation's arrays, copied into its header: every read of the
/// read side goes through here.
pub(crate) struct Bases {
    nodes: *const UnsafeCell<u32>,
    pieces: *const UnsafeCell<Piece>,
    rows: *const UnsafeCell<u32>,
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
        // SAFETY: see the contract above: the node's cells are inside the array.
        let cell = unsafe { &*self.nodes.add(unit as usize * NODE_UNIT + i) };
        // SAFETY: as above: the cell is not written while it is reachable.
        Entry::from_bits(cell.with(|p| unsafe { *p }))
    }

    /// The first `out.len()` entries of the node at unit offset `unit`.
    pub(crate) unsafe fn node_entries(&self, unit: u32, out: &mut [Entry]) {
        for (i, o) in out.iter_mut().enumerate() {
            // SAFETY: forwarded contract.
            *o = unsafe { self.entry(unit, i) };
        }
    }

    /// Piece `slot`.
    #[inline(always)]
    pub(crate) unsafe fn piece<'a>(&self, slot: u32) -> &'a Piece {
        // SAFETY: see the contract above.
        let cell = unsafe { &*self.pieces.add(slot as usize) };
        // SAFETY: as above.
        cell.with(|p| unsafe { &*p })
    }

    /// The page record at row-block offset `offset`: `(page, section cell)`.
    #[inline(always)]
    pub(crate) unsafe fn record(&self, offset: u32) -> (u64, *const ()) {
        // SAFETY: see the contract above.
        let first = unsafe { self.rows.add(offset as usize) };
        // SAFETY: as above; `i < RECORD_CELLS`.
        let cell = |i: usize| unsafe { (*first.add(i)).with(|p| *p) };
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
        // SAFETY: see the contract above: the block is reachable, so its cells exist and are
        // not written.
        let first = unsafe { self.rows.add(offset as usize) };
        // SAFETY: as above; `i < 2 * rows`.
        let cell = |i: usize| unsafe { (*first.add(i)).with(|p| *p) };
        // The starts are stored biased ([`KEY_BIAS`]): a start `<= off` is a signed `<=`.
        let key = (off ^ KEY_BIAS) as i32;
        let at_most = |i: usize| cell(i) as i32 <= key;
        let (rows, n) = if class == 0 {
            // The common table: one line, counted without a branch.
            // SAFETY: as above: the table has `MIN_TABLE_ROWS` starts.
            (
                MIN_TABLE_ROWS,
                MIN_TABLE_ROWS - unsafe { Self::above(first, key) },
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

    /// How many of the [`MIN_TABLE_ROWS`] biased starts from `first` (a sub-page table's, see
    /// [`Bases::table_piece`]) are above `key`.
    ///
    /// # Safety
    /// As [`Bases::table_piece`]: `first` is the first cell of a reachable table block.
    #[inline(always)]
    unsafe fn above(first: *const UnsafeCell<u32>, key: i32) -> usize {
        #[cfg(all(target_arch = "x86_64", not(loom), not(miri)))]
        {
            use std::arch::x86_64::*;
            const _: () = assert!(MIN_TABLE_ROWS == 8, "two SSE2 vectors of starts");
            // The cells are `repr(transparent)` `u32`s, contiguous in the array (`Cells`).
            let starts = first as *const __m128i;
            // SAFETY: SSE2 is part of the x86_64 baseline, so these intrinsics are always
            // available; the loads read the table's first `MIN_TABLE_ROWS` cells, inside its
            // block (the contract above).
            unsafe {
                let k = _mm_set1_epi32(key);
                // -1 in each lane whose start is above `key`; summed across the lanes, minus
                // the count. No constant to load (an unsigned compare would need one).
                let a = _mm_cmpgt_epi32(_mm_loadu_si128(starts), k);
                let b = _mm_cmpgt_epi32(_mm_loadu_si128(starts.add(1)), k);
                let v = _mm_add_epi32(a, b);
                let v = _mm_add_epi32(v, _mm_shuffle_epi32::<0b01_00_11_10>(v));
                let v = _mm_add_epi32(v, _mm_shuffle_epi32::<0b10_11_00_01>(v));
                _mm_cvtsi128_si32(v).unsigned_abs() as usize
            }
        }
        #[cfg(not(all(target_arch = "x86_64", not(loom), not(miri))))]
        {
            // SAFETY: as above; `i < MIN_TABLE_ROWS`.
            let cell = |i: usize| unsafe { (*first.add(i)).with(|p| *p) } as i32;
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
        // SAFETY: see the contract above: the block is reachable, so its cells exist and are
        // not written.
        let first = unsafe { self.rows.add(offset as usize) };
        let key = (key ^ KEY_BIAS) as i32;
        #[cfg(all(target_arch = "x86_64", not(loom), not(miri)))]
        {
            use std::arch::x86_64::*;
            // The cells are `repr(transparent)` `u32`s, contiguous in the array (`Cells`).
            let rows = first as *const __m128i;
            // Each run ends before the next run's first key.
            let next = first.wrapping_add(1) as *const __m128i;
            let entries = first.wrapping_add(FLAT_ENTRIES) as *const __m128i;
            // SAFETY: SSE2 is part of the x86_64 baseline, so these intrinsics are always
            // available; the loads read cells `0 .. FLAT_ENTRIES + FLAT_ROWS` of the block,
            // inside it (see the contract above for the reads).
            let bits = unsafe {
                let k = _mm_set1_epi32(key);
                let lane = |j: usize| {
                    let first = _mm_loadu_si128(rows.add(j));
                    let next = _mm_loadu_si128(next.add(j));
                    let entry = _mm_loadu_si128(entries.add(j));
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
            // SAFETY: as above; `i < FLAT_ENTRIES + FLAT_ROWS`.
            let cell = |i: usize| unsafe { (*first.add(i)).with(|p| *p) };
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
        // SAFETY: see the contract above.
        let first = unsafe { self.rows.add(offset as usize) };
        // SAFETY: as above; `i < FLAT_CELLS`.
        let cell = |i: usize| unsafe { (*first.add(i)).with(|p| *p) };
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
        // SAFETY: see the contract above.
        let first = unsafe { self.rows.add(offset as usize + 2 * rows) };
        // SAFETY: as above.
        let cell = |i: usize| unsafe { (*first.add(i)).with(|p| *p) } as u64;
        cell(0) | cell(1) << 32
    }

    /// The real rows of a sub-page table (see [`Bases::table_piece`]), as (page offset,
    /// piece): the rows before the padding, which repeats the last piece.
    pub(crate) unsafe fn table_rows(&self, offset: u32, rows: usize) -> Vec<(u32, u32)> {
        // SAFETY: see the contract above.
        let first = unsafe { self.rows.add(offset as usize) };
        // SAFETY: as above; `i < 2 * rows`.
        let cell = |i: usize| unsafe { (*first.add(i)).with(|p| *p) };
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

// ---------------------------------------------------------------------------------------------
// The writer's side of the arrays.

/// The writer's arena: the current arrays, the slot allocators, and growth (I6).
pub(crate) struct Arena {
    arrays: Arrays,
    /// Cells a node takes: its fan-out, at least one unit.
    node_cells: usize,
    nodes: SlabAlloc,
    pieces: SlabAlloc,
    /// Most pieces and page records together ([`Config::max_pieces`](crate::Config)).
    max_pieces: usize,
    rows: RowAlloc,
}

/// What a block of the row array is for: which free list it comes from.
#[derive(Clone, Copy)]
enum BlockKind {
    Table(usize),
    Flat,
    Record,
}

/// Free blocks of sub-page rows, by size class ([`table_cap`] rows), of flat nodes and of
/// page records.
#[derive(Default)]
struct RowAlloc {
    /// Cells handed out so far (blocks are never merged back).
    high: usize,
    free: Vec<Vec<u32>>,
    flat_free: Vec<u32>,
    record_free: Vec<u32>,
    /// Sub-page tables, flat nodes and page records in use, and the real rows in the tables
    /// and flat nodes (for accounting).
    tables: usize,
    flats: usize,
    records: usize,
    rows: usize,
    /// Cells of the blocks in use.
    cells: usize,
    limit: usize,
}

impl Arena {
    pub(crate) fn new(fanout: usize, max_nodes: usize, max_pieces: usize) -> Self {
        let node_cells = fanout.max(NODE_UNIT);
        Arena {
            arrays: Arrays {
                nodes: Arc::new(Cells::new(node_cells << SMALL_FIRST)),
                pieces: Arc::new(Cells::new(1 << LARGE_FIRST)),
                rows: Arc::new(Cells::new((2 * MIN_TABLE_ROWS) << SMALL_FIRST)),
            },
            node_cells,
            nodes: SlabAlloc::new(max_nodes.min(Self::node_limit(fanout)), "nodes"),
            pieces: SlabAlloc::new(max_pieces.min(SLOT_LIMIT - 1), "pieces"),
            max_pieces,
            rows: RowAlloc {
                limit: max_pieces,
                ..RowAlloc::default()
            },
        }
    }

    /// Most nodes an entry can address at this fan-out.
    pub(crate) fn node_limit(fanout: usize) -> usize {
        NODE_LIMIT / (fanout.max(NODE_UNIT) / NODE_UNIT)
    }

    /// The current arrays (for a new version).
    pub(crate) fn arrays(&self) -> Arrays {
        self.arrays.clone()
    }

    fn units(&self) -> usize {
        self.node_cells / NODE_UNIT
    }

    /// A free node, as the unit offset its entries carry; grows the node array if needed.
    pub(crate) fn alloc_node(&mut self) -> Result<u32, Error> {
        let slot = self.nodes.alloc()?;
        let need = (slot as usize + 1) * self.node_cells;
        grow(&mut self.arrays.nodes, need);
        Ok((slot as usize * self.units()) as u32)
    }

    pub(crate) fn free_node(&mut self, unit: u32) {
        self.nodes.free(self.node_slot(unit) as u32);
    }

    /// The node slot of the node at unit offset `unit` (0, 1, 2... in allocation space).
    pub(crate) fn node_slot(&self, unit: u32) -> usize {
        unit as usize / self.units()
    }

    /// A small number naming the block of a sub-page table or flat node entry `e`: its
    /// offset in the row array divided by [`BLOCK_GRAIN`]. Distinct blocks get distinct
    /// numbers, since every such block spans more than `BLOCK_GRAIN` cells.
    pub(crate) fn block_key(e: Entry) -> usize {
        e.table_parts().1 as usize / BLOCK_GRAIN
    }

    /// A free piece slot; grows the piece array if needed.
    pub(crate) fn alloc_piece(&mut self) -> Result<u32, Error> {
        self.piece_room()?;
        let slot = self.pieces.alloc()?;
        grow(&mut self.arrays.pieces, slot as usize + 1);
        Ok(slot)
    }

    /// Frees piece id `id`: a piece slot, or a page record's ([`RECORD`]).
    pub(crate) fn free_piece(&mut self, id: u32) {
        if id & RECORD == 0 {
            self.pieces.free(id);
            return;
        }
        let r = &mut self.rows;
        r.record_free.push(id & !RECORD);
        r.records -= 1;
        r.cells -= RECORD_CELLS;
    }

    /// Writes a new sub-page table for `page` of `rows` (page offsets ascending, piece slots)
    /// and returns its entry; grows the row array if needed.
    pub(crate) fn alloc_table(&mut self, page: u64, rows: &[(u32, u32)]) -> Result<Entry, Error> {
        self.alloc_rows(page, rows)
    }

    /// Writes a new flat node whose span starts at page `base` and ends at the page whose
    /// low 32 bits are `last`, of `rows` (the low 32 bits of each run's first page,
    /// ascending; the run's entry as bits), and returns its entry.
    pub(crate) fn alloc_flat(
        &mut self,
        base: u64,
        last: u32,
        rows: &[(u32, u32)],
    ) -> Result<Entry, Error> {
        assert!(
            !rows.is_empty() && rows.len() <= FLAT_ROWS,
            "a flat node holds 1..=FLAT_ROWS runs"
        );
        let offset = self.alloc_block(BlockKind::Flat, FLAT_CELLS, rows.len())?;
        self.rows.flats += 1;
        for k in 0..=FLAT_ROWS {
            // The runs' first keys, one past the last run's last key (rule 3: the span does
            // not end on a multiple of 2^32 pages, so this does not wrap), then padding keys
            // at the top: padding rows have empty entries, so what they match adds nothing.
            let (key, e) = match rows.get(k) {
                Some(&run) => run,
                None if k == rows.len() => (last.checked_add(1).expect("rule 3: below 2^32"), 0),
                None => (u32::MAX, 0),
            };
            // SAFETY: a block no generation anyone can read reaches (fresh, or freed by
            // reclamation), and we are the writer (I3, I4, I6).
            unsafe {
                self.write_row_cell(offset + k, key ^ KEY_BIAS);
                if k < FLAT_ROWS {
                    self.write_row_cell(offset + FLAT_ENTRIES + k, e);
                }
            }
        }
        // SAFETY: as above.
        unsafe {
            self.write_row_cell(offset + FLAT_BASE, base as u32);
            self.write_row_cell(offset + FLAT_BASE + 1, (base >> 32) as u32);
            self.write_row_cell(offset + FLAT_BASE + 2, rows.len() as u32);
        }
        Ok(Entry::flat(0, offset as u32))
    }

    /// A free block of `cells` cells for `rows` rows, from the free list of its kind; grows
    /// the row array if needed.
    fn alloc_block(&mut self, kind: BlockKind, cells: usize, rows: usize) -> Result<usize, Error> {
        let r = &mut self.rows;
        if r.rows + rows > r.limit {
            return Err(Error::CapacityExhausted {
                kind: "sub-page rows",
                limit: r.limit,
            });
        }
        let free = match kind {
            BlockKind::Table(class) => {
                if r.free.len() <= class {
                    r.free.resize_with(class + 1, Vec::new);
                }
                &mut r.free[class]
            }
            BlockKind::Flat => &mut r.flat_free,
            BlockKind::Record => &mut r.record_free,
        };
        let offset = match free.pop() {
            Some(o) => o as usize,
            None => {
                let o = r.high;
                if o + cells > TABLE_OFFSET_LIMIT {
                    return Err(Error::CapacityExhausted {
                        kind: "sub-page rows",
                        limit: TABLE_OFFSET_LIMIT / 2,
                    });
                }
                r.high += cells;
                o
            }
        };
        r.rows += rows;
        r.cells += cells;
        grow(&mut self.arrays.rows, offset + cells);
        Ok(offset)
    }

    /// Writes the page record of the one-page piece of `page` (origin at its start) whose
    /// section cell is `section`, and returns its piece id ([`RECORD`] and its row-block
    /// offset); `None` if they do not fit in one ([`PageRecord::pack`]).
    pub(crate) fn alloc_record(
        &mut self,
        page: u64,
        section: *const (),
    ) -> Result<Option<u32>, Error> {
        let Some(cells) = PageRecord::pack(page, section) else {
            return Ok(None);
        };
        self.piece_room()?;
        let offset = self.alloc_block(BlockKind::Record, RECORD_CELLS, 0)?;
        self.rows.records += 1;
        for (i, c) in cells.into_iter().enumerate() {
            // SAFETY: a block no generation anyone can read reaches (fresh, or freed by
            // reclamation), and we are the writer (I3, I4, I6).
            unsafe { self.write_row_cell(offset + i, c) };
        }
        Ok(Some(RECORD | offset as u32))
    }

    /// `Ok` if one more piece or page record fits under `max_pieces`.
    fn piece_room(&self) -> Result<(), Error> {
        if self.pieces.live() + self.rows.records >= self.max_pieces {
            return Err(Error::CapacityExhausted {
                kind: "pieces",
                limit: self.max_pieces,
            });
        }
        Ok(())
    }

    /// The table block (the layout of [`Bases::table_piece`]).
    fn alloc_rows(&mut self, page: u64, rows: &[(u32, u32)]) -> Result<Entry, Error> {
        let class = table_class(rows.len()).ok_or(Error::CapacityExhausted {
            kind: "sub-page rows in one page",
            limit: table_cap(TABLE_CLASSES - 1),
        })?;
        let cap = table_cap(class);
        let offset = self.alloc_block(
            BlockKind::Table(class as usize),
            block_cells(cap),
            rows.len(),
        )?;
        self.rows.tables += 1;
        let last = rows[rows.len() - 1].1;
        for k in 0..cap {
            let (start, piece) = rows.get(k).copied().unwrap_or((u32::MAX, last));
            // SAFETY: a block no table of any published generation uses (fresh, or freed by
            // reclamation), and we are the writer (I3, I4, I6).
            unsafe {
                self.write_row_cell(offset + k, start ^ KEY_BIAS);
                self.write_row_cell(offset + cap + k, piece);
            }
        }
        // SAFETY: as above.
        unsafe {
            self.write_row_cell(offset + 2 * cap, page as u32);
            self.write_row_cell(offset + 2 * cap + 1, (page >> 32) as u32);
        }
        Ok(Entry::subpage(class, offset as u32))
    }

    /// Frees the table or flat node of entry `e`.
    pub(crate) fn free_table(&mut self, e: Entry) {
        let (class, offset) = e.table_parts();
        let bases = self.arrays.bases();
        let r = &mut self.rows;
        if e.is_flat() {
            // SAFETY: the writer reads its own block (I6): it is allocated and nothing writes
            // it meanwhile.
            let rows = unsafe { bases.flat_rows(offset) }.0.len();
            r.flat_free.push(offset);
            r.flats -= 1;
            r.rows -= rows;
            r.cells -= FLAT_CELLS;
            return;
        }
        // SAFETY: as above.
        let rows = unsafe { bases.table_rows(offset, table_cap(class)) }.len();
        r.free[class as usize].push(offset);
        r.tables -= 1;
        r.rows -= rows;
        r.cells -= block_cells(table_cap(class));
    }

    /// Bytes of the block of the sub-page table or flat node of entry `e`.
    pub(crate) fn block_bytes(e: Entry) -> usize {
        if e.is_flat() {
            FLAT_BYTES
        } else {
            table_bytes(e.table_parts().0)
        }
    }

    /// Slots in use: nodes, pieces, page records, flat nodes, tables, real rows, and bytes
    /// of the tables' and flat nodes' row blocks.
    pub(crate) fn live(&self) -> (usize, usize, usize, usize, usize, usize, usize) {
        let r = &self.rows;
        (
            self.nodes.live(),
            self.pieces.live(),
            r.records,
            r.flats,
            r.tables,
            r.rows,
            (r.cells - r.records * RECORD_CELLS) * std::mem::size_of::<u32>(),
        )
    }

    /// Bytes of node storage reserved by the current node array.
    pub(crate) fn reserved_node_bytes(&self) -> usize {
        self.arrays.nodes.len() * std::mem::size_of::<u32>()
    }

    /// Bytes a node takes.
    pub(crate) fn node_bytes(fanout: usize) -> usize {
        fanout.max(NODE_UNIT) * std::mem::size_of::<u32>() + std::mem::size_of::<u64>()
    }

    // ----- Writing, into slots no generation anyone can still read reaches (fresh, or
    // reclaimed: I3, I4), by the writer (I6). Each has that contract:
    //
    // # Safety
    // The slot is allocated to the writer and unreachable from every generation anyone can
    // still read.

    /// Writes the entries of the node at unit offset `unit`.
    pub(crate) unsafe fn write_node(&self, unit: u32, kids: &[Entry]) {
        let nodes = &self.arrays.nodes;
        let first = unit as usize * NODE_UNIT;
        assert!(first + kids.len() <= nodes.len());
        for (i, &k) in as_words(kids).iter().enumerate() {
            // SAFETY: inside the array (checked above, blocks are flat); see the contract
            // above for the write.
            unsafe { (*nodes.base().add(first + i)).with_mut(|p| *p = k) };
        }
    }

    /// Writes piece `slot`.
    pub(crate) unsafe fn write_piece(&self, slot: u32, piece: Piece) {
        let cell = self.arrays.pieces.cell(slot as usize);
        // SAFETY: see the contract above.
        cell.with_mut(|p| unsafe { *p = piece });
    }

    unsafe fn write_row_cell(&self, i: usize, v: u32) {
        let cell = self.arrays.rows.cell(i);
        // SAFETY: see the contract above.
        cell.with_mut(|p| unsafe { *p = v });
    }
}

/// Cells of a table block of `rows` rows: starts, pieces, and the page in two cells.
const fn block_cells(rows: usize) -> usize {
    2 * rows + 2
}

/// Fewer cells than any table block or flat node spans (page records, 3 cells, are named by
/// their piece ids instead): see [`Arena::block_key`].
const BLOCK_GRAIN: usize = 16;
const _: () = assert!(block_cells(MIN_TABLE_ROWS) > BLOCK_GRAIN && FLAT_CELLS > BLOCK_GRAIN);

/// Makes `array` hold at least `need` cells, by copying it into one at least twice as large
/// (versions built before keep the old one).
fn grow<T: Copy + Default, const N: usize>(array: &mut Arc<Cells<T, N>>, need: usize) {
    if need > array.len() {
        let len = need.max(array.len() * 2);
        *array = Arc::new(array.grown(len));
    }
}

// ---------------------------------------------------------------------------------------------
// Chunked storage with stable addresses: node base pages and section values.

/// Fixed-address chunked storage, one cell per slot (chunk `k` holds `first << k` slots).
pub(crate) struct Slab<T: Default> {
    chunks: [AtomicPtr<UnsafeCell<T>>; MAX_CHUNKS],
    /// log2 of the number of slots in chunk 0.
    first_shift: u32,
}

impl<T: Default> Slab<T> {
    pub(crate) fn new(first_shift: u32) -> Self {
        Slab {
            chunks: std::array::from_fn(|_| AtomicPtr::new(ptr::null_mut())),
            first_shift,
        }
    }

    /// (chunk, offset in it) of `slot`.
    #[inline(always)]
    fn locate(&self, slot: u32) -> (usize, usize) {
        let j = slot as u64 + (1u64 << self.first_shift);
        let top = 63 - j.leading_zeros();
        (
            (top - self.first_shift) as usize,
            (j - (1u64 << top)) as usize,
        )
    }

    fn chunk_len(&self, chunk: usize) -> usize {
        1usize << (self.first_shift as usize + chunk)
    }

    /// Cell of `slot`.
    ///
    /// # Safety
    /// `slot` was made available with [`Slab::ensure`] and that happens-before this call
    /// (I2: true for any slot reachable from a generation the caller holds, and for the
    /// writer).
    #[inline]
    unsafe fn cell(&self, slot: u32) -> &UnsafeCell<T> {
        let (chunk, offset) = self.locate(slot);
        // Relaxed: the chunk pointer was stored (Release) before the generation that made
        // `slot` reachable was published, and the caller acquired that generation (I2), so by
        // coherence this load sees the pointer, which never changes again while the slab lives.
        let base = self.chunks[chunk].load(Ordering::Relaxed);
        debug_assert!(!base.is_null());
        // SAFETY: `base` points to a live chunk of `chunk_len(chunk)` cells (allocated in
        // `ensure`, freed only in `Drop`, I1), and `offset` is inside it by `locate`.
        unsafe { &*base.add(offset) }
    }

    /// Makes sure the chunk holding `slot` exists. Writer only (I6).
    fn ensure(&self, slot: u32) {
        let (chunk, _) = self.locate(slot);
        if self.chunks[chunk].load(Ordering::Relaxed).is_null() {
            let cells: Box<[UnsafeCell<T>]> = (0..self.chunk_len(chunk))
                .map(|_| UnsafeCell::new(T::default()))
                .collect();
            // Release: the initialised cells happen-before any thread that acquires the
            // pointer (readers get it through a generation published later anyway, I2).
            self.chunks[chunk].store(
                Box::into_raw(cells) as *mut UnsafeCell<T>,
                Ordering::Release,
            );
        }
    }
}

impl<T: Default> Drop for Slab<T> {
    fn drop(&mut self) {
        let mut boxes = Vec::new();
        for (c, chunk) in self.chunks.iter_mut().enumerate() {
            let p = chunk.with_mut_ptr();
            if !p.is_null() {
                let len = 1usize << (self.first_shift as usize + c);
                // SAFETY: `p` came from `Box::into_raw` of a boxed slice of exactly `len` cells
                // in `ensure`; we have `&mut self`, so no reader can hold a reference into it.
                boxes.push(unsafe { Box::from_raw(ptr::slice_from_raw_parts_mut(p, len)) });
            }
        }
        // Values may run user code that panics (section values): take each out and drop it
        // on its own, so one panic neither stops the others nor leaks a chunk.
        let cells = boxes.iter().flat_map(|b| b.iter());
        // SAFETY: we own every cell (`&mut self`, no generation can be read any more).
        crate::drops::drop_all(cells.map(|c| c.with_mut(|p| unsafe { std::mem::take(&mut *p) })));
    }
}

/// `AtomicPtr::get_mut` for std and loom alike.
trait GetMutPtr<T> {
    fn with_mut_ptr(&mut self) -> *mut T;
}

impl<T> GetMutPtr<T> for AtomicPtr<T> {
    fn with_mut_ptr(&mut self) -> *mut T {
        #[cfg(not(loom))]
        {
            *self.get_mut()
        }
        #[cfg(loom)]
        {
            self.with_mut(|p| *p)
        }
    }
}

/// Writer-side bookkeeping of one kind of slot: high-water mark and free list.
#[derive(Debug, Default)]
pub(crate) struct SlabAlloc {
    high: u32,
    free: Vec<u32>,
    /// Slots handed out and not yet freed.
    live: usize,
    limit: usize,
    /// What the slots hold, for error messages.
    kind: &'static str,
}

impl SlabAlloc {
    pub(crate) fn new(limit: usize, kind: &'static str) -> Self {
        SlabAlloc {
            limit,
            kind,
            ..Default::default()
        }
    }

    /// A free slot, or `CapacityExhausted` (naming this kind and limit) at the limit.
    pub(crate) fn alloc(&mut self) -> Result<u32, Error> {
        self.room(1)?;
        let slot = self.free.pop().unwrap_or_else(|| {
            self.high += 1;
            self.high - 1
        });
        self.live += 1;
        Ok(slot)
    }

    /// `Ok` if `n` more slots fit under the limit, else the `CapacityExhausted` error.
    pub(crate) fn room(&self, n: usize) -> Result<(), Error> {
        if n > self.limit - self.live {
            return Err(Error::CapacityExhausted {
                kind: self.kind,
                limit: self.limit,
            });
        }
        Ok(())
    }

    pub(crate) fn free(&mut self, slot: u32) {
        debug_assert!(slot < self.high);
        self.live -= 1;
        self.free.push(slot);
    }

    /// Slots in use.
    pub(crate) fn live(&self) -> usize {
        self.live
    }
}

/// Sizes of a set of slots, and what they cost in bytes: the one byte count shared by
/// [`Stats`](crate::Stats) (one generation's tree) and [`Memory`](crate::Memory) (the arena).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Counts {
    pub nodes: usize,
    pub flats: usize,
    pub tables: usize,
    /// Bytes of the row blocks of tables and flat nodes.
    pub table_bytes: usize,
    pub pieces: usize,
    /// Pieces stored as page records ([`PageRecord`]), not among `pieces`.
    pub records: usize,
    pub sections: usize,
}

impl Counts {
    /// Bytes of nodes, flat nodes and sub-page tables (what QEMU's own figure counts).
    pub(crate) fn tree_bytes(&self, fanout: usize) -> usize {
        self.nodes * Arena::node_bytes(fanout) + self.table_bytes
    }

    /// Bytes of everything: the tree, pieces and section slots of values of type `V`.
    pub(crate) fn bytes<V>(&self, fanout: usize) -> usize {
        self.tree_bytes(fanout)
            + self.pieces * std::mem::size_of::<Piece>()
            + self.records * RECORD_CELLS * std::mem::size_of::<u32>()
            + section_bytes::<V>(self.sections)
    }
}

/// Bytes of the block of a table whose entry has size class `class`.
pub(crate) fn table_bytes(class: u32) -> usize {
    block_cells(table_cap(class)) * std::mem::size_of::<u32>()
}

/// What all generations share at fixed addresses: node base pages and section values.
///
/// Cache-line aligned so that the reference counts in its `Arc` do not share a line with
/// the slab headers.
#[repr(align(64))]
pub(crate) struct Storage<V> {
    /// First page covered by each node (for range walks, diff and the writer), by node slot.
    node_base: Slab<u64>,
    sections: Slab<SectionCell<V>>,
    /// Which section slots hold a value, a bit each: the writer's alone (I6), written by
    /// `write_section` and `take_section`, read by `Drop` (which owns the storage). Readers
    /// never look: a slot a generation reaches holds a value (I5).
    live: UnsafeCell<Vec<u64>>,
}

/// A section's cell: its value while the slot is live, uninitialised otherwise (which slots
/// are live: `Storage::live`). `size_of::<V>()` bytes, where an `Option<V>` would take a
/// second word for the values without a niche (`usize`, `u64`, ...).
#[repr(transparent)]
pub(crate) struct SectionCell<V>(MaybeUninit<V>);

impl<V> Default for SectionCell<V> {
    fn default() -> Self {
        SectionCell(MaybeUninit::uninit())
    }
}

/// Bytes of `n` section slots of values of type `V`: the value and its live bit.
pub(crate) fn section_bytes<V>(n: usize) -> usize {
    n * std::mem::size_of::<V>() + n.div_ceil(8)
}

// SAFETY: Storage hands out `&V` (from sections) to any thread holding a generation, so V
// must be Sync; values are dropped on the writer thread or wherever the storage goes last,
// so V must be Send. Cells are written only when unreachable (I3).
unsafe impl<V: Send + Sync> Send for Storage<V> {}
// SAFETY: as above.
unsafe impl<V: Send + Sync> Sync for Storage<V> {}

impl<V> Storage<V> {
    pub(crate) fn new() -> Self {
        Storage {
            node_base: Slab::new(SMALL_FIRST),
            sections: Slab::new(LARGE_FIRST),
            live: UnsafeCell::new(Vec::new()),
        }
    }

    /// Sets whether section `slot` holds a value; returns whether it did.
    ///
    /// # Safety
    /// The caller is the writer (I6), or owns the storage.
    unsafe fn set_live(&self, slot: u32, on: bool) -> bool {
        let (word, bit) = (slot as usize / 64, 1u64 << (slot % 64));
        self.live.with_mut(|p| {
            // SAFETY: forwarded contract: nobody else touches the bits meanwhile.
            let live = unsafe { &mut *p };
            if live.len() <= word {
                live.resize(word + 1, 0);
            }
            let was = live[word] & bit != 0;
            live[word] = live[word] & !bit | if on { bit } else { 0 };
            was
        })
    }

    /// Makes section slot `slot` available (I2). Writer only.
    pub(crate) fn ensure_section(&self, slot: u32) {
        self.sections.ensure(slot);
    }

    /// First page of the node at unit offset `unit` (of fan-out `fanout`).
    ///
    /// # Safety
    /// The node is reachable from a generation the caller holds, or the caller is the writer
    /// and the node is allocated (I2, I3).
    pub(crate) unsafe fn node_base(&self, unit: u32, fanout: usize) -> u64 {
        let slot = unit / (fanout.max(NODE_UNIT) / NODE_UNIT) as u32;
        // SAFETY: forwarded contract.
        unsafe { self.node_base.cell(slot).with(|p| *p) }
    }

    /// Records the first page of a node the writer is building.
    ///
    /// # Safety
    /// As [`Arena::write_node`]: the node is the writer's and unreachable.
    pub(crate) unsafe fn write_node_base(&self, unit: u32, fanout: usize, base: u64) {
        let slot = unit / (fanout.max(NODE_UNIT) / NODE_UNIT) as u32;
        self.node_base.ensure(slot);
        // SAFETY: forwarded contract.
        unsafe { self.node_base.cell(slot).with_mut(|p| *p = base) };
    }

    /// The value of the section a piece of a reachable generation refers to.
    ///
    /// Production and loom builds run this same code: the piece holds the address of its
    /// section's cell (slots never move, I1), and the read goes through the cell's `with`,
    /// which loom tracks and which is a plain pointer read otherwise.
    ///
    /// # Safety
    /// The piece is reachable from a generation of a map of `V`s that the caller holds for
    /// `'a` (then its section holds a value and is not written meanwhile: I3, I4, I5).
    #[inline(always)]
    pub(crate) unsafe fn value<'a>(piece: &Piece) -> &'a V {
        let cell = piece.section as *const UnsafeCell<SectionCell<V>>;
        // SAFETY: `piece.section` was set by the writer from a live section cell of this
        // storage (forwarded contract).
        cell_value(unsafe { &*cell })
    }

    // ----- Writing sections: the writer only (I6), into slots no generation anyone can
    // still read reaches (I3, I4). Each has that contract.

    /// The address pieces and page records hold for section `slot`: its cell's, or, when
    /// cells are zero-sized (`PhysMap<()>`: every cell has the same address), a distinct
    /// non-null address aligned for the cell, `align * (slot + 1)`, so that a section is
    /// still told apart by its address (`Stats::sections`, `diff`). Reading a zero-sized
    /// value reads no memory, so any such address is a valid place to read it from.
    ///
    /// # Safety
    /// `slot` was made available with [`Storage::ensure_section`] and that happens-before
    /// this call (I2).
    unsafe fn section_addr(&self, slot: u32) -> *const () {
        type Cell<V> = UnsafeCell<SectionCell<V>>;
        if std::mem::size_of::<Cell<V>>() == 0 {
            let align = std::mem::align_of::<Cell<V>>();
            return ptr::null::<u8>()
                .wrapping_add(align * (slot as usize + 1))
                .cast();
        }
        // SAFETY: forwarded contract.
        unsafe { self.sections.cell(slot) as *const _ as *const () }
    }

    /// Puts `value` in section `slot` and returns the address pieces hold for it.
    ///
    /// # Safety
    /// See above; `slot` was made available with [`Storage::ensure_section`].
    pub(crate) unsafe fn write_section(&self, slot: u32, value: V) -> *const () {
        // SAFETY: forwarded contract.
        let cell = unsafe { self.sections.cell(slot) };
        // SAFETY: forwarded contract: we are the writer.
        let was = unsafe { self.set_live(slot, true) };
        debug_assert!(!was, "section slot {slot} written while live");
        cell.with_mut(|p| {
            // SAFETY: as above: nobody else reads or writes the cell now; it held no value
            // (a live slot is never handed out again before `take_section`).
            unsafe { (*p).0.write(value) };
        });
        // SAFETY: forwarded contract.
        unsafe { self.section_addr(slot) }
    }

    /// The address pieces hold for section `slot` ([`Storage::section_addr`]). Writer only;
    /// the slot is live.
    pub(crate) fn section_cell(&self, slot: u32) -> *const () {
        // SAFETY: a live section slot was made available by the writer (I2); taking the
        // address reads nothing.
        unsafe { self.section_addr(slot) }
    }

    /// Empties section `slot`, returning its value (for the caller to drop, `drops.rs`).
    ///
    /// # Safety
    /// See above.
    pub(crate) unsafe fn take_section(&self, slot: u32) -> Option<V> {
        // SAFETY: forwarded contract: we are the writer.
        if !unsafe { self.set_live(slot, false) } {
            return None;
        }
        // SAFETY: forwarded contract; the slot was live, so its cell holds a value, which
        // is moved out once (its bit is clear now).
        Some(unsafe {
            self.sections
                .cell(slot)
                .with_mut(|p| (*p).0.assume_init_read())
        })
    }
}

impl<V> Drop for Storage<V> {
    fn drop(&mut self) {
        // SAFETY: we own the storage (`&mut self`): no generation can be read any more.
        let slots = self.live.with_mut(|p| unsafe { (*p).len() } * 64) as u32;
        // Values may run user code that panics: each live one is taken out (its bit cleared,
        // so once) and dropped on its own (`drops.rs`); the slab frees the chunks afterwards.
        // SAFETY: as above: we own the storage, the writer's role included.
        crate::drops::drop_all((0..slots).filter_map(|slot| unsafe { self.take_section(slot) }));
    }
}

/// The value in a section cell that a reachable generation refers to.
#[inline(always)]
fn cell_value<V>(cell: &UnsafeCell<SectionCell<V>>) -> &V {
    cell.with(|p| {
        // SAFETY: the caller (`Storage::value`) holds a generation that reaches the cell, so
        // the cell holds a value (I5) and no write to it happens while the borrow lives (I3,
        // I4).
        unsafe { (*p).0.assume_init_ref() }
    })
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn slab_slots_map_to_distinct_cells_inside_their_chunk() {
        for first in [1u32, 2, 6] {
            let slab: Slab<u32> = Slab::new(first);
            let mut seen = std::collections::HashSet::new();
            for slot in 0..600u32 {
                let (chunk, cell) = slab.locate(slot);
                assert!(cell < slab.chunk_len(chunk), "slot {slot}");
                assert!(seen.insert((chunk, cell)), "slot {slot} collides");
            }
        }
    }

    #[test]
    fn allocators_reuse_freed_slots_and_stop_at_the_limit() {
        let mut alloc = SlabAlloc::new(40, "cells");
        let slots: Vec<u32> = (0..40).map(|_| alloc.alloc().unwrap()).collect();
        assert_eq!(slots, (0..40).collect::<Vec<u32>>());
        assert_eq!(
            alloc.alloc(),
            Err(Error::CapacityExhausted {
                kind: "cells",
                limit: 40
            })
        );
        alloc.free(7);
        assert_eq!(alloc.alloc(), Ok(7), "freed slots are reused first");
        assert_eq!(alloc.live(), 40);
    }

    #[test]
    fn grown_arrays_keep_their_cells_and_old_ones_stay_valid() {
        #[allow(clippy::type_complexity)]
        let mut arena = Arena::new(4, 1000, 1000);
        let mut nodes = Vec::new();
        for n in 0..100u32 {
            let unit = arena.alloc_node().unwrap();
            let kids: Vec<Entry> = (0..4).map(|i| Entry::leaf(n * 10 + i)).collect();
            // SAFETY: fresh node, single-threaded.
            unsafe { arena.write_node(unit, &kids) };
            nodes.push((unit, arena.arrays(), kids));
        }
        let now = arena.arrays().bases();
        for (unit, then, kids) in &nodes {
            let then = then.bases();
            for (i, k) in kids.iter().enumerate() {
                // SAFETY: written above; every array that held the node is still alive.
                unsafe {
                    assert_eq!(then.entry(*unit, i), *k);
                    assert_eq!(now.entry(*unit, i), *k);
                }
            }
        }
    }

    #[test]
    fn table_classes_waste_little_and_stop_with_an_error() {
        let caps: Vec<usize> = (0..TABLE_CLASSES).map(table_cap).collect();
        assert_eq!(caps[..9], [8, 12, 16, 24, 32, 48, 64, 96, 128]);
        assert_eq!(*caps.last().unwrap(), 16384);
        assert!(caps.windows(2).all(|w| w[0] < w[1]));
        for rows in 1..=16384 {
            let cap = table_cap(table_class(rows).unwrap());
            // At most a third of the rows wasted up to 128 rows, at most half above.
            let waste = cap - rows;
            assert!(rows <= 8 || 3 * waste <= cap || (rows > 128 && 2 * waste < cap));
        }
        assert_eq!(table_class(16385), None);
        let mut arena = Arena::new(512, 10, 1 << 20);
        let rows: Vec<(u32, u32)> = (0..16385).map(|i| (i, i)).collect();
        assert!(matches!(
            arena.alloc_table(0, &rows),
            Err(Error::CapacityExhausted { limit: 16384, .. })
        ));
        assert!(arena.alloc_table(0, &rows[..16384]).is_ok());
    }

    #[test]
    fn flat_nodes_find_each_key_in_its_run_and_nothing_outside() {
        // (Under Miri and loom this runs the search's scalar form, else the SSE2 one.)
        let mut arena = Arena::new(512, 10, 1000);
        let check = |arena: &Arena, e: Entry, runs: &[(u32, u32)], last: u32| {
            let offset = e.table_parts().1;
            let bases = arena.arrays().bases();
            let mut keys: Vec<u32> = runs
                .iter()
                .flat_map(|r| [r.0, r.0.wrapping_sub(1), r.0 + 1])
                .collect();
            keys.extend([0, 1, last, last.wrapping_add(1), u32::MAX - 1, u32::MAX]);
            for key in keys {
                let want = if key < runs[0].0 || key > last {
                    0
                } else {
                    runs.iter().rev().find(|r| r.0 <= key).unwrap().1
                };
                // SAFETY: the writer's own block, single-threaded.
                let got = unsafe { bases.flat_entry(offset, key) };
                assert_eq!(got, Entry::from_bits(want), "key {key:#x} of {runs:x?}");
            }
            // SAFETY: as above.
            let (rows, _) = unsafe { bases.flat_rows(offset) };
            assert_eq!(rows, runs);
        };
        let e1 = as_words(&[Entry::leaf(7)])[0];
        let e2 = as_words(&[Entry::leaf(9)])[0];
        let runs = [(5, e1), (10, 0), (12, e2)];
        let e = arena.alloc_flat(1 << 40 | 5, 20, &runs).unwrap();
        check(&arena, e, &runs, 20);
        // Sixteen runs up to the last key below 2^32 (no padding row, the next key is the top).
        let runs: Vec<(u32, u32)> = (0..16).map(|k| ((k * 0x1000_0000) | 3, k + 1)).collect();
        let e = arena.alloc_flat(3, u32::MAX - 1, &runs).unwrap();
        check(&arena, e, &runs, u32::MAX - 1);
        // One run that starts at key 0.
        let e = arena.alloc_flat(0, 0x1ff, &[(0, e2)]).unwrap();
        check(&arena, e, &[(0, e2)], 0x1ff);
    }

    #[test]
    fn tables_pad_to_a_line_and_find_their_rows() {
        let mut arena = Arena::new(512, 10, 1000);
        let rows = [(0x10u32, 5u32), (0x400, 6), (u32::MAX, 7)];
        let e = arena.alloc_table(1 << 40, &rows).unwrap();
        let (class, offset) = e.table_parts();
        assert_eq!(table_cap(class), 8);
        let bases = arena.arrays().bases();
        // SAFETY: written above, single-threaded.
        let find = |off| unsafe { bases.table_piece(offset, class, off) };
        // SAFETY: as above.
        assert_eq!(unsafe { bases.table_rows(offset, 8) }, rows.to_vec());
        // SAFETY: as above.
        assert_eq!(unsafe { bases.table_page(offset, 8) }, 1 << 40);
        for (off, want) in [
            (0xf, None),
            (0x10, Some(5)),
            (0x3ff, Some(5)),
            (0x400, Some(6)),
        ] {
            assert_eq!(find(off), want, "{off:#x}");
        }
        assert_eq!(find(u32::MAX), Some(7), "a row at the very last offset");
        let big: Vec<(u32, u32)> = (0..20).map(|i| (i * 0x10 + 1, i)).collect();
        let e = arena.alloc_table(3, &big).unwrap();
        let (class, offset) = e.table_parts();
        let cap = table_cap(class);
        assert_eq!(cap, 24);
        let bases = arena.arrays().bases();
        for off in 0..0x200u32 {
            let want = big.iter().rposition(|&(s, _)| s <= off).map(|i| big[i].1);
            // SAFETY: as above.
            assert_eq!(
                // SAFETY: as above.
                unsafe { bases.table_piece(offset, class, off) },
                want,
                "{off:#x}"
            );
        }
        // SAFETY: as above.
        assert_eq!(unsafe { bases.table_rows(offset, cap) }, big);
    }

    #[test]
    fn values_in_sections_are_dropped_with_the_storage() {
        let storage: Storage<String> = Storage::new();
        storage.ensure_section(0);
        // SAFETY: fresh slot, single-threaded.
        let cell = unsafe { storage.write_section(0, "pc.ram".to_string()) };
        let piece = Piece {
            section: cell,
            ..Piece::default()
        };
        // SAFETY: holds Some, nobody writes it.
        assert_eq!(unsafe { Storage::<String>::value(&piece) }, "pc.ram");
        drop(storage); // Miri reports a leak if the String is not dropped.
    }

    #[test]
    fn page_records_round_trip_and_refuse_what_does_not_fit() {
        let cells: Vec<u64> = vec![0; 4];
        for page in [0u64, 1, 0xfe_dcba_9876, (1 << 40) - 1] {
            for cell in &cells {
                let at = cell as *const u64 as *const ();
                let packed = PageRecord::pack(page, at).unwrap();
                assert_eq!(PageRecord::unpack(packed), (page, at), "{page:#x}");
            }
        }
        let at = &cells[0] as *const u64 as *const ();
        assert_eq!(PageRecord::pack(1 << 40, at), None);
        let odd = (at as usize + 3) as *const ();
        assert_eq!(
            PageRecord::unpack(PageRecord::pack(7, odd).unwrap()),
            (7, odd)
        );
        assert_eq!(PageRecord::pack(0, (1usize << 56) as *const ()), None);
    }

    #[test]
    fn pieces_are_32_bytes_and_never_straddle_a_line() {
        assert_eq!(std::mem::size_of::<Piece>(), 32);
        assert_eq!(std::mem::size_of::<Block<Piece, 2>>(), 64);
        assert_eq!(std::mem::align_of::<Block<Piece, 2>>(), 64);
    }
}
