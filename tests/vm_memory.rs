//! The vm-memory backend (feature `vm-memory`): vm-memory's own `Bytes` and friends through
//! physmap agree byte for byte with a `GuestMemoryMmap` of the same regions; updates are
//! atomic transactions; old snapshots keep their regions.

use physmap::vm_memory::{Error, PhysAddressSpace, PhysGuestMemory};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use vm_memory::{
    Address, Bytes, GuestAddress, GuestAddressSpace, GuestMemoryBackend, GuestMemoryMmap,
    GuestMemoryRegion, GuestRegionMmap,
};

type Region = GuestRegionMmap<()>;

fn region(start: u64, len: usize) -> Arc<Region> {
    Arc::new(Region::from_range(GuestAddress(start), len, None).unwrap())
}

/// A q35-shaped layout: RAM below 640 KiB and from 1 MiB (the legacy hole between), RAM above
/// 4 GiB; and the DIMM hotplugged later.
const LOW: [(u64, usize); 3] = [
    (0, 0xa_0000),
    (0x10_0000, 0x1000_0000 - 0x10_0000),
    (0x1_0000_0000, 0x1000_0000),
];
const DIMM: (u64, usize) = (0x1_4000_0000, 0x800_0000);

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// An address near an interesting place: a region's edges, the hole, the DIMM, or anywhere.
fn address(rng: &mut Rng) -> u64 {
    let edges = [
        0,
        0xa_0000,
        0x10_0000,
        0x1000_0000,
        0x1_0000_0000,
        0x1_1000_0000,
        DIMM.0,
        DIMM.0 + DIMM.1 as u64,
    ];
    match rng.below(4) {
        0..=2 => {
            (edges[rng.below(edges.len() as u64) as usize] + rng.below(0x4000)).wrapping_sub(0x2000)
        }
        _ => rng.below(0x1_6000_0000),
    }
}

/// Runs the same random operations on both memories; every result must be identical.
fn same_answers(
    reference: &GuestMemoryMmap<()>,
    ours: &PhysGuestMemory<Region>,
    rng: &mut Rng,
    ops: usize,
    written: &mut Vec<(u64, usize)>,
) {
    for _ in 0..ops {
        let addr = GuestAddress(address(rng));
        let big = rng.below(8) == 0;
        let len = 1 + rng.below(if big { 0x3000 } else { 16 }) as usize;
        match rng.below(9) {
            0 => {
                let buf: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
                let a = reference.write_slice(&buf, addr);
                let b = ours.write_slice(&buf, addr);
                assert_eq!(
                    format!("{a:?}"),
                    format!("{b:?}"),
                    "write_slice {addr:?}+{len}"
                );
                written.push((addr.0, len));
            }
            1 => {
                let buf: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
                let a = reference.write(&buf, addr);
                let b = ours.write(&buf, addr);
                assert_eq!(format!("{a:?}"), format!("{b:?}"), "write {addr:?}+{len}");
                written.push((addr.0, len));
            }
            2 => {
                let v = rng.next();
                let a = reference.write_obj(v, addr);
                let b = ours.write_obj(v, addr);
                assert_eq!(format!("{a:?}"), format!("{b:?}"), "write_obj {addr:?}");
                written.push((addr.0, 8));
            }
            3 => {
                let (mut x, mut y) = (vec![0u8; len], vec![0u8; len]);
                let a = reference.read_slice(&mut x, addr);
                let b = ours.read_slice(&mut y, addr);
                assert_eq!(
                    format!("{a:?}"),
                    format!("{b:?}"),
                    "read_slice {addr:?}+{len}"
                );
                assert_eq!(x, y, "read_slice bytes at {addr:?}");
            }
            4 => {
                let (mut x, mut y) = (vec![0u8; len], vec![0u8; len]);
                let a = reference.read(&mut x, addr);
                let b = ours.read(&mut y, addr);
                assert_eq!(format!("{a:?}"), format!("{b:?}"), "read {addr:?}+{len}");
                assert_eq!(x, y, "read bytes at {addr:?}");
            }
            5 => {
                let a = reference.read_obj::<u32>(addr);
                let b = ours.read_obj::<u32>(addr);
                assert_eq!(format!("{a:?}"), format!("{b:?}"), "read_obj {addr:?}");
            }
            6 => {
                assert_eq!(
                    GuestMemoryBackend::check_range(reference, addr, len),
                    GuestMemoryBackend::check_range(ours, addr, len),
                    "check_range {addr:?}+{len}"
                );
                assert_eq!(
                    reference.get_slice(addr, len).is_ok(),
                    ours.get_slice(addr, len).is_ok(),
                    "get_slice {addr:?}+{len}"
                );
            }
            7 => {
                assert_eq!(
                    reference
                        .find_region(addr)
                        .map(|r| (r.start_addr(), r.len())),
                    ours.find_region(addr).map(|r| (r.start_addr(), r.len())),
                    "find_region {addr:?}"
                );
                assert_eq!(
                    reference.to_region_addr(addr).map(|(_, a)| a),
                    ours.to_region_addr(addr).map(|(_, a)| a)
                );
                assert_eq!(
                    reference.address_in_range(addr),
                    ours.address_in_range(addr)
                );
                assert_eq!(reference.check_address(addr), ours.check_address(addr));
            }
            _ => {
                let a = addr.checked_add(len as u64);
                if let Some(end) = a {
                    let x: Vec<_> = GuestMemoryBackend::get_slices(reference, addr, len)
                        .map(|s| s.map(|s| s.len()).map_err(|e| format!("{e:?}")))
                        .collect();
                    let y: Vec<_> = GuestMemoryBackend::get_slices(ours, addr, len)
                        .map(|s| s.map(|s| s.len()).map_err(|e| format!("{e:?}")))
                        .collect();
                    assert_eq!(x, y, "get_slices {addr:?}..{end:?}");
                }
            }
        }
    }
    assert_eq!(reference.num_regions(), ours.num_regions());
    assert_eq!(reference.last_addr(), ours.last_addr());
    let starts = |m: &dyn Fn() -> Vec<(GuestAddress, u64)>| m();
    assert_eq!(
        starts(&|| reference
            .iter()
            .map(|r| (r.start_addr(), r.len()))
            .collect()),
        starts(&|| ours.iter().map(|r| (r.start_addr(), r.len())).collect())
    );
}

