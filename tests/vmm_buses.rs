//! The Cloud Hypervisor and Firecracker bus shapes (features `ch-bus`, `fc-bus`): the
//! contracts their own test suites check (`vm-device/src/bus.rs` in Cloud Hypervisor,
//! `src/vmm/src/vstate/bus.rs` in Firecracker, rewritten here against our types), then what
//! physmap adds: a refused move keeps the device, removal waits for accesses in flight, a
//! device may move or remove itself from its handler, a panicking device blocks no one.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::time::Duration;

mod ch {
    use super::*;
    use physmap::ch_bus::{Bus, BusDevice, BusDeviceSync, BusError, BusRange};

    struct DummyDevice;
    impl BusDeviceSync for DummyDevice {}

    struct ConstantDevice;
    impl BusDeviceSync for ConstantDevice {
        fn read(&self, _base: u64, offset: u64, data: &mut [u8]) {
            for (i, v) in data.iter_mut().enumerate() {
                *v = (offset as u8).wrapping_add(i as u8);
            }
        }
        fn write(&self, _base: u64, offset: u64, data: &[u8]) -> Option<Arc<Barrier>> {
            for (i, v) in data.iter().enumerate() {
                assert_eq!(*v, (offset as u8).wrapping_add(i as u8));
            }
            None
        }
    }

    #[test]
    fn bus_insert() {
        let bus = Bus::new();
        let dummy = Arc::new(DummyDevice);
        assert_eq!(
            bus.insert(dummy.clone(), 0x10, 0),
            Err(BusError::ZeroSizedRange)
        );
        bus.insert(dummy.clone(), 0x10, 0x10).unwrap();
        let result = bus.insert(dummy.clone(), 0x0f, 0x10);
        assert_eq!(format!("{result:?}"), "Err(Overlap)");
        for (base, len) in [
            (0x10, 0x10),
            (0x10, 0x15),
            (0x12, 0x15),
            (0x12, 0x01),
            (0x0, 0x20),
        ] {
            assert_eq!(
                bus.insert(dummy.clone(), base, len),
                Err(BusError::Overlap),
                "{base:#x}+{len:#x}"
            );
        }
        bus.insert(dummy.clone(), 0x20, 0x05).unwrap();
        bus.insert(dummy.clone(), 0x25, 0x05).unwrap();
        bus.insert(dummy, 0x0, 0x10).unwrap();
    }

    #[test]
    fn bus_read_write() {
        let bus = Bus::new();
        bus.insert(Arc::new(DummyDevice), 0x10, 0x10).unwrap();
        for addr in [0x10, 0x11, 0x16] {
            bus.read(addr, &mut [0, 0, 0, 0]).unwrap();
            bus.write(addr, &[0, 0, 0, 0]).unwrap();
        }
        for addr in [0x20, 0x06] {
            assert_eq!(
                bus.read(addr, &mut [0, 0, 0, 0]),
                Err(BusError::MissingAddressRange)
            );
            assert_eq!(
                bus.write(addr, &[0, 0, 0, 0]).map(|b| b.is_some()),
                Err(BusError::MissingAddressRange)
            );
        }
    }

    #[test]
    fn bus_read_write_values() {
        let bus = Bus::new();
        bus.insert(Arc::new(ConstantDevice), 0x10, 0x10).unwrap();
        let mut values = [0, 1, 2, 3];
        bus.read(0x10, &mut values).unwrap();
        assert_eq!(values, [0, 1, 2, 3]);
        bus.write(0x10, &values).unwrap();
        bus.read(0x15, &mut values).unwrap();
        assert_eq!(values, [5, 6, 7, 8]);
        bus.write(0x15, &values).unwrap();
        // The start address alone decides: an access running past the end reaches the device.
        let mut long = [0u8; 8];
        bus.read(0x1c, &mut long).unwrap();
        assert_eq!(long, [12, 13, 14, 15, 16, 17, 18, 19]);
    }

