//! The arena: slot storage shared by all generations.
//!
//! Storage grows in chunks that never move (chunk `k` holds `first << k` slots), so a slot
//! index stays valid for as long as the arena lives and readers follow indices without a
//! lock (invariant I1 of `ARCHITECTURE.md`). Which slots are in use is the writer's
//! bookkeeping ([`SlabAlloc`]); when a slot may be written is the reclamation protocol's
//! (I3, I4). This module owns every raw cell access of the crate: the readers' accessors
//! (`Storage::node_entry`, `piece`, `table`, `value`) and the writer's (`write_*`, `take_*`),
//! each `unsafe` with the invariant it needs spelled out once, here.

use crate::entry::Entry;
use crate::sync::{AtomicPtr, Ordering, UnsafeCell};
use crate::Error;
use std::ptr;

/// Most chunks a slab can have: enough for 2^30 slots from a first chunk of 4.
#[cfg(not(loom))]
const MAX_CHUNKS: usize = 32;
/// Under loom, few and tiny chunks keep the number of modelled objects small.
#[cfg(loom)]
const MAX_CHUNKS: usize = 8;

/// log2 of the first chunk of the node, base and sub-page slabs (in slots): 64 nodes (128 KiB
/// at the default fan-out) cover a real machine's map and the garbage of many commits, so its
/// lookups stay on the fast path while a writer churns.
const SMALL_FIRST: u32 = if cfg!(loom) { 1 } else { 6 };
/// log2 of the first chunk of the piece and section slabs (in slots).
const LARGE_FIRST: u32 = if cfg!(loom) { 1 } else { 8 };

/// One mapped, contiguous piece of a section: 32 bytes, aligned so that a piece never
/// straddles two cache lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C, align(32))]
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

/// One row of a sub-page table: from `start` (clamped to the page) on, piece `piece`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct SubEntry {
    pub start: u64,
    pub piece: u32,
}

/// A sub-page table: the pieces overlapping one page, by start address.
pub(crate) type Subpage = Box<[SubEntry]>;

/// Chunk 0 of a slab, copied where a lookup reads it without touching the slab: its cells,
/// its number of slots, and log2 of the cells a slot has.
pub(crate) struct ChunkZero<T> {
    cells: *const UnsafeCell<T>,
    slots: u32,
    unit_shift: u32,
}

impl<T> Clone for ChunkZero<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for ChunkZero<T> {}

impl<T> ChunkZero<T> {
    /// Cell `i` of `slot` if the slot is in chunk 0.
    ///
    /// # Safety
    /// The slab this came from is alive, and `i < 1 << unit_shift`.
    #[inline(always)]
    unsafe fn get(&self, slot: u32, i: usize) -> Option<&UnsafeCell<T>> {
        if slot < self.slots {
            // SAFETY: chunk 0 holds `slots << unit_shift` cells and lives as long as the slab
            // (I1); `i` is inside the slot by the contract.
            Some(unsafe { &*self.cells.add(((slot as usize) << self.unit_shift) + i) })
        } else {
            None
        }
    }
}

/// Fixed-address chunked storage of `1 << unit_shift` consecutive cells per slot.
///
/// Chunk 0 is allocated with the slab and never changes, so its address is a plain field:
/// slots in it (all of them, for maps of the size of a real machine) are reached with one
/// compare and one shift-add, no atomic load.
pub(crate) struct Slab<T: Default> {
    zero: ChunkZero<T>,
    chunks: [AtomicPtr<UnsafeCell<T>>; MAX_CHUNKS],
    /// log2 of the number of slots in chunk 0.
    first_shift: u32,
}

impl<T: Default> Slab<T> {
    pub(crate) fn new(first_shift: u32, unit_shift: u32) -> Self {
        let chunks = std::array::from_fn(|_| AtomicPtr::new(ptr::null_mut()));
        let mut slab = Slab {
            zero: ChunkZero {
                cells: ptr::null(),
                slots: 1 << first_shift,
                unit_shift,
            },
            chunks,
            first_shift,
        };
        slab.ensure(0);
        slab.zero.cells = slab.chunks[0].load(Ordering::Relaxed);
        slab
    }

