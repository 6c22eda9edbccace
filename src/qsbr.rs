//! Readers' announcements: each [`Reader`](crate::Reader) announces, in a slot of its own,
//! the one generation it reads; the writer frees a slot of the arena once no announced
//! generation (and no snapshot's) lies in the interval of generations that reach it
//! (interval-based reclamation, `reclaim.rs`), and
//! [`PhysMap::synchronize`](crate::PhysMap::synchronize) waits for every online reader to
//! announce the newest generation or go offline.
//!
//! A reader writes only its own slot, and only when its generation changes or it goes
//! offline or online (one plain store): a lookup does no atomic read-modify-write and writes
//! no shared cache line (invariant I8 of `ARCHITECTURE.md`).
//!
//! # The protocol
//!
//! A slot holds a generation `g`, with [`OFFLINE`] set when its reader holds nothing
//! (keeping `g`, the generation it last held): online at `g` means "I may be reading
//! generation `g`, and no other". An announcement is exact (not "`g` or newer"), so a reader
//! that stays online without looking anything up pins only what its generation reaches.
//!
//! - **Entering a generation** ([`Slot::enter`]: going online, or moving on to a newer
//!   generation) is hazard-pointer-like: the reader loads the newest generation `g` and the
//!   address in its cell ([`Latest`]), announces `g` (Release: its reads of the generation it
//!   leaves happen-before a writer that sees the new value), passes the reader's side of the
//!   [`Barrier`], and loads the generation again. Unchanged: the address is `g`'s version
//!   (`Latest`'s argument) and the announcement protects it; changed: it starts over. It
//!   reads nothing of `g` before that check. The writer, after publishing and before it
//!   relies on the slots to free what a publication retired, passes the writer's side
//!   (Dekker's pattern: a `SeqCst` fence on each side, or a compiler fence on the reader's
//!   and `membarrier(2)` on the writer's): either the reader's second load sees the newer
//!   generation and the reader starts over, or the writer sees the announcement and frees
//!   nothing `g` reaches. One writer barrier after a publication covers every later reading
//!   of the slots for what that publication retired (`Registry::barrier`). A reader starts
//!   over only when a commit landed in between (lock-free; a lookup that keeps its
//!   generation never gets here).
//! - **Offline.** The reader sets [`OFFLINE`] (Release) and holds nothing until its next
//!   lookup enters the newest generation again.
//! - **Reclaim.** The writer reads the announcements and frees each retired slot whose
//!   interval holds no announced or snapshot-held generation (`reclaim.rs`).
//! - **Synchronize.** Waits until each slot has been seen at a generation at least the
//!   target, or offline after a writer barrier that follows the target's publication, once:
//!   not all at the same moment, or readers that go online and offline all the time (a
//!   device bus does, around each dispatch) could starve it. Once seen so, a reader's later
//!   lookups answer from the target or newer: generations only grow, and a reader seen
//!   offline whose announcement of an older generation the barrier's reading missed finds,
//!   by the barrier, the newer generation when it checks and starts over.
//!
//! Under loom, with the membarrier protocol, a reader holds its slot's "CPU" (a loom mutex)
//! between the interruption points of `enter` and `leave`, and the writer's barrier takes
//! and releases each registered reader's (`Registry::barrier`): a full barrier at one point
//! of each reader's protocol, chosen by loom, as an interrupt lands where it lands.

use crate::sync::{Barrier, Latest, Mutex, Ordering};
use std::sync::Arc as StdArc;

#[cfg(loom)]
use loom::sync::atomic::AtomicU64;
#[cfg(not(loom))]
use std::sync::atomic::AtomicU64;

/// Set in a slot while its reader holds nothing; the other bits keep the generation it last
/// held. Generations stay below 2^63.
pub(crate) const OFFLINE: u64 = 1 << 63;

/// One reader's announcement. It lives in the reader's own state, on the cache line its
/// lookups use (`reader.rs`): a lookup touches no line of its own for it.
pub(crate) struct Slot {
    state: AtomicU64,
    /// The reader's "CPU" for the loom stand-in of `membarrier(2)` (module docs).
    #[cfg(loom)]
    cpu: loom::sync::Mutex<()>,
}

/// Interruption points of the loom stand-in for `membarrier(2)`: nothing in production.
#[cfg(not(loom))]
struct Cpu;