    #[test]
    fn busrange_cmp() {
        let range = BusRange { base: 0x10, len: 2 };
        assert_eq!(range, BusRange { base: 0x10, len: 3 });
        assert_eq!(range, BusRange { base: 0x10, len: 2 });
        assert!(range < BusRange { base: 0x12, len: 1 });
        assert!(range < BusRange { base: 0x12, len: 3 });
        #[allow(clippy::clone_on_copy)]
        let copy = range.clone();
        assert_eq!(range, copy);

        let bus = Bus::new();
        bus.insert(Arc::new(DummyDevice), 0x10, 0x10).unwrap();
        let mut data = [1, 2, 3, 4];
        bus.write(0x10, &data).unwrap();
        bus.read(0x10, &mut data).unwrap();
        assert_eq!(data, [1, 2, 3, 4], "the default read leaves data alone");
    }

    #[test]
    fn bus_range_overlap() {
        let a = BusRange {
            base: 0x1000,
            len: 0x400,
        };
        for (b, l) in [
            (0x1000, 0x400),
            (0xf00, 0x400),
            (0x1000, 1),
            (0xfff, 2),
            (0x1100, 0x100),
            (0x13ff, 0x100),
        ] {
            assert!(a.overlaps(b, l), "{b:#x}+{l:#x}");
        }
        assert!(!a.overlaps(0x1400, 0x100));
        assert!(!a.overlaps(0xf00, 0x100));
        // No overflow at the top.
        let top = BusRange {
            base: u64::MAX - 0xff,
            len: 0x100,
        };
        assert!(top.overlaps(u64::MAX, 1));
        assert!(!top.overlaps(0, 0x100));
    }

    /// Firecracker's tests of these, from when it had Cloud Hypervisor's code.
    #[test]
    fn bus_remove_and_update_range() {
        let bus = Bus::new();
        let dummy: Arc<dyn BusDeviceSync> = Arc::new(DummyDevice);
        assert_eq!(bus.remove(0x42, 0x0), Err(BusError::ZeroSizedRange));
        assert_eq!(bus.remove(0x13, 0x12), Err(BusError::MissingAddressRange));
        bus.insert(dummy.clone(), 0x13, 0x12).unwrap();
        assert_eq!(bus.remove(0x42, 0x42), Err(BusError::MissingAddressRange));
        bus.remove(0x13, 0x12).unwrap();

        bus.insert(dummy.clone(), 0x16, 0x1).unwrap();
        bus.remove_by_device(dummy.as_ref()).unwrap();
        assert_eq!(bus.remove(0x16, 0x1), Err(BusError::MissingAddressRange));
        bus.remove_by_device(dummy.as_ref()).unwrap(); // nothing left: still Ok

        let bus = Bus::new();
        assert!(bus.update_range(0x13, 0x12, 0x16, 0x1).is_err());
        bus.insert(dummy.clone(), 0x13, 12).unwrap();
        // 0x16 is inside the range, but no range starts there.
        assert!(bus.update_range(0x16, 0x1, 0x13, 0x12).is_err());
        bus.update_range(0x13, 0x12, 0x16, 0x1).unwrap();
        assert!(bus.read(0x13, &mut [0]).is_err());
        bus.read(0x16, &mut [0]).unwrap();
    }

    #[test]
    fn a_refused_move_keeps_the_device_and_ranges_reach_the_top() {
        let bus = Bus::new();
        bus.insert(Arc::new(ConstantDevice), 0x1000, 0x100).unwrap();
        bus.insert(Arc::new(DummyDevice), 0x2000, 0x100).unwrap();
        assert_eq!(
            bus.update_range(0x1000, 0x100, 0x1f80, 0x100),
            Err(BusError::Overlap)
        );
        assert_eq!(
            bus.update_range(0x1000, 0x100, 0x3000, 0),
            Err(BusError::ZeroSizedRange)
        );
        assert_eq!(
            bus.update_range(0x1000, 0x100, u64::MAX, 2),
            Err(BusError::InvalidRange)
        );
        let mut v = [0u8; 2];
        bus.read(0x1004, &mut v).unwrap();
        assert_eq!(v, [4, 5], "still at its old range");
        // Moving over its own old range is fine.
        bus.update_range(0x1000, 0x100, 0x1080, 0x100).unwrap();
        bus.read(0x1084, &mut v).unwrap();
        assert_eq!(v, [4, 5]);
        // The last address.
        bus.insert(Arc::new(ConstantDevice), u64::MAX - 0xff, 0x100)
            .unwrap();
        bus.read(u64::MAX, &mut v[..1]).unwrap();
        assert_eq!(v[0], 0xff);
        assert_eq!(
            bus.insert(Arc::new(DummyDevice), u64::MAX, 2),
            Err(BusError::InvalidRange)
        );
    }

