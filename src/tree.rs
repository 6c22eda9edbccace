//! The radix tree: entry encoding, the lookup walk and in-order traversal.
//!
//! An entry is a `u32`:
//!
//! | bits 31..30 | meaning | rest |
//! | --- | --- | --- |
//! | `00` | empty (the whole word is 0) | - |
//! | `01` | leaf: one piece covers every mapped byte of the entry's span | piece index (30 bits) |
//! | `10` | sub-page table (several pieces in one page) | table index (30 bits) |
//! | `11` | node | height (6 bits), node index (24 bits) |
//!
//! The node's height is carried in the entry that points to it, so a path may skip levels
//! (path compression) and the walk still knows which bits of the page number to use. Every
//! walk ends with "does the piece really hold the address" (QEMU's final check); that check is
//! what makes early leaves, folded holes and skipped levels correct: if a piece holds `addr`,
//! the walk reaches it, because a piece overlaps every span on the path to `addr`.

use crate::arena::{Piece, Storage};
use crate::config::Geometry;

/// A tree entry (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Entry(pub u32);

/// What an entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Empty,
    Leaf(u32),
    Subpage(u32),
    Node { height: u32, index: u32 },
}

impl Entry {
    pub(crate) const EMPTY: Entry = Entry(0);

    pub(crate) fn leaf(piece: u32) -> Entry {
        debug_assert!(piece < 1 << 30);
        Entry(0x4000_0000 | piece)
    }
    pub(crate) fn subpage(table: u32) -> Entry {
        debug_assert!(table < 1 << 30);
        Entry(0x8000_0000 | table)
    }
    pub(crate) fn node(height: u32, index: u32) -> Entry {
        debug_assert!(height < 64 && height > 0 && index < 1 << 24);
        Entry(0xc000_0000 | (height << 24) | index)
    }
    #[inline(always)]
    pub(crate) fn kind(self) -> Kind {
        match self.0 >> 30 {
            0 => Kind::Empty,
            1 => Kind::Leaf(self.0 & 0x3fff_ffff),
            2 => Kind::Subpage(self.0 & 0x3fff_ffff),
            _ => Kind::Node {
                height: (self.0 >> 24) & 63,
                index: self.0 & 0xff_ffff,
            },
        }
    }
    pub(crate) fn is_empty(self) -> bool {
        self.0 == 0
    }
}

/// Finds the piece holding `addr`.
///
/// The hot path: node entries are read straight from the node slab's first chunk (its
/// address, size and the fan-out are read once, before the walk); a node is recognised by a
/// single compare (tag `11` is the top of the `u32` range).
///
/// # Safety
/// `root` must belong to a generation the caller keeps alive, stored in `storage`.
#[inline(always)]
pub(crate) unsafe fn find<V>(
    storage: &Storage<V>,
    geo: &Geometry,
    root: Entry,
    addr: u64,
) -> Option<Piece> {
    let page = addr >> geo.page_bits;
    let (level_bits, mask) = (geo.level_bits, geo.mask);
    let (first, first_slots, unit) = storage.nodes.first_chunk();
    let mut e = root.0;
    while e >= 0xc000_0000 {
        let height = (e >> 24) & 63;
        let node = e & 0xff_ffff;
        let i = ((page >> ((height - 1) * level_bits)) & mask) as usize;
        e = if node < first_slots {
            // SAFETY: the node is reachable from the caller's generation, it lies in chunk 0
            // (which holds `first_slots * unit` cells and lives as long as the storage), and
            // `i < unit`. Reachable cells are never written (invariant 4).
            unsafe { (*first.add(node as usize * unit + i)).with(|p| *p) }
        } else {
            // SAFETY: as above, through the general path.
            unsafe { storage.node_entry(node, i) }
        };
    }
    match Entry(e).kind() {
        Kind::Leaf(p) => {
            // SAFETY: reachable from the caller's generation.
            let piece = unsafe { storage.piece(p) };
            (piece.start <= addr && addr <= piece.end).then_some(piece)
        }
        Kind::Subpage(t) => {
            // SAFETY: reachable from the caller's generation.
            let table = unsafe { storage.subpage(t) };
            let i = table.partition_point(|row| row.start <= addr);
            if i == 0 {
                return None;
            }
            // SAFETY: pieces named by a reachable table are reachable.
            let piece = unsafe { storage.piece(table[i - 1].piece) };
            (piece.start <= addr && addr <= piece.end).then_some(piece)
        }
        _ => None,
    }
}