#[cfg(not(loom))]
impl Cpu {
    #[inline(always)]
    fn take(_: &Slot, _: Barrier) -> Cpu {
        Cpu
    }
    #[inline(always)]
    fn interruptible(&mut self) {}
}

/// Interruption points of the loom stand-in for `membarrier(2)`: the reader holds its
/// "CPU" and lets go of it at each point, where the writer's barrier may land.
#[cfg(loom)]
struct Cpu<'a> {
    lock: Option<(&'a loom::sync::Mutex<()>, loom::sync::MutexGuard<'a, ()>)>,
}

#[cfg(loom)]
impl<'a> Cpu<'a> {
    fn take(slot: &'a Slot, barrier: Barrier) -> Cpu<'a> {
        let lock = (barrier == Barrier::Membarrier).then(|| {
            (
                &slot.cpu,
                slot.cpu.lock().unwrap_or_else(|p| p.into_inner()),
            )
        });
        Cpu { lock }
    }
    fn interruptible(&mut self) {
        if let Some((cpu, guard)) = self.lock.take() {
            drop(guard);
            self.lock = Some((cpu, cpu.lock().unwrap_or_else(|p| p.into_inner())));
        }
    }
}

impl Slot {
    /// A slot holding `held` (with [`OFFLINE`] set).
    pub(crate) fn new(held: u64) -> Self {
        debug_assert!(held & OFFLINE != 0);
        Slot {
            state: AtomicU64::new(held),
            #[cfg(loom)]
            cpu: loom::sync::Mutex::new(()),
        }
    }

    /// The reader's own view of its slot: the generation it holds, or [`OFFLINE`] with the
    /// last one. Only its reader writes the slot, so Relaxed reads its own last store.
    #[inline(always)]
    pub(crate) fn held(&self) -> u64 {
        self.state.load(Ordering::Relaxed)
    }

    /// Enters the newest generation: announces it and returns it, with what `read` takes
    /// from its version if the generation is not `before` (a reader back in the generation
    /// it held reads nothing of the version). `barrier` is the map's ([`Barrier`]).
    ///
    /// `read` sees the version only while the announcement protects it (I8; module docs),
    /// and, a plain function, cannot reach this slot to change the announcement meanwhile;
    /// what it returns cannot borrow from the version.
    #[inline(always)]
    pub(crate) fn enter<T, R>(
        &self,
        latest: &Latest<T>,
        barrier: Barrier,
        before: u64,
        read: fn(&T) -> R,
    ) -> (u64, Option<R>) {
        let mut cpu = Cpu::take(self, barrier);
        loop {
            let g = latest.generation();
            cpu.interruptible();
            let version = latest.version(g);
            cpu.interruptible();
            // Release: every read of the generation this reader leaves happens-before a
            // writer that acquires this value and then reuses what only that generation
            // reached (I8).
            self.state.store(g, Ordering::Release);
            cpu.interruptible();
            // Dekker's pattern with the writer's barrier (`Registry::barrier`, I8): either
            // the writer sees the announcement, or the load below sees the generation the
            // writer published before its barrier.
            barrier.reader(&self.state);
            // Relaxed: the barrier orders it after the announcement; coherence with the
            // Acquire loads above makes any newer address in `g`'s cell show here as a
            // newer generation (`Latest`).
            if latest.generation_relaxed() == g {
                if g == before {
                    return (g, None);
                }
                // SAFETY: `version` is generation `g`'s, which this slot announces, checked
                // after the announcement: the writer drops no version a reader announces
                // (I8). `read` borrows it for the call alone, during which only this slot's
                // reader could change the announcement, and a `fn` cannot reach the slot.
                return (g, Some(read(unsafe { &*version })));
            }
            cpu.interruptible();
        }
    }

    /// Going offline: the reader holds nothing any more.
    #[inline(always)]
    pub(crate) fn leave(&self, barrier: Barrier) {
        let mut cpu = Cpu::take(self, barrier);
        // Release: as in `enter`.
        self.state.store(self.held() | OFFLINE, Ordering::Release);
        cpu.interruptible();
    }

