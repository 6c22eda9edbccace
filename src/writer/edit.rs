//! The edits a transaction makes to the working mapping, and the [`Log`] that undoes them.

use super::state::{PieceInfo, Writer};
use crate::drops::drop_all;
use crate::reclaim::{Dead, Slot};
use crate::Error;
use std::collections::BTreeMap;

/// How to undo one edit of the working mapping.
enum Undo {
    Added(u64),
    Removed(u64, PieceInfo),
}

/// What one transaction changed: how to undo each edit, and what commit needs to know.
#[derive(Default)]
pub(crate) struct Log {
    undo: Vec<Undo>,
    /// Byte ranges whose pieces changed (extents of removed and added pieces).
    dirty: Vec<(u64, u64)>,
    /// Sections made by this transaction.
    new_sections: Vec<u32>,
    /// Piece slots of removed pieces that had been written to the arena, with their births.
    retired_pieces: Vec<Dead>,
    /// Sections that lost their last piece at some point.
    emptied: Vec<u32>,
}

impl Log {
    /// Whether the transaction changed nothing at all (then committing it publishes nothing).
    pub(crate) fn is_empty(&self) -> bool {
        self.undo.is_empty()
            && self.dirty.is_empty()
            && self.new_sections.is_empty()
            && self.retired_pieces.is_empty()
            && self.emptied.is_empty()
    }

    /// The dirty ranges, sorted, with overlapping or touching ones merged.
    pub(crate) fn dirty(&mut self) -> &[(u64, u64)] {
        let mut sorted = std::mem::take(&mut self.dirty);
        sorted.sort_unstable();
        let mut out: Vec<(u64, u64)> = Vec::with_capacity(sorted.len());
        for (s, e) in sorted {
            match out.last_mut() {
                Some(last) if s <= last.1.saturating_add(1) => last.1 = last.1.max(e),
                _ => out.push((s, e)),
            }
        }
        self.dirty = out;
        &self.dirty
    }

    pub(crate) fn take_retired_pieces(&mut self) -> Vec<Dead> {
        std::mem::take(&mut self.retired_pieces)
    }

    pub(crate) fn take_new_sections(&mut self) -> Vec<u32> {
        std::mem::take(&mut self.new_sections)
    }

    /// Emptied sections, each once.
    pub(crate) fn take_emptied(&mut self) -> Vec<u32> {
        let mut v = std::mem::take(&mut self.emptied);
        v.sort_unstable();
        v.dedup();
        v
    }
}

impl<V> Writer<V> {
    /// Maps `[s, e]` to a new section holding `value`; `Overlap` if any byte is mapped.
    pub(crate) fn insert(&mut self, log: &mut Log, s: u64, e: u64, value: V) -> Result<(), Error> {
        self.refuse_overlap(s, e)?;
        let section = self.new_section(value)?;
        log.new_sections.push(section);
        self.map_section(log, s, e, section);
        Ok(())
    }

    /// Maps `[s, e]` to a new section holding `value`, replacing whatever lies under it.
    pub(crate) fn overwrite(
        &mut self,
        log: &mut Log,
        s: u64,
        e: u64,
        value: V,
    ) -> Result<(), Error> {
        let section = self.new_section(value)?;
        log.new_sections.push(section);
        self.cut(log, s, e);
        self.map_section(log, s, e, section);
        Ok(())
    }

    /// Unmaps `[s, e]`, splitting the pieces that straddle its ends.
    pub(crate) fn remove(&mut self, log: &mut Log, s: u64, e: u64) {
        self.cut(log, s, e);
    }

    /// Maps each `(start, end, value)` of `batch` to a new section, all or nothing: if a
    /// range overlaps a mapped byte or another range of the batch, or the sections do not
    /// fit, nothing changes, the values are dropped and the error names the range.
    pub(crate) fn extend(
        &mut self,
        log: &mut Log,
        mut batch: Vec<(u64, u64, V)>,
    ) -> Result<(), Error> {
        let checked = self
            .check_disjoint(&mut batch, |b| (b.0, b.1))
            .and_then(|()| self.sections.alloc.room(batch.len()));
        if let Err(e) = checked {
            drop_all(batch.into_iter().map(|b| b.2));
            return Err(e);
        }
        let mut added = Vec::with_capacity(batch.len());
        for (s, e, value) in batch {
            let section = self
                .new_section(value)
                .expect("room for the batch was checked");
            log.new_sections.push(section);
            added.push((s, e, section));
        }
        self.add_sorted(log, added);
        Ok(())
    }

    /// Maps every `[start, end]` of `ranges` to one new section holding `value`, each range
    /// with its own origin (its start), all or nothing as [`extend`](Writer::extend). No
    /// ranges: nothing changes and `value` is dropped.
    pub(crate) fn extend_shared(
        &mut self,
        log: &mut Log,
        mut ranges: Vec<(u64, u64)>,
        value: V,
    ) -> Result<(), Error> {
        self.check_disjoint(&mut ranges, |&r| r)?;
        if ranges.is_empty() {
            return Ok(());
        }
        let section = self.new_section(value)?;
        self.sections.shared[section as usize] = true;
        log.new_sections.push(section);
        self.add_sorted(
            log,
            ranges.into_iter().map(|(s, e)| (s, e, section)).collect(),
        );
        Ok(())
    }

