//! A dispatch at a real VM exit: cold caches.
//!
//! Between two exits the guest ran and evicted what the VMM touched, so what an exit costs is
//! the number of distinct cache lines the dispatch fetches from far away, not its warm-loop
//! time. Each structure here answers 4-byte MMIO reads spread uniformly over the MMIO ranges
//! of a real QEMU map (every MMIO range a device), and before every dispatch a walk over a
//! buffer larger than the caches evicts everything:
//!
//! - `physmap-bus`: physmap's [`MmioBus`], one [`BusVcpu`](physmap::bus::BusVcpu) dispatching
//!   (lookup, access check, device call; the vCPU goes online and offline around it);
//! - `rwlock-bus`: Cloud Hypervisor's bus shape, `RwLock<BTreeMap<(base, len), Weak<device>>>`
//!   (read lock, range search, `Weak::upgrade`, device call; as `benches/rustvmm.rs`);
//! - `physmap-reader`: physmap's `Reader::lookup` alone (a map of the whole FlatView, RAM
//!   included), the lookup a device bus is built on;
//! - `qemu-walk`: QEMU's `AddressSpaceDispatch` walk alone (`benches/common/baselines.rs`),
//!   reached through a pointer as QEMU reaches it under RCU.
//!
//! Two ways to measure, both in this binary:
//! - **criterion** (`cargo bench --bench cold`; `PHYSMAP_COLD_MIX=few` for accesses that go
//!   round three devices, groups `cold-few/<map>`): ns per dispatch, timed alone after each
//!   eviction (a walk over `PHYSMAP_COLD_EVICT` bytes, 8 MiB by default: more than L1 and L2
//!   here; this machine's 480 MiB L3 cannot be walked at every exit, so the lines come from
//!   L3, as after a short guest run). `empty` is the timer alone.
//! - **cache lines** (`scripts/cold-lines.sh`): with `PHYSMAP_COLD_LINES=<map>/<structure>`
//!   the binary runs 1,000 cold dispatches and exits; run under callgrind's cache simulation
//!   (D1 32 KiB, LL 1 MiB, a 2 MiB eviction walk), counting inside [`dispatch_aligned`] only,
//!   against `<map>/none` (the same walks, no dispatch), the
//!   difference divided by 1,000 is the data cache lines one cold dispatch fetches, and the
//!   I1 misses (32 KiB, after 64 KiB of no-ops run between dispatches evicted it: the code
//!   is cold too) the code lines: deterministic, the same on every run.

#[path = "common/baselines.rs"]
mod baselines;
#[path = "common/workloads.rs"]
mod workloads;

use baselines::QemuDispatch;
use criterion::{black_box, criterion_group, BenchmarkId, Criterion};
use physmap::bus::{BusVcpu, MmioBus};
use physmap::{PhysMap, Reader};
use std::collections::BTreeMap;
use std::sync::{Arc, RwLock, Weak};
use std::time::{Duration, Instant};
use vm_device::bus::{MmioAddress, MmioAddressOffset};
use vm_device::DeviceMmio;
use workloads::*;

/// A device answering from its id, its base and the offset: its own line is read, nothing
/// shared is written, so the buses' own costs are what differ.
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

/// Cloud Hypervisor's bus shape (`vm-device/src/bus.rs`): ranges in a `BTreeMap` behind a
/// `RwLock`, devices held weakly; the device is called after the lock is released.
#[repr(align(64))] // its lock word and map root on one line, as luck may not have it
struct RwLockBus {
    devices: RwLock<BTreeMap<(u64, u64), Weak<DynDev>>>,
}

