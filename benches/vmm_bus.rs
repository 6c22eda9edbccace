//! Exits per second through Cloud Hypervisor's and Firecracker's bus APIs: physmap's
//! (`physmap::ch_bus`, `physmap::fc_bus`) against faithful `RwLock<BTreeMap>` copies of each
//! project's own bus (`vm-device/src/bus.rs`: ranges to `Weak<dyn BusDeviceSync>` behind one
//! `RwLock`, the device called after unlocking; `vstate/bus.rs`: a device slab and a range
//! map behind two `RwLock`s, the slab's read lock and the device's `Mutex` held for the
//! call), and physmap's own bus with a `BusVcpu` per thread (what reaching the dispatcher
//! through a thread-local costs). 1, 2 and 8 vCPU threads read 4 bytes from devices chosen
//! uniformly among 24, while a control thread moves a BAR every 100 µs (`update_range` /
//! `move_range`).
//!
//! `cargo bench --bench vmm_bus` (custom harness; `PHYSMAP_VMM_BUS_SECONDS`, default 1, per
//! cell; `PHYSMAP_VMM_BUS_ROUNDS`, default 2, interleaved). Prints a Markdown table (median
//! over rounds, M exits/s) and writes `target/physmap-bench/vmm-bus.json`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, Mutex, RwLock, Weak};
use std::time::{Duration, Instant};

const DEVICES: u64 = 24;
const LEN: u64 = 0x1000;
const BASE: u64 = 0xfe00_0000;
const BAR: [u64; 2] = [0xd000_0000, 0xd010_0000];

type ChDevice = dyn physmap::ch_bus::BusDeviceSync;

/// Cloud Hypervisor's bus, as in `vm-device/src/bus.rs` (ranges ordered by base).
#[derive(Default)]
struct ChRwLock {
    devices: RwLock<BTreeMap<u64, (u64, Weak<ChDevice>)>>,
}

impl ChRwLock {
    fn insert(&self, d: &Arc<dyn physmap::ch_bus::BusDeviceSync>, base: u64, len: u64) {
        let mut m = self.devices.write().unwrap();
        m.insert(base, (len, Arc::downgrade(d)));
    }
    fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        let found = {
            let m = self.devices.read().unwrap();
            m.range(..=addr)
                .next_back()
                .and_then(|(&b, (l, d))| Some((b, *l, d.upgrade()?)))
        };
        match found {
            Some((base, len, d)) if addr - base < len => {
                d.read(base, addr - base, data);
                true
            }
            _ => false,
        }
    }
    fn update_range(&self, old: u64, new: u64) {
        let d = {
            let m = self.devices.read().unwrap();
            m.get(&old).unwrap().1.clone()
        };
        self.devices.write().unwrap().remove(&old);
        // Cloud Hypervisor checks overlaps under the read lock, then inserts.
        let free = {
            let m = self.devices.read().unwrap();
            m.iter().all(|(&b, (l, _))| b + l <= new || new + LEN <= b)
        };
        assert!(free);
        self.devices.write().unwrap().insert(new, (LEN, d));
    }
}

type FcDev = Mutex<dyn physmap::fc_bus::BusDevice>;

/// Firecracker's bus, as in `vstate/bus.rs` (a `Vec` standing in for the slab).
#[derive(Default)]
struct FcRwLock {
    devices: RwLock<Vec<Weak<FcDev>>>,
    ranges: RwLock<BTreeMap<u64, (u64, usize)>>,
}

impl FcRwLock {
    fn insert(&self, d: &Arc<FcDev>, base: u64, len: u64) {
        let mut devices = self.devices.write().unwrap();
        let mut ranges = self.ranges.write().unwrap();
        devices.push(Arc::downgrade(d));
        ranges.insert(base, (base + len - 1, devices.len() - 1));
    }
    fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        let devices = self.devices.read().unwrap();
        let hit = {
            let ranges = self.ranges.read().unwrap();
            ranges
                .range(..=addr)
                .next_back()
                .filter(|(_, (end, _))| addr <= *end)
                .map(|(&b, &(_, slot))| (b, slot))
        };
        let Some((base, slot)) = hit else {
            return false;
        };
        let Some(d) = devices[slot].upgrade() else {
            return false;
        };
        d.lock().unwrap().read(base, addr - base, data);
        true
    }
    fn move_range(&self, old: u64, new: u64) {
        let mut ranges = self.ranges.write().unwrap();
        let (_, slot) = ranges.remove(&old).unwrap();
        ranges.insert(new, (new + LEN - 1, slot));
    }
}