    /// (chunk, first cell) of `slot`.
    #[inline(always)]
    fn locate(&self, slot: u32) -> (usize, usize) {
        let j = slot as u64 + (1u64 << self.first_shift);
        let top = 63 - j.leading_zeros();
        let chunk = (top - self.first_shift) as usize;
        let offset = (j - (1u64 << top)) as usize;
        (chunk, offset << self.zero.unit_shift)
    }

    fn chunk_cells(&self, chunk: usize) -> usize {
        (1usize << (self.first_shift as usize + chunk)) << self.zero.unit_shift
    }

    /// Chunk 0, for copying into a generation's header (see `version.rs`).
    pub(crate) fn zero(&self) -> ChunkZero<T> {
        self.zero
    }

    /// Cell `i` of `slot`.
    ///
    /// # Safety
    /// `slot` was made available with [`Slab::ensure`] and that happens-before this call
    /// (I2: true for any slot reachable from a generation the caller holds, and for the
    /// writer); `i` is less than the cells of a slot.
    #[inline(always)]
    pub(crate) unsafe fn cell(&self, slot: u32, i: usize) -> &UnsafeCell<T> {
        // SAFETY: forwarded contract.
        if let Some(c) = unsafe { self.zero.get(slot, i) } {
            return c;
        }
        let (chunk, first) = self.locate(slot);
        // Relaxed: the chunk pointer was stored (Release) before the generation that made
        // `slot` reachable was published, and the caller acquired that generation (I2), so by
        // coherence this load sees the pointer, which never changes again while the slab lives.
        let base = self.chunks[chunk].load(Ordering::Relaxed);
        debug_assert!(!base.is_null());
        // SAFETY: `base` points to a live chunk of `chunk_cells(chunk)` cells (allocated in
        // `ensure`, freed only in `Drop`, I1), and `first + i` is inside it by `locate`.
        unsafe { &*base.add(first + i) }
    }

