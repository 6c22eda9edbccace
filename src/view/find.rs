//! The lookup: [`Held::find`] from a generation's header, [`TreeRef::find`], and what it
//! returns ([`Found`]).

#[cfg(feature = "bus")]
use super::held::Near;
use super::{entries::*, held::Held, tree::*};
use crate::arena::{Piece, Storage};
use crate::entry::Entry;
#[cfg(doc)]
use crate::version::Hot;
use std::marker::PhantomData;

/// Where a piece with no cell of its own (a page record's) is remembered: an empty range,
/// which no address is in.
pub(crate) static NO_PIECE: Piece = Piece {
    start: 1,
    end: 0,
    origin: 0,
    section: std::ptr::null(),
};

/// A piece found by a lookup, by value (a page record's unpacked), with the address of its
/// cell in the piece array (null for a page record's: it has none). By value, not as a
/// reference to a piece the lookup wrote: a store into the caller's frame in the lookup made
/// the compiler reload the version's header on every lookup of a caller's loop. Only this
/// module makes them, from a tree of `V`s borrowed for `'g` (or the header of one:
/// [`Held::find`]), so the piece's section holds a `V` for `'g` ([`Found::value`]).
pub(crate) struct Found<'g, V> {
    piece: Piece,
    cell: *const Piece,
    _g: PhantomData<&'g V>,
}

impl<V> Clone for Found<'_, V> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<V> Copy for Found<'_, V> {}

impl<'g, V> Found<'g, V> {
    /// The piece.
    #[inline(always)]
    pub(crate) fn piece(&self) -> &Piece {
        &self.piece
    }

    /// The piece's cell in the piece array, which [`Found::remembered`] can take back; null
    /// for a page record's piece.
    #[inline(always)]
    pub(crate) fn cell(&self) -> *const Piece {
        self.cell
    }

    /// The value of the piece's section.
    #[inline(always)]
    pub(crate) fn value(&self) -> &'g V {
        // SAFETY: the piece was found in a tree of `V`s held for 'g (only this module makes
        // `Found`s), so its section is one of a held generation's: live, holding a `V`, not
        // written meanwhile (I1, I3, I4, I5).
        unsafe { Storage::<V>::value(&self.piece) }
    }

    /// A piece remembered by its address (see [`Found::cell`]).
    ///
    /// # Safety
    /// `p` came from a `Found<'g, V>` of a generation that is held for `'g`, or points to a
    /// copy of such a piece (a page record's) that is not written for `'g`.
    #[inline(always)]
    pub(crate) unsafe fn remembered(p: *const Piece) -> Found<'g, V> {
        Found {
            // SAFETY: forwarded contract: the piece's slot is not reused while its generation
            // is held (I4), and its array lives as long as the generation (I1).
            piece: unsafe { *p },
            cell: p,
            _g: PhantomData,
        }
    }
}

