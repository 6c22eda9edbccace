//! The writer: the working mapping and the copy-on-write rebuild at commit.
//!
//! The writer keeps the current mapping as a `BTreeMap` of pieces (start -> end, section,
//! slot). Transaction calls edit it directly and log how to undo each edit; they also record
//! the byte ranges they touched ("dirty"). `commit` then rebuilds the tree only inside the
//! dirty ranges, reusing every old subtree outside them, and publishes the new root.
//!
//! Why the rebuild may stop at a clean subtree: an unchanged piece never overlaps a dirty
//! range (dirty ranges are the full extents of removed and added pieces, and pieces never
//! overlap), so a span with no dirty byte holds the same pieces as before, and its canonical
//! subtree is the old one.

use crate::arena::{Piece, Retired, SlabAlloc, Storage, SubEntry};
use crate::bulk;
use crate::config::Geometry;
use crate::publish::{Graveyard, Version};
use crate::sync::Arc;
use crate::tree::{self, Entry, Kind};
use crate::Error;
use std::collections::BTreeMap;

/// A piece of the working mapping (keyed by its start in the map).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PieceInfo {
    pub end: u64,
    pub origin: u64,
    pub section: u32,
    /// Piece slot once written to the arena; `None` for pieces made since the last commit.
    pub slot: Option<u32>,
}

/// Writer-only state, behind the writer lock.
pub(crate) struct WriterState<V> {
    pub geo: Geometry,
    pub storage: Arc<Storage<V>>,
    pub current: Arc<Version<V>>,
    /// Superseded versions waiting for their readers to go.
    pub graveyard: Graveyard<V>,
    pub map: BTreeMap<u64, PieceInfo>,
    /// Pieces per section slot.
    pub sec_refs: Vec<u32>,
    /// Whether a section slot has been part of a published generation.
    pub sec_published: Vec<bool>,
    pub nodes: SlabAlloc,
    pub pieces: SlabAlloc,
    pub subpages: SlabAlloc,
    pub sections: SlabAlloc,
    /// Rows in live sub-page tables.
    pub sub_rows: usize,
    /// Subtrees built from a sorted slice (the bulk path), since the map was created.
    pub bulk_builds: u64,
    /// Nodes whose children a bulk build made in parallel, since the map was created.
    pub parallel_builds: u64,
}

/// Gives the piece starting at `key` an arena slot, if it has none yet.
fn write_piece<V>(
    storage: &Storage<V>,
    pieces: &mut SlabAlloc,
    key: u64,
    info: &mut PieceInfo,
    cx: &mut Build,
) -> Result<u32, Error> {
    if let Some(slot) = info.slot {
        return Ok(slot);
    }
    let slot = pieces.alloc(&storage.pieces)?;
    // SAFETY: the section slot is allocated (it has pieces) and its chunk exists.
    let value = unsafe { storage.sections.cell(info.section, 0) } as *const _ as *const ();
    let piece = Piece {
        start: key,
        end: info.end,
        origin: info.origin,
        section: info.section,
        value,
    };
    // SAFETY: a freshly allocated slot is unreachable from every generation.
    unsafe { storage.pieces.cell(slot, 0).with_mut(|p| *p = piece) };
    info.slot = Some(slot);
    cx.fresh_pieces.push(slot);
    Ok(slot)
}

/// Bytes one node costs: its entries and its base page.
pub(crate) fn node_bytes(fanout: usize) -> usize {
    fanout * 4 + 8
}

impl<V> WriterState<V> {
    pub(crate) fn new(
        geo: Geometry,
        storage: Arc<Storage<V>>,
        current: Arc<Version<V>>,
        max_nodes: usize,
        max_pieces: usize,
    ) -> Self {
        WriterState {
            geo,
            storage,
            current,
            graveyard: Graveyard::new(),
            map: BTreeMap::new(),
            sec_refs: Vec::new(),
            sec_published: Vec::new(),
            nodes: SlabAlloc::new(max_nodes, "nodes"),
            pieces: SlabAlloc::new(max_pieces, "pieces"),
            subpages: SlabAlloc::new(max_pieces, "sub-page tables"),
            sections: SlabAlloc::new(max_pieces, "sections"),
            sub_rows: 0,
            bulk_builds: 0,
            parallel_builds: 0,
        }
    }

