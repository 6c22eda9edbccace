//! Readers' announcements: each [`Reader`](crate::Reader) announces, in a slot of its own,
//! the one generation it reads; the writer frees a slot of the arena once no announced
//! generation (and no snapshot's) lies in the interval of generations that reach it
//! (interval-based reclamation, `reclaim.rs`), and
//! [`PhysMap::synchronize`](crate::PhysMap::synchronize) waits for every online reader to
//! announce the newest generation or go offline.
//!
//! A reader writes only its own slot, and only when its generation changes or it goes
//! offline (one plain store): a lookup does no atomic read-modify-write and writes no shared
//! cache line (invariant I8 of `ARCHITECTURE.md`).
//!
//! # The protocol
//!
//! A slot holds [`OFFLINE`] or a generation `g`: "I may be reading generation `g`, and no
//! other". An announcement is exact (not "`g` or newer"), so a reader that stays online
//! without looking anything up pins only what its generation reaches.
//!
//! - **Entering a generation** ([`Slot::enter`]: going online, or moving on to a newer
//!   generation) is hazard-pointer-like: the reader loads the newest generation `g` and the
//!   address in its cell ([`Latest`]), announces `g` (Release: its reads of the generation
//!   it leaves happen-before a writer that sees the new value), issues a `SeqCst` fence, and
//!   loads the generation again. Unchanged: the address is `g`'s version (`Latest`'s
//!   argument) and the announcement protects it; changed: it starts over. It reads nothing
//!   of `g` before that check. The writer, after publishing a generation and before reading
//!   the slots to free what that publication retired, issues a `SeqCst` fence too
//!   (Dekker's pattern): of the two fences one comes first; if the writer's, the reader's
//!   second load sees the newer generation and starts over; if the reader's, the writer
//!   sees the announcement and frees nothing `g` reaches. A reader starts over only when a
//!   commit landed in between (lock-free; a lookup that keeps its generation never gets
//!   here).
//! - **Offline.** The reader stores [`OFFLINE`] (Release) and forgets its version: it holds
//!   nothing until its next lookup enters the newest generation again.
//! - **Reclaim.** The writer reads the announcements (after its fence) and frees each
//!   retired slot whose interval holds no announced or snapshot-held generation
//!   (`reclaim.rs`).
//! - **Synchronize.** Waits until each slot has been seen [`OFFLINE`] or at a generation at
//!   least the target, once (reading the slots after a `SeqCst` fence, as reclamation
//!   does): not all at the same moment, or readers that go online and offline all the time
//!   (a device bus does, around each dispatch) could starve it. Once seen so, a reader's
//!   later lookups answer from the target or newer: generations only grow, and a reader seen
//!   offline whose announcement of an older generation the writer missed finds, by the
//!   fences, the newer generation when it checks and starts over.

use crate::sync::{fence, AtomicU64, Latest, Mutex, Ordering};
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

    /// Enters the newest generation: announces it and returns it with its version's
    /// address, which stays readable until the next `enter` or [`Slot::leave`] (I8; module
    /// docs).
    #[inline]
    pub(crate) fn enter<T>(&self, latest: &Latest<T>) -> (u64, *const T) {
        loop {
            let g = latest.generation();
            let version = latest.version(g);
            // Release: every read of the generation this reader leaves happens-before a
            // writer that acquires this value and then reuses what only that generation
            // reached (I8).
            self.state.store(g, Ordering::Release);
            // SeqCst: Dekker's pattern with the writer's fence in `Registry::read` (I8):
            // either the writer sees the announcement, or the load below sees the
            // generation the writer published before its fence.
            fence(Ordering::SeqCst);
            // Relaxed: the fence orders it after the announcement; coherence with the
            // Acquire loads above makes any newer address in `g`'s cell show here as a
            // newer generation (`Latest`).
            if latest.generation_relaxed() == g {
                return (g, version);
            }
        }
    }

    /// Going offline: the reader holds nothing any more.
    #[inline]
    pub(crate) fn leave(&self) {
        // Release: as in `enter`.
        self.state.store(OFFLINE, Ordering::Release);
    }

    /// The generation this reader may be reading, or `None` if it is offline. To be
    /// called after a `SeqCst` fence (`Registry::read`).
    fn read(&self) -> Option<u64> {
        // Acquire: pairs with the reader's Release announcement (its reads of the generation
        // it left happen-before our reuse). A value announced but not yet checked by the
        // reader is a generation it may abandon: counting it only keeps more.
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

    /// The generation each registered reader may be reading (`None`: offline), read after a
    /// `SeqCst` fence, which the caller issues after its publication of the newer version
    /// (module docs); `f` takes each.
    fn read(&self, mut f: impl FnMut(Option<u64>)) {
        let slots = self.slots.lock();
        // SeqCst: Dekker's pattern with `Slot::enter` (I8).
        fence(Ordering::SeqCst);
        slots.iter().for_each(|s| f(s.read()));
    }

    /// The generations the online readers announced, sorted, each once.
    pub(crate) fn announced(&self, out: &mut Vec<u64>) {
        out.clear();
        self.read(|g| out.extend(g));
        out.sort_unstable();
        out.dedup();
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
    /// or newer (module docs). So readers that keep going online and offline cannot starve
    /// `synchronize`.
    pub(crate) fn still_lagging(target: u64, lagging: &mut Vec<StdArc<Slot>>) {
        // SeqCst: as in `read`.
        fence(Ordering::SeqCst);
        lagging.retain(|s| s.read().is_some_and(|g| g < target));
    }
}
