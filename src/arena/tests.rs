//! Unit tests of the arena.

use super::*;
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
