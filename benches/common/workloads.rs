//! The workloads of BENCHMARKS.md, deterministic: real QEMU maps with the four address mixes
//! of exits and DMA, large maps with addresses spread over their RAM, and synthetic maps of
//! 10 to 1M ranges.
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
    physmap_with(w, physmap::Config::default())
}

/// `w` in a physmap of this geometry and layout.
#[allow(dead_code)]
pub fn physmap_with(w: &Workload, config: physmap::Config) -> physmap::PhysMap<u64> {
    let map = physmap::PhysMap::with_config(config).unwrap();
    let mut t = map.transaction();
    for r in &w.regions {
        t.insert(r.start..=r.end, r.value).unwrap();
    }
    t.commit().unwrap();
    map
}

/// `w` in a physmap, the ranges of each value sharing one section
/// (`Transaction::insert_shared`), as a VMM maps a confidential VM's shared pages.
pub fn physmap_shared_of(w: &Workload) -> physmap::PhysMap<u64> {
    physmap_shared_with(w, physmap::Config::default())
}

/// [`physmap_shared_of`] with this geometry and layout.
#[allow(dead_code)]
pub fn physmap_shared_with(w: &Workload, config: physmap::Config) -> physmap::PhysMap<u64> {
    let mut by_value: std::collections::BTreeMap<u64, Vec<std::ops::RangeInclusive<u64>>> =
        Default::default();
    for r in &w.regions {
        by_value.entry(r.value).or_default().push(r.start..=r.end);
    }
    let map = physmap::PhysMap::with_config(config).unwrap();
    let mut t = map.transaction();
    for (value, ranges) in by_value {
        t.insert_shared(ranges, value).unwrap();
    }
    t.commit().unwrap();
    map
}

/// What a flat range is, for drawing addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// RAM or ROM: guest accesses do not exit; device DMA reads and writes it.
    Ram,
    /// MMIO: every access exits to the VMM.
    Mmio,
}

/// A memory map: sorted, non-overlapping regions with their kinds.
pub struct Map {
    pub name: String,
    pub regions: Vec<Region>,
    pub kinds: Vec<Kind>,
}

/// How addresses are drawn from a map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mix {
    /// A uniformly chosen MMIO range, then a uniform address in it (MMIO exits).
    Mmio,
    /// A uniformly chosen RAM range, then a uniform address in it (device DMA).
    Ram,
    /// Uniform over the low 64 GiB, mapped or not.
    Low64G,
    /// Runs of 2 to 17 repeats of one MMIO address (exits cluster on a device).
    Bursts,
}

impl Mix {
    pub const ALL: [Mix; 4] = [Mix::Mmio, Mix::Ram, Mix::Low64G, Mix::Bursts];
    pub fn name(self) -> &'static str {
        match self {
            Mix::Mmio => "mmio",
            Mix::Ram => "ram",
            Mix::Low64G => "low64g",
            Mix::Bursts => "bursts",
        }
    }
}

/// Addresses per lookup benchmark iteration.
pub const MIX_LOOKUPS: usize = 65_536;

/// A uniform address of `r`.
fn inside(rng: &mut Rng, r: &Region) -> u64 {
    match (r.end - r.start).checked_add(1) {
        Some(len) => r.start + rng.below(len),
        None => rng.next(),
    }
}

