//! Per-vCPU readers: an announced generation (`qsbr.rs`) with a remembered piece.

use crate::arena::Piece;
use crate::map::Shared;
use crate::qsbr::{Slot, OFFLINE};
use crate::snapshot::{Hit, Snapshot};
use crate::sync::{Arc, Latest};
use crate::version::{Hot, Version};
use crate::view::{Found, NO_PIECE};
use std::sync::Arc as StdArc;

/// A per-vCPU lookup handle. Give each vCPU thread its own.
///
/// A reader announces, in a slot of its own, the one generation it reads; the writer frees
/// what a generation alone reaches only once no online reader announces it (and no snapshot
/// holds it). A lookup loads the newest generation number and compares it with the reader's
/// (one load, one compare); only when a commit published a new one does the reader enter
/// it, with one store to its own slot. No reference count, no read-modify-write, no write to
/// memory another thread writes: a busy writer does not slow readers down.
///
/// A reader is **online** from its first lookup on, and holds the generation it announced
/// until its next lookup. Holding costs only what that generation reaches and the newest
/// tree does not (a tree's worth at most, however many commits follow), but it does hold
/// back [`PhysMap::synchronize`](crate::PhysMap::synchronize): a vCPU that halts, or blocks
/// in `KVM_RUN`, should go [`offline`](Reader::offline); it then holds nothing, and its
/// next lookup goes online again by itself. Dropping a reader takes it out.
///
/// ```
/// use physmap::PhysMap;
/// let map = PhysMap::new();
/// let mut txn = map.transaction();
/// txn.insert(0..=0xffff, "io").unwrap();
/// txn.commit().unwrap();
/// let mut vcpu = map.reader();
/// assert_eq!(*vcpu.lookup(0x60).unwrap().value, "io");
/// let mut txn = map.transaction();
/// txn.overwrite(0x60..=0x60, "i8042").unwrap();
/// txn.commit().unwrap();
/// assert_eq!(*vcpu.lookup(0x60).unwrap().value, "i8042"); // always the newest generation
/// vcpu.offline(); // about to run the guest: hold nothing meanwhile
/// ```
pub struct Reader<V> {
    shared: Arc<Shared<V>>,
    /// The publisher's readers' mirror, inside `shared` (which this reader keeps alive):
    /// read on every lookup, one load closer than through `shared`.
    latest: *const Latest<Version<V>>,
    slot: StdArc<Slot>,
    /// The generation this reader announced and reads, [`OFFLINE`] while offline: what each
    /// lookup compares with the newest generation (never `OFFLINE`).
    held: u64,
    /// The version of generation `held`; null while offline.
    cached: *const Version<V>,
    /// The last generation announced (0 before any), kept while offline.
    generation: u64,
    /// The last piece answered from, a piece of `cached` (or [`NO_PIECE`], or [`IN_LAST`]
    /// for the page record copied into `last`): its address, with in the low bits (pieces
    /// are 32-byte aligned in their array, `NO_PIECE` and `IN_LAST` 8-byte) how many lookups
    /// in a row the walk found it again, up to [`REPEATS`] (see [`Reader::lookup`]). One
    /// word, so that remembering costs one load and one store.
    mru: usize,
    /// The piece of the last page record answered from (a record has no cell of its own in
    /// the piece array); meaningful while `mru` says [`IN_LAST`].
    last: Piece,
    /// A copy of `cached`'s header (the root, the walk's constants and the arrays' bases),
    /// next to the fields every lookup reads, so that the walk needs no load through
    /// `cached`; [`Hot::NONE`] until the first announcement.
    hot: Hot,
}

/// Repeats after which the remembered piece is tried first; also the most the count holds.
const REPEATS: usize = 2;
/// `Reader::mru`'s address for "the piece in `Reader::last`": a multiple of 8 that is no
/// piece's address (the reader's own address would not do: it moves).
const IN_LAST: usize = 8;
/// The bits of `Reader::mru` that hold the count.
const COUNT: usize = 3;

fn no_piece() -> usize {
    &NO_PIECE as *const Piece as usize
}

// SAFETY: the raw pointers point into a version that the reader's announcement keeps alive
// (I8), which does not depend on the thread; values are shared with other threads, hence
// `V: Sync`; the last reader may drop the map's state (and values), hence `V: Send`.
unsafe impl<V: Send + Sync> Send for Reader<V> {}

impl<V> Reader<V> {
    /// A registered reader, offline until its first lookup.
    pub(crate) fn new(shared: Arc<Shared<V>>) -> Self {
        let slot = shared.registry.register();
        Reader {
            latest: shared.publisher.latest(),
            shared,
            slot,
            held: OFFLINE,
            cached: std::ptr::null(),
            generation: 0,
            mru: no_piece(),
            last: NO_PIECE,
            hot: Hot::NONE,
        }
    }

