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
//! - [`Publisher`] is a loom `Mutex<Arc<T>>` where production has an `arc_swap::ArcSwap`;
//!   both mirror the current address in an `AtomicPtr`, stored after the value with Release,
//!   and [`Cache`] (the same code in both builds) compares that address with Relaxed, as
//!   `arc_swap::Cache` does. What the models check is therefore our protocol on top of "an
//!   atomic cell holding an `Arc`"; arc-swap's own implementation of that cell is trusted (it
//!   has its own test suite);
//! - [`par_map`] (rayon's parallel map in the bulk build) runs sequentially.

#[cfg(not(loom))]
mod imp {
    pub(crate) use std::sync::atomic::{AtomicPtr, Ordering};
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

    /// Holds the newest published value: an `arc_swap::ArcSwap` (for counted references)
    /// and its address mirrored in an atomic (for [`Cache`](super::Cache)'s revalidation).
    pub(crate) struct Publisher<T> {
        current: arc_swap::ArcSwap<T>,
        ptr: AtomicPtr<T>,
    }

    impl<T> Publisher<T> {
        pub(crate) fn new(value: Arc<T>) -> Self {
            let ptr = AtomicPtr::new(Arc::as_ptr(&value) as *mut T);
            Publisher {
                current: arc_swap::ArcSwap::new(value),
                ptr,
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
            self.ptr.store(ptr, Ordering::Release);
        }
        /// The mirrored address of the newest value.
        pub(crate) fn ptr(&self) -> &AtomicPtr<T> {
            &self.ptr
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
    pub(crate) use loom::sync::atomic::{AtomicPtr, Ordering};
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

/// A per-thread cached copy of the newest value, as `arc_swap::Cache` keeps one: revalidating
/// it costs one load of the publisher's mirrored address and one compare; only when the
/// address changed does it take a counted reference (out of line). The same code runs in
/// production and under loom (only the [`Publisher`] differs).
pub(crate) struct Cache<T> {
    publisher: Arc<Publisher<T>>,
    cached: Arc<T>,
}

impl<T> Cache<T> {
    pub(crate) fn new(publisher: Arc<Publisher<T>>) -> Self {
        let cached = publisher.load_full();
        Cache { publisher, cached }
    }

    /// Catches up with the publisher if it moved on since the last call; returns whether
    /// the cached value changed.
    #[inline(always)]
    pub(crate) fn revalidate(&mut self) -> bool {
        // Relaxed, as `arc_swap::Cache::revalidate`: nothing is synchronised through the
        // address; if it changed, `refresh` takes a counted reference, which synchronises.
        // The cached Arc keeps its value alive, so its address cannot be reused (no ABA).
        let now = self.publisher.ptr().load(Ordering::Relaxed);
        if std::ptr::eq(now, Arc::as_ptr(&self.cached)) {
            return false;
        }
        self.refresh();
        true
    }

    /// The cached value (as of the last [`Cache::revalidate`]).
    #[inline(always)]
    pub(crate) fn get(&self) -> &Arc<T> {
        &self.cached
    }

    /// The newest value, refreshed if the publisher moved on since the last call.
    #[inline(always)]
    pub(crate) fn load(&mut self) -> &Arc<T> {
        self.revalidate();
        &self.cached
    }

    #[cold]
    #[inline(never)]
    fn refresh(&mut self) {
        self.cached = self.publisher.load_full();
    }
}
