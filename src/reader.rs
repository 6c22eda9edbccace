//! Per-vCPU readers: an announced generation (`qsbr.rs`) with a remembered piece. Two
//! layouts of the same state for two paths: a warm [`Reader::lookup`] reads only the
//! handle (a copy of its slot's value and of the held generation's header, the remembered
//! piece: no pointer to chase before the walk), and a bus dispatch, which goes online and
//! offline around each access from cold caches, reads the handle's first three words (which
//! share a line with the caller's state) and the state's one line (the slot, the dispatch
//! mark, the same header copy), then the publication cell's and the tree's.

use crate::arena::Piece;
use crate::entry::Entry;
use crate::qsbr::{Announcer, Slot, OFFLINE};
use crate::shared::Shared;
use crate::snapshot::{Hit, Snapshot};
use crate::sync::{Arc, Barrier, Latest};
use crate::version::{Hot, Version};
use crate::view::{Found, Held, Near};
use std::cell::Cell;
use std::sync::atomic::AtomicUsize;
#[cfg(feature = "bus")]
use std::sync::atomic::Ordering;
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
/// next lookup goes online again by itself (without reading the generation's header again
/// if no commit came meanwhile). Dropping a reader takes it out.
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
#[repr(C)]
pub struct Reader<V> {
    // What a bus dispatch reads of the handle: its first three words, which can share a
    // line with the caller's own state.
    /// The reader's state, shared with the registry (which reads only the slot) and the bus's
    /// list of dispatchers (the slot and the dispatch mark).
    state: StdArc<State>,
    /// Keeps the map's shared state (and the versions this reader reads) alive; the newest
    /// generation is published in it (`Publisher::latest`), a fixed offset from this pointer.
    shared: Arc<Shared<V>>,
    /// A copy of the slot's value ([`Slot::held`]): only this reader writes the slot, so a
    /// lookup compares the newest generation with a word of the handle's.
    held: u64,
    // What only `Reader::lookup` reads: the warm path, with no pointer to chase before the
    // walk.
    /// A copy of the held generation's header (the root, the walk's constants and the
    /// arrays' bases), so that the walk touches nothing of the version; kept while offline,
    /// for going online again in the same generation; [`Hot::NONE`] before the first. (The
    /// state holds the same copy for the bus's dispatches: `enter` writes both.)
    hot: Hot,
    /// The last piece answered from, a piece of the held generation, and how many walks in
    /// a row found it ([`Mru`]; see [`Reader::lookup`]).
    mru: Mru,
    /// The piece of the last page record answered from (a record has no cell of its own in
    /// the piece array); meaningful while `mru`'s piece is [`IN_LAST`].
    last: Piece,
}

/// A reader's state, on one line: everything a bus dispatch reads and writes of its own
/// besides the handle's first words (the announcement, the dispatch mark, the held
/// generation's header, the bus's score). The registry and the bus read the slot and the
/// mark from other threads; what is in the cell is the owning reader's alone.
#[repr(C, align(64))]
pub(crate) struct State {
    /// The announcement (`qsbr.rs`): the generation held, or [`OFFLINE`] with the last one.
    slot: Slot,
    /// Set by a bus dispatch (`bus.rs`): the address of its frame, which counts while the
    /// reader is online.
    dispatching: AtomicUsize,
    /// The owning reader's own words on this line (`Own`).
    own: Own,
}

/// The owning reader's words on its state's line: `Cell`s, which only the owning reader
/// touches (the state is shared, but no other thread reads them: `State`'s `Sync`).
#[repr(C)]
struct Own {
    /// The held generation's header, for the bus's dispatches (as `Reader::hot`).
    hot: Cell<Hot>,
    /// The region the bus's walks remember ([`Near`]: an entry of the held generation's
    /// tree, I9), in two cells so that the state stays one line.
    near: Cell<Entry>,
    near_key: Cell<u16>,
    /// The owning bus's score of its recent placements (`bus.rs`): on this line, which a
    /// dispatch reads anyway.
    bus_score: Cell<u8>,
    /// The map's barrier (`sync.rs`).
    barrier: Barrier,
}

impl Own {
    #[inline(always)]
    fn set_near(&self, near: Near) {
        self.near_key.set(near.key);
        self.near.set(near.entry);
    }
}

#[cfg(feature = "bus")]
pub(crate) mod dispatch;

// A bus dispatch reads the state's one line (loom's types are larger: not there).
#[cfg(not(loom))]
const _: () = assert!(std::mem::size_of::<State>() == 64);

// SAFETY: other threads read only the atomics (`slot`, `dispatching`); the cells of `own` are
// accessed only through the one `Reader` that owns this state, which is `Send` under its own
// conditions (a `Cell` may move between threads with its one user). The raw pointers in
// `Own` point into versions that reader holds (I8).
unsafe impl Send for State {}
// SAFETY: shared references on other threads (the registry, the bus's list) read only the
// atomics `slot` and `dispatching` (and `own.barrier`, which is never written); the `Cell`s
// of `own` are read and written only by the owning `Reader`, so they are never accessed
// from two threads.
unsafe impl Sync for State {}

