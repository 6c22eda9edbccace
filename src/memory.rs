//! [`Memory`]: what a map's arena holds, as the writer accounts it.

/// Memory held by a map's arena, as the writer accounts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct Memory {
    /// Bytes of slots in use: the newest tree plus whatever older generations still held by
    /// a snapshot or reader keep alive. Counted like [`Stats::bytes`](crate::Stats::bytes).
    pub live_bytes: usize,
    /// Node slots in use.
    pub nodes: usize,
    /// Pieces in use (page records included).
    pub pieces: usize,
    /// Of those, page records (see [`Stats::page_records`](crate::Stats::page_records)).
    pub page_records: usize,
    /// Flat nodes in use (sparse subtrees stored as their runs; see [`Stats::flat_nodes`](crate::Stats::flat_nodes)).
    pub flat_nodes: usize,
    /// Sub-page tables in use.
    pub subpage_tables: usize,
    /// Section slots in use.
    pub sections: usize,
    /// Superseded generations still pinned: held by a snapshot, or announced by an online
    /// reader. Non-zero with no snapshot held means a `Reader` is online but idle on an old
    /// generation (see [`Reader::offline`](crate::Reader::offline)).
    pub pinned_generations: usize,
    /// Bytes of the slots kept only for those pinned generations: what the trees they reach
    /// hold and the newest does not. At most the sum of their trees'
    /// [`Stats::bytes`](crate::Stats::bytes), however many commits followed (interval-based
    /// reclamation).
    pub pinned_bytes: usize,
    /// Bytes of node storage reserved by the arena's chunks (chunks grow geometrically and
    /// are kept for reuse; at most about twice the peak node count).
    pub reserved_node_bytes: usize,
}

/// What [`PhysMap::build_counts`](crate::PhysMap::build_counts) returns (feature `test-hooks`; not a stable API).
#[cfg(feature = "test-hooks")]
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BuildCounts {
    /// Subtrees built by the bulk path.
    pub bulk: u64,
    /// Nodes whose children a bulk build made in parallel.
    pub parallel: u64,
}