/// In-order walk of the pieces overlapping `[lo, hi]`, each piece once.
pub(crate) struct Walk<'a, V> {
    storage: &'a Storage<V>,
    geo: Geometry,
    lo: u64,
    hi: u64,
    /// (node, height, next child, end child)
    stack: Vec<(u32, u32, usize, usize)>,
    /// Pieces of a sub-page table still to yield.
    pending: Vec<u32>,
    pending_at: usize,
    last: Option<u32>,
    root: Option<Entry>,
}

impl<'a, V> Walk<'a, V> {
    /// # Safety
    /// `root` must stay reachable (its generation alive) for `'a`.
    pub(crate) unsafe fn new(
        storage: &'a Storage<V>,
        geo: Geometry,
        root: Entry,
        lo: u64,
        hi: u64,
    ) -> Self {
        Walk {
            storage,
            geo,
            lo,
            hi,
            stack: Vec::new(),
            pending: Vec::new(),
            pending_at: 0,
            last: None,
            root: Some(root),
        }
    }

    /// Handles one entry; returns a piece to yield, if any.
    fn visit(&mut self, e: Entry) -> Option<(u32, Piece)> {
        match e.kind() {
            Kind::Empty => None,
            Kind::Leaf(p) => self.offer(p),
            Kind::Subpage(t) => {
                // SAFETY: reachable from the generation that outlives 'a.
                let table = unsafe { self.storage.subpage(t) };
                self.pending.clear();
                self.pending.extend(table.iter().map(|r| r.piece));
                self.pending_at = 0;
                None
            }
            Kind::Node { height, index } => {
                // SAFETY: as above.
                let base = unsafe { self.storage.node_base(index) };
                let child = self.geo.entry_pages(height - 1);
                let n = self.geo.children_in_space(height, base);
                let lo_page = (self.lo >> self.geo.page_bits) as u128;
                let hi_page = (self.hi >> self.geo.page_bits) as u128;
                let b = base as u128;
                let first = if lo_page > b {
                    ((lo_page - b) / child).min(n as u128) as usize
                } else {
                    0
                };
                let end = if hi_page >= b {
                    (((hi_page - b) / child) + 1).min(n as u128) as usize
                } else {
                    0
                };
                if first < end {
                    self.stack.push((index, height, first, end));
                }
                None
            }
        }
    }

    fn offer(&mut self, p: u32) -> Option<(u32, Piece)> {
        if self.last == Some(p) {
            return None;
        }
        // SAFETY: reachable from the generation that outlives 'a.
        let piece = unsafe { self.storage.piece(p) };
        if piece.end < self.lo || piece.start > self.hi {
            return None;
        }
        self.last = Some(p);
        Some((p, piece))
    }
}

impl<V> Iterator for Walk<'_, V> {
    type Item = (u32, Piece);

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if self.pending_at < self.pending.len() {
                let p = self.pending[self.pending_at];
                self.pending_at += 1;
                if let Some(hit) = self.offer(p) {
                    return Some(hit);
                }
                continue;
            }
            if let Some(root) = self.root.take() {
                if let Some(hit) = self.visit(root) {
                    return Some(hit);
                }
                continue;
            }
            let top = self.stack.last_mut()?;
            let (node, _height, next, end) = *top;
            if next >= end {
                self.stack.pop();
                continue;
            }
            top.2 += 1;
            // SAFETY: reachable from the generation that outlives 'a.
            let e = Entry(unsafe { self.storage.node_entry(node, next) });
            if let Some(hit) = self.visit(e) {
                return Some(hit);
            }
        }
    }
}

