//! The simulated machine: its flat ranges (from a dump), where the moving parts go, how each
//! generation's topology is applied, and what every address must answer in a generation.
//!
//! The topology of generation `g` is a pure function of `g` ([`Topology::of`]), so every
//! vCPU can check every answer against the generation that gave it. All address arithmetic
//! is checked: the moving parts are placed in real gaps of the map, wholly inside the space.

use super::super::DEFAULT_MACHINE;
use physmap::mtree::FlatRange;
use physmap::{Error, PhysMap, Transaction};
use std::ops::RangeInclusive;
use std::path::PathBuf;

/// A map value: which region, and the region offset of the section's origin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Val {
    pub id: u32,
    pub base: u64,
}

const BAR_SIZE: u64 = 0x4000;
const BAR_STRIDE: u64 = 0x1_0000;
const BAR_SLOTS: u64 = 8;
const DIMM_SIZE: u64 = 1 << 30;
const VMEM_BLOCK: u64 = 2 << 20;
const VMEM_BLOCKS: u64 = 64;
const GIB: u64 = 1 << 30;

/// Ids of the moving parts' values (after the machine's own ranges).
#[derive(Clone, Copy)]
pub(crate) struct Ids {
    pub bar: u32,
    pub dimm: u32,
    pub vmem: u32,
    pub rom_as_ram: u32,
}

/// The dynamic part of generation `g`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) struct Topology {
    bar_slot: u64,
    dimm: bool,
    vmem: u64,
    rom_as_ram: bool,
}

impl Topology {
    pub(crate) fn of(g: u64) -> Topology {
        let mut vmem = 0;
        for k in 0..VMEM_BLOCKS {
            // Each block toggles every 64 generations, phases spread: ~2 changes a commit.
            if (g.wrapping_add(61 * k)) % 128 < 64 {
                vmem |= 1 << k;
            }
        }
        Topology {
            bar_slot: (g / 2) % BAR_SLOTS,
            dimm: (g / 3) % 2 == 1,
            vmem,
            rom_as_ram: (g / 5) % 2 == 1,
        }
    }
}

/// Occupied ranges of the space, and the search for free aligned windows between them.
struct Gaps {
    /// Sorted by start; inclusive ends; disjoint.
    taken: Vec<(u64, u64)>,
}

impl Gaps {
    /// The first `align`-aligned window of `size` bytes inside `[lo, hi]` that touches no
    /// taken range, in u128 so that nothing wraps at the top of the space.
    fn find(&self, size: u64, align: u64, lo: u64, hi: u64) -> Option<u64> {
        let fits = |start: u128| start + size as u128 - 1 <= hi as u128;
        let up = |x: u128| x.div_ceil(align as u128) * align as u128;
        let mut cursor = lo as u128;
        for &(s, e) in &self.taken {
            if (e as u128) < cursor {
                continue;
            }
            let start = up(cursor);
            if start + (size as u128) <= s as u128 && fits(start) {
                return Some(start as u64);
            }
            cursor = e as u128 + 1;
        }
        let start = up(cursor);
        (fits(start) && start <= u64::MAX as u128).then_some(start as u64)
    }

    /// Takes the first window found in the preferred spans, in order.
    fn take(&mut self, size: u64, align: u64, spans: &[(u64, u64)]) -> Option<RangeInclusive<u64>> {
        let start = spans
            .iter()
            .filter(|(lo, hi)| lo <= hi)
            .find_map(|&(lo, hi)| self.find(size, align, lo, hi))?;
        let end = start + (size - 1);
        let at = self.taken.partition_point(|r| r.0 < start);
        self.taken.insert(at, (start, end));
        Some(start..=end)
    }
}

