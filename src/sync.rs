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
    /// taken by snapshots) and its address mirrored in an atomic (loaded by readers, whose
    /// announcements protect what they read: `qsbr.rs`).
    ///
    /// The mirror sits alone on its cache lines: every lookup loads it, and nothing the
    /// writer touches at each commit (its lock, the `ArcSwap`, the registry) may share its
    /// line, or each of those writes would cost every reader a cache miss.
    pub(crate) struct Publisher<T> {
        current: arc_swap::ArcSwap<T>,
        ptr: Alone<AtomicPtr<T>>,
    }

    /// A value alone on its cache lines (128 bytes: the adjacent-line prefetcher pairs
    /// lines).
    #[repr(align(128))]
    struct Alone<T>(T);

    impl<T> Publisher<T> {
        pub(crate) fn new(value: Arc<T>) -> Self {
            let ptr = AtomicPtr::new(Arc::as_ptr(&value) as *mut T);
            Publisher {
                current: arc_swap::ArcSwap::new(value),
                ptr: Alone(ptr),
            }
        }
        /// A counted reference to the newest value.
        pub(crate) fn load_full(&self) -> Arc<T> {
            self.current.load_full()
        }
        /// Publishes `value`. arc-swap's store is a SeqCst swap of the pointer: everything the
        /// writer did before (filling the new tree's nodes) happens-before any load that
        /// returns the new pointer. The mirror is stored after it (Release), so a reader that
        /// sees the new address and then loads the `ArcSwap` gets the new value or a newer one.
        pub(crate) fn store(&self, value: Arc<T>) {
            let ptr = Arc::as_ptr(&value) as *mut T;
            self.current.store(value);
            self.ptr.0.store(ptr, Ordering::Release);
        }
        /// The mirrored address of the newest value (load it with Acquire: it is stored with
        /// Release after the value, so the value and everything written before it are
        /// visible to whoever sees the address).
        pub(crate) fn ptr(&self) -> &AtomicPtr<T> {
            &self.ptr.0
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

    /// Loom stand-in for `ArcSwap`: the value behind a lock, its address mirrored in an
    /// atomic so that [`Cache`] can revalidate with one load, as `arc_swap::Cache` does.
    pub(crate) struct Publisher<T> {
        current: loom::sync::Mutex<Arc<T>>,
        ptr: AtomicPtr<T>,
    }

    impl<T> Publisher<T> {
        pub(crate) fn new(value: Arc<T>) -> Self {
            let ptr = AtomicPtr::new(Arc::as_ptr(&value) as *mut T);
            Publisher {
                current: loom::sync::Mutex::new(value),
                ptr,
            }
        }
        pub(crate) fn load_full(&self) -> Arc<T> {
            self.current.lock().unwrap().clone()
        }
        /// As production: the value first, then the mirror (Release, as there: no
        /// stronger). The mutex stands for `ArcSwap`'s own synchronisation of the value.
        pub(crate) fn store(&self, value: Arc<T>) {
            let ptr = Arc::as_ptr(&value) as *mut T;
            let old = std::mem::replace(&mut *self.current.lock().unwrap(), value);
            self.ptr.store(ptr, Ordering::Release);
            drop(old);
        }
        pub(crate) fn ptr(&self) -> &AtomicPtr<T> {
            &self.ptr
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