/// Shape of the tree under `root`: (nodes, sub-page tables, sub-page rows, deepest node path).
///
/// # Safety
/// `root` must belong to a generation the caller keeps alive.
pub(crate) unsafe fn shape<V>(storage: &Storage<V>, root: Entry) -> (usize, usize, usize, u32) {
    let mut nodes = 0;
    let mut tables = 0;
    let mut rows = 0;
    let mut deepest = 0;
    let mut stack = vec![(root, 0u32)];
    while let Some((e, depth)) = stack.pop() {
        match e.kind() {
            Kind::Empty | Kind::Leaf(_) => {}
            Kind::Subpage(t) => {
                tables += 1;
                // SAFETY: reachable.
                rows += unsafe { storage.subpage(t) }.len();
            }
            Kind::Node { index, .. } => {
                nodes += 1;
                deepest = deepest.max(depth + 1);
                // SAFETY: reachable.
                for c in unsafe { storage.node_entries(index) } {
                    let c = Entry(c);
                    if matches!(c.kind(), Kind::Node { .. } | Kind::Subpage(_)) {
                        stack.push((c, depth + 1));
                    }
                }
            }
        }
    }
    (nodes, tables, rows, deepest)
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::{Config, PhysMap};

    #[test]
    fn entries_round_trip() {
        assert_eq!(Entry::EMPTY.kind(), Kind::Empty);
        assert_eq!(Entry::leaf(0).kind(), Kind::Leaf(0));
        assert_eq!(Entry::leaf((1 << 30) - 1).kind(), Kind::Leaf((1 << 30) - 1));
        assert_eq!(Entry::subpage(5).kind(), Kind::Subpage(5));
        assert_eq!(
            Entry::node(63, (1 << 24) - 1).kind(),
            Kind::Node {
                height: 63,
                index: (1 << 24) - 1
            }
        );
        assert_eq!(
            Entry::node(1, 0).kind(),
            Kind::Node {
                height: 1,
                index: 0
            }
        );
        assert!(!Entry::leaf(0).is_empty());
    }

    /// Brute force against the tree of a small space, every address.
    #[test]
    fn find_and_walk_agree_with_brute_force() {
        let config = Config {
            addr_bits: 12,
            page_bits: 3,
            level_bits: 2,
            ..Config::default()
        };
        let map = PhysMap::with_config(config).unwrap();
        let ranges = [
            (0u64, 0u64),
            (1, 6),
            (9, 9),
            (16, 300),
            (301, 301),
            (512, 4095),
        ];
        let mut t = map.transaction();
        for (i, &(s, e)) in ranges.iter().enumerate() {
            t.insert(s..=e, i).unwrap();
        }
        t.remove(600..=700).unwrap();
        t.commit().unwrap();
        let snap = map.snapshot();
        let want = |a: u64| {
            if (600..=700).contains(&a) {
                return None;
            }
            ranges.iter().position(|&(s, e)| s <= a && a <= e)
        };
        let step = if cfg!(miri) { 7 } else { 1 };
        for a in (0..4096u64).step_by(step) {
            assert_eq!(snap.lookup(a).map(|h| *h.value), want(a), "addr {a}");
        }
        let pieces: Vec<_> = snap
            .iter()
            .map(|(r, v)| (*r.start(), *r.end(), *v))
            .collect();
        assert_eq!(pieces.len(), 7);
        assert_eq!(pieces[5], (512, 599, 5));
        assert_eq!(pieces[6], (701, 4095, 5));
        let some: Vec<_> = snap.range(5..=16).map(|(r, _)| *r.start()).collect();
        assert_eq!(some, vec![1, 9, 16]);
        let stats = snap.stats();
        assert!(stats.subpage_tables >= 2 && stats.nodes >= 2, "{stats:?}");
    }

    #[test]
    fn dropping_an_old_snapshot_after_many_commits_frees_everything() {
        let map = PhysMap::new();
        let first = map.snapshot();
        let n = if cfg!(miri) { 40 } else { 100_000 };
        for i in 0..n {
            let mut t = map.transaction();
            t.overwrite(0..0x1000 + (i % 7) * 0x1000, i).unwrap();
            t.commit().unwrap();
        }
        drop(first); // n superseded generations become free at once
        assert_eq!(map.memory().live_bytes, map.snapshot().stats().bytes);
    }
}