/// Every byte either side ever wrote reads back the same from both.
fn same_contents(
    reference: &GuestMemoryMmap<()>,
    ours: &PhysGuestMemory<Region>,
    written: &[(u64, usize)],
) {
    for &(addr, len) in written {
        for a in (addr..addr.saturating_add(len as u64)).step_by(1) {
            let x = reference.read_obj::<u8>(GuestAddress(a));
            let y = ours.read_obj::<u8>(GuestAddress(a));
            assert_eq!(format!("{x:?}"), format!("{y:?}"), "byte at {a:#x}");
        }
    }
}

#[test]
fn bytes_agree_with_guest_memory_mmap_byte_for_byte() {
    // Separate backings: each side must write exactly where the other does.
    let reference =
        GuestMemoryMmap::<()>::from_ranges(&LOW.map(|(s, l)| (GuestAddress(s), l))).unwrap();
    let space = PhysAddressSpace::new(LOW.map(|(s, l)| region(s, l))).unwrap();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut written = Vec::new();
    same_answers(&reference, &space.memory(), &mut rng, 20_000, &mut written);

    // Hotplug the DIMM on both sides.
    let reference = reference.insert_region(region(DIMM.0, DIMM.1)).unwrap();
    let mut u = space.update();
    u.insert(region(DIMM.0, DIMM.1)).unwrap();
    u.commit().unwrap();
    same_answers(&reference, &space.memory(), &mut rng, 20_000, &mut written);
    same_contents(&reference, &space.memory(), &written);
}

