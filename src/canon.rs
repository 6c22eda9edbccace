//! The canonical shape (invariant I7 of `ARCHITECTURE.md`): the two rules both builders (the
//! copy-on-write rebuild in `writer/rebuild.rs` and the bulk build in `bulk.rs`) follow, so
//! that the tree is a function of the mapping alone, whatever history built it.
//!
//! 1. A span overlapped by no piece is empty; by exactly one piece, a leaf of that piece
//!    (early termination, with the span's unmapped bytes folded in: the lookup's final
//!    range check rejects them); by more, a sub-page table at page level, else a node.
//! 2. A node with a single non-empty child is replaced by that child (path compression: the
//!    child's entry carries its own shift, so the walk skips the missing levels).

use crate::entry::Entry;

/// What the entry of a span is, given how many pieces overlap it (rule 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Span {
    Empty,
    Leaf,
    Table,
    Node,
}

impl Span {
    /// Rule 1 for a span of height `h` overlapped by `pieces` pieces.
    pub(crate) fn of(pieces: usize, h: u32) -> Span {
        match pieces {
            0 => Span::Empty,
            1 => Span::Leaf,
            _ if h == 0 => Span::Table,
            _ => Span::Node,
        }
    }
}

/// Rule 2: the entry standing for a span whose children are `kids`, if it is not a node of
/// its own (`None`: at least two children are non-empty, the span needs a node).
pub(crate) fn collapse(kids: &[Entry]) -> Option<Entry> {
    // Count non-empty children a line at a time (vectorised), stopping at two.
    let mut only = Entry::EMPTY;
    let mut count = 0;
    for chunk in kids.chunks(16) {
        let n: u32 = chunk.iter().map(|k| !k.is_empty() as u32).sum();
        if n > 0 {
            count += n as usize;
            if count > 1 {
                return None;
            }
            only = *chunk
                .iter()
                .find(|k| !k.is_empty())
                .expect("one is non-empty");
        }
    }
    Some(only)
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn the_rules() {
        assert_eq!(Span::of(0, 3), Span::Empty);
        assert_eq!(Span::of(1, 0), Span::Leaf);
        assert_eq!(Span::of(2, 0), Span::Table);
        assert_eq!(Span::of(2, 1), Span::Node);
        let (e, l) = (Entry::EMPTY, Entry::leaf(7));
        assert_eq!(collapse(&[e, e, e]), Some(e));
        assert_eq!(collapse(&[e, l, e]), Some(l));
        assert_eq!(collapse(&[l, e, Entry::leaf(8)]), None);
    }
}
