//! Shape of the address space and of the tree, and the checks on user ranges.

use crate::Error;
use std::ops::{Bound, RangeBounds, RangeInclusive};

/// Shape of a [`PhysMap`](crate::PhysMap): address-space size, page size, radix and limits.
///
/// ```
/// use physmap::{Config, PhysMap};
/// // A 16-bit port I/O space, 256-byte "pages", 4 bits a level.
/// let cfg = Config { addr_bits: 16, page_bits: 8, level_bits: 4, ..Config::default() };
/// let map: PhysMap<&str> = PhysMap::with_config(cfg).unwrap();
/// assert!(PhysMap::<u8>::with_config(Config { level_bits: 0, ..Config::default() }).is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Bits of address: the space is `0..=2^addr_bits - 1`. 1..=64, default 64.
    pub addr_bits: u32,
    /// Bits of a page (the unit of the radix tree): 0..=32 and at most `addr_bits`; default 12
    /// (4 KiB). Sub-page sections are still resolved to the byte.
    pub page_bits: u32,
    /// Bits of page number consumed per tree level: 1..=16; default 9 (512-entry nodes).
    /// A space of fewer page-number bits than this is one node of exactly its pages (a
    /// 16-bit port I/O space of 4 KiB pages: one node of 16 entries, 64 bytes).
    pub level_bits: u32,
    /// Most tree nodes the arena may hold at once (live plus not yet reclaimed). Node entries
    /// address 2^24 cache lines of the node array, so the arena holds at most
    /// 2^24 / ceil(2^level_bits / 16) nodes (524,288 at the default 9 bits a level) whatever
    /// this says; the default asks for as many as fit.
    pub max_nodes: usize,
    /// Most pieces (page records included), sections and sub-page rows (each counted
    /// separately) the arena may hold at once; at most 2^30 - 1, the default.
    pub max_pieces: usize,
    /// Store sparse subtrees as *flat nodes* (rule 3 in ARCHITECTURE.md): a node whose
    /// subtree is at most 16 runs of pages (empty, one piece, or one page's sub-page table)
    /// becomes one 144-byte block searched without a branch, instead of 2 KiB nodes
    /// per level. Default `false`.
    ///
    /// The trade: on the QEMU dumps in `tests/data` this takes `physmap import`'s total bytes
    /// (each map over the space its FlatView needs) from 0.3-37 % of QEMU's to 0.3-14.7 %,
    /// and RAM lookups (a flat node replaces two or three levels) often get faster; but an
    /// MMIO lookup that ends in a flat node of device pages pays a search of up to 16 rows
    /// where a dense node paid one load: up to about a quarter more per lookup on small maps
    /// (BENCHMARKS.md, "Flat nodes"). Worth it where memory
    /// counts (maps held by the thousand, simulators); a VMM's exit path keeps the default.
    ///
    /// ```
    /// use physmap::{Config, PhysMap};
    /// let map = PhysMap::with_config(Config { flat_nodes: true, ..Config::default() }).unwrap();
    /// let mut t = map.transaction();
    /// t.insert(0..0x8000_0000, "ram").unwrap();
    /// t.insert(0xfec0_0000..=0xfec0_0fff, "ioapic").unwrap();
    /// t.insert(0xfed0_0000..=0xfed0_03ff, "hpet").unwrap();
    /// t.commit().unwrap();
    /// let s = map.snapshot();
    /// assert_eq!((s.stats().nodes, s.stats().flat_nodes), (0, 1)); // the whole map in one block
    /// assert_eq!(*s.lookup(0xfed0_0010).unwrap().value, "hpet");
    /// assert!(s.lookup(0xfed0_0400).is_none());
    /// ```
    pub flat_nodes: bool,
    /// Order readers' announcements with `membarrier(2)` instead of a fence (Linux; where the
    /// kernel refuses it the map keeps the fence: [`PhysMap::barrier`](crate::PhysMap::barrier)
    /// says which it uses). Default `false`.
    ///
    /// A reader entering a generation (after a commit, or going online, as a bus dispatch
    /// does each time) stores its announcement and must not load the generation again before
    /// the store is visible: with the fence, it issues a `SeqCst` fence there (a few tens of
    /// cycles); with membarrier, only a compiler fence, and the writer, before it relies on
    /// the announcements (reclamation, [`PhysMap::synchronize`](crate::PhysMap::synchronize)),
    /// calls `membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED)`, an interprocessor interrupt to
    /// every CPU running a thread of the process (liburcu's default flavour does the same).
    ///
    /// Measured here (BENCHMARKS.md, "Exit path"): no gain on the reader's side that a
    /// benchmark resolves (cold-cache dispatches and the KVM guest within noise: the fence
    /// hides behind the cache misses), while each writer barrier cost 17 µs with one other
    /// thread running on this nested machine, and interrupts running vCPUs. Hence off by
    /// default. `PHYSMAP_BARRIER=fence` or `=membarrier` in the environment overrides this for
    /// every map of the process (to compare the two).
    pub membarrier: bool,
}

