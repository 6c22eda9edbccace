//! The copy-on-write rebuild: the canonical tree of the working mapping, made from the
//! current tree by rebuilding only the spans that the transaction's dirty ranges touch.
//!
//! Why the rebuild may stop at a clean subtree: an unchanged piece never overlaps a dirty
//! range (dirty ranges are the full extents of removed and added pieces, and pieces never
//! overlap), so a span with no dirty byte holds the same pieces as before, and its canonical
//! subtree is the old one (I7).

use super::state::{piece_record, Births, PieceInfo, Writer};
use crate::arena::{Arena as Slots, StorageWriter, SubEntry};
use crate::bulk::{self, Sink, SlicePiece};
use crate::canon::{self, Run, Span};
use crate::config::Geometry;
use crate::entry::{Entry, Kind};
use crate::reclaim::Dead;
use crate::view::{TreeEntry, TreeRef};
use crate::Error;

/// What one rebuild allocated and retired.
pub(crate) struct Build {
    /// The generation being built: every slot written is born in it.
    generation: u64,
    dead: Vec<Dead>,
    fresh_nodes: Vec<u32>,
    fresh_tables: Vec<Entry>,
    fresh_pieces: Vec<u32>,
}

impl Build {
    /// A rebuild for generation `generation`.
    pub(crate) fn new(generation: u64) -> Self {
        Build {
            generation,
            dead: Vec::new(),
            fresh_nodes: Vec::new(),
            fresh_tables: Vec::new(),
            fresh_pieces: Vec::new(),
        }
    }

    /// The slots the new tree no longer uses, with their births (the pieces are the
    /// caller's to add).
    pub(crate) fn into_dead(self) -> Vec<Dead> {
        self.dead
    }
}

/// The writer's arena as a place to build into: nodes and tables, counted in `cx`.
struct Arena<'a, V> {
    geo: &'a Geometry,
    slots: &'a mut Slots,
    births: &'a mut Births,
    storage: &'a mut StorageWriter<V>,
    parallel_builds: &'a mut u64,
    cx: &'a mut Build,
}

impl<V> Sink for Arena<'_, V> {
    fn node(&mut self, h: u32, base: u64, kids: &[Entry]) -> Result<Entry, Error> {
        let unit = self.slots.new_node(kids)?;
        // SAFETY: freshly allocated: unreachable from every generation (I3, I6).
        unsafe { self.storage.write_node_base(unit, self.geo.fanout, base) };
        self.births.node(self.slots, unit, self.cx.generation);
        self.cx.fresh_nodes.push(unit);
        Ok(Entry::node(self.geo.shift(h), unit))
    }

    fn table(&mut self, rows: Vec<SubEntry>) -> Result<Entry, Error> {
        let page_bits = self.geo.page_bits;
        let page = rows[0].start >> page_bits;
        let in_page = |start: u64| (start - (page << page_bits)) as u32;
        let rows: Vec<(u32, u32)> = rows.iter().map(|r| (in_page(r.start), r.piece)).collect();
        let e = self.slots.alloc_table(page, &rows)?;
        self.births.table(e, self.cx.generation);
        self.cx.fresh_tables.push(e);
        Ok(e)
    }

    fn flat(&mut self, h: u32, base: u64, rows: Vec<(u64, Entry)>) -> Result<Entry, Error> {
        // Rows keep the low 32 bits of their first page: the span has at most 2^32 pages
        // (rule 3 of `canon.rs`), so they stay in order, and so does a lookup's key.
        let rows: Vec<(u32, u32)> = rows
            .iter()
            .map(|&(page, e)| (page as u32, crate::entry::as_words(&[e])[0]))
            .collect();
        let last = (self.geo.span(h, base).1 >> self.geo.page_bits) as u32;
        let e = self.slots.alloc_flat(base, last, &rows)?;
        self.births.table(e, self.cx.generation);
        self.cx.fresh_tables.push(e);
        Ok(e)
    }

    fn went_parallel(&mut self) {
        *self.parallel_builds += 1;
    }
}