impl<'g, V> Held<'g, V> {
    /// The piece holding `addr`: one load per level, then the final range check. A
    /// [`Reader`](crate::Reader) keeps a copy of the header beside its announcement and walks
    /// from it, so that the walk neither waits for a load of the version's address and then
    /// of its header, nor touches the version at all.
    #[inline(always)]
    pub(crate) fn find(self, addr: u64) -> Option<Found<'g, V>> {
        self.find_from(self.hot().root, addr)
    }

    /// The bus's walk of `addr`: the same piece as [`Held::find`], with fewer cache lines
    /// from cold. The walk starts past the nodes whose children span a region of
    /// `2^NEAR_BITS` bytes or more (the root's line, and on a map with anything above
    /// 512 GiB the next node's): at [`Hot::low`] for region 0, at the remembered [`Near`]
    /// entry for its region, else from the root (then remembering this region's entry).
    /// Exits cluster in a region or two (a PC's PCI hole and legacy devices, an Arm
    /// machine's low MMIO), so a vCPU's walks mostly skip those lines, as a CPU's
    /// paging-structure caches skip the upper levels of a page walk. Returns the region
    /// to remember next. On a warm loop the select before the walk is a cost every walk
    /// waits for (1.06-1.20x on the warm lookup benches when a fixed low start was tried
    /// there), hence not for the other lookups.
    #[cfg(feature = "bus")]
    #[inline(always)]
    pub(crate) fn find_near(self, addr: u64) -> (Option<Found<'g, V>>, Near) {
        let key = addr >> NEAR_BITS;
        let near = self.near();
        let (start, near) = if key == 0 {
            (self.hot().low, near)
        } else if key == near.key as u64 {
            (near.entry, near)
        } else {
            let e = self.near_start(addr);
            match u16::try_from(key) {
                Ok(key) => (e, Near { key, entry: e }),
                // Beyond 64 TiB: walked from the root each time.
                Err(_) => (e, near),
            }
        };
        (self.find_from(start, addr), near)
    }

    /// The entry where the walk of `addr` goes on from after the nodes whose children span
    /// at least `2^NEAR_BITS` bytes: from the root, down every node whose `shift` is at least
    /// `NEAR_BITS`, to the first entry that is not such a node. Those nodes index with the
    /// address's bits from `NEAR_BITS` up only, so every address of the region
    /// (`addr >> NEAR_BITS`) reads the same entries down to the same one; and a walk of such
    /// an address from the root reads exactly these entries first (each node entry carries
    /// its node's shift, so compressed paths are no exception): starting there finds the
    /// same piece.
    pub(crate) fn near_start(self, addr: u64) -> Entry {
        let mut e = self.hot().root;
        while e.is_node() {
            let (shift, node) = e.node_parts();
            if shift < NEAR_BITS {
                break;
            }
            e = self.entry(node, ((addr >> shift) & self.hot().mask()) as usize);
        }
        e
    }

    /// The walk of `addr` from `e`, an entry of this tree that the walk of `addr` from the
    /// root reaches (the root itself, or [`Held::near_start`]'s).
    #[inline(always)]
    fn find_from(self, mut e: Entry, addr: u64) -> Option<Found<'g, V>> {
        // The header in locals (a copy), so that the loop keeps it in registers.
        let hot = *self.hot();
        while e.is_node() {
            let (shift, node) = e.node_parts();
            let i = (addr >> shift) & hot.mask();
            // `node` comes from an entry of this tree; `i` < fan-out.
            e = self.entry(node, i as usize);
        }
        // Compares, not `kind()`'s match: a jump table here is an indirect branch that
        // mispredicts whenever leaves and tables alternate. Empty first: unmapped addresses
        // end here. (No closure over `hot`: it would put the header in memory, and the
        // caller's loop could no longer keep it in registers across lookups.)
        if e.is_empty() {
            return None;
        }
        // Leaves, then tables, then (only in the flat layout, so last) flat nodes, whose runs
        // are leaves, tables or empty: at most two rounds.
        let slot = loop {
            if let Some(p) = e.leaf_slot() {
                break p;
            }
            if e.is_table() {
                let (class, offset) = e.table_parts();
                let off = (addr & hot.page_mask()) as u32;
                break self.table_piece(offset, class, off)?;
            }
            if !e.is_flat() {
                return None;
            }
            let (class, offset) = e.table_parts();
            if Entry::is_record_class(class) {
                // A page record (a leaf, here after the others: the default layout's common
                // ends keep their compares). It holds its page: the final check is on it.
                let (page, section) = self.record(offset);
                let start = addr & !hot.page_mask();
                if page != start >> hot.page_mask().trailing_ones() {
                    return None;
                }
                return Some(Found {
                    piece: record_piece(start, hot.page_mask(), section),
                    cell: std::ptr::null(),
                    _g: PhantomData,
                });
            }
            // A flat node ends the walk: its runs are keyed by the low 32 bits of their first
            // page. An address outside its span (reached through a compressed path) finds no
            // run, or one whose piece fails the final check: nothing there is mapped (rule 2
            // of `canon.rs`).
            e = self.flat_entry(offset, (addr >> hot.page_mask().trailing_ones()) as u32);
        };
        let piece: &'g Piece = self.piece(slot);
        (piece.start <= addr && addr <= piece.end).then_some(Found {
            piece: *piece,
            cell: piece,
            _g: PhantomData,
        })
    }
}