/// Largest node index an entry can encode.
const NODE_INDEX_LIMIT: usize = crate::entry::NODE_LIMIT - 1;
/// Largest piece / sub-page index an entry can encode.
const PIECE_INDEX_LIMIT: usize = crate::entry::SLOT_LIMIT - 1;

impl Default for Config {
    fn default() -> Self {
        Config {
            addr_bits: 64,
            page_bits: 12,
            level_bits: 9,
            max_nodes: NODE_INDEX_LIMIT,
            max_pieces: PIECE_INDEX_LIMIT,
            flat_nodes: false,
            membarrier: false,
        }
    }
}

/// Derived constants used on every path.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Geometry {
    pub page_bits: u32,
    pub level_bits: u32,
    /// Height of the root entry: the number of node levels a full path has.
    pub height: u32,
    /// Entries per node.
    pub fanout: usize,
    pub mask: u64,
    /// Last valid address.
    pub max_addr: u64,
    /// Whether sparse subtrees are stored as flat nodes ([`Config::flat_nodes`]).
    pub flat_nodes: bool,
    /// Number of pages in the space.
    pub npages: u128,
}

impl Config {
    pub(crate) fn geometry(&self) -> Result<Geometry, Error> {
        let bad = |reason: String| Err(Error::InvalidConfig { reason });
        if !(1..=64).contains(&self.addr_bits) {
            return bad(format!("addr_bits = {} (must be 1..=64)", self.addr_bits));
        }
        if self.page_bits > 32 || self.page_bits > self.addr_bits {
            return bad(format!(
                "page_bits = {} (must be at most 32 and at most addr_bits = {})",
                self.page_bits, self.addr_bits
            ));
        }
        if !(1..=16).contains(&self.level_bits) {
            return bad(format!("level_bits = {} (must be 1..=16)", self.level_bits));
        }
        let page_number_bits = self.addr_bits - self.page_bits;
        // A space that fits in one node is one node of exactly its pages: the lookup's
        // `& mask` then keeps any address's index inside it (an address past the space finds
        // a piece that does not hold it, and the final check rejects it).
        let level_bits = self.level_bits.min(page_number_bits.max(1));
        let height = page_number_bits.div_ceil(level_bits);
        if height > 63 {
            return bad(format!(
                "{page_number_bits} bits of page number at {} bits a level need {height} levels (at most 63)",
                self.level_bits
            ));
        }
        if self.max_nodes == 0 || self.max_nodes > NODE_INDEX_LIMIT {
            return bad(format!(
                "max_nodes = {} (must be 1..={NODE_INDEX_LIMIT})",
                self.max_nodes
            ));
        }
        if self.max_pieces == 0 || self.max_pieces > PIECE_INDEX_LIMIT {
            return bad(format!(
                "max_pieces = {} (must be 1..={PIECE_INDEX_LIMIT})",
                self.max_pieces
            ));
        }
        Ok(Geometry {
            page_bits: self.page_bits,
            level_bits,
            height,
            fanout: 1 << level_bits,
            mask: (1u64 << level_bits) - 1,
            max_addr: if self.addr_bits == 64 {
                u64::MAX
            } else {
                (1u64 << self.addr_bits) - 1
            },
            npages: 1u128 << page_number_bits,
            flat_nodes: self.flat_nodes,
        })
    }
}

impl Geometry {
    /// `page size - 1`: the offset bits of an address.
    #[inline]
    pub(crate) fn page_mask(&self) -> u64 {
        (1u64 << self.page_bits) - 1
    }

    /// Byte span `[start, end]` of the entry of height `h` whose first page is `base`,
    /// clipped to the space.
    #[inline]
    pub(crate) fn span(&self, h: u32, base: u64) -> (u64, u64) {
        let pages = 1u128 << (h * self.level_bits);
        let end_page = (base as u128 + pages).min(self.npages);
        let start = (base as u128) << self.page_bits;
        let end = (end_page << self.page_bits) - 1;
        (start as u64, end as u64)
    }

    /// Pages covered by one entry of height `h`.
    #[inline]
    pub(crate) fn entry_pages(&self, h: u32) -> u128 {
        1u128 << (h * self.level_bits)
    }