/// A position of the rebuild: the span of height `h` at page `base`, whose canonical entry
/// in the old tree `tree` is `old`.
struct At<'g, V> {
    tree: TreeRef<'g, V>,
    old: TreeEntry<'g>,
    h: u32,
    base: u64,
}

impl<V> Clone for At<'_, V> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<V> Copy for At<'_, V> {}

impl<V> Writer<V> {
    fn arena<'a>(&'a mut self, cx: &'a mut Build) -> Arena<'a, V> {
        Arena {
            geo: &self.geo,
            slots: &mut self.arena,
            births: &mut self.births,
            storage: &mut self.storage,
            parallel_builds: &mut self.parallel_builds,
            cx,
        }
    }

    /// The new root: the whole space rebuilt from `tree` (the current tree) inside `dirty`.
    pub(super) fn rebuild_root<'g>(
        &mut self,
        tree: TreeRef<'g, V>,
        dirty: &[(u64, u64)],
        cx: &mut Build,
    ) -> Result<Entry, Error> {
        let at = At {
            tree,
            old: tree.root(),
            h: self.geo.height,
            base: 0,
        };
        self.rebuild(at, dirty, cx)
    }

    /// The canonical entry for the span of height `h` at page `base`, given that the old
    /// canonical entry for it was `old` and `dirty` lists the changed byte ranges inside it.
    fn rebuild(
        &mut self,
        at: At<'_, V>,
        dirty: &[(u64, u64)],
        cx: &mut Build,
    ) -> Result<Entry, Error> {
        let At { tree, old, h, base } = at;
        if dirty.is_empty() {
            return Ok(old.get());
        }
        let (s, e) = self.geo.span(h, base);
        if h > 0 && dirty.len() == 1 && dirty[0].0 <= s && e <= dirty[0].1 {
            if let Some(new) = self.rebuild_bulk(at, s, e, cx)? {
                return Ok(new);
            }
        }
        let (count, first) = self.count(s, e);
        let new = match Span::of(count, h) {
            Span::Empty => Entry::EMPTY,
            Span::Leaf => Entry::leaf(self.materialize(first, cx)?),
            Span::Table => return self.rebuild_table(at, cx),
            Span::Node => {
                if canon::may_be_flat(&self.geo, h, base) {
                    let mut keys = Vec::new();
                    let pieces = self.overlapping(s, e).inspect(|&(k, _)| keys.push(k));
                    if let Some(runs) = canon::flat_runs(&self.geo, h, base, pieces) {
                        return self.rebuild_flat(at, runs, &keys, cx);
                    }
                }
                if let Kind::Flat(..) = old.kind() {
                    // Its children are not nodes of their own: build the span afresh (the
                    // flat node held at most FLAT_MAX runs, so this is the transaction's work).
                    let first = self.overlapping(s, e).next().map_or(s, |p| p.0);
                    return self.build_from(at, first, e, cx);
                }
                return self.rebuild_node(at, dirty, cx);
            }
        };
        if new != old.get() {
            self.retire_subtree(tree, old, cx);
        }
        Ok(new)
    }

    /// The pieces overlapping `[s, e]`, in order, as `(start, end)`.
    fn overlapping(&self, s: u64, e: u64) -> impl Iterator<Item = (u64, u64)> + '_ {
        let first = match self.map.range(..s).next_back() {
            Some((&k, info)) if info.end >= s => k,
            _ => s,
        };
        self.map.range(first..=e).map(|(&k, info)| (k, info.end))
    }

    /// How many pieces overlap `[s, e]` (0, 1 or 2 for "more"), and the first one's key.
    fn count(&self, s: u64, e: u64) -> (usize, u64) {
        let mut it = self.map.range(..=e).rev();
        match it.next() {
            Some((&k, info)) if info.end >= s => match it.next() {
                Some((_, prev)) if prev.end >= s => (2, k),
                _ => (1, k),
            },
            _ => (0, s),
        }
    }

    /// A span that lies wholly inside one changed range holds only pieces made by this
    /// transaction: when there are many, build its subtree from a sorted slice of them
    /// (in parallel above a threshold, see `bulk`) instead of querying the map span by span.
    fn rebuild_bulk(
        &mut self,
        at: At<'_, V>,
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
        let new = self.build_from(at, first, e, cx)?;
        self.bulk_builds += 1;
        Ok(Some(new))
    }

    /// The span of height `h` at `base` built from the pieces starting at `first` up to its
    /// end `e` (the first overlaps it), replacing `old`.
    fn build_from(
        &mut self,
        at: At<'_, V>,
        first: u64,
        e: u64,
        cx: &mut Build,
    ) -> Result<Entry, Error> {
        let At { tree, old, h, base } = at;
        let keys: Vec<u64> = self.map.range(first..=e).map(|(&k, _)| k).collect();
        let mut pieces = Vec::with_capacity(keys.len());
        for k in keys {
            let slot = self.materialize(k, cx)?;
            let end = self.map[&k].end;
            pieces.push(SlicePiece {
                start: k,
                end,
                slot,
            });
        }
        let geo = self.geo;
        let new = bulk::build(&geo, &mut self.arena(cx), h, base, &pieces)?;
        self.retire_subtree(tree, old, cx);
        Ok(new)
    }

    /// A flat node of `runs` (rule 3) for the span of height `h` at page `base`, the pieces
    /// numbered as in `keys`; the old tables of unchanged pages are kept, and `old` itself if
    /// nothing changed.
    fn rebuild_flat(
        &mut self,
        at: At<'_, V>,
        runs: Vec<(u64, Run)>,
        keys: &[u64],
        cx: &mut Build,
    ) -> Result<Entry, Error> {
        let At { tree, old, h, base } = at;
        let mut rows = Vec::with_capacity(runs.len());
        let mut kept = Vec::new();
        for (page, run) in runs {
            let entry = match run {
                Run::Empty => Entry::EMPTY,
                Run::Piece(k) => Entry::leaf(self.materialize(keys[k], cx)?),
                Run::Page(r) => {
                    let first = page << self.geo.page_bits;
                    let sub = self.page_rows(&keys[r], first, cx)?;
                    match tree.table_under(old, first) {
                        Some(t) if tree.table_holds(t, &sub) => {
                            kept.push(t.get());
                            t.get()
                        }
                        _ => self.arena(cx).table(sub)?,
                    }
                }
            };
            rows.push((page, entry));
        }
        if tree.flat_holds(old, &rows) {
            return Ok(old.get());
        }
        let new = self.arena(cx).flat(h, base, rows)?;
        let mut inner = Vec::new();
        tree.inner_entries(old, &mut inner);
        inner.retain(|x| !kept.contains(x));
        self.retire(inner, cx);
        Ok(new)
    }

    /// The sub-page table of the one-page span at `at` (several pieces in one page).
    fn rebuild_table(&mut self, at: At<'_, V>, cx: &mut Build) -> Result<Entry, Error> {
        let At { tree, old, h, base } = at;
        let (s, e) = self.geo.span(h, base);
        let keys: Vec<u64> = self.overlapping(s, e).map(|(k, _)| k).collect();
        let rows = self.page_rows(&keys, s, cx)?;
        if tree.table_holds(old, &rows) {
            return Ok(old.get());
        }
        let new = self.arena(cx).table(rows)?;
        self.retire_subtree(tree, old, cx);
        Ok(new)
    }

    /// The rows of the sub-page table of the page starting at byte `first`, whose pieces
    /// start at `keys` (each materialized).
    fn page_rows(
        &mut self,
        keys: &[u64],
        first: u64,
        cx: &mut Build,
    ) -> Result<Vec<SubEntry>, Error> {
        let mut rows = Vec::with_capacity(keys.len());
        for &k in keys {
            rows.push(SubEntry {
                start: k.max(first),
                piece: self.materialize(k, cx)?,
            });
        }
        Ok(rows)
    }

    fn rebuild_node(
        &mut self,
        at: At<'_, V>,
        dirty: &[(u64, u64)],
        cx: &mut Build,
    ) -> Result<Entry, Error> {
        let At { tree, old, h, base } = at;
        let geo = self.geo;
        // The old node of this very span, if there was one (not a compressed path through it).
        let expanded = tree.node_info(old).is_some_and(|(oh, _)| oh == h);
        // The old canonical children, filled by ranges rather than child by child: a commit
        // touches few children of a 512-entry node. Only the touched ones are rebuilt.
        let old_kids = tree.children(old, h, base);
        let mut changed = Vec::new();
        let mut next = 0; // first child not rebuilt yet
        for &(ds, de) in dirty {
            let touched = geo.children_overlapping(h, base, ds, de);
            for i in touched.start.max(next)..touched.end {
                let cb = geo.child_base(h, base, i);
                let (cs, ce) = geo.span(h - 1, cb);
                let lo = dirty.partition_point(|r| r.1 < cs);
                let hi = lo + dirty[lo..].partition_point(|r| r.0 <= ce);
                let kid = At {
                    tree,
                    old: old_kids.at(i),
                    h: h - 1,
                    base: cb,
                };
                let kid = self.rebuild(kid, &dirty[lo..hi], cx)?;
                changed.push((i, kid));
            }
            next = next.max(touched.end);
        }
        let new = match old_kids.collapse(&changed) {
            Ok(single) => single,
            Err(kids) if expanded && tree.node_holds(old, &kids) => old.get(),
            Err(kids) => self.arena(cx).node(h, base, &kids)?,
        };
        if expanded && new != old.get() {
            // Only the node itself: its children were retired by their own rebuilds, or are
            // shared with the new tree.
            if let Kind::Node { index, .. } = old.kind() {
                cx.dead.push(self.births.dead_node(&self.arena, index));
            }
        }
        Ok(new)
    }

    /// Makes sure the piece starting at `key` has an arena slot, writing it if not.
    fn materialize(&mut self, key: u64, cx: &mut Build) -> Result<u32, Error> {
        let info: &mut PieceInfo = self.map.get_mut(&key).expect("materialize: piece exists");
        if let Some(slot) = info.slot() {
            return Ok(slot);
        }
        let piece = piece_record(&self.storage, key, info);
        // A page of `insert_shared` (exactly one page, origin at its start): a page record if
        // it fits. Only those: a one-page device keeps a piece, which its MMIO lookups reach
        // a few compares sooner.
        let geo = &self.geo;
        let one_page = self.sections.shared[info.section as usize]
            && piece.origin == key
            && key & geo.page_mask() == 0
            && info.end == key | geo.page_mask();
        let record = if one_page {
            self.arena
                .alloc_record(key >> geo.page_bits, piece.section)?
        } else {
            None
        };
        let id = match record {
            Some(id) => id,
            None => self.arena.new_piece(piece)?,
        };
        info.id = id;
        info.born = cx.generation;
        cx.fresh_pieces.push(id);
        Ok(id)
    }

    /// Retires every node, flat node and sub-page table under `e` (an entry of the current
    /// tree).
    fn retire_subtree<'g>(&self, tree: TreeRef<'g, V>, e: TreeEntry<'g>, cx: &mut Build) {
        let mut inner = Vec::new();
        tree.inner_entries(e, &mut inner);
        self.retire(inner, cx);
    }

    /// Retires these entries' nodes, flat nodes and tables.
    fn retire(&self, inner: Vec<Entry>, cx: &mut Build) {
        for x in inner {
            match x.kind() {
                Kind::Node { index, .. } => cx.dead.push(self.births.dead_node(&self.arena, index)),
                Kind::Subpage(..) | Kind::Flat(..) => cx.dead.push(self.births.dead_table(x)),
                _ => {}
            }
        }
    }

    /// Frees what a failed rebuild allocated (it was never reachable from anything).
    pub(super) fn undo_build(&mut self, cx: Build) {
        for n in cx.fresh_nodes {
            self.arena.free_node(n);
        }
        for t in cx.fresh_tables {
            self.arena.free_table(t);
        }
        for p in cx.fresh_pieces {
            self.arena.free_piece(p);
        }
    }
}
