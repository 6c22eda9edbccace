//! Bulk building: the canonical subtree of a span from a sorted slice of its pieces, with
//! independent children built in parallel (rayon) above a threshold.
//!
//! Parallel tasks cannot take arena slots (slot allocation is the writer's), so each builds
//! into a task-local [`LocalSink`] with local indices; the parent then imports it into its
//! own sink, children before parents, renumbering entries. The shape depends only on the
//! pieces, so the result is the same canonical tree the sequential path builds (tested in
//! `tests/scale.rs`); only slot numbers differ.

use crate::arena::SubEntry;
use crate::config::Geometry;
use crate::tree::{Entry, Kind};
use crate::writer::{Build, WriterState};
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
    fn node(&mut self, h: u32, base: u64, kids: &[Entry]) -> Result<Entry, Error>;
    fn subpage(&mut self, rows: Vec<SubEntry>) -> Result<Entry, Error>;
    /// Called when a node's children are built in parallel (for `Memory::parallel_builds`).
    fn went_parallel(&mut self) {}
}

/// The writer's arena.
pub(crate) struct ArenaSink<'a, 'b, V> {
    pub w: &'a mut WriterState<V>,
    pub cx: &'b mut Build,
}

impl<V> Sink for ArenaSink<'_, '_, V> {
    fn node(&mut self, h: u32, base: u64, kids: &[Entry]) -> Result<Entry, Error> {
        self.w.alloc_node(h, base, kids, self.cx)
    }
    fn subpage(&mut self, rows: Vec<SubEntry>) -> Result<Entry, Error> {
        self.w.alloc_subpage(rows, self.cx)
    }
    fn went_parallel(&mut self) {
        self.w.parallel_builds += 1;
    }
}

/// A task-local arena: nodes and tables with local indices, in creation order (children
/// before their parents).
pub(crate) struct LocalSink {
    fanout: usize,
    entries: Vec<Entry>,
    nodes: Vec<(u32, u64)>,
    tables: Vec<Vec<SubEntry>>,
}

impl LocalSink {
    fn new(fanout: usize) -> Self {
        LocalSink {
            fanout,
            entries: Vec::new(),
            nodes: Vec::new(),
            tables: Vec::new(),
        }
    }

    /// Moves everything into `into`; returns `root` renumbered.
    fn import<S: Sink>(self, root: Entry, into: &mut S) -> Result<Entry, Error> {
        let mut tables = Vec::with_capacity(self.tables.len());
        for rows in self.tables {
            tables.push(into.subpage(rows)?);
        }
        let mut nodes: Vec<Entry> = Vec::with_capacity(self.nodes.len());
        let renumber = |e: Entry, nodes: &[Entry]| match e.kind() {
            Kind::Node { index, .. } => nodes[index as usize],
            Kind::Subpage(t) => tables[t as usize],
            _ => e,
        };
        for (k, &(h, base)) in self.nodes.iter().enumerate() {
            let kids: Vec<Entry> = self.entries[k * self.fanout..(k + 1) * self.fanout]
                .iter()
                .map(|&e| renumber(e, &nodes))
                .collect();
            nodes.push(into.node(h, base, &kids)?);
        }
        Ok(renumber(root, &nodes))
    }
}

impl Sink for LocalSink {
    fn node(&mut self, h: u32, base: u64, kids: &[Entry]) -> Result<Entry, Error> {
        let k = self.nodes.len();
        if k >= 1 << 24 {
            return Err(Error::CapacityExhausted {
                kind: "nodes",
                limit: 1 << 24,
            });
        }
        self.nodes.push((h, base));
        self.entries.extend_from_slice(kids);
        Ok(Entry::node(h, k as u32))
    }
    fn subpage(&mut self, rows: Vec<SubEntry>) -> Result<Entry, Error> {
        self.tables.push(rows);
        Ok(Entry::subpage((self.tables.len() - 1) as u32))
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
    match pieces {
        [] => return Ok(Entry::EMPTY),
        [only] => return Ok(Entry::leaf(only.slot)),
        _ => {}
    }
    let (s, _) = geo.span(h, base);
    if h == 0 {
        let rows = pieces
            .iter()
            .map(|p| SubEntry {
                start: p.start.max(s),
                piece: p.slot,
            })
            .collect();
        return sink.subpage(rows);
    }
    let parts = partition(geo, h, base, pieces);
    let mut kids = vec![Entry::EMPTY; geo.fanout];
    if pieces.len() >= PAR_MIN && parts.len() > 1 {
        // Independent children, built in parallel into task-local sinks, then imported in
        // order (the sink's slot allocation stays on this thread).
        sink.went_parallel();
        let built: Vec<Result<(Entry, LocalSink), Error>> =
            crate::sync::par_map(&parts, |&(_, cb, slice)| {
                let mut local = LocalSink::new(geo.fanout);
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
    let mut nonempty = kids.iter().filter(|k| !k.is_empty());
    let first = *nonempty.next().expect("two pieces give a non-empty child");
    if nonempty.next().is_none() {
        // Path compression, as in the sequential rebuild.
        return Ok(first);
    }
    sink.node(h, base, &kids)
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
    let child_pages = geo.entry_pages(h - 1);
    let child_of = |addr: u64| -> usize {
        let page = (addr >> geo.page_bits) as u128;
        (page.saturating_sub(base as u128) / child_pages).min(n as u128 - 1) as usize
    };
    let child_base = |i: usize| (base as u128 + i as u128 * child_pages) as u64;
    let mut parts = Vec::new();
    let mut i = child_of(pieces[0].start);
    let mut lo = 0;
    while lo < pieces.len() && i < n {
        let cb = child_base(i);
        let (cs, ce) = geo.span(h - 1, cb);
        while lo < pieces.len() && pieces[lo].end < cs {
            lo += 1;
        }
        if lo == pieces.len() {
            break;
        }
        if pieces[lo].start > ce {
            i = child_of(pieces[lo].start);
            continue;
        }
        let hi = lo + pieces[lo..].partition_point(|p| p.start <= ce);
        parts.push((i, cb, &pieces[lo..hi]));
        let last = hi - 1;
        if pieces[last].end > ce {
            // The last piece runs on: the children it covers wholly are leaves of it, and the
            // child where it ends starts from it.
            let j = child_of(pieces[last].end);
            for k in i + 1..j {
                parts.push((k, child_base(k), &pieces[last..last + 1]));
            }
            // If it runs past the span's last child, `i` becomes `n` and the loop ends.
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
        let config = Config {
            addr_bits: 16,
            page_bits: 2,
            level_bits: 2,
            ..Config::default()
        };
        let n = if cfg!(miri) { 150u64 } else { 2000 };
        let bulk =
            PhysMap::from_ranges(config.clone(), (0..n).map(|i| (i * 8..i * 8 + 8, i))).unwrap();
        assert!(bulk.memory().bulk_builds > 0);
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
