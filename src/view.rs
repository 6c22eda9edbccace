//! [`TreeRef`]: a safe, read-only view of one generation's tree, valid for a lifetime `'g`.
//!
//! A `TreeRef<'g, V>` is made only from a `&'g Version<V>` (see the version invariant in
//! `version.rs`): for `'g`, every slot reachable from its root exists (I1, I2) and is not
//! written (I3, I4). That one fact is what the few `unsafe` blocks below rely on; everything
//! built on them (the lookup, in-order walks, a node's children, the shape, the dump, the
//! fingerprint) is safe code, and the writer reads its current tree through the same view.
//!
//! The walk: the entry's tag says what it is; a node entry carries the shift of its node's
//! index (`entry.rs`), so a path may skip levels. Every lookup ends with "does the piece
//! really hold the address" (QEMU's final check), which makes early leaves, folded holes and
//! skipped levels correct: if a piece holds `addr`, the walk reaches it, because a piece
//! overlaps every span on the path to `addr`.

use crate::arena::{table_cap, Piece, Storage, SubEntry, NODE_UNIT};
use crate::canon;
use crate::config::Geometry;
use crate::entry::RECORD;
use crate::entry::{Entry, Kind};
use crate::version::{Hot, Version};
use std::marker::PhantomData;

/// An entry read from a tree borrowed for `'g`: only [`TreeRef`] makes them, so the slots
/// it names are readable for `'g`. (Entries of two trees of the same storage, both borrowed
/// for `'g`, may be mixed: any slot reachable from a held generation is readable.)
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) struct TreeEntry<'g> {
    e: Entry,
    _g: PhantomData<&'g ()>,
}

impl<'g> TreeEntry<'g> {
    fn new(e: Entry) -> Self {
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

/// The children of a position of a tree borrowed for `'g` ([`TreeRef::children`]): entries
/// of the tree, read one by one as [`TreeEntry`]s, or turned into the entry of a new tree
/// once some are replaced ([`Kids::collapse`]).
pub(crate) struct Kids<'g> {
    repr: Repr,
    fanout: usize,
    _g: PhantomData<&'g ()>,
}

/// A node's children as stored, or (for a leaf, a table or a compressed path standing at the
/// position) one entry over a run of children, the rest empty: no fan-out-sized vector for
/// the positions a commit passes through on its way down a compressed path.
enum Repr {
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

/// A piece read from a tree borrowed for `'g` (only [`TreeRef`] makes them), by value: a
/// page record's is unpacked. For walks; a lookup returns a [`Found`].
#[derive(Clone, Copy)]
pub(crate) struct PieceRef<'g> {
    piece: Piece,
    record: bool,
    _g: PhantomData<&'g Piece>,
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
/// [`find_in`]), so the piece's section holds a `V` for `'g` ([`Found::value`]).
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

/// The piece of a page record: page `[start, start | page_mask]`, origin at its start,
/// section cell `section`.
#[inline(always)]
fn record_piece(start: u64, page_mask: u64, section: *const ()) -> Piece {
    Piece {
        start,
        end: start | page_mask,
        origin: start,
        section,
    }
}

/// The piece holding `addr` in the tree whose version's header is `hot`: one load per
/// level, then the final range check. A [`Reader`](crate::Reader) keeps a copy of the header
/// beside its announcement and walks from it, so that the walk neither waits for a load of
/// the version's address and then of its header, nor touches the version at all.
///
/// # Safety
/// `hot` is a copy of the header of a version of `V`s whose tree is readable for `'g` (the
/// version invariant: a counted reference to it, or an announcement of its generation,
/// lives for `'g`).
#[inline(always)]
pub(crate) unsafe fn find_in<'g, V>(hot: Hot, addr: u64) -> Option<Found<'g, V>> {
    // The header in locals (a parameter), so that the loop keeps it in registers.
    let mut e = hot.root;
    while e.is_node() {
        let (shift, node) = e.node_parts();
        let i = (addr >> shift) & hot.mask();
        // SAFETY: `node` comes from an entry of this tree (I1-I4); `i` < fan-out.
        e = unsafe { hot.bases.entry(node, i as usize) };
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
            // SAFETY: a table of this tree (I1-I4).
            break unsafe { hot.bases.table_piece(offset, class, off) }?;
        }
        if !e.is_flat() {
            return None;
        }
        let (class, offset) = e.table_parts();
        if Entry::is_record_class(class) {
            // A page record (a leaf, here after the others: the default layout's common
            // ends keep their compares). It holds its page: the final check is on it.
            // SAFETY: a record of this tree (I1-I4).
            let (page, section) = unsafe { hot.bases.record(offset) };
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
        // SAFETY: a flat node of this tree (I1-I4).
        e = unsafe {
            hot.bases
                .flat_entry(offset, (addr >> hot.page_mask().trailing_ones()) as u32)
        };
    };
    // SAFETY: `hot.bases` are this tree's (forwarded contract) and the slot is reachable
    // from its root (I1-I4).
    let piece: &'g Piece = unsafe { hot.bases.piece(slot) };
    (piece.start <= addr && addr <= piece.end).then_some(Found {
        piece: *piece,
        cell: piece,
        _g: PhantomData,
    })
}

/// A read-only view of one generation's tree (see the module docs).
pub(crate) struct TreeRef<'g, V> {
    version: &'g Version<V>,
}

impl<V> Clone for TreeRef<'_, V> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<V> Copy for TreeRef<'_, V> {}

impl<'g, V> TreeRef<'g, V> {
    /// The tree of `version`, for as long as it is borrowed.
    #[inline(always)]
    pub(crate) fn new(version: &'g Version<V>) -> Self {
        TreeRef { version }
    }

