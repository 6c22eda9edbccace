//! The writer's state: the working mapping's pieces, the section lifecycle, the births of
//! slots, and the [`Writer`] itself (its fields, for this module's children only).

use crate::arena::{Arena, Piece, SlabAlloc, StorageWriter};
use crate::config::Geometry;
use crate::reclaim::{Dead, Graveyard, Slot};
use crate::sync::Arc;
use crate::version::Version;
use std::collections::BTreeMap;

/// A piece of the working mapping (keyed by its start in the map). 32 bytes: a million
/// pieces are a million of these in the writer's `BTreeMap`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct PieceInfo {
    pub(super) end: u64,
    pub(super) origin: u64,
    pub(super) section: u32,
    /// Piece id once written to the arena (a piece slot, or a page record's: `entry::RECORD`);
    /// [`PieceInfo::UNWRITTEN`] for pieces made since the last commit.
    pub(super) id: u32,
    /// The generation whose commit wrote `id` (`reclaim.rs`).
    pub(super) born: u64,
}

const _: () = assert!(std::mem::size_of::<PieceInfo>() == 32);

impl PieceInfo {
    /// No piece id: piece ids are below 2^31 or carry `entry::RECORD` with a row offset
    /// below 2^25, never all ones.
    const UNWRITTEN: u32 = u32::MAX;

    /// A new piece `[start, end]` of `section`, whose origin is its start, not yet in the
    /// arena.
    pub(super) fn new(start: u64, end: u64, section: u32) -> Self {
        PieceInfo {
            end,
            origin: start,
            section,
            id: Self::UNWRITTEN,
            born: 0,
        }
    }

    /// Its piece id, once written to the arena.
    pub(super) fn slot(&self) -> Option<u32> {
        (self.id != Self::UNWRITTEN).then_some(self.id)
    }

    /// The same piece, not yet written (a part of a cut piece).
    pub(super) fn unwritten(self) -> Self {
        PieceInfo {
            id: Self::UNWRITTEN,
            ..self
        }
    }
}

/// The section lifecycle: which section slots exist, how many pieces of the working mapping
/// each has, and whether a published generation has seen it.
///
/// A section is made by `insert`/`overwrite`/`extend` (one per range) or `extend_shared` (one
/// for all its ranges): slot allocated, value written. When its last
/// piece goes, it is freed at commit, right away if no generation ever published it,
/// otherwise through the graveyard once no generation that reaches it is held (I4).
pub(super) struct Sections {
    pub(super) alloc: SlabAlloc,
    /// Pieces of the working mapping per section slot.
    pub(super) refs: Vec<u32>,
    /// Whether a section slot has been part of a published generation.
    pub(super) published: Vec<bool>,
    /// Whether a section was made by `insert_shared`: its one-page pieces are page records.
    pub(super) shared: Vec<bool>,
    /// The generation that first published each section slot (`reclaim.rs`).
    pub(super) born: Vec<u64>,
}

impl Sections {
    /// No sections yet, at most `limit` of them.
    pub(super) fn new(limit: usize) -> Self {
        Sections {
            alloc: SlabAlloc::new(limit, crate::Capacity::Sections),
            refs: Vec::new(),
            published: Vec::new(),
            shared: Vec::new(),
            born: Vec::new(),
        }
    }
}

/// The generation each node and each sub-page table or flat node was born in (written by
/// a commit): what reclamation needs to know of a slot besides when it was retired
/// (`reclaim.rs`). Pieces keep theirs in the working mapping, sections in [`Sections`].
#[derive(Default)]
pub(super) struct Births {
    /// By node slot ([`Arena::node_slot`]).
    nodes: Vec<u64>,
    /// By block ([`Arena::block_key`]).
    tables: Vec<u64>,
}

impl Births {
    fn set(v: &mut Vec<u64>, i: usize, g: u64) {
        if v.len() <= i {
            v.resize(i + 1, 0);
        }
        v[i] = g;
    }

    /// Node `unit` of `arena` is written by the commit of generation `g`.
    pub(super) fn node(&mut self, arena: &Arena, unit: u32, g: u64) {
        Self::set(&mut self.nodes, arena.node_slot(unit), g);
    }

    /// The table or flat node of entry `e` is written by the commit of generation `g`.
    pub(super) fn table(&mut self, e: crate::entry::Entry, g: u64) {
        Self::set(&mut self.tables, Arena::block_key(e), g);
    }

    /// Node `unit` of `arena`, retired: with its birth.
    pub(super) fn dead_node(&self, arena: &Arena, unit: u32) -> Dead {
        Dead {
            slot: Slot::Node(unit),
            born: self.nodes[arena.node_slot(unit)],
        }
    }

    /// The table or flat node of entry `e`, retired: with its birth.
    pub(super) fn dead_table(&self, e: crate::entry::Entry) -> Dead {
        Dead {
            slot: Slot::Table(e),
            born: self.tables[Arena::block_key(e)],
        }
    }
}

/// Writer-only state, behind the writer lock (I6). Every field is visible to `writer` and its
/// children only: the write side changes only through their methods.
pub(crate) struct Writer<V> {
    pub(super) geo: Geometry,
    /// Nodes, pieces and sub-page tables.
    pub(super) arena: Arena,
    /// Node base pages and section values.
    pub(super) storage: StorageWriter<V>,
    /// The newest published version.
    pub(super) current: Arc<Version<V>>,
    /// Superseded versions and retired slots waiting for the generations that reach them to
    /// be released.
    pub(super) graveyard: Graveyard<V>,
    pub(super) births: Births,
    /// The readers' announcements, read at each reclamation (kept for its buffer).
    pub(super) announced: Vec<u64>,
    /// The newest generation published before the last reading of the announcements that
    /// covers publications (`qsbr.rs`): what later commits retired waits for the next one.
    pub(super) covered: u64,
    /// Bytes retired since that reading.
    pub(super) uncovered_bytes: usize,
    /// The slots a reclamation frees (kept for its buffer).
    pub(super) free: Vec<Slot>,
    /// The working mapping.
    pub(super) map: BTreeMap<u64, PieceInfo>,
    pub(super) sections: Sections,
    /// Subtrees built from a sorted slice (the bulk path), since the map was created.
    pub(super) bulk_builds: u64,
    /// Nodes whose children a bulk build made in parallel, since the map was created.
    pub(super) parallel_builds: u64,
}

/// A piece record for the arena, from the working mapping.
pub(super) fn piece_record<V>(storage: &StorageWriter<V>, start: u64, info: &PieceInfo) -> Piece {
    Piece {
        start,
        end: info.end,
        origin: info.origin,
        section: storage.section_cell(info.section),
    }
}