    /// Number of entries of a node of height `h` at `base` that lie inside the space.
    pub(crate) fn children_in_space(&self, h: u32, base: u64) -> usize {
        let child = self.entry_pages(h - 1);
        let left = self.npages - base as u128;
        (left.div_ceil(child)).min(self.fanout as u128) as usize
    }

    /// First page of child `i` of the node of height `h` at `base`.
    #[inline]
    pub(crate) fn child_base(&self, h: u32, base: u64, i: usize) -> u64 {
        (base as u128 + i as u128 * self.entry_pages(h - 1)) as u64
    }

    /// The child of the node of height `h` at `base` that holds byte `addr`, clamped to the
    /// node's children (an address before the node gives its first child, one after it its
    /// last): the index arithmetic every walk over a node's children uses.
    #[inline]
    pub(crate) fn child_at(&self, h: u32, base: u64, addr: u64) -> usize {
        let page = (addr >> self.page_bits) as u128;
        let n = self.children_in_space(h, base) as u128;
        (page.saturating_sub(base as u128) / self.entry_pages(h - 1)).min(n - 1) as usize
    }

    /// The children of the node of height `h` at `base` that overlap bytes `[lo, hi]`
    /// (empty if the node does not).
    #[inline]
    pub(crate) fn children_overlapping(
        &self,
        h: u32,
        base: u64,
        lo: u64,
        hi: u64,
    ) -> std::ops::Range<usize> {
        let (s, e) = self.span(h, base);
        if hi < s || lo > e {
            return 0..0;
        }
        self.child_at(h, base, lo)..self.child_at(h, base, hi) + 1
    }

    /// The child of the node of height `h` at `base` that holds byte `addr`, or `None` if
    /// the node does not cover `addr`.
    #[inline]
    pub(crate) fn child_holding(&self, h: u32, base: u64, addr: u64) -> Option<usize> {
        let page = (addr >> self.page_bits) as u128;
        let i = page.checked_sub(base as u128)? / self.entry_pages(h - 1);
        (i < self.children_in_space(h, base) as u128).then_some(i as usize)
    }

    /// The address shift of a node of height `h` (>= 1): its child index is
    /// `(addr >> shift) & mask`. What a node entry carries (see `entry.rs`).
    #[inline]
    pub(crate) fn shift(&self, h: u32) -> u32 {
        self.page_bits + (h - 1) * self.level_bits
    }

    /// The height of the node whose entries carry `shift` (inverse of [`Geometry::shift`]).
    #[inline]
    pub(crate) fn height_of_shift(&self, shift: u32) -> u32 {
        (shift - self.page_bits) / self.level_bits + 1
    }

    /// Checks a user range and turns it into inclusive `(start, end)`.
    pub(crate) fn resolve(&self, range: &impl RangeBounds<u64>) -> Result<(u64, u64), Error> {
        let start: u128 = match range.start_bound() {
            Bound::Included(&s) => s as u128,
            Bound::Excluded(&s) => s as u128 + 1,
            Bound::Unbounded => 0,
        };
        // Exclusive end, in u128 so that `..=u64::MAX` is representable.
        let end_excl: u128 = match range.end_bound() {
            Bound::Included(&e) => e as u128 + 1,
            Bound::Excluded(&e) => e as u128,
            Bound::Unbounded => self.max_addr as u128 + 1,
        };
        if start > u64::MAX as u128 {
            return Err(Error::EmptyRange { start: u64::MAX });
        }
        let s = start as u64;
        if end_excl == start {
            return Err(Error::EmptyRange { start: s });
        }
        if end_excl < start {
            // The inclusive end as given; `..0` has none, and reads as `..=0`, still before
            // the start (which is at least 1 here).
            return Err(Error::InvertedRange {
                start: s,
                end: (end_excl as u64).saturating_sub(1),
            });
        }
        let e = (end_excl - 1) as u64;
        if e > self.max_addr {
            return Err(Error::OutOfSpace {
                start: s,
                end: e,
                limit: self.max_addr,
            });
        }
        Ok((s, e))
    }
}

/// `start..=start + len - 1`, or a typed error if `len` is zero or the end overflows.
///
/// ```
/// assert_eq!(physmap::checked_range(0x1000, 0x1000).unwrap(), 0x1000..=0x1fff);
/// assert!(physmap::checked_range(u64::MAX, 2).is_err());
/// assert_eq!(physmap::checked_range(0, 0).unwrap_err(), physmap::Error::EmptyRange { start: 0 });
/// ```
pub fn checked_range(start: u64, len: u64) -> Result<RangeInclusive<u64>, Error> {
    if len == 0 {
        return Err(Error::EmptyRange { start });
    }
    match start.checked_add(len - 1) {
        Some(end) => Ok(start..=end),
        None => Err(Error::Overflow { start, len }),
    }
}