impl RwLockBus {
    /// A call, as a VMM calls its bus crate's `read` (Cloud Hypervisor's `vm_device::Bus::read`).
    #[inline(never)]
    fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        self.read_inlined(addr, data)
    }

    /// The same, compiled into its caller as physmap's `BusVcpu::mmio_read` is (for the
    /// comparison with the call structure set aside: `rwlock-bus-inlined`).
    #[inline(always)]
    fn read_inlined(&self, addr: u64, data: &mut [u8]) -> bool {
        let resolved = {
            let devices = self.devices.read().unwrap();
            let found = devices.range(..=(addr, u64::MAX)).next_back();
            // The same access check as physmap's bus (the access fits in the device).
            found.and_then(|(&(base, len), dev)| {
                let fits = addr - base < len && data.len() as u64 <= len - (addr - base);
                fits.then(|| (base, addr - base, dev.upgrade()))
            })
        };
        match resolved {
            Some((base, offset, Some(dev))) => {
                dev.mmio_read(MmioAddress(base), offset, data);
                true
            }
            _ => false,
        }
    }
}

/// Everything measured, built for one map. The first line holds what every dispatch reads
/// of the harness, as a VMM's vCPU state holds its bus handles beside what its exit handler
/// reads anyway: the addresses, and each bus's handle (the `RwLock` bus behind an `Arc`, as
/// Cloud Hypervisor's vCPUs hold theirs; physmap's `BusVcpu`, of which a dispatch reads the
/// first three words). A `Reader`'s lookup reads its whole handle (a copy of the header,
/// the remembered piece): two lines of its own. QEMU's dispatch is one pointer further
/// (`as->current_map->dispatch`).
#[repr(C, align(64))]
struct Setup {
    addrs: Box<[u64]>,
    rwlock: Arc<RwLockBus>,
    vcpu: BusVcpu<DynDev>,
    reader: Reader<u64>,
    name: String,
    _physmap: MmioBus,
    _devices: Vec<Arc<DynDev>>,
    /// The whole FlatView (RAM included), for the lookups alone.
    map: PhysMap<u64>,
    /// QEMU's dispatch, behind a pointer as `as->dispatch` is.
    qemu: Arc<QemuDispatch>,
}

fn setup(m: &Map) -> Setup {
    let physmap = MmioBus::new();
    let mut ch = BTreeMap::new();
    let mut devices = Vec::new();
    for (i, (r, k)) in m.regions.iter().zip(&m.kinds).enumerate() {
        if *k != Kind::Mmio {
            continue;
        }
        let dev: Arc<DynDev> = Arc::new(Dev(i as u64));
        physmap
            .insert(r.start, r.end - r.start + 1, dev.clone())
            .unwrap();
        ch.insert((r.start, r.end - r.start + 1), Arc::downgrade(&dev));
        devices.push(dev);
    }
    let map = PhysMap::new();
    let mut t = map.transaction();
    for r in &m.regions {
        t.insert(r.start..=r.end, r.value).unwrap();
    }
    t.commit().unwrap();
    let vcpu = physmap.vcpu();
    let reader = map.reader();
    // 4-byte accesses, aligned as guests make them, inside their device (every dispatch
    // calls a device).
    let fits = |a: u64| {
        m.regions
            .iter()
            .any(|r| r.start <= a && a.saturating_add(3) <= r.end)
    };
    let addrs = m.addresses(Mix::Mmio, 4096).into_iter().map(|a| a & !3);
    let addrs: Box<[u64]> = addrs.filter(|&a| fits(a)).collect();
    Setup {
        name: m.name.clone(),
        addrs,
        _physmap: physmap,
        vcpu,
        rwlock: Arc::new(RwLockBus {
            devices: RwLock::new(ch),
        }),
        _devices: devices,
        map,
        reader,
        qemu: Arc::new(QemuDispatch::build(&m.regions)),
    }
}

/// What one cold dispatch does, by structure.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Structure {
    PhysmapBus,
    RwLockBus,
    RwLockBusInlined,
    PhysmapReader,
    QemuWalk,
    /// The eviction walk and the timer alone.
    None,
}

