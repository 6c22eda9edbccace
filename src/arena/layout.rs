//! The arena's layout: size classes, the flat node and table encodings, pieces, page
//! records, and the byte counts every report shares.

use std::ptr;

/// Most chunks a slab can have: enough for 2^30 slots from a first chunk of 4.
#[cfg(not(loom))]
pub(super) const MAX_CHUNKS: usize = 32;
/// Under loom, few and tiny chunks keep the number of modelled objects small.
#[cfg(loom)]
pub(super) const MAX_CHUNKS: usize = 8;

/// log2 of the first chunk of the node-base slab, and of the initial node array (in nodes).
pub(super) const SMALL_FIRST: u32 = if cfg!(loom) { 1 } else { 4 };
/// log2 of the first chunk of the section slab, and of the initial piece array (in slots).
pub(super) const LARGE_FIRST: u32 = if cfg!(loom) { 1 } else { 6 };

/// Node entries are addressed in units of this many cells (see `entry.rs`): one 64-byte
/// line of the node array; a node takes at least one, and starts on a cache line.
pub(crate) const NODE_UNIT: usize = 16;

/// Rows of the smallest sub-page table block: one 64-byte line of 8 starts and 8 pieces.
pub(crate) const MIN_TABLE_ROWS: usize = 8;
/// Size classes a table entry can name (4 bits).
pub(super) const TABLE_CLASSES: u32 = 16;

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
pub(super) fn table_class(rows: usize) -> Option<u32> {
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
pub(crate) const FLAT_CELLS: usize = (FLAT_ROWS + 1) + FLAT_ROWS + 3;
/// Where a flat node's entries start in its block.
pub(crate) const FLAT_ENTRIES: usize = FLAT_ROWS + 1;
/// Where a flat node's span's first page starts in its block (then the number of runs).
pub(crate) const FLAT_BASE: usize = 2 * FLAT_ROWS + 1;
/// Where a flat node's number of runs is in its block (after its span's first page).
pub(crate) const FLAT_RUNS: usize = FLAT_BASE + 2;
/// Bytes of a flat node's block.
pub(crate) const FLAT_BYTES: usize = FLAT_CELLS * std::mem::size_of::<u32>();
/// Flat nodes' keys and sub-page tables' starts are stored and compared as
/// `key ^ KEY_BIAS`, as `i32`: that turns their unsigned order into the signed one SSE2
/// compares without a constant to load (an unsigned vector compare needs one, from a line
/// of its own).
pub(crate) const KEY_BIAS: u32 = 0x8000_0000;

/// One mapped, contiguous piece of a section: 32 bytes, so that in the piece array (64-byte
/// aligned blocks, [`Cells`](super::cells::Cells)) a piece never straddles two cache lines. (Not `align(32)`: a
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
// `Storage::value`, whose contract (a generation holding the piece is held: the cell does
// not move, I1, and holds a value, I5) makes the read sound on any thread.
unsafe impl Send for Piece {}
// SAFETY: a shared piece is only read (plain data); its section address is dereferenced
// only through `Storage::value`, under a held generation (I1, I5), on whichever thread.
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

/// Cells of the row array in a cache line (its blocks are line-aligned, `Cells`).
pub(super) const LINE_CELLS: usize = 64 / std::mem::size_of::<u32>();

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

/// Cells of a table block of `rows` rows: starts, pieces, and the page in two cells.
pub(super) const fn block_cells(rows: usize) -> usize {
    2 * rows + 2
}

/// How many of the `cap` rows of a table block are real, given its row `k`'s piece: the
/// padding repeats the last real piece, and two real rows of one table never share one.
pub(crate) fn table_real_rows(cap: usize, piece: impl Fn(usize) -> u32) -> usize {
    1 + (1..cap).take_while(|&k| piece(k) != piece(k - 1)).count()
}

/// Cells a node takes in the node array: its fan-out, at least one unit.
pub(crate) fn node_cells(fanout: usize) -> usize {
    fanout.max(NODE_UNIT)
}

/// Units of [`NODE_UNIT`] cells a node takes (a node entry carries its offset in units).
/// `fanout` may also be the node's cells ([`node_cells`] of its fan-out): the same units.
pub(crate) fn node_units(fanout: usize) -> usize {
    node_cells(fanout) / NODE_UNIT
}

/// The slot (0, 1, 2... in allocation order) of the node at unit offset `unit` (`fanout` as
/// in [`node_units`]).
pub(crate) fn node_slot(unit: u32, fanout: usize) -> u32 {
    unit / node_units(fanout) as u32
}

/// Bytes a node takes.
pub(crate) fn node_bytes(fanout: usize) -> usize {
    node_cells(fanout) * std::mem::size_of::<u32>() + std::mem::size_of::<u64>()
}

/// Bytes of `n` section slots of values of type `V`: the value and its live bit.
pub(crate) fn section_bytes<V>(n: usize) -> usize {
    n * std::mem::size_of::<V>() + n.div_ceil(8)
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
        self.nodes * node_bytes(fanout) + self.table_bytes
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
