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
    last: Last,
}

/// What a reader remembers of its last lookup.
struct Last {
    /// The generation of the cached version.
    generation: u64,
    /// The piece answered from, a piece of the cached version (or [`NO_PIECE`]): its
    /// address, with in the low bits (pieces are 32-byte aligned) how many lookups in a row
    /// the walk found it again, up to [`REPEATS`] (see [`Reader::lookup`]). One word, so that
    /// remembering costs one load and one store.
    mru: usize,
}

/// Repeats after which the remembered piece is tried first; also the most the count holds.
const REPEATS: usize = 2;
/// The bits of `Last::mru` that hold the count.
const COUNT: usize = 3;

impl Last {
    /// The newest version, through `cache`; forgets the remembered piece if it changed.
    /// Every use of the cache goes through here, so that the remembered piece always belongs
    /// to the cached version.
    #[inline(always)]
    fn current<'a, V>(&mut self, cache: &'a mut Cache<Version<V>>) -> &'a Version<V> {
        if cache.revalidate() {
            self.forget(cache.get().generation);
        }
        cache.get()
    }

    #[cold]
    fn forget(&mut self, generation: u64) {
        // A new generation: the remembered piece may be gone.
        self.generation = generation;
        self.mru = &NO_PIECE as *const Piece as usize;
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
        let generation = cache.get().generation;
        Reader {
            cache,
            last: Last {
                generation,
                mru: &NO_PIECE as *const Piece as usize,
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
        let (mru, count) = (last.mru & !COUNT, last.mru & COUNT);
        if count >= REPEATS {
            // SAFETY: `mru` is `NO_PIECE` or a piece of the version the cache holds for as
            // long as `self` is borrowed (it was reset when the version changed).
            let m = unsafe { PieceRef::remembered(mru as *const Piece) };
            if m.start <= addr && addr <= m.end {
                return Some(Hit::new(tree.value(m), &m, addr));
            }
        }
        let piece = tree.find(addr)?;
        let p = piece.as_ptr() as usize;
        let count = (count + 1).min(REPEATS) * (p == mru) as usize;
        last.mru = p | count;
        Some(Hit::new(tree.value(piece), &piece, addr))
    }

    /// The generation that answered the last [`lookup`](Reader::lookup) (before any, the one
    /// the reader was made on).
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
