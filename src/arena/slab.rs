//! Chunked storage with stable addresses ([`Slab`]) and its writer-side bookkeeping
//! ([`SlabAlloc`]).

use super::layout::*;
use crate::sync::UnsafeCell;
use crate::{Capacity, Error};
use std::alloc::{self, Layout};
use std::ptr;
use std::sync::OnceLock;

/// Fixed-address chunked storage, one cell per slot (chunk `k` holds `first << k` slots).
/// A chunk, once made, stays where it is until the slab is dropped (I1), so a cell's address
/// may be kept (pieces keep their section's). The cells hold plain data (`T` has no drop
/// glue: the section values are `MaybeUninit`, dropped by `Storage`), so freeing a chunk runs
/// no user code.
pub(crate) struct Slab<T: Default> {
    chunks: [OnceLock<Chunk<T>>; MAX_CHUNKS],
    /// log2 of the number of slots in chunk 0.
    first_shift: u32,
}

impl<T: Default> Slab<T> {
    pub(crate) fn new(first_shift: u32) -> Self {
        const {
            assert!(
                !std::mem::needs_drop::<T>(),
                "a slab's cells are plain data"
            )
        };
        Slab {
            chunks: std::array::from_fn(|_| OnceLock::new()),
            first_shift,
        }
    }

    /// (chunk, offset in it) of `slot`.
    #[inline(always)]
    pub(super) fn locate(&self, slot: u32) -> (usize, usize) {
        let j = slot as u64 + (1u64 << self.first_shift);
        let top = 63 - j.leading_zeros();
        (
            (top - self.first_shift) as usize,
            (j - (1u64 << top)) as usize,
        )
    }

    pub(super) fn chunk_len(&self, chunk: usize) -> usize {
        1usize << (self.first_shift as usize + chunk)
    }

    /// Cell of `slot`, which [`Slab::ensure`] made available (panics otherwise). Any slot
    /// reachable from a generation was (I2: its chunk was made before the generation was
    /// published; `OnceLock` orders the chunk's initialisation before any thread that sees
    /// it).
    #[inline]
    pub(super) fn cell(&self, slot: u32) -> &UnsafeCell<T> {
        let (chunk, offset) = self.locate(slot);
        let chunk = self.chunks[chunk]
            .get()
            .expect("a slot of a chunk made by `ensure`");
        &chunk.cells()[offset]
    }

    /// Makes sure the chunk holding `slot` exists.
    pub(super) fn ensure(&self, slot: u32) {
        let (chunk, _) = self.locate(slot);
        self.chunks[chunk].get_or_init(|| Chunk::new(self.chunk_len(chunk)));
    }
}

/// One chunk's memory: `len` cells from a cache-line-aligned address, so that a cell whose
/// size divides 64 bytes (a bus's 32-byte placement, an `Arc`) never straddles two lines: a
/// lookup then reads one line for a section's value, not two. (A boxed slice is aligned only
/// to the cell's alignment: half of the placements straddled.)
struct Chunk<T> {
    cells: ptr::NonNull<UnsafeCell<T>>,
    len: usize,
}

// SAFETY: a chunk owns its cells as a `Box<[UnsafeCell<T>]>` would; what may be read or
// written in them, and from which thread, is the slab's users' business (I3, I4, I6), as for
// the `UnsafeCell`s of `Cells`.
unsafe impl<T: Send + Sync> Send for Chunk<T> {}
// SAFETY: as above: shared, it hands out `&UnsafeCell<T>` only (`cells`), whose contents
// its users read and write under I3, I4 and I6.
unsafe impl<T: Send + Sync> Sync for Chunk<T> {}

impl<T> Chunk<T> {
    /// `len` cells from a 64-byte boundary.
    fn layout(len: usize) -> Layout {
        Layout::array::<UnsafeCell<T>>(len)
            .and_then(|l| l.align_to(64))
            .expect("a chunk's size overflows")
    }

    fn cells(&self) -> &[UnsafeCell<T>] {
        // SAFETY: `len` initialised cells (`new`), owned by `self`, which outlives the borrow (and
        // frees them only when dropped, I1).
        unsafe { std::slice::from_raw_parts(self.cells.as_ptr(), self.len) }
    }
}

impl<T: Default> Chunk<T> {
    /// `len` cells holding `T::default()`.
    fn new(len: usize) -> Self {
        let layout = Self::layout(len);
        let cells = if layout.size() == 0 {
            // Zero-sized cells: no memory.
            ptr::NonNull::dangling()
        } else {
            // SAFETY: the layout's size is not zero.
            let p = unsafe { alloc::alloc(layout) };
            ptr::NonNull::new(p)
                .unwrap_or_else(|| alloc::handle_alloc_error(layout))
                .cast()
        };
        for i in 0..len {
            // SAFETY: cell `i` is inside the allocation (`layout`), aligned (an array's
            // layout, its start aligned further), and not initialised yet. (A `T::default()`
            // that panicked would leak the chunk's memory, never read it: ours do not.)
            unsafe { cells.add(i).write(UnsafeCell::new(T::default())) };
        }
        Chunk { cells, len }
    }
}

impl<T> Drop for Chunk<T> {
    fn drop(&mut self) {
        let layout = Self::layout(self.len);
        let cells = ptr::slice_from_raw_parts_mut(self.cells.as_ptr(), self.len);
        // SAFETY: `len` initialised cells that we own (`new`), dropped once, then their
        // memory, allocated in `new` with this layout, freed once. (The values have no drop
        // glue, `Slab::new`; loom's cells have, for its bookkeeping.)
        unsafe {
            ptr::drop_in_place(cells);
            if layout.size() != 0 {
                alloc::dealloc(self.cells.as_ptr().cast(), layout);
            }
        }
    }
}

/// Writer-side bookkeeping of one kind of slot: high-water mark and free list.
#[derive(Debug)]
pub(crate) struct SlabAlloc {
    high: u32,
    free: Vec<u32>,
    /// Slots handed out and not yet freed.
    live: usize,
    limit: usize,
    /// What the slots hold, for error messages.
    kind: Capacity,
}

impl SlabAlloc {
    pub(crate) fn new(limit: usize, kind: Capacity) -> Self {
        SlabAlloc {
            high: 0,
            free: Vec::new(),
            live: 0,
            limit,
            kind,
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
