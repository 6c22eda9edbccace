//! A toy VMM on physmap's rust-vmm adapters: vCPU threads dispatch MMIO and port I/O to
//! devices and do device DMA into guest memory, while a control plane moves a PCI BAR,
//! the guest reprograms another BAR through PCI config space (a port write whose handler
//! moves the BAR from the vCPU thread), and a DIMM is hotplugged and unplugged.
//!
//! Every write carries the id of the device it is meant for, so a device that receives
//! another's access counts a misrouted access; DMA writes are read back. Prints per-device
//! access counts; exits non-zero on any misrouted access or DMA mismatch.
//!
//! ```sh
//! cargo run --release --example vmm --features vm-memory,bus -- [seconds] [vcpus]
//! ```

use physmap::bus::{MmioBus, PioBus};
use physmap::vm_memory::PhysAddressSpace;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use vm_device::bus::{MmioAddress, MmioAddressOffset, PioAddress, PioAddressOffset};
use vm_device::{DeviceMmio, DevicePio};
use vm_memory::{Bytes, GuestAddress, GuestAddressSpace, GuestMemoryBackend, GuestRegionMmap};

/// A device that counts its accesses and checks that each write was meant for it.
struct Device {
    id: u8,
    name: &'static str,
    accesses: AtomicU64,
    misrouted: AtomicU64,
}

