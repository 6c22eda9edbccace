//! A [`BusVcpu`] per thread and bus, for the bus shapes whose callers dispatch through a
//! shared `&Bus` (Cloud Hypervisor's and Firecracker's: [`ch_bus`](crate::ch_bus),
//! [`fc_bus`](crate::fc_bus)).
//!
//! Each thread keeps, in a thread-local of the bus shape, the dispatchers it made, keyed by
//! the bus's id (never reused, unlike an address). An access takes its dispatcher out of the
//! thread's list for the call and puts it back after (unwinding included), so that a device
//! handler may itself access a bus: the same bus again gets a dispatcher of its own for the
//! nested access (registered then, dropped after), so it too holds its generation while it
//! runs and a `remove` waits for it. A dispatcher goes offline after each access, as a
//! `BusVcpu` does: a thread holds nothing between accesses. Dispatchers of buses dropped
//! since are dropped when the thread next makes one, and all of them when it exits.

use crate::bus::{Bus, BusVcpu};
use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::thread::LocalKey;

/// What identifies a bus to the threads' lists: an id, and a token that dies with the bus.
pub(crate) struct Key {
    id: u64,
    alive: Arc<()>,
}

impl Key {
    pub(crate) fn new() -> Key {
        /// Ids handed out so far.
        static NEXT: AtomicU64 = AtomicU64::new(0);
        // Relaxed: only uniqueness matters, which the read-modify-write gives.
        Key {
            id: NEXT.fetch_add(1, Ordering::Relaxed),
            alive: Arc::new(()),
        }
    }
}

impl Default for Key {
    fn default() -> Self {
        Key::new()
    }
}

/// One thread's dispatchers (the thread-local of one bus shape).
pub(crate) struct Vcpus<D: ?Sized> {
    entries: Vec<Entry<D>>,
}

struct Entry<D: ?Sized> {
    id: u64,
    alive: Weak<()>,
    /// `None` while an access of this thread uses it.
    vcpu: Option<Box<BusVcpu<D>>>,
}

impl<D: ?Sized + Send + Sync> Vcpus<D> {
    /// No dispatchers yet.
    pub(crate) const fn new() -> Self {
        Vcpus {
            entries: Vec::new(),
        }
    }

    /// This thread's dispatcher for the bus of `key`, taken out of the list (a new one if
    /// there is none, or if an access up this thread's stack is using it).
    fn take(&mut self, key: &Key, bus: &Bus<D>) -> Box<BusVcpu<D>> {
        if let Some(e) = self.entries.iter_mut().find(|e| e.id == key.id) {
            if let Some(vcpu) = e.vcpu.take() {
                return vcpu;
            }
            return Box::new(bus.vcpu());
        }
        self.entries.retain(|e| e.alive.strong_count() > 0);
        self.entries.push(Entry {
            id: key.id,
            alive: Arc::downgrade(&key.alive),
            vcpu: None,
        });
        Box::new(bus.vcpu())
    }

    /// Puts a dispatcher back after an access (dropped if the place is taken: it was one
    /// made for a nested access).
    fn put_back(&mut self, id: u64, vcpu: Box<BusVcpu<D>>) {
        if let Some(e) = self.entries.iter_mut().find(|e| e.id == id) {
            if e.vcpu.is_none() {
                e.vcpu = Some(vcpu);
            }
        }
    }
}

/// Puts the dispatcher back into the thread's list when the access returns or unwinds.
struct PutBack<D: ?Sized + Send + Sync + 'static> {
    list: &'static LocalKey<RefCell<Vcpus<D>>>,
    id: u64,
    vcpu: Option<Box<BusVcpu<D>>>,
}

impl<D: ?Sized + Send + Sync + 'static> Drop for PutBack<D> {
    fn drop(&mut self) {
        if let Some(vcpu) = self.vcpu.take() {
            // During the thread's exit the list may be gone: the dispatcher is dropped then.
            let _ = self.list.try_with(|l| match l.try_borrow_mut() {
                Ok(mut l) => l.put_back(self.id, vcpu),
                Err(_) => drop(vcpu),
            });
        }
    }
}

/// Runs `f` with this thread's dispatcher for `bus` (see the module docs).
#[inline]
pub(crate) fn with<D: ?Sized + Send + Sync + 'static, T>(
    list: &'static LocalKey<RefCell<Vcpus<D>>>,
    key: &Key,
    bus: &Bus<D>,
    f: impl FnOnce(&mut BusVcpu<D>) -> T,
) -> T {
    let vcpu = list
        .try_with(|l| match l.try_borrow_mut() {
            Ok(mut l) => l.take(key, bus),
            // Only `take` and `put_back` borrow the list, and neither calls out: not reached;
            // a dispatcher of its own would do.
            Err(_) => Box::new(bus.vcpu()),
        })
        // The thread is exiting and its list is gone: a dispatcher for this access alone.
        .unwrap_or_else(|_| Box::new(bus.vcpu()));
    let mut guard = PutBack {
        list,
        id: key.id,
        vcpu: Some(vcpu),
    };
    match guard.vcpu.as_mut() {
        Some(vcpu) => f(vcpu),
        None => unreachable!("set just above"),
    }
}
