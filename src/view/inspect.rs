//! Whole-tree inspection: the shape, the inner entries, the fingerprint and the dump.

use super::{entries::*, tree::*};
use crate::arena::Counts;
use crate::entry::{Entry, Kind};

/// The shape of a tree ([`TreeRef::shape`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Shape {
    /// Its nodes, flat nodes, sub-page tables and their row bytes (pieces and sections are
    /// the walk's to count: zero here).
    pub tree: Counts,
    /// The deepest path, in levels (a flat node counts as one).
    pub levels: u32,
}

impl<'g, V> TreeRef<'g, V> {
    /// Every entry under `root` (itself included), depth first and in address order, with
    /// its depth below `root`: the one traversal behind [`shape`](Self::shape),
    /// [`inner_entries`](Self::inner_entries), `fingerprint` (test builds) and
    /// [`dump`](Self::dump). With `every`, all of a node's `fan-out` children and all of a
    /// flat node's runs are visited, empty ones included; without, only the inner ones
    /// (nodes, flat nodes, sub-page tables), which is all the others need.
    fn depth_first(self, root: TreeEntry<'g>, every: bool, mut f: impl FnMut(TreeEntry<'g>, u32)) {
        let mut stack = vec![(root, 0u32)];
        while let Some((e, depth)) = stack.pop() {
            f(e, depth);
            let at = stack.len();
            let keep = |c: &TreeEntry<'g>| every || c.get().is_inner();
            match e.kind() {
                Kind::Node { index, .. } if every => {
                    let kids = (0..self.geo().fanout).map(|i| TreeEntry::new(self.entry(index, i)));
                    stack.extend(kids.map(|c| (c, depth + 1)));
                }
                Kind::Node { shift, index } => {
                    let kids = self.entries(index, self.height(shift));
                    stack.extend(kids.filter(keep).map(|c| (c, depth + 1)));
                }
                Kind::Flat(class, offset) => {
                    let runs = self.flat_at(class, offset).into_iter();
                    let runs = runs.map(|r| TreeEntry::new(r.1)).filter(keep);
                    stack.extend(runs.map(|c| (c, depth + 1)));
                }
                Kind::Empty | Kind::Leaf(_) | Kind::Subpage(..) => {}
            }
            // Popped in address order.
            stack[at..].reverse();
        }
    }

    /// The shape of the tree: its nodes, flat nodes, sub-page tables, the bytes of their
    /// row blocks, and its deepest path.
    pub(crate) fn shape(self) -> Shape {
        let mut c = Counts::default();
        let mut deepest = 0;
        self.depth_first(self.root(), false, |e, depth| match e.kind() {
            Kind::Node { .. } => {
                c.nodes += 1;
                deepest = deepest.max(depth + 1);
            }
            Kind::Flat(..) => {
                c.flats += 1;
                deepest = deepest.max(depth + 1);
                c.table_bytes += crate::arena::FLAT_BYTES;
            }
            Kind::Subpage(class, _) => {
                c.tables += 1;
                c.table_bytes += crate::arena::table_bytes(class);
            }
            Kind::Empty | Kind::Leaf(_) => {}
        });
        Shape {
            tree: c,
            levels: deepest,
        }
    }

    /// Every node and sub-page table under `e` (an entry of this tree), as plain entries:
    /// what the writer retires when it replaces the subtree.
    pub(crate) fn inner_entries(self, e: TreeEntry<'g>, out: &mut Vec<Entry>) {
        self.depth_first(e, false, |e, _| {
            if e.get().is_inner() {
                out.push(e.get());
            }
        });
    }

    #[cfg(any(test, feature = "test-hooks"))]
    /// The tree as numbers, without slot indices: for each entry in depth-first order its
    /// kind, the height and first page of nodes, and the byte ranges of pieces. Two trees
    /// with the same fingerprint have the same shape and the same pieces.
    pub(crate) fn fingerprint(self) -> Vec<u64> {
        let mut out = Vec::new();
        self.depth_first(self.root(), true, |e, _| match e.kind() {
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
            }
            Kind::Node { shift, index } => {
                out.extend([3, self.height(shift) as u64, self.base_of(index)]);
            }
        });
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
        // The nodes by depth, then the flat nodes and the tables, as the traversal meets them.
        let (mut levels, mut flats, mut tables) = (Vec::<Vec<(u32, u32)>>::new(), vec![], vec![]);
        self.depth_first(self.root(), false, |e, depth| match e.kind() {
            Kind::Node { shift, index } => {
                let depth = depth as usize;
                if levels.len() <= depth {
                    levels.resize_with(depth + 1, Vec::new);
                }
                levels[depth].push((self.height(shift), index));
            }
            Kind::Subpage(class, offset) => tables.push((class, offset)),
            Kind::Flat(class, offset) => flats.push((class, offset)),
            Kind::Empty | Kind::Leaf(_) => {}
        });
        for mut nodes in levels {
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
                    i = j + 1;
                }
            }
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
