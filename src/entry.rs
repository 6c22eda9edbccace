//! The tree's 32-bit entry: named bit fields, one encoder per kind, one decoder.
//!
//! ```text
//!  31 30 | 29 ............................. 0
//!  0  0  | 0                                    empty (the whole word is 0)
//!  0  1  | piece slot (30 bits)                 leaf: one piece covers every mapped byte
//!                                               of the entry's span
//!  1  0  | 0 | class (4) | row block (25 bits) sub-page table: several pieces in one page,
//!                                               `table_cap(class)` rows at this offset
//!                                               of the row array (`arena/`)
//!  1  0  | 1 | class (4) | row block (25 bits) flat node: a sparse subtree stored as its
//!                                               runs, one fixed-size block of the row
//!                                               array (class 0; rule 3 of `canon.rs`)
//!  1  0  | 1 | 1 (4 bits) | row block (25 bits) page record: a leaf whose piece is exactly
//!                                               one page with its origin at its start, in
//!                                               3 cells of the row array (`arena/`)
//!  1  1  | shift (6 bits) | node (24 bits)      node: at this offset of the node array,
//!                                               in units of 16 cells (a cache line)
//! ```
//!
//! Node and table entries locate their node or rows directly in their array (the lookup
//! computes the address with one multiply-add); the arena (`arena/`) owns those units.
//!
//! A node entry carries the *shift* of the node it points to: the lookup takes the child
//! index as `(addr >> shift) & mask`, so a path may skip levels (path compression) and the
//! walk needs neither the node's height nor a multiplication. The writer converts between
//! shifts and heights with [`Geometry::shift`](crate::config::Geometry::shift) and
//! [`Geometry::height_of_shift`](crate::config::Geometry::height_of_shift).
//!
//! Node entries are the top quarter of the `u32` range, so "is this a node" is one compare
//! ([`Entry::is_node`]), the test the lookup loop runs at every level; flat nodes are the
//! eighth just below, so "is this a flat node" is one shift and compare ([`Entry::is_flat`]).
//! A flat node's rows hold entries that are never nodes or flat nodes (a flat node ends the
//! walk: empty, leaf or sub-page table), so the lookup searches at most one.

/// A tree entry (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
#[repr(transparent)]
pub(crate) struct Entry(u32);

/// Entries as the words they are, for copying nodes in bulk.
pub(crate) fn as_words(entries: &[Entry]) -> &[u32] {
    // SAFETY: `Entry` is `repr(transparent)` over `u32`: same size, alignment and validity.
    unsafe { std::slice::from_raw_parts(entries.as_ptr() as *const u32, entries.len()) }
}

/// What an entry is, decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Empty,
    Leaf(u32),
    /// A sub-page table: `(class, row-block offset)`.
    Subpage(u32, u32),
    /// A flat node: `(class, row-block offset)`.
    Flat(u32, u32),
    Node {
        shift: u32,
        index: u32,
    },
}

/// Bit position of the tag.
const TAG_SHIFT: u32 = 30;
const TAG_LEAF: u32 = 1;
const TAG_SUBPAGE: u32 = 2;
const TAG_NODE: u32 = 3;
/// The smallest node entry: tag `11`, everything else 0.
const NODE_MIN: u32 = TAG_NODE << TAG_SHIFT;
/// Bits of a piece or table slot.
const SLOT_BITS: u32 = 30;
/// Bit position and width of a node entry's shift.
const SHIFT_POS: u32 = 24;
const SHIFT_BITS: u32 = 6;
/// Bits of a node's unit offset.
const NODE_BITS: u32 = 24;
/// Bit of a row-block entry that makes it a flat node rather than a sub-page table.
const FLAT_BIT: u32 = 29;
/// Bit position and width of a row-block entry's size class; bits of its row-block offset.
const CLASS_POS: u32 = 25;
const CLASS_BITS: u32 = 4;

/// The bit of a piece id that makes it a page record's row-block offset rather than a
/// piece slot. [`Entry::leaf`] takes ids, and [`Kind::Leaf`] gives them back: the tree's
/// code treats a page record as the leaf it is; only the lookup and the arena tell them
/// apart.
pub(crate) const RECORD: u32 = 1 << 31;
/// The size class field of a page record's entry (a flat node's is 0).
const RECORD_CLASS: u32 = 1;

/// One more than the largest piece or sub-page table slot an entry can name.
pub(crate) const SLOT_LIMIT: usize = 1 << SLOT_BITS;
/// One more than the largest node unit offset an entry can carry.
pub(crate) const NODE_LIMIT: usize = 1 << NODE_BITS;
/// One more than the largest row-block offset a table entry can carry.
pub(crate) const TABLE_OFFSET_LIMIT: usize = 1 << CLASS_POS;
/// One more than the largest shift a node entry can carry.
pub(crate) const SHIFT_LIMIT: u32 = 1 << SHIFT_BITS;

