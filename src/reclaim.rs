//! Reclamation: when a retired slot may be reused (interval-based reclamation).
//!
//! Every slot of the arena (node, flat node, sub-page table, piece, page record, section)
//! is *born* in the generation whose commit first made it reachable, and *retired* by the
//! commit that published the first generation no longer reaching it. A tree is immutable
//! once published (I3) and a slot is reachable from one generation only if it is from
//! every generation in between, so a slot born in `b` and retired by `r` is reachable from
//! exactly the generations `b..r`. It may be reused as soon as none of those generations is
//! *pinned*: held by a [`Snapshot`](crate::Snapshot) (a counted reference to its
//! [`Version`]) or announced by an online [`Reader`](crate::Reader) (`qsbr.rs`, I8). A
//! superseded version itself (its header and the arrays it holds) is the slot of one
//! generation, `g..g + 1`.
//!
//! So whatever is pinned, the arena holds the newest tree plus, for each pinned generation,
//! what its own tree reaches: a snapshot held for an hour, or a reader idle online, costs at
//! most one tree, not everything committed since (where grace-period schemes, QEMU's RCU or
//! KVM's SRCU, keep it all). Wen et al., "Interval-based memory reclamation" (PPoPP 2018).
//!
//! The writer keeps what it cannot free yet filed under one pinned generation inside its
//! interval (the oldest: snapshots are the long-lived pins). At each reclamation it reads
//! the pins afresh and looks again only at what is filed under a generation no longer
//! pinned, and at what commits retired since: the work follows the change and the number
//! of pinned generations, not the history.
//!
//! Readers never touch a count (they announce a generation in their own slot); snapshot
//! holders only ever decrement one. Neither runs reclamation code, allocates, frees or drops
//! a value: the writer does all of it.

use crate::entry::Entry;
use crate::sync::Arc;
use crate::version::Version;
use std::collections::BTreeMap;

/// A slot of the arena, as reclamation sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Slot {
    /// A node, by the unit offset its entries carry.
    Node(u32),
    /// A sub-page table or flat node, by its entry.
    Table(Entry),
    /// A piece or page record, by its piece id.
    Piece(u32),
    /// A section slot.
    Section(u32),
}

/// A slot retired by a commit, with the generation it was born in.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Dead {
    pub slot: Slot,
    pub born: u64,
}

/// A dead slot waiting: reachable from generations `born..retired`.
#[derive(Debug, Clone, Copy)]
struct Waiting {
    slot: Slot,
    born: u64,
    retired: u64,
}

/// Superseded versions and retired slots not yet freed. Writer only (it lives in the
/// writer, behind the writer lock).
pub(crate) struct Graveyard<V> {
    /// Superseded versions not yet dropped.
    versions: Vec<Arc<Version<V>>>,
    /// Slots retired since the last reclamation.
    incoming: Vec<Waiting>,
    /// Slots whose interval held a pinned generation at the last reclamation, filed under
    /// the oldest such generation.
    filed: BTreeMap<u64, Vec<Waiting>>,
    /// The generations pinned at the last reclamation (sorted).
    pins: Vec<u64>,
    /// Buffers kept for the next reclamation.
    scratch: Vec<u64>,
    refile: Vec<Waiting>,
}

impl<V> Graveyard<V> {
    pub(crate) fn new() -> Self {
        Graveyard {
            versions: Vec::new(),
            incoming: Vec::new(),
            filed: BTreeMap::new(),
            pins: Vec::new(),
            scratch: Vec::new(),
            refile: Vec::new(),
        }
    }

    /// Takes the version that generation `retired` superseded, and the slots it no longer
    /// reaches.
    pub(crate) fn bury(&mut self, version: Arc<Version<V>>, retired: u64, dead: &[Dead]) {
        debug_assert_eq!(version.generation + 1, retired);
        self.versions.push(version);
        self.incoming.extend(dead.iter().map(|d| Waiting {
            slot: d.slot,
            born: d.born,
            retired,
        }));
    }

    /// The slots no pinned generation reaches any more, given the generations the online
    /// readers announce (`announced`, sorted) in a reading that covers the publications up
    /// to generation `covered` (`qsbr.rs`: a writer barrier came after them), into `free`:
    /// what later commits retired waits for a reading that covers them. Drops the
    /// superseded versions nobody pins. The caller frees the slots. (Buffers are kept from
    /// call to call: the common commit retires a few slots, and allocating for them would
    /// cost more than judging them.)
    pub(crate) fn collect(&mut self, announced: &[u64], covered: u64, free: &mut Vec<Slot>) {
        free.clear();
        // 1. The pins: announced generations, and superseded versions still counted by a
        //    snapshot. `try_unwrap` succeeds only if ours is the last reference; its
        //    compare-exchange is followed by an Acquire fence, pairing with the Release
        //    decrement of every other holder (`Arc::drop`): every read a snapshot made
        //    through this version happens-before the writer reuses what it reached (I4). A
        //    superseded version gains no new holder: snapshots are taken of the newest one,
        //    or cloned from a holder.
        let mut pins = std::mem::take(&mut self.scratch);
        pins.clear();
        pins.extend_from_slice(announced);
        let mut i = 0;
        while i < self.versions.len() {
            let g = self.versions[i].generation;
            // A version is the slot of its one generation, retired by the next one.
            if g >= covered || announced.binary_search(&g).is_ok() {
                i += 1;
                continue;
            }
            match Arc::try_unwrap(self.versions.swap_remove(i)) {
                Ok(_gone) => {}
                Err(held) => {
                    pins.push(g);
                    self.versions.push(held);
                    let last = self.versions.len() - 1;
                    self.versions.swap(i, last);
                    i += 1;
                }
            }
        }
        pins.sort_unstable();
        pins.dedup();
        // 2. What commits retired since, then what was filed under a generation no longer
        //    pinned: filed again under another pin of its interval, or freed.
        let mut refile = std::mem::take(&mut self.refile);
        refile.clear();
        self.incoming.retain(|w| {
            let judge = w.retired <= covered;
            if judge {
                refile.push(*w);
            }
            !judge
        });
        for gone in self.pins.iter().filter(|g| pins.binary_search(g).is_err()) {
            refile.extend(self.filed.remove(gone).into_iter().flatten());
        }
        for w in refile.drain(..) {
            // The oldest pin not older than its birth; it holds `w` if `w` was not yet
            // retired then (I4: `w` is reachable from exactly `born..retired`).
            let i = pins.partition_point(|&p| p < w.born);
            match pins.get(i) {
                Some(&p) if p < w.retired => self.filed.entry(p).or_default().push(w),
                _ => free.push(w.slot),
            }
        }
        self.refile = refile;
        self.scratch = std::mem::replace(&mut self.pins, pins);
    }

