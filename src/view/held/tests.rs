//! Unit tests of the raw reads, on blocks the writer's arena wrote.

use super::*;
use crate::entry::as_words;

/// The reads of the arrays `arrays`.
///
/// # Safety
/// Nothing writes the cells read while the borrow lives, and every offset read is one of a
/// block or node the arena wrote.
unsafe fn held(arrays: &Arrays) -> Held<'_, ()> {
    // SAFETY: forwarded contract: `arrays` outlives the borrow, and the cells read are
    // written and not written meanwhile, as a held generation's are (I1-I4).
    unsafe { Held::new(Hot::with_bases(arrays.bases()), Near::NONE) }
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
    let arrays = arena.arrays();
    // SAFETY: nothing writes the arena any more, and the nodes read are those written above
    // (single-threaded: I2-I4 hold without a protocol).
    let now = unsafe { held(&arrays) };
    for (unit, then, kids) in &nodes {
        // SAFETY: an array that held the node, still alive (`nodes` keeps it); a grown array
        // keeps the cells of the one it copied, which is never written again (I1).
        let then = unsafe { held(then) };
        for (i, k) in kids.iter().enumerate() {
            assert_eq!(then.entry(*unit, i), *k);
            assert_eq!(now.entry(*unit, i), *k);
        }
    }
}

#[test]
fn flat_nodes_find_each_key_in_its_run_and_nothing_outside() {
    // (Under Miri and loom this runs the search's scalar form, else the SSE2 one.)
    let mut arena = Arena::new(512, 10, 1000);
    let check = |arena: &Arena, e: Entry, runs: &[(u32, u32)], last: u32| {
        let offset = e.table_parts().1;
        let arrays = arena.arrays();
        // SAFETY: the block `alloc_flat` wrote above (I2); single-threaded, so nothing writes it
        // while `check` reads.
        let held = unsafe { held(&arrays) };
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
            let got = held.flat_entry(offset, key);
            assert_eq!(got, Entry::from_bits(want), "key {key:#x} of {runs:x?}");
        }
        let (rows, _) = held.flat_rows(offset);
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
    let arrays = arena.arrays();
    // SAFETY: the table `alloc_table` wrote above (I2); single-threaded, and the arena is not
    // written until the next `held`.
    let t = unsafe { held(&arrays) };
    let find = |off| t.table_piece(offset, class, off);
    assert_eq!(t.table_rows(offset, 8), rows.to_vec());
    assert_eq!(t.table_page(offset, 8), 1 << 40);
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
    let arrays = arena.arrays();
    // SAFETY: the second table, written above by `alloc_table` (I2); single-threaded, and the
    // arena is not written again.
    let t = unsafe { held(&arrays) };
    for off in 0..0x200u32 {
        let want = big.iter().rposition(|&(s, _)| s <= off).map(|i| big[i].1);
        assert_eq!(t.table_piece(offset, class, off), want, "{off:#x}");
    }
    assert_eq!(t.table_rows(offset, cap), big);
}
