//! Publication and reclamation: generations, and when their garbage may be reused.
//!
//! Each commit publishes a new [`Version`] (one immutable tree root) with a single pointer
//! swap in the [`Publisher`](crate::sync::Publisher). Before that swap the writer links the
//! previous version to the new one and hands it the slots the new tree no longer uses
//! ("retired by the successor"):
//!
//! ```text
//!   v1 --next--> v2 --next--> v3 (published)
//!   retired: R1   retired: R2
//! ```
//!
//! `Ri` holds slots reachable from `vi` (and maybe older versions) but not from `vi+1`. A
//! version holds a strong reference to its successor, so `vi` can only be dropped after every
//! older version is gone. When `vi` drops, no snapshot or reader of any generation `<= i`
//! exists any more, so nothing can reach `Ri`: it is pushed on the storage's hand-back stack,
//! from which the writer reuses the slots. This is a reference-counted grace period: a reader
//! that holds a snapshot for an hour pins the garbage of the commits made in that hour and
//! nothing else, and reading costs no shared write (the counted reference is taken only when a
//! reader refreshes its cached snapshot).

use crate::arena::{Retired, Storage};
use crate::config::Geometry;
use crate::sync::{Arc, Mutex};
use crate::tree::Entry;

/// One published generation: an immutable root plus its place in the reclamation chain.
pub(crate) struct Version<V> {
    pub generation: u64,
    pub root: Entry,
    pub storage: Arc<Storage<V>>,
    /// Copy of the map's geometry, next to the root: the lookup reads both at once.
    pub geo: Geometry,
    /// Set once, by the writer, just before the successor is published.
    link: Mutex<Option<(Retired, Arc<Version<V>>)>>,
}

impl<V> Version<V> {
    pub(crate) fn new(
        generation: u64,
        root: Entry,
        storage: Arc<Storage<V>>,
        geo: Geometry,
    ) -> Self {
        Version {
            generation,
            root,
            storage,
            geo,
            link: Mutex::new(None),
        }
    }

    /// Links this (current) version to its successor. Writer only, before publishing `next`.
    pub(crate) fn link(&self, retired: Retired, next: Arc<Version<V>>) {
        let mut slot = self.link.lock();
        debug_assert!(slot.is_none(), "a version is superseded once");
        *slot = Some((retired, next));
    }
}

impl<V> Drop for Version<V> {
    fn drop(&mut self) {
        // We run after the last strong reference went away: Arc's final decrement is an
        // AcqRel/Acquire, so every access any holder made through this version happens-before
        // this point. Walk the chain iteratively so that dropping an old snapshot after 10^6
        // commits does not recurse 10^6 frames deep.
        let mut link = self.link.lock().take();
        while let Some((retired, next)) = link {
            if !retired.is_empty() {
                self.storage.push_freed(retired);
            }
            match Arc::try_unwrap(next) {
                // We held the last reference to the successor: it is gone as well, so its own
                // retired slots are free too. Its Drop then finds an empty link.
                Ok(successor) => link = successor.link.lock().take(),
                // Someone else still holds it; they will continue the chain.
                Err(_still_shared) => break,
            }
        }
    }
}
