//! Quiescent-state readers: each [`Reader`](crate::Reader) announces, in a slot of its own,
//! the generation it may be reading; the writer reclaims a generation's garbage once every
//! registered reader has announced a newer one or is offline, and
//! [`PhysMap::synchronize`](crate::PhysMap::synchronize) waits for the same.
//!
//! A reader writes only its own slot, and only when its generation changes (one Release
//! store) or when it goes offline or online: a lookup, and a refresh, do no atomic
//! read-modify-write and write no shared cache line (invariant I8 of `ARCHITECTURE.md`).
//!
//! # The protocol
//!
//! A slot holds [`OFFLINE`] or a generation `a`: "I may read generation `a` or newer, nothing
//! older".
//!
//! - **Online, moving on.** A reader announcing `a` loads the publication pointer (Acquire),
//!   finds a newer version `p` (generation `>= a`, by coherence of the pointer), and stores
//!   `p.generation` (Release). It may read `p` even before the store: its earlier
//!   announcement `a <= p.generation` already protects `p`. The Release orders every read it
//!   made of older generations before the store; the writer's Acquire load of the store
//!   orders them before any reuse.
//! - **Going online** (a new reader, or one that went offline) is the one race: the reader
//!   has no announcement, so the writer may free a generation's garbage between the reader's
//!   load of the pointer and its announcement. The reader therefore first announces `l`,
//!   the generation it last announced (0 if never online: "anything"), then issues a
//!   `SeqCst` fence, then loads the pointer, then announces the generation it found
//!   (Release). The pointer only moves forward, so that load returns generation `l` or
//!   newer. The writer, before it reads the slots, issues a `SeqCst` fence too (after its
//!   publication of the newer version). This is Dekker's pattern: of the two fences one
//!   comes first in their single total order; if the writer's, the reader's load finds the
//!   newer version; if the reader's, the writer sees `l` (or a later announcement) and frees
//!   nothing the reader could load. A reader's online announcements therefore never go
//!   backwards, even across offline spells. A fence costs the reader a few tens of
//!   cycles, on its own core, only when it goes online; nothing but loads and plain stores
//!   touch a slot (so no read-modify-write, and no line another thread writes).
//! - **Offline.** The reader stores [`OFFLINE`] (Release) and forgets its version: it holds
//!   nothing until its next lookup goes online again.
//! - **Reclaim.** The writer computes the smallest announcement of the online readers and
//!   frees the garbage of superseded versions older than it, oldest first (and only if no
//!   `Snapshot` holds them: `reclaim.rs`).
//! - **Synchronize.** Waits until each slot has been seen [`OFFLINE`] or at a generation at
//!   least the target, once (reading the slots after a `SeqCst` fence, as reclamation
//!   does): not all at the same moment, or readers that go online and offline all the time
//!   (a device bus does, around each dispatch) could starve it. Once seen so, a reader's
//!   later lookups answer from the target or newer (the argument of "going online").

use crate::sync::{fence, AtomicU64, Mutex, Ordering};
use std::sync::Arc as StdArc;

/// A slot's value when its reader holds nothing.
pub(crate) const OFFLINE: u64 = u64::MAX;

/// One reader's announcement, alone on its cache lines (128 bytes: the adjacent-line
/// prefetcher pairs lines), so that announcing writes no line anything else lives on.
#[repr(align(128))]
pub(crate) struct Slot {
    state: AtomicU64,
}

impl Slot {
    fn new() -> Self {
        Slot {
            state: AtomicU64::new(OFFLINE),
        }
    }

    /// Going online: announce the generation the reader last announced (`last`, 0 for a
    /// reader never online), then fence, before loading the publication pointer (module
    /// docs).
    #[inline]
    pub(crate) fn enter(&self, last: u64) {
        // Relaxed: the fence orders it (Dekker's pattern with the writer's fence in
        // `Registry::read`): either the writer sees it, or our next load of the pointer sees
        // the writer's newer publication (I8). `last` is a lower bound of what that load
        // returns: the pointer only moves forward and we loaded generation `last` from it.
        self.state.store(last, Ordering::Relaxed);
        fence(Ordering::SeqCst);
    }