    /// Makes sure the chunk holding `slot` exists. Writer only (I6).
    pub(crate) fn ensure(&self, slot: u32) {
        let (chunk, _) = self.locate(slot);
        if self.chunks[chunk].load(Ordering::Relaxed).is_null() {
            let cells: Box<[UnsafeCell<T>]> = (0..self.chunk_cells(chunk))
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

    /// Cells reserved by allocated chunks (for memory reporting).
    pub(crate) fn reserved_cells(&self) -> usize {
        (0..MAX_CHUNKS)
            .filter(|&c| !self.chunks[c].load(Ordering::Relaxed).is_null())
            .map(|c| self.chunk_cells(c))
            .sum()
    }
}

impl<T: Default> Drop for Slab<T> {
    fn drop(&mut self) {
        let mut boxes = Vec::new();
        for (c, chunk) in self.chunks.iter_mut().enumerate() {
            let p = chunk.with_mut_ptr();
            if !p.is_null() {
                let len = (1usize << (self.first_shift as usize + c)) << self.zero.unit_shift;
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

/// Writer-side bookkeeping of one slab: high-water mark and free list.
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

    /// A slot that no published generation can reach, or `CapacityExhausted` (naming this
    /// slab's kind and limit) if the limit is reached.
    pub(crate) fn alloc<T: Default>(&mut self, slab: &Slab<T>) -> Result<u32, Error> {
        self.room(1)?;
        let slot = match self.free.pop() {
            Some(s) => s,
            None => {
                let s = self.high;
                slab.ensure(s);
                self.high += 1;
                s
            }
        };
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
    pub tables: usize,
    pub rows: usize,
    pub pieces: usize,
    pub sections: usize,
}

impl Counts {
    /// Bytes of nodes and sub-page tables (what QEMU's own figure counts).
    pub(crate) fn tree_bytes(&self, fanout: usize) -> usize {
        self.nodes * (fanout * std::mem::size_of::<u32>() + std::mem::size_of::<u64>())
            + self.tables * std::mem::size_of::<Subpage>()
            + self.rows * std::mem::size_of::<SubEntry>()
    }

    /// Bytes of everything: the tree, pieces and section slots of values of type `V`.
    pub(crate) fn bytes<V>(&self, fanout: usize) -> usize {
        self.tree_bytes(fanout)
            + self.pieces * std::mem::size_of::<Piece>()
            + self.sections * std::mem::size_of::<Option<V>>()
    }
}

/// Everything the generations share: the slabs.
///
/// Cache-line aligned so that the reference counts in its `Arc` do not share a line with the
/// slab headers that lookups past chunk 0 read.
#[repr(align(64))]
pub(crate) struct Storage<V> {
    /// Node entries, `fanout` cells a slot.
    nodes: Slab<u32>,
    /// First page covered by each node (for range walks, diff and the writer).
    node_base: Slab<u64>,
    pieces: Slab<Piece>,
    subpages: Slab<Subpage>,
    sections: Slab<Option<V>>,
}

// SAFETY: Storage hands out `&V` (from sections) to any thread holding a generation, so V
// must be Sync; values are dropped on the writer thread or wherever the storage goes last,
// so V must be Send. Cells are written only when unreachable (I3).
unsafe impl<V: Send + Sync> Send for Storage<V> {}
// SAFETY: as above.
unsafe impl<V: Send + Sync> Sync for Storage<V> {}

/// The slabs a [`SlabAlloc`] allocates from.
pub(crate) enum Kind {
    Nodes,
    Pieces,
    Subpages,
    Sections,
}

impl<V> Storage<V> {
    pub(crate) fn new(level_bits: u32) -> Self {
        Storage {
            nodes: Slab::new(SMALL_FIRST, level_bits),
            node_base: Slab::new(SMALL_FIRST, 0),
            pieces: Slab::new(LARGE_FIRST, 0),
            subpages: Slab::new(SMALL_FIRST, 0),
            sections: Slab::new(LARGE_FIRST, 0),
        }
    }

    /// A free slot of `kind` from `alloc`, its chunk made available (I2). Writer only.
    pub(crate) fn alloc(&self, alloc: &mut SlabAlloc, kind: Kind) -> Result<u32, Error> {
        let slot = match kind {
            Kind::Nodes => {
                let n = alloc.alloc(&self.nodes)?;
                self.node_base.ensure(n);
                n
            }
            Kind::Pieces => alloc.alloc(&self.pieces)?,
            Kind::Subpages => alloc.alloc(&self.subpages)?,
            Kind::Sections => alloc.alloc(&self.sections)?,
        };
        Ok(slot)
    }

    /// Chunk 0 of the node and piece slabs, for a generation's header.
    pub(crate) fn zeros(&self) -> (ChunkZero<u32>, ChunkZero<Piece>) {
        (self.nodes.zero(), self.pieces.zero())
    }

    /// Bytes of node storage reserved by allocated chunks.
    pub(crate) fn reserved_node_bytes(&self) -> usize {
        self.nodes.reserved_cells() * std::mem::size_of::<u32>()
    }

    // ----- Reading. Every reader below has the same contract:
    //
    // # Safety
    // The slot is reachable from a generation the caller holds (or the caller is the writer
    // and the slot is allocated), for the lifetime of the returned borrow: then its chunk
    // exists and is visible (I1, I2) and nothing writes the cell meanwhile (I3, I4).

    /// Entry `i` of node `node`, through chunk 0 of `zero` when it is there.
    #[inline(always)]
    pub(crate) unsafe fn node_entry(&self, zero: &ChunkZero<u32>, node: u32, i: usize) -> Entry {
        // SAFETY: see the contract above; `zero` is chunk 0 of `self.nodes` and `i` < fanout.
        let cell = match unsafe { zero.get(node, i) } {
            Some(c) => c,
            // SAFETY: as above.
            None => unsafe { self.nodes.cell(node, i) },
        };
        // SAFETY: as above: the cell is not written while it is reachable.
        Entry::from_bits(cell.with(|p| unsafe { *p }))
    }

    /// First page of node `node`.
    #[inline]
    pub(crate) unsafe fn node_base(&self, node: u32) -> u64 {
        // SAFETY: see the contract above.
        unsafe { self.node_base.cell(node, 0).with(|p| *p) }
    }

    /// Piece `slot`, through chunk 0 of `zero` when it is there.
    #[inline(always)]
    pub(crate) unsafe fn piece(&self, zero: &ChunkZero<Piece>, slot: u32) -> &Piece {
        // SAFETY: see the contract above; `zero` is chunk 0 of `self.pieces`.
        let cell = match unsafe { zero.get(slot, 0) } {
            Some(c) => c,
            // SAFETY: as above.
            None => unsafe { self.pieces.cell(slot, 0) },
        };
        // SAFETY: as above.
        cell.with(|p| unsafe { &*p })
    }

    /// Sub-page table `slot`.
    #[inline]
    pub(crate) unsafe fn table(&self, slot: u32) -> &[SubEntry] {
        // SAFETY: see the contract above; the boxed slice is not replaced while reachable.
        unsafe { self.subpages.cell(slot, 0).with(|p| &**p) }
    }

    /// The value of the section a piece of a reachable generation refers to.
    ///
    /// Production and loom builds run this same code: the piece holds the address of its
    /// section's cell (slots never move, I1), and the read goes through the cell's `with`,
    /// which loom tracks and which is a plain pointer read otherwise.
    #[inline(always)]
    pub(crate) unsafe fn value<'a>(&'a self, piece: &Piece) -> &'a V {
        let cell = piece.section as *const UnsafeCell<Option<V>>;
        // SAFETY: see the contract above: `piece.section` was set by the writer from a live
        // section cell of this storage, which holds `Some` while the piece is reachable (I5).
        cell_value(unsafe { &*cell })
    }

    // ----- Writing: the writer only (I6), into slots no published generation can reach
    // (fresh, or reclaimed: I3, I4). Each has that contract:
    //
    // # Safety
    // The slot is allocated to the writer and unreachable from every generation anyone can
    // still read.

    /// Writes node `node`: its first page and its entries.
    pub(crate) unsafe fn write_node(&self, node: u32, base: u64, kids: &[Entry]) {
        for (i, k) in kids.iter().enumerate() {
            // SAFETY: see the contract above; `i` < fanout (`kids` is one node's worth).
            unsafe { self.nodes.cell(node, i).with_mut(|p| *p = k.bits()) };
        }
        // SAFETY: as above.
        unsafe { self.node_base.cell(node, 0).with_mut(|p| *p = base) };
    }

    /// Writes piece `slot`.
    pub(crate) unsafe fn write_piece(&self, slot: u32, piece: Piece) {
        // SAFETY: see the contract above.
        unsafe { self.pieces.cell(slot, 0).with_mut(|p| *p = piece) };
    }

    /// Writes sub-page table `slot`.
    pub(crate) unsafe fn write_table(&self, slot: u32, rows: Subpage) {
        // SAFETY: see the contract above.
        unsafe { self.subpages.cell(slot, 0).with_mut(|p| *p = rows) };
    }

    /// Empties sub-page table `slot`, returning its rows.
    pub(crate) unsafe fn take_table(&self, slot: u32) -> Subpage {
        // SAFETY: see the contract above.
        unsafe {
            self.subpages
                .cell(slot, 0)
                .with_mut(|p| std::mem::take(&mut *p))
        }
    }

    /// Puts `value` in section `slot` and returns the cell's address (for pieces).
    pub(crate) unsafe fn write_section(&self, slot: u32, value: V) -> *const () {
        // SAFETY: see the contract above.
        let cell = unsafe { self.sections.cell(slot, 0) };
        cell.with_mut(|p| {
            // SAFETY: as above: nobody else reads or writes the cell now.
            unsafe { *p = Some(value) }
        });
        cell as *const _ as *const ()
    }

    /// The address of section `slot`'s cell (for pieces). Writer only; the slot is live.
    pub(crate) fn section_cell(&self, slot: u32) -> *const () {
        // SAFETY: a live section slot was allocated by the writer, so its chunk exists (I2);
        // taking the address reads nothing.
        unsafe { self.sections.cell(slot, 0) as *const _ as *const () }
    }

    /// Empties section `slot`, returning its value (for the caller to drop, `drops.rs`).
    pub(crate) unsafe fn take_section(&self, slot: u32) -> Option<V> {
        // SAFETY: see the contract above.
        unsafe { self.sections.cell(slot, 0).with_mut(|p| (*p).take()) }
    }
}

/// The value in a section cell that a reachable generation refers to.
#[inline(always)]
fn cell_value<V>(cell: &UnsafeCell<Option<V>>) -> &V {
    cell.with(|p| {
        // SAFETY: the caller (`Storage::value`) holds a generation that reaches the cell, so
        // no write to it happens while the borrow lives (I3, I4).
        match unsafe { &*p } {
            Some(v) => v,
            None => unreachable_none(),
        }
    })
}

#[cold]
fn unreachable_none() -> ! {
    unreachable!("physmap: reachable section slot is empty (reclamation bug)")
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn slots_map_to_distinct_cells_inside_their_chunk() {
        for (first, unit_shift) in [(1u32, 0u32), (2, 2), (6, 0)] {
            let slab: Slab<u32> = Slab::new(first, unit_shift);
            let mut seen = std::collections::HashSet::new();
            for slot in 0..600u32 {
                let (chunk, cell) = slab.locate(slot);
                assert!(
                    cell + (1 << unit_shift) <= slab.chunk_cells(chunk),
                    "slot {slot}"
                );
                assert!(seen.insert((chunk, cell)), "slot {slot} collides");
            }
        }
    }

    #[test]
    fn cells_keep_what_the_writer_put() {
        let slab: Slab<u32> = Slab::new(1, 2);
        let mut alloc = SlabAlloc::new(100, "cells");
        let slots: Vec<u32> = (0..40).map(|_| alloc.alloc(&slab).unwrap()).collect();
        for &s in &slots {
            for i in 0..4 {
                // SAFETY: allocated above, single-threaded.
                unsafe { slab.cell(s, i).with_mut(|p| *p = s * 10 + i as u32) };
            }
        }
        for &s in &slots {
            for i in 0..4 {
                // SAFETY: as above.
                assert_eq!(unsafe { slab.cell(s, i).with(|p| *p) }, s * 10 + i as u32);
            }
        }
        alloc.free(7);
        assert_eq!(alloc.alloc(&slab), Ok(7), "freed slots are reused first");
        assert_eq!(alloc.live(), 40);
        let mut small = SlabAlloc::new(2, "cells");
        assert!(small.alloc(&slab).is_ok() && small.alloc(&slab).is_ok());
        assert_eq!(
            small.alloc(&slab),
            Err(Error::CapacityExhausted {
                kind: "cells",
                limit: 2
            })
        );
    }

    #[test]
    fn values_in_sections_are_dropped_with_the_storage() {
        let storage: Storage<String> = Storage::new(2);
        let mut alloc = SlabAlloc::new(10, "sections");
        let s = storage.alloc(&mut alloc, Kind::Sections).unwrap();
        // SAFETY: fresh slot, single-threaded.
        let cell = unsafe { storage.write_section(s, "pc.ram".to_string()) };
        let piece = Piece {
            section: cell,
            ..Piece::default()
        };
        // SAFETY: holds Some, nobody writes it.
        assert_eq!(unsafe { storage.value(&piece) }, "pc.ram");
        drop(storage); // Miri reports a leak if the String is not dropped.
    }

    #[test]
    fn pieces_are_32_bytes_and_never_straddle_a_line() {
        assert_eq!(std::mem::size_of::<Piece>(), 32);
        assert_eq!(std::mem::align_of::<Piece>(), 32);
    }
}
