//! One published generation: an immutable tree root and what is needed to walk it.

use crate::arena::{Arrays, Bases, Storage};
use crate::config::Geometry;
use crate::entry::Entry;
use crate::sync::Arc;

/// What every lookup reads first: the root, the walk's constants and the base addresses of
/// the arrays the tree lives in, so that the walk touches nothing else. 40 bytes, so that a
/// [`Reader`](crate::Reader) keeps a copy of it in the same cache line as its announcement
/// (`reader.rs`).
#[derive(Clone, Copy)]
#[repr(C)]
pub(crate) struct Hot {
    pub root: Entry,
    /// `fanout - 1` (at most 2^16 - 1): a node's child index is `(addr >> shift) & mask`.
    mask: u32,
    /// `page size - 1` (at most 2^32 - 1): a sub-page table is searched for
    /// `addr & page_mask`, a flat node for the page number `addr >> page_mask.trailing_ones()`
    /// (not a field of its own: the default layout's walk, which never needs it, then keeps
    /// one register more).
    page_mask: u32,
    /// Where the bus's walk of every address below `2^NEAR_BITS` (1 GiB) goes on from after
    /// the nodes whose children span that much or more
    /// ([`TreeRef::low_start`](crate::view::TreeRef::low_start)): the walks of legacy
    /// MMIO, port I/O and an Arm machine's devices skip the root and the levels above the one
    /// that splits the low GiB. (In what would be padding.)
    pub low: Entry,
    pub bases: Bases,
}

const _: () = assert!(std::mem::size_of::<Hot>() == 40);

impl Hot {
    /// The header of no version: an empty root and null bases. A [`Reader`](crate::Reader)
    /// holds it until it first copies in the header of the version it announced, and never
    /// walks it.
    pub(crate) const NONE: Hot = Hot {
        root: Entry::EMPTY,
        mask: 0,
        page_mask: 0,
        low: Entry::EMPTY,
        bases: Bases::NULL,
    };

    /// A header with these bases and nothing else (for the raw reads' unit tests).
    #[cfg(test)]
    pub(crate) fn with_bases(bases: Bases) -> Hot {
        Hot { bases, ..Hot::NONE }
    }

    /// `fanout - 1`.
    #[inline(always)]
    pub(crate) fn mask(&self) -> u64 {
        self.mask as u64
    }

    /// `page size - 1`.
    #[inline(always)]
    pub(crate) fn page_mask(&self) -> u64 {
        self.page_mask as u64
    }
}

/// One published generation.
///
/// Aligned to a cache line so that, inside its `Arc`, the header every lookup reads does not
/// share a line with the reference counts that snapshots write.
///
/// **The version invariant** (I4 of `ARCHITECTURE.md`): whoever can reach a `&Version` can
/// read its tree, for as long as that reference lives. Every way to get one keeps the tree's
/// slots from reuse meanwhile: an `Arc` (a [`Snapshot`](crate::Snapshot), the writer's current
/// version), or a [`Reader`](crate::Reader)'s cached generation. The version also holds the
/// arrays its tree lives in (I1). This is what makes [`Version::tree`] safe.
#[repr(align(64))]
pub(crate) struct Version<V> {
    pub hot: Hot,
    pub generation: u64,
    /// Keeps the arrays `hot.bases` points into alive.
    _arrays: Arrays,
    pub storage: Arc<Storage<V>>,
    pub geo: Geometry,
}

// SAFETY: the raw pointers in `hot` point into `_arrays`, which the version holds (I1), and
// its pieces into `storage`, of which it owns a share; sending or sharing a version sends
// or shares those shares (both are Send + Sync for such V), and the cells its tree reaches
// are not written while it can be read (I3).
unsafe impl<V: Send + Sync> Send for Version<V> {}
// SAFETY: a shared version is only read: its fields never change, the cells its tree
// reaches are not written while it can be read (I3), and the arrays and storage it holds
// (I1) are Sync for such V.
unsafe impl<V: Send + Sync> Sync for Version<V> {}

impl<V> Version<V> {
    pub(crate) fn new(
        generation: u64,
        root: Entry,
        arrays: Arrays,
        storage: Arc<Storage<V>>,
        geo: Geometry,
    ) -> Self {
        let mut version = Version {
            hot: Hot {
                root,
                // Both fit: `Config` allows at most 16 bits a level and 32-bit pages.
                mask: geo.mask as u32,
                page_mask: geo.page_mask() as u32,
                low: root,
                bases: arrays.bases(),
            },
            generation,
            _arrays: arrays,
            storage,
            geo,
        };
        version.hot.low = version.tree().low_start();
        version
    }
}
