//! Firecracker's bus shape on physmap (`physmap::fc_bus`, feature `fc-bus`): vCPU
//! threads access devices through a shared `&Bus` while the control plane moves a BAR back
//! and forth (`move_range`) and plugs and unplugs a device; every answer is checked.
//! Exits 0 if no access was misrouted, 1 otherwise.
//!
//! `cargo run --release --features fc-bus --example fc_bus [-- SECONDS [VCPUS]]`

use physmap::fc_bus::{Bus, BusDevice};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Answers reads with its id and the address the access was for (base + offset).
struct Dev(u64);
impl BusDevice for Dev {
    fn read(&mut self, base: u64, offset: u64, data: &mut [u8]) {
        let v = self.0 << 48 | (base + offset);
        data.copy_from_slice(&v.to_le_bytes()[..data.len()]);
    }
}

const DEVICES: u64 = 24;
const LEN: u64 = 0x1000;
const BAR: [u64; 2] = [0xd000_0000, 0xd010_0000];
const HOTPLUG: u64 = 0xe000_0000;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let seconds: f64 = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(2.0);
    let vcpus: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(4);
    let bus = Bus::new();
    for i in 0..DEVICES {
        bus.insert(Arc::new(Mutex::new(Dev(i + 1))), 0xfe00_0000 + i * LEN, LEN)
            .expect("static device");
    }
    bus.insert(Arc::new(Mutex::new(Dev(0xb0))), BAR[0], LEN)
        .expect("BAR");
    let stop = AtomicBool::new(false);
    let (accesses, misroutes, misses) = (AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0));
    let (mut moves, mut plugs) = (0u64, 0u64);
    std::thread::scope(|s| {
        for v in 0..vcpus as u64 {
            let (bus, stop) = (&bus, &stop);
            let (accesses, misroutes, misses) = (&accesses, &misroutes, &misses);
            s.spawn(move || {
                let mut x = v.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let (addr, want) = match x % 4 {
                        0 => (BAR[(x >> 8) as usize % 2], 0xb0),
                        1 => (HOTPLUG, 0xee),
                        _ => {
                            let i = (x >> 8) % DEVICES;
                            (0xfe00_0000 + i * LEN, i + 1)
                        }
                    };
                    let addr = addr + (x >> 32) % (LEN / 8) * 8;
                    let mut data = [0u8; 8];
                    match bus.read(addr, &mut data) {
                        Ok(()) => {
                            let got = u64::from_le_bytes(data);
                            if got >> 48 != want || got & 0xffff_ffff_ffff != addr {
                                misroutes.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        // The BAR's other place and the unplugged device answer nothing.
                        Err(_) if want == 0xb0 || want == 0xee => {
                            misses.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(_) => {
                            misroutes.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    n += 1;
                }
                accesses.fetch_add(n, Ordering::Relaxed);
            });
        }
        let start = Instant::now();
        let mut at = 0;
        let hot: Arc<Mutex<dyn BusDevice>> = Arc::new(Mutex::new(Dev(0xee)));
        while start.elapsed() < Duration::from_secs_f64(seconds) {
            std::thread::sleep(Duration::from_micros(100));
            bus.move_range(BAR[at], BAR[1 - at], LEN).expect("BAR move");
            at = 1 - at;
            moves += 1;
            if moves % 16 == 0 {
                match plugs % 2 {
                    0 => bus.insert(hot.clone(), HOTPLUG, LEN).expect("plug"),
                    _ => bus.remove(HOTPLUG, LEN).expect("unplug"),
                }
                plugs += 1;
            }
        }
        stop.store(true, Ordering::Relaxed);
    });
    let (accesses, misroutes, misses) = (
        accesses.into_inner(),
        misroutes.into_inner(),
        misses.into_inner(),
    );
    println!(
        "fc_bus: {vcpus} vCPU threads, {seconds} s: {accesses} accesses, {misses} to an empty place, \
         {moves} BAR moves, {plugs} plug/unplug, {misroutes} misrouted"
    );
    std::process::exit(if misroutes == 0 && accesses > 0 && moves > 0 {
        0
    } else {
        1
    });
}
