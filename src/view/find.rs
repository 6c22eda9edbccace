//! The lookup: [`Held::find`] from a generation's header, [`TreeRef::find`], and what it
//! returns ([`Found`]).

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
    ///
    /// With `LOW`, an address below 4 GiB starts at [`Hot::low`], past the levels in which
    /// every such address takes child 0: one line fewer from cold caches where the map has
    /// anything mapped outside the root's child 0 (a bus dispatch); on a warm loop, a select
    /// that every walk waits for (1.06-1.20x on the warm lookup benches when it was tried
    /// there), hence not for the other lookups.
    #[inline(always)]
    pub(crate) fn find<const LOW: bool>(self, addr: u64) -> Option<Found<'g, V>> {
        // The header in locals (a copy), so that the loop keeps it in registers. `hot.low`
        // is the entry the walk of an address below 4 GiB reaches from the root after the
        // levels it skips (`TreeRef::low_start`).
        let hot = *self.hot();
        let mut e = if LOW && addr >> LOW_BITS == 0 {
            hot.low
        } else {
            hot.root
        };
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

/// Addresses below `2^LOW_BITS` (4 GiB) start their walk at [`Hot::low`].
const LOW_BITS: u32 = 32;

impl<'g, V> TreeRef<'g, V> {
    /// The entry where the walk of every address below 4 GiB goes on from after the levels
    /// in which it takes child 0 ([`Hot::low`]): from the root, down child 0 of every node
    /// whose children span at least 4 GiB (`shift >= 32`: `(addr >> shift) & mask` is 0 for
    /// each such address), to the first entry that is not such a node. A walk of such an
    /// address from the root reads exactly these entries first (each node entry carries its
    /// node's shift, so compressed paths are no exception), so starting there finds the same
    /// piece with fewer loads: on the PC and Arm machine maps with anything mapped above
    /// 512 GiB, the root's line.
    pub(crate) fn low_start(self) -> Entry {
        let mut e = self.root().get();
        while e.is_node() {
            let (shift, node) = e.node_parts();
            if shift < LOW_BITS {
                break;
            }
            e = self.entry(node, 0);
        }
        e
    }

    /// The piece holding `addr`, if any: one load per level, then the final range check.
    #[inline(always)]
    pub(crate) fn find(self, addr: u64) -> Option<Found<'g, V>> {
        Held::of(self.version).find::<false>(addr)
    }
}

#[cfg(all(test, not(loom), feature = "bus"))]
mod tests {
    use crate::PhysMap;

    /// With something mapped far above 4 GiB the walk of a low address skips the root, and
    /// finds what the walk from the root finds, at every level's boundaries.
    #[test]
    fn the_low_start_skips_levels_and_finds_the_same_pieces() {
        let map = PhysMap::new();
        let mut t = map.transaction();
        t.insert(0..=0x7fff_ffff, "ram").unwrap();
        t.insert(0xfe00_0000..=0xfe00_0fff, "dev").unwrap();
        t.insert(0xfee0_0000..=0xfee0_00ff, "apic").unwrap();
        t.insert(0x80_0000_0000..=0x80_0fff_ffff, "bar64").unwrap();
        t.insert(0xffff_0000_0000_0000..=0xffff_0000_0000_0fff, "top")
            .unwrap();
        t.commit().unwrap();
        let snap = map.snapshot();
        let mut reader = map.reader();
        reader.dispatch_online();
        let hot = snap.version.hot;
        assert_ne!(
            hot.low, hot.root,
            "the low 4 GiB lie under the root's child 0"
        );
        let (shift, _) = hot.low.node_parts();
        assert!(hot.low.is_node() && shift < super::LOW_BITS);
        let pieces: Vec<_> = snap.iter().collect();
        let mut addrs = vec![0, 0x7fff_ffff, 0x8000_0000, 0xfe00_0000, 0xfe00_0fff];
        addrs.extend([0xfe00_1000, 0xfee0_00ff, 0xfee0_0100, 0xffff_ffff, 1 << 32]);
        addrs.extend([0x80_0000_0000, 0xffff_0000_0000_0fff, u64::MAX]);
        addrs.extend((0..4096u64).map(|i| i.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 32));
        for a in addrs {
            // The pieces in order, searched one by one, against the bus's walk (which starts
            // at `low`).
            let expected = pieces.iter().find(|(r, _)| r.contains(&a));
            let got = reader.dispatch_lookup(a);
            assert_eq!(
                got.map(|h| (h.range, *h.value)),
                expected.map(|(r, v)| (r.clone(), **v)),
                "{a:#x}"
            );
        }
    }
}
