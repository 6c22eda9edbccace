//! Bulk building: the canonical subtree of a span from a sorted slice of its pieces, with
//! independent children built in parallel (rayon) above a threshold.
//!
//! The builder writes through a [`Sink`]: the writer's arena implements it (in
//! `writer/rebuild.rs`; this module does not know the writer), and so does the task-local
//! [`LocalSink`] that parallel tasks build into, with local indices, since slot allocation
//! is the writer's alone; the parent then imports each local sink into its own, children
//! before parents, renumbering entries. The shape follows the rules of `canon.rs` from the
//! pieces alone, so the result is the same canonical tree the rebuild makes (tested in
//! `tests/scale.rs`); only slot numbers differ.

use crate::arena::SubEntry;
use crate::canon::{self, Run, Span};
use crate::config::Geometry;
use crate::entry::{Entry, Kind, NODE_LIMIT};
use crate::Error;

/// Below this many pieces in a wholly-new span, the ordinary span-by-span rebuild is used.
pub(crate) const BULK_MIN: usize = 64;
/// Above this many pieces under a node, its children are built in parallel.
pub(crate) const PAR_MIN: usize = 1 << 14;

/// A piece with its arena slot, for building.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SlicePiece {
    pub start: u64,
    pub end: u64,
    pub slot: u32,
}

/// Where a builder puts the nodes and sub-page tables it makes.
pub(crate) trait Sink {
    /// A node of height `h` at page `base` with these children.
    fn node(&mut self, h: u32, base: u64, kids: &[Entry]) -> Result<Entry, Error>;
    /// A sub-page table with these rows.
    fn table(&mut self, rows: Vec<SubEntry>) -> Result<Entry, Error>;
    /// A flat node (rule 3 of `canon.rs`) for the span of height `h` at page `base`, of these
    /// runs (first page, entry: empty, leaf or a table this sink made).
    fn flat(&mut self, h: u32, base: u64, rows: Vec<(u64, Entry)>) -> Result<Entry, Error>;
    /// Called when a node's children are built in parallel (for `Memory::parallel_builds`).
    fn went_parallel(&mut self) {}
}

/// A flat node of a [`LocalSink`]: height, first page, runs.
type LocalFlat = (u32, u64, Vec<(u64, Entry)>);

/// A task-local arena: nodes and tables with local indices, in creation order (children
/// before their parents).
pub(crate) struct LocalSink<'a> {
    geo: &'a Geometry,
    entries: Vec<Entry>,
    nodes: Vec<(u32, u64)>,
    tables: Vec<Vec<SubEntry>>,
    flats: Vec<LocalFlat>,
}

impl<'a> LocalSink<'a> {
    fn new(geo: &'a Geometry) -> Self {
        LocalSink {
            geo,
            entries: Vec::new(),
            nodes: Vec::new(),
            tables: Vec::new(),
            flats: Vec::new(),
        }
    }

    /// Moves everything into `into`; returns `root` renumbered.
    fn import<S: Sink>(self, root: Entry, into: &mut S) -> Result<Entry, Error> {
        let mut tables = Vec::with_capacity(self.tables.len());
        for rows in self.tables {
            tables.push(into.table(rows)?);
        }
        let mut flats = Vec::with_capacity(self.flats.len());
        for (h, base, rows) in self.flats {
            let rows = rows
                .into_iter()
                .map(|(page, e)| match e.kind() {
                    Kind::Subpage(_, t) => (page, tables[t as usize]),
                    _ => (page, e),
                })
                .collect();
            flats.push(into.flat(h, base, rows)?);
        }
        let mut nodes: Vec<Entry> = Vec::with_capacity(self.nodes.len());
        let renumber = |e: Entry, nodes: &[Entry]| match e.kind() {
            Kind::Node { index, .. } => nodes[index as usize],
            Kind::Subpage(_, t) => tables[t as usize],
            Kind::Flat(_, f) => flats[f as usize],
            _ => e,
        };
        let fanout = self.geo.fanout;
        for (k, &(h, base)) in self.nodes.iter().enumerate() {
            let kids: Vec<Entry> = self.entries[k * fanout..(k + 1) * fanout]
                .iter()
                .map(|&e| renumber(e, &nodes))
                .collect();
            nodes.push(into.node(h, base, &kids)?);
        }
        Ok(renumber(root, &nodes))
    }
}