/// Writes the tree under `root` level by level, in the spirit of QEMU's dispatch listing:
/// each node with its height, first address, and runs of equal entries.
///
/// # Safety
/// `root` must belong to a generation the caller keeps alive.
pub(crate) unsafe fn dump<V>(
    storage: &Storage<V>,
    geo: &Geometry,
    root: Entry,
    out: &mut dyn std::fmt::Write,
    label: &dyn Fn(&V) -> String,
) -> std::fmt::Result {
    let describe = |e: Entry| -> String {
        match e.kind() {
            Kind::Empty => "-".to_string(),
            Kind::Leaf(p) => {
                // SAFETY: reachable from the caller's generation.
                let piece = unsafe { storage.piece(p) };
                // SAFETY: as above.
                let v = unsafe { storage.piece_value(&piece) };
                format!("leaf {:#x}..={:#x} {}", piece.start, piece.end, label(v))
            }
            Kind::Subpage(t) => format!("sub-page table {t}"),
            Kind::Node { height, index } => format!("node {index} (height {height})"),
        }
    };
    let span_bytes = |h: u32| -> String {
        let bits = h * geo.level_bits + geo.page_bits;
        match bits {
            0..=9 => format!("{} B", 1u128 << bits),
            10..=19 => format!("{} KiB", 1u128 << (bits - 10)),
            20..=29 => format!("{} MiB", 1u128 << (bits - 20)),
            30..=39 => format!("{} GiB", 1u128 << (bits - 30)),
            40..=49 => format!("{} TiB", 1u128 << (bits - 40)),
            50..=59 => format!("{} PiB", 1u128 << (bits - 50)),
            _ => format!("2^{bits} B"),
        }
    };
    writeln!(
        out,
        "root (height {}, {} per entry at the top): {}",
        geo.height,
        span_bytes(geo.height),
        describe(root)
    )?;
    let mut level: Vec<Entry> = vec![root];
    let mut tables = Vec::new();
    while !level.is_empty() {
        let mut next = Vec::new();
        let mut nodes: Vec<(u32, u32)> = level
            .iter()
            .filter_map(|e| match e.kind() {
                Kind::Node { height, index } => Some((height, index)),
                Kind::Subpage(t) => {
                    tables.push(t);
                    None
                }
                _ => None,
            })
            .collect();
        nodes.sort_by_key(|&(h, i)| (std::cmp::Reverse(h), i));
        for (height, index) in nodes {
            // SAFETY: reachable from the caller's generation.
            let base = unsafe { storage.node_base(index) };
            writeln!(
                out,
                "  node {index}: height {height}, from {:#x}, {} per entry",
                (base as u128) << geo.page_bits,
                span_bytes(height - 1)
            )?;
            let n = geo.children_in_space(height, base);
            let mut i = 0;
            while i < n {
                // SAFETY: as above.
                let e = Entry(unsafe { storage.node_entry(index, i) });
                let mut j = i;
                // SAFETY: as above.
                while j + 1 < n && Entry(unsafe { storage.node_entry(index, j + 1) }) == e {
                    j += 1;
                }
                let idx = if i == j {
                    format!("{i}")
                } else {
                    format!("{i}..{j}")
                };
                writeln!(out, "    {idx:>9}  {}", describe(e))?;
                if matches!(e.kind(), Kind::Node { .. } | Kind::Subpage(_)) {
                    next.push(e);
                }
                i = j + 1;
            }
        }
        level = next;
    }
    for t in tables {
        writeln!(out, "  sub-page table {t}:")?;
        // SAFETY: as above.
        for row in unsafe { storage.subpage(t) } {
            writeln!(
                out,
                "    from {:#x}: {}",
                row.start,
                describe(Entry::leaf(row.piece))
            )?;
        }
    }
    Ok(())
}