#[test]
fn updates_are_atomic_and_checked() {
    let space = PhysAddressSpace::new(LOW.map(|(s, l)| region(s, l))).unwrap();
    let before = space.memory();
    assert_eq!(before.num_regions(), 3);
    // An overlap, an empty region, a missing region: errors, nothing published.
    let mut u = space.update();
    u.insert(region(DIMM.0, DIMM.1)).unwrap();
    assert!(matches!(
        u.insert(region(0x9_0000, 0x2_0000)),
        Err(Error::Map(_))
    ));
    assert_eq!(
        u.remove(GuestAddress(0xb_0000)).err(),
        Some(Error::NoRegion { addr: 0xb_0000 })
    );
    drop(u); // not committed
    assert!(!space.memory().address_in_range(GuestAddress(DIMM.0)));
    assert_eq!(space.memory().num_regions(), 3);

    // Replace the RAM above 4 GiB by a larger one and plug the DIMM, in one update.
    before
        .write_obj(0x55u8, GuestAddress(0x1_0000_0000))
        .unwrap();
    let mut u = space.update();
    let old = u.remove(GuestAddress(0x1_0000_1234)).unwrap();
    assert_eq!(old.start_addr(), GuestAddress(0x1_0000_0000));
    assert!(
        u.remove(GuestAddress(0x1_0000_0000)).is_err(),
        "already removed"
    );
    u.insert(region(0x1_0000_0000, 0x2000_0000)).unwrap();
    u.insert(region(DIMM.0, DIMM.1)).unwrap();
    let removed = u.remove(GuestAddress(DIMM.0 + 1)).unwrap(); // removed in the same update
    assert_eq!(removed.len(), DIMM.1 as u64);
    u.insert(region(DIMM.0, DIMM.1)).unwrap();
    u.commit().unwrap();
    let now = space.memory();
    assert_eq!(now.num_regions(), 4);
    assert_eq!(
        now.find_region(GuestAddress(0x1_1000_0000)).unwrap().len(),
        0x2000_0000
    );
    assert_eq!(
        now.read_obj::<u8>(GuestAddress(0x1_0000_0000)).unwrap(),
        0,
        "a new region"
    );
    // The old snapshot still has its regions, contents included.
    assert_eq!(before.num_regions(), 3);
    assert_eq!(
        before.read_obj::<u8>(GuestAddress(0x1_0000_0000)).unwrap(),
        0x55
    );
    assert!(before.read_obj::<u8>(GuestAddress(0x1_1000_0000)).is_err());
    // Overlapping regions at creation are refused too.
    assert!(PhysGuestMemory::new([region(0, 0x1000), region(0x800, 0x1000)]).is_err());
}

/// A device model written against `GuestAddressSpace`, as virtio devices are.
fn device_reads<AS: GuestAddressSpace>(mem: &AS, addr: u64) -> Option<u64> {
    mem.memory().read_obj::<u64>(GuestAddress(addr)).ok()
}

#[test]
fn devices_see_hotplug_atomically_while_it_happens() {
    let space = PhysAddressSpace::new(LOW.map(|(s, l)| region(s, l))).unwrap();
    let low = space.memory();
    low.write_obj(0x1111_u64, GuestAddress(0x20_0000)).unwrap();
    let stop = AtomicBool::new(false);
    let (present, absent, wrong) = (
        AtomicUsize::new(0),
        AtomicUsize::new(0),
        AtomicUsize::new(0),
    );
    std::thread::scope(|s| {
        for _ in 0..4 {
            let (space, stop) = (space.clone(), &stop);
            let (present, absent, wrong) = (&present, &absent, &wrong);
            s.spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    // RAM that never moves reads right every time.
                    if device_reads(&space, 0x20_0000) != Some(0x1111) {
                        wrong.fetch_add(1, Ordering::Relaxed);
                    }
                    // The DIMM: in one snapshot, either whole (with its pattern) or absent.
                    let mem = space.memory();
                    let a = mem.read_obj::<u64>(GuestAddress(DIMM.0));
                    let b = mem.read_obj::<u64>(GuestAddress(DIMM.0 + DIMM.1 as u64 - 8));
                    match (a, b) {
                        (Ok(0xd1), Ok(0xd2)) => drop(present.fetch_add(1, Ordering::Relaxed)),
                        (Err(_), Err(_)) => drop(absent.fetch_add(1, Ordering::Relaxed)),
                        _ => drop(wrong.fetch_add(1, Ordering::Relaxed)),
                    }
                }
            });
        }
        for _ in 0..300 {
            let dimm = region(DIMM.0, DIMM.1);
            dimm.write_obj(0xd1_u64, vm_memory::MemoryRegionAddress(0))
                .unwrap();
            dimm.write_obj(0xd2_u64, vm_memory::MemoryRegionAddress(DIMM.1 as u64 - 8))
                .unwrap();
            let mut u = space.update();
            u.insert(dimm).unwrap();
            u.commit().unwrap();
            std::thread::sleep(std::time::Duration::from_micros(200));
            let mut u = space.update();
            u.remove(GuestAddress(DIMM.0)).unwrap();
            u.commit().unwrap();
        }
        stop.store(true, Ordering::Relaxed);
    });
    assert_eq!(wrong.load(Ordering::Relaxed), 0);
    assert!(present.load(Ordering::Relaxed) > 0 && absent.load(Ordering::Relaxed) > 0);
}
