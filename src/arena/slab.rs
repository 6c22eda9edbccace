//! Chunked storage with stable addresses ([`Slab`]) and its writer-side bookkeeping
//! ([`SlabAlloc`]).

use super::layout::*;
use crate::sync::{AtomicPtr, Ordering, UnsafeCell};
use crate::{Capacity, Error};
use std::alloc::{self, Layout};
use std::ptr;

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

    /// Cell of `slot`.
    ///
    /// # Safety
    /// `slot` was made available with [`Slab::ensure`] and that happens-before this call
    /// (I2: true for any slot reachable from a generation the caller holds, and for the
    /// writer).
    #[inline]
    pub(super) unsafe fn cell(&self, slot: u32) -> &UnsafeCell<T> {
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
    pub(super) fn ensure(&self, slot: u32) {
        let (chunk, _) = self.locate(slot);
        if self.chunks[chunk].load(Ordering::Relaxed).is_null() {
            let cells = Chunk::<T>::new(self.chunk_len(chunk));
            // Release: the initialised cells happen-before any thread that acquires the
            // pointer (readers get it through a generation published later anyway, I2).
            self.chunks[chunk].store(cells.into_raw(), Ordering::Release);
        }
    }
}

impl<T: Default> Drop for Slab<T> {
    fn drop(&mut self) {
        let mut chunks = Vec::new();
        for (c, chunk) in self.chunks.iter_mut().enumerate() {
            let p = chunk.with_mut_ptr();
            if !p.is_null() {
                let len = 1usize << (self.first_shift as usize + c);
                // SAFETY: `p` came from `Chunk::into_raw` of a chunk of exactly `len` cells in
                // `ensure`; we have `&mut self`, so no reader can hold a reference into it (I1).
                chunks.push(unsafe { Chunk::from_raw(p, len) });
            }
        }
        // Values may run user code that panics (section values): take each out and drop it
        // on its own, so one panic neither stops the others nor leaks a chunk (each frees
        // its memory when dropped, unwinding included).
        let cells = chunks.iter().flat_map(|c| c.cells());
        // SAFETY: we own every cell (`&mut self`, no generation can be read any more, I1).
        crate::drops::drop_all(cells.map(|c| c.with_mut(|p| unsafe { std::mem::take(&mut *p) })));
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

impl<T> Chunk<T> {
    /// `len` cells from a 64-byte boundary.
    fn layout(len: usize) -> Layout {
        Layout::array::<UnsafeCell<T>>(len)
            .and_then(|l| l.align_to(64))
            .expect("a chunk's size overflows")
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

    fn into_raw(self) -> *mut UnsafeCell<T> {
        std::mem::ManuallyDrop::new(self).cells.as_ptr()
    }

    /// # Safety
    /// `p` and `len` are those of a chunk that `into_raw` gave up, and no one else uses it.
    unsafe fn from_raw(p: *mut UnsafeCell<T>, len: usize) -> Self {
        Chunk {
            // SAFETY: `into_raw` returned a non-null pointer.
            cells: unsafe { ptr::NonNull::new_unchecked(p) },
            len,
        }
    }

    fn cells(&self) -> &[UnsafeCell<T>] {
        // SAFETY: `len` initialised cells (`new`), owned by `self`.
        unsafe { std::slice::from_raw_parts(self.cells.as_ptr(), self.len) }
    }
}

impl<T> Drop for Chunk<T> {
    fn drop(&mut self) {
        let layout = Self::layout(self.len);
        let cells = ptr::slice_from_raw_parts_mut(self.cells.as_ptr(), self.len);
        // SAFETY: `len` initialised cells that we own (`new`, `from_raw`), dropped once.
        unsafe { ptr::drop_in_place(cells) };
        if layout.size() != 0 {
            // SAFETY: allocated in `new` with this layout.
            unsafe { alloc::dealloc(self.cells.as_ptr().cast(), layout) };
        }
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