    /// Returns to the free lists every slot that no generation can reach any more, then
    /// drops the values of the freed sections here, on the writer's thread. Every slot is
    /// freed before the first value is dropped, so a panicking `Drop` leaks nothing and
    /// leaves the writer consistent (see `drops.rs`).
    pub(crate) fn reclaim(&mut self) {
        let mut values = Vec::new();
        for batch in self.graveyard.collect() {
            for n in batch.nodes {
                self.nodes.free(n);
            }
            for p in batch.pieces {
                self.pieces.free(p);
            }
            for t in batch.subpages {
                self.free_subpage(t);
            }
            for s in batch.sections {
                values.extend(self.free_section(s));
            }
        }
        crate::drops::drop_all(values);
    }

    fn free_subpage(&mut self, t: u32) {
        // SAFETY: `t` is unreachable from every generation (reclaimed or never published),
        // and only the writer (us, under the lock) writes cells.
        let rows = unsafe {
            self.storage
                .subpages
                .cell(t, 0)
                .with_mut(|p| std::mem::take(&mut *p))
        };
        self.sub_rows -= rows.len();
        self.subpages.free(t);
    }

    /// Frees section slot `s` and hands back its value, for the caller to drop once its own
    /// bookkeeping is done (`drops::drop_all`): dropping runs user code that may panic.
    #[must_use]
    pub(crate) fn free_section(&mut self, s: u32) -> Option<V> {
        // SAFETY: as in `free_subpage`.
        let value = unsafe { self.storage.sections.cell(s, 0).with_mut(|p| (*p).take()) };
        self.sec_published[s as usize] = false;
        self.sections.free(s);
        value
    }

    /// Bytes held in the arena by live slots (including slots retired but still reachable
    /// from an older generation someone holds).
    pub(crate) fn live_bytes(&self) -> usize {
        self.nodes.live * node_bytes(self.geo.fanout)
            + self.pieces.live * std::mem::size_of::<Piece>()
            + self.subpages.live * std::mem::size_of::<crate::arena::Subpage>()
            + self.sub_rows * std::mem::size_of::<SubEntry>()
            + self.sections.live * std::mem::size_of::<Option<V>>()
    }

    /// 0, 1 (with its key) or more pieces overlap `[s, e]`.
    fn count(&self, s: u64, e: u64) -> Count {
        let mut it = self.map.range(..=e).rev();
        match it.next() {
            Some((&k, info)) if info.end >= s => match it.next() {
                Some((_, prev)) if prev.end >= s => Count::Many,
                _ => Count::One(k),
            },
            _ => Count::Zero,
        }
    }

    /// Makes sure the piece starting at `key` has an arena slot.
    fn materialize(&mut self, key: u64, cx: &mut Build) -> Result<u32, Error> {
        let info = self.map.get_mut(&key).expect("materialize: piece exists");
        write_piece(&self.storage, &mut self.pieces, key, info, cx)
    }

    /// The canonical entry for the span of height `h` at page `base`, given that the old
    /// canonical entry for it was `old` and `dirty` lists the changed byte ranges inside it.
    pub(crate) fn rebuild(
        &mut self,
        old: Entry,
        h: u32,
        base: u64,
        dirty: &[(u64, u64)],
        cx: &mut Build,
    ) -> Result<Entry, Error> {
        if dirty.is_empty() {
            return Ok(old);
        }
        let (s, e) = self.geo.span(h, base);
        if h > 0 && dirty.len() == 1 && dirty[0].0 <= s && e <= dirty[0].1 {
            if let Some(new) = self.rebuild_bulk(old, h, base, s, e, cx)? {
                return Ok(new);
            }
        }
        let new = match self.count(s, e) {
            Count::Zero => Entry::EMPTY,
            Count::One(key) => Entry::leaf(self.materialize(key, cx)?),
            Count::Many if h == 0 => return self.rebuild_subpage(old, s, e, cx),
            Count::Many => return self.rebuild_node(old, h, base, dirty, cx),
        };
        if new != old {
            self.retire_subtree(old, cx);
        }
        Ok(new)
    }