/// The generation a reader's slot holds before it first goes online: none is ever
/// published (generations count commits), so the first `enter` copies the header in.
const NEVER: u64 = OFFLINE | (OFFLINE - 1);

/// Repeats after which the remembered piece is tried first; also the most the count holds.
const REPEATS: usize = 2;
/// [`Mru`]'s address for "the piece in `Reader::last`": a multiple of 8 that is no piece's
/// address (the reader's own address would not do: it moves).
const IN_LAST: usize = 8;

/// The remembered piece, in one word (so that remembering costs one load and one store):
///
/// ```text
///  63 ............................ 2 | 1 0
///  the piece's address (0: none,      | how many walks in a row found it
///  IN_LAST: the record copy)          | (at most REPEATS)
/// ```
///
/// Pieces are 32-byte aligned in their array and `IN_LAST` is a multiple of 8, so the
/// address leaves the two low bits free. A pointer, not an integer, so that the piece it is
/// read back from keeps the provenance of the one the walk found (the count is added and
/// taken off with `wrapping_byte_add`/`_sub`, as an offset within the piece).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Mru(*const Piece);

// The count fits its bits, and `IN_LAST` leaves them free.
const _: () = assert!(REPEATS <= Mru::COUNT && IN_LAST & Mru::COUNT == 0);

impl Mru {
    /// The bits that hold the count.
    const COUNT: usize = 3;
    const NONE: Mru = Mru(std::ptr::null());

    /// The remembered piece's address (0 for none, [`IN_LAST`] for `Reader::last`).
    #[inline(always)]
    fn piece(self) -> usize {
        self.0 as usize & !Self::COUNT
    }

    /// [`IN_LAST`] as a piece pointer (no piece's: never read through).
    #[inline(always)]
    fn in_last() -> *const Piece {
        std::ptr::null::<Piece>().wrapping_byte_add(IN_LAST)
    }

    /// The remembered piece, as the pointer the walk found it at.
    #[inline(always)]
    fn ptr(self) -> *const Piece {
        self.0.wrapping_byte_sub(self.count())
    }

    /// How many walks in a row found the piece.
    #[inline(always)]
    fn count(self) -> usize {
        self.0 as usize & Self::COUNT
    }

    /// After a walk that found the piece at `piece`: that piece, its count one more (up to
    /// [`REPEATS`]) if it is the one remembered, else 0.
    #[inline(always)]
    fn after_walk(self, piece: *const Piece) -> Mru {
        debug_assert_eq!(piece as usize & Self::COUNT, 0, "pieces are aligned");
        let same = piece as usize == self.piece();
        let count = (self.count() + 1).min(REPEATS) * same as usize;
        Mru(piece.wrapping_byte_add(count))
    }
}

impl Announcer for State {
    fn slot(&self) -> &Slot {
        &self.slot
    }
}

// SAFETY: the reader's state holds pointers into versions its announcement keeps alive
// (I8), which does not depend on the thread; values are shared with other threads, hence
// `V: Sync`; the last reader may drop the map's state (and values), hence `V: Send`.
unsafe impl<V: Send + Sync> Send for Reader<V> {}

impl<V> Reader<V> {
    /// A registered reader, offline until its first lookup.
    pub(crate) fn new(shared: Arc<Shared<V>>) -> Self {
        let state = StdArc::new(State {
            slot: Slot::new(NEVER),
            dispatching: AtomicUsize::new(0),
            own: Own {
                hot: Cell::new(Hot::NONE),
                near: Cell::new(Near::NONE.entry),
                near_key: Cell::new(Near::NONE.key),
                bus_score: Cell::new(0),
                barrier: shared.registry.barrier(),
            },
        });
        shared.registry.register(state.clone());
        Reader {
            state,
            shared,
            held: NEVER,
            hot: Hot::NONE,
            mru: Mru::NONE,
            last: crate::view::NO_PIECE,
        }
    }

    /// The map's publication cell.
    #[inline(always)]
    fn latest(&self) -> &Latest<Version<V>> {
        self.shared.publisher.latest()
    }

    /// Enters the newest generation if the reader does not hold it (going online first if
    /// offline): after this, `hot` is the header of the generation in the slot.
    #[inline(always)]
    fn current(&mut self) {
        let newest = self.latest().generation_relaxed();
        if newest != self.held {
            self.catch_up();
        }
    }

    /// Enters the newest generation (cold: once per commit, or when going online).
    #[cold]
    #[inline(never)]
    fn catch_up(&mut self) {
        self.enter();
    }

    /// Announces the newest generation (`Slot::enter`); copies its header if it is not the
    /// one the reader held last.
    #[inline(always)]
    fn enter(&mut self) {
        let before = self.held & !OFFLINE;
        let barrier = self.state.own.barrier;
        let (generation, hot) =
            self.state
                .slot
                .enter(self.latest(), barrier, before, |v: &Version<V>| v.hot);
        self.held = generation;
        if let Some(hot) = hot {
            self.adopt(hot);
        }
        // Otherwise: back in the generation it held before going offline (generations are
        // never published twice), whose header and remembered piece it kept.
    }