/// The machine: its ranges, and where its moving parts live.
pub(crate) struct Machine {
    pub name: String,
    pub mem: Vec<FlatRange>,
    pub io: Vec<FlatRange>,
    /// The moving BAR's window: `BAR_SLOTS` slots of `BAR_STRIDE` bytes.
    bars: RangeInclusive<u64>,
    dimm: RangeInclusive<u64>,
    vmem: RangeInclusive<u64>,
    /// Index (in `mem`) of the ROM range toggled to RAM, if the machine has one.
    rom: Option<usize>,
    pub ids: Ids,
}

impl Machine {
    pub(crate) fn load(path: Option<&PathBuf>) -> Result<Machine, String> {
        let (name, text) = match path {
            Some(p) => (
                p.display().to_string(),
                std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()))?,
            ),
            None => (DEFAULT_MACHINE.0.to_string(), DEFAULT_MACHINE.1.to_string()),
        };
        let dump = super::super::parse(&text, &name)?;
        let mem = dump
            .find("memory")
            .ok_or_else(|| {
                format!(
                    "{name}: no \"memory\" address space (has: {})",
                    dump.address_space_names().join(", ")
                )
            })?
            .ranges
            .clone();
        let io = dump
            .find("I/O")
            .map(|fv| fv.ranges.clone())
            .unwrap_or_default();
        if mem.is_empty() {
            return Err(format!("{name}: the \"memory\" FlatView has no ranges"));
        }
        let mut taken: Vec<(u64, u64)> = mem.iter().map(|r| (r.start, r.end)).collect();
        taken.sort_unstable();
        let mut gaps = Gaps { taken };
        let no_room = |what: &str| format!("{name}: no free window for the {what} in this map");
        // The BAR where a PCI hole is (2..4 GiB), else anywhere below 4 GiB, else anywhere.
        let bars = gaps
            .take(
                BAR_SLOTS * BAR_STRIDE,
                BAR_STRIDE,
                &[(2 * GIB, 4 * GIB - 1), (0, 4 * GIB - 1), (0, u64::MAX)],
            )
            .ok_or_else(|| no_room("moving BAR (512 KiB)"))?;
        // DIMM and virtio-mem above the machine's RAM (and 4 GiB), else in any gap.
        let top = mem
            .iter()
            .map(|r| r.end)
            .max()
            .unwrap_or(0)
            .max(4 * GIB - 1);
        let above = top.saturating_add(1);
        let dimm = gaps
            .take(DIMM_SIZE, DIMM_SIZE, &[(above, u64::MAX), (0, u64::MAX)])
            .ok_or_else(|| no_room("DIMM (1 GiB)"))?;
        let vmem = gaps
            .take(
                VMEM_BLOCKS * VMEM_BLOCK,
                VMEM_BLOCK,
                &[(dimm.end().saturating_add(1), u64::MAX), (0, u64::MAX)],
            )
            .ok_or_else(|| no_room("virtio-mem device (128 MiB)"))?;
        let rom = mem
            .iter()
            .position(|r| r.kind == "rom" && r.end < 0x10_0000);
        let n = u32::try_from(mem.len())
            .ok()
            .filter(|n| n.checked_add(4).is_some())
            .ok_or_else(|| format!("{name}: too many ranges"))?;
        let ids = Ids {
            bar: n,
            dimm: n + 1,
            vmem: n + 2,
            rom_as_ram: n + 3,
        };
        Ok(Machine {
            name,
            mem,
            io,
            bars,
            dimm,
            vmem,
            rom,
            ids,
        })
    }

    pub(crate) fn region_name(&self, id: u32) -> &str {
        match id {
            i if i == self.ids.bar => "moving-bar",
            i if i == self.ids.dimm => "dimm0",
            i if i == self.ids.vmem => "virtio-mem0",
            i if i == self.ids.rom_as_ram => "shadow-ram",
            i => &self.mem[i as usize].name,
        }
    }

    /// The BAR in `slot` (inside the window, so nothing overflows).
    fn bar(&self, slot: u64) -> RangeInclusive<u64> {
        let s = self.bars.start() + slot * BAR_STRIDE;
        s..=s + (BAR_SIZE - 1)
    }

    /// Virtio-mem block `k`.
    fn vmem_block(&self, k: u64) -> RangeInclusive<u64> {
        let s = self.vmem.start() + k * VMEM_BLOCK;
        s..=s + (VMEM_BLOCK - 1)
    }

    /// The DIMM window, for `--inject-fault`.
    pub(crate) fn dimm(&self) -> RangeInclusive<u64> {
        self.dimm.clone()
    }

    /// Builds generation 1 of the memory map and the (static) I/O map.
    pub(crate) fn build(&self, map: &PhysMap<Val>, io: &PhysMap<Val>) -> Result<(), Error> {
        // Each flat range is a section whose value names the range and its region offset.
        let flat = |ranges: &[FlatRange]| -> Vec<(RangeInclusive<u64>, Val)> {
            ranges
                .iter()
                .enumerate()
                .map(|(i, r)| {
                    let val = Val {
                        id: i as u32,
                        base: r.offset,
                    };
                    (r.start..=r.end, val)
                })
                .collect()
        };
        let mut t = map.transaction();
        t.extend(flat(&self.mem))?;
        self.apply(&mut t, None, Topology::of(1))?;
        t.commit()?;
        let mut t = io.transaction();
        t.extend(flat(&self.io))?;
        t.commit()?;
        Ok(())
    }

    /// Changes the map from topology `old` (None: nothing dynamic mapped yet) to `new`.
    pub(crate) fn apply(
        &self,
        t: &mut Transaction<'_, Val>,
        old: Option<Topology>,
        new: Topology,
    ) -> Result<(), Error> {
        let ids = self.ids;
        let val = |id, base| Val { id, base };
        if old.map(|o| o.bar_slot) != Some(new.bar_slot) {
            if let Some(o) = old {
                t.remove(self.bar(o.bar_slot))?;
            }
            t.insert(self.bar(new.bar_slot), val(ids.bar, 0))?;
        }
        if old.map(|o| o.dimm) != Some(new.dimm) {
            if new.dimm {
                // overwrite, not insert: `--inject-fault` may have left something there.
                t.overwrite(self.dimm(), val(ids.dimm, 0))?;
            } else {
                t.remove(self.dimm())?;
            }
        }
        let before = old.map_or(0, |o| o.vmem);
        for k in 0..VMEM_BLOCKS {
            let (was, is) = (before >> k & 1 == 1, new.vmem >> k & 1 == 1);
            if was != is {
                if is {
                    t.insert(self.vmem_block(k), val(ids.vmem, k * VMEM_BLOCK))?;
                } else {
                    t.remove(self.vmem_block(k))?;
                }
            }
        }
        if let Some(i) = self.rom {
            if old.map(|o| o.rom_as_ram) != Some(new.rom_as_ram) {
                let r = &self.mem[i];
                let id = if new.rom_as_ram {
                    ids.rom_as_ram
                } else {
                    i as u32
                };
                t.overwrite(r.start..=r.end, val(id, r.offset))?;
            }
        }
        Ok(())
    }

    /// What generation `g` must answer for memory address `a`: (region, region offset).
    pub(crate) fn expected_mem(&self, g: u64, a: u64) -> Option<(u32, u64)> {
        let topo = Topology::of(g);
        let bar = self.bar(topo.bar_slot);
        if bar.contains(&a) {
            return Some((self.ids.bar, a - bar.start()));
        }
        if topo.dimm && self.dimm.contains(&a) {
            return Some((self.ids.dimm, a - self.dimm.start()));
        }
        if self.vmem.contains(&a) {
            let k = (a - self.vmem.start()) / VMEM_BLOCK;
            return (topo.vmem >> k & 1 == 1).then_some((self.ids.vmem, a - self.vmem.start()));
        }
        if let Some(i) = self.rom {
            let r = &self.mem[i];
            if topo.rom_as_ram && (r.start..=r.end).contains(&a) {
                // The parser checked that `offset + (end - start)` fits in 64 bits.
                return Some((self.ids.rom_as_ram, a - r.start + r.offset));
            }
        }
        find(&self.mem, a)
    }

    /// Addresses a vCPU will look up, drawn like exits: mostly RAM, some MMIO, some port I/O.
    pub(crate) fn workload(&self, seed: u64, n: usize) -> Vec<(bool, u64)> {
        let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let ram: Vec<&FlatRange> = self
            .mem
            .iter()
            .filter(|r| r.kind == "ram" || r.kind == "rom")
            .collect();
        let big = ram.iter().max_by_key(|r| r.end - r.start).copied();
        let mmio: Vec<&FlatRange> = self.mem.iter().filter(|r| r.kind == "i/o").collect();
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            let pick = next() % 100;
            let r = next();
            let within = |range: RangeInclusive<u64>| within(range, r);
            let item = match pick {
                0..=54 => big.map(|b| (false, within(b.start..=b.end))),
                55..=64 => Some((false, within(self.dimm()))),
                65..=74 => Some((false, within(self.vmem.clone()))),
                75..=79 => ram
                    .get(r as usize % ram.len().max(1))
                    .map(|x| (false, within(x.start..=x.end))),
                80..=86 => Some((false, within(self.bars.clone()))),
                87..=94 => mmio
                    .get(r as usize % mmio.len().max(1))
                    .map(|x| (false, within(x.start..=x.end))),
                _ => self
                    .io
                    .get(r as usize % self.io.len().max(1))
                    .map(|x| (true, within(x.start..=x.end))),
            };
            out.extend(item);
        }
        out
    }
}

