//! Transactions: edits of the writer's working mapping, logged so they can be undone, then
//! published together by `commit`.

use crate::publish::Version;
use crate::sync::{Arc, MutexGuard, Publisher};
use crate::writer::{Build, PieceInfo, WriterState};
use crate::Error;
use std::collections::BTreeMap;
use std::ops::RangeBounds;

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
            match self.w.geo.resolve(&range) {
                Ok((s, e)) => batch.push((s, e, value)),
                Err(e) => {
                    crate::drops::drop_all(batch.into_iter().map(|b| b.2).chain([value]));
                    return Err(e);
                }
            }
        }
        if let Err(e) = self.check_batch(&mut batch) {
            crate::drops::drop_all(batch.into_iter().map(|b| b.2));
            return Err(e);
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

    /// Sorts a batch for `extend` and checks it: no overlap inside it or with the map, and
    /// room for its sections.
    fn check_batch(&self, batch: &mut [(u64, u64, V)]) -> Result<(), Error> {
        batch.sort_unstable_by_key(|&(s, _, _)| s);
        for pair in batch.windows(2) {
            if pair[1].0 <= pair[0].1 {
                return Err(Error::Overlap {
                    range: (pair[1].0, pair[1].1),
                    existing: (pair[0].0, pair[0].1),
                });
            }
        }
        for &(s, e, _) in batch.iter() {
            self.refuse_overlap(s, e)?;
        }
        let free = self.w.sections.limit() - self.w.sections.live;
        if batch.len() > free {
            return Err(Error::CapacityExhausted {
                kind: "sections",
                limit: self.w.sections.limit(),
            });
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
        // Values of sections made and wholly overwritten within this transaction (never
        // visible): their slots are freed now, the values dropped once the commit is complete.
        let mut unseen = Vec::new();
        for s in emptied {
            if self.w.sec_refs[s as usize] == 0 {
                if self.w.sec_published[s as usize] {
                    retired.sections.push(s);
                } else {
                    unseen.extend(self.w.free_section(s));
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
        // Last, the user code: a panicking `Drop` finds the commit complete and the writer
        // consistent; its panic propagates from here, and the transaction's `Drop` (which
        // sees `finished`) does nothing more.
        crate::drops::drop_all(unseen);
        Ok(generation)
    }

    /// Drops every change of this transaction (the same as dropping it).
    pub fn rollback(self) {}

    fn new_section(&mut self, value: V) -> Result<u32, Error> {
        let w = &mut *self.w;
        let s = w.sections.alloc(&w.storage.sections)?;
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
        let mut values = Vec::new();
        for s in std::mem::take(&mut self.new_sections) {
            values.extend(self.w.free_section(s));
        }
        // Every slot is free before the first value is dropped (see `drops.rs`).
        crate::drops::drop_all(values);
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