const fn mask(bits: u32) -> u32 {
    (1 << bits) - 1
}

impl Entry {
    pub(crate) const EMPTY: Entry = Entry(0);

    /// The leaf of piece id `id`: a piece slot, or [`RECORD`] and a page record's row-block
    /// offset.
    pub(crate) fn leaf(id: u32) -> Entry {
        if id & RECORD != 0 {
            let offset = id & !RECORD;
            debug_assert!((offset as usize) < TABLE_OFFSET_LIMIT);
            return Entry(
                TAG_SUBPAGE << TAG_SHIFT | 1 << FLAT_BIT | RECORD_CLASS << CLASS_POS | offset,
            );
        }
        debug_assert!((id as usize) < SLOT_LIMIT);
        Entry(TAG_LEAF << TAG_SHIFT | id)
    }

    /// Whether a flat-node-or-record entry ([`Entry::is_flat`]) whose class is `class`
    /// ([`Entry::table_parts`]) is a page record.
    #[inline(always)]
    pub(crate) fn is_record_class(class: u32) -> bool {
        class == RECORD_CLASS
    }

    pub(crate) fn subpage(class: u32, offset: u32) -> Entry {
        debug_assert!(class < 1 << CLASS_BITS && (offset as usize) < TABLE_OFFSET_LIMIT);
        Entry(TAG_SUBPAGE << TAG_SHIFT | class << CLASS_POS | offset)
    }

    pub(crate) fn flat(class: u32, offset: u32) -> Entry {
        debug_assert!(class < 1 << CLASS_BITS && (offset as usize) < TABLE_OFFSET_LIMIT);
        debug_assert!(class != RECORD_CLASS, "a page record's class");
        Entry(TAG_SUBPAGE << TAG_SHIFT | 1 << FLAT_BIT | class << CLASS_POS | offset)
    }

    /// Whether this is a flat node entry, or a page record's (the lookup tells them apart by
    /// the class, [`Entry::is_record_class`]): one shift and compare.
    #[inline(always)]
    pub(crate) fn is_flat(self) -> bool {
        self.0 >> FLAT_BIT == (TAG_SUBPAGE << 1 | 1)
    }

    /// The piece slot of a leaf entry (`None` for other kinds): one compare.
    #[inline(always)]
    pub(crate) fn leaf_slot(self) -> Option<u32> {
        (self.0 >> TAG_SHIFT == TAG_LEAF).then_some(self.0 & mask(SLOT_BITS))
    }

    /// Whether this is a sub-page table entry: one shift and compare.
    #[inline(always)]
    pub(crate) fn is_table(self) -> bool {
        self.0 >> FLAT_BIT == TAG_SUBPAGE << 1
    }

    /// `(class, row-block offset)` of a table or flat node entry (meaningless for other
    /// kinds).
    #[inline(always)]
    pub(crate) fn table_parts(self) -> (u32, u32) {
        (
            self.0 >> CLASS_POS & mask(CLASS_BITS),
            self.0 & mask(CLASS_POS),
        )
    }

    pub(crate) fn node(shift: u32, index: u32) -> Entry {
        debug_assert!(shift < SHIFT_LIMIT && (index as usize) < NODE_LIMIT);
        Entry(NODE_MIN | shift << SHIFT_POS | index)
    }

    /// The one decoder.
    #[inline(always)]
    pub(crate) fn kind(self) -> Kind {
        let slot = self.0 & mask(SLOT_BITS);
        match self.0 >> TAG_SHIFT {
            0 => Kind::Empty,
            TAG_LEAF => Kind::Leaf(slot),
            TAG_SUBPAGE => {
                let (class, offset) = self.table_parts();
                if self.is_flat() && class == RECORD_CLASS {
                    Kind::Leaf(RECORD | offset)
                } else if self.is_flat() {
                    Kind::Flat(class, offset)
                } else {
                    Kind::Subpage(class, offset)
                }
            }
            _ => {
                let (shift, index) = self.node_parts();
                Kind::Node { shift, index }
            }
        }
    }

    /// Whether this is a node entry: one compare, for the lookup loop.
    #[inline(always)]
    pub(crate) fn is_node(self) -> bool {
        self.0 >= NODE_MIN
    }

    /// `(shift, node slot)` of a node entry (meaningless for other kinds): the lookup loop's
    /// decoder, the same fields [`Entry::kind`] reads.
    #[inline(always)]
    pub(crate) fn node_parts(self) -> (u32, u32) {
        (
            self.0 >> SHIFT_POS & mask(SHIFT_BITS),
            self.0 & mask(NODE_BITS),
        )
    }