    pub(crate) fn root(self) -> TreeEntry<'g> {
        TreeEntry::new(self.version.hot.root)
    }

    pub(crate) fn geo(self) -> &'g Geometry {
        &self.version.geo
    }

    // ----- The raw accessors, private to this module: the only `unsafe` of the read side.
    // Every index they are given comes from an entry of a tree borrowed for 'g (a
    // `TreeEntry<'g>`, or a table row of one), so the slot is reachable from a generation
    // held for 'g (the version invariant): exactly the contract of the `Storage` readers.

    /// Entry `i` of the node at unit offset `node` (`i` < fan-out).
    #[inline(always)]
    fn entry(self, node: u32, i: usize) -> Entry {
        debug_assert!(i < self.version.geo.fanout);
        // SAFETY: see above (I1-I4).
        unsafe { self.version.hot.bases.entry(node, i) }
    }

    /// First page of the node at unit offset `node`.
    fn base_of(self, node: u32) -> u64 {
        let v = self.version;
        // SAFETY: see above (I1-I4).
        unsafe { v.storage.node_base(node, v.geo.fanout) }
    }

    /// The piece of piece id `id`: a piece slot, or a page record's ([`RECORD`]).
    fn piece_at(self, id: u32) -> PieceRef<'g> {
        let (bases, page_mask) = (self.version.hot.bases, self.version.hot.page_mask());
        let (piece, record) = if id & RECORD != 0 {
            // SAFETY: see above (I1-I4).
            let (page, section) = unsafe { bases.record(id & !RECORD) };
            let start = page << self.version.geo.page_bits;
            (record_piece(start, page_mask, section), true)
        } else {
            // SAFETY: see above (I1-I4).
            (*unsafe { bases.piece(id) }, false)
        };
        PieceRef {
            piece,
            record,
            _g: PhantomData,
        }
    }

    /// The rows of the sub-page table of class `class` at `offset`, as (first byte, piece
    /// slot).
    fn table_at(self, class: u32, offset: u32) -> Vec<(u64, u32)> {
        let (bases, rows) = (self.version.hot.bases, table_cap(class));
        // SAFETY: see above (I1-I4).
        let (page, raw) = unsafe {
            (
                bases.table_page(offset, rows),
                bases.table_rows(offset, rows),
            )
        };
        let first = page << self.version.geo.page_bits;
        raw.into_iter()
            .map(|(off, p)| (first + off as u64, p))
            .collect()
    }

    /// The runs of the flat node at `offset`, as (first page, entry).
    fn flat_at(self, _class: u32, offset: u32) -> Vec<(u64, Entry)> {
        // SAFETY: see above (I1-I4).
        let (rows, base) = unsafe { self.version.hot.bases.flat_rows(offset) };
        // Rows keep the low 32 bits of the page: the span never crosses a multiple of 2^32
        // pages (rule 3 of `canon.rs`).
        rows.into_iter()
            .map(|(low, e)| (base & !0xffff_ffff | low as u64, Entry::from_bits(e)))
            .collect()
    }

    /// The first page of the span of the flat node at `offset`.
    fn flat_base(self, _class: u32, offset: u32) -> u64 {
        // SAFETY: see above (I1-I4).
        unsafe { self.version.hot.bases.flat_rows(offset) }.1
    }

    /// The value of a piece of a tree borrowed for 'g.
    #[inline(always)]
    pub(crate) fn value(self, piece: PieceRef<'g>) -> &'g V {
        // SAFETY: `piece` was read from a tree borrowed for 'g (only this module makes
        // `PieceRef`s), so its section is one of a held generation's: live, holding a value,
        // not written meanwhile (I1, I3, I4, I5).
        unsafe { Storage::<V>::value(&piece.piece) }
    }

    // ----- Built on the accessors: safe.

    /// The piece holding `addr`, if any: one load per level, then the final range check.
    #[inline(always)]
    pub(crate) fn find(self, addr: u64) -> Option<Found<'g, V>> {
        // SAFETY: the header is this tree's own, borrowed for 'g.
        unsafe { find_in(self.version.hot, addr) }
    }

    /// Height and first page of a node entry of this tree.
    pub(crate) fn node_info(self, e: TreeEntry<'g>) -> Option<(u32, u64)> {
        match e.kind() {
            Kind::Node { shift, index } => Some((self.height(shift), self.base_of(index))),
            _ => None,
        }
    }

    /// The entries of node `index` (of height `h`) that lie inside the space.
    fn entries(self, index: u32, h: u32) -> impl Iterator<Item = TreeEntry<'g>> + 'g {
        let n = self.geo().children_in_space(h, self.base_of(index));
        (0..n).map(move |i| TreeEntry::new(self.entry(index, i)))
    }

    /// Whether node entry `e` of this tree holds exactly `kids` (a fan-out of entries).
    pub(crate) fn node_holds(self, e: TreeEntry<'g>, kids: &[Entry]) -> bool {
        match e.kind() {
            Kind::Node { index, .. } => kids
                .iter()
                .enumerate()
                .all(|(i, k)| self.entry(index, i) == *k),
            _ => false,
        }
    }

    /// Whether `e` is a flat node of this tree holding exactly `rows` (first page, entry).
    pub(crate) fn flat_holds(self, e: TreeEntry<'g>, rows: &[(u64, Entry)]) -> bool {
        match e.kind() {
            Kind::Flat(class, offset) => self.flat_at(class, offset) == rows,
            _ => false,
        }
    }

    /// The sub-page table under `e` (an entry of this tree) for the page holding `addr`,
    /// if there is one.
    pub(crate) fn table_under(self, e: TreeEntry<'g>, addr: u64) -> Option<TreeEntry<'g>> {
        let geo = self.geo();
        let mut e = e.get();
        loop {
            match e.kind() {
                Kind::Node { shift, index } => {
                    e = self.entry(index, ((addr >> shift) & geo.mask) as usize);
                }
                Kind::Flat(class, offset) => {
                    let page = addr >> geo.page_bits;
                    let rows = self.flat_at(class, offset);
                    e = rows
                        .iter()
                        .rev()
                        .find(|r| r.0 <= page)
                        .map_or(Entry::EMPTY, |r| r.1);
                }
                Kind::Subpage(class, offset) => {
                    let rows = table_cap(class);
                    // SAFETY: see the accessors above (I1-I4).
                    let page = unsafe { self.version.hot.bases.table_page(offset, rows) };
                    return (page == addr >> geo.page_bits).then_some(TreeEntry::new(e));
                }
                Kind::Empty | Kind::Leaf(_) => return None,
            }
        }
    }

    /// Whether table entry `e` of this tree holds exactly `rows`.
    pub(crate) fn table_holds(self, e: TreeEntry<'g>, rows: &[SubEntry]) -> bool {
        match e.kind() {
            Kind::Subpage(class, offset) => self
                .table_at(class, offset)
                .into_iter()
                .eq(rows.iter().map(|r| (r.start, r.piece))),
            _ => false,
        }
    }

    /// The number of the node at unit offset `index` (its slot), for listings.
    fn node_number(self, index: u32) -> u32 {
        index / (self.geo().fanout.max(NODE_UNIT) / NODE_UNIT) as u32
    }

    /// The height of the node a node entry with `shift` points to.
    fn height(self, shift: u32) -> u32 {
        self.geo().height_of_shift(shift)
    }

    /// The pieces overlapping `[lo, hi]`, in address order, each once.
    pub(crate) fn walk(self, lo: u64, hi: u64) -> Walk<'g, V> {
        self.walk_from(self.root(), lo, hi)
    }

    /// The same, under entry `e` of this tree only.
    pub(crate) fn walk_from(self, e: TreeEntry<'g>, lo: u64, hi: u64) -> Walk<'g, V> {
        Walk {
            tree: self,
            lo,
            hi,
            stack: Vec::new(),
            pending: Vec::new(),
            last: None,
            root: (lo <= hi).then_some(e.get()),
        }
    }

    /// The canonical entries of the children of the position of height `h > 0` at page
    /// `base` whose entry is `e`: a fan-out-sized vector, entries past the space left empty.
    /// Filled by ranges, not child by child: a leaf stands for every child its piece
    /// overlaps, a compressed node or table for the one child that holds it.
    pub(crate) fn children(self, e: TreeEntry<'g>, h: u32, base: u64) -> Kids<'g> {
        let geo = self.geo();
        let run = |range: std::ops::Range<usize>| Kids {
            repr: Repr::Run(range, e.get()),
            fanout: geo.fanout,
            _g: PhantomData,
        };
        match e.kind() {
            Kind::Empty => run(0..0),
            Kind::Leaf(p) => {
                let piece = self.piece_at(p);
                run(geo.children_overlapping(h, base, piece.start, piece.end))
            }
            Kind::Subpage(class, offset) => {
                match geo.child_holding(h, base, self.table_at(class, offset)[0].0) {
                    Some(i) => run(i..i + 1),
                    None => run(0..0),
                }
            }
            // A flat node standing here through a compressed path (the callers never ask
            // for the children of a flat node's own span: `rebuild` builds that span afresh,
            // `diff` walks it).
            Kind::Flat(class, offset) => {
                let at = self.flat_base(class, offset) << geo.page_bits;
                match geo.child_holding(h, base, at) {
                    Some(i) => run(i..i + 1),
                    None => run(0..0),
                }
            }
            Kind::Node { shift, index } if self.height(shift) == h => {
                let mut kids = vec![Entry::EMPTY; geo.fanout];
                let n = geo.children_in_space(h, base);
                // SAFETY: a node of this tree (I1-I4); `n` <= fan-out.
                unsafe { self.version.hot.bases.node_entries(index, &mut kids[..n]) };
                Kids {
                    repr: Repr::Dense(kids),
                    fanout: geo.fanout,
                    _g: PhantomData,
                }
            }
            Kind::Node { index, .. } => {
                let at = self.base_of(index) << geo.page_bits;
                match geo.child_holding(h, base, at) {
                    Some(i) => run(i..i + 1),
                    None => run(0..0),
                }
            }
        }
    }

    /// Shape of the tree: nodes, flat nodes, sub-page tables, bytes of the row blocks (of
    /// tables and flat nodes), deepest path (a flat node counts as one level).
    pub(crate) fn shape(self) -> (usize, usize, usize, usize, u32) {
        let (mut nodes, mut flats, mut tables, mut table_bytes, mut deepest) = (0, 0, 0, 0, 0);
        let mut stack = vec![(self.root(), 0u32)];
        while let Some((e, depth)) = stack.pop() {
            match e.kind() {
                Kind::Empty | Kind::Leaf(_) => {}
                Kind::Subpage(class, _) => {
                    tables += 1;
                    table_bytes += crate::arena::table_bytes(class);
                }
                Kind::Flat(class, offset) => {
                    flats += 1;
                    deepest = deepest.max(depth + 1);
                    table_bytes += crate::arena::FLAT_BYTES;
                    let rows = self.flat_at(class, offset).into_iter();
                    stack.extend(rows.map(|r| (TreeEntry::new(r.1), depth + 1)));
                }
                Kind::Node { shift, index } => {
                    nodes += 1;
                    deepest = deepest.max(depth + 1);
                    let kids = self.entries(index, self.height(shift));
                    stack.extend(kids.filter(|c| c.get().is_inner()).map(|c| (c, depth + 1)));
                }
            }
        }
        (nodes, flats, tables, table_bytes, deepest)
    }

    /// Every node and sub-page table under `e` (an entry of this tree), as plain entries:
    /// what the writer retires when it replaces the subtree.
    pub(crate) fn inner_entries(self, e: TreeEntry<'g>, out: &mut Vec<Entry>) {
        let mut stack = vec![e];
        while let Some(e) = stack.pop() {
            match e.kind() {
                Kind::Subpage(..) => out.push(e.get()),
                Kind::Flat(class, offset) => {
                    out.push(e.get());
                    let rows = self.flat_at(class, offset).into_iter();
                    stack.extend(rows.map(|r| TreeEntry::new(r.1)));
                }
                Kind::Node { shift, index } => {
                    out.push(e.get());
                    let kids = self.entries(index, self.height(shift));
                    stack.extend(kids.filter(|c| c.get().is_inner()));
                }
                Kind::Empty | Kind::Leaf(_) => {}
            }
        }
    }

    /// The tree as numbers, without slot indices: for each entry in depth-first order its
    /// kind, the height and first page of nodes, and the byte ranges of pieces. Two trees
    /// with the same fingerprint have the same shape and the same pieces.
    pub(crate) fn fingerprint(self) -> Vec<u64> {
        let mut out = Vec::new();
        let mut stack = vec![self.root().get()];
        while let Some(e) = stack.pop() {
            match e.kind() {
                Kind::Empty => out.push(0),
                Kind::Leaf(p) => {
                    let piece = self.piece_at(p);
                    out.extend([1, piece.start, piece.end]);
                }
                Kind::Subpage(class, offset) => {
                    out.push(2);
                    for (start, p) in self.table_at(class, offset) {
                        let piece = self.piece_at(p);
                        out.extend([start, piece.start, piece.end]);
                    }
                }
                Kind::Flat(class, offset) => {
                    let rows = self.flat_at(class, offset);
                    out.extend([4, self.flat_base(class, offset), rows.len() as u64]);
                    out.extend(rows.iter().map(|r| r.0));
                    stack.extend(rows.into_iter().rev().map(|r| r.1));
                }
                Kind::Node { shift, index } => {
                    out.extend([3, self.height(shift) as u64, self.base_of(index)]);
                    let kids: Vec<Entry> = (0..self.geo().fanout)
                        .map(|i| self.entry(index, i))
                        .collect();
                    stack.extend(kids.into_iter().rev());
                }
            }
        }
        out
    }

    /// Writes the tree level by level, in the spirit of QEMU's dispatch listing: each node
    /// with its height, first address, and runs of equal entries.
    pub(crate) fn dump(
        self,
        out: &mut dyn std::fmt::Write,
        label: &dyn Fn(&V) -> String,
    ) -> std::fmt::Result {
        let geo = self.geo();
        let describe = |e: Entry| -> String {
            match e.kind() {
                Kind::Empty => "-".to_string(),
                Kind::Leaf(p) => {
                    let piece = self.piece_at(p);
                    let v = label(self.value(piece));
                    let what = if piece.is_record() { "record" } else { "leaf" };
                    format!("{what} {:#x}..={:#x} {v}", piece.start, piece.end)
                }
                Kind::Subpage(_, offset) => format!("sub-page table {offset}"),
                Kind::Flat(class, offset) => format!(
                    "flat node {offset} ({} runs)",
                    self.flat_at(class, offset).len()
                ),
                Kind::Node { shift, index } => {
                    format!(
                        "node {} (height {})",
                        self.node_number(index),
                        self.height(shift)
                    )
                }
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
            describe(self.root().get())
        )?;
        let mut level: Vec<TreeEntry<'g>> = vec![self.root()];
        let mut tables = Vec::new();
        let mut flats = Vec::new();
        while !level.is_empty() {
            let mut next = Vec::new();
            let mut nodes: Vec<(u32, u32)> = level
                .iter()
                .filter_map(|e| match e.kind() {
                    Kind::Node { shift, index } => Some((self.height(shift), index)),
                    Kind::Subpage(class, offset) => {
                        tables.push((class, offset));
                        None
                    }
                    Kind::Flat(class, offset) => {
                        flats.push((class, offset));
                        None
                    }
                    _ => None,
                })
                .collect();
            nodes.sort_by_key(|&(h, i)| (std::cmp::Reverse(h), i));
            for (height, index) in nodes {
                let base = self.base_of(index);
                writeln!(
                    out,
                    "  node {}: height {height}, from {:#x}, {} per entry",
                    self.node_number(index),
                    (base as u128) << geo.page_bits,
                    span_bytes(height - 1)
                )?;
                let entries: Vec<TreeEntry<'g>> = self.entries(index, height).collect();
                let mut i = 0;
                while i < entries.len() {
                    let e = entries[i];
                    let j = i + entries[i..].iter().take_while(|&&x| x == e).count() - 1;
                    let idx = if i == j {
                        format!("{i}")
                    } else {
                        format!("{i}..{j}")
                    };
                    writeln!(out, "    {idx:>9}  {}", describe(e.get()))?;
                    if e.get().is_inner() {
                        next.push(e);
                    }
                    i = j + 1;
                }
            }
            level = next;
        }
        for (class, offset) in flats {
            let rows = self.flat_at(class, offset);
            writeln!(
                out,
                "  flat node {offset}: from {:#x}, {} runs",
                (self.flat_base(class, offset) as u128) << geo.page_bits,
                rows.len()
            )?;
            for (page, e) in rows {
                let at = (page as u128) << geo.page_bits;
                writeln!(out, "    from {at:#x}: {}", describe(e))?;
                if let Kind::Subpage(class, offset) = e.kind() {
                    tables.push((class, offset));
                }
            }
        }
        for (class, offset) in tables {
            writeln!(out, "  sub-page table {offset}:")?;
            for (start, piece) in self.table_at(class, offset) {
                writeln!(out, "    from {start:#x}: {}", describe(Entry::leaf(piece)))?;
            }
        }
        Ok(())
    }
}

/// In-order walk of the pieces overlapping `[lo, hi]`, each piece once.
pub(crate) struct Walk<'g, V> {
    tree: TreeRef<'g, V>,
    lo: u64,
    hi: u64,
    /// (node, next child, end child)
    stack: Vec<(u32, usize, usize)>,
    /// Entries of a flat node or pieces of a sub-page table still to visit (reversed).
    pending: Vec<Entry>,
    last: Option<u32>,
    root: Option<Entry>,
}

impl<'g, V> Walk<'g, V> {
    /// Handles one entry (of the walked tree); returns a piece to yield, if any.
    fn visit(&mut self, e: Entry) -> Option<PieceRef<'g>> {
        match e.kind() {
            Kind::Empty => None,
            Kind::Leaf(p) => self.offer(p),
            Kind::Subpage(class, offset) => {
                let rows = self.tree.table_at(class, offset);
                let pieces = rows.into_iter().rev().map(|(_, p)| Entry::leaf(p));
                self.pending.extend(pieces);
                None
            }
            Kind::Flat(class, offset) => {
                let page_bits = self.tree.geo().page_bits;
                let (lo, hi) = (self.lo >> page_bits, self.hi >> page_bits);
                let rows = self.tree.flat_at(class, offset);
                // The runs that overlap [lo, hi] (a run ends where the next starts).
                let n = rows.partition_point(|r| r.0 <= hi);
                let from = rows[..n].partition_point(|r| r.0 <= lo).saturating_sub(1);
                self.pending.extend(rows[from..n].iter().rev().map(|r| r.1));
                None
            }
            Kind::Node { shift, index } => {
                let h = self.tree.height(shift);
                let base = self.tree.base_of(index);
                let r = self
                    .tree
                    .geo()
                    .children_overlapping(h, base, self.lo, self.hi);
                if !r.is_empty() {
                    self.stack.push((index, r.start, r.end));
                }
                None
            }
        }
    }

    fn offer(&mut self, p: u32) -> Option<PieceRef<'g>> {
        if self.last == Some(p) {
            return None;
        }
        let piece = self.tree.piece_at(p);
        if piece.end < self.lo || piece.start > self.hi {
            return None;
        }
        self.last = Some(p);
        Some(piece)
    }
}

impl<'g, V> Iterator for Walk<'g, V> {
    type Item = PieceRef<'g>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(e) = self.pending.pop() {
                if let Some(hit) = self.visit(e) {
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
            let (node, next, end) = *top;
            if next >= end {
                self.stack.pop();
                continue;
            }
            top.1 += 1;
            let e = self.tree.entry(node, next);
            if let Some(hit) = self.visit(e) {
                return Some(hit);
            }
        }
    }
}
