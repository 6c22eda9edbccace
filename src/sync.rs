//! The one door to shared-memory primitives.
//!
//! Every atomic, lock, shared cell and the publication primitive used by physmap comes from
//! this module. In a normal build they are `std` atomics, `parking_lot::Mutex` and
//! `arc_swap::ArcSwap` / `arc_swap::Cache`. Built with `--cfg loom` they become `loom`'s
//! model-checked equivalents, so the models in `loom-tests/` run the crate's own publish,
//! read, cache-refresh and reclaim code, not a copy of it.
//!
//! `arc-swap`, `parking_lot` and `rayon` are not loom-aware. Under loom:
//! - [`Mutex`] is `loom::sync::Mutex` (parking_lot's has no poisoning and neither has ours:
//!   a poisoned loom lock is simply taken, matching parking_lot's behaviour);
//! - [`Publisher`] is a loom `Mutex<Arc<T>>` where production has an `arc_swap::ArcSwap`
//!   (which only snapshots use, for counted references); both mirror the current address in
//!   an `AtomicPtr`, stored after the value with Release, which readers load with Acquire.
//!   What the models check is therefore our protocol on top of "an atomic cell holding an
//!   `Arc`"; arc-swap's own implementation of that cell is trusted (it has its own test
//!   suite);
//! - [`par_map`] (rayon's parallel map in the bulk build) runs sequentially.

#[cfg(not(loom))]
mod imp {
    pub(crate) use std::sync::atomic::{fence, AtomicPtr, AtomicU64, Ordering};
    pub(crate) use std::sync::Arc;

    /// Writer lock: `parking_lot::Mutex`, which does not poison, so a writer that panicked
    /// leaves the lock usable for the next one.
    pub(crate) struct Mutex<T>(parking_lot::Mutex<T>);
    pub(crate) type MutexGuard<'a, T> = parking_lot::MutexGuard<'a, T>;

    impl<T> Mutex<T> {
        pub(crate) fn new(value: T) -> Self {
            Mutex(parking_lot::Mutex::new(value))
        }
        pub(crate) fn lock(&self) -> MutexGuard<'_, T> {
            self.0.lock()
        }
    }

    /// A cell written only while no other thread can reach it, read while shared.
    /// The API mirrors `loom::cell::UnsafeCell` so that loom can track each access.
    #[repr(transparent)]
    pub(crate) struct UnsafeCell<T>(std::cell::UnsafeCell<T>);

    impl<T> UnsafeCell<T> {
        pub(crate) fn new(value: T) -> Self {
            UnsafeCell(std::cell::UnsafeCell::new(value))
        }
        #[inline(always)]
        pub(crate) fn with<R>(&self, f: impl FnOnce(*const T) -> R) -> R {
            f(self.0.get())
        }
        #[inline(always)]
        pub(crate) fn with_mut<R>(&self, f: impl FnOnce(*mut T) -> R) -> R {
            f(self.0.get())
        }
    }

    /// Holds the newest published value: an `arc_swap::ArcSwap` (for counted references,
    /// taken by snapshots) and, alone on its cache lines, its generation and address for
    /// readers ([`Latest`](super::Latest), whose announcements protect what they read:
    /// `qsbr.rs`).
    ///
    /// The mirror sits alone on its cache lines: every lookup loads it, and nothing the
    /// writer touches at each commit (its lock, the `ArcSwap`, the registry) may share its
    /// line, or each of those writes would cost every reader a cache miss.
    pub(crate) struct Publisher<T> {
        current: arc_swap::ArcSwap<T>,
        latest: super::Latest<T>,
    }

    impl<T> Publisher<T> {
        /// A publication point holding `value`, generation `generation`.
        pub(crate) fn new(value: Arc<T>, generation: u64) -> Self {
            let latest = super::Latest::new(Arc::as_ptr(&value), generation);
            Publisher {
                current: arc_swap::ArcSwap::new(value),
                latest,
            }
        }
        /// A counted reference to the newest value.
        pub(crate) fn load_full(&self) -> Arc<T> {
            self.current.load_full()
        }
        /// Publishes `value` as generation `generation` (one more than the last). arc-swap's
        /// store is a SeqCst swap of the pointer: everything the writer did before (filling
        /// the new tree's nodes) happens-before any load that returns the new pointer. The
        /// readers' mirror is stored after it ([`Latest::publish`](super::Latest::publish)).
        pub(crate) fn store(&self, value: Arc<T>, generation: u64) {
            let ptr = Arc::as_ptr(&value);
            self.current.store(value);
            self.latest.publish(ptr, generation);
        }
        /// What readers load: the newest generation and its address.
        pub(crate) fn latest(&self) -> &super::Latest<T> {
            &self.latest
        }
    }

    /// Maps `f` over `items` in parallel (rayon's global pool), keeping the order.
    pub(crate) fn par_map<I: Sync, R: Send>(
        items: &[I],
        f: impl Fn(&I) -> R + Sync + Send,
    ) -> Vec<R> {
        use rayon::prelude::*;
        items.par_iter().map(f).collect()
    }
}