    pub(crate) fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// Whether the entry points to a structure of its own (a node, flat node or sub-page
    /// table).
    pub(crate) fn is_inner(self) -> bool {
        matches!(
            self.kind(),
            Kind::Node { .. } | Kind::Subpage(..) | Kind::Flat(..)
        )
    }

    /// An entry read back from a node cell.
    #[inline(always)]
    pub(crate) fn from_bits(bits: u32) -> Entry {
        Entry(bits)
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_corners_round_trip() {
        assert_eq!(Entry::EMPTY.kind(), Kind::Empty);
        assert!(Entry::EMPTY.is_empty() && !Entry::EMPTY.is_node());
        for slot in [0, 1, SLOT_LIMIT as u32 - 1] {
            assert_eq!(Entry::leaf(slot).kind(), Kind::Leaf(slot));
            assert!(!Entry::leaf(slot).is_node());
        }
        for (class, offset) in [(0, 0), (15, TABLE_OFFSET_LIMIT as u32 - 1), (3, 64)] {
            let e = Entry::subpage(class, offset);
            assert_eq!(e.kind(), Kind::Subpage(class, offset));
            assert!(!e.is_node() && !e.is_flat() && e.is_inner());
            let f = Entry::flat(class, offset);
            assert_eq!(f.kind(), Kind::Flat(class, offset));
            assert!(!f.is_node() && f.is_flat() && f.is_inner());
            assert_eq!(f.table_parts(), (class, offset));
        }
        for (shift, index) in [(0, 0), (63, NODE_LIMIT as u32 - 1), (12, 5)] {
            let e = Entry::node(shift, index);
            assert_eq!(e.kind(), Kind::Node { shift, index });
            assert!(e.is_node() && e.is_inner());
            assert_eq!(e.node_parts(), (shift, index));
        }
    }

    proptest! {
        /// Every encodable value decodes to itself, through both decoders, and no two
        /// different values share a word.
        #[test]
        fn every_kind_round_trips(slot in 0u32..SLOT_LIMIT as u32, shift in 0u32..SHIFT_LIMIT, index in 0u32..NODE_LIMIT as u32, class in 0u32..1 << CLASS_BITS, offset in 0u32..TABLE_OFFSET_LIMIT as u32) {
            let leaf = Entry::leaf(slot);
            let table = Entry::subpage(class, offset);
            let node = Entry::node(shift, index);
            // (Class 1 with the flat bit is a page record's.)
            let flat = Entry::flat(if class == RECORD_CLASS { 0 } else { class }, offset);
            let record = Entry::leaf(RECORD | offset);
            prop_assert_eq!(record.kind(), Kind::Leaf(RECORD | offset));
            prop_assert!(record.is_flat() && Entry::is_record_class(record.table_parts().0));
            prop_assert_eq!(record.table_parts().1, offset);
            prop_assert_eq!(leaf.kind(), Kind::Leaf(slot));
            prop_assert_eq!(table.kind(), Kind::Subpage(class, offset));
            prop_assert!(matches!(flat.kind(), Kind::Flat(_, o) if o == offset));
            prop_assert_eq!(node.kind(), Kind::Node { shift, index });
            prop_assert_eq!(Entry::from_bits(as_words(&[node])[0]), node);
            let all = [leaf, table, flat, node, record];
            for (i, a) in all.iter().enumerate() {
                prop_assert!(!a.is_empty());
                prop_assert_eq!(a.is_flat(), i == 2 || i == 4);
                for b in &all[i + 1..] {
                    prop_assert!(a != b);
                }
            }
        }

        /// Any word decodes to exactly one kind, and re-encoding that kind gives the word
        /// back (the encoding has no unused or ambiguous words but the empty one's).
        #[test]
        fn every_word_decodes_and_re_encodes(bits in any::<u32>()) {
            let e = Entry::from_bits(bits);
            let again = match e.kind() {
                Kind::Empty => Entry::EMPTY,
                Kind::Leaf(p) => Entry::leaf(p),
                Kind::Subpage(class, offset) => Entry::subpage(class, offset),
                Kind::Flat(class, offset) => Entry::flat(class, offset),
                Kind::Node { shift, index } => Entry::node(shift, index),
            };
            if bits >> TAG_SHIFT == 0 {
                prop_assert_eq!(e.kind(), Kind::Empty);
            } else {
                prop_assert_eq!(again, e);
            }
            prop_assert_eq!(e.is_node(), matches!(e.kind(), Kind::Node { .. }));
            let record = matches!(e.kind(), Kind::Leaf(p) if p & RECORD != 0);
            prop_assert_eq!(e.is_flat(), matches!(e.kind(), Kind::Flat(..)) || record);
            prop_assert_eq!(e.is_table(), matches!(e.kind(), Kind::Subpage(..)));
            prop_assert_eq!(e.leaf_slot(), match e.kind() { Kind::Leaf(p) if p & RECORD == 0 => Some(p), _ => None });
        }
    }
}
