//! What all generations share at fixed addresses: node base pages and section values
//! ([`Storage`]).

use super::{layout::*, slab::*};
use crate::sync::{Arc, UnsafeCell};
use parking_lot::Mutex;
use std::mem::MaybeUninit;
use std::ptr;

/// What all generations share at fixed addresses: node base pages and section values.
///
/// Cache-line aligned so that the reference counts in its `Arc` do not share a line with
/// the slab headers.
#[repr(align(64))]
pub(crate) struct Storage<V> {
    /// First page covered by each node (for range walks, diff and the writer), by node slot.
    node_base: Slab<u64>,
    sections: Slab<SectionCell<V>>,
    /// Which section slots hold a value, a bit each: written by `write_section` and
    /// `take_section` (the writer's, I6), read by `Drop` (which owns the storage); never
    /// contended (the lock makes the bits safe to reach from the shared storage). Readers
    /// never look: a slot a generation reaches holds a value (I5).
    live: Mutex<Vec<u64>>,
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

// SAFETY: Storage hands out `&V` (from sections) to any thread holding a generation, so V
// must be Sync; values are dropped on the writer thread or wherever the storage goes last,
// so V must be Send. Cells are written only when unreachable (I3).
unsafe impl<V: Send + Sync> Send for Storage<V> {}
// SAFETY: a shared storage hands out `&V` only from section cells that nothing writes while
// a generation anyone can read reaches them (I3, I4), hence `V: Sync`; the live bits and
// every write are the writer's, through its one handle (I6).
unsafe impl<V: Send + Sync> Sync for Storage<V> {}

/// The writer's handle on a [`Storage`]: every write to node base pages and section values
/// goes through it, so what only the writer may do (I6) cannot be called from the
/// `Arc<Storage>` that versions and readers share. One per storage (made with it,
/// [`StorageWriter::new`]; not `Clone`), owned by the map's `Writer`; writes take `&mut self`.
pub(crate) struct StorageWriter<V> {
    storage: Arc<Storage<V>>,
}

impl<V> Storage<V> {
    /// Sets whether section `slot` holds a value; returns whether it did.
    fn set_live(live: &mut Vec<u64>, slot: u32, on: bool) -> bool {
        let (word, bit) = (slot as usize / 64, 1u64 << (slot % 64));
        if live.len() <= word {
            live.resize(word + 1, 0);
        }
        let was = live[word] & bit != 0;
        live[word] = live[word] & !bit | if on { bit } else { 0 };
        was
    }

    /// First page of the node at unit offset `unit` (of fan-out `fanout`).
    ///
    /// # Safety
    /// The node is reachable from a generation the caller holds, or the caller is the writer
    /// and the node is allocated (I2, I3).
    pub(crate) unsafe fn node_base(&self, unit: u32, fanout: usize) -> u64 {
        let slot = node_slot(unit, fanout);
        // SAFETY: forwarded contract: the node is reachable from a generation the caller
        // holds, or the writer's: nothing writes its cell meanwhile (I3; only the writer
        // writes, I6).
        unsafe { self.node_base.cell(slot).with(|p| *p) }
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
        // SAFETY: forwarded contract: `piece.section` is the cell of a section of this
        // storage that a generation held for 'a reaches; the cell never moves and lives as
        // long as the storage (I1), holds a value written before publication (I2, I5), and
        // is not written while the borrow lives (I3, I4).
        unsafe { (*cell).with(|p| (*p).0.assume_init_ref()) }
    }

    /// The address pieces and page records hold for section `slot` (made available with
    /// [`StorageWriter::ensure_section`]): its cell's, or, when cells are zero-sized
    /// (`PhysMap<()>`: every cell has the same address), a distinct non-null address aligned
    /// for the cell, `align * (slot + 1)`, so that a section is still told apart by its
    /// address (`Stats::sections`, `diff`). Reading a zero-sized value reads no memory, so
    /// any such address is a valid place to read it from.
    fn section_addr(&self, slot: u32) -> *const () {
        type Cell<V> = UnsafeCell<SectionCell<V>>;
        if std::mem::size_of::<Cell<V>>() == 0 {
            let align = std::mem::align_of::<Cell<V>>();
            return ptr::null::<u8>()
                .wrapping_add(align * (slot as usize + 1))
                .cast();
        }
        self.sections.cell(slot) as *const _ as *const ()
    }

