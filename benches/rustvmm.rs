//! physmap's rust-vmm adapters against the real crates, in the same run.
//!
//! 1. **`find_region`** (criterion group `find-region/64-regions`): a 64-region guest memory
//!    layout, addresses uniform over the regions (device DMA), through
//!    - vm-memory 0.18 `GuestMemoryAtomic<GuestMemoryMmap>`: `memory().find_region(a)`;
//!    - physmap's `PhysAddressSpace`: `memory().find_region(a)` (the same `GuestMemoryAtomic`
//!      around a physmap snapshot);
//!    - and with the snapshot already held: `GuestMemoryMmap::find_region` against
//!      `PhysGuestMemory::find_region`.
//! 2. **Bus dispatch**: 4-byte MMIO reads spread over the MMIO devices of the q35 map with 24
//!    virtio-net devices (every MMIO range a device), by 1, 4 and 8 vCPU threads, without and
//!    with a control plane moving a BAR every 100 µs (one access in 16 goes to that BAR's
//!    first place). Buses:
//!    - physmap's `MmioBus` (a `BusVcpu` per thread; moves are `update_range`, which waits
//!      for in-flight dispatches);
//!    - vm-device 0.1's `IoManager` behind a `RwLock` (it needs `&mut` to register, so a VMM
//!      that changes it while vCPUs run shares it this way; dispatch runs under the read
//!      lock, as `MmioManager::mmio_read` requires);
//!    - Cloud Hypervisor's shape: `RwLock<BTreeMap<BusRange, Weak<dyn device>>>`, resolve
//!      under the read lock, upgrade the `Weak`, call the device after unlocking.
//!
//!    Five interleaved rounds of 0.3 s per configuration; median dispatches per second, and
//!    the ratio to the `RwLock<BTreeMap>` bus. Written to `target/physmap-bench/rustvmm.json`
//!    and printed as Markdown.

#[path = "common/baselines.rs"]
mod baselines;
#[path = "common/workloads.rs"]
mod workloads;

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use physmap::bus::MmioBus;
use physmap::vm_memory::{PhysAddressSpace, PhysGuestMemory};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock, Weak};
use std::time::{Duration, Instant};
use vm_device::bus::{MmioAddress, MmioAddressOffset, MmioRange};
use vm_device::device_manager::{IoManager, MmioManager};
use vm_device::DeviceMmio;
use vm_memory::{
    GuestAddress, GuestAddressSpace, GuestMemoryAtomic, GuestMemoryBackend, GuestMemoryMmap,
    GuestMemoryRegion, GuestRegionMmap,
};
use workloads::*;

type Region = GuestRegionMmap<()>;

/// 64 regions of 2 MiB to 512 MiB with gaps between them, from 0 up.
fn layout() -> Vec<(u64, usize)> {
    let mut rng = Rng::new(64);
    let mut at = 0u64;
    (0..64)
        .map(|_| {
            let len = (2usize << 20) << rng.below(9);
            let r = (at, len);
            at += len as u64 + (2 << 20) * (1 + rng.below(8));
            r
        })
        .collect()
}

fn dma_addresses(regions: &[(u64, usize)]) -> Vec<u64> {
    let mut rng = Rng::new(7);
    (0..65_536)
        .map(|_| {
            let (s, l) = regions[rng.below(regions.len() as u64) as usize];
            s + rng.below(l as u64)
        })
        .collect()
}

fn find_region(c: &mut Criterion) {
    let layout = layout();
    let addrs = dma_addresses(&layout);
    let regions: Vec<Arc<Region>> = layout
        .iter()
        .map(|&(s, l)| Arc::new(Region::from_range(GuestAddress(s), l, None).unwrap()))
        .collect();
    let mmap = GuestMemoryMmap::from_arc_regions(regions.clone()).unwrap();
    let atomic = GuestMemoryAtomic::new(mmap.clone());
    let space = PhysAddressSpace::new(regions.iter().cloned()).unwrap();
    let ours: PhysGuestMemory<Region> = space.current();
    for &a in &addrs {
        let want = mmap.find_region(GuestAddress(a)).map(|r| r.start_addr());
        assert_eq!(
            ours.find_region(GuestAddress(a)).map(|r| r.start_addr()),
            want
        );
    }
    let mut g = c.benchmark_group("find-region/64-regions");
    g.throughput(Throughput::Elements(addrs.len() as u64));
    let mut run = |id: &str, f: &mut dyn FnMut(u64) -> u64| {
        g.bench_function(BenchmarkId::from_parameter(id), |b| {
            b.iter(|| {
                let mut sum = 0u64;
                for &a in &addrs {
                    sum = sum.wrapping_add(f(black_box(a)));
                }
                black_box(sum)
            })
        });
    };
    run("vm-memory-atomic-memory+find_region", &mut |a| {
        atomic
            .memory()
            .find_region(GuestAddress(a))
            .map_or(0, |r| r.start_addr().0)
    });
    run("physmap-atomic-memory+find_region", &mut |a| {
        space
            .memory()
            .find_region(GuestAddress(a))
            .map_or(0, |r| r.start_addr().0)
    });
    run("vm-memory-mmap-find_region", &mut |a| {
        mmap.find_region(GuestAddress(a))
            .map_or(0, |r| r.start_addr().0)
    });
    run("physmap-snapshot-find_region", &mut |a| {
        ours.find_region(GuestAddress(a))
            .map_or(0, |r| r.start_addr().0)
    });
    g.finish();
}