/// The tree under `root` written as numbers, without slot indices: for each entry in
/// depth-first order its kind, the height and first page of nodes, and the byte ranges of
/// pieces. Two trees with the same fingerprint have the same shape and the same pieces.
///
/// # Safety
/// `root` must belong to a generation the caller keeps alive.
pub(crate) unsafe fn fingerprint<V>(storage: &Storage<V>, root: Entry) -> Vec<u64> {
    let mut out = Vec::new();
    let mut stack = vec![root];
    while let Some(e) = stack.pop() {
        match e.kind() {
            Kind::Empty => out.push(0),
            Kind::Leaf(p) => {
                // SAFETY: reachable.
                let piece = unsafe { storage.piece(p) };
                out.extend([1, piece.start, piece.end]);
            }
            Kind::Subpage(t) => {
                out.push(2);
                // SAFETY: reachable.
                for row in unsafe { storage.subpage(t) } {
                    // SAFETY: reachable.
                    let piece = unsafe { storage.piece(row.piece) };
                    out.extend([row.start, piece.start, piece.end]);
                }
            }
            Kind::Node { height, index } => {
                // SAFETY: reachable.
                out.extend([3, height as u64, unsafe { storage.node_base(index) }]);
                // SAFETY: reachable.
                let kids: Vec<u32> = unsafe { storage.node_entries(index) }.collect();
                stack.extend(kids.into_iter().rev().map(Entry));
            }
        }
    }
    out
}

/// The canonical entries of the children of the position of height `h > 0` at page `base`
/// whose entry is `e` (a fan-out-sized vector; entries past the space stay empty). Filled by
/// ranges, not child by child: a leaf stands for every child its piece overlaps, a compressed
/// node or table for the one child that holds it.
///
/// # Safety
/// `e` must be reachable from a generation the caller holds.
pub(crate) unsafe fn children<V>(
    storage: &Storage<V>,
    geo: &Geometry,
    e: Entry,
    h: u32,
    base: u64,
) -> Vec<Entry> {
    let n = geo.children_in_space(h, base);
    let child_pages = geo.entry_pages(h - 1);
    let mut kids = vec![Entry::EMPTY; geo.fanout];
    let child_of_page = |page: u128| -> Option<usize> {
        let i = page.checked_sub(base as u128)? / child_pages;
        (i < n as u128).then_some(i as usize)
    };
    let page_bits = geo.page_bits;
    match e.kind() {
        Kind::Empty => {}
        Kind::Leaf(p) => {
            // SAFETY: forwarded contract.
            let piece = unsafe { storage.piece(p) };
            // A leaf's piece overlaps its span; it stands for every child it overlaps.
            let lo = child_of_page((piece.start >> page_bits) as u128).unwrap_or(0);
            let hi = child_of_page((piece.end >> page_bits) as u128).unwrap_or(n - 1);
            for k in &mut kids[lo..=hi] {
                *k = e;
            }
        }
        Kind::Subpage(t) => {
            // SAFETY: forwarded contract.
            let at = unsafe { storage.subpage(t) }[0].start;
            if let Some(i) = child_of_page((at >> page_bits) as u128) {
                kids[i] = e;
            }
        }
        Kind::Node { height, index } if height == h => {
            // SAFETY: forwarded contract.
            let entries = unsafe { storage.node_entries(index) };
            for (k, x) in kids.iter_mut().zip(entries).take(n) {
                *k = Entry(x);
            }
        }
        Kind::Node { index, .. } => {
            // SAFETY: forwarded contract.
            let nb = unsafe { storage.node_base(index) } as u128;
            if let Some(i) = child_of_page(nb) {
                kids[i] = e;
            }
        }
    }
    kids
}