    /// A span that lies wholly inside one changed range holds only pieces made by this
    /// transaction: when there are many, build its subtree from a sorted slice of them
    /// (in parallel above a threshold, see `bulk`) instead of querying the map span by span.
    fn rebuild_bulk(
        &mut self,
        old: Entry,
        h: u32,
        base: u64,
        s: u64,
        e: u64,
        cx: &mut Build,
    ) -> Result<Option<Entry>, Error> {
        // The pieces overlapping the span form a run ending at the last one starting <= e.
        let first = match self.map.range(..=e).rev().nth(bulk::BULK_MIN - 1) {
            Some((_, info)) if info.end >= s => {
                // At least BULK_MIN pieces: find where the run starts.
                match self.map.range(..=s).next_back() {
                    Some((&k, info)) if info.end >= s => k,
                    _ => s,
                }
            }
            _ => return Ok(None),
        };
        let mut pieces = Vec::new();
        for (&k, info) in self.map.range_mut(first..=e) {
            let slot = write_piece(&self.storage, &mut self.pieces, k, info, cx)?;
            pieces.push(bulk::SlicePiece {
                start: k,
                end: info.end,
                slot,
            });
        }
        let geo = self.geo;
        let new = bulk::build(&geo, &mut bulk::ArenaSink { w: self, cx }, h, base, &pieces)?;
        self.retire_subtree(old, cx);
        self.bulk_builds += 1;
        Ok(Some(new))
    }

    fn rebuild_subpage(
        &mut self,
        old: Entry,
        s: u64,
        e: u64,
        cx: &mut Build,
    ) -> Result<Entry, Error> {
        let keys: Vec<u64> = {
            let mut k: Vec<u64> = self
                .map
                .range(..=e)
                .rev()
                .take_while(|(_, i)| i.end >= s)
                .map(|(&k, _)| k)
                .collect();
            k.reverse();
            k
        };
        let mut rows = Vec::with_capacity(keys.len());
        for k in keys {
            rows.push(SubEntry {
                start: k.max(s),
                piece: self.materialize(k, cx)?,
            });
        }
        if let Kind::Subpage(t) = old.kind() {
            // SAFETY: `old` is reachable from the current generation, which the writer holds.
            if unsafe { self.storage.subpage(t) } == &rows[..] {
                return Ok(old);
            }
        }
        let new = self.alloc_subpage(rows, cx)?;
        self.retire_subtree(old, cx);
        Ok(new)
    }

    /// Writes a new sub-page table.
    pub(crate) fn alloc_subpage(
        &mut self,
        rows: Vec<SubEntry>,
        cx: &mut Build,
    ) -> Result<Entry, Error> {
        let t = self.subpages.alloc(&self.storage.subpages)?;
        self.sub_rows += rows.len();
        let boxed = rows.into_boxed_slice();
        // SAFETY: freshly allocated, unreachable.
        unsafe { self.storage.subpages.cell(t, 0).with_mut(|p| *p = boxed) };
        cx.fresh_subpages.push(t);
        Ok(Entry::subpage(t))
    }

