//! The write side: [`Writer`] owns every piece of mutable state behind the writer lock (the
//! working mapping, the section lifecycle, the slot allocators, the current version and the
//! graveyard) and runs a commit end to end in one function, [`Writer::commit`], which reads
//! as the protocol.
//!
//! - `edit.rs`: the edits a transaction makes to the working mapping (`insert`, `overwrite`,
//!   `remove`, `extend`, `extend_shared`), each logged in a [`Log`] so that it can be undone;
//! - `rebuild.rs`: the copy-on-write rebuild of the tree inside the changed ranges (and the
//!   writer's [`Sink`](crate::bulk::Sink) for the bulk builder);
//! - `state.rs`: the state (the [`Writer`]'s fields, the working mapping's pieces, the
//!   section lifecycle, the slots' births);
//! - here: the commit and rollback protocols, reclamation and accounting.
//!
//! The working mapping is a `BTreeMap` of pieces (start -> end, origin, section, slot).
//! Transaction calls edit it directly and log how to undo each edit and which byte ranges
//! they touched ("dirty"). `commit` rebuilds the tree only inside the dirty ranges, reusing
//! every old subtree outside them, and publishes the new root.

mod edit;
mod rebuild;
mod state;

use crate::arena::{Arena, Counts, StorageWriter};
use crate::config::Geometry;
use crate::drops::drop_all;
use crate::memory::Memory;
use crate::qsbr::Registry;
use crate::reclaim::{Dead, Graveyard, Slot};
use crate::sync::{Arc, Barrier, Publisher};
use crate::version::Version;
use crate::{Config, Error};
use std::collections::BTreeMap;

pub(crate) use edit::Log;
use rebuild::Build;
pub(crate) use state::Writer;
use state::{Births, Sections};

impl<V> Writer<V> {
    /// A writer for an empty map, with the publication point readers load from (holding
    /// generation 0, the empty tree).
    pub(crate) fn new(config: &Config) -> Result<(Self, Publisher<Version<V>>), Error> {
        let geo = config.geometry()?;
        let arena = Arena::new(geo.fanout, config.max_nodes, config.max_pieces);
        let storage = StorageWriter::new();
        let empty = crate::entry::Entry::EMPTY;
        let shared = storage.shared().clone();
        let current = Arc::new(Version::new(0, empty, arena.arrays(), shared, geo));
        let publisher = Publisher::new(current.clone(), 0);
        let writer = Writer {
            geo,
            arena,
            storage,
            current,
            graveyard: Graveyard::new(),
            births: Births::default(),
            announced: Vec::new(),
            covered: 0,
            uncovered_bytes: 0,
            free: Vec::new(),
            map: BTreeMap::new(),
            sections: Sections::new(config.max_pieces),
            bulk_builds: 0,
            parallel_builds: 0,
        };
        Ok((writer, publisher))
    }

    /// Bulk builds and parallel builds since the map was created (`PhysMap::build_counts`).
    #[cfg(feature = "test-hooks")]
    pub(crate) fn build_counts(&self) -> crate::memory::BuildCounts {
        crate::memory::BuildCounts {
            bulk: self.bulk_builds,
            parallel: self.parallel_builds,
        }
    }

    pub(crate) fn geo(&self) -> &Geometry {
        &self.geo
    }

    /// The generation transactions are based on.
    pub(crate) fn generation(&self) -> u64 {
        self.current.generation
    }

