//! Unit tests of the arena.

use super::*;
use crate::entry::{as_words, Entry};
use crate::Error;

#[test]
fn slab_slots_map_to_distinct_cells_inside_their_chunk() {
    for first in [1u32, 2, 6] {
        let slab: Slab<u32> = Slab::new(first);
        let mut seen = std::collections::HashSet::new();
        for slot in 0..600u32 {
            let (chunk, cell) = slab.locate(slot);
            assert!(cell < slab.chunk_len(chunk), "slot {slot}");
            assert!(seen.insert((chunk, cell)), "slot {slot} collides");
        }
    }
}

#[test]
fn allocators_reuse_freed_slots_and_stop_at_the_limit() {
    let mut alloc = SlabAlloc::new(40, crate::Capacity::Rows);
    let slots: Vec<u32> = (0..40).map(|_| alloc.alloc().unwrap()).collect();
    assert_eq!(slots, (0..40).collect::<Vec<u32>>());
    assert_eq!(
        alloc.alloc(),
        Err(Error::CapacityExhausted {
            kind: crate::Capacity::Rows,
            limit: 40
        })
    );
    alloc.free(7);
    assert_eq!(alloc.alloc(), Ok(7), "freed slots are reused first");
    assert_eq!(alloc.live(), 40);
}

#[test]
fn grown_arrays_keep_their_cells_and_old_ones_stay_valid() {
    #[allow(clippy::type_complexity)]
    let mut arena = Arena::new(4, 1000, 1000);
    let mut nodes = Vec::new();
    for n in 0..100u32 {
        let kids: Vec<Entry> = (0..4).map(|i| Entry::leaf(n * 10 + i)).collect();
        let unit = arena.new_node(&kids).unwrap();
        nodes.push((unit, arena.arrays(), kids));
    }
    let now = arena.arrays().bases();
    for (unit, then, kids) in &nodes {
        let then = then.bases();
        for (i, k) in kids.iter().enumerate() {
            // SAFETY: written above; `then` and `now` are arrays that held the node, still
            // alive (`nodes` keeps them), and a grown array keeps the cells of the one it
            // copied, which is never written again (I1).
            unsafe {
                assert_eq!(then.entry(*unit, i), *k);
                assert_eq!(now.entry(*unit, i), *k);
            }
        }
    }
}

#[test]
fn table_classes_waste_little_and_stop_with_an_error() {
    let caps: Vec<usize> = (0..TABLE_CLASSES).map(table_cap).collect();
    assert_eq!(caps[..9], [8, 12, 16, 24, 32, 48, 64, 96, 128]);
    assert_eq!(*caps.last().unwrap(), 16384);
    assert!(caps.windows(2).all(|w| w[0] < w[1]));
    for rows in 1..=16384 {
        let cap = table_cap(table_class(rows).unwrap());
        // At most a third of the rows wasted up to 128 rows, at most half above.
        let waste = cap - rows;
        assert!(rows <= 8 || 3 * waste <= cap || (rows > 128 && 2 * waste < cap));
    }
    assert_eq!(table_class(16385), None);
    let mut arena = Arena::new(512, 10, 1 << 20);
    let rows: Vec<(u32, u32)> = (0..16385).map(|i| (i, i)).collect();
    assert!(matches!(
        arena.alloc_table(0, &rows),
        Err(Error::CapacityExhausted { limit: 16384, .. })
    ));
    assert!(arena.alloc_table(0, &rows[..16384]).is_ok());
}

#[test]
fn flat_nodes_find_each_key_in_its_run_and_nothing_outside() {
    // (Under Miri and loom this runs the search's scalar form, else the SSE2 one.)
    let mut arena = Arena::new(512, 10, 1000);
    let check = |arena: &Arena, e: Entry, runs: &[(u32, u32)], last: u32| {
        let offset = e.table_parts().1;
        let bases = arena.arrays().bases();
        let mut keys: Vec<u32> = runs
            .iter()
            .flat_map(|r| [r.0, r.0.wrapping_sub(1), r.0 + 1])
            .collect();
        keys.extend([0, 1, last, last.wrapping_add(1), u32::MAX - 1, u32::MAX]);
        for key in keys {
            let want = if key < runs[0].0 || key > last {
                0
            } else {
                runs.iter().rev().find(|r| r.0 <= key).unwrap().1
            };
            // SAFETY: the block `alloc_flat` wrote above, in the current arrays;
            // single-threaded, so nothing writes it meanwhile.
            let got = unsafe { bases.flat_entry(offset, key) };
            assert_eq!(got, Entry::from_bits(want), "key {key:#x} of {runs:x?}");
        }
        // SAFETY: the same block, written above by `alloc_flat`; single-threaded.
        let (rows, _) = unsafe { bases.flat_rows(offset) };
        assert_eq!(rows, runs);
    };
    let e1 = as_words(&[Entry::leaf(7)])[0];
    let e2 = as_words(&[Entry::leaf(9)])[0];
    let runs = [(5, e1), (10, 0), (12, e2)];
    let e = arena.alloc_flat(1 << 40 | 5, 20, &runs).unwrap();
    check(&arena, e, &runs, 20);
    // Sixteen runs up to the last key below 2^32 (no padding row, the next key is the top).
    let runs: Vec<(u32, u32)> = (0..16).map(|k| ((k * 0x1000_0000) | 3, k + 1)).collect();
    let e = arena.alloc_flat(3, u32::MAX - 1, &runs).unwrap();
    check(&arena, e, &runs, u32::MAX - 1);
    // One run that starts at key 0.
    let e = arena.alloc_flat(0, 0x1ff, &[(0, e2)]).unwrap();
    check(&arena, e, &[(0, e2)], 0x1ff);
}

