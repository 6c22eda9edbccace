//! Snapshots: one immutable generation of the map, for as long as it is held.

use crate::arena::{Piece, SubEntry, Subpage};
use crate::diff::{self, Change, Mapping};
use crate::publish::Version;
use crate::sync::Arc;
use crate::tree::{self, Walk};
use crate::writer::node_bytes;
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
    /// section; unchanged when later calls cut the section into pieces.
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
    /// Sub-page tables (pages holding more than one piece).
    pub subpage_tables: usize,
    /// Contiguous mapped pieces.
    pub pieces: usize,
    /// Distinct sections (values) still mapped.
    pub sections: usize,
    /// Bytes of nodes, sub-page tables, pieces and section slots of this tree.
    pub bytes: usize,
    /// Bytes of the tree proper: nodes and sub-page tables (what QEMU's own figure counts).
    pub tree_bytes: usize,
    /// Nodes on the longest root-to-leaf path.
    pub levels: u32,
}

impl<V> Snapshot<V> {
    /// The generation number (0 for the empty map, +1 per commit).
    pub fn generation(&self) -> u64 {
        self.version.generation
    }

    /// The section holding `addr`, the piece around it and the offset from the section's
    /// origin; `None` if `addr` is unmapped.
    ///
    /// Wait-free: at most one load per tree level plus the final range check.
    #[inline]
    pub fn lookup(&self, addr: u64) -> Option<Hit<'_, V>> {
        let v = &*self.version;
        // SAFETY: `self` holds the generation, so everything reachable from its root stays
        // allocated and unwritten for the lifetime of the returned borrow.
        unsafe {
            let piece = tree::find(&v.storage, &v.geo, v.root, addr)?;
            Some(Hit::new(v.storage.piece_value(&piece), &piece, addr))
        }
    }

    /// Every mapped piece, in address order, as `(range, value)`.
    pub fn iter(&self) -> Iter<'_, V> {
        self.pieces_in(0, self.version.geo.max_addr)
    }

    /// The pieces overlapping `range`, in address order, whole (not clipped to `range`).
    /// Walks only the part of the tree under `range`. An invalid range yields nothing.
    pub fn range(&self, range: impl RangeBounds<u64>) -> Iter<'_, V> {
        match self.version.geo.resolve(&range) {
            Ok((lo, hi)) => self.pieces_in(lo, hi),
            Err(_) => self.pieces_in(1, 0),
        }
    }

    fn pieces_in(&self, lo: u64, hi: u64) -> Iter<'_, V> {
        let v = &*self.version;
        let root = if lo <= hi {
            v.root
        } else {
            crate::tree::Entry::EMPTY
        };
        // SAFETY: the walk borrows `self`, which keeps the generation alive.
        let walk = unsafe { Walk::new(&v.storage, v.geo, root, lo, hi) };
        Iter { walk, snap: self }
    }

    /// Counts the nodes, tables, pieces and bytes of this generation's tree.
    /// Walks the whole tree: a diagnostic, not a hot-path call.
    pub fn stats(&self) -> Stats {
        let v = &*self.version;
        // SAFETY: `self` keeps the generation alive.
        let (nodes, subpage_tables, rows, levels) = unsafe { tree::shape(&v.storage, v.root) };
        let mut pieces = 0;
        let mut sections = HashSet::new();
        // SAFETY: as above.
        for (_, piece) in unsafe { Walk::new(&v.storage, v.geo, v.root, 0, v.geo.max_addr) } {
            pieces += 1;
            sections.insert(piece.section);
        }
        let tree_bytes = nodes * node_bytes(v.geo.fanout)
            + subpage_tables * std::mem::size_of::<Subpage>()
            + rows * std::mem::size_of::<SubEntry>();
        let bytes = tree_bytes
            + pieces * std::mem::size_of::<Piece>()
            + sections.len() * std::mem::size_of::<Option<V>>();
        Stats {
            generation: v.generation,
            nodes,
            subpage_tables,
            pieces,
            sections: sections.len(),
            bytes,
            tree_bytes,
            levels,
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
        let v = &*self.version;
        // SAFETY: `self` keeps the generation alive.
        unsafe { tree::dump(&v.storage, &v.geo, v.root, out, label) }
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
        let mut raw = Vec::new();
        if std::ptr::eq(&*new.storage, &*old.storage) {
            // SAFETY: both generations are held by the borrowed snapshots; same storage.
            unsafe {
                diff::diff(
                    &new.storage,
                    &new.geo,
                    old.root,
                    new.root,
                    new.geo.height,
                    0,
                    &mut raw,
                )
            };
        } else {
            // SAFETY: as above, each walk in its own storage.
            let (a, b): (Vec<Piece>, Vec<Piece>) = unsafe {
                (
                    Walk::new(&old.storage, old.geo, old.root, 0, old.geo.max_addr)
                        .map(|(_, p)| p)
                        .collect(),
                    Walk::new(&new.storage, new.geo, new.root, 0, new.geo.max_addr)
                        .map(|(_, p)| p)
                        .collect(),
                )
            };
            diff::sweep(&a, &b, 0, new.geo.max_addr.max(old.geo.max_addr), &mut raw);
        }
        let side = |storage: &'a crate::arena::Storage<V>, p: Option<Piece>| {
            p.map(|p| Mapping {
                // SAFETY: the piece is reachable from a generation borrowed for 'a.
                value: unsafe { storage.piece_value(&p) },
                piece: p.start..=p.end,
                origin: p.origin,
            })
        };
        raw.into_iter()
            .map(|(s, e, a, b)| Change {
                range: s..=e,
                old: side(&old.storage, a),
                new: side(&new.storage, b),
            })
            .collect()
    }

    /// The tree's shape and pieces as numbers, without slot indices (for tests that compare
    /// trees built by different paths). Not a stable format.
    #[doc(hidden)]
    pub fn canonical_form(&self) -> Vec<u64> {
        let v = &*self.version;
        // SAFETY: `self` keeps the generation alive.
        unsafe { tree::fingerprint(&v.storage, v.root) }
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
    snap: &'a Snapshot<V>,
}

impl<'a, V> Iterator for Iter<'a, V> {
    type Item = (RangeInclusive<u64>, &'a V);

    fn next(&mut self) -> Option<Self::Item> {
        let (_, piece) = self.walk.next()?;
        // SAFETY: the piece is reachable from the generation `snap` holds.
        let value = unsafe { self.snap.version.storage.piece_value(&piece) };
        Some((piece.start..=piece.end, value))
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
        let v = &*self.version;
        // SAFETY: borrowed from `self`, which keeps the generation alive.
        unsafe { Walk::new(&v.storage, v.geo, v.root, 0, v.geo.max_addr) }.map(move |(_, p)| {
            // SAFETY: reachable from the generation `self` holds.
            let value = unsafe { v.storage.piece_value(&p) };
            (p.start..=p.end, p.origin, value)
        })
    }
}