    /// Announces generation `g` (online, moving on or just entered).
    #[inline]
    pub(crate) fn announce(&self, g: u64) {
        // Release: every read of older generations happens-before a writer that acquires
        // this value and then reuses their slots (I8).
        self.state.store(g, Ordering::Release);
    }

    /// Going offline: the reader holds nothing any more.
    #[inline]
    pub(crate) fn leave(&self) {
        // Release: as in `announce`.
        self.state.store(OFFLINE, Ordering::Release);
    }

    /// What the writer may rely on: the generation this reader may still read, or `None` if
    /// it is offline. To be called after a `SeqCst` fence (`Registry::read`).
    fn read(&self) -> Option<u64> {
        // Acquire: pairs with the reader's Release announcement (its reads of older
        // generations happen-before our reuse). An online value only grows while the reader
        // stays online, and after an offline spell it comes back at the generation it had,
        // then moves on: a stale online value is still a lower bound; a stale OFFLINE is
        // covered by the fences (module docs).
        match self.state.load(Ordering::Acquire) {
            OFFLINE => None,
            g => Some(g),
        }
    }
}

/// The registered readers' slots.
pub(crate) struct Registry {
    slots: Mutex<Vec<StdArc<Slot>>>,
}

impl Registry {
    pub(crate) fn new() -> Self {
        Registry {
            slots: Mutex::new(Vec::new()),
        }
    }

    /// A new slot, registered, offline.
    pub(crate) fn register(&self) -> StdArc<Slot> {
        let slot = StdArc::new(Slot::new());
        self.slots.lock().push(slot.clone());
        slot
    }

    /// Removes `slot` (its reader is gone; it was left offline first).
    pub(crate) fn deregister(&self, slot: &StdArc<Slot>) {
        self.slots.lock().retain(|s| !StdArc::ptr_eq(s, slot));
    }

    /// The generation each registered reader may still read (`None`: offline), read after a
    /// `SeqCst` fence, which the caller issues after its publication of the newer version
    /// (module docs); `f` folds them.
    fn read<T>(&self, init: T, f: impl Fn(T, Option<u64>) -> T) -> T {
        let slots = self.slots.lock();
        // SeqCst: Dekker's pattern with `Slot::enter` (I8).
        fence(Ordering::SeqCst);
        slots.iter().fold(init, |acc, s| f(acc, s.read()))
    }

    /// The smallest generation an online reader may still read (`u64::MAX` if none).
    pub(crate) fn oldest_in_use(&self) -> u64 {
        self.read(u64::MAX, |min, g| g.map_or(min, |g| g.min(min)))
    }

    /// The readers that may still read a generation older than `target` (for
    /// `synchronize`).
    pub(crate) fn lagging(&self, target: u64) -> Vec<StdArc<Slot>> {
        let slots = self.slots.lock();
        // SeqCst: as in `read`.
        fence(Ordering::SeqCst);
        slots
            .iter()
            .filter(|s| s.read().is_some_and(|g| g < target))
            .cloned()
            .collect()
    }

    /// Keeps in `lagging` only the readers still behind `target`. A reader seen offline or
    /// at `target` or newer once is done for good: its next lookups answer from `target`
    /// or newer (I8: going online announces at least the generation it had, and Dekker's
    /// fences make it load the newer publication if the writer saw it offline). So readers
    /// that keep going online and offline cannot starve `synchronize`.
    pub(crate) fn still_lagging(target: u64, lagging: &mut Vec<StdArc<Slot>>) {
        // SeqCst: as in `read`.
        fence(Ordering::SeqCst);
        lagging.retain(|s| s.read().is_some_and(|g| g < target));
    }
}
