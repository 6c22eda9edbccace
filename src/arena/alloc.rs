//! The writer's arena: slot allocation in the arrays, growth, and every raw write to them
//! ([`Arena`]).

use super::{cells::*, layout::*, slab::*};
use crate::entry::{as_words, Entry, NODE_LIMIT, RECORD, SLOT_LIMIT, TABLE_OFFSET_LIMIT};
use crate::sync::Arc;
use crate::{Capacity, Error};

/// The writer's arena: the current arrays, the slot allocators, and growth (I6).
pub(crate) struct Arena {
    arrays: Arrays,
    /// Cells a node takes: its fan-out, at least one unit.
    node_cells: usize,
    nodes: SlabAlloc,
    pieces: SlabAlloc,
    /// Most pieces and page records together ([`Config::max_pieces`](crate::Config)).
    max_pieces: usize,
    rows: RowAlloc,
}

/// What a block of the row array is for: which free list it comes from.
#[derive(Clone, Copy, PartialEq, Eq)]
enum BlockKind {
    Table(usize),
    Flat,
    Record,
}

/// Free blocks of sub-page rows, by size class ([`table_cap`] rows), of flat nodes and of
/// page records.
#[derive(Default)]
pub(super) struct RowAlloc {
    /// Cells handed out so far (blocks are never merged back).
    high: usize,
    free: Vec<Vec<u32>>,
    flat_free: Vec<u32>,
    record_free: Vec<u32>,
    /// Sub-page tables, flat nodes and page records in use, and the real rows in the tables
    /// and flat nodes (for accounting).
    tables: usize,
    flats: usize,
    records: usize,
    rows: usize,
    /// Cells of the blocks in use.
    cells: usize,
    limit: usize,
}

impl Arena {
    pub(crate) fn new(fanout: usize, max_nodes: usize, max_pieces: usize) -> Self {
        let node_cells = node_cells(fanout);
        Arena {
            arrays: Arrays {
                nodes: Arc::new(Cells::new(node_cells << SMALL_FIRST)),
                pieces: Arc::new(Cells::new(1 << LARGE_FIRST)),
                rows: Arc::new(Cells::new((2 * MIN_TABLE_ROWS) << SMALL_FIRST)),
            },
            node_cells,
            nodes: SlabAlloc::new(max_nodes.min(Self::node_limit(fanout)), Capacity::Nodes),
            pieces: SlabAlloc::new(max_pieces.min(SLOT_LIMIT - 1), Capacity::Pieces),
            max_pieces,
            rows: RowAlloc {
                limit: max_pieces,
                ..RowAlloc::default()
            },
        }
    }

    /// Most nodes an entry can address at this fan-out.
    pub(crate) fn node_limit(fanout: usize) -> usize {
        NODE_LIMIT / node_units(fanout)
    }

    /// The current arrays (for a new version).
    pub(crate) fn arrays(&self) -> Arrays {
        self.arrays.clone()
    }

    fn units(&self) -> usize {
        node_units(self.node_cells)
    }

    /// A new node holding `kids`, as the unit offset its entries carry; grows the node array
    /// if needed.
    pub(crate) fn new_node(&mut self, kids: &[Entry]) -> Result<u32, Error> {
        let slot = self.nodes.alloc()?;
        let need = (slot as usize + 1) * self.node_cells;
        grow(&mut self.arrays.nodes, need);
        let unit = (slot as usize * self.units()) as u32;
        assert!(kids.len() <= self.node_cells);
        let cells = self
            .arrays
            .nodes
            .range(unit as usize * NODE_UNIT, kids.len());
        for (cell, &k) in cells.iter().zip(as_words(kids)) {
            // SAFETY: a node slot just allocated, fresh or freed by reclamation: no
            // generation anyone can read reaches it (I3, I4); and only the writer writes,
            // through `&mut self` (I6), so nobody reads or writes the cell meanwhile.
            cell.with_mut(|p| unsafe { *p = k });
        }
        Ok(unit)
    }

    pub(crate) fn free_node(&mut self, unit: u32) {
        self.nodes.free(self.node_slot(unit) as u32);
    }

    /// The node slot of the node at unit offset `unit` (0, 1, 2... in allocation space).
    pub(crate) fn node_slot(&self, unit: u32) -> usize {
        node_slot(unit, self.node_cells) as usize
    }

    /// A small number naming the block of a sub-page table or flat node entry `e`: its
    /// offset in the row array divided by [`BLOCK_GRAIN`]. Distinct blocks get distinct
    /// numbers, since every such block spans more than `BLOCK_GRAIN` cells.
    pub(crate) fn block_key(e: Entry) -> usize {
        e.table_parts().1 as usize / BLOCK_GRAIN
    }