impl Sink for LocalSink<'_> {
    fn node(&mut self, h: u32, base: u64, kids: &[Entry]) -> Result<Entry, Error> {
        let k = self.nodes.len();
        if k >= NODE_LIMIT {
            return Err(Error::CapacityExhausted {
                kind: crate::Capacity::Nodes,
                limit: NODE_LIMIT - 1,
            });
        }
        self.nodes.push((h, base));
        self.entries.extend_from_slice(kids);
        Ok(Entry::node(self.geo.shift(h), k as u32))
    }
    fn table(&mut self, rows: Vec<SubEntry>) -> Result<Entry, Error> {
        self.tables.push(rows);
        Ok(Entry::subpage(0, (self.tables.len() - 1) as u32))
    }
    fn flat(&mut self, h: u32, base: u64, rows: Vec<(u64, Entry)>) -> Result<Entry, Error> {
        self.flats.push((h, base, rows));
        Ok(Entry::flat(0, (self.flats.len() - 1) as u32))
    }
}

/// The canonical entry for the span of height `h` at page `base`, whose overlapping pieces
/// are exactly `pieces` (sorted, disjoint; they may extend past the span).
pub(crate) fn build<S: Sink>(
    geo: &Geometry,
    sink: &mut S,
    h: u32,
    base: u64,
    pieces: &[SlicePiece],
) -> Result<Entry, Error> {
    match Span::of(pieces.len(), h) {
        Span::Empty => return Ok(Entry::EMPTY),
        Span::Leaf => return Ok(Entry::leaf(pieces[0].slot)),
        Span::Table => return sink.table(page_rows(geo, base, pieces)),
        Span::Node => {}
    }
    if canon::may_be_flat(geo, h, base) {
        let runs = canon::flat_runs(geo, h, base, pieces.iter().map(|p| (p.start, p.end)));
        if let Some(runs) = runs {
            let mut rows = Vec::with_capacity(runs.len());
            for (page, run) in runs {
                let e = match run {
                    Run::Empty => Entry::EMPTY,
                    Run::Piece(k) => Entry::leaf(pieces[k].slot),
                    Run::Page(r) => sink.table(page_rows(geo, page, &pieces[r]))?,
                };
                rows.push((page, e));
            }
            return sink.flat(h, base, rows);
        }
    }
    let parts = partition(geo, h, base, pieces);
    let mut kids = vec![Entry::EMPTY; geo.fanout];
    if pieces.len() >= PAR_MIN && parts.len() > 1 {
        // Independent children, built in parallel into task-local sinks, then imported in
        // order (the sink's slot allocation stays on this thread).
        sink.went_parallel();
        let built: Vec<Result<(Entry, LocalSink<'_>), Error>> =
            crate::sync::par_map(&parts, |&(_, cb, slice)| {
                let mut local = LocalSink::new(geo);
                let e = build(geo, &mut local, h - 1, cb, slice)?;
                Ok((e, local))
            });
        for (&(i, _, _), r) in parts.iter().zip(built) {
            let (e, local) = r?;
            kids[i] = local.import(e, sink)?;
        }
    } else {
        for &(i, cb, slice) in &parts {
            kids[i] = build(geo, sink, h - 1, cb, slice)?;
        }
    }
    match canon::collapse(&kids) {
        Some(e) => Ok(e),
        None => sink.node(h, base, &kids),
    }
}

/// The rows of the sub-page table of page `page`, whose overlapping pieces are `pieces`.
fn page_rows(geo: &Geometry, page: u64, pieces: &[SlicePiece]) -> Vec<SubEntry> {
    let s = page << geo.page_bits;
    pieces
        .iter()
        .map(|p| SubEntry {
            start: p.start.max(s),
            piece: p.slot,
        })
        .collect()
}

/// The children of the span of height `h` at `base` that overlap `pieces`, each with the
/// slice of pieces overlapping it: (child index, child's first page, slice).
fn partition<'p>(
    geo: &Geometry,
    h: u32,
    base: u64,
    pieces: &'p [SlicePiece],
) -> Vec<(usize, u64, &'p [SlicePiece])> {
    let n = geo.children_in_space(h, base);
    let mut parts = Vec::new();
    let mut i = geo.child_at(h, base, pieces[0].start);
    let mut lo = 0;
    while lo < pieces.len() && i < n {
        let cb = geo.child_base(h, base, i);
        let (cs, ce) = geo.span(h - 1, cb);
        while lo < pieces.len() && pieces[lo].end < cs {
            lo += 1;
        }
        if lo == pieces.len() {
            break;
        }
        if pieces[lo].start > ce {
            i = geo.child_at(h, base, pieces[lo].start);
            continue;
        }
        let hi = lo + pieces[lo..].partition_point(|p| p.start <= ce);
        parts.push((i, cb, &pieces[lo..hi]));
        let last = hi - 1;
        if pieces[last].end > ce {
            // The last piece runs on: the children it covers wholly are leaves of it, and the
            // child where it ends starts from it.
            let j = geo.child_at(h, base, pieces[last].end);
            for k in i + 1..j {
                parts.push((k, geo.child_base(h, base, k), &pieces[last..last + 1]));
            }
            // The next round starts at the child where it ends (the span's last child if it
            // runs past the span), from this piece.
            i = j.max(i + 1);
            lo = last;
        } else {
            i += 1;
            lo = hi;
        }
    }
    parts
}