    /// A `BusDevice` behind a `Mutex` (the blanket `BusDeviceSync`).
    #[test]
    fn mutex_devices_and_barriers_pass_through() {
        struct Latch(Arc<Barrier>, u8);
        impl BusDevice for Latch {
            fn read(&mut self, _: u64, _: u64, data: &mut [u8]) {
                data.fill(self.1);
            }
            fn write(&mut self, _: u64, _: u64, data: &[u8]) -> Option<Arc<Barrier>> {
                self.1 = data[0];
                Some(self.0.clone())
            }
        }
        let barrier = Arc::new(Barrier::new(1));
        let bus = Bus::new();
        bus.insert(Arc::new(Mutex::new(Latch(barrier.clone(), 0))), 0x100, 4)
            .unwrap();
        let got = bus.write(0x100, &[7]).unwrap().unwrap();
        assert!(Arc::ptr_eq(&got, &barrier));
        let mut v = [0u8; 4];
        bus.read(0x103, &mut v).unwrap();
        assert_eq!(v, [7; 4]);
    }
}

mod fc {
    use super::*;
    use physmap::fc_bus::{Bus, BusDevice, BusError, BusRange};

    struct DummyDevice;
    impl BusDevice for DummyDevice {}

    struct ConstantDevice;
    impl BusDevice for ConstantDevice {
        fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
            for (i, v) in data.iter_mut().enumerate() {
                *v = (offset as u8).wrapping_add(i as u8);
            }
        }
        fn write(&mut self, _base: u64, offset: u64, data: &[u8]) -> Option<Arc<Barrier>> {
            for (i, v) in data.iter().enumerate() {
                assert_eq!(*v, (offset as u8).wrapping_add(i as u8));
            }
            None
        }
    }

    struct IdDevice(u8);
    impl BusDevice for IdDevice {
        fn read(&mut self, _base: u64, _offset: u64, data: &mut [u8]) {
            data.fill(self.0);
        }
    }

    fn dev(d: impl BusDevice + 'static) -> Arc<Mutex<dyn BusDevice>> {
        Arc::new(Mutex::new(d))
    }

    #[test]
    fn bus_range_new() {
        assert_eq!(BusRange::new(0, 0).err(), Some(BusError::ZeroSizedRange));
        assert_eq!(
            BusRange::new(u64::MAX, 0).err(),
            Some(BusError::ZeroSizedRange)
        );
        assert_eq!(
            BusRange::new(u64::MAX, 2).err(),
            Some(BusError::InvalidRange)
        );
        assert_eq!(
            BusRange::new(2, u64::MAX).err(),
            Some(BusError::InvalidRange)
        );
        let r = BusRange::new(u64::MAX, 1).unwrap();
        assert_eq!((r.base(), r.end()), (u64::MAX, u64::MAX));
        let r = BusRange::new(1, u64::MAX).unwrap();
        assert_eq!((r.base(), r.end()), (1, u64::MAX));
        let r = BusRange::new(u64::MAX - 4095, 4096).unwrap();
        assert_eq!(r.end(), u64::MAX);
        let r = BusRange::new(0, 1).unwrap();
        assert_eq!((r.base(), r.end()), (0, 0));
        assert_eq!(BusRange::new(0x1000, 0x400).unwrap().end(), 0x13ff);
    }

    #[test]
    fn bus_multiple_devices() {
        let bus = Bus::new();
        for (base, id) in [(0x1000, 0xa), (0x2000, 0xb), (0x3000, 0xc)] {
            bus.insert(dev(IdDevice(id)), base, 0x100).unwrap();
        }
        let read = |addr| {
            let mut v = [0u8; 1];
            bus.read(addr, &mut v).map(|()| v[0])
        };
        for (base, id) in [(0x1000, 0xa), (0x2000, 0xb), (0x3000, 0xc)] {
            assert_eq!(read(base), Ok(id));
            assert_eq!(read(base + 0xff), Ok(id));
        }
        bus.remove(0x2000, 0x100).unwrap();
        assert_eq!(read(0x2000), Err(BusError::MissingAddressRange));
        assert_eq!(read(0x1000), Ok(0xa));
        assert_eq!(read(0x3000), Ok(0xc));
        bus.insert(dev(IdDevice(0xd)), 0x4000, 0x100).unwrap();
        assert_eq!(read(0x4000), Ok(0xd));
        assert_eq!(read(0x2000), Err(BusError::MissingAddressRange));
        bus.insert(dev(IdDevice(0xe)), 0x2000, 0x100).unwrap();
        assert_eq!(read(0x2000), Ok(0xe));
    }

    #[test]
    fn bus_insert() {
        let bus = Bus::new();
        let dummy = dev(DummyDevice);
        assert_eq!(
            bus.insert(dummy.clone(), 0x10, 0),
            Err(BusError::ZeroSizedRange)
        );
        bus.insert(dummy.clone(), 0x10, 0x10).unwrap();
        let result = bus.insert(dummy.clone(), 0x0f, 0x10);
        assert_eq!(format!("{result:?}"), "Err(Overlap)");
        for (base, len) in [
            (0x10, 0x10),
            (0x10, 0x15),
            (0x12, 0x15),
            (0x12, 0x01),
            (0x0, 0x20),
        ] {
            assert_eq!(bus.insert(dummy.clone(), base, len), Err(BusError::Overlap));
        }
        bus.insert(dummy.clone(), 0x20, 0x05).unwrap();
        bus.insert(dummy.clone(), 0x25, 0x05).unwrap();
        bus.insert(dummy, 0x0, 0x10).unwrap();
    }

    #[test]
    fn bus_remove() {
        let bus = Bus::new();
        let dummy = dev(DummyDevice);
        assert!(bus.remove(0x42, 0x0).is_err());
        assert!(bus.remove(0x13, 0x12).is_err());
        bus.insert(dummy, 0x13, 0x12).unwrap();
        assert!(bus.remove(0x42, 0x42).is_err());
        bus.remove(0x13, 0x12).unwrap();
    }

    #[test]
    fn bus_move_range() {
        let bus = Bus::new();
        let constant = dev(ConstantDevice);
        bus.insert(constant.clone(), 0x10, 0x10).unwrap();
        assert_eq!(bus.move_range(0x10, 0x30, 0), Err(BusError::ZeroSizedRange));
        assert_eq!(
            bus.move_range(0x2000, 0x3000, 0x10),
            Err(BusError::MissingAddressRange)
        );
        let mut values = [0u8; 4];
        bus.read(0x10, &mut values).unwrap();
        assert!(bus.read(0x30, &mut values).is_err());
        bus.move_range(0x10, 0x30, 0x10).unwrap();
        assert!(bus.read(0x10, &mut values).is_err());
        bus.read(0x35, &mut values).unwrap();
        assert_eq!(values, [5, 6, 7, 8]);
        bus.move_range(0x30, 0x30, 0x10).unwrap();
        bus.read(0x35, &mut values).unwrap();
        bus.move_range(0x30, 0x38, 0x10).unwrap();
        assert!(bus.read(0x30, &mut values).is_err());
        bus.read(0x3d, &mut values).unwrap();
        assert_eq!(values, [5, 6, 7, 8]);
        bus.insert(constant, 0x10, 0x10).unwrap();
        assert_eq!(bus.move_range(0x38, 0x18, 0x10), Err(BusError::Overlap));
        bus.read(0x3d, &mut values).unwrap();
        bus.read(0x15, &mut values).unwrap();
    }

    /// Firecracker panics here; we refuse and change nothing.
    #[test]
    fn bus_move_range_wrong_len() {
        let bus = Bus::new();
        bus.insert(dev(ConstantDevice), 0x10, 0x10).unwrap();
        assert_eq!(
            bus.move_range(0x10, 0x30, 0x20),
            Err(BusError::InvalidRange)
        );
        let mut v = [0u8; 2];
        bus.read(0x12, &mut v).unwrap();
        assert_eq!(v, [2, 3]);
        assert!(bus.read(0x30, &mut v).is_err());
        assert_eq!(
            format!("{}", BusError::MissingAddressRange),
            "Failed to find address range."
        );
    }

    /// A device relocating itself from inside its own access (a BAR written through the
    /// device's config space), and removing another device from there.
    #[test]
    fn a_device_moves_and_removes_from_its_handler() {
        struct Relocating {
            bus: Arc<Bus>,
            at: u64,
        }
        impl BusDevice for Relocating {
            fn write(&mut self, _: u64, _: u64, data: &[u8]) -> Option<Arc<Barrier>> {
                let to = u64::from(data[0]) << 12;
                self.bus.move_range(self.at, to, 0x1000).unwrap();
                self.at = to;
                if data.len() > 1 {
                    self.bus.remove(0x9000, 0x10).unwrap();
                }
                None
            }
        }
        let bus = Arc::new(Bus::new());
        bus.insert(
            Arc::new(Mutex::new(Relocating {
                bus: bus.clone(),
                at: 0x1000,
            })),
            0x1000,
            0x1000,
        )
        .unwrap();
        bus.insert(dev(IdDevice(9)), 0x9000, 0x10).unwrap();
        bus.write(0x1000, &[5]).unwrap();
        assert!(bus.read(0x1000, &mut [0]).is_err());
        bus.write(0x5000, &[6, 1]).unwrap();
        assert!(bus.read(0x9000, &mut [0]).is_err());
        bus.write(0x6000, &[1]).unwrap();
        // Break the cycle bus -> device -> bus.
        bus.remove(0x1000, 0x1000).unwrap();
    }
}