    /// A new piece slot holding `piece`; grows the piece array if needed.
    pub(crate) fn new_piece(&mut self, piece: Piece) -> Result<u32, Error> {
        self.piece_room()?;
        let slot = self.pieces.alloc()?;
        grow(&mut self.arrays.pieces, slot as usize + 1);
        // SAFETY: a piece slot just allocated, fresh or freed by reclamation: no generation
        // anyone can read reaches it (I3, I4); and only the writer writes, through `&mut
        // self` (I6), so nobody reads or writes the cell meanwhile.
        let write = |p: *mut Piece| unsafe { *p = piece };
        self.arrays.pieces.cell(slot as usize).with_mut(write);
        Ok(slot)
    }

    /// Frees piece id `id`: a piece slot, or a page record's ([`RECORD`]).
    pub(crate) fn free_piece(&mut self, id: u32) {
        if id & RECORD == 0 {
            self.pieces.free(id);
            return;
        }
        let r = &mut self.rows;
        r.record_free.push(id & !RECORD);
        r.records -= 1;
        r.cells -= RECORD_CELLS;
    }

    /// Writes a new sub-page table for `page` of `rows` (page offsets ascending, piece slots)
    /// and returns its entry; grows the row array if needed.
    pub(crate) fn alloc_table(&mut self, page: u64, rows: &[(u32, u32)]) -> Result<Entry, Error> {
        self.alloc_rows(page, rows)
    }

    /// Writes a new flat node whose span starts at page `base` and ends at the page whose
    /// low 32 bits are `last`, of `rows` (the low 32 bits of each run's first page,
    /// ascending; the run's entry as bits), and returns its entry.
    pub(crate) fn alloc_flat(
        &mut self,
        base: u64,
        last: u32,
        rows: &[(u32, u32)],
    ) -> Result<Entry, Error> {
        assert!(
            !rows.is_empty() && rows.len() <= FLAT_ROWS,
            "a flat node holds 1..=FLAT_ROWS runs"
        );
        let mut cells = [0; FLAT_CELLS];
        for k in 0..=FLAT_ROWS {
            // The runs' first keys, one past the last run's last key (rule 3: the span does
            // not end on a multiple of 2^32 pages, so this does not wrap), then padding keys
            // at the top: padding rows have empty entries, so what they match adds nothing.
            let (key, e) = match rows.get(k) {
                Some(&run) => run,
                None if k == rows.len() => (last.checked_add(1).expect("rule 3: below 2^32"), 0),
                None => (u32::MAX, 0),
            };
            cells[k] = key ^ KEY_BIAS;
            if k < FLAT_ROWS {
                cells[FLAT_ENTRIES + k] = e;
            }
        }
        cells[FLAT_BASE] = base as u32;
        cells[FLAT_BASE + 1] = (base >> 32) as u32;
        cells[FLAT_RUNS] = rows.len() as u32;
        let offset = self.alloc_block(BlockKind::Flat, FLAT_CELLS, rows.len(), |i| cells[i])?;
        self.rows.flats += 1;
        Ok(Entry::flat(0, offset as u32))
    }

    /// A block of `cells` cells holding `cell(i)` (`rows` rows), from the free list of its
    /// kind; grows the row array if needed. Returns its offset.
    fn alloc_block(
        &mut self,
        kind: BlockKind,
        cells: usize,
        rows: usize,
        cell: impl Fn(usize) -> u32,
    ) -> Result<usize, Error> {
        let r = &mut self.rows;
        if r.rows + rows > r.limit {
            return Err(Error::CapacityExhausted {
                kind: Capacity::Rows,
                limit: r.limit,
            });
        }
        let free = match kind {
            BlockKind::Table(class) => {
                if r.free.len() <= class {
                    r.free.resize_with(class + 1, Vec::new);
                }
                &mut r.free[class]
            }
            BlockKind::Flat => &mut r.flat_free,
            BlockKind::Record => &mut r.record_free,
        };
        let offset = match free.pop() {
            Some(o) => o as usize,
            None => {
                // The common table's starts and pieces on one cache line (a lookup reads one
                // start vector and one piece: one line, not two; the array's blocks are
                // line-aligned, `Cells`).
                let o = match kind {
                    BlockKind::Table(0) => r.high.next_multiple_of(LINE_CELLS),
                    _ => r.high,
                };
                if o + cells > TABLE_OFFSET_LIMIT {
                    return Err(Error::CapacityExhausted {
                        kind: Capacity::Rows,
                        limit: TABLE_OFFSET_LIMIT / 2,
                    });
                }
                // The cells skipped become free page records.
                for gap in (r.high..o).step_by(RECORD_CELLS) {
                    if gap + RECORD_CELLS <= o {
                        r.record_free.push(gap as u32);
                    }
                }
                r.high = o + cells;
                o
            }
        };
        r.rows += rows;
        r.cells += cells;
        grow(&mut self.arrays.rows, offset + cells);
        for (i, c) in self.arrays.rows.range(offset, cells).iter().enumerate() {
            let v = cell(i);
            // SAFETY: a block just taken from the free list (freed by reclamation) or fresh:
            // no generation anyone can read reaches it (I3, I4); and only the writer writes,
            // through `&mut self` (I6), so nobody reads or writes the cell meanwhile.
            c.with_mut(|p| unsafe { *p = v });
        }
        Ok(offset)
    }