impl Structure {
    const ALL: [Structure; 6] = [
        Structure::PhysmapBus,
        Structure::RwLockBus,
        Structure::RwLockBusInlined,
        Structure::PhysmapReader,
        Structure::QemuWalk,
        Structure::None,
    ];
    fn name(self) -> &'static str {
        match self {
            Structure::PhysmapBus => "physmap-bus",
            Structure::RwLockBus => "rwlock-bus",
            Structure::RwLockBusInlined => "rwlock-bus-inlined",
            Structure::PhysmapReader => "physmap-reader",
            Structure::QemuWalk => "qemu-walk",
            Structure::None => "none",
        }
    }
}

impl Setup {
    /// One dispatch (or lookup) of `addr` by `s`; a checksum of what it answered.
    #[inline(always)]
    fn dispatch(&mut self, s: Structure, addr: u64) -> u64 {
        let mut data = [0u8; 4];
        match s {
            Structure::PhysmapBus => {
                let ok = self.vcpu.mmio_read(addr, &mut data).is_ok();
                u32::from_le_bytes(data) as u64 ^ ok as u64
            }
            Structure::RwLockBus => {
                let ok = self.rwlock.read(addr, &mut data);
                u32::from_le_bytes(data) as u64 ^ ok as u64
            }
            Structure::RwLockBusInlined => {
                let ok = self.rwlock.read_inlined(addr, &mut data);
                u32::from_le_bytes(data) as u64 ^ ok as u64
            }
            Structure::PhysmapReader => self.reader.lookup(addr).map_or(0, |h| *h.value ^ h.offset),
            Structure::QemuWalk => {
                let d: &QemuDispatch = black_box(&self.qemu);
                d.lookup(addr).map_or(0, |(v, off)| v ^ off)
            }
            Structure::None => black_box(addr),
        }
    }

    /// Every structure answers every address as the map does.
    fn check(&mut self) {
        for i in 0..self.addrs.len() {
            let a = self.addrs[i];
            let want = self.map.snapshot().lookup(a).map(|h| (*h.value, h.offset));
            let got = self.qemu.lookup(a);
            assert_eq!(got, want, "{}: qemu walk at {a:#x}", self.name);
            let mut x = [0u8; 4];
            let mut y = [0u8; 4];
            assert!(
                self.vcpu.mmio_read(a, &mut x).is_ok(),
                "{}: {a:#x}",
                self.name
            );
            assert!(self.rwlock.read(a, &mut y), "{}: {a:#x}", self.name);
            assert_eq!(x, y, "{}: the buses disagree at {a:#x}", self.name);
        }
    }
}

/// A buffer larger than the caches it must empty; walking it reads one word per line.
struct Evict(Vec<u64>);

impl Evict {
    fn new(default: usize) -> Self {
        let bytes = std::env::var("PHYSMAP_COLD_EVICT")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default);
        Evict(vec![1; bytes / 8])
    }
    /// Reads one word per line of the buffer, then evicts the code ([`evict_code`]).
    #[inline(never)]
    fn walk(&self) -> u64 {
        let mut sum = 0u64;
        for i in (0..self.0.len()).step_by(8) {
            sum = sum.wrapping_add(self.0[i]);
        }
        evict_code();
        sum
    }
}

/// Runs 64 KiB of straight-line no-ops, twice the instruction cache: at an exit the guest and
/// the kernel's exit path ran in between, so the dispatch's code is fetched from further
/// away too, as its data is. (x86-64; elsewhere nothing.)
#[inline(never)]
fn evict_code() {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: no-ops only: no memory, stack, register or flag is touched.
    unsafe {
        std::arch::asm!(
            ".rept 65536",
            "nop",
            ".endr",
            options(nomem, nostack, preserves_flags)
        );
    }
}