    /// The generation this reader may be reading, or `None` if it is offline. For the
    /// writer; what it may conclude depends on its barrier (`Registry::barrier`).
    fn read(&self) -> Option<u64> {
        // Acquire: pairs with the reader's Release announcement (its reads of the generation
        // it left happen-before our reuse). A value announced but not yet checked by the
        // reader is a generation it may abandon: counting it only keeps more.
        let v = self.state.load(Ordering::Acquire);
        (v & OFFLINE == 0).then_some(v)
    }
}

/// What the registry keeps of a reader: the state holding its slot, shared with the reader
/// that owns it (`reader.rs`).
pub(crate) trait Announcer: Send + Sync {
    fn slot(&self) -> &Slot;
}

type Owner = StdArc<dyn Announcer>;

/// The registered readers' slots, and the barrier the map's readers and writer use.
pub(crate) struct Registry {
    slots: Mutex<Vec<Owner>>,
    barrier: Barrier,
}

impl Registry {
    pub(crate) fn new(barrier: Barrier) -> Self {
        Registry {
            slots: Mutex::new(Vec::new()),
            barrier,
        }
    }

    /// The barrier the map's readers and writer use.
    pub(crate) fn barrier(&self) -> Barrier {
        self.barrier
    }

    /// Registers a reader's state (its slot offline).
    pub(crate) fn register(&self, owner: Owner) {
        self.slots.lock().push(owner);
    }

    /// Removes a reader's state (its reader is gone; it went offline first).
    pub(crate) fn deregister(&self, owner: &Owner) {
        self.slots.lock().retain(|s| !StdArc::ptr_eq(s, owner));
    }

    /// The writer's side of the barrier, for every registered reader (I8): afterwards, any
    /// reading of a slot either sees the announcement of a reader that is entering a
    /// generation, or that reader's check sees every generation published before this call.
    fn barrier_locked(&self, slots: &[Owner]) {
        self.barrier.writer();
        #[cfg(loom)]
        if self.barrier == Barrier::Membarrier {
            // The stand-in (module docs): each reader's "CPU", taken and released.
            for s in slots {
                drop(s.slot().cpu.lock().unwrap_or_else(|p| p.into_inner()));
            }
        }
        #[cfg(not(loom))]
        let _ = slots;
    }

    /// The generations the online readers announced, sorted, each once; after the writer's
    /// barrier if `barrier`. Returns whether this reading covers every generation published
    /// before the call (module docs): it does after the barrier, or with no reader
    /// registered (a reader registering later takes the registry's lock first, so its first
    /// load of the newest generation sees those publications).
    pub(crate) fn announced(&self, out: &mut Vec<u64>, barrier: bool) -> bool {
        let slots = self.slots.lock();
        let covers = barrier || slots.is_empty();
        if barrier && !slots.is_empty() {
            self.barrier_locked(&slots);
        }
        out.clear();
        out.extend(slots.iter().filter_map(|s| s.slot().read()));
        drop(slots);
        out.sort_unstable();
        out.dedup();
        covers
    }

    /// Waits until no online reader may still read a generation older than `target` (module
    /// docs, "Synchronize"). `wait` is called between rounds; it returns false to give up
    /// (then so does this).
    pub(crate) fn synchronize(&self, target: u64, mut wait: impl FnMut() -> bool) -> bool {
        // A slot seen at `target` or newer is done. One seen offline is done once read
        // after a barrier that follows `target`'s publication: issued once no slot is
        // visibly behind (readers idle online hold `synchronize` anyway). The barrier's
        // reading covers every reader registered by then (one registered since the first
        // reading may have entered an older generation meanwhile).
        let behind = |s: &Owner| s.slot().read().is_some_and(|g| g < target);
        // The barrier, then the readers still behind (the only ones left to wait for).
        let confirm = |slots: &[Owner]| -> Vec<Owner> {
            self.barrier_locked(slots);
            slots.iter().filter(|s| behind(s)).cloned().collect()
        };
        // The first reading under the registry's lock, so that the common case (nobody
        // behind) keeps no reader's state alive: no reference count touched per reader.
        let mut confirmed = false;
        let mut pending = {
            let slots = self.slots.lock();
            if slots.iter().any(behind) {
                slots.clone()
            } else {
                confirmed = true;
                confirm(&slots)
            }
        };
        loop {
            if !confirmed && !pending.iter().any(behind) {
                pending = confirm(&self.slots.lock());
                confirmed = true;
            }
            pending.retain(|s| match s.slot().read() {
                None => !confirmed,
                Some(g) => g < target,
            });
            if pending.is_empty() {
                return true;
            }
            if !wait() {
                return false;
            }
        }
    }
}
