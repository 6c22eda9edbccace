//! The canonical shape (invariant I7 of `ARCHITECTURE.md`): the two rules both builders (the
//! copy-on-write rebuild in `writer/rebuild.rs` and the bulk build in `bulk.rs`) follow, so
//! that the tree is a function of the mapping alone, whatever history built it.
//!
//! 1. A span overlapped by no piece is empty; by exactly one piece, a leaf of that piece
//!    (early termination, with the span's unmapped bytes folded in: the lookup's final
//!    range check rejects them); by more, a sub-page table at page level, else a node.
//! 2. A node with a single non-empty child is replaced by that child (path compression: the
//!    child's entry carries its own shift, so the walk skips the missing levels).
//! 3. With [`Config::flat_nodes`](crate::Config::flat_nodes) (off by default): a span that
//!    would be a node (rule 1), whose pages number at most 2^32 and do not end on a multiple
//!    of 2^32 pages ([`may_be_flat`]), and whose
//!    subtree, read page by page, is at most [`FLAT_MAX`] runs of equal entries (empty, a
//!    leaf, or one page's sub-page table), is a *flat node* of those runs instead: its whole
//!    subtree in one small block, searched like a sub-page table. Applied top-down (the
//!    highest such span is flat, and holds what would have been its nodes), before rule 2.
//!
//! Rule 3 is what keeps sparse maps small: a 512-entry node is 2 KiB whatever it holds, a
//! flat node of up to 16 runs is 144 bytes, and on real VM maps most nodes are a
//! few devices among holes. It also shortens some walks (one search instead of a node per
//! level) and lengthens others (a search where a dense node took one load): a trade, hence
//! an option.

use crate::arena::{node_bytes, FLAT_BYTES};
use crate::config::Geometry;
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

/// Most runs a flat node holds (rule 3): one block of the arena's fixed flat size.
pub(crate) const FLAT_MAX: usize = crate::arena::FLAT_ROWS;

/// What a run of a flat node is (rule 3), pieces numbered in the order given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Run {
    /// No piece.
    Empty,
    /// One piece over every page of the run: a leaf of it.
    Piece(usize),
    /// One page that several pieces share: a sub-page table of them.
    Page(std::ops::Range<usize>),
}

/// Whether the node's span of height `h` at page `base` may be stored flat (rule 3): few
/// enough pages that the low 32 bits of a page number order them (an aligned span of at most
/// 2^32 pages never crosses a multiple of 2^32 pages), which is what a flat node's rows hold;
/// and not ending on a multiple of 2^32 pages, so that the key one past its last page (where
/// a flat node's last run ends) is below 2^32 too. Not a span of one node that is no bigger
/// than a flat node (a space of 16 pages is one 64-byte node).
pub(crate) fn may_be_flat(geo: &Geometry, h: u32, base: u64) -> bool {
    geo.flat_nodes
        && (h >= 2 || h == 1 && node_bytes(geo.fanout) > FLAT_BYTES)
        && h * geo.level_bits <= 32
        && ((geo.span(h, base).1 >> geo.page_bits) as u32)
            .checked_add(1)
            .is_some()
}

