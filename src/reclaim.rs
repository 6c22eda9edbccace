//! Reclamation: when the slots a commit retired may be reused.
//!
//! Each commit publishes a new [`Version`] with a single pointer store. The superseded version
//! goes, with the slots the new tree no longer uses ("retired by its successor"), to the back
//! of the writer's [`Graveyard`]:
//!
//! ```text
//!   graveyard (oldest first):  (v1, R1) (v2, R2) (v3, R3)      published: v4
//! ```
//!
//! `Ri` holds slots reachable from `vi` (and maybe older versions) but not from `vi+1`. The
//! writer frees `Ri` (and drops `vi`) only when `vi` is at the front (every older version is
//! already gone), no [`Reader`](crate::Reader) may still read generation `i` (every online
//! reader announced a newer one: `qsbr.rs`, I8), and the graveyard's reference to `vi` is the
//! last one (`Arc::try_unwrap` succeeds: no [`Snapshot`](crate::Snapshot) holds it). Then
//! nothing can reach `Ri` (I4).
//!
//! Readers never touch a count (they announce a generation in their own slot); snapshot
//! holders only ever decrement one. Neither runs reclamation code, allocates, frees or drops
//! a value: the writer does all of it.

use crate::entry::Entry;
use crate::sync::Arc;
use crate::version::Version;
use std::collections::VecDeque;

/// Slots retired by one commit: reachable from the generation before it, not from it.
#[derive(Debug, Default)]
pub(crate) struct Retired {
    pub nodes: Vec<u32>,
    pub tables: Vec<Entry>,
    pub pieces: Vec<u32>,
    pub sections: Vec<u32>,
}

/// Superseded versions, oldest first, each with the slots its successor retired.
/// Writer only (it lives in the writer, behind the writer lock).
pub(crate) struct Graveyard<V> {
    queue: VecDeque<(Arc<Version<V>>, Retired)>,
}

impl<V> Graveyard<V> {
    pub(crate) fn new() -> Self {
        Graveyard {
            queue: VecDeque::new(),
        }
    }

    /// Takes the superseded `version` and the slots its successor no longer uses. Every
    /// version goes through here, even with nothing retired, to keep the order.
    pub(crate) fn bury(&mut self, version: Arc<Version<V>>, retired: Retired) {
        self.queue.push_back((version, retired));
    }

    /// The retired slots of the oldest versions that no reader may still read (their
    /// generation is older than `oldest_in_use`) and nobody but the graveyard holds any
    /// more, in order, stopping at the first version still in use.
    pub(crate) fn collect(&mut self, oldest_in_use: u64) -> Vec<Retired> {
        let mut out = Vec::new();
        while let Some((version, retired)) = self.queue.pop_front() {
            if version.generation >= oldest_in_use {
                // A reader announced this generation, or an older one (I8).
                self.queue.push_front((version, retired));
                break;
            }
            // `try_unwrap` succeeds only if ours is the last reference. Its compare-exchange
            // is followed by an Acquire fence, pairing with the Release decrement of every
            // other holder (`Arc::drop`): every read any reader or snapshot made through this
            // version happens-before the writer reuses its slots (I4).
            match Arc::try_unwrap(version) {
                Ok(_gone) => out.push(retired),
                Err(held) => {
                    self.queue.push_front((held, retired));
                    break;
                }
            }
        }
        out
    }

    /// Superseded versions still waiting (held by someone, or behind one that is).
    pub(crate) fn len(&self) -> usize {
        self.queue.len()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::arena::Storage;
    use crate::config::Config;
    use crate::entry::Entry;

    fn version(g: u64, storage: &Arc<Storage<u8>>) -> Arc<Version<u8>> {
        let geo = Config::default().geometry().unwrap();
        let arrays = crate::arena::Arena::new(512, 10, 10).arrays();
        Arc::new(Version::new(g, Entry::EMPTY, arrays, storage.clone(), geo))
    }

    fn retired(n: u32) -> Retired {
        Retired {
            nodes: vec![n],
            ..Default::default()
        }
    }

    #[test]
    fn garbage_is_freed_in_order_once_unheld() {
        let storage = Arc::new(Storage::new());
        let mut g = Graveyard::new();
        let v1 = version(1, &storage);
        let v2 = version(2, &storage);
        let v3 = version(3, &storage);
        let held1 = v1.clone();
        let held3 = v3.clone();
        g.bury(v1, retired(1));
        g.bury(v2, retired(2));
        g.bury(v3, retired(3));
        // v1 is held: nothing may be freed, not even v2's garbage (v1 may reach it).
        assert!(g.collect(u64::MAX).is_empty());
        assert_eq!(g.len(), 3);
        drop(held1);
        // A reader announced generation 2: v2 and later stay.
        let freed: Vec<u32> = g.collect(2).into_iter().flat_map(|r| r.nodes).collect();
        assert_eq!(freed, vec![1]);
        let freed: Vec<u32> = g
            .collect(u64::MAX)
            .into_iter()
            .flat_map(|r| r.nodes)
            .collect();
        assert_eq!(freed, vec![2], "stops at v3, still held");
        drop(held3);
        let freed: Vec<u32> = g
            .collect(u64::MAX)
            .into_iter()
            .flat_map(|r| r.nodes)
            .collect();
        assert_eq!(freed, vec![3]);
        assert_eq!(g.len(), 0);
    }
}
