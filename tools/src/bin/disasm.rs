//! Reader paths as standalone functions, for `scripts/check-no-rmw.sh` to disassemble: a
//! lookup (the hot path), a refresh, going online and offline, and the catch-up a lookup
//! runs once per new generation. Run as a program, it just calls each once.

use physmap::{PhysMap, Reader};

/// A lookup, as a vCPU does it for every exit.
#[no_mangle]
#[inline(never)]
pub fn disasm_reader_lookup(r: &mut Reader<u64>, addr: u64) -> Option<(u64, u64)> {
    r.lookup(addr).map(|h| (*h.value, h.offset))
}

/// A lookup on a held snapshot.
#[no_mangle]
#[inline(never)]
pub fn disasm_snapshot_lookup(s: &physmap::Snapshot<u64>, addr: u64) -> Option<(u64, u64)> {
    s.lookup(addr).map(|h| (*h.value, h.offset))
}

/// A refresh (and, when the generation changed, the announcement).
#[no_mangle]
#[inline(never)]
pub fn disasm_reader_refresh(r: &mut Reader<u64>) -> u64 {
    r.refresh()
}

/// Going online (from offline: the announcement of the newest generation).
#[no_mangle]
#[inline(never)]
pub fn disasm_reader_online(r: &mut Reader<u64>) {
    r.online()
}

/// Going offline.
#[no_mangle]
#[inline(never)]
pub fn disasm_reader_offline(r: &mut Reader<u64>) {
    r.offline()
}

fn main() {
    let map = PhysMap::new();
    let mut t = map.transaction();
    t.insert(0..0x1000, 1u64).unwrap();
    t.commit().unwrap();
    let mut r = map.reader();
    let hit = disasm_reader_lookup(&mut r, 0x10);
    assert_eq!(disasm_snapshot_lookup(&map.snapshot(), 0x10), hit);
    let g = disasm_reader_refresh(&mut r);
    disasm_reader_offline(&mut r);
    disasm_reader_online(&mut r);
    println!("lookup {hit:?}, generation {g}");
}
