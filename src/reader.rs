//! Per-vCPU readers: a cached snapshot plus the most recently used piece.

use crate::arena::Piece;
use crate::publish::Version;
use crate::snapshot::{Hit, Snapshot};
use crate::sync::Cache;
use crate::tree;

/// A per-vCPU lookup handle. Give each vCPU thread its own.
///
/// It caches the newest snapshot and the last piece it answered from. Each lookup first
/// checks, with one load and one pointer compare, that the cached snapshot is still the newest
/// (refreshing it if not, which takes one reference count), then tries the remembered piece
/// (two compares), and only then walks the tree. It never writes to memory shared with other
/// threads, except when it refreshes.
///
/// A reader that is idle keeps its cached generation alive; call [`Reader::refresh`] (or drop
/// it) when a vCPU parks for long, so the slots later commits retired can be reused.
///
/// ```
/// use physmap::PhysMap;
/// let map = PhysMap::new();
/// let mut txn = map.transaction();
/// txn.insert(0..=0xffff, "io").unwrap();
/// txn.commit().unwrap();
/// let mut vcpu = map.reader();
/// assert_eq!(*vcpu.lookup(0x60).unwrap().value, "io");
/// let mut txn = map.transaction();
/// txn.overwrite(0x60..=0x60, "i8042").unwrap();
/// txn.commit().unwrap();
/// assert_eq!(*vcpu.lookup(0x60).unwrap().value, "i8042"); // always the newest generation
/// ```
pub struct Reader<V> {
    cache: Cache<Version<V>>,
    /// Last piece answered from, in generation `seen` (an empty range when there is none).
    mru: Piece,
    /// Generation that answered the last lookup.
    seen: u64,
}

// SAFETY: the raw value pointer in `mru` points into storage kept alive by the cached generation, which
// the reader owns; moving the reader to another thread moves that ownership with it. Values
// are shared with other threads, hence `V: Sync`; generations may be dropped here, hence Send.
unsafe impl<V: Send + Sync> Send for Reader<V> {}

/// The remembered piece when there is none: an empty range.
const NO_PIECE: Piece = Piece {
    start: 1,
    end: 0,
    origin: 0,
    section: 0,
    value: std::ptr::null(),
};

impl<V> Reader<V> {
    pub(crate) fn new(cache: Cache<Version<V>>) -> Self {
        Reader {
            cache,
            mru: NO_PIECE,
            seen: 0,
        }
    }

    /// Looks `addr` up in the newest published generation.
    #[inline]
    pub fn lookup(&mut self, addr: u64) -> Option<Hit<'_, V>> {
        let v = self.cache.load();
        if v.generation != self.seen {
            // A new generation: the remembered piece may be gone.
            self.seen = v.generation;
            self.mru = NO_PIECE;
        }
        if self.mru.start <= addr && addr <= self.mru.end {
            // SAFETY: `mru` comes from generation `seen`, the one the cache holds, so its
            // section is still allocated and unchanged.
            return Some(Hit::new(
                unsafe { v.storage.piece_value(&self.mru) },
                &self.mru,
                addr,
            ));
        }
        // SAFETY: the cache holds the generation for as long as `self` is borrowed.
        let piece = unsafe { tree::find(&v.storage, &v.geo, v.root, addr) }?;
        // SAFETY: as above.
        let value = unsafe { v.storage.piece_value(&piece) };
        self.mru = piece;
        Some(Hit::new(value, &piece, addr))
    }

    /// The generation that answered the last [`lookup`](Reader::lookup) (0 before any).
    /// Does not refresh: use it to tie an answer to the generation it came from.
    pub fn last_generation(&self) -> u64 {
        self.seen
    }

    /// The generation the next lookup will answer from, refreshing the cache if needed.
    pub fn generation(&mut self) -> u64 {
        self.cache.load().generation
    }

    /// The cached snapshot (refreshed first).
    pub fn snapshot(&mut self) -> Snapshot<V> {
        Snapshot {
            version: self.cache.load().clone(),
        }
    }

    /// Catches up with the newest generation now, letting go of the one held before (the
    /// newest generation pins no garbage). Returns its number.
    pub fn refresh(&mut self) -> u64 {
        self.cache.load().generation
    }
}
