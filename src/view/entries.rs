//! What a tree borrowed for `'g` hands out: its entries ([`TreeEntry`]), a node's children
//! ([`Kids`]) and its pieces ([`PieceRef`]).

use crate::arena::Piece;
use crate::canon;
use crate::entry::{Entry, Kind};
use std::marker::PhantomData;

/// An entry read from a tree borrowed for `'g`: only [`TreeRef`](super::tree::TreeRef) makes them, so the slots
/// it names are readable for `'g`. (Entries of two trees of the same storage, both borrowed
/// for `'g`, may be mixed: any slot reachable from a held generation is readable.)
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) struct TreeEntry<'g> {
    e: Entry,
    _g: PhantomData<&'g ()>,
}

impl<'g> TreeEntry<'g> {
    pub(super) fn new(e: Entry) -> Self {
        TreeEntry { e, _g: PhantomData }
    }
    /// The plain entry (for comparing with, or storing next to, new entries).
    #[inline(always)]
    pub(crate) fn get(self) -> Entry {
        self.e
    }
    pub(crate) fn kind(self) -> Kind {
        self.e.kind()
    }
}

/// The children of a position of a tree borrowed for `'g` ([`TreeRef::children`](super::tree::TreeRef::children)): entries
/// of the tree, read one by one as [`TreeEntry`]s, or turned into the entry of a new tree
/// once some are replaced ([`Kids::collapse`]).
pub(crate) struct Kids<'g> {
    pub(super) repr: Repr,
    pub(super) fanout: usize,
    pub(super) _g: PhantomData<&'g ()>,
}

/// A node's children as stored, or (for a leaf, a table or a compressed path standing at the
/// position) one entry over a run of children, the rest empty: no fan-out-sized vector for
/// the positions a commit passes through on its way down a compressed path.
pub(super) enum Repr {
    Dense(Vec<Entry>),
    Run(std::ops::Range<usize>, Entry),
}

impl<'g> Kids<'g> {
    /// Child `i`.
    #[inline]
    pub(crate) fn at(&self, i: usize) -> TreeEntry<'g> {
        TreeEntry::new(match &self.repr {
            Repr::Dense(v) => v[i],
            Repr::Run(r, e) if r.contains(&i) => *e,
            Repr::Run(..) => Entry::EMPTY,
        })
    }

    /// How many there are (the fan-out).
    pub(crate) fn len(&self) -> usize {
        self.fanout
    }

    /// The children with `changed` ones replaced (sorted by index): the entry that stands
    /// for them all if rule 2 of `canon.rs` collapses them, else all of them, for a node.
    pub(crate) fn collapse(self, changed: &[(usize, Entry)]) -> Result<Entry, Vec<Entry>> {
        if let Repr::Run(r, e) = &self.repr {
            // Few non-empty children: apply the rule to them alone (at most two of the run's
            // untouched ones matter).
            let mut rest = r
                .clone()
                .filter(|i| changed.binary_search_by_key(i, |c| c.0).is_err());
            let some: Vec<Entry> = rest
                .by_ref()
                .take(2)
                .map(|_| *e)
                .chain(changed.iter().map(|c| c.1))
                .collect();
            if let Some(single) = canon::collapse(&some) {
                return Ok(single);
            }
        }
        let mut kids = match self.repr {
            Repr::Dense(v) => v,
            Repr::Run(r, e) => {
                let mut v = vec![Entry::EMPTY; self.fanout];
                v[r].fill(e);
                v
            }
        };
        for &(i, e) in changed {
            kids[i] = e;
        }
        canon::collapse(&kids).ok_or(kids)
    }
}

/// A piece read from a tree borrowed for `'g` (only [`TreeRef`](super::tree::TreeRef) makes them), by value: a
/// page record's is unpacked. For walks; a lookup returns a [`Found`](super::find::Found).
#[derive(Clone, Copy)]
pub(crate) struct PieceRef<'g> {
    pub(super) piece: Piece,
    pub(super) record: bool,
    pub(super) _g: PhantomData<&'g Piece>,
}

impl PieceRef<'_> {
    /// Whether this is a page record's piece (see `PageRecord` in `arena/layout.rs`).
    pub(crate) fn is_record(self) -> bool {
        self.record
    }
}

impl std::ops::Deref for PieceRef<'_> {
    type Target = Piece;
    fn deref(&self) -> &Piece {
        &self.piece
    }
}

/// The piece of a page record: page `[start, start | page_mask]`, origin at its start,
/// section cell `section`.
#[inline(always)]
pub(super) fn record_piece(start: u64, page_mask: u64, section: *const ()) -> Piece {
    Piece {
        start,
        end: start | page_mask,
        origin: start,
        section,
    }
}