#[test]
fn tables_pad_to_a_line_and_find_their_rows() {
    let mut arena = Arena::new(512, 10, 1000);
    let rows = [(0x10u32, 5u32), (0x400, 6), (u32::MAX, 7)];
    let e = arena.alloc_table(1 << 40, &rows).unwrap();
    let (class, offset) = e.table_parts();
    assert_eq!(table_cap(class), 8);
    let bases = arena.arrays().bases();
    // SAFETY: written above, single-threaded.
    let find = |off| unsafe { bases.table_piece(offset, class, off) };
    // SAFETY: the table `alloc_table` wrote above, in the current arrays; single-threaded.
    assert_eq!(unsafe { bases.table_rows(offset, 8) }, rows.to_vec());
    // SAFETY: the table `alloc_table` wrote above, in the current arrays; single-threaded.
    assert_eq!(unsafe { bases.table_page(offset, 8) }, 1 << 40);
    for (off, want) in [
        (0xf, None),
        (0x10, Some(5)),
        (0x3ff, Some(5)),
        (0x400, Some(6)),
    ] {
        assert_eq!(find(off), want, "{off:#x}");
    }
    assert_eq!(find(u32::MAX), Some(7), "a row at the very last offset");
    let big: Vec<(u32, u32)> = (0..20).map(|i| (i * 0x10 + 1, i)).collect();
    let e = arena.alloc_table(3, &big).unwrap();
    let (class, offset) = e.table_parts();
    let cap = table_cap(class);
    assert_eq!(cap, 24);
    let bases = arena.arrays().bases();
    for off in 0..0x200u32 {
        let want = big.iter().rposition(|&(s, _)| s <= off).map(|i| big[i].1);
        // SAFETY: the second table, written above by `alloc_table`, in the current arrays;
        // single-threaded.
        assert_eq!(
            // SAFETY: the second table, written above by `alloc_table`, in the current
            // arrays; single-threaded.
            unsafe { bases.table_piece(offset, class, off) },
            want,
            "{off:#x}"
        );
    }
    // SAFETY: the second table, written above by `alloc_table`, in the current arrays;
    // single-threaded.
    assert_eq!(unsafe { bases.table_rows(offset, cap) }, big);
}

#[test]
fn values_in_sections_are_dropped_with_the_storage() {
    let mut storage = StorageWriter::<String>::new();
    storage.ensure_section(0);
    // SAFETY: fresh slot, single-threaded.
    let cell = unsafe { storage.write_section(0, "pc.ram".to_string()) };
    let piece = Piece {
        section: cell,
        ..Piece::default()
    };
    // SAFETY: `piece.section` is the cell written above, which holds its value until
    // `storage` is dropped below; single-threaded, so nothing writes it meanwhile.
    assert_eq!(unsafe { Storage::<String>::value(&piece) }, "pc.ram");
    drop(storage); // Miri reports a leak if the String is not dropped.
}

#[test]
fn page_records_round_trip_and_refuse_what_does_not_fit() {
    let cells: Vec<u64> = vec![0; 4];
    for page in [0u64, 1, 0xfe_dcba_9876, (1 << 40) - 1] {
        for cell in &cells {
            let at = cell as *const u64 as *const ();
            let packed = PageRecord::pack(page, at).unwrap();
            assert_eq!(PageRecord::unpack(packed), (page, at), "{page:#x}");
        }
    }
    let at = &cells[0] as *const u64 as *const ();
    assert_eq!(PageRecord::pack(1 << 40, at), None);
    let odd = (at as usize + 3) as *const ();
    assert_eq!(
        PageRecord::unpack(PageRecord::pack(7, odd).unwrap()),
        (7, odd)
    );
    assert_eq!(PageRecord::pack(0, (1usize << 56) as *const ()), None);
}

#[test]
fn pieces_are_32_bytes_and_never_straddle_a_line() {
    assert_eq!(std::mem::size_of::<Piece>(), 32);
    assert_eq!(std::mem::size_of::<Block<Piece, 2>>(), 64);
    assert_eq!(std::mem::align_of::<Block<Piece, 2>>(), 64);
}