#[cfg(loom)]
mod imp {
    pub(crate) use loom::sync::atomic::{fence, AtomicPtr, AtomicU64, Ordering};
    pub(crate) use loom::sync::Arc;

    /// Writer lock (loom model). Poisoning is ignored, like parking_lot.
    pub(crate) struct Mutex<T>(loom::sync::Mutex<T>);
    pub(crate) type MutexGuard<'a, T> = loom::sync::MutexGuard<'a, T>;

    impl<T> Mutex<T> {
        pub(crate) fn new(value: T) -> Self {
            Mutex(loom::sync::Mutex::new(value))
        }
        pub(crate) fn lock(&self) -> MutexGuard<'_, T> {
            self.0
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
        }
    }

    pub(crate) use loom::cell::UnsafeCell;

    /// Loom stand-in for `ArcSwap`: the value behind a lock, with the same readers' mirror
    /// ([`Latest`](super::Latest)) as production, stored the same way.
    pub(crate) struct Publisher<T> {
        current: loom::sync::Mutex<Arc<T>>,
        latest: super::Latest<T>,
    }

    impl<T> Publisher<T> {
        pub(crate) fn new(value: Arc<T>, generation: u64) -> Self {
            let latest = super::Latest::new(Arc::as_ptr(&value), generation);
            Publisher {
                current: loom::sync::Mutex::new(value),
                latest,
            }
        }
        pub(crate) fn load_full(&self) -> Arc<T> {
            self.current.lock().unwrap().clone()
        }
        /// As production: the value first, then the mirror. The mutex stands for
        /// `ArcSwap`'s own synchronisation of the value.
        pub(crate) fn store(&self, value: Arc<T>, generation: u64) {
            let ptr = Arc::as_ptr(&value);
            let old = std::mem::replace(&mut *self.current.lock().unwrap(), value);
            self.latest.publish(ptr, generation);
            drop(old);
        }
        pub(crate) fn latest(&self) -> &super::Latest<T> {
            &self.latest
        }
    }

    /// rayon is not loom-aware: under loom the bulk build runs its tasks one after another
    /// (the models exercise publication and reclamation, not the build).
    pub(crate) fn par_map<I: Sync, R: Send>(
        items: &[I],
        f: impl Fn(&I) -> R + Sync + Send,
    ) -> Vec<R> {
        items.iter().map(f).collect()
    }
}

pub(crate) use imp::*;

/// How a reader's announcement is ordered against the writer's reading of it (Dekker's
/// pattern of I8): each side needs a full barrier between its store and its load.
///
/// - [`Barrier::Fence`]: both issue a `SeqCst` fence (a few tens of cycles on the reader's
///   side, at each generation change and each return online);
/// - [`Barrier::Membarrier`]: the reader issues only a compiler fence, and the writer, before
///   it relies on the readers' slots, calls `membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED)`,
///   which runs a full barrier on every CPU running a thread of the process (and a thread
///   not running passes one when it is switched in), so that for each reader the barrier
///   lands somewhere in its instruction stream between the call's start and return: before
///   its announcement (then its later load sees the writer's earlier publication), or after
///   it (then the writer's later reads see the announcement). The reader's side has no fence
///   and no read-modify-write; the writer pays a system call (an interprocessor interrupt to
///   each CPU running the process), so it issues it lazily (`reclaim.rs`, `map.rs`).
///
/// Chosen per map ([`Barrier::choose`], `Config::membarrier`): membarrier where the map asks
/// for it and the kernel offers and registers it, the fence otherwise (and under Miri, which
/// has no such system call). Under loom the writer's side is a stand-in no stronger than the
/// system call (`qsbr.rs`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Barrier {
    Fence,
    Membarrier,
}

impl Barrier {
    /// The barrier a map uses: membarrier if it asks for it (`Config::membarrier`, or
    /// `PHYSMAP_BARRIER=membarrier`) and the kernel registered the process for
    /// `MEMBARRIER_CMD_PRIVATE_EXPEDITED` (once per process), else the fence.
    pub(crate) fn choose(membarrier: bool) -> Barrier {
        static REGISTERED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        let wanted = match std::env::var("PHYSMAP_BARRIER").as_deref() {
            Ok("fence") => false,
            Ok("membarrier") => true,
            _ => membarrier,
        };
        if wanted && *REGISTERED.get_or_init(membarrier::register) {
            Barrier::Membarrier
        } else {
            Barrier::Fence
        }
    }