impl Device {
    fn new(id: u8, name: &'static str) -> Arc<Device> {
        Arc::new(Device {
            id,
            name,
            accesses: AtomicU64::new(0),
            misrouted: AtomicU64::new(0),
        })
    }
    fn access(&self, data: Option<&[u8]>) {
        // Relaxed: counters, read once the threads are joined.
        self.accesses.fetch_add(1, Ordering::Relaxed);
        if data.is_some_and(|d| d[0] != self.id) {
            self.misrouted.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl DeviceMmio for Device {
    fn mmio_read(&self, _: MmioAddress, _: MmioAddressOffset, data: &mut [u8]) {
        self.access(None);
        data.fill(self.id);
    }
    fn mmio_write(&self, _: MmioAddress, _: MmioAddressOffset, data: &[u8]) {
        self.access(Some(data));
    }
}

impl DevicePio for Device {
    fn pio_read(&self, _: PioAddress, _: PioAddressOffset, data: &mut [u8]) {
        self.access(None);
        data.fill(self.id);
    }
    fn pio_write(&self, _: PioAddress, _: PioAddressOffset, data: &[u8]) {
        self.access(Some(data));
    }
}

/// PCI config space (ports 0xcf8..0xd00): a write to it moves the "nic" BAR, from the vCPU
/// thread that made the write, as a guest reprogramming a BAR does.
struct PciConfig {
    device: Arc<Device>,
    mmio: Arc<MmioBus>,
    /// Which of its two places the nic BAR is at: the BAR register, behind the device's
    /// lock (held across the move; the bus does not wait from inside a handler, so this
    /// cannot deadlock with another vCPU blocked on the lock).
    nic_at: std::sync::Mutex<usize>,
    moves: AtomicU64,
}

impl DevicePio for PciConfig {
    fn pio_read(&self, base: PioAddress, offset: PioAddressOffset, data: &mut [u8]) {
        self.device.pio_read(base, offset, data);
    }
    fn pio_write(&self, base: PioAddress, offset: PioAddressOffset, data: &[u8]) {
        self.device.pio_write(base, offset, data);
        if data[0] == self.device.id {
            let mut at = self.nic_at.lock().unwrap();
            self.mmio
                .update_range(NIC_BAR[*at], NIC_BAR[1 - *at], 0x1000)
                .expect("moving the nic BAR");
            *at = 1 - *at;
            self.moves.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Where the two moving BARs sit, alternately.
const GPU_BAR: [u64; 2] = [0xc000_0000, 0xc100_0000];
const NIC_BAR: [u64; 2] = [0xd000_0000, 0xd100_0000];
const DIMM: (u64, usize) = (0x1_4000_0000, 16 << 20);

struct Rng(u64);
impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

fn ram(start: u64, len: usize) -> Arc<GuestRegionMmap<()>> {
    Arc::new(GuestRegionMmap::from_range(GuestAddress(start), len, None).expect("mmap"))
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let seconds: f64 = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(2.0);
    let vcpus: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(4);
    if !((1..=256).contains(&vcpus) && seconds.is_finite() && seconds > 0.0) {
        eprintln!("usage: vmm [seconds > 0] [vcpus 1..=256]");
        std::process::exit(2);
    }

    // Devices: MMIO (fixed, and two with moving BARs), port I/O.
    let mmio = Arc::new(MmioBus::new());
    let pio = Arc::new(PioBus::pio());
    let mut devices = Vec::new();
    let mut fixed_mmio = Vec::new();
    for (i, name) in [
        "virtio-blk",
        "virtio-net0",
        "virtio-net1",
        "virtio-rng",
        "hpet",
        "ioapic",
    ]
    .into_iter()
    .enumerate()
    {
        let d = Device::new(i as u8 + 1, name);
        let base = 0xfe00_0000 + i as u64 * 0x1000;
        mmio.insert(base, 0x1000, d.clone()).unwrap();
        fixed_mmio.push((base, d.id));
        devices.push(d);
    }
    let gpu = Device::new(20, "gpu (BAR moved by the control plane)");
    mmio.insert(GPU_BAR[0], 0x1000, gpu.clone()).unwrap();
    let nic = Device::new(21, "nic (BAR moved by the guest)");
    mmio.insert(NIC_BAR[0], 0x1000, nic.clone()).unwrap();
    let serial = Device::new(30, "serial");
    pio.insert(0x3f8, 8, serial.clone()).unwrap();
    let i8042 = Device::new(31, "i8042");
    pio.insert(0x60, 1, i8042.clone()).unwrap();
    pio.insert(0x64, 1, i8042.clone()).unwrap();
    let config = Arc::new(PciConfig {
        device: Device::new(32, "pci-config"),
        mmio: mmio.clone(),
        nic_at: std::sync::Mutex::new(0),
        moves: AtomicU64::new(0),
    });
    pio.insert(0xcf8, 8, config.clone()).unwrap();
    devices.extend([
        gpu.clone(),
        nic.clone(),
        serial,
        i8042,
        config.device.clone(),
    ]);

    // Guest memory: RAM below and above 4 GiB; a DIMM comes and goes.
    let memory = PhysAddressSpace::new([
        ram(0, 0xa_0000),
        ram(0x10_0000, 64 << 20),
        ram(1 << 32, 64 << 20),
    ])
    .expect("guest memory");

    let stop = AtomicBool::new(false);
    let dma_errors = AtomicU64::new(0);
    let (dma_ok, hotplugs, bar_moves) = (AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0));
    let start = Instant::now();
    std::thread::scope(|s| {
        for v in 0..vcpus {
            let (mmio, pio, memory, stop) = (mmio.clone(), pio.clone(), memory.clone(), &stop);
            let (fixed_mmio, dma_errors, dma_ok) = (&fixed_mmio, &dma_errors, &dma_ok);
            s.spawn(move || {
                let (mut m, mut p) = (mmio.vcpu(), pio.vcpu());
                let mut rng = Rng(0x9e37_79b9 + v as u64);
                let mut data = [0u8; 4];
                while !stop.load(Ordering::Relaxed) {
                    match rng.below(10) {
                        0..=3 => {
                            let (base, id) = fixed_mmio[rng.below(6) as usize];
                            let addr = base + rng.below(0x400) * 4;
                            m.mmio_write(addr, &[id, 0, 0, 0]).expect("fixed device");
                            m.mmio_read(addr, &mut data).expect("fixed device");
                            assert!(data == [id; 4], "read answered by the wrong device");
                        }
                        4 => {
                            // Either place: the BAR is at exactly one of them.
                            let addr = GPU_BAR[rng.below(2) as usize] + rng.below(0x1000);
                            let _ = m.mmio_write(addr, &[20]);
                        }
                        5 => {
                            let addr = NIC_BAR[rng.below(2) as usize] + rng.below(0x1000);
                            let _ = m.mmio_write(addr, &[21]);
                        }
                        6 => {
                            p.pio_write(0x3f8 + rng.below(8) as u16, &[30])
                                .expect("serial");
                            p.pio_read(0x64, &mut data[..1]).expect("i8042");
                        }
                        7 if rng.below(64) == 0 => {
                            p.pio_write(0xcfc, &[32]).expect("config"); // moves the nic BAR
                        }
                        _ => {
                            // Device DMA: write a pattern into guest RAM and read it back,
                            // through one snapshot of the memory map. Each vCPU writes only
                            // its own stripe (the 8-byte words `w` with `w % vcpus == v`),
                            // so a wrong read-back can only mean a wrong translation.
                            let mem = memory.memory();
                            let (base, len) = match rng.below(4) {
                                0 => (DIMM.0, DIMM.1 as u64),
                                1 => (0, 0xa_0000),
                                2 => (0x10_0000, 64 << 20),
                                _ => (1 << 32, 64 << 20),
                            };
                            let stripe = vcpus as u64;
                            let word = rng.below(len / 8 / stripe) * stripe + v as u64;
                            let value = rng.below(u64::MAX) | 1;
                            let addr = GuestAddress(base + word * 8);
                            match mem.write_obj(value, addr) {
                                Ok(()) => {
                                    if mem.read_obj::<u64>(addr).ok() == Some(value) {
                                        dma_ok.fetch_add(1, Ordering::Relaxed);
                                    } else {
                                        dma_errors.fetch_add(1, Ordering::Relaxed);
                                    }
                                }
                                // Only the DIMM may be absent.
                                Err(_) if addr.0 >= DIMM.0 && mem.find_region(addr).is_none() => {}
                                Err(_) => drop(dma_errors.fetch_add(1, Ordering::Relaxed)),
                            }
                        }
                    }
                }
            });
        }
        // The control plane.
        let mut at = 0;
        let mut plugged = false;
        while start.elapsed() < Duration::from_secs_f64(seconds) {
            std::thread::sleep(Duration::from_micros(200));
            mmio.update_range(GPU_BAR[at], GPU_BAR[1 - at], 0x1000)
                .expect("moving the gpu BAR");
            at = 1 - at;
            bar_moves.fetch_add(1, Ordering::Relaxed);
            if bar_moves.load(Ordering::Relaxed) % 5 == 0 {
                let mut u = memory.update();
                if plugged {
                    u.remove(GuestAddress(DIMM.0)).expect("unplug");
                } else {
                    u.insert(ram(DIMM.0, DIMM.1)).expect("hotplug");
                }
                u.commit().expect("memory update");
                plugged = !plugged;
                hotplugs.fetch_add(1, Ordering::Relaxed);
            }
        }
        stop.store(true, Ordering::Relaxed);
    });

    println!(
        "{vcpus} vCPUs for {:.1} s; {} BAR moves by the control plane, {} by the guest, {} DIMM plugs/unplugs",
        start.elapsed().as_secs_f64(),
        bar_moves.load(Ordering::Relaxed),
        config.moves.load(Ordering::Relaxed),
        hotplugs.load(Ordering::Relaxed)
    );
    println!("{:<40} {:>12} {:>10}", "device", "accesses", "misrouted");
    let mut misrouted = 0;
    for d in &devices {
        let (n, bad) = (
            d.accesses.load(Ordering::Relaxed),
            d.misrouted.load(Ordering::Relaxed),
        );
        misrouted += bad;
        println!("{:<40} {n:>12} {bad:>10}", d.name);
    }
    let (ok, bad) = (
        dma_ok.load(Ordering::Relaxed),
        dma_errors.load(Ordering::Relaxed),
    );
    println!("DMA round trips: {ok} right, {bad} wrong");
    if misrouted > 0 || bad > 0 || ok == 0 {
        eprintln!("FAILED: {misrouted} misrouted accesses, {bad} DMA errors");
        std::process::exit(1);
    }
    println!("no misrouted access");
}