    /// Publishes everything `log` changed as one new generation through `publisher`: the
    /// publish protocol, end to end. On error (`CapacityExhausted` while rebuilding) nothing
    /// is published and every edit of `log` is undone.
    pub(crate) fn commit(
        &mut self,
        mut log: Log,
        publisher: &Publisher<Version<V>>,
    ) -> Result<u64, Error> {
        // 0. Nothing changed: nothing to publish, and no reader pays for a new generation.
        if log.is_empty() {
            return Ok(self.current.generation);
        }
        // 1. Rebuild. The new tree is built copy-on-write from the current one, only inside
        //    the byte ranges the transaction touched; every slot it writes is fresh or
        //    reclaimed, unreachable from any generation a reader may hold (I3), and born in
        //    the generation it publishes.
        let current = self.current.clone();
        let generation = current.generation + 1;
        let mut cx = Build::new(generation);
        let root = match self.rebuild_root(current.tree(), log.dirty(), &mut cx) {
            Ok(root) => root,
            Err(e) => {
                self.undo_build(cx);
                self.rollback(log);
                return Err(e);
            }
        };
        let mut dead = cx.into_dead();
        dead.extend(log.take_retired_pieces());
        // 2. Sections. One whose last piece went is retired with the tree's garbage if a
        //    published generation may reach it; if it never was published it is freed now,
        //    its value put aside to drop last. Sections made here are published from now on.
        let mut unseen = Vec::new();
        for s in log.take_emptied() {
            let i = s as usize;
            if self.sections.refs[i] == 0 {
                if self.sections.published[i] {
                    let born = self.sections.born[i];
                    let slot = Slot::Section(s);
                    dead.push(Dead { slot, born });
                } else {
                    unseen.extend(self.free_section(s));
                }
            }
        }
        for s in log.take_new_sections() {
            let i = s as usize;
            if self.sections.refs[i] > 0 {
                self.sections.published[i] = true;
                self.sections.born[i] = generation;
            }
        }
        // 3. Publish: one pointer store. Everything the new tree reaches was written (and
        //    its chunks made visible, I2) before this store, which readers acquire.
        let arrays = self.arena.arrays();
        let next = Version::new(
            generation,
            root,
            arrays,
            self.storage.shared().clone(),
            self.geo,
        );
        let next = Arc::new(next);
        publisher.store(next.clone(), generation);
        // 4. Bury: the superseded version goes to the graveyard with the slots the new tree
        //    stopped using; each is reused once no generation reaching it is pinned (I4).
        let superseded = std::mem::replace(&mut self.current, next);
        drop(current);
        self.uncovered_bytes += self.bytes_of(dead.iter().map(|d| d.slot));
        self.graveyard.bury(superseded, generation, &dead);
        // 5. User code last: a panicking `Drop` finds the commit complete and the writer
        //    consistent (`drops.rs`).
        drop_all(unseen);
        Ok(generation)
    }

    /// Undoes every edit of `log` (the transaction is dropped, or its commit failed), then
    /// drops the values of the sections it made, once every slot is back (`drops.rs`).
    pub(crate) fn rollback(&mut self, log: Log) {
        let new_sections = self.undo(log);
        let mut values = Vec::new();
        for s in new_sections {
            values.extend(self.free_section(s));
        }
        drop_all(values);
    }

    /// Returns to the free lists every slot that no generation anyone can read reaches any
    /// more (no snapshot holds, and no online reader of `readers` announces, a generation
    /// in its interval: I4, I8), then drops the values of the freed sections, on the
    /// writer's thread. Every slot is freed before the first value is dropped, so a
    /// panicking `Drop` leaks nothing and leaves the writer consistent (`drops.rs`).
    ///
    /// What commits retired since the last covering reading of the announcements is judged
    /// only by a reading after a writer barrier (`qsbr.rs`). With the fence, the barrier is
    /// issued every time; with membarrier (a system call interrupting every CPU that runs a
    /// reader), only when `exact` or when what waits for it exceeds what the map holds
    /// otherwise (and 32 KiB): the arena then holds at most twice what it must.
    pub(crate) fn reclaim(&mut self, readers: &Registry, exact: bool) {
        let live = self.live().bytes::<V>(self.geo.fanout);
        let worth = self.uncovered_bytes >= live.saturating_sub(self.uncovered_bytes).max(32 << 10);
        // Loom's models issue it at every other reclamation: freeing while readers run is
        // what they explore, and half the time with commits the last reading did not cover.
        let loom = cfg!(loom) && self.current.generation % 2 == 0;
        let barrier = exact || readers.barrier() == Barrier::Fence || worth || loom;
        if readers.announced(&mut self.announced, barrier) {
            self.covered = self.current.generation;
            self.uncovered_bytes = 0;
        }
        let mut free = std::mem::take(&mut self.free);
        self.graveyard
            .collect(&self.announced, self.covered, &mut free);
        let mut values = Vec::new();
        for slot in free.drain(..) {
            match slot {
                Slot::Node(n) => self.arena.free_node(n),
                Slot::Piece(p) => self.arena.free_piece(p),
                Slot::Table(t) => self.arena.free_table(t),
                Slot::Section(s) => values.extend(self.free_section(s)),
            }
        }
        self.free = free;
        drop_all(values);
    }