/// Rule 3: the runs of the span of height `h` at page `base`, each with its first page,
/// given the pieces overlapping it (sorted `(start, end)`; they may extend past the span);
/// `None` if there are more than [`FLAT_MAX`]. Reads pieces only until it knows.
pub(crate) fn flat_runs(
    geo: &Geometry,
    h: u32,
    base: u64,
    pieces: impl Iterator<Item = (u64, u64)>,
) -> Option<Vec<(u64, Run)>> {
    let (s, e) = geo.span(h, base);
    let page = |b: u64| b >> geo.page_bits;
    let mut runs = Vec::with_capacity(FLAT_MAX + 1);
    let mut it = pieces
        .map(|(a, b)| (a.max(s), b.min(e)))
        .enumerate()
        .peekable();
    // The first page no run covers yet (u128: the span may end at the last page).
    let mut cur = base as u128;
    // The last piece of a shared page, when it runs on past that page.
    let mut carried = None;
    while let Some((k, (ps, pe))) = carried.take().or_else(|| it.next()) {
        let first = (page(ps) as u128).max(cur) as u64;
        let last = page(pe);
        if first as u128 > cur {
            runs.push((cur as u64, Run::Empty));
        }
        match it.peek() {
            // The next piece starts in this one's last page: that page is a table of every
            // piece that starts in it, and this one.
            Some(&(_, (ns, _))) if page(ns) == last => {
                if first < last {
                    runs.push((first, Run::Piece(k)));
                }
                let mut tail = (k, (ps, pe));
                while let Some(&next) = it.peek() {
                    if page(next.1 .0) != last {
                        break;
                    }
                    tail = next;
                    it.next();
                }
                runs.push((last, Run::Page(k..tail.0 + 1)));
                if page(tail.1 .1) > last {
                    carried = Some(tail);
                }
            }
            _ => runs.push((first, Run::Piece(k))),
        }
        cur = last as u128 + 1;
        if runs.len() > FLAT_MAX {
            return None;
        }
    }
    if cur <= page(e) as u128 {
        runs.push((cur as u64, Run::Empty));
    }
    (runs.len() <= FLAT_MAX).then_some(runs)
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

    /// Rule 3 on a span of 16 pages of 16 bytes (level 4 bits, page 4 bits, height 1).
    #[test]
    fn flat_runs_read_the_span_page_by_page() {
        let geo = crate::Config {
            addr_bits: 16,
            page_bits: 4,
            level_bits: 4,
            flat_nodes: true,
            ..crate::Config::default()
        }
        .geometry()
        .unwrap();
        let runs = |pieces: &[(u64, u64)]| flat_runs(&geo, 1, 0, pieces.iter().copied());
        use Run::*;
        // One piece in the middle of the span: empty, the piece's pages, empty.
        assert_eq!(
            runs(&[(0x20, 0x4f)]),
            Some(vec![(0, Empty), (2, Piece(0)), (5, Empty)])
        );
        // Partly mapped pages are still the piece's (rule 1 folds the hole in).
        assert_eq!(
            runs(&[(0x28, 0x31), (0x50, 0xff)]),
            Some(vec![(0, Empty), (2, Piece(0)), (4, Empty), (5, Piece(1))])
        );
        // Three pieces sharing page 3, the last running on to page 6; a piece from before
        // the span is clipped to it.
        assert_eq!(
            runs(&[(0, 0x31), (0x32, 0x33), (0x34, 0x6f)]),
            Some(vec![
                (0, Piece(0)),
                (3, Page(0..3)),
                (4, Piece(2)),
                (7, Empty)
            ])
        );
        // Two shared pages in a row: the piece between them is in both tables.
        assert_eq!(
            runs(&[(0x10, 0x18), (0x19, 0x25), (0x26, 0x2f)]),
            Some(vec![
                (0, Empty),
                (1, Page(0..2)),
                (2, Page(1..3)),
                (3, Empty)
            ])
        );
        // Past FLAT_MAX runs (a span of 256 pages): none.
        let runs2 = |pieces: &[(u64, u64)]| flat_runs(&geo, 2, 0, pieces.iter().copied());
        let many: Vec<(u64, u64)> = (0..9).map(|i| (i * 0x20, i * 0x20 + 0xf)).collect();
        assert_eq!(runs2(&many), None);
        let few: Vec<(u64, u64)> = (0..8).map(|i| (i * 0x20, i * 0x20 + 0xf)).collect();
        assert_eq!(runs2(&few).map(|r| r.len()), Some(16));
        assert!(may_be_flat(&geo, 2, 0) && !may_be_flat(&geo, 0, 0));
        // One node of 16 entries (64 bytes) is smaller than a flat node: kept dense.
        assert!(!may_be_flat(&geo, 1, 0));
        let dense = crate::Config::default().geometry().unwrap();
        assert!(!may_be_flat(&dense, 1, 0), "off by default");
        // A span ending on a multiple of 2^32 pages is not flat: one past its end has no
        // 32-bit key.
        let wide = crate::Config {
            level_bits: 8,
            flat_nodes: true,
            ..crate::Config::default()
        }
        .geometry()
        .unwrap();
        assert!(may_be_flat(&wide, 3, 0) && may_be_flat(&wide, 3, (1 << 32) - (2 << 24)));
        assert!(!may_be_flat(&wide, 3, (1 << 32) - (1 << 24)) && !may_be_flat(&wide, 4, 0));
        assert!(may_be_flat(&wide, 3, 1 << 32));
    }
}
