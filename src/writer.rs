//! The writer: the working mapping, transactions, and the copy-on-write rebuild at commit.
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
use crate::sync::{Arc, MutexGuard, Publisher};
use crate::tree::{self, Entry, Kind};
use crate::Error;
use std::collections::BTreeMap;
use std::ops::RangeBounds;

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
    sec_refs: Vec<u32>,
    /// Whether a section slot has been part of a published generation.
    sec_published: Vec<bool>,
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
    let slot = pieces
        .alloc(&storage.pieces)
        .ok_or(Error::CapacityExhausted {
            kind: "pieces",
            limit: pieces.limit(),
        })?;
    // SAFETY: the section slot is allocated and holds `Some` (it has pieces); only the
    // writer writes it, and we are the writer.
    let value = unsafe {
        storage.sections.cell(info.section, 0).with(|p| match &*p {
            Some(v) => v as *const V as *const (),
            None => unreachable!("a section with pieces holds its value"),
        })
    };
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
            nodes: SlabAlloc::new(max_nodes),
            pieces: SlabAlloc::new(max_pieces),
            subpages: SlabAlloc::new(max_pieces),
            sections: SlabAlloc::new(max_pieces),
            sub_rows: 0,
            bulk_builds: 0,
            parallel_builds: 0,
        }
    }

    /// Returns to the free lists every slot that no generation can reach any more, dropping
    /// the values of freed sections here, on the writer's thread.
    pub(crate) fn reclaim(&mut self) {
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
                self.free_section(s);
            }
        }
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

    fn free_section(&mut self, s: u32) {
        // SAFETY: as in `free_subpage`.
        let value = unsafe { self.storage.sections.cell(s, 0).with_mut(|p| (*p).take()) };
        self.sec_published[s as usize] = false;
        self.sections.free(s);
        drop(value);
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
        let t = self
            .subpages
            .alloc(&self.storage.subpages)
            .ok_or(Error::CapacityExhausted {
                kind: "sub-page tables",
                limit: self.subpages.limit(),
            })?;
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
        let n = self
            .nodes
            .alloc(&self.storage.nodes)
            .ok_or(Error::CapacityExhausted {
                kind: "nodes",
                limit: self.nodes.limit(),
            })?;
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
    fn undo_build(&mut self, cx: Build) {
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

/// How to undo one edit of the working mapping.
enum Undo {
    Added(u64),
    Removed(u64, PieceInfo),
}

/// A set of changes published together by [`commit`](Transaction::commit).
///
/// Only one transaction exists at a time (it holds the writer lock); readers never wait for
/// it. Dropping it without committing (including by a panic) publishes nothing and puts the
/// writer back exactly where it was.
///
/// ```
/// use physmap::PhysMap;
/// let map = PhysMap::new();
/// let mut txn = map.transaction();
/// txn.insert(0..0x8000_0000, "ram").unwrap();
/// txn.insert(0xfec0_0000..=0xfec0_0fff, "ioapic").unwrap();
/// assert!(txn.insert(0x1000..0x2000, "clash").is_err()); // overlaps "ram", txn unchanged
/// txn.remove(0xa_0000..0x10_0000).unwrap();              // legacy VGA hole
/// let generation = txn.commit().unwrap();
/// assert_eq!(map.snapshot().generation(), generation);
/// ```
pub struct Transaction<'a, V> {
    w: MutexGuard<'a, WriterState<V>>,
    publisher: &'a Publisher<Version<V>>,
    log: Vec<Undo>,
    dirty: Vec<(u64, u64)>,
    new_sections: Vec<u32>,
    retired_pieces: Vec<u32>,
    emptied: Vec<u32>,
    finished: bool,
}

impl<'a, V> Transaction<'a, V> {
    pub(crate) fn new(
        mut w: MutexGuard<'a, WriterState<V>>,
        publisher: &'a Publisher<Version<V>>,
    ) -> Self {
        w.reclaim();
        Transaction {
            w,
            publisher,
            log: Vec::new(),
            dirty: Vec::new(),
            new_sections: Vec::new(),
            retired_pieces: Vec::new(),
            emptied: Vec::new(),
            finished: false,
        }
    }

    /// Maps `range` to a new section holding `value`, whose origin is the range's start.
    ///
    /// Fails with [`Error::Overlap`] if any byte of `range` is already mapped (in the
    /// published map or earlier in this transaction); the transaction is then unchanged.
    pub fn insert(&mut self, range: impl RangeBounds<u64>, value: V) -> Result<(), Error> {
        let (s, e) = self.w.geo.resolve(&range)?;
        self.refuse_overlap(s, e)?;
        let section = self.new_section(value)?;
        self.map_section(s, e, section);
        Ok(())
    }

    /// `Err(Overlap)` if any byte of `[s, e]` is mapped.
    fn refuse_overlap(&self, s: u64, e: u64) -> Result<(), Error> {
        // Pieces are disjoint and sorted: only the last one starting at or before `e` can reach `s`.
        match self.w.map.range(..=e).next_back() {
            Some((&k, info)) if info.end >= s => Err(Error::Overlap {
                range: (s, e),
                existing: (k, info.end),
            }),
            _ => Ok(()),
        }
    }

    /// Maps the unmapped `[s, e]` to `section` (origin `s`).
    fn map_section(&mut self, s: u64, e: u64, section: u32) {
        self.add(
            s,
            PieceInfo {
                end: e,
                origin: s,
                section,
                slot: None,
            },
        );
        self.dirty.push((s, e));
    }

    /// Inserts many ranges at once, each a new section (as [`insert`](Transaction::insert)),
    /// all or nothing: if any range is invalid or overlaps a mapped byte or another range of
    /// the batch, nothing is changed and the error names it.
    ///
    /// Large batches are cheaper this way: the ranges are sorted and checked in one pass,
    /// and at commit the subtrees they fill are built from the sorted batch, with rayon
    /// across independent subtrees (same canonical tree as one `insert` at a time).
    ///
    /// ```
    /// use physmap::PhysMap;
    /// // A confidential VM's pages, alternately private and shared.
    /// let map = PhysMap::new();
    /// let mut txn = map.transaction();
    /// txn.extend((0..4096u64).map(|i| (i << 12..(i + 1) << 12, i % 2 == 0))).unwrap();
    /// txn.commit().unwrap();
    /// assert_eq!(map.snapshot().iter().count(), 4096);
    /// ```
    pub fn extend<R: RangeBounds<u64>>(
        &mut self,
        ranges: impl IntoIterator<Item = (R, V)>,
    ) -> Result<(), Error> {
        let mut batch = Vec::new();
        for (range, value) in ranges {
            let (s, e) = self.w.geo.resolve(&range)?;
            batch.push((s, e, value));
        }
        batch.sort_unstable_by_key(|&(s, _, _)| s);
        for pair in batch.windows(2) {
            if pair[1].0 <= pair[0].1 {
                return Err(Error::Overlap {
                    range: (pair[1].0, pair[1].1),
                    existing: (pair[0].0, pair[0].1),
                });
            }
        }
        for &(s, e, _) in &batch {
            self.refuse_overlap(s, e)?;
        }
        let free = self.w.sections.limit() - self.w.sections.live;
        if batch.len() > free {
            return Err(Error::CapacityExhausted {
                kind: "sections",
                limit: self.w.sections.limit(),
            });
        }
        let mut run: Option<(u64, u64)> = None;
        let mut added = Vec::with_capacity(batch.len());
        for (s, e, value) in batch {
            let section = self.new_section(value).expect("capacity checked above");
            added.push((
                s,
                PieceInfo {
                    end: e,
                    origin: s,
                    section,
                    slot: None,
                },
            ));
            // One dirty range per run of touching ranges.
            run = match run {
                Some((rs, re)) if re.checked_add(1) == Some(s) => Some((rs, e)),
                Some(r) => {
                    self.dirty.push(r);
                    Some((s, e))
                }
                None => Some((s, e)),
            };
        }
        if let Some(r) = run {
            self.dirty.push(r);
        }
        if added.len() >= 1024 && added.len() >= self.w.map.len() / 2 {
            // Sorted and disjoint from the map: build a tree in one go and merge it in
            // (linear), rather than a million single inserts.
            for (s, info) in &added {
                self.w.sec_refs[info.section as usize] += 1;
                self.log.push(Undo::Added(*s));
            }
            let mut more: BTreeMap<u64, PieceInfo> = added.into_iter().collect();
            self.w.map.append(&mut more);
        } else {
            for (s, info) in added {
                self.add(s, info);
            }
        }
        Ok(())
    }

    /// Maps `range` to a new section holding `value`, replacing whatever lies under it.
    /// Sections it cuts keep their origin (their offsets do not move).
    pub fn overwrite(&mut self, range: impl RangeBounds<u64>, value: V) -> Result<(), Error> {
        let (s, e) = self.w.geo.resolve(&range)?;
        let section = self.new_section(value)?;
        self.cut(s, e);
        self.map_section(s, e, section);
        Ok(())
    }

    /// Unmaps `range`. Bytes inside it that were not mapped are fine.
    pub fn remove(&mut self, range: impl RangeBounds<u64>) -> Result<(), Error> {
        let (s, e) = self.w.geo.resolve(&range)?;
        self.cut(s, e);
        Ok(())
    }

    /// The generation this transaction is based on.
    pub fn base_generation(&self) -> u64 {
        self.w.current.generation
    }

    /// Publishes every change of this transaction as one new generation, atomically, and
    /// returns that generation's number. Commit cost follows the size of the change: only the
    /// tree paths inside changed ranges are copied.
    ///
    /// On error ([`Error::CapacityExhausted`]) nothing is published and the transaction is
    /// rolled back.
    pub fn commit(mut self) -> Result<u64, Error> {
        let mut dirty = std::mem::take(&mut self.dirty);
        dirty.sort_unstable();
        let dirty = merge(dirty);
        let old = self.w.current.clone();
        let mut cx = Build::default();
        let h = self.w.geo.height;
        let root = match self.w.rebuild(old.root, h, 0, &dirty, &mut cx) {
            Ok(root) => root,
            Err(e) => {
                self.w.undo_build(cx);
                return Err(e); // Drop rolls the edits back.
            }
        };
        let mut retired = cx.retired;
        retired.pieces = std::mem::take(&mut self.retired_pieces);
        let mut emptied = std::mem::take(&mut self.emptied);
        emptied.sort_unstable();
        emptied.dedup();
        for s in emptied {
            if self.w.sec_refs[s as usize] == 0 {
                if self.w.sec_published[s as usize] {
                    retired.sections.push(s);
                } else {
                    // Made and wholly overwritten within this transaction: never visible.
                    self.w.free_section(s);
                }
            }
        }
        for &s in &self.new_sections {
            if self.w.sec_refs[s as usize] > 0 {
                self.w.sec_published[s as usize] = true;
            }
        }
        let generation = old.generation + 1;
        let storage = self.w.storage.clone();
        let geo = self.w.geo;
        let next = Arc::new(Version::new(generation, root, storage, geo));
        // Publish, then hand the superseded version and its garbage to the graveyard; its
        // slots are reused once every reader of it (and of anything older) is gone.
        self.publisher.store(next.clone());
        let old_current = std::mem::replace(&mut self.w.current, next);
        drop(old);
        self.w.graveyard.bury(old_current, retired);
        self.finished = true;
        Ok(generation)
    }

    /// Drops every change of this transaction (the same as dropping it).
    pub fn rollback(self) {}

    fn new_section(&mut self, value: V) -> Result<u32, Error> {
        let w = &mut *self.w;
        let s = w
            .sections
            .alloc(&w.storage.sections)
            .ok_or(Error::CapacityExhausted {
                kind: "sections",
                limit: w.sections.limit(),
            })?;
        // SAFETY: freshly allocated, unreachable from every generation; only we write.
        unsafe { w.storage.sections.cell(s, 0).with_mut(|p| *p = Some(value)) };
        let i = s as usize;
        if w.sec_refs.len() <= i {
            w.sec_refs.resize(i + 1, 0);
            w.sec_published.resize(i + 1, false);
        }
        w.sec_refs[i] = 0;
        w.sec_published[i] = false;
        self.new_sections.push(s);
        Ok(s)
    }

    fn add(&mut self, start: u64, info: PieceInfo) {
        self.w.sec_refs[info.section as usize] += 1;
        let clash = self.w.map.insert(start, info);
        debug_assert!(clash.is_none());
        self.log.push(Undo::Added(start));
    }

    fn del(&mut self, start: u64) -> PieceInfo {
        let info = self.w.map.remove(&start).expect("del: piece exists");
        let refs = &mut self.w.sec_refs[info.section as usize];
        *refs -= 1;
        if *refs == 0 {
            self.emptied.push(info.section);
        }
        if let Some(slot) = info.slot {
            self.retired_pieces.push(slot);
        }
        self.log.push(Undo::Removed(start, info));
        info
    }

    /// Unmaps `[s, e]`, splitting the pieces that straddle its ends.
    fn cut(&mut self, s: u64, e: u64) {
        let mut keys = Vec::new();
        if let Some((&k, info)) = self.w.map.range(..s).next_back() {
            if info.end >= s {
                keys.push(k);
            }
        }
        keys.extend(self.w.map.range(s..=e).map(|(&k, _)| k));
        for k in keys {
            let info = self.del(k);
            self.dirty.push((k, info.end));
            if k < s {
                self.add(
                    k,
                    PieceInfo {
                        end: s - 1,
                        slot: None,
                        ..info
                    },
                );
            }
            if info.end > e {
                self.add(e + 1, PieceInfo { slot: None, ..info });
            }
        }
    }
}

impl<V> Drop for Transaction<'_, V> {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        // Roll back: undo the edits in reverse, then free the sections this transaction made.
        while let Some(undo) = self.log.pop() {
            match undo {
                Undo::Added(start) => {
                    let info = self
                        .w
                        .map
                        .remove(&start)
                        .expect("rollback: added piece exists");
                    self.w.sec_refs[info.section as usize] -= 1;
                }
                Undo::Removed(start, info) => {
                    self.w.sec_refs[info.section as usize] += 1;
                    self.w.map.insert(start, info);
                }
            }
        }
        for s in std::mem::take(&mut self.new_sections) {
            self.w.free_section(s);
        }
    }
}

/// Merges sorted ranges that overlap or touch.
fn merge(sorted: Vec<(u64, u64)>) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::with_capacity(sorted.len());
    for (s, e) in sorted {
        match out.last_mut() {
            Some(last) if s <= last.1.saturating_add(1) => last.1 = last.1.max(e),
            _ => out.push((s, e)),
        }
    }
    out
}
