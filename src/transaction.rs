//! Transactions: the writer lock, held, plus the log of what this transaction changed.

use crate::drops::drop_all;
use crate::shared::Shared;
use crate::sync::MutexGuard;
use crate::writer::{Log, Writer};
use crate::Error;
use std::ops::RangeBounds;

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
    w: MutexGuard<'a, Writer<V>>,
    shared: &'a Shared<V>,
    /// `None` once committed.
    log: Option<Log>,
}

impl<'a, V> Transaction<'a, V> {
    /// Takes the writer lock, then reclaims what nobody can reach any more.
    pub(crate) fn new(shared: &'a Shared<V>) -> Self {
        let mut w = shared.writer.lock();
        w.reclaim(&shared.registry, false);
        Transaction {
            w,
            shared,
            log: Some(Log::default()),
        }
    }

    fn parts(&mut self) -> (&mut Writer<V>, &mut Log) {
        let log = self.log.as_mut().expect("a live transaction has its log");
        (&mut self.w, log)
    }

    /// Maps `range` to a new section holding `value`, whose origin is the range's start.
    ///
    /// Fails with [`Error::Overlap`] if any byte of `range` is already mapped (in the
    /// published map or earlier in this transaction); the transaction is then unchanged.
    pub fn insert(&mut self, range: impl RangeBounds<u64>, value: V) -> Result<(), Error> {
        let (s, e) = self.w.geo().resolve(&range)?;
        let (w, log) = self.parts();
        w.insert(log, s, e, value)
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
            match self.w.geo().resolve(&range) {
                Ok((s, e)) => batch.push((s, e, value)),
                Err(e) => {
                    drop_all(batch.into_iter().map(|b| b.2).chain([value]));
                    return Err(e);
                }
            }
        }
        let (w, log) = self.parts();
        w.extend(log, batch)
    }

    /// Maps every range of `ranges` to one new section holding `value`, all or nothing (as
    /// [`extend`](Transaction::extend)). Each range is its own piece with its own origin, its
    /// start: a lookup answers `value` with the offset from the start of the range it hit.
    ///
    /// This is for many ranges that mean one thing (a confidential VM's shared pages, the
    /// plugged blocks of a virtio-mem device): they share one section slot and one value
    /// instead of one each. The section lives until its last range is removed or
    /// overwritten. With no ranges, nothing changes and `value` is dropped.
    ///
    /// ```
    /// use physmap::PhysMap;
    /// let map = PhysMap::new();
    /// let mut txn = map.transaction();
    /// // Every other page of the first 16 MiB is shared with the host.
    /// let pages = (0..4096u64).step_by(2).map(|i| i << 12..(i + 1) << 12);
    /// txn.insert_shared(pages, "shared").unwrap();
    /// txn.commit().unwrap();
    /// let snap = map.snapshot();
    /// let hit = snap.lookup(0x2_2010).unwrap();
    /// assert_eq!((*hit.value, hit.offset), ("shared", 0x10)); // offset within its page
    /// assert!(snap.lookup(0x3000).is_none());
    /// drop(snap);
    /// assert_eq!(map.memory().sections, 1);
    /// ```
    pub fn insert_shared<R: RangeBounds<u64>>(
        &mut self,
        ranges: impl IntoIterator<Item = R>,
        value: V,
    ) -> Result<(), Error> {
        let mut batch = Vec::new();
        for range in ranges {
            batch.push(self.w.geo().resolve(&range)?);
        }
        let (w, log) = self.parts();
        w.extend_shared(log, batch, value)
    }

    /// Maps `range` to a new section holding `value`, replacing whatever lies under it.
    /// Sections it cuts keep their origin (their offsets do not move).
    pub fn overwrite(&mut self, range: impl RangeBounds<u64>, value: V) -> Result<(), Error> {
        let (s, e) = self.w.geo().resolve(&range)?;
        let (w, log) = self.parts();
        w.overwrite(log, s, e, value)
    }

    /// Unmaps `range`. Bytes inside it that were not mapped are fine.
    pub fn remove(&mut self, range: impl RangeBounds<u64>) -> Result<(), Error> {
        let (s, e) = self.w.geo().resolve(&range)?;
        let (w, log) = self.parts();
        w.remove(log, s, e);
        Ok(())
    }

    /// The generation this transaction is based on.
    pub fn base_generation(&self) -> u64 {
        self.w.generation()
    }

    /// Publishes every change of this transaction as one new generation, atomically, and
    /// returns that generation's number. Commit cost follows the size of the change: only the
    /// tree paths inside changed ranges are copied. A transaction that changed nothing
    /// publishes nothing and returns the current generation.
    ///
    /// On error ([`Error::CapacityExhausted`]) nothing is published and the transaction is
    /// rolled back. If dropping a value that this transaction made and then overwrote panics,
    /// the commit has taken effect and the panic propagates from here.
    pub fn commit(mut self) -> Result<u64, Error> {
        let log = self.log.take().expect("a live transaction has its log");
        self.w.commit(log, &self.shared.publisher)
    }

    /// Drops every change of this transaction (the same as dropping it).
    pub fn rollback(self) {}
}

impl<V> Drop for Transaction<'_, V> {
    fn drop(&mut self) {
        if let Some(log) = self.log.take() {
            self.w.rollback(log);
        }
    }
}
