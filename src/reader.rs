//! Per-vCPU readers: a cached snapshot plus the most recently used piece.

use crate::snapshot::{Hit, Snapshot};
use crate::sync::Cache;
use crate::version::Version;

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
    mru: Remembered<V>,
    /// Generation that answered the last lookup.
    seen: u64,
}

/// The last piece a reader answered from: its bytes, origin and value.
struct Remembered<V> {
    start: u64,
    end: u64,
    origin: u64,
    value: *const V,
}

impl<V> Remembered<V> {
    /// No piece: an empty range, which no address is in.
    const NONE: Remembered<V> = Remembered {
        start: 1,
        end: 0,
        origin: 0,
        value: std::ptr::null(),
    };
}

// SAFETY: the raw value pointer in `mru` points into storage kept alive by the cached
// generation, which the reader owns; moving the reader to another thread moves that ownership
// with it. Values are shared with other threads, hence `V: Sync`; generations may be dropped
// here, hence Send.
unsafe impl<V: Send + Sync> Send for Reader<V> {}

impl<V> Reader<V> {
    pub(crate) fn new(cache: Cache<Version<V>>) -> Self {
        Reader {
            cache,
            mru: Remembered::NONE,
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
            self.mru = Remembered::NONE;
        }
        let m = &self.mru;
        if m.start <= addr && addr <= m.end {
            // SAFETY: `m.value` was read from generation `seen`, the one the cache holds (it
            // was reset when the generation changed), so the section is live and unwritten
            // for as long as `self` is borrowed (I4, I5).
            let value = unsafe { &*m.value };
            return Some(Hit {
                value,
                range: m.start..=m.end,
                offset: addr - m.origin,
            });
        }
        let tree = v.tree();
        let piece = tree.find(addr)?;
        let value = tree.value(piece);
        self.mru = Remembered {
            start: piece.start,
            end: piece.end,
            origin: piece.origin,
            value,
        };
        Some(Hit::new(value, &piece, addr))
    }

    /// The generation that answered the last [`lookup`](Reader::lookup) (0 before any).
    /// Does not refresh: use it to tie an answer to the generation it came from.
    pub fn last_generation(&self) -> u64 {
        self.seen
    }

    /// The cached snapshot (refreshed first).
    pub fn snapshot(&mut self) -> Snapshot<V> {
        Snapshot {
            version: self.cache.load().clone(),
        }
    }

    /// Catches up with the newest generation now, letting go of the one held before (the
    /// newest generation pins no garbage). Returns its number: the generation the next
    /// lookup will answer from, unless another commit comes first.
    pub fn refresh(&mut self) -> u64 {
        self.cache.load().generation
    }
}