    /// [`collect`](Graveyard::collect) with a reading that covers everything (tests).
    #[cfg(test)]
    fn collect_all(&mut self, announced: &[u64]) -> Vec<Slot> {
        let mut free = Vec::new();
        self.collect(announced, u64::MAX, &mut free);
        free
    }

    /// Superseded generations still pinned (held by a snapshot or announced by a reader),
    /// as of the last [`collect`](Graveyard::collect).
    pub(crate) fn pinned_generations(&self) -> usize {
        self.versions.len()
    }

    /// The retired slots still waiting for a pinned generation or a covering reading.
    pub(crate) fn waiting(&self) -> impl Iterator<Item = Slot> + '_ {
        let filed = self.filed.values().flatten();
        filed.chain(&self.incoming).map(|w| w.slot)
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::arena::Storage;
    use crate::config::Config;

    fn version(g: u64, storage: &Arc<Storage<u8>>) -> Arc<Version<u8>> {
        let geo = Config::default().geometry().unwrap();
        let arrays = crate::arena::Arena::new(512, 10, 10).arrays();
        Arc::new(Version::new(g, Entry::EMPTY, arrays, storage.clone(), geo))
    }

    fn node(n: u32, born: u64) -> Vec<Dead> {
        vec![Dead {
            slot: Slot::Node(n),
            born,
        }]
    }

    fn nodes(free: Vec<Slot>) -> Vec<u32> {
        let mut n: Vec<u32> = free
            .into_iter()
            .map(|s| match s {
                Slot::Node(n) => n,
                other => panic!("{other:?}"),
            })
            .collect();
        n.sort_unstable();
        n
    }

    /// Slot `n` born in generation `b` and retired by `r` (so reachable from `b..r`) is
    /// freed exactly when no pin lies in `b..r`, whatever is pinned outside it.
    #[test]
    fn a_slot_is_freed_once_no_pin_lies_in_its_interval() {
        let storage = crate::arena::StorageWriter::new().shared().clone();
        let mut g = Graveyard::new();
        let v1 = version(1, &storage);
        let held1 = v1.clone(); // a snapshot of generation 1
        g.bury(v1, 2, &node(10, 0)); // reachable from 0..2: held
        g.bury(version(2, &storage), 3, &node(20, 2)); // 2..3: free now
        g.bury(version(3, &storage), 4, &node(30, 1)); // 1..4: held by 1
        g.bury(version(4, &storage), 5, &node(40, 4)); // 4..5: announced below
        assert_eq!(nodes(g.collect_all(&[4])), vec![20]);
        assert_eq!(g.pinned_generations(), 2, "1 (snapshot) and 4 (reader)");
        assert_eq!(g.waiting().count(), 3);
        // The reader moves on: what only 4 reached goes, what 1 reaches stays.
        assert_eq!(nodes(g.collect_all(&[])), vec![40]);
        assert_eq!(g.pinned_generations(), 1);
        // The reader announces 1 while the snapshot goes: still held.
        drop(held1);
        assert!(g.collect_all(&[1]).is_empty());
        // Nothing pinned: the rest.
        assert_eq!(nodes(g.collect_all(&[])), vec![10, 30]);
        assert_eq!((g.pinned_generations(), g.waiting().count()), (0, 0));
    }

    /// The interval's ends: born in `b` means reachable from `b`; retired by `r` means not
    /// reachable from `r`.
    #[test]
    fn interval_ends() {
        let storage = crate::arena::StorageWriter::new().shared().clone();
        let mut g = Graveyard::new();
        g.bury(version(4, &storage), 5, &node(1, 3)); // 3..5
        assert!(
            g.collect_all(&[3]).is_empty(),
            "born in 3: generation 3 reaches it"
        );
        assert!(g.collect_all(&[4]).is_empty(), "generation 4 reaches it");
        assert_eq!(
            nodes(g.collect_all(&[5])),
            vec![1],
            "retired by 5: 5 does not reach it"
        );
        g.bury(version(5, &storage), 6, &node(2, 5)); // 5..6
        assert_eq!(
            nodes(g.collect_all(&[4, 6])),
            vec![2],
            "pins on both sides, none inside"
        );
    }
}
