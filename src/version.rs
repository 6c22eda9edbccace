//! One published generation: an immutable tree root and what is needed to walk it.

use crate::arena::{ChunkZero, Piece, Storage};
use crate::config::Geometry;
use crate::entry::Entry;
use crate::sync::Arc;
use crate::view::TreeRef;

/// What every lookup reads first, in one cache line: the root and the walk's constants,
/// with chunk 0 of the node and piece slabs copied in (their addresses never change, I1),
/// so the walk starts without touching the shared storage.
#[derive(Clone, Copy)]
pub(crate) struct Hot {
    pub root: Entry,
    /// `fanout - 1`: the child index is `(addr >> shift) & mask`.
    pub mask: u64,
    pub nodes: ChunkZero<u32>,
    pub pieces: ChunkZero<Piece>,
}

/// One published generation.
///
/// Aligned to a cache line so that, inside its `Arc`, the header every lookup reads does not
/// share a line with the reference counts that snapshots write.
///
/// **The version invariant** (I4 of `ARCHITECTURE.md`): whoever can reach a `&Version` can
/// read its tree, for as long as that reference lives. Every way to get one keeps the tree's
/// slots from reuse meanwhile: an `Arc` (a [`Snapshot`](crate::Snapshot), the writer's current
/// version), or a [`Reader`](crate::Reader)'s announced generation. This is what makes
/// [`Version::tree`] safe.
#[repr(align(64))]
pub(crate) struct Version<V> {
    pub hot: Hot,
    pub generation: u64,
    pub storage: Arc<Storage<V>>,
    pub geo: Geometry,
}

// SAFETY: the raw pointers in `hot` point into `storage`, which the version owns a share of;
// sending or sharing a version sends or shares that share (Storage is Send + Sync for such V).
unsafe impl<V: Send + Sync> Send for Version<V> {}
// SAFETY: as above; a version is immutable.
unsafe impl<V: Send + Sync> Sync for Version<V> {}

impl<V> Version<V> {
    pub(crate) fn new(
        generation: u64,
        root: Entry,
        storage: Arc<Storage<V>>,
        geo: Geometry,
    ) -> Self {
        let (nodes, pieces) = storage.zeros();
        Version {
            hot: Hot {
                root,
                mask: geo.mask,
                nodes,
                pieces,
            },
            generation,
            storage,
            geo,
        }
    }

    /// The tree of this generation, readable for as long as `self` is borrowed (the version
    /// invariant above).
    #[inline(always)]
    pub(crate) fn tree(&self) -> TreeRef<'_, V> {
        TreeRef::new(self)
    }
}