struct ChDev(u64);
impl physmap::ch_bus::BusDeviceSync for ChDev {
    fn read(&self, base: u64, offset: u64, data: &mut [u8]) {
        let v = (self.0 ^ base ^ offset).to_le_bytes();
        data.copy_from_slice(&v[..data.len()]);
    }
}

struct FcDevice(u64);
impl physmap::fc_bus::BusDevice for FcDevice {
    fn read(&mut self, base: u64, offset: u64, data: &mut [u8]) {
        let v = (self.0 ^ base ^ offset).to_le_bytes();
        data.copy_from_slice(&v[..data.len()]);
    }
    fn write(&mut self, _: u64, _: u64, _: &[u8]) -> Option<Arc<Barrier>> {
        None
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Which {
    ChPhysmap,
    ChRwLock,
    FcPhysmap,
    FcRwLock,
    /// physmap's own bus with a `BusVcpu` per thread: what `&Bus` costs over a handle.
    ChVcpu,
}

impl Which {
    const ALL: [Which; 5] = [
        Which::ChPhysmap,
        Which::ChRwLock,
        Which::FcPhysmap,
        Which::FcRwLock,
        Which::ChVcpu,
    ];
    fn name(self) -> &'static str {
        match self {
            Which::ChPhysmap => "ch: physmap",
            Which::ChRwLock => "ch: RwLock",
            Which::FcPhysmap => "fc: physmap",
            Which::FcRwLock => "fc: RwLock",
            Which::ChVcpu => "ch devices: BusVcpu",
        }
    }
}

struct Buses {
    ch: physmap::ch_bus::Bus,
    ch_rw: ChRwLock,
    fc: physmap::fc_bus::Bus,
    fc_rw: FcRwLock,
    core: physmap::bus::Bus<ChDevice>,
    _ch_devs: Vec<Arc<dyn physmap::ch_bus::BusDeviceSync>>,
    _fc_devs: Vec<Arc<FcDev>>,
    /// Where each bus's moving BAR is now (`BAR[i]`), kept across runs.
    bar_at: [AtomicUsize; 5],
}

fn buses() -> Buses {
    let mut b = Buses {
        ch: Default::default(),
        ch_rw: Default::default(),
        fc: Default::default(),
        fc_rw: Default::default(),
        core: Default::default(),
        _ch_devs: Vec::new(),
        _fc_devs: Vec::new(),
        bar_at: Default::default(),
    };
    let places = (0..DEVICES).map(|i| BASE + i * LEN).chain([BAR[0]]);
    for (i, base) in places.enumerate() {
        let c: Arc<dyn physmap::ch_bus::BusDeviceSync> = Arc::new(ChDev(i as u64));
        b.ch.insert(c.clone(), base, LEN).unwrap();
        b.ch_rw.insert(&c, base, LEN);
        b.core.insert(base, LEN, c.clone()).unwrap();
        b._ch_devs.push(c);
        let f: Arc<FcDev> = Arc::new(Mutex::new(FcDevice(i as u64)));
        b.fc.insert(f.clone(), base, LEN).unwrap();
        b.fc_rw.insert(&f, base, LEN);
        b._fc_devs.push(f);
    }
    b
}

/// Exits per second with `threads` vCPU threads for `secs`, a BAR moving every 100 µs.
fn run(b: &Buses, which: Which, threads: usize, secs: f64) -> f64 {
    let stop = AtomicBool::new(false);
    let total = AtomicU64::new(0);
    let start = Instant::now();
    /// Stops the vCPU threads however the control loop ends (a panic included), so that the
    /// scope never waits for threads that would run forever.
    struct StopOnDrop<'a>(&'a AtomicBool);
    impl Drop for StopOnDrop<'_> {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Relaxed);
        }
    }
    std::thread::scope(|s| {
        for t in 0..threads as u64 {
            let (stop, total) = (&stop, &total);
            s.spawn(move || {
                let mut x = (t + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
                let mut n = 0u64;
                let mut data = [0u8; 4];
                let mut vcpu = b.core.vcpu();
                while !stop.load(Ordering::Relaxed) {
                    for _ in 0..64 {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        let addr = BASE + (x % DEVICES) * LEN + (x >> 40) % (LEN / 4) * 4;
                        let ok = match which {
                            Which::ChPhysmap => b.ch.read(addr, &mut data).is_ok(),
                            Which::ChRwLock => b.ch_rw.read(addr, &mut data),
                            Which::FcPhysmap => b.fc.read(addr, &mut data).is_ok(),
                            Which::FcRwLock => b.fc_rw.read(addr, &mut data),
                            Which::ChVcpu => vcpu
                                .dispatch(addr, 1, |d, base, off| d.read(base, off, &mut data))
                                .is_ok(),
                        };
                        n += ok as u64;
                    }
                }
                total.fetch_add(n, Ordering::Relaxed);
            });
        }
        let _stop = StopOnDrop(&stop);
        let at = &b.bar_at[which as usize];
        while start.elapsed() < Duration::from_secs_f64(secs) {
            std::thread::sleep(Duration::from_micros(100));
            let now = at.load(Ordering::Relaxed);
            let (from, to) = (BAR[now], BAR[1 - now]);
            match which {
                Which::ChPhysmap => b.ch.update_range(from, LEN, to, LEN).unwrap(),
                Which::ChRwLock => b.ch_rw.update_range(from, to),
                Which::FcPhysmap => b.fc.move_range(from, to, LEN).unwrap(),
                Which::FcRwLock => b.fc_rw.move_range(from, to),
                Which::ChVcpu => b.core.update_range(from, to, LEN).unwrap(),
            }
            at.store(1 - now, Ordering::Relaxed);
        }
    });
    total.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64()
}