impl Map {
    /// The "memory" FlatView of a dump in `tests/data`.
    pub fn from_dump(file: &str) -> Map {
        // The package is physmap (benches) or a workspace member beside it (`tools/`).
        let root = env!("CARGO_MANIFEST_DIR");
        let path = [
            format!("{root}/tests/data/{file}"),
            format!("{root}/../tests/data/{file}"),
        ]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .unwrap_or_else(|| panic!("no tests/data/{file} under {root} or its parent"));
        let text = std::fs::read_to_string(&path).unwrap();
        let dump = physmap::mtree::Dump::parse(&text, &path).unwrap();
        let fv = dump.find("memory").unwrap();
        let mut v: Vec<(Region, Kind)> = fv
            .ranges
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let kind = if r.kind == "ram" || r.kind == "rom" || r.kind == "romd" {
                    Kind::Ram
                } else {
                    Kind::Mmio
                };
                (
                    Region {
                        start: r.start,
                        end: r.end,
                        value: i as u64,
                    },
                    kind,
                )
            })
            .collect();
        v.sort_by_key(|(r, _)| r.start);
        Map {
            name: file.trim_end_matches(".txt").to_string(),
            regions: v.iter().map(|x| x.0).collect(),
            kinds: v.iter().map(|x| x.1).collect(),
        }
    }

    fn of(&self, kind: Kind) -> Vec<Region> {
        self.regions
            .iter()
            .zip(&self.kinds)
            .filter(|(_, k)| **k == kind)
            .map(|(r, _)| *r)
            .collect()
    }

    /// `n` addresses drawn by `mix` (deterministic).
    pub fn addresses(&self, mix: Mix, n: usize) -> Vec<u64> {
        let mut rng = Rng::new(0x5eed ^ mix as u64);
        let mmio = self.of(Kind::Mmio);
        let ram = self.of(Kind::Ram);
        let pick = |rng: &mut Rng, set: &[Region]| {
            let r = set[rng.below(set.len() as u64) as usize];
            inside(rng, &r)
        };
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            match mix {
                Mix::Mmio => out.push(pick(&mut rng, &mmio)),
                Mix::Ram => out.push(pick(&mut rng, &ram)),
                Mix::Low64G => out.push(rng.below(64 << 30)),
                Mix::Bursts => {
                    let a = pick(&mut rng, &mmio);
                    for _ in 0..2 + rng.below(16) {
                        out.push(a);
                    }
                }
            }
        }
        out.truncate(n);
        out
    }

    /// The workload of this map and mix.
    pub fn workload(&self, mix: Mix) -> Workload {
        Workload {
            name: Box::leak(format!("{}/{}", self.name, mix.name()).into_boxed_str()),
            regions: self.regions.clone(),
            addrs: self.addresses(mix, MIX_LOOKUPS),
        }
    }
}

/// The real machines of the read-path benchmarks: a booted q35 (default devices), a q35
/// with 24 virtio-net devices, an i440FX pc, a pc with two DIMMs, and aarch64 virt.
pub fn real_maps() -> Vec<Map> {
    [
        "q35-booted.txt",
        "q35-24-virtio-net.txt",
        "pc-i440fx.txt",
        "pc-dimms.txt",
        "virt-arm.txt",
    ]
    .into_iter()
    .map(Map::from_dump)
    .collect()
}

/// The booted q35 plus a 1 TiB virtio-mem device at 1 TiB in 2 MiB blocks, every `nth`
/// block unplugged (`nth` = 8: 65,536 plugged runs; 64: 8,192).
pub fn q35_virtio_mem(nth: u64) -> Map {
    let mut m = Map::from_dump("q35-booted.txt");
    let block = 2u64 << 20;
    let base = 1u64 << 40;
    let blocks = (1u64 << 40) / block;
    let mut k = 0;
    let mut value = m.regions.len() as u64;
    while k < blocks {
        let run = (nth - 1).min(blocks - k);
        m.regions.push(Region {
            start: base + k * block,
            end: base + (k + run) * block - 1,
            value,
        });
        m.kinds.push(Kind::Ram);
        value += 1;
        k += nth;
    }
    m.name = format!("q35-virtio-mem-1t-{}k-runs", (blocks / nth).div_ceil(1024));
    m
}

/// 1,000,000 contiguous 4 KiB pages alternating private/shared, as a map of RAM.
pub fn cvm_map() -> Map {
    let w = cvm_1m();
    Map {
        name: "cvm-1m-pages".into(),
        kinds: vec![Kind::Ram; w.regions.len()],
        regions: w.regions,
    }
}

/// `n` ranges of mixed sizes (registers, BARs, RAM) 16 MiB apart from 4 GiB on, for the plot
/// of lookup time against the number of ranges; addresses uniform over the ranges.
pub fn ranges_n(n: u64) -> Workload {
    let mut rng = Rng::new(n);
    let stride = if n <= 100_000 { 16u64 << 20 } else { 1 << 20 };
    let regions: Vec<Region> = (0..n)
        .map(|i| {
            let start = (1 << 32) + i * stride + rng.below(64) * 0x1000;
            let len = match i % 4 {
                0 => 0x100 + rng.below(0x100),
                1 => 0x4000,
                2 => (1 + rng.below(64)) << 12,
                _ => stride / 2,
            };
            Region {
                start,
                end: start + len - 1,
                value: i,
            }
        })
        .collect();
    let mut rng = Rng::new(n + 1);
    let addrs = (0..MIX_LOOKUPS)
        .map(|_| {
            let r = regions[rng.below(n) as usize];
            inside(&mut rng, &r)
        })
        .collect();
    Workload {
        name: Box::leak(format!("ranges/{n}").into_boxed_str()),
        regions,
        addrs,
    }
}