    /// Empties section `slot` (whose bit `live` holds), returning its value.
    ///
    /// # Safety
    /// The caller is the writer (I6), or owns the storage; no generation anyone can still
    /// read reaches the slot (I3, I4).
    unsafe fn take(&self, live: &mut Vec<u64>, slot: u32) -> Option<V> {
        if !Self::set_live(live, slot, false) {
            return None;
        }
        // SAFETY: the slot was live, so its chunk exists and its cell holds a value, which
        // is moved out once (its bit is clear now); no generation anyone can read reaches
        // the slot (I3, I4) and the caller is the writer (I6) or owns the storage
        // (forwarded contract): nobody else reads or writes the cell.
        Some(
            self.sections
                .cell(slot)
                .with_mut(|p| unsafe { (*p).0.assume_init_read() }),
        )
    }
}

impl<V> StorageWriter<V> {
    /// An empty storage, and the one handle that writes it.
    pub(crate) fn new() -> Self {
        StorageWriter {
            storage: Arc::new(Storage {
                node_base: Slab::new(SMALL_FIRST),
                sections: Slab::new(LARGE_FIRST),
                live: Mutex::new(Vec::new()),
            }),
        }
    }

    /// The storage, for the versions that share it.
    pub(crate) fn shared(&self) -> &Arc<Storage<V>> {
        &self.storage
    }

    /// Makes section slot `slot` available (I2).
    pub(crate) fn ensure_section(&mut self, slot: u32) {
        self.storage.sections.ensure(slot);
    }

    /// Records the first page of a node the writer is building.
    ///
    /// # Safety
    /// The node was just made ([`Arena::new_node`](super::alloc::Arena::new_node)): the writer's,
    /// and unreachable from every generation (I3, I6).
    pub(crate) unsafe fn write_node_base(&mut self, unit: u32, fanout: usize, base: u64) {
        let slot = node_slot(unit, fanout);
        self.storage.node_base.ensure(slot);
        // SAFETY: the chunk was made available just above; the node is the writer's and
        // unreachable (forwarded contract: I3, I4, I6), so nobody reads the cell while we
        // write it.
        unsafe { self.storage.node_base.cell(slot).with_mut(|p| *p = base) };
    }

    // ----- Writing sections, into slots no generation anyone can still read reaches (I3,
    // I4). Each has that contract.

    /// Puts `value` in section `slot` and returns the address pieces hold for it.
    ///
    /// # Safety
    /// See above; `slot` was made available with [`StorageWriter::ensure_section`].
    pub(crate) unsafe fn write_section(&mut self, slot: u32, value: V) -> *const () {
        let s = &*self.storage;
        let cell = s.sections.cell(slot);
        let was = Storage::<V>::set_live(&mut s.live.lock(), slot, true);
        debug_assert!(!was, "section slot {slot} written while live");
        cell.with_mut(|p| {
            // SAFETY: no generation anyone can read reaches the slot (the contract above:
            // I3, I4) and we are the writer (I6): nobody else reads or writes the cell now;
            // it held no value (a live slot is never handed out again before
            // `take_section`).
            unsafe { (*p).0.write(value) };
        });
        s.section_addr(slot)
    }

    /// The address pieces hold for section `slot` (`Storage::section_addr`); the slot is
    /// live.
    pub(crate) fn section_cell(&self, slot: u32) -> *const () {
        self.storage.section_addr(slot)
    }

    /// Empties section `slot`, returning its value (for the caller to drop, `drops.rs`).
    ///
    /// # Safety
    /// See above.
    pub(crate) unsafe fn take_section(&mut self, slot: u32) -> Option<V> {
        let s = &*self.storage;
        // SAFETY: forwarded contract: no generation anyone can read reaches the slot
        // (I3, I4); we are the writer (this handle, I6).
        unsafe { s.take(&mut s.live.lock(), slot) }
    }
}

impl<V> Drop for Storage<V> {
    fn drop(&mut self) {
        let mut live = std::mem::take(self.live.get_mut());
        let slots = live.len() as u32 * 64;
        // Values may run user code that panics: each live one is taken out (its bit cleared,
        // so once) and dropped on its own (`drops.rs`); the slab frees the chunks afterwards.
        // SAFETY: we own the storage (`&mut self`), which `take` accepts in place of the
        // writer (I6); every version holds an `Arc` of it, so none is left to reach a slot.
        let taken = (0..slots).filter_map(|slot| unsafe { self.take(&mut live, slot) });
        crate::drops::drop_all(taken);
    }
}