fn main() {
    // `cargo test --benches` runs this with `--bench`-less arguments: one short round then.
    let env = |k: &str, d: f64| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let quick = !std::env::args().any(|a| a == "--bench");
    let secs = if quick {
        0.05
    } else {
        env("PHYSMAP_VMM_BUS_SECONDS", 1.0)
    };
    let rounds = if quick {
        1
    } else {
        env("PHYSMAP_VMM_BUS_ROUNDS", 2.0) as usize
    };
    let b = buses();
    let threads = [1usize, 2, 8];
    let mut results: BTreeMap<(usize, usize), Vec<f64>> = BTreeMap::new();
    for _ in 0..rounds {
        for (ti, &t) in threads.iter().enumerate() {
            for (wi, &w) in Which::ALL.iter().enumerate() {
                results
                    .entry((ti, wi))
                    .or_default()
                    .push(run(&b, w, t, secs));
            }
        }
    }
    let median = |v: &[f64]| {
        let mut v = v.to_vec();
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    println!(
        "| vCPU threads | CH physmap | CH RwLock | ratio | FC physmap | FC RwLock | ratio \
         | BusVcpu (CH devices) | CH `&Bus` / BusVcpu |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    let mut json = Vec::new();
    for (ti, &t) in threads.iter().enumerate() {
        let m: Vec<f64> = (0..Which::ALL.len())
            .map(|wi| median(&results[&(ti, wi)]) / 1e6)
            .collect();
        println!(
            "| {t} | {:.2} | {:.2} | **{:.2}x** | {:.2} | {:.2} | **{:.2}x** | {:.2} | {:.2}x |",
            m[0],
            m[1],
            m[0] / m[1],
            m[2],
            m[3],
            m[2] / m[3],
            m[4],
            m[0] / m[4]
        );
        for (wi, w) in Which::ALL.iter().enumerate() {
            json.push(format!(
                "{{\"threads\":{t},\"bus\":\"{}\",\"mexits_per_s\":{:.3},\"rounds\":{:?}}}",
                w.name(),
                m[wi],
                results[&(ti, wi)]
            ));
        }
    }
    if !quick {
        let _ = std::fs::create_dir_all("target/physmap-bench");
        let _ = std::fs::write(
            "target/physmap-bench/vmm-bus.json",
            format!("[{}]\n", json.join(",\n")),
        );
    }
}