    /// The reader's side, between its announcement (to `slot`) and its check of the
    /// generation.
    #[inline(always)]
    pub(crate) fn reader(self, slot: &AtomicU64) {
        match self {
            // SeqCst: Dekker's pattern with the writer's fence (I8).
            Barrier::Fence => reader_fence(slot),
            // The writer's membarrier orders the two accesses (I8); the compiler must not.
            Barrier::Membarrier => {
                membarrier_side();
                std::sync::atomic::compiler_fence(Ordering::SeqCst)
            }
        }
    }

    /// The writer's side, after its publications and before it relies on the slots it
    /// reads next (I8).
    pub(crate) fn writer(self) {
        // SeqCst: Dekker's pattern with the readers' fences (I8); with membarrier, it also
        // orders the writer's own accesses around the system call.
        fence(Ordering::SeqCst);
        if self == Barrier::Membarrier {
            membarrier::barrier();
            fence(Ordering::SeqCst);
        }
    }
}

/// Marks the membarrier side of [`Barrier::reader`] as the less likely one (a call to a cold
/// function, which does nothing): the default, the fence, then keeps the straight line of a
/// bus dispatch's inlined code, and the other side's copy of the announcement's loop goes
/// out of its way.
#[cold]
#[inline(never)]
fn membarrier_side() {}

/// The reader's `SeqCst` fence, issued right after its announcement to `slot`. On x86-64, a
/// locked `or` of 0 to the slot itself rather than what LLVM emits for `fence(SeqCst)` (the
/// same instruction on the stack 64 bytes below the frame): a reader enters a generation at
/// every bus dispatch, after an exit whose guest evicted the caches, and that stack line is
/// one more line to fetch, where the slot's line was just written. (`mfence`, which touches
/// no memory, cost 10 to 30 ns more per dispatch in the KVM guest: BENCHMARKS.md.)
/// Elsewhere, and under loom and Miri (which must see the fence), the fence itself.
#[inline(always)]
fn reader_fence(slot: &AtomicU64) {
    #[cfg(all(target_arch = "x86_64", not(loom), not(miri)))]
    // SAFETY: the block ORs 0 into the reader's own slot, an `AtomicU64`, with one locked
    // instruction: the value is unchanged, as a `fetch_or(0)` would leave it, and no other
    // memory or register is touched (the flags are declared clobbered). Without `nomem` the
    // compiler must treat the block as an unknown function that may perform any atomic
    // operation, a `SeqCst` fence included, so it orders the accesses around it as
    // `fence(SeqCst)` does; the processor orders them by the `lock` prefix (every earlier load
    // and store before every later one), which is what Dekker's pattern with the writer's
    // fence needs (I8).
    unsafe {
        std::arch::asm!("lock or qword ptr [{0}], 0", in(reg) slot.as_ptr(), options(nostack));
    }
    #[cfg(not(all(target_arch = "x86_64", not(loom), not(miri))))]
    {
        let _ = slot;
        fence(Ordering::SeqCst);
    }
}

/// `membarrier(2)`, where there is one to call.
#[cfg(all(target_os = "linux", not(loom), not(miri)))]
mod membarrier {
    const CMD_QUERY: libc::c_long = 0;
    const CMD_PRIVATE_EXPEDITED: libc::c_long = 1 << 3;
    const CMD_REGISTER_PRIVATE_EXPEDITED: libc::c_long = 1 << 4;

    fn call(cmd: libc::c_long) -> libc::c_long {
        // SAFETY: membarrier takes two integers and touches no memory of ours.
        unsafe {
            libc::syscall(
                libc::SYS_membarrier,
                cmd,
                0 as libc::c_long,
                0 as libc::c_long,
            )
        }
    }

    /// Registers the process for private expedited barriers; whether the kernel agreed.
    pub(super) fn register() -> bool {
        let offered = call(CMD_QUERY);
        offered >= 0
            && offered & CMD_PRIVATE_EXPEDITED != 0
            && call(CMD_REGISTER_PRIVATE_EXPEDITED) == 0
    }

    /// A full barrier on every CPU running a thread of this process.
    pub(super) fn barrier() {
        let r = call(CMD_PRIVATE_EXPEDITED);
        // Registered in `register`, which `Barrier::detect` called before any map chose
        // this barrier: the kernel does not refuse it afterwards.
        assert_eq!(r, 0, "membarrier failed after registration");
    }
}