/// The walks of a bus start past the nodes whose children span `2^NEAR_BITS` bytes (1 GiB)
/// or more ([`Held::find_near`]).
pub(crate) const NEAR_BITS: u32 = 30;

impl<'g, V> TreeRef<'g, V> {
    /// Where the bus's walk of every address of region 0 (below `2^NEAR_BITS`) goes on from
    /// ([`Hot::low`]; [`Held::near_start`]).
    pub(crate) fn low_start(self) -> Entry {
        Held::of(self.version).near_start(0)
    }

    /// The piece holding `addr`, if any: one load per level, then the final range check.
    #[inline(always)]
    pub(crate) fn find(self, addr: u64) -> Option<Found<'g, V>> {
        Held::of(self.version).find(addr)
    }
}

#[cfg(all(test, not(loom), feature = "bus"))]
mod tests {
    use crate::PhysMap;

    /// The bus's walk (from `low` for the first GiB, from the remembered region's entry, or
    /// from the root) finds what the walk from the root finds, at every level's boundaries,
    /// in every region, and across commits (the remembered entry is the held generation's).
    #[test]
    fn the_bus_walk_skips_levels_and_finds_the_same_pieces() {
        let map = PhysMap::new();
        let mut t = map.transaction();
        t.insert(0..=0x7fff_ffff, "ram").unwrap();
        t.insert(0xfe00_0000..=0xfe00_0fff, "dev").unwrap();
        t.insert(0xfee0_0000..=0xfee0_00ff, "apic").unwrap();
        t.insert(0x80_0000_0000..=0x80_0fff_ffff, "bar64").unwrap();
        t.insert(0x4000_0000_0000..=0x4000_0000_0fff, "past-64t")
            .unwrap();
        t.insert(0xffff_0000_0000_0000..=0xffff_0000_0000_0fff, "top")
            .unwrap();
        t.commit().unwrap();
        let mut reader = map.reader();
        let mut addrs = vec![0, 0x7fff_ffff, 0x8000_0000, 0xfe00_0000, 0xfe00_0fff];
        addrs.extend([0xfe00_1000, 0xfee0_00ff, 0xfee0_0100, 0xffff_ffff, 1 << 32]);
        addrs.extend([0x3fff_ffff, 0x4000_0000, 0xbfff_ffff, 0xc000_0000]);
        addrs.extend([0x80_0000_0000, 0x80_0fff_ffff, 0x80_1000_0000]);
        addrs.extend([0x4000_0000_0fff, 0x3fff_ffff_ffff, 0x4000_0000_1000]);
        addrs.extend([0xffff_0000_0000_0fff, u64::MAX]);
        addrs.extend((0..4096u64).map(|i| i.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 32));
        addrs.extend((0..4096u64).map(|i| i.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 24));
        for round in 0..3 {
            let snap = map.snapshot();
            let hot = snap.version.hot;
            // The first GiB is RAM: a leaf past the root.
            assert!(hot.low.leaf_slot().is_some(), "{:?}", hot.low);
            reader.online();
            let pieces: Vec<_> = snap.iter().collect();
            for &a in &addrs {
                // The pieces in order, searched one by one, against the bus's walk.
                let expected = pieces.iter().find(|(r, _)| r.contains(&a));
                let got = reader.dispatch_lookup(a);
                assert_eq!(
                    got.map(|h| (h.range, *h.value)),
                    expected.map(|(r, v)| (r.clone(), **v)),
                    "round {round}: {a:#x}"
                );
            }
            // Remember the PCI hole's region, then a commit that changes it: the first walks
            // of the next round (the new device's) must not start at this generation's entry.
            reader.dispatch_lookup(0xfe00_0000);
            reader.offline();
            let mut t = map.transaction();
            let base = 0xfe10_0000 + round * 0x1000;
            t.insert(base..=base + 0xfff, "moved").unwrap();
            t.insert(0x80_2000_0000 + round..=0x80_2000_0000 + round, "b")
                .unwrap();
            t.commit().unwrap();
            addrs.splice(0..0, [base, base + 0xfff, 0x80_2000_0000 + round]);
        }
    }
}