    /// The newest version, announced (going online first if offline).
    #[inline(always)]
    fn current(&mut self) -> &Version<V> {
        // SAFETY: `latest` points into `shared`, which `self` holds.
        let newest = unsafe { &*self.latest }.generation_relaxed();
        if newest != self.held {
            self.catch_up();
        }
        // SAFETY: `cached` is the version of the generation this reader announced: the
        // writer neither reuses what it reaches nor drops it until the reader announces
        // another one or goes offline, which needs `&mut self` (I8).
        unsafe { &*self.cached }
    }

    /// Enters the newest generation (cold: once per commit, or when going online).
    #[cold]
    #[inline(never)]
    fn catch_up(&mut self) {
        // SAFETY: `latest` points into `shared`, which `self` holds.
        let (generation, p) = self.slot.enter(unsafe { &*self.latest });
        // SAFETY: `p` is the version of generation `generation`, which our slot now
        // announces, checked after the announcement (`Slot::enter`): the writer drops no
        // version and reuses nothing of a generation a reader announces (I8).
        self.hot = unsafe { (*p).hot };
        self.cached = p;
        self.held = generation;
        self.generation = generation;
        self.mru = no_piece();
    }

    /// Looks `addr` up in the newest published generation.
    ///
    /// The remembered piece is tried first only while lookups keep landing in it (after the
    /// walk found the same piece twice in a row, as exits do when they cluster on a device).
    /// On spread traffic the hit-or-miss branch of a remembered piece is a coin toss the CPU
    /// mispredicts, which costs more than the walk it would save; so there the reader only
    /// walks, and the remembered piece costs a compare and a store.
    #[inline(always)]
    pub fn lookup(&mut self, addr: u64) -> Option<Hit<'_, V>> {
        // The version through its address (not `current()`'s borrow): the borrow of `self`
        // below must be the one the returned `Hit` keeps.
        self.current();
        // SAFETY: as in `current` (just announced); the `Hit` borrows `self`, so the reader
        // cannot announce anything else while it lives (I8).
        let tree = unsafe { &*self.cached }.tree();
        let (mru, count) = (self.mru & !COUNT, self.mru & COUNT);
        if count >= REPEATS {
            let at = if mru == IN_LAST {
                &self.last as *const Piece
            } else {
                mru as *const Piece
            };
            // SAFETY: `at` is `NO_PIECE`, a piece of `cached` or `last`, a record's piece of
            // `cached` (both reset when `cached` changes).
            let m = unsafe { Found::remembered(at) };
            let p = m.piece();
            if p.start <= addr && addr <= p.end {
                return Some(Hit::new(tree.found_value(&m), p, addr));
            }
        }
        // SAFETY: `hot` was copied from `cached` when it was announced (`catch_up`), and
        // both change only together.
        let found = unsafe { tree.find_with(self.hot, addr) }?;
        // A page record's piece has no cell: copied to `last`.
        let p = if found.cell().is_null() {
            self.last = *found.piece();
            IN_LAST
        } else {
            found.cell() as usize
        };
        let count = (count + 1).min(REPEATS) * (p == mru) as usize;
        self.mru = p | count;
        Some(Hit::new(tree.found_value(&found), found.piece(), addr))
    }

    /// The generation that answered the last [`lookup`](Reader::lookup) (0 before any).
    /// Does not refresh: use it to tie an answer to the generation it came from.
    pub fn last_generation(&self) -> u64 {
        self.generation
    }

    /// A snapshot of the newest generation (the reader catches up with it first).
    pub fn snapshot(&mut self) -> Snapshot<V> {
        self.current();
        Snapshot {
            version: self.shared.publisher.load_full(),
        }
    }

    /// Catches up with the newest generation now (going online if offline) and returns its
    /// number: the generation the next lookup answers from, unless another commit comes
    /// first.
    pub fn refresh(&mut self) -> u64 {
        self.current().generation
    }

    /// Goes offline: the reader holds no generation until its next lookup (or
    /// [`online`](Reader::online)), so it delays neither reclamation nor
    /// [`PhysMap::synchronize`](crate::PhysMap::synchronize). For a vCPU thread about to halt
    /// or enter the guest. Cheap: one store to the reader's own slot.
    pub fn offline(&mut self) {
        if !self.cached.is_null() {
            self.slot.leave();
            self.cached = std::ptr::null();
            self.held = OFFLINE;
            self.mru = no_piece();
        }
    }

    /// Goes online now (a lookup does it by itself): announces the newest generation.
    pub fn online(&mut self) {
        self.current();
    }

    /// Whether the reader holds a generation (between a lookup and [`offline`](Reader::offline)).
    pub fn is_online(&self) -> bool {
        !self.cached.is_null()
    }
}

impl<V> Drop for Reader<V> {
    fn drop(&mut self) {
        self.slot.leave();
        self.shared.registry.deregister(&self.slot);
    }
}