    /// Adds the sorted, unmapped, disjoint `(start, end, section)` pieces, each its own
    /// origin.
    fn add_sorted(&mut self, log: &mut Log, pieces: Vec<(u64, u64, u32)>) {
        // One dirty range per run of touching ranges.
        let mut run: Option<(u64, u64)> = None;
        for &(s, e, _) in &pieces {
            run = match run {
                Some((rs, re)) if re.checked_add(1) == Some(s) => Some((rs, e)),
                Some(r) => {
                    log.dirty.push(r);
                    Some((s, e))
                }
                None => Some((s, e)),
            };
        }
        log.dirty.extend(run);
        let info = |(s, e, section): (u64, u64, u32)| (s, PieceInfo::new(s, e, section));
        if pieces.len() >= 1024 && pieces.len() >= self.map.len() / 2 {
            // Sorted and disjoint from the map: merge it in one go (linear), rather than a
            // million single inserts.
            for &(s, _, section) in &pieces {
                self.sections.refs[section as usize] += 1;
                log.undo.push(Undo::Added(s));
            }
            let mut more: BTreeMap<u64, PieceInfo> = pieces.into_iter().map(info).collect();
            self.map.append(&mut more);
        } else {
            for (s, info) in pieces.into_iter().map(info) {
                self.add(log, s, info);
            }
        }
    }

    /// Sorts a batch by start and checks that its ranges (`range` of each item) overlap
    /// neither each other nor a mapped byte.
    fn check_disjoint<T>(
        &self,
        batch: &mut [T],
        range: impl Fn(&T) -> (u64, u64),
    ) -> Result<(), Error> {
        batch.sort_unstable_by_key(|b| range(b).0);
        for pair in batch.windows(2) {
            let (a, b) = (range(&pair[0]), range(&pair[1]));
            if b.0 <= a.1 {
                return Err(Error::Overlap {
                    range: b.0..=b.1,
                    existing: a.0..=a.1,
                });
            }
        }
        for b in batch.iter() {
            let (s, e) = range(b);
            self.refuse_overlap(s, e)?;
        }
        Ok(())
    }

    /// `Err(Overlap)` if any byte of `[s, e]` is mapped.
    fn refuse_overlap(&self, s: u64, e: u64) -> Result<(), Error> {
        // Pieces are disjoint and sorted: only the last one starting at or before `e` can
        // reach `s`.
        match self.map.range(..=e).next_back() {
            Some((&k, info)) if info.end >= s => Err(Error::Overlap {
                range: s..=e,
                existing: k..=info.end,
            }),
            _ => Ok(()),
        }
    }

    /// Maps the unmapped `[s, e]` to `section` (origin `s`).
    fn map_section(&mut self, log: &mut Log, s: u64, e: u64, section: u32) {
        self.add(log, s, PieceInfo::new(s, e, section));
        log.dirty.push((s, e));
    }

    fn add(&mut self, log: &mut Log, start: u64, info: PieceInfo) {
        self.sections.refs[info.section as usize] += 1;
        let clash = self.map.insert(start, info);
        debug_assert!(clash.is_none());
        log.undo.push(Undo::Added(start));
    }

    fn del(&mut self, log: &mut Log, start: u64) -> PieceInfo {
        let info = self.map.remove(&start).expect("del: piece exists");
        let refs = &mut self.sections.refs[info.section as usize];
        *refs -= 1;
        if *refs == 0 {
            log.emptied.push(info.section);
        }
        if let Some(id) = info.slot() {
            let slot = Slot::Piece(id);
            log.retired_pieces.push(Dead {
                slot,
                born: info.born,
            });
        }
        log.undo.push(Undo::Removed(start, info));
        info
    }

    /// Unmaps `[s, e]`, splitting the pieces that straddle its ends (they keep their origin).
    fn cut(&mut self, log: &mut Log, s: u64, e: u64) {
        let mut keys = Vec::new();
        if let Some((&k, info)) = self.map.range(..s).next_back() {
            if info.end >= s {
                keys.push(k);
            }
        }
        keys.extend(self.map.range(s..=e).map(|(&k, _)| k));
        for k in keys {
            let info = self.del(log, k);
            log.dirty.push((k, info.end));
            if k < s {
                let head = PieceInfo {
                    end: s - 1,
                    ..info.unwritten()
                };
                self.add(log, k, head);
            }
            if info.end > e {
                self.add(log, e + 1, info.unwritten());
            }
        }
    }

    /// Undoes the edits of `log` in reverse; returns the sections it made (still allocated).
    pub(super) fn undo(&mut self, log: Log) -> Vec<u32> {
        for undo in log.undo.into_iter().rev() {
            match undo {
                Undo::Added(start) => {
                    let info = self
                        .map
                        .remove(&start)
                        .expect("rollback: added piece exists");
                    self.sections.refs[info.section as usize] -= 1;
                }
                Undo::Removed(start, info) => {
                    self.sections.refs[info.section as usize] += 1;
                    self.map.insert(start, info);
                }
            }
        }
        log.new_sections
    }
}
