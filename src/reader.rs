//! Per-vCPU readers: a cached snapshot plus the most recently used piece.

use crate::arena::Piece;
use crate::snapshot::{Hit, Snapshot};
use crate::sync::Cache;
use crate::version::Version;
use crate::view::PieceRef;

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
    last: Last<V>,
}

/// What a reader remembers of its last lookup.
struct Last<V> {
    /// The version that answered it, which the remembered piece belongs to.
    seen: *const Version<V>,
    /// Its generation (0 before any lookup).
    generation: u64,
    /// The piece answered from, a piece of `seen` (or [`NO_PIECE`]).
    mru: *const Piece,
    /// How many lookups in a row the walk found `mru` again (see [`Reader::lookup`]).
    repeats: u32,
}

impl<V> Last<V> {
    /// The newest version, through `cache`; forgets the remembered piece if it changed.
    /// Every use of the cache goes through here, so that `seen` is never stale (the address
    /// of a dropped version could be reused by a later one).
    #[inline(always)]
    fn current<'a>(&mut self, cache: &'a mut Cache<Version<V>>) -> &'a Version<V> {
        let v: &Version<V> = cache.load();
        if !std::ptr::eq(v, self.seen) {
            // A new generation: the remembered piece may be gone.
            self.seen = v;
            self.generation = v.generation;
            self.mru = &NO_PIECE;
            self.repeats = 0;
        }
        v
    }
}

/// The remembered piece when there is none: an empty range, which no address is in.
static NO_PIECE: Piece = Piece {
    start: 1,
    end: 0,
    origin: 0,
    section: std::ptr::null(),
};

// SAFETY: the raw pointers point into the generation the cache holds, which the reader owns
// a share of; moving the reader to another thread moves that ownership with it. Values are
// shared with other threads, hence `V: Sync`; generations may be dropped here, hence Send.
unsafe impl<V: Send + Sync> Send for Reader<V> {}

impl<V> Reader<V> {
    pub(crate) fn new(cache: Cache<Version<V>>) -> Self {
        Reader {
            cache,
            last: Last {
                seen: std::ptr::null(),
                generation: 0,
                mru: &NO_PIECE,
                repeats: 0,
            },
        }
    }

    /// Looks `addr` up in the newest published generation.
    ///
    /// The remembered piece is tried first only while lookups keep landing in it (after the
    /// walk found the same piece twice in a row, as exits do when they cluster on a device).
    /// On spread traffic the hit-or-miss branch of a remembered piece is a coin toss the CPU
    /// mispredicts, which costs more than the walk it would save; so there the reader only
    /// walks, and the remembered piece costs a compare and two stores.
    #[inline(always)]
    pub fn lookup(&mut self, addr: u64) -> Option<Hit<'_, V>> {
        let tree = self.last.current(&mut self.cache).tree();
        let last = &mut self.last;
        if last.repeats >= 2 {
            // SAFETY: `mru` is `NO_PIECE` or a piece of `seen`, the version the cache holds
            // for as long as `self` is borrowed (it was reset when the version changed).
            let m = unsafe { PieceRef::remembered(last.mru) };
            if m.start <= addr && addr <= m.end {
                return Some(Hit::new(tree.value(m), &m, addr));
            }
        }
        let piece = tree.find(addr)?;
        let p = piece.as_ptr();
        last.repeats = (last.repeats + 1) * std::ptr::eq(p, last.mru) as u32;
        last.mru = p;
        Some(Hit::new(tree.value(piece), &piece, addr))
    }

    /// The generation that answered the last [`lookup`](Reader::lookup) (0 before any).
    /// Does not refresh: use it to tie an answer to the generation it came from.
    pub fn last_generation(&self) -> u64 {
        self.last.generation
    }

    /// The cached snapshot (refreshed first).
    pub fn snapshot(&mut self) -> Snapshot<V> {
        self.last.current(&mut self.cache);
        Snapshot {
            version: self.cache.load().clone(),
        }
    }

    /// Catches up with the newest generation now, letting go of the one held before (the
    /// newest generation pins no garbage). Returns its number: the generation the next
    /// lookup will answer from, unless another commit comes first.
    pub fn refresh(&mut self) -> u64 {
        self.last.current(&mut self.cache).generation
    }
}