    fn rebuild_node(
        &mut self,
        old: Entry,
        h: u32,
        base: u64,
        dirty: &[(u64, u64)],
        cx: &mut Build,
    ) -> Result<Entry, Error> {
        let n = self.geo.children_in_space(h, base);
        let child_pages = self.geo.entry_pages(h - 1);
        let expanded = match old.kind() {
            Kind::Node { height, index } if height == h => Some(index),
            _ => None,
        };
        // The old canonical children, filled by ranges rather than child by child: a commit
        // touches few children of a 512-entry node.
        // SAFETY: `old` is reachable from the current generation, which the writer holds.
        let mut kids = unsafe { tree::children(&self.storage, &self.geo, old, h, base) };
        // Rebuild only the children the dirty ranges touch.
        let page_bits = self.geo.page_bits;
        let child_of = |addr: u64| -> usize {
            let page = (addr >> page_bits) as u128;
            (page.saturating_sub(base as u128) / child_pages).min(n as u128 - 1) as usize
        };
        let mut next = 0; // first child not rebuilt yet
        for &(ds, de) in dirty {
            let first = child_of(ds).max(next);
            let last = child_of(de);
            for (i, kid) in kids.iter_mut().enumerate().take(last + 1).skip(first) {
                let cb = (base as u128 + i as u128 * child_pages) as u64;
                let (cs, ce) = self.geo.span(h - 1, cb);
                let lo = dirty.partition_point(|r| r.1 < cs);
                let hi = lo + dirty[lo..].partition_point(|r| r.0 <= ce);
                *kid = self.rebuild(*kid, h - 1, cb, &dirty[lo..hi], cx)?;
            }
            next = next.max(last + 1);
        }
        let mut nonempty = kids.iter().filter(|k| !k.is_empty());
        let first = *nonempty
            .next()
            .expect("a span with two pieces has a non-empty child");
        let new = if nonempty.next().is_none() {
            // Path compression: a single non-empty child stands for the whole span.
            first
        } else if expanded.is_some_and(|idx| self.node_is(idx, &kids)) {
            old
        } else {
            self.alloc_node(h, base, &kids, cx)?
        };
        if let Some(idx) = expanded {
            if new != old {
                cx.retired.nodes.push(idx);
            }
        }
        Ok(new)
    }

    fn node_is(&self, index: u32, kids: &[Entry]) -> bool {
        // SAFETY: reachable from the current generation.
        kids.iter()
            .zip(unsafe { self.storage.node_entries(index) })
            .all(|(k, e)| e == k.0)
    }

    pub(crate) fn alloc_node(
        &mut self,
        h: u32,
        base: u64,
        kids: &[Entry],
        cx: &mut Build,
    ) -> Result<Entry, Error> {
        let n = self.nodes.alloc(&self.storage.nodes)?;
        self.storage.node_base.ensure(n);
        // SAFETY: freshly allocated, unreachable from every generation; only we write.
        unsafe {
            for (cell, k) in self.storage.nodes.cells(n).iter().zip(kids) {
                cell.with_mut(|p| *p = k.0);
            }
            self.storage.node_base.cell(n, 0).with_mut(|p| *p = base);
        }
        cx.fresh_nodes.push(n);
        Ok(Entry::node(h, n))
    }

    /// Retires every node and sub-page table under `e` (an entry of the current generation).
    fn retire_subtree(&self, e: Entry, cx: &mut Build) {
        match e.kind() {
            Kind::Empty | Kind::Leaf(_) => {}
            Kind::Subpage(t) => cx.retired.subpages.push(t),
            Kind::Node { index, .. } => {
                cx.retired.nodes.push(index);
                // SAFETY: reachable from the current generation.
                for c in unsafe { self.storage.node_entries(index) } {
                    self.retire_subtree(Entry(c), cx);
                }
            }
        }
    }

    /// Frees what a failed rebuild allocated.
    pub(crate) fn undo_build(&mut self, cx: Build) {
        for n in cx.fresh_nodes {
            self.nodes.free(n);
        }
        for t in cx.fresh_subpages {
            self.free_subpage(t);
        }
        for p in cx.fresh_pieces {
            self.pieces.free(p);
        }
    }
}

enum Count {
    Zero,
    One(u64),
    Many,
}

/// What one rebuild allocated and retired.
#[derive(Default)]
pub(crate) struct Build {
    pub retired: Retired,
    fresh_nodes: Vec<u32>,
    fresh_subpages: Vec<u32>,
    fresh_pieces: Vec<u32>,
}