    /// Writes the page record of the one-page piece of `page` (origin at its start) whose
    /// section cell is `section`, and returns its piece id ([`RECORD`] and its row-block
    /// offset); `None` if they do not fit in one ([`PageRecord::pack`]).
    pub(crate) fn alloc_record(
        &mut self,
        page: u64,
        section: *const (),
    ) -> Result<Option<u32>, Error> {
        let Some(cells) = PageRecord::pack(page, section) else {
            return Ok(None);
        };
        self.piece_room()?;
        let offset = self.alloc_block(BlockKind::Record, RECORD_CELLS, 0, |i| cells[i])?;
        self.rows.records += 1;
        Ok(Some(RECORD | offset as u32))
    }

    /// `Ok` if one more piece or page record fits under `max_pieces`.
    fn piece_room(&self) -> Result<(), Error> {
        if self.pieces.live() + self.rows.records >= self.max_pieces {
            return Err(Error::CapacityExhausted {
                kind: Capacity::Pieces,
                limit: self.max_pieces,
            });
        }
        Ok(())
    }

    /// The table block (the layout `Held::table_piece` reads).
    fn alloc_rows(&mut self, page: u64, rows: &[(u32, u32)]) -> Result<Entry, Error> {
        let class = table_class(rows.len()).ok_or(Error::CapacityExhausted {
            kind: Capacity::RowsInOnePage,
            limit: table_cap(TABLE_CLASSES - 1),
        })?;
        let cap = table_cap(class);
        let last = rows[rows.len() - 1].1;
        // The starts, padded with `u32::MAX`, the pieces, padded with the last one, the page.
        let row = |k: usize| rows.get(k).copied().unwrap_or((u32::MAX, last));
        let cell = |i: usize| match i {
            i if i < cap => row(i).0 ^ KEY_BIAS,
            i if i < 2 * cap => row(i - cap).1,
            i if i == 2 * cap => page as u32,
            _ => (page >> 32) as u32,
        };
        let kind = BlockKind::Table(class as usize);
        let offset = self.alloc_block(kind, block_cells(cap), rows.len(), cell)?;
        self.rows.tables += 1;
        Ok(Entry::subpage(class, offset as u32))
    }

    /// Frees the table or flat node of entry `e`.
    pub(crate) fn free_table(&mut self, e: Entry) {
        let (class, offset) = e.table_parts();
        let offset_cells = offset as usize;
        if e.is_flat() {
            let rows = self.row(offset_cells + FLAT_RUNS) as usize;
            let r = &mut self.rows;
            r.flat_free.push(offset);
            r.flats -= 1;
            r.rows -= rows;
            r.cells -= FLAT_CELLS;
            return;
        }
        let cap = table_cap(class);
        let rows = table_real_rows(cap, |k| self.row(offset_cells + cap + k));
        let r = &mut self.rows;
        r.free[class as usize].push(offset);
        r.tables -= 1;
        r.rows -= rows;
        r.cells -= block_cells(table_cap(class));
    }

    /// Bytes of the block of the sub-page table or flat node of entry `e`.
    pub(crate) fn block_bytes(e: Entry) -> usize {
        if e.is_flat() {
            FLAT_BYTES
        } else {
            table_bytes(e.table_parts().0)
        }
    }

    /// Slots in use: nodes, pieces, page records, flat nodes, tables, and the bytes of the
    /// tables' and flat nodes' row blocks (sections are `Storage`'s: zero here).
    pub(crate) fn live(&self) -> Counts {
        let r = &self.rows;
        Counts {
            nodes: self.nodes.live(),
            flats: r.flats,
            tables: r.tables,
            table_bytes: (r.cells - r.records * RECORD_CELLS) * std::mem::size_of::<u32>(),
            pieces: self.pieces.live(),
            records: r.records,
            sections: 0,
        }
    }

    /// Bytes of node storage reserved by the current node array.
    pub(crate) fn reserved_node_bytes(&self) -> usize {
        self.arrays.nodes.len() * std::mem::size_of::<u32>()
    }

    /// Cell `i` of the row array, read by the writer.
    fn row(&self, i: usize) -> u32 {
        // SAFETY: the arena writes its arrays only through `&mut self` (I6), and readers
        // never write, so nothing writes the cell while `&self` lives; `cell` checks the
        // bounds.
        self.arrays.rows.cell(i).with(|p| unsafe { *p })
    }
}

/// Fewer cells than any table block or flat node spans (page records, 3 cells, are named by
/// their piece ids instead): see [`Arena::block_key`].
const BLOCK_GRAIN: usize = 16;
const _: () = assert!(block_cells(MIN_TABLE_ROWS) > BLOCK_GRAIN && FLAT_CELLS > BLOCK_GRAIN);

/// Makes `array` hold at least `need` cells, by copying it into one at least twice as large
/// (versions built before keep the old one).
fn grow<T: Copy + Default, const N: usize>(array: &mut Arc<Cells<T, N>>, need: usize) {
    if need > array.len() {
        let len = need.max(array.len() * 2);
        *array = Arc::new(array.grown(len));
    }
}