/// A device that answers from its base and the offset: no shared writes, so the buses'
/// own costs are what differ.
struct Dev(u64);
impl DeviceMmio for Dev {
    fn mmio_read(&self, base: MmioAddress, offset: MmioAddressOffset, data: &mut [u8]) {
        let v = (self.0 ^ base.0 ^ offset).to_le_bytes();
        let n = data.len().min(8);
        data[..n].copy_from_slice(&v[..n]);
    }
    fn mmio_write(&self, _: MmioAddress, _: MmioAddressOffset, _: &[u8]) {}
}

type DynDev = dyn DeviceMmio + Send + Sync;

/// Cloud Hypervisor's bus shape (`devices/src/bus.rs`): ranges in a `BTreeMap` behind a
/// `RwLock`, devices held weakly.
struct ChBus {
    devices: RwLock<BTreeMap<(u64, u64), Weak<DynDev>>>,
}
impl ChBus {
    fn resolve(&self, addr: u64) -> Option<(u64, u64, Arc<DynDev>)> {
        let devices = self.devices.read().unwrap();
        let (&(base, len), dev) = devices.range(..=(addr, u64::MAX)).next_back()?;
        if addr - base >= len {
            return None;
        }
        Some((base, addr - base, dev.upgrade()?))
    }
    fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.resolve(addr) {
            Some((base, offset, dev)) => {
                dev.mmio_read(MmioAddress(base), offset, data);
                true
            }
            None => false,
        }
    }
    fn move_bar(&self, from: u64, to: u64, len: u64) {
        let mut devices = self.devices.write().unwrap();
        let dev = devices.remove(&(from, len)).unwrap();
        devices.insert((to, len), dev);
    }
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Which {
    Physmap,
    VmDevice,
    CloudHypervisor,
}

/// The BAR the control plane moves, between two free places above the map.
const BAR: (u64, u64, u64) = (0x80_0000_0000, 0x80_1000_0000, 0x4000);

struct Buses {
    physmap: MmioBus,
    vm_device: RwLock<IoManager>,
    ch: ChBus,
    _devices: Vec<Arc<DynDev>>,
}

fn buses(devices: &[(u64, u64)]) -> Buses {
    let physmap = MmioBus::new();
    let mut vm_device = IoManager::new();
    let mut ch = BTreeMap::new();
    let mut keep = Vec::new();
    for (i, &(base, len)) in devices.iter().chain([(BAR.0, BAR.2)].iter()).enumerate() {
        let dev: Arc<DynDev> = Arc::new(Dev(i as u64));
        physmap.insert(base, len, dev.clone()).unwrap();
        vm_device
            .register_mmio(MmioRange::new(MmioAddress(base), len).unwrap(), dev.clone())
            .unwrap();
        ch.insert((base, len), Arc::downgrade(&dev));
        keep.push(dev);
    }
    Buses {
        physmap,
        vm_device: RwLock::new(vm_device),
        ch: ChBus {
            devices: RwLock::new(ch),
        },
        _devices: keep,
    }
}

