//! Snapshots: one immutable generation of the map, for as long as it is held.

use crate::arena::{Counts, Piece};
use crate::diff::{self, Change, Mapping};
use crate::sync::Arc;
use crate::version::Version;
use crate::view::{PieceRef, TreeRef, Walk};
use crate::Error;
use std::collections::HashSet;
use std::fmt;
use std::ops::{RangeBounds, RangeInclusive};

/// An immutable generation of a [`PhysMap`](crate::PhysMap).
///
/// Cheap to clone (one reference count), `Send + Sync`, and may be held as long as wanted:
/// it keeps alive exactly the tree it was taken from. Holding it delays the reuse of slots
/// that later commits retired (see the crate docs on reclamation), nothing else.
pub struct Snapshot<V> {
    pub(crate) version: Arc<Version<V>>,
}

impl<V> Clone for Snapshot<V> {
    fn clone(&self) -> Self {
        Snapshot {
            version: self.version.clone(),
        }
    }
}

/// The answer to a lookup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hit<'a, V> {
    /// The section's value.
    pub value: &'a V,
    /// The contiguous mapped piece holding the address (inclusive ends).
    pub range: RangeInclusive<u64>,
    /// `addr - origin`, where origin is the start of the `insert`/`overwrite` that made the
    /// section (for [`insert_shared`](crate::Transaction::insert_shared), of the range that
    /// holds `addr`); unchanged when later calls cut the section into pieces.
    pub offset: u64,
}

impl<'a, V> Hit<'a, V> {
    #[inline(always)]
    pub(crate) fn new(value: &'a V, piece: &Piece, addr: u64) -> Self {
        Hit {
            value,
            range: piece.start..=piece.end,
            offset: addr - piece.origin,
        }
    }
}

/// Size and shape of one generation's tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct Stats {
    /// Generation measured.
    pub generation: u64,
    /// Radix nodes reachable from the root.
    pub nodes: usize,
    /// Flat nodes reachable from the root: sparse subtrees stored as their runs (at most 16
    /// runs of empty pages, one piece's pages, or a page's sub-page table), 144 bytes where
    /// the nodes they stand for would take 2 KiB each at the default geometry.
    pub flat_nodes: usize,
    /// Sub-page tables (pages holding more than one piece).
    pub subpage_tables: usize,
    /// Contiguous mapped pieces.
    pub pieces: usize,
    /// Of those, the pieces stored as 12-byte page records instead of 32-byte pieces:
    /// the pages of [`insert_shared`](crate::Transaction::insert_shared) (exactly one page,
    /// with the origin at its start).
    pub page_records: usize,
    /// Distinct sections (values) still mapped.
    pub sections: usize,
    /// Bytes of nodes, flat nodes, sub-page tables, pieces, page records and section slots of
    /// this tree.
    pub bytes: usize,
    /// Bytes of the tree proper: nodes, flat nodes and sub-page tables (what QEMU's own
    /// figure counts).
    pub tree_bytes: usize,
    /// Nodes on the longest root-to-leaf path.
    pub levels: u32,
}

impl<V> Snapshot<V> {
    /// The generation number (0 for the empty map, +1 per commit).
    pub fn generation(&self) -> u64 {
        self.version.generation
    }

