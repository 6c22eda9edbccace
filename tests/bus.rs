//! The device bus (feature `bus`): overlaps, dispatch, atomic BAR moves seen by concurrent
//! dispatchers, and no call to a removed device once `remove` returned.

use physmap::bus::{BusError, MmioBus, PioBus};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use vm_device::bus::{MmioAddress, MmioAddressOffset, PioAddress, PioAddressOffset};
use vm_device::{DeviceMmio, DevicePio};

/// Answers reads with its id, its base and the offset; records writes.
#[derive(Default)]
struct Dev {
    id: u64,
    calls: AtomicU64,
    last_write: AtomicU64,
    /// Set by the test once `remove` returned: any call after that is a violation.
    removed: AtomicBool,
    late_calls: AtomicU64,
}

impl Dev {
    fn new(id: u64) -> Arc<Dev> {
        Arc::new(Dev {
            id,
            ..Dev::default()
        })
    }
    fn called(&self) {
        // Relaxed: counters read after the threads are joined.
        self.calls.fetch_add(1, Ordering::Relaxed);
        // SeqCst pairs with the test's store after `remove` returned: a call that starts
        // after it sees it.
        if self.removed.load(Ordering::SeqCst) {
            self.late_calls.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Read data: id (1 byte), base (8 bytes), offset (8 bytes), truncated to the buffer.
fn answer(id: u64, base: u64, offset: u64, data: &mut [u8]) {
    let mut out = [0u8; 17];
    out[0] = id as u8;
    out[1..9].copy_from_slice(&base.to_le_bytes());
    out[9..17].copy_from_slice(&offset.to_le_bytes());
    let n = data.len().min(17);
    data[..n].copy_from_slice(&out[..n]);
}

impl DeviceMmio for Dev {
    fn mmio_read(&self, base: MmioAddress, offset: MmioAddressOffset, data: &mut [u8]) {
        self.called();
        answer(self.id, base.0, offset, data);
    }
    fn mmio_write(&self, _base: MmioAddress, offset: MmioAddressOffset, data: &[u8]) {
        self.called();
        self.last_write
            .store(offset << 8 | data[0] as u64, Ordering::Relaxed);
    }
}

impl DevicePio for Dev {
    fn pio_read(&self, base: PioAddress, offset: PioAddressOffset, data: &mut [u8]) {
        self.called();
        answer(self.id, base.0.into(), offset.into(), data);
    }
    fn pio_write(&self, _base: PioAddress, offset: PioAddressOffset, data: &[u8]) {
        self.called();
        self.last_write
            .store(u64::from(offset) << 8 | data[0] as u64, Ordering::Relaxed);
    }
}

fn decode(data: &[u8; 17]) -> (u64, u64, u64) {
    (
        data[0] as u64,
        u64::from_le_bytes(data[1..9].try_into().unwrap()),
        u64::from_le_bytes(data[9..17].try_into().unwrap()),
    )
}

#[test]
fn insert_refuses_overlaps_and_bad_ranges_and_changes_nothing() {
    let bus = MmioBus::new();
    bus.insert(0x1000, 0x100, Dev::new(1)).unwrap();
    bus.insert(0x1100, 0x100, Dev::new(2)).unwrap();
    let before: Vec<_> = bus.devices().into_iter().map(|(r, _)| r).collect();
    assert_eq!(before, vec![0x1000..=0x10ff, 0x1100..=0x11ff]);
    match bus.insert(0x10f0, 0x20, Dev::new(3)) {
        Err(BusError::Overlap { range, with }) => {
            assert_eq!(range, 0x10f0..=0x110f);
            assert!(
                with == (0x1000..=0x10ff) || with == (0x1100..=0x11ff),
                "{with:?}"
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        bus.insert(0x2000, 0, Dev::new(4)),
        Err(BusError::InvalidRange(_))
    ));
    assert!(matches!(
        bus.insert(u64::MAX - 3, 8, Dev::new(5)),
        Err(BusError::InvalidRange(_))
    ));
    let pio = PioBus::pio();
    assert!(matches!(
        pio.insert(0xfff0, 0x20, Dev::new(6)),
        Err(BusError::InvalidRange(_))
    ));
    let after: Vec<_> = bus.devices().into_iter().map(|(r, _)| r).collect();
    assert_eq!(before, after);
    assert!(matches!(
        bus.remove(0x5000),
        Err(BusError::NoDevice { addr: 0x5000 })
    ));
    assert!(matches!(
        bus.update_range(0x1000, 0x1180, 0x100),
        Err(BusError::Overlap { .. })
    ));
    let after: Vec<_> = bus.devices().into_iter().map(|(r, _)| r).collect();
    assert_eq!(before, after, "a refused move changes nothing");
}

#[test]
fn dispatch_passes_base_and_offset_and_checks_the_access() {
    let bus = MmioBus::new();
    let dev = Dev::new(7);
    bus.insert(0xfe00_0000, 0x1000, dev.clone()).unwrap();
    let mut vcpu = bus.vcpu();
    let mut data = [0u8; 17];
    vcpu.mmio_read(0xfe00_0010, &mut data).unwrap();
    assert_eq!(decode(&data), (7, 0xfe00_0000, 0x10));
    vcpu.mmio_write(0xfe00_0ff8, &[0xab]).unwrap();
    assert_eq!(dev.last_write.load(Ordering::Relaxed), 0xff8 << 8 | 0xab);
    // Runs past the device's end, empty, or nothing there.
    assert_eq!(
        vcpu.mmio_read(0xfe00_0ffc, &mut [0u8; 8]),
        Err(BusError::AccessOutOfRange {
            addr: 0xfe00_0ffc,
            len: 8
        })
    );
    assert_eq!(
        vcpu.mmio_write(0xfe00_0000, &[]),
        Err(BusError::AccessOutOfRange {
            addr: 0xfe00_0000,
            len: 0
        })
    );
    assert_eq!(
        vcpu.mmio_read(0xfe00_1000, &mut data),
        Err(BusError::NoDevice { addr: 0xfe00_1000 })
    );
    assert_eq!(dev.calls.load(Ordering::Relaxed), 2);

    // Port I/O, including a device whose range ends at the last port.
    let pio = PioBus::pio();
    pio.insert(0x3f8, 8, Dev::new(1)).unwrap();
    pio.insert(0xfff8, 8, Dev::new(2)).unwrap();
    let mut vcpu = pio.vcpu();
    let mut data = [0u8; 17];
    vcpu.pio_read(0x3f9, &mut data[..3]).unwrap();
    assert_eq!(data[..3], [1, 0xf8, 0x03]); // id, then the base's low bytes
    assert_eq!(
        vcpu.pio_read(0x3fd, &mut data),
        Err(BusError::AccessOutOfRange {
            addr: 0x3fd,
            len: 17
        })
    );
    vcpu.pio_read(0xffff, &mut data[..1]).unwrap();
    assert_eq!(data[0], 2);
    assert!(vcpu.pio_read(0xffff, &mut [0u8; 2]).is_err());
    assert!(vcpu.pio_read(0x400, &mut data).is_err());
}

#[test]
fn update_range_moves_a_bar_atomically_under_concurrent_dispatchers() {
    const OLD: u64 = 0xc000_0000;
    const NEW: u64 = 0xd000_0000;
    let bus = Arc::new(MmioBus::new());
    let dev = Dev::new(9);
    bus.insert(OLD, 0x1000, dev.clone()).unwrap();
    // Neighbours the move must not disturb.
    bus.insert(OLD + 0x1000, 0x1000, Dev::new(1)).unwrap();
    bus.insert(NEW - 0x1000, 0x1000, Dev::new(2)).unwrap();
    let stop = AtomicBool::new(false);
    let started = AtomicUsize::new(0);
    let (checked, both, neither, wrong) = (
        AtomicUsize::new(0),
        AtomicUsize::new(0),
        AtomicUsize::new(0),
        AtomicUsize::new(0),
    );
    std::thread::scope(|s| {
        for t in 0..8u64 {
            let (bus, stop) = (bus.clone(), &stop);
            let (checked, both, neither, wrong) = (&checked, &both, &neither, &wrong);
            let started = &started;
            s.spawn(move || {
                let mut vcpu = bus.vcpu();
                let off = (t * 0x40) % 0x1000;
                started.fetch_add(1, Ordering::SeqCst);
                // Relaxed: a stop flag.
                while !stop.load(Ordering::Relaxed) {
                    let mut a = [0u8; 17];
                    let mut b = [0u8; 17];
                    let ra = vcpu.mmio_read(OLD + off, &mut a);
                    let ga = vcpu.last_generation();
                    let rb = vcpu.mmio_read(NEW + off, &mut b);
                    let gb = vcpu.last_generation();
                    for (r, d, base) in [(&ra, &a, OLD), (&rb, &b, NEW)] {
                        if r.is_ok() && decode(d) != (9, base, off) {
                            wrong.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    if ga == gb {
                        // One generation: the device is at exactly one of the two places.
                        checked.fetch_add(1, Ordering::Relaxed);
                        match (ra.is_ok(), rb.is_ok()) {
                            (true, true) => drop(both.fetch_add(1, Ordering::Relaxed)),
                            (false, false) => drop(neither.fetch_add(1, Ordering::Relaxed)),
                            _ => {}
                        }
                    }
                    let mut n = [0u8; 17];
                    if vcpu.mmio_read(OLD + 0x1000, &mut n).is_err() || n[0] != 1 {
                        wrong.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        }
        while started.load(Ordering::SeqCst) < 8 {
            std::thread::yield_now();
        }
        // Moves there and back (so the device ends where it started), at least 100 times and
        // until the vCPUs have checked 1,000 same-generation pairs: counted, not timed.
        let mut i = 0;
        while i < 100 || checked.load(Ordering::Relaxed) < 1000 {
            bus.update_range(OLD + 0x10, NEW, 0x1000).unwrap();
            bus.update_range(NEW + 0x10, OLD, 0x1000).unwrap();
            i += 1;
        }
        stop.store(true, Ordering::Relaxed);
    });
    assert_eq!(
        both.load(Ordering::Relaxed),
        0,
        "device seen at both places"
    );
    assert_eq!(
        neither.load(Ordering::Relaxed),
        0,
        "device seen at neither place"
    );
    assert_eq!(
        wrong.load(Ordering::Relaxed),
        0,
        "wrong base, offset or device"
    );
    assert_eq!(bus.device(OLD).map(|(r, _)| r), Some(OLD..=OLD + 0xfff));
}

#[test]
fn a_removed_device_is_never_called_after_remove_returns() {
    const AT: u64 = 0xfeb0_0000;
    let bus = Arc::new(MmioBus::new());
    let stop = AtomicBool::new(false);
    let mut removed = Vec::new();
    std::thread::scope(|s| {
        // Many more vCPU threads than cores, hammering the device's address.
        for t in 0..16u64 {
            let (bus, stop) = (bus.clone(), &stop);
            s.spawn(move || {
                let mut vcpu = bus.vcpu();
                let mut data = [0u8; 8];
                while !stop.load(Ordering::Relaxed) {
                    let _ = vcpu.mmio_read(AT + (t % 8) * 8, &mut data);
                    if t % 4 == 0 {
                        let _ = vcpu.mmio_write(AT, &[t as u8]);
                    }
                }
            });
        }
        for i in 1..=100u64 {
            let dev = Dev::new(i);
            bus.insert(AT, 0x1000, dev.clone()).unwrap();
            // Let the vCPUs find it: 20 calls (counted; the vCPUs never stop trying).
            while dev.calls.load(Ordering::Relaxed) < 20 {
                std::thread::yield_now();
            }
            let (_, d) = bus.remove(AT + 4).unwrap();
            // SeqCst: see `Dev::called`.
            dev.removed.store(true, Ordering::SeqCst);
            drop(d);
            removed.push(dev);
        }
        stop.store(true, Ordering::Relaxed);
    });
    let calls: u64 = removed
        .iter()
        .map(|d| d.calls.load(Ordering::Relaxed))
        .sum();
    let late: u64 = removed
        .iter()
        .map(|d| d.late_calls.load(Ordering::Relaxed))
        .sum();
    assert!(calls >= 2_000, "each device was called 20 times: {calls}");
    assert_eq!(late, 0, "calls to a device after its remove returned");
}

/// A device whose write handler moves another device's BAR on the same bus (as a PCI
/// config-space write does) and one on another bus: neither deadlocks, even with other vCPUs
/// dispatching.
#[test]
fn a_handler_may_move_bars_on_its_own_bus_and_another() {
    struct Config {
        mmio: Arc<MmioBus>,
        pio: Arc<PioBus>,
        moves: AtomicU64,
    }
    impl DeviceMmio for Config {
        fn mmio_read(&self, _: MmioAddress, _: MmioAddressOffset, data: &mut [u8]) {
            data.fill(0);
        }
        fn mmio_write(&self, _: MmioAddress, _: MmioAddressOffset, data: &[u8]) {
            let i = self.moves.fetch_add(1, Ordering::Relaxed);
            let (from, to) = if i % 2 == 0 {
                (0xa000, 0xb000)
            } else {
                (0xb000, 0xa000)
            };
            self.mmio.update_range(from, to, 0x1000).unwrap();
            let port = if i % 2 == 0 {
                (0x100, 0x200)
            } else {
                (0x200, 0x100)
            };
            self.pio.update_range(port.0, port.1, 8).unwrap();
            let _ = data;
        }
    }
    let mmio = Arc::new(MmioBus::new());
    let pio = Arc::new(PioBus::pio());
    let config = Arc::new(Config {
        mmio: mmio.clone(),
        pio: pio.clone(),
        moves: AtomicU64::new(0),
    });
    mmio.insert(0xcf8, 8, config.clone()).unwrap();
    mmio.insert(0xa000, 0x1000, Dev::new(1)).unwrap();
    pio.insert(0x100, 8, Dev::new(2)).unwrap();
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        for t in 0..4u64 {
            let (mmio, pio, stop, config) = (mmio.clone(), pio.clone(), &stop, config.clone());
            s.spawn(move || {
                let (mut m, mut p) = (mmio.vcpu(), pio.vcpu());
                let mut data = [0u8; 4];
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let _ = m.mmio_read(0xa000 + (i % 2) * 0x1000, &mut data);
                    let _ = p.pio_read(0x100 + (i % 2) as u16 * 0x100, &mut data);
                    if t == 0 && i % 16 == 0 {
                        m.mmio_write(0xcf8, &[1]).unwrap(); // moves both BARs from here
                        if config.moves.load(Ordering::Relaxed) == 50 {
                            stop.store(true, Ordering::Relaxed);
                        }
                    }
                    i += 1;
                }
            });
        }
    });
    assert_eq!(config.moves.load(Ordering::Relaxed), 50);
}

/// A device whose handler panics.
struct Panicky;

impl DeviceMmio for Panicky {
    fn mmio_read(&self, _: MmioAddress, _: MmioAddressOffset, _: &mut [u8]) {
        panic!("device model bug");
    }
    fn mmio_write(&self, _: MmioAddress, _: MmioAddressOffset, _: &[u8]) {}
}

/// A VMM catches a device handler's panic around its exit handler, and the vCPU thread
/// then idles holding its `BusVcpu` (parked, or in `KVM_RUN`). The vCPU must hold nothing:
/// `remove`, `update_range` and `synchronize` on another thread return. (Before, the reader
/// stayed online after the unwind and each of them waited forever; the timeout below only
/// turns such a hang into a failure.)
#[test]
fn a_panicking_handler_on_an_idle_vcpu_delays_no_one() {
    let bus = Arc::new(MmioBus::new());
    bus.insert(0x1000, 0x100, Arc::new(Panicky)).unwrap();
    bus.insert(0x2000, 0x100, Dev::new(2)).unwrap();
    bus.insert(0x3000, 0x100, Dev::new(3)).unwrap();
    let (idle_tx, idle_rx) = std::sync::mpsc::channel();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let b = bus.clone();
    let vcpu_thread = std::thread::spawn(move || {
        let mut vcpu = b.vcpu();
        let mut data = [0u8; 4];
        vcpu.mmio_read(0x2000, &mut data).unwrap();
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            vcpu.mmio_read(0x1000, &mut data)
        }));
        idle_tx.send(caught.is_err()).unwrap();
        // Idle, still holding the BusVcpu, until the control plane is done.
        done_rx.recv().unwrap();
        // And it still works afterwards.
        vcpu.mmio_read(0x5000, &mut data)
    });
    assert!(
        idle_rx.recv().unwrap(),
        "the handler's panic reached the VMM"
    );
    let (result_tx, result_rx) = std::sync::mpsc::channel();
    let b = bus.clone();
    std::thread::spawn(move || {
        let removed = b.remove(0x2000).map(|(range, _)| range);
        let moved = b.update_range(0x3000, 0x5000, 0x100);
        b.synchronize();
        result_tx.send((removed, moved)).unwrap();
    });
    let (removed, moved) = result_rx
        .recv_timeout(std::time::Duration::from_secs(60))
        .expect("the control plane is blocked by the idle vCPU");
    assert_eq!(removed, Ok(0x2000..=0x20ff));
    assert_eq!(moved, Ok(()));
    done_tx.send(()).unwrap();
    assert_eq!(vcpu_thread.join().unwrap(), Ok(()));
}

/// A vCPU remembers the devices it dispatched to last (`BusVcpu`'s recent placements): what
/// it remembers must follow every move, removal and insertion, on clustered and spread
/// traffic alike, with the access checks of a walk.
#[test]
fn remembered_devices_follow_every_change() {
    let bus = MmioBus::new();
    let devs: Vec<_> = (0..8).map(|i| Dev::new(i + 1)).collect();
    for (i, d) in devs.iter().enumerate() {
        bus.insert(0x10_0000 * (i as u64 + 1), 0x1000, d.clone())
            .unwrap();
    }
    let mut vcpu = bus.vcpu();
    let mut data = [0u8; 17];
    let mut read = |vcpu: &mut physmap::bus::BusVcpu<_>, addr: u64| {
        vcpu.mmio_read(addr, &mut data).map(|()| decode(&data))
    };
    // Round three devices (remembered), then spread over all eight, then round three again.
    for round in 0..200u64 {
        let i = if (50..150).contains(&round) {
            round * 5 % 8
        } else {
            round % 3
        };
        let base = 0x10_0000 * (i + 1);
        let off = round * 4 % 0x1000;
        assert_eq!(read(&mut vcpu, base + off), Ok((i + 1, base, off)));
    }
    // A move: the old place answers no more, the new one does, with the new base.
    bus.update_range(0x20_0000, 0x90_0000, 0x1000).unwrap();
    assert_eq!(
        read(&mut vcpu, 0x20_0004),
        Err(BusError::NoDevice { addr: 0x20_0004 })
    );
    assert_eq!(read(&mut vcpu, 0x90_0004), Ok((2, 0x90_0000, 4)));
    // A removal, then another device in its place.
    read(&mut vcpu, 0x30_0000).unwrap();
    let calls = devs[2].calls.load(Ordering::Relaxed);
    bus.remove(0x30_0000).unwrap();
    assert_eq!(
        read(&mut vcpu, 0x30_0000),
        Err(BusError::NoDevice { addr: 0x30_0000 })
    );
    assert_eq!(devs[2].calls.load(Ordering::Relaxed), calls);
    bus.insert(0x30_0000, 0x800, Dev::new(42)).unwrap();
    for _ in 0..3 {
        assert_eq!(read(&mut vcpu, 0x30_0010), Ok((42, 0x30_0000, 0x10)));
        assert_eq!(
            read(&mut vcpu, 0x30_0800),
            Err(BusError::NoDevice { addr: 0x30_0800 })
        );
    }
    // The access checks on a remembered device: past its end, and empty.
    assert_eq!(read(&mut vcpu, 0x10_0ee0), Ok((1, 0x10_0000, 0xee0)));
    assert_eq!(
        vcpu.mmio_read(0x10_0ff8, &mut [0u8; 9]),
        Err(BusError::AccessOutOfRange {
            addr: 0x10_0ff8,
            len: 9
        })
    );
    vcpu.mmio_read(0x10_0ff8, &mut [0u8; 8]).unwrap();
    assert_eq!(
        vcpu.mmio_write(0x10_0ff8, &[]),
        Err(BusError::AccessOutOfRange {
            addr: 0x10_0ff8,
            len: 0
        })
    );
    // A device ending at the last address.
    bus.insert(u64::MAX - 0xfff, 0x1000, Dev::new(9)).unwrap();
    for _ in 0..3 {
        let mut four = [0u8; 4];
        vcpu.mmio_read(u64::MAX - 3, &mut four).unwrap();
        assert_eq!(four[0], 9);
        assert!(vcpu.mmio_read(u64::MAX - 3, &mut [0u8; 5]).is_err());
    }
}