/// An address of `range` chosen by `r` (the whole space included).
fn within(range: RangeInclusive<u64>, r: u64) -> u64 {
    let (s, e) = (*range.start(), *range.end());
    match (e - s).checked_add(1) {
        Some(len) => s + r % len,
        None => r, // the whole 64-bit space
    }
}

/// The flat range holding `a` and its region offset.
pub(crate) fn find(ranges: &[FlatRange], a: u64) -> Option<(u32, u64)> {
    ranges
        .iter()
        .position(|r| r.start <= a && a <= r.end)
        .map(|i| (i as u32, a - ranges[i].start + ranges[i].offset))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_are_aligned_free_and_inside_the_space() {
        let g = Gaps {
            taken: vec![
                (0, 0xfff),
                (0x1_0000, 0x1_ffff),
                (u64::MAX - 0xfff, u64::MAX),
            ],
        };
        assert_eq!(g.find(0x1000, 0x1000, 0, u64::MAX), Some(0x1000));
        assert_eq!(g.find(0x1_0000, 0x1_0000, 0, u64::MAX), Some(0x2_0000));
        assert_eq!(g.find(0x1000, 0x1000, 0x1_0000, 0x1_ffff), None);
        // The tail gap counts, and a window may end right below the last taken range.
        assert_eq!(g.find(0x1000, 0x1000, 0x2_0000, u64::MAX), Some(0x2_0000));
        assert_eq!(
            g.find(0x1000, 0x1000, u64::MAX - 0x2fff, u64::MAX),
            Some(u64::MAX - 0x2fff)
        );
        assert_eq!(g.find(0x3000, 0x1000, u64::MAX - 0x2fff, u64::MAX), None);
        let empty = Gaps { taken: vec![] };
        assert_eq!(
            empty.find(1 << 30, 1 << 30, 2 << 30, (4 << 30) - 1),
            Some(2 << 30)
        );
        let full = Gaps {
            taken: vec![(0, u64::MAX)],
        };
        assert_eq!(full.find(1, 1, 0, u64::MAX), None);
    }

    #[test]
    fn within_covers_the_whole_space() {
        assert_eq!(within(0..=u64::MAX, 7), 7);
        assert_eq!(within(10..=19, 25), 15);
        assert_eq!(within(u64::MAX..=u64::MAX, 3), u64::MAX);
    }
}