/// Cache-line mode: 1,000 cold dispatches of `<map>/<structure>[/few]`, for cachegrind.
/// With `/few`, the accesses go round three devices (the spread mix's first three), as a
/// driver's exits do (doorbell, status, the serial port); without, they spread over all.
fn lines_mode(which: &str) {
    let (which, few) = match which.strip_suffix("/few") {
        Some(w) => (w, true),
        None => (which, false),
    };
    let (map, structure) = which
        .split_once('/')
        .expect("PHYSMAP_COLD_LINES=<map>/<structure>[/few]");
    let m = real_maps()
        .into_iter()
        .find(|m| m.name == map)
        .unwrap_or_else(|| panic!("no map {map:?}"));
    let s = *Structure::ALL
        .iter()
        .find(|s| s.name() == structure)
        .unwrap_or_else(|| panic!("no structure {structure:?}"));
    let mut setup = setup(&m);
    if few {
        setup.addrs = few_devices(&m, &setup.addrs, 3).into();
    }
    let evict = Evict::new(2 << 20);
    let mut sum = 0u64;
    for i in 0..1000 {
        sum = sum.wrapping_add(evict.walk());
        let a = black_box(setup.addrs[i % setup.addrs.len()]);
        sum = sum.wrapping_add(dispatch_aligned(&mut setup, s, a));
    }
    black_box(sum);
}

/// One dispatch from a frame that starts a cache line: which stack lines the calls below
/// touch then depends on the code measured, not on where the harness's frame happened to
/// fall (that moved every structure's count by a line with unrelated changes to the crate).
/// The line written here is the harness's: the `none` run writes it too.
#[inline(never)]
fn dispatch_aligned(setup: &mut Setup, s: Structure, addr: u64) -> u64 {
    #[repr(align(64))]
    struct Line([u64; 8]);
    let mut line = Line([0; 8]);
    black_box(&mut line);
    setup.dispatch(s, addr) ^ line.0[0]
}

/// The addresses of `addrs` that fall in the first `n` distinct regions they reach, in order.
fn few_devices(m: &Map, addrs: &[u64], n: usize) -> Vec<u64> {
    let region = |a: u64| m.regions.iter().position(|r| r.start <= a && a <= r.end);
    let mut chosen = Vec::new();
    for &a in addrs {
        let r = region(a);
        if !chosen.contains(&r) && chosen.len() < n {
            chosen.push(r);
        }
    }
    addrs
        .iter()
        .copied()
        .filter(|&a| chosen.contains(&region(a)))
        .collect()
}

fn cold(c: &mut Criterion) {
    let evict = Evict::new(8 << 20);
    // `PHYSMAP_COLD_MIX=few`: the accesses go round three devices, as in the lines mode's
    // `/few` (the groups are then `cold-few/<map>`); the default spreads them over all.
    let few = std::env::var("PHYSMAP_COLD_MIX").is_ok_and(|m| m == "few");
    for m in real_maps() {
        let mut setup = setup(&m);
        setup.check();
        if few {
            setup.addrs = few_devices(&m, &setup.addrs, 3).into();
        }
        let prefix = if few { "cold-few" } else { "cold" };
        let mut g = c.benchmark_group(format!("{prefix}/{}", m.name));
        g.sample_size(30).measurement_time(Duration::from_secs(3));
        for s in Structure::ALL {
            g.bench_function(BenchmarkId::from_parameter(s.name()), |b| {
                b.iter_custom(|iters| {
                    let mut total = Duration::ZERO;
                    let mut sum = 0u64;
                    for i in 0..iters as usize {
                        sum = sum.wrapping_add(evict.walk());
                        let a = black_box(setup.addrs[i % setup.addrs.len()]);
                        let t = Instant::now();
                        sum = sum.wrapping_add(setup.dispatch(s, a));
                        total += t.elapsed();
                    }
                    black_box(sum);
                    total
                })
            });
        }
        g.finish();
    }
}

criterion_group!(benches, cold);

fn main() {
    if let Ok(which) = std::env::var("PHYSMAP_COLD_LINES") {
        lines_mode(&which);
        return;
    }
    benches();
    criterion::Criterion::default()
        .configure_from_args()
        .final_summary();
}