    /// A new section holding `value`, or `CapacityExhausted` (the value is dropped).
    fn new_section(&mut self, value: V) -> Result<u32, Error> {
        let s = self.sections.alloc.alloc()?;
        self.storage.ensure_section(s);
        // SAFETY: freshly allocated: unreachable from every generation (I3, I6).
        unsafe { self.storage.write_section(s, value) };
        let i = s as usize;
        if self.sections.refs.len() <= i {
            self.sections.refs.resize(i + 1, 0);
            self.sections.published.resize(i + 1, false);
            self.sections.shared.resize(i + 1, false);
            self.sections.born.resize(i + 1, 0);
        }
        self.sections.refs[i] = 0;
        self.sections.published[i] = false;
        self.sections.shared[i] = false;
        self.sections.born[i] = 0;
        Ok(s)
    }

    /// Frees section slot `s` and hands back its value, for the caller to drop once its own
    /// bookkeeping is done (`drops::drop_all`): dropping runs user code that may panic.
    #[must_use]
    fn free_section(&mut self, s: u32) -> Option<V> {
        // SAFETY: `s` is unreachable from every generation anyone can read (reclaimed, or
        // never published), and we are the writer (I3, I4, I6).
        let value = unsafe { self.storage.take_section(s) };
        self.sections.published[s as usize] = false;
        self.sections.alloc.free(s);
        value
    }

    /// What the arena holds, after reclaiming what nobody can reach any more.
    pub(crate) fn memory(&mut self, readers: &Registry) -> Memory {
        self.reclaim(readers, true);
        let counts = self.live();
        Memory {
            live_bytes: counts.bytes::<V>(self.geo.fanout),
            nodes: counts.nodes,
            pieces: counts.pieces + counts.records,
            page_records: counts.records,
            flat_nodes: counts.flats,
            subpage_tables: counts.tables,
            sections: counts.sections,
            pinned_generations: self.graveyard.pinned_generations(),
            pinned_bytes: self.bytes_of(self.graveyard.waiting()),
            reserved_node_bytes: self.arena.reserved_node_bytes(),
        }
    }

    /// The slots in use.
    fn live(&self) -> Counts {
        Counts {
            sections: self.sections.alloc.live(),
            ..self.arena.live()
        }
    }

    /// What `slots` take, counted like [`Memory::live_bytes`].
    fn bytes_of(&self, slots: impl Iterator<Item = Slot>) -> usize {
        let mut c = Counts::default();
        for slot in slots {
            match slot {
                Slot::Node(_) => c.nodes += 1,
                Slot::Table(e) => {
                    *if e.is_flat() {
                        &mut c.flats
                    } else {
                        &mut c.tables
                    } += 1;
                    c.table_bytes += Arena::block_bytes(e);
                }
                Slot::Piece(p) if p & crate::entry::RECORD != 0 => c.records += 1,
                Slot::Piece(_) => c.pieces += 1,
                Slot::Section(_) => c.sections += 1,
            }
        }
        c.bytes::<V>(self.geo.fanout)
    }
}