/// `threads` vCPUs dispatching `accesses` for `time`, a control plane moving the BAR every
/// 100 µs if `moving`; returns dispatches per second.
fn run(b: &Buses, which: Which, accesses: &[(u64, usize)], threads: usize, moving: bool) -> f64 {
    let stop = AtomicBool::new(false);
    let total = AtomicU64::new(0);
    let time = Duration::from_millis(300);
    let t0 = Instant::now();
    std::thread::scope(|s| {
        let (stop, total) = (&stop, &total);
        if moving {
            s.spawn(move || {
                let mut at = BAR.0;
                // Until stopped, and then back to the first place for the next run.
                while !stop.load(Ordering::Relaxed) || at != BAR.0 {
                    if !stop.load(Ordering::Relaxed) {
                        std::thread::sleep(Duration::from_micros(100));
                    }
                    let to = if at == BAR.0 { BAR.1 } else { BAR.0 };
                    match which {
                        Which::Physmap => b.physmap.update_range(at, to, BAR.2).unwrap(),
                        Which::VmDevice => {
                            let mut io = b.vm_device.write().unwrap();
                            let (_, dev) = io.deregister_mmio(MmioAddress(at)).unwrap();
                            let range = MmioRange::new(MmioAddress(to), BAR.2).unwrap();
                            io.register_mmio(range, dev).unwrap();
                        }
                        Which::CloudHypervisor => b.ch.move_bar(at, to, BAR.2),
                    }
                    at = to;
                }
            });
        }
        for t in 0..threads {
            s.spawn(move || {
                let mut vcpu = b.physmap.vcpu();
                let mut data = [0u8; 4];
                let (mut n, mut sum) = (0u64, 0u64);
                let start = t * accesses.len() / threads;
                while t0.elapsed() < time {
                    let block = accesses[start..]
                        .iter()
                        .chain(&accesses[..start])
                        .take(4096);
                    for (i, &(addr, len)) in block.enumerate() {
                        // One access in 16 to the moving BAR (at its first place, where it
                        // is half of the time).
                        let (addr, len) = if i % 16 == 0 {
                            (BAR.0 + 0x10, 4)
                        } else {
                            (addr, len)
                        };
                        let ok = match which {
                            Which::Physmap => vcpu.mmio_read(addr, &mut data[..len]).is_ok(),
                            Which::VmDevice => b
                                .vm_device
                                .read()
                                .unwrap()
                                .mmio_read(MmioAddress(addr), &mut data[..len])
                                .is_ok(),
                            Which::CloudHypervisor => b.ch.read(addr, &mut data[..len]),
                        };
                        sum = sum.wrapping_add(ok as u64 + data[0] as u64);
                    }
                    n += 4096;
                }
                black_box(sum);
                // Relaxed: read after the scope joins.
                total.fetch_add(n, Ordering::Relaxed);
            });
        }
        while t0.elapsed() < time {
            std::thread::sleep(Duration::from_millis(5));
        }
        // Let the readers finish their last block, then stop the mover.
        std::thread::sleep(Duration::from_millis(5));
        stop.store(true, Ordering::Relaxed);
    });
    total.load(Ordering::Relaxed) as f64 / t0.elapsed().as_secs_f64()
}

fn bus(_c: &mut Criterion) {
    let m = Map::from_dump("q35-24-virtio-net.txt");
    let devices: Vec<(u64, u64)> = m
        .regions
        .iter()
        .zip(&m.kinds)
        .filter(|(_, k)| **k == Kind::Mmio)
        .map(|(r, _)| (r.start, r.end - r.start + 1))
        .collect();
    let accesses: Vec<(u64, usize)> = m
        .workload(Mix::Mmio)
        .addrs
        .iter()
        .map(|&a| {
            let r = m
                .regions
                .iter()
                .find(|r| r.start <= a && a <= r.end)
                .unwrap();
            let a = (a & !3).max(r.start);
            (a, (r.end - a + 1).min(4) as usize)
        })
        .collect();
    let b = buses(&devices);
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    println!(
        "\nBus dispatch: M dispatches/s (median of 5 interleaved rounds), {} devices, {cores} cores\n",
        devices.len() + 1
    );
    println!("| vCPU threads | BAR moving | physmap MmioBus | vm-device IoManager in RwLock | RwLock<BTreeMap> (Cloud Hypervisor) | physmap / RwLock<BTreeMap> | physmap / vm-device |");
    println!("|---|---|---|---|---|---|---|");
    let mut json = String::from("{\"bus\":[");
    let mut first = true;
    for threads in [1usize, 4, 8] {
        for moving in [false, true] {
            let mut r: [Vec<f64>; 3] = Default::default();
            let mut ratio_ch = Vec::new();
            let mut ratio_vd = Vec::new();
            for _ in 0..5 {
                let p = run(&b, Which::Physmap, &accesses, threads, moving);
                let v = run(&b, Which::VmDevice, &accesses, threads, moving);
                let c = run(&b, Which::CloudHypervisor, &accesses, threads, moving);
                r[0].push(p);
                r[1].push(v);
                r[2].push(c);
                ratio_ch.push(p / c);
                ratio_vd.push(p / v);
            }
            let med = |v: &mut Vec<f64>| {
                v.sort_by(|a, b| a.partial_cmp(b).unwrap());
                v[v.len() / 2]
            };
            let (p, v, c) = (med(&mut r[0]), med(&mut r[1]), med(&mut r[2]));
            let (rc, rv) = (med(&mut ratio_ch), med(&mut ratio_vd));
            println!(
                "| {threads} | {} | {:.1} | {:.1} | {:.1} | **{rc:.2}x** | {rv:.2}x |",
                if moving { "yes" } else { "no" },
                p / 1e6,
                v / 1e6,
                c / 1e6
            );
            if !first {
                json.push(',');
            }
            first = false;
            let _ = write!(
                json,
                "{{\"threads\":{threads},\"moving\":{moving},\"physmap\":{p:.0},\"vm_device\":{v:.0},\"rwlock_btreemap\":{c:.0},\"ratio_rwlock\":{rc:.3},\"ratio_vm_device\":{rv:.3}}}"
            );
        }
    }
    json.push_str("]}");
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/physmap-bench");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("rustvmm.json"), json).unwrap();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).warm_up_time(Duration::from_millis(300)).measurement_time(Duration::from_millis(1500));
    targets = find_region, bus
}
criterion_main!(benches);