/// `remove` returns only once the access in flight on another thread has returned, for both
/// shapes; and nested accesses (a device reading another device of its bus) work.
#[test]
fn remove_waits_for_accesses_in_flight() {
    use physmap::ch_bus::{Bus, BusDeviceSync};
    struct Slow {
        inside: AtomicBool,
        release: AtomicBool,
        done: AtomicU64,
    }
    impl BusDeviceSync for Slow {
        fn read(&self, _: u64, _: u64, _: &mut [u8]) {
            self.inside.store(true, Ordering::SeqCst);
            while !self.release.load(Ordering::SeqCst) {
                std::thread::yield_now();
            }
            self.done.store(1, Ordering::SeqCst);
        }
    }
    let slow = Arc::new(Slow {
        inside: AtomicBool::new(false),
        release: AtomicBool::new(false),
        done: AtomicU64::new(0),
    });
    let bus = Bus::new();
    bus.insert(slow.clone(), 0x1000, 0x10).unwrap();
    std::thread::scope(|s| {
        s.spawn(|| bus.read(0x1000, &mut [0]).unwrap());
        while !slow.inside.load(Ordering::SeqCst) {
            std::thread::yield_now();
        }
        let remover = s.spawn(|| {
            bus.remove(0x1000, 0x10).unwrap();
            // The access had returned before `remove` did.
            slow.done.load(Ordering::SeqCst)
        });
        // Count what can be counted: the remover is still waiting after many yields.
        for _ in 0..10_000 {
            std::thread::yield_now();
        }
        assert!(
            !remover.is_finished(),
            "remove returned with an access in flight"
        );
        slow.release.store(true, Ordering::SeqCst);
        assert_eq!(remover.join().unwrap(), 1);
    });
    assert!(bus.read(0x1000, &mut [0]).is_err());
}

