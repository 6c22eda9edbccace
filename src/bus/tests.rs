//! The bus's unit tests (the recent placements' score, each dispatch's device).

use super::*;
use vm_device::bus::MmioAddressOffset;

struct Nop;
impl DeviceMmio for Nop {
    fn mmio_read(&self, _: MmioAddress, _: MmioAddressOffset, _: &mut [u8]) {}
    fn mmio_write(&self, _: MmioAddress, _: MmioAddressOffset, _: &[u8]) {}
}

/// A device answering its id, over-aligned so that it sits past the `ArcInner`'s counts
/// at another offset than `Nop` does.
#[repr(align(64))]
struct Wide(u8);
impl DeviceMmio for Wide {
    fn mmio_read(&self, _: MmioAddress, offset: MmioAddressOffset, data: &mut [u8]) {
        data.fill(self.0 ^ offset as u8);
    }
    fn mmio_write(&self, _: MmioAddress, _: MmioAddressOffset, _: &[u8]) {}
}

/// Each dispatch reaches its own device (located once, at insert), with its base and
/// offset, through the walk and through the recent placements, before and after a move.
#[test]
fn dispatches_reach_their_own_device() {
    let bus = MmioBus::new();
    bus.insert(0x1000, 0x100, Arc::new(Nop)).unwrap();
    for i in 1..8u8 {
        bus.insert(u64::from(i) << 20, 0x10, Arc::new(Wide(i << 4)))
            .unwrap();
    }
    let mut vcpu = bus.vcpu();
    for round in 0..3u64 {
        for i in 1..8u8 {
            let addr = (u64::from(i) << 20) + round;
            let mut data = [0u8; 2];
            vcpu.mmio_read(addr, &mut data).unwrap();
            assert_eq!(data, [(i << 4) ^ round as u8; 2], "{addr:#x}");
            let got = vcpu.dispatch(addr, 1, |_, base, offset| (base, offset));
            assert_eq!(got, Ok((u64::from(i) << 20, round)));
        }
    }
    bus.update_range(7 << 20, 0x9000_0000, 0x10).unwrap();
    let mut data = [0u8; 1];
    vcpu.mmio_read(0x9000_0003, &mut data).unwrap();
    assert_eq!(data, [0x70 ^ 3]);
    assert!(
        vcpu.mmio_read(0x9000_000f, &mut [0; 2]).is_err(),
        "past the end"
    );
    assert_eq!(bus.devices().len(), 8);
    assert_eq!(
        bus.device(0x9000_0000).unwrap().0,
        0x9000_0000..=0x9000_000f
    );
}

/// Spread traffic turns the look at the recent placements off (no line for nothing);
/// traffic round a few devices turns it on again within `ON` dispatches.
#[test]
fn the_recent_placements_score_follows_the_traffic() {
    let bus = MmioBus::new();
    for i in 0..64u64 {
        bus.insert(i << 12, 0x1000, Arc::new(Nop)).unwrap();
    }
    let mut vcpu = bus.vcpu();
    let score = |v: &mut BusVcpu<_>| v.reader.bus_score();
    let on = Recent::<dyn DeviceMmio + Send + Sync>::ON;
    assert!(score(&mut vcpu) >= on);
    for i in 0..16u64 {
        vcpu.mmio_read((i * 7 % 64) << 12, &mut [0]).unwrap();
    }
    assert!(score(&mut vcpu) < on, "spread traffic: off");
    for i in 0..(on as u64 + 8) {
        vcpu.mmio_read((i % 3) << 12, &mut [0]).unwrap();
    }
    assert!(score(&mut vcpu) >= on, "three devices: on again");
    let before = score(&mut vcpu);
    vcpu.mmio_read(1 << 12, &mut [0]).unwrap();
    assert_eq!(
        score(&mut vcpu),
        on + 2 * Recent::<dyn DeviceMmio + Send + Sync>::MISS
    );
    assert!(before >= on);
}