    /// The section holding `addr`, the piece around it and the offset from the piece's
    /// origin (see [`Hit::offset`]); `None` if `addr` is unmapped.
    ///
    /// Wait-free: at most one load per tree level plus the final range check.
    #[inline(always)]
    pub fn lookup(&self, addr: u64) -> Option<Hit<'_, V>> {
        let found = self.tree().find(addr)?;
        Some(Hit::new(found.value(), found.piece(), addr))
    }

    /// This generation's tree, readable for as long as `self` is borrowed.
    #[inline(always)]
    fn tree(&self) -> TreeRef<'_, V> {
        self.version.tree()
    }

    /// Every mapped piece, in address order, as `(range, value)`.
    pub fn iter(&self) -> Iter<'_, V> {
        self.pieces_in(0, self.version.geo.max_addr)
    }

    /// The pieces overlapping `range`, in address order, whole (not clipped to `range`).
    /// Walks only the part of the tree under `range`. As with std's `BTreeMap::range`, an
    /// empty range (`a..a`) has no pieces; an inverted range
    /// ([`Error::InvertedRange`], where `BTreeMap::range` panics) or one past the address
    /// space ([`Error::OutOfSpace`]) is an error.
    ///
    /// ```
    /// let map = physmap::PhysMap::new();
    /// let mut t = map.transaction();
    /// t.insert(0x1000..0x3000, "a").unwrap();
    /// t.insert(0x5000..0x6000, "b").unwrap();
    /// t.commit().unwrap();
    /// let snap = map.snapshot();
    /// assert_eq!(snap.range(0x2000..0x5001).unwrap().count(), 2);
    /// assert_eq!(snap.range(0x2000..0x2000).unwrap().count(), 0);
    /// assert!(snap.range(7..3).is_err());
    /// ```
    pub fn range(&self, range: impl RangeBounds<u64>) -> Result<Iter<'_, V>, Error> {
        match self.version.geo.resolve(&range) {
            Ok((lo, hi)) => Ok(self.pieces_in(lo, hi)),
            // Nothing to walk: `lo > hi` walks nothing.
            Err(Error::EmptyRange { .. }) => Ok(self.pieces_in(1, 0)),
            Err(e) => Err(e),
        }
    }

    fn pieces_in(&self, lo: u64, hi: u64) -> Iter<'_, V> {
        let tree = self.tree();
        Iter {
            walk: tree.walk(lo, hi),
            tree,
        }
    }

    /// Counts the nodes, tables, pieces and bytes of this generation's tree.
    /// Walks the whole tree: a diagnostic, not a hot-path call.
    pub fn stats(&self) -> Stats {
        let tree = self.tree();
        let shape = tree.shape();
        let (mut pieces, mut records) = (0, 0);
        let mut sections = HashSet::new();
        for piece in tree.walk(0, self.version.geo.max_addr) {
            pieces += 1;
            records += piece.is_record() as usize;
            sections.insert(piece.section);
        }
        let counts = Counts {
            pieces: pieces - records,
            records,
            sections: sections.len(),
            ..shape.tree
        };
        let fanout = self.version.geo.fanout;
        Stats {
            generation: self.version.generation,
            nodes: counts.nodes,
            flat_nodes: counts.flats,
            subpage_tables: counts.tables,
            pieces,
            page_records: counts.records,
            sections: counts.sections,
            bytes: counts.bytes::<V>(fanout),
            tree_bytes: counts.tree_bytes(fanout),
            levels: shape.levels,
        }
    }
}

impl<V> Snapshot<V> {
    /// Writes this generation's tree level by level (nodes, their runs of equal entries,
    /// sub-page tables), labelling values with `label`. A diagnostic, like QEMU's
    /// `info mtree -d` dispatch listing.
    ///
    /// ```
    /// let map = physmap::PhysMap::new();
    /// let mut t = map.transaction();
    /// t.insert(0..0x8000_0000, "ram").unwrap();
    /// t.insert(0xfed0_0000..=0xfed0_03ff, "hpet").unwrap();
    /// t.commit().unwrap();
    /// let mut text = String::new();
    /// map.snapshot().write_tree(&mut text, &|v| v.to_string()).unwrap();
    /// assert!(text.contains("leaf 0xfed00000..=0xfed003ff hpet"));
    /// ```
    pub fn write_tree(
        &self,
        out: &mut dyn fmt::Write,
        label: &dyn Fn(&V) -> String,
    ) -> fmt::Result {
        self.tree().dump(out, label)
    }
}