/// A device that panics in its handler: the vCPU thread unwinds (caught here, as a VMM may),
/// then removal, moves and other accesses go on; with Firecracker's shape the poisoned device
/// itself panics on later accesses, as in Firecracker.
#[test]
fn a_panicking_device_leaves_nothing_blocked() {
    use physmap::fc_bus::{Bus, BusDevice};
    struct Bomb;
    impl BusDevice for Bomb {
        fn read(&mut self, _: u64, _: u64, _: &mut [u8]) {
            panic!("device bug");
        }
    }
    struct Fine;
    impl BusDevice for Fine {
        fn read(&mut self, _: u64, _: u64, data: &mut [u8]) {
            data.fill(1);
        }
    }
    let bus = Arc::new(Bus::new());
    bus.insert(Arc::new(Mutex::new(Bomb)), 0x1000, 0x10)
        .unwrap();
    bus.insert(Arc::new(Mutex::new(Fine)), 0x2000, 0x10)
        .unwrap();
    let (ready, go) = std::sync::mpsc::channel();
    let vcpu = {
        let bus = bus.clone();
        std::thread::spawn(move || {
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                bus.read(0x1000, &mut [0]).unwrap();
            }));
            assert!(r.is_err());
            // The same thread goes on with other devices.
            let mut v = [0u8; 2];
            bus.read(0x2000, &mut v).unwrap();
            assert_eq!(v, [1, 1]);
            ready.send(()).unwrap();
            // And stays idle (its dispatcher is offline) while the control plane works.
            std::thread::sleep(Duration::from_millis(200));
        })
    };
    go.recv().unwrap();
    bus.move_range(0x2000, 0x3000, 0x10).unwrap();
    bus.remove(0x1000, 0x10).unwrap();
    vcpu.join().unwrap();
    let mut v = [0u8; 1];
    bus.read(0x3000, &mut v).unwrap();
    assert_eq!(v, [1]);

    // Cloud Hypervisor's shape: the same.
    use physmap::ch_bus::{Bus as ChBus, BusDeviceSync};
    struct SyncBomb;
    impl BusDeviceSync for SyncBomb {
        fn read(&self, _: u64, _: u64, _: &mut [u8]) {
            panic!("device bug");
        }
    }
    let bus = ChBus::new();
    bus.insert(Arc::new(SyncBomb), 0x1000, 0x10).unwrap();
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        bus.read(0x1000, &mut [0]).unwrap();
    }));
    assert!(r.is_err());
    bus.update_range(0x1000, 0x10, 0x4000, 0x10).unwrap();
    bus.remove(0x4000, 0x10).unwrap();
}

/// A device whose handler accesses another device of the same bus (the thread's dispatcher
/// for that bus is in use: the nested access gets one of its own).
#[test]
fn nested_accesses_on_one_bus() {
    use physmap::ch_bus::{Bus, BusDeviceSync};
    struct Forward(Arc<Bus>);
    impl BusDeviceSync for Forward {
        fn read(&self, _: u64, offset: u64, data: &mut [u8]) {
            self.0.read(0x2000 + offset, data).unwrap();
        }
    }
    struct Value;
    impl BusDeviceSync for Value {
        fn read(&self, _: u64, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
    }
    let bus = Arc::new(Bus::new());
    bus.insert(Arc::new(Forward(bus.clone())), 0x1000, 0x10)
        .unwrap();
    bus.insert(Arc::new(Value), 0x2000, 0x10).unwrap();
    for i in 0..4 {
        let mut v = [0u8; 2];
        bus.read(0x1000 + i, &mut v).unwrap();
        assert_eq!(v, [i as u8; 2]);
    }
    bus.remove(0x1000, 0x10).unwrap();
}