    /// Takes the header of the generation just entered: both copies, and forgets the
    /// remembered piece. Out of line (once per commit): inline, the copies would enlarge the
    /// frame of every bus dispatch by the header's size, and its stack by a line.
    #[cold]
    #[inline(never)]
    fn adopt(&mut self, hot: Hot) {
        self.state.own.hot.set(hot);
        self.state.own.set_near(Near::NONE);
        self.hot = hot;
        self.mru = Mru::NONE;
    }

    /// The piece holding `addr` in the generation the reader holds (it must be online).
    #[inline(always)]
    fn find(&mut self, addr: u64) -> Option<Found<'_, V>> {
        let mru = self.mru;
        if mru.count() >= REPEATS {
            let at = if mru.piece() == IN_LAST {
                &self.last as *const Piece
            } else {
                mru.ptr()
            };
            // SAFETY: `at` is a piece of the held generation or `last`, a record's piece of
            // it (the count is reset with the generation; no found piece is at address 0),
            // and the generation is held while the answer borrows `self` (I8).
            let found = unsafe { Found::remembered(at) };
            let p = found.piece();
            if p.start <= addr && addr <= p.end {
                return Some(found);
            }
        }
        let found = Self::held(self.hot, Near::NONE, &self.hot).find(addr)?;
        // A page record's piece has no cell: copied to `last`.
        let p = if found.cell().is_null() {
            self.last = *found.piece();
            Mru::in_last()
        } else {
            found.cell()
        };
        self.mru = mru.after_walk(p);
        Some(found)
    }

    /// The held generation's tree, given the reader's `hot` and `near` (the reader must be
    /// online).
    #[inline(always)]
    fn held<'r, A>(hot: Hot, near: Near, _part: &'r A) -> Held<'r, V> {
        // SAFETY: `hot` is the header of the generation the reader announced (`enter`
        // copied it), which is held while the answer borrows `_part`, a part of the reader,
        // since going offline or entering another generation takes the whole reader (I8);
        // `near` is none, or what a walk of that generation's tree returned (`adopt` forgets
        // it with the generation: I9).
        unsafe { Held::new(hot, near) }
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
        self.current();
        let found = self.find(addr)?;
        Some(Hit::new(found.value(), found.piece(), addr))
    }

    /// The generation that answered the last [`lookup`](Reader::lookup) (0 before any).
    /// Does not refresh: use it to tie an answer to the generation it came from.
    pub fn last_generation(&self) -> u64 {
        match self.held {
            NEVER => 0,
            held => held & !OFFLINE,
        }
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
        self.current();
        self.last_generation()
    }

    /// Goes offline: the reader holds no generation until its next lookup (or
    /// [`online`](Reader::online)), so it delays neither reclamation nor
    /// [`PhysMap::synchronize`](crate::PhysMap::synchronize). For a vCPU thread about to halt
    /// or enter the guest. Cheap: one store to the reader's own slot.
    #[inline(always)]
    pub fn offline(&mut self) {
        if self.is_online() {
            let barrier = self.state.own.barrier;
            self.state.slot.leave(barrier);
            self.held |= OFFLINE;
        }
    }

    /// Goes online now (a lookup does it by itself): announces the newest generation.
    pub fn online(&mut self) {
        self.current();
    }

    /// Whether the reader holds a generation (between a lookup and [`offline`](Reader::offline)).
    #[inline(always)]
    pub fn is_online(&self) -> bool {
        self.held & OFFLINE == 0
    }
}

impl<V> Drop for Reader<V> {
    fn drop(&mut self) {
        self.offline();
        let owner: StdArc<dyn Announcer> = self.state.clone();
        self.shared.registry.deregister(&owner);
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    /// The remembered word's two fields round-trip, and its count follows the walks.
    #[test]
    fn the_remembered_word_packs_a_piece_and_a_count() {
        let pieces = [Piece::default(), Piece::default()];
        let (a, b) = (&pieces[0] as *const Piece, &pieces[1] as *const Piece);
        let in_last = Mru::in_last();
        assert_eq!((Mru::NONE.piece(), Mru::NONE.count()), (0, 0));
        let m = Mru::NONE.after_walk(a);
        assert_eq!((m.ptr(), m.count()), (a, 0), "a new piece starts at 0");
        let m = m.after_walk(a);
        assert_eq!((m.ptr(), m.count()), (a, 1));
        let m = m.after_walk(a).after_walk(a).after_walk(a);
        assert_eq!(
            (m.ptr(), m.count()),
            (a, REPEATS),
            "the count stops at REPEATS"
        );
        assert_eq!(m.piece(), a as usize);
        let m = m.after_walk(b);
        assert_eq!((m.ptr(), m.count()), (b, 0), "another piece starts over");
        let m = m.after_walk(in_last).after_walk(in_last);
        assert_eq!((m.piece(), m.count()), (IN_LAST, 1));
    }
}
