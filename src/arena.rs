//! The arena: slot storage shared by all generations, and the hand-back of retired slots.
//!
//! Storage grows in chunks that never move (chunk `k` holds `first << k` slots), so a slot
//! index stays valid for as long as the arena lives and readers can follow indices without a
//! lock. A slot is written only while no published generation can reach it: either it was
//! never used, or it was retired and every generation that could reach it has been dropped
//! (see `publish.rs`). Slot allocation and freeing are writer-only bookkeeping ([`SlabAlloc`]).

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

/// One mapped, contiguous piece of a section.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Piece {
    /// First byte.
    pub start: u64,
    /// Last byte (inclusive).
    pub end: u64,
    /// Start address of the `insert`/`overwrite` that created the section.
    pub origin: u64,
    /// Section slot holding the value.
    pub section: u32,
    /// Address of that section slot's cell (slots never move), so a lookup reads the value
    /// without locating the slot. Null only in unused piece slots.
    pub value: *const (),
}

impl Default for Piece {
    fn default() -> Self {
        Piece {
            start: 0,
            end: 0,
            origin: 0,
            section: 0,
            value: ptr::null(),
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

/// Fixed-address chunked storage of `unit` consecutive cells per slot.
///
/// Chunk 0 is allocated with the slab and never changes, so its address is a plain field:
/// slots in it (all of them, for maps of the size of a real machine) are reached with one
/// compare and one multiply-add, no atomic load.
pub(crate) struct Slab<T: Default> {
    /// Chunk 0 (also in `chunks[0]`, which owns it).
    first: *const UnsafeCell<T>,
    /// Slots in chunk 0.
    first_slots: u32,
    chunks: [AtomicPtr<UnsafeCell<T>>; MAX_CHUNKS],
    /// log2 of the number of slots in chunk 0.
    first_shift: u32,
    /// Cells per slot (node fan-out for the node slab, 1 otherwise).
    unit: usize,
}

impl<T: Default> Slab<T> {
    pub(crate) fn new(first_shift: u32, unit: usize) -> Self {
        let chunks = std::array::from_fn(|_| AtomicPtr::new(ptr::null_mut()));
        let mut slab = Slab {
            first: ptr::null(),
            first_slots: 1 << first_shift,
            chunks,
            first_shift,
            unit,
        };
        slab.ensure(0);
        slab.first = slab.chunks[0].load(Ordering::Relaxed);
        slab
    }

    /// (chunk, first cell) of `slot`.
    #[inline(always)]
    fn locate(&self, slot: u32) -> (usize, usize) {
        let j = slot as u64 + (1u64 << self.first_shift);
        let top = 63 - j.leading_zeros();
        let chunk = (top - self.first_shift) as usize;
        let offset = (j - (1u64 << top)) as usize;
        (chunk, offset * self.unit)
    }

    fn chunk_cells(&self, chunk: usize) -> usize {
        (1usize << (self.first_shift as usize + chunk)) * self.unit
    }

    /// Cell `i` of `slot`.
    ///
    /// # Safety
    /// `slot` must have been made available with [`Slab::ensure`] by the writer, and that must
    /// happen-before this call (true for any slot reachable from a published generation, which
    /// is published after `ensure`, and for the writer itself). `i < unit`.
    #[inline(always)]
    pub(crate) unsafe fn cell(&self, slot: u32, i: usize) -> &UnsafeCell<T> {
        // SAFETY: forwarded contract; the pointer is to a live cell of a live chunk.
        unsafe { &*self.cell_ptr(slot, i) }
    }

    /// The `unit` cells of `slot`, located once. Same contract as [`Slab::cell`].
    #[inline]
    pub(crate) unsafe fn cells(&self, slot: u32) -> &[UnsafeCell<T>] {
        // SAFETY: forwarded contract. A slot's cells are contiguous inside one chunk, and the
        // pointer carries the whole chunk's provenance (it is derived from the chunk's base,
        // not from a reference to one cell).
        unsafe { std::slice::from_raw_parts(self.cell_ptr(slot, 0), self.unit) }
    }

    /// Chunk 0's address, its number of slots and the cells per slot, for loops that read
    /// many cells (see `tree::find`).
    #[inline(always)]
    pub(crate) fn first_chunk(&self) -> (*const UnsafeCell<T>, u32, usize) {
        (self.first, self.first_slots, self.unit)
    }

    /// Raw pointer to cell `i` of `slot`, derived from its chunk's base pointer. Same
    /// contract as [`Slab::cell`].
    #[inline(always)]
    unsafe fn cell_ptr(&self, slot: u32, i: usize) -> *const UnsafeCell<T> {
        debug_assert!(i < self.unit);
        if slot < self.first_slots {
            // SAFETY: chunk 0 lives as long as the slab and holds `first_slots * unit` cells.
            return unsafe { self.first.add(slot as usize * self.unit + i) };
        }
        let (chunk, first) = self.locate(slot);
        // Relaxed: the chunk pointer was stored before the generation that made `slot`
        // reachable was published (Release/SeqCst in the publisher) and the caller loaded that
        // generation with Acquire, so by coherence this load sees the pointer. The pointer is
        // never changed again while the slab lives.
        let base = self.chunks[chunk].load(Ordering::Relaxed);
        debug_assert!(!base.is_null());
        // SAFETY: `base` points to a live chunk of `chunk_cells(chunk)` cells (allocated in
        // `ensure`, freed only in `Drop`), and `first + i` is inside it by `locate`.
        unsafe { base.add(first + i) }
    }

    /// Makes sure the chunk holding `slot` exists. Writer only (called under the writer lock).
    pub(crate) fn ensure(&self, slot: u32) {
        let (chunk, _) = self.locate(slot);
        if self.chunks[chunk].load(Ordering::Relaxed).is_null() {
            let cells: Box<[UnsafeCell<T>]> = (0..self.chunk_cells(chunk))
                .map(|_| UnsafeCell::new(T::default()))
                .collect();
            // Release: the initialised cells happen-before any thread that acquires the
            // pointer (readers get it through a generation published later anyway).
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
                let len = (1usize << (self.first_shift as usize + c)) * self.unit;
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
    pub live: usize,
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
        if self.live >= self.limit {
            return Err(Error::CapacityExhausted {
                kind: self.kind,
                limit: self.limit,
            });
        }
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

    pub(crate) fn free(&mut self, slot: u32) {
        debug_assert!(slot < self.high);
        self.live -= 1;
        self.free.push(slot);
    }

    pub(crate) fn limit(&self) -> usize {
        self.limit
    }
}

/// Slots retired by one commit: reachable from the generation before it, not from it.
#[derive(Debug, Default)]
pub(crate) struct Retired {
    pub nodes: Vec<u32>,
    pub subpages: Vec<u32>,
    pub pieces: Vec<u32>,
    pub sections: Vec<u32>,
}

/// Everything the generations share: the slabs.
///
/// Cache-line aligned for the same reason as `Version`: every commit clones and drops the
/// `Arc<Storage>` (writes to its counts) while readers read the slab headers on every lookup.
#[repr(align(64))]
pub(crate) struct Storage<V> {
    /// Node entries, `fanout` cells a slot.
    pub nodes: Slab<u32>,
    /// First page covered by each node (for range walks, diff and the writer).
    pub node_base: Slab<u64>,
    pub pieces: Slab<Piece>,
    pub subpages: Slab<Subpage>,
    pub sections: Slab<Option<V>>,
}

// SAFETY: Storage hands out `&V` (from sections) to any thread holding a generation, so V
// must be Sync; values are dropped on the writer thread or wherever the last generation goes,
// so V must be Send. Cells are written only when unreachable (module docs).
unsafe impl<V: Send + Sync> Send for Storage<V> {}
// SAFETY: as above.
unsafe impl<V: Send + Sync> Sync for Storage<V> {}

impl<V> Storage<V> {
    pub(crate) fn new(fanout: usize) -> Self {
        Storage {
            nodes: Slab::new(SMALL_FIRST, fanout),
            node_base: Slab::new(SMALL_FIRST, 1),
            pieces: Slab::new(LARGE_FIRST, 1),
            subpages: Slab::new(SMALL_FIRST, 1),
            sections: Slab::new(LARGE_FIRST, 1),
        }
    }

    /// Entry `i` of node `node`.
    ///
    /// # Safety
    /// `node` is reachable from a generation the caller holds (or the caller is the writer
    /// and the node is allocated).
    #[inline(always)]
    pub(crate) unsafe fn node_entry(&self, node: u32, i: usize) -> u32 {
        // SAFETY: per the contract, the slot exists and is not being written (invariant 4:
        // nothing reachable from a published root is written again).
        unsafe { self.nodes.cell(node, i).with(|p| *p) }
    }

    /// All entries of node `node`, read in one go. Same contract as
    /// [`Storage::node_entry`].
    #[inline]
    pub(crate) unsafe fn node_entries(&self, node: u32) -> impl Iterator<Item = u32> + '_ {
        // SAFETY: as in `node_entry`.
        unsafe { self.nodes.cells(node) }.iter().map(|c| {
            c.with(|p| {
                // SAFETY: as in `node_entry`.
                unsafe { *p }
            })
        })
    }

    /// First page of node `node`. Same contract as [`Storage::node_entry`].
    #[inline]
    pub(crate) unsafe fn node_base(&self, node: u32) -> u64 {
        // SAFETY: as in `node_entry`.
        unsafe { self.node_base.cell(node, 0).with(|p| *p) }
    }

    /// Piece `slot`. Same contract as [`Storage::node_entry`].
    #[inline(always)]
    pub(crate) unsafe fn piece(&self, slot: u32) -> Piece {
        // SAFETY: as in `node_entry`.
        unsafe { self.pieces.cell(slot, 0).with(|p| *p) }
    }

    /// Sub-page table `slot`. Same contract as [`Storage::node_entry`]; the slice lives as
    /// long as the generation the caller holds.
    #[inline]
    pub(crate) unsafe fn subpage(&self, slot: u32) -> &[SubEntry] {
        // SAFETY: as in `node_entry`; the boxed slice is not replaced while reachable.
        unsafe { self.subpages.cell(slot, 0).with(|p| &**p) }
    }

    /// The value of section `slot`. Same contract as [`Storage::node_entry`].
    #[cfg(test)]
    pub(crate) unsafe fn value(&self, slot: u32) -> &V {
        // SAFETY: forwarded contract; the pointer is to a live section cell.
        unsafe { read_value(self.sections.cell(slot, 0)) }
    }

    /// The value a piece of a reachable generation refers to. Same contract as
    /// [`Storage::node_entry`].
    ///
    /// Production and loom builds run this same code: the piece holds the address of its
    /// section's cell (slots never move), and the read goes through the cell's `with`, which
    /// loom tracks and which is a plain pointer read otherwise.
    #[inline(always)]
    pub(crate) unsafe fn piece_value(&self, piece: &Piece) -> &V {
        let cell = piece.value as *const UnsafeCell<Option<V>>;
        // SAFETY: `piece.value` was taken by the writer from section slot `piece.section`,
        // a live cell of a live chunk (slots never move, chunks are freed only with the
        // storage, which `self` borrows); the slot holds `Some` for as long as the piece is
        // reachable (forwarded contract).
        unsafe { read_value(&*cell) }
    }
}

/// The value in a section cell that a reachable generation refers to.
///
/// # Safety
/// The cell must be reachable from a generation the caller holds for the returned lifetime
/// (so it holds `Some` and is not written: invariant 4).
#[inline(always)]
unsafe fn read_value<V>(cell: &UnsafeCell<Option<V>>) -> &V {
    cell.with(|p| {
        // SAFETY: per the contract, no write to the cell can happen while the borrow lives.
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
        for (first, unit) in [(1u32, 1usize), (2, 4), (6, 1)] {
            let slab: Slab<u32> = Slab::new(first, unit);
            let mut seen = std::collections::HashSet::new();
            for slot in 0..600u32 {
                let (chunk, cell) = slab.locate(slot);
                assert!(cell + unit <= slab.chunk_cells(chunk), "slot {slot}");
                assert!(seen.insert((chunk, cell)), "slot {slot} collides");
            }
        }
    }

    #[test]
    fn cells_keep_what_the_writer_put() {
        let slab: Slab<u32> = Slab::new(1, 3);
        let mut alloc = SlabAlloc::new(100, "cells");
        let slots: Vec<u32> = (0..40).map(|_| alloc.alloc(&slab).unwrap()).collect();
        for &s in &slots {
            for i in 0..3 {
                // SAFETY: allocated above, single-threaded.
                unsafe { slab.cell(s, i).with_mut(|p| *p = s * 10 + i as u32) };
            }
        }
        for &s in &slots {
            for i in 0..3 {
                // SAFETY: as above.
                assert_eq!(unsafe { slab.cell(s, i).with(|p| *p) }, s * 10 + i as u32);
            }
        }
        alloc.free(7);
        assert_eq!(alloc.alloc(&slab), Ok(7), "freed slots are reused first");
        assert_eq!(alloc.live, 40);
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
        let storage: Storage<String> = Storage::new(4);
        let mut alloc = SlabAlloc::new(10, "sections");
        let s = alloc.alloc(&storage.sections).unwrap();
        // SAFETY: fresh slot, single-threaded.
        unsafe {
            storage
                .sections
                .cell(s, 0)
                .with_mut(|p| *p = Some("pc.ram".to_string()))
        };
        // SAFETY: holds Some.
        assert_eq!(unsafe { storage.value(s) }, "pc.ram");
        drop(storage); // Miri reports a leak if the String is not dropped.
    }
}