#[cfg(all(test, not(loom)))]
mod tests {
    use crate::{Config, PhysMap};

    /// Small enough for Miri: the bulk path (not the parallel one), diff and reader lookups.
    #[test]
    fn bulk_build_diff_and_reader_on_a_small_space() {
        for flat_nodes in [false, true] {
            bulk_build_diff_and_reader(Config {
                addr_bits: 16,
                page_bits: 2,
                level_bits: 2,
                flat_nodes,
                ..Config::default()
            });
        }
    }

    fn bulk_build_diff_and_reader(config: Config) {
        let n = if cfg!(miri) { 150u64 } else { 2000 };
        let bulk =
            PhysMap::from_ranges(config.clone(), (0..n).map(|i| (i * 8..i * 8 + 8, i))).unwrap();
        assert!(bulk.build_counts().bulk > 0);
        let single = PhysMap::with_config(config).unwrap();
        for parity in [0, 1] {
            let mut t = single.transaction();
            for i in (0..n).filter(|i| i % 2 == parity) {
                t.insert(i * 8..i * 8 + 8, i).unwrap();
            }
            t.commit().unwrap();
        }
        let (a, b) = (bulk.snapshot(), single.snapshot());
        assert_eq!(a.canonical_form(), b.canonical_form());
        let mut r = bulk.reader();
        for addr in (0..n * 8).step_by(3) {
            let want = Some(addr / 8);
            assert_eq!(r.lookup(addr).map(|h| *h.value), want, "{addr}");
        }
        let mut t = bulk.transaction();
        t.overwrite(20..=27, 999).unwrap();
        t.commit().unwrap();
        let now = bulk.snapshot();
        let changes = now.diff(&a).len();
        // 16..=19 and 28..=31: pieces cut (same value, new piece); 20..=23 and 24..=27: the
        // new section over two different old pieces.
        assert_eq!(changes, 4);
        drop((a, b, now, r)); // the reader still caches generation 1
        assert_eq!(bulk.memory().live_bytes, bulk.snapshot().stats().bytes);
    }
}