impl<V> Snapshot<V> {
    /// What changed from `older` to this generation: maximal byte ranges whose piece differs,
    /// each with what it mapped to before and after, in address order.
    ///
    /// The two trees are walked together and every subtree they share is skipped, so the
    /// cost follows the size of the change (times the tree's depth), not the size of the map.
    /// Both snapshots should come from the same map (otherwise every mapped byte of either is
    /// reported as changed). Works in either direction (`older` may be the newer one).
    ///
    /// This is how a memory listener (KVM memslots, vhost, VFIO) follows the map: keep the
    /// snapshot you last applied, and after each commit apply `new.diff(&applied)`:
    ///
    /// ```
    /// use physmap::PhysMap;
    /// let map = PhysMap::new();
    /// let mut applied = map.snapshot();                  // what KVM knows
    /// let mut t = map.transaction();
    /// t.insert(0..0x8000_0000, "ram").unwrap();
    /// t.commit().unwrap();
    /// let mut t = map.transaction();
    /// t.remove(0xa_0000..0x10_0000).unwrap();            // punch the VGA hole
    /// t.commit().unwrap();
    /// let now = map.snapshot();
    /// for c in now.diff(&applied) {
    ///     if let Some(old) = &c.old { /* KVM_SET_USER_MEMORY_REGION: delete slot for old.piece */ }
    ///     if let Some(new) = &c.new { /* create slot: new.piece at host base + (start - new.origin) */ }
    /// }
    /// assert_eq!(now.diff(&applied).len(), 2);             // the two RAM pieces appeared
    /// applied = now;
    /// # let _ = applied;
    /// ```
    pub fn diff<'a>(&'a self, older: &'a Snapshot<V>) -> Vec<Change<'a, V>> {
        let (new, old) = (&*self.version, &*older.version);
        let (newer, older) = (self.tree(), older.tree());
        let mut raw = Vec::new();
        if std::ptr::eq(&*new.storage, &*old.storage) {
            // One storage: walk both trees together, skipping the subtrees they share.
            let h = new.geo.height;
            diff::diff(older, newer, older.root(), newer.root(), h, 0, &mut raw);
        } else {
            let a: Vec<_> = older.walk(0, old.geo.max_addr).collect();
            let b: Vec<_> = newer.walk(0, new.geo.max_addr).collect();
            diff::sweep(&a, &b, 0, new.geo.max_addr.max(old.geo.max_addr), &mut raw);
        }
        let side = |tree: TreeRef<'a, V>, p: Option<PieceRef<'a>>| {
            p.map(|p| Mapping {
                value: tree.value(p),
                piece: p.start..=p.end,
                origin: p.origin,
            })
        };
        raw.into_iter()
            .map(|(s, e, a, b)| Change {
                range: s..=e,
                old: side(older, a),
                new: side(newer, b),
            })
            .collect()
    }

    /// The tree's shape and pieces as numbers, without slot indices (for tests that compare
    /// trees built by different paths). Not a stable format.
    #[cfg(any(test, feature = "test-hooks"))]
    #[doc(hidden)]
    pub fn canonical_form(&self) -> Vec<u64> {
        self.tree().fingerprint()
    }
}

impl<V: fmt::Debug> fmt::Debug for Snapshot<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Snapshot")
            .field("generation", &self.generation())
            .field(
                "pieces",
                &self
                    .iter()
                    .map(|(r, v)| (format!("{:#x}..={:#x}", r.start(), r.end()), v))
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// Iterator over `(range, value)` pieces of a [`Snapshot`], in address order.
pub struct Iter<'a, V> {
    walk: Walk<'a, V>,
    tree: TreeRef<'a, V>,
}

impl<'a, V> Iterator for Iter<'a, V> {
    type Item = (RangeInclusive<u64>, &'a V);

    fn next(&mut self) -> Option<Self::Item> {
        let piece = self.walk.next()?;
        Some((piece.start..=piece.end, self.tree.value(piece)))
    }
}

impl<'a, V> IntoIterator for &'a Snapshot<V> {
    type Item = (RangeInclusive<u64>, &'a V);
    type IntoIter = Iter<'a, V>;
    fn into_iter(self) -> Iter<'a, V> {
        self.iter()
    }
}

impl<V> Snapshot<V> {
    /// The pieces of this generation with their origins: `(range, origin, value)`.
    pub fn pieces(&self) -> impl Iterator<Item = (RangeInclusive<u64>, u64, &V)> + '_ {
        let tree = self.tree();
        tree.walk(0, self.version.geo.max_addr)
            .map(move |p| (p.start..=p.end, p.origin, tree.value(p)))
    }
}
