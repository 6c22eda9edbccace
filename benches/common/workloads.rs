//! The four workloads of BENCHMARKS.md, deterministic.
#![allow(dead_code)]

use super::baselines::Region;

/// A workload: its regions (sorted, non-overlapping) and 4096 lookup addresses.
pub struct Workload {
    pub name: &'static str,
    pub regions: Vec<Region>,
    pub addrs: Vec<u64>,
}

pub struct Rng(u64);
impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

pub const LOOKUPS: usize = 4096;

fn uniform_addrs(regions: &[Region], seed: u64) -> Vec<u64> {
    let mut rng = Rng::new(seed);
    (0..LOOKUPS)
        .map(|_| {
            let r = regions[rng.below(regions.len() as u64) as usize];
            r.start + rng.below(r.end - r.start + 1)
        })
        .collect()
}

/// A QEMU q35 machine's "memory" FlatView from `tests/data`; addresses 90% RAM (weighted by
/// size, so mostly the big RAM ranges), 10% MMIO (uniform over the MMIO ranges).
pub fn q35(file: &'static str, name: &'static str) -> Workload {
    let path = format!("{}/tests/data/{file}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap();
    let dump = physmap::mtree::Dump::parse(&text, &path).unwrap();
    let fv = dump.find("memory").unwrap();
    let mut regions: Vec<Region> = fv
        .ranges
        .iter()
        .enumerate()
        .map(|(i, r)| Region {
            start: r.start,
            end: r.end,
            value: i as u64,
        })
        .collect();
    regions.sort_by_key(|r| r.start);
    let kinds: Vec<&str> = {
        let mut v: Vec<_> = fv
            .ranges
            .iter()
            .map(|r| (r.start, r.kind.as_str()))
            .collect();
        v.sort();
        v.into_iter().map(|x| x.1).collect()
    };
    let ram: Vec<Region> = regions
        .iter()
        .zip(&kinds)
        .filter(|(_, k)| **k == "ram" || **k == "rom")
        .map(|(r, _)| *r)
        .collect();
    let mmio: Vec<Region> = regions
        .iter()
        .zip(&kinds)
        .filter(|(_, k)| **k == "i/o")
        .map(|(r, _)| *r)
        .collect();
    let ram_total: u64 = ram.iter().map(|r| r.end - r.start + 1).sum();
    let mut rng = Rng::new(35);
    let addrs = (0..LOOKUPS)
        .map(|_| {
            if rng.below(10) < 9 {
                let mut x = rng.below(ram_total);
                for r in &ram {
                    let len = r.end - r.start + 1;
                    if x < len {
                        return r.start + x;
                    }
                    x -= len;
                }
                unreachable!()
            } else {
                let r = mmio[rng.below(mmio.len() as u64) as usize];
                r.start + rng.below(r.end - r.start + 1)
            }
        })
        .collect();
    Workload {
        name,
        regions,
        addrs,
    }
}

/// 1,000 regions: RAM-sized, BAR-sized and register-sized, 16 MiB apart.
pub fn regions_1k() -> Workload {
    let mut rng = Rng::new(1000);
    let regions: Vec<Region> = (0..1000u64)
        .map(|i| {
            let start = (1 << 32) + i * (16 << 20) + rng.below(256) * 0x1000;
            let len = match i % 4 {
                0 => 0x100 + rng.below(0x100),
                1 => 0x4000,
                2 => (1 + rng.below(64)) << 12,
                _ => 8 << 20,
            };
            Region {
                start,
                end: start + len - 1,
                value: i,
            }
        })
        .collect();
    let addrs = uniform_addrs(&regions, 1001);
    Workload {
        name: "1k-regions",
        regions,
        addrs,
    }
}

/// 1,000,000 contiguous 4 KiB pages alternating private/shared (confidential VM).
pub fn cvm_1m() -> Workload {
    let regions: Vec<Region> = (0..1_000_000u64)
        .map(|i| Region {
            start: i << 12,
            end: (i << 12) + 0xfff,
            value: i % 2,
        })
        .collect();
    let addrs = uniform_addrs(&regions, 1_000_001);
    Workload {
        name: "cvm-1m-pages",
        regions,
        addrs,
    }
}

/// The same 1,000,000 pages converted in runs of 64 pages (256 KiB) alternating
/// private/shared: 15,625 ranges, as when a guest converts buffers rather than single pages.
pub fn cvm_runs() -> Workload {
    let regions: Vec<Region> = (0..15_625u64)
        .map(|i| Region {
            start: i << 18,
            end: ((i + 1) << 18) - 1,
            value: i % 2,
        })
        .collect();
    let addrs = uniform_addrs(&regions, 1_000_003);
    Workload {
        name: "cvm-1m-pages-in-runs-of-64",
        regions,
        addrs,
    }
}

/// 1 TiB virtio-mem device at 1 TiB, 2 MiB blocks, every 8th block unplugged; plus 4 GiB of
/// boot RAM at 0.
pub fn virtio_mem_1t() -> Workload {
    let block = 2u64 << 20;
    let base = 1u64 << 40;
    let mut regions = vec![Region {
        start: 0,
        end: (4 << 30) - 1,
        value: 0,
    }];
    let blocks = (1u64 << 40) / block;
    let mut k = 0;
    while k < blocks {
        // A run of 7 plugged blocks, then one unplugged.
        let run = 7.min(blocks - k);
        regions.push(Region {
            start: base + k * block,
            end: base + (k + run) * block - 1,
            value: 1 + k,
        });
        k += 8;
    }
    let addrs = uniform_addrs(&regions[1..], 1_000_002);
    Workload {
        name: "virtio-mem-1t",
        regions,
        addrs,
    }
}

/// A physmap built from the workload (each region its own section).
pub fn physmap_of(w: &Workload) -> physmap::PhysMap<u64> {
    let map = physmap::PhysMap::new();
    let mut t = map.transaction();
    for r in &w.regions {
        t.insert(r.start..=r.end, r.value).unwrap();
    }
    t.commit().unwrap();
    map
}