/// Loom stand-in for `membarrier(2)`: for each registered reader, the writer takes and
/// releases the reader's "CPU" (a loom mutex the reader holds between the interruption
/// points of its protocol, `qsbr.rs`), which orders the writer after everything the reader
/// did before that point and before everything it does after: a full barrier at one point
/// of the reader's instruction stream, the one loom chooses, as an interprocessor interrupt
/// lands where it lands. Nothing orders a reader that has not yet been "interrupted".
#[cfg(loom)]
mod membarrier {
    /// Loom models choose their barrier in their `Config` (or `PHYSMAP_BARRIER`).
    pub(super) fn register() -> bool {
        true
    }
    /// Done by `Registry::barrier`, which knows the readers.
    pub(super) fn barrier() {}
}

/// No membarrier here (not Linux, or Miri, which does not model it): the fence.
#[cfg(not(any(loom, all(target_os = "linux", not(miri)))))]
mod membarrier {
    pub(super) fn register() -> bool {
        false
    }
    pub(super) fn barrier() {
        unreachable!("membarrier is never chosen here")
    }
}

/// What readers load to find the newest version, alone on its cache lines (128 bytes: the
/// adjacent-line prefetcher pairs lines): its generation, and its address in the cell of the
/// generation's parity.
///
/// The writer publishes generation `g` by storing the address in `versions[g % 2]`, then
/// `g` in `generation` (both Release). A reader that loads `g` (Acquire), then
/// `versions[g % 2]` (Acquire), then finds `generation` still `g` knows that the address it
/// loaded is generation `g`'s: a later address in that cell (generation `g + 2` or newer)
/// was stored after `generation` had become `g + 1`, and a reader that loads it sees that
/// too. So a reader learns a version's generation without reading the version, which
/// interval-based reclamation needs (`qsbr.rs`), and it never waits for the writer: no
/// intermediate state is ever published.
#[repr(align(128))]
pub(crate) struct Latest<T> {
    generation: AtomicU64,
    versions: [AtomicPtr<T>; 2],
}

impl<T> Latest<T> {
    fn new(ptr: *const T, generation: u64) -> Self {
        let latest = Latest {
            generation: AtomicU64::new(generation),
            versions: [
                AtomicPtr::new(std::ptr::null_mut()),
                AtomicPtr::new(std::ptr::null_mut()),
            ],
        };
        latest.versions[(generation % 2) as usize].store(ptr as *mut T, Ordering::Relaxed);
        latest
    }

    /// Writer only: publishes `ptr` as generation `generation` (the last one plus one).
    fn publish(&self, ptr: *const T, generation: u64) {
        // Release: the version and everything it reaches were written before (I2); a reader
        // that loads this address sees them, and sees `generation` at least `generation - 1`
        // (stored before), which is how it detects a cell overwritten under it.
        self.versions[(generation % 2) as usize].store(ptr as *mut T, Ordering::Release);
        // Release: a reader that loads `generation` finds the address stored above (or a
        // newer one) in its cell.
        self.generation.store(generation, Ordering::Release);
    }

    /// The newest generation. Acquire: the address of its version was stored before it.
    #[inline(always)]
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The newest generation, with no ordering: for a check that a fence orders
    /// (`Slot::enter`), and for readers comparing it with the one they hold (whatever the
    /// answer, the reader reads nothing new until it has entered that generation).
    #[inline(always)]
    pub(crate) fn generation_relaxed(&self) -> u64 {
        self.generation.load(Ordering::Relaxed)
    }

    /// The address in the cell of generation `g`'s parity: `g`'s version if the generation is
    /// still `g` when loaded again afterwards (see the type's docs). Acquire: pairs with the
    /// writer's Release store of the address (the version is visible, I2), and makes the
    /// generation the writer stored before it visible to a later load.
    #[inline(always)]
    pub(crate) fn version(&self, g: u64) -> *const T {
        self.versions[(g % 2) as usize].load(Ordering::Acquire)
    }
}

/// Waits a little longer each call: spins, then yields, then sleeps (for
/// `PhysMap::synchronize`). Under loom, a yield to the model's scheduler.
pub(crate) fn backoff(spins: &mut u32) {
    *spins = spins.saturating_add(1);
    #[cfg(loom)]
    loom::thread::yield_now();
    #[cfg(not(loom))]
    match *spins {
        0..=64 => std::hint::spin_loop(),
        65..=128 => std::thread::yield_now(),
        _ => std::thread::sleep(std::time::Duration::from_micros(50)),
    }
}
