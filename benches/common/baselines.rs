//! What VMMs use today, each modelled on what the project it stands for really does.
//! Shared by the benchmark binaries (not part of the library).
#![allow(dead_code)]

use arc_swap::{ArcSwap, Cache};
use parking_lot::{Mutex, RwLock};
use std::collections::BTreeMap;
use std::sync::{Arc, Weak};

/// The vm-memory style collection seen through `arc_swap::Cache`.
pub type VecCache<'a> = Cache<&'a ArcSwap<Vec<Arc<Region>>>, Arc<Vec<Arc<Region>>>>;

/// A region: inclusive range and a value standing for the device / memory region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Region {
    pub start: u64,
    pub end: u64,
    pub value: u64,
}

/// crosvm `Bus`: `Mutex<BTreeMap<BusRange, BusEntry>>`; every access locks the mutex and
/// clones the entry (an `Arc` refcount write) before calling the device.
pub struct MutexBTree {
    map: Mutex<BTreeMap<u64, (u64, Arc<u64>)>>,
}

impl MutexBTree {
    pub fn new(regions: &[Region]) -> Self {
        let map = regions
            .iter()
            .map(|r| (r.start, (r.end, Arc::new(r.value))))
            .collect();
        MutexBTree {
            map: Mutex::new(map),
        }
    }
    #[inline]
    pub fn lookup(&self, addr: u64) -> Option<(Arc<u64>, u64)> {
        let map = self.map.lock();
        let (&start, (end, dev)) = map.range(..=addr).next_back()?;
        (addr <= *end).then(|| (dev.clone(), addr - start))
    }
    pub fn replace(&self, r: Region) {
        self.map.lock().insert(r.start, (r.end, Arc::new(r.value)));
    }
}

/// Cloud Hypervisor / Firecracker `Bus`: `RwLock<BTreeMap<BusRange, Weak<dyn BusDevice>>>`;
/// `resolve` takes the read lock and upgrades the `Weak` (a shared refcount write) per exit.
pub struct RwLockBTree {
    map: RwLock<BTreeMap<u64, (u64, Weak<u64>)>>,
    _devices: Mutex<Vec<Arc<u64>>>,
}

impl RwLockBTree {
    pub fn new(regions: &[Region]) -> Self {
        let devices: Vec<Arc<u64>> = regions.iter().map(|r| Arc::new(r.value)).collect();
        let map = regions
            .iter()
            .zip(&devices)
            .map(|(r, d)| (r.start, (r.end, Arc::downgrade(d))))
            .collect();
        RwLockBTree {
            map: RwLock::new(map),
            _devices: Mutex::new(devices),
        }
    }
    #[inline]
    pub fn lookup(&self, addr: u64) -> Option<(Arc<u64>, u64)> {
        let map = self.map.read();
        let (&start, (end, dev)) = map.range(..=addr).next_back()?;
        if addr > *end {
            return None;
        }
        Some((dev.upgrade()?, addr - start))
    }
    pub fn replace(&self, r: Region) {
        let dev = Arc::new(r.value);
        self.map
            .write()
            .insert(r.start, (r.end, Arc::downgrade(&dev)));
        self._devices.lock().push(dev);
    }
}

/// rust-vmm `vm-memory` `GuestMemoryAtomic<GuestMemoryMmap>`: an `ArcSwap` of a sorted
/// `Vec<Arc<region>>`; `memory()` loads it, `find_region` binary-searches; an update clones
/// and re-sorts the whole collection.
pub struct ArcSwapVec {
    regions: ArcSwap<Vec<Arc<Region>>>,
}

impl ArcSwapVec {
    pub fn new(regions: &[Region]) -> Self {
        let mut v: Vec<Arc<Region>> = regions.iter().copied().map(Arc::new).collect();
        v.sort_by_key(|r| r.start);
        ArcSwapVec {
            regions: ArcSwap::from_pointee(v),
        }
    }
    #[inline]
    pub fn lookup(&self, addr: u64) -> Option<(u64, u64)> {
        let guard = self.regions.load();
        find(&guard, addr)
    }
    pub fn cache(&self) -> VecCache<'_> {
        Cache::new(&self.regions)
    }
    pub fn replace(&self, r: Region) {
        let mut v: Vec<Arc<Region>> = self
            .regions
            .load()
            .iter()
            .filter(|x| x.start != r.start)
            .cloned()
            .collect();
        v.push(Arc::new(r));
        v.sort_by_key(|x| x.start);
        self.regions.store(Arc::new(v));
    }
}

/// `vm-memory`'s `find_region`: binary search on region starts.
#[inline]
pub fn find(regions: &[Arc<Region>], addr: u64) -> Option<(u64, u64)> {
    let i = regions.partition_point(|r| r.start <= addr);
    if i == 0 {
        return None;
    }
    let r = &regions[i - 1];
    (addr <= r.end).then_some((r.value, addr - r.start))
}

/// The same through `arc_swap::Cache` (one pointer compare per lookup).
#[inline]
pub fn cached_lookup(cache: &mut VecCache<'_>, addr: u64) -> Option<(u64, u64)> {
    find(cache.load(), addr)
}

/// QEMU's `AddressSpaceDispatch`, rebuilt in full at every change: 6 levels of 512 entries of
/// 32 bits (`skip:6, ptr:26`), leaves at any level when a whole aligned span is covered
/// (`phys_page_set_level`), one 4096-entry table per page holding several sections (`u16`
/// entries in QEMU, which asserts fewer than 4096 sections; `u32` here so that the large
/// synthetic maps fit, counted at QEMU's 8 KiB)
/// (`subpage_t`), compaction of single-child chains (`phys_page_compact`), an `ArcSwap` (RCU)
/// publication of the whole dispatch. Nodes that become unreachable during compaction stay
/// allocated, as in QEMU.
pub struct QemuDispatch {
    pub nodes: Vec<[u32; 512]>,
    pub subpages: Vec<Box<[u32; 4096]>>,
    /// Section table: (start, end, value); #0 is "unassigned".
    pub sections: Vec<(u64, u64, u64)>,
    pub root: u32,
}

const NIL: u32 = (1 << 26) - 1;
const LEVELS: u32 = 6;
const SUBPAGE_FLAG: u64 = 1 << 63;

fn entry(skip: u32, ptr: u32) -> u32 {
    (skip << 26) | ptr
}
fn skip_of(e: u32) -> u32 {
    e >> 26
}
fn ptr_of(e: u32) -> u32 {
    e & ((1 << 26) - 1)
}

impl QemuDispatch {
    /// Builds the dispatch from non-overlapping sorted regions, as `mem_commit` does.
    pub fn build(regions: &[Region]) -> Self {
        let mut d = QemuDispatch {
            nodes: Vec::new(),
            subpages: Vec::new(),
            sections: vec![(0, u64::MAX, 0)],
            root: entry(1, NIL),
        };
        for r in regions {
            let sec = d.sections.len() as u32;
            d.sections.push((r.start, r.end, r.value));
            let mut s = r.start;
            let end = r.end as u128 + 1;
            // Head and tail partial pages go to sub-page tables, whole pages to the tree.
            while (s as u128) < end {
                let page_end = ((s as u128 >> 12) + 1) << 12;
                if s & 0xfff != 0 || page_end > end {
                    let e = (page_end.min(end) - 1) as u64;
                    d.register_subpage(s, e, sec);
                    s = e.wrapping_add(1);
                    if s == 0 {
                        break;
                    }
                } else {
                    let last_page = ((end >> 12) - 1) as u64;
                    let first_page = s >> 12;
                    let mut root = d.root;
                    d.set(
                        &mut root,
                        first_page,
                        last_page - first_page + 1,
                        sec,
                        LEVELS as i32 - 1,
                    );
                    d.root = root;
                    let next = ((last_page as u128 + 1) << 12) as u64;
                    if next == 0 {
                        break;
                    }
                    s = next;
                }
            }
        }
        let mut root = d.root;
        d.compact(&mut root);
        d.root = root;
        d
    }

    fn alloc_node(&mut self, leaf: bool) -> u32 {
        let fill = if leaf { entry(0, 0) } else { entry(1, NIL) };
        self.nodes.push([fill; 512]);
        (self.nodes.len() - 1) as u32
    }

    /// `phys_page_set_level`.
    fn set(
        &mut self,
        lp: &mut u32,
        mut index: u64,
        mut nb: u64,
        leaf: u32,
        level: i32,
    ) -> (u64, u64) {
        if skip_of(*lp) != 0 && ptr_of(*lp) == NIL {
            *lp = entry(1, self.alloc_node(level == 0));
        }
        let node = ptr_of(*lp) as usize;
        let step = 1u64 << (level as u32 * 9);
        let mut i = ((index >> (level as u32 * 9)) & 511) as usize;
        while nb > 0 && i < 512 {
            if index & (step - 1) == 0 && nb >= step {
                self.nodes[node][i] = entry(0, leaf);
                index += step;
                nb -= step;
            } else {
                let mut child = self.nodes[node][i];
                if skip_of(child) == 0 && level > 0 {
                    // A leaf being split: QEMU never does this within one build (sections
                    // do not overlap); treat as empty.
                    child = entry(1, NIL);
                }
                let (ni, nn) = self.set(&mut child, index, nb, leaf, level - 1);
                self.nodes[node][i] = child;
                index = ni;
                nb = nn;
            }
            i += 1;
        }
        (index, nb)
    }

    fn register_subpage(&mut self, s: u64, e: u64, sec: u32) {
        let page = s >> 12;
        // Find or create the sub-page container for this page.
        let existing = self.find_entry(page);
        let table = match existing {
            Some(t) if t != 0 && self.sections[t as usize].2 & SUBPAGE_FLAG != 0 => {
                (self.sections[t as usize].2 & !SUBPAGE_FLAG) as usize
            }
            _ => {
                self.subpages.push(Box::new([0u32; 4096]));
                let t = self.subpages.len() - 1;
                let cont = self.sections.len() as u32;
                self.sections
                    .push((page << 12, (page << 12) | 0xfff, SUBPAGE_FLAG | t as u64));
                let mut root = self.root;
                self.set(&mut root, page, 1, cont, LEVELS as i32 - 1);
                self.root = root;
                t
            }
        };
        for b in (s & 0xfff)..=(e & 0xfff) {
            self.subpages[table][b as usize] = sec;
        }
    }

    /// `phys_page_find`: the section index for `page`, `None` for NIL.
    #[inline(always)]
    fn find_entry(&self, page: u64) -> Option<u32> {
        let mut lp = self.root;
        let mut i = LEVELS as i32;
        while skip_of(lp) != 0 {
            if ptr_of(lp) == NIL {
                return None;
            }
            i -= skip_of(lp) as i32;
            if i < 0 {
                return None;
            }
            lp = self.nodes[ptr_of(lp) as usize][((page >> (i as u32 * 9)) & 511) as usize];
        }
        Some(ptr_of(lp))
    }

    /// `phys_page_compact`.
    fn compact(&mut self, lp: &mut u32) {
        if skip_of(*lp) == 0 || ptr_of(*lp) == NIL {
            return;
        }
        let node = ptr_of(*lp) as usize;
        let mut valid = 0;
        let mut valid_ptr = 0;
        for i in 0..512 {
            let mut e = self.nodes[node][i];
            if ptr_of(e) == NIL {
                continue;
            }
            valid += 1;
            valid_ptr = i;
            if skip_of(e) != 0 {
                self.compact(&mut e);
                self.nodes[node][i] = e;
            }
        }
        if valid != 1 {
            return;
        }
        let child = self.nodes[node][valid_ptr];
        if skip_of(*lp) + skip_of(child) >= 1 << 6 {
            return;
        }
        // If the only child is a leaf, this becomes a leaf (QEMU relies on the final
        // "section covers the address" check, as we do).
        *lp = if skip_of(child) == 0 {
            entry(0, ptr_of(child))
        } else {
            entry(skip_of(*lp) + skip_of(child), ptr_of(child))
        };
    }

    /// `phys_page_find` + `address_space_lookup_region` + the sub-page resolution.
    #[inline]
    pub fn lookup(&self, addr: u64) -> Option<(u64, u64)> {
        let sec = self.find_entry(addr >> 12)?;
        let (s, e, v) = self.sections[sec as usize];
        if addr < s || addr > e || sec == 0 {
            return None;
        }
        if v & SUBPAGE_FLAG != 0 {
            let sec = self.subpages[(v & !SUBPAGE_FLAG) as usize][(addr & 0xfff) as usize];
            let (s, e, v) = self.sections[sec as usize];
            return (sec != 0 && s <= addr && addr <= e).then_some((v, addr - s));
        }
        Some((v, addr - s))
    }

    /// QEMU's figure: 2 KiB a node, 8 KiB a sub-page table (the section table not counted).
    pub fn bytes(&self) -> usize {
        self.nodes.len() * 2048 + self.subpages.len() * 8192
    }

    /// Nodes reachable from the root.
    pub fn reachable_nodes(&self) -> usize {
        let mut n = 0;
        let mut stack = vec![self.root];
        while let Some(e) = stack.pop() {
            if skip_of(e) == 0 || ptr_of(e) == NIL {
                continue;
            }
            n += 1;
            stack.extend(self.nodes[ptr_of(e) as usize].iter().copied());
        }
        n
    }
}

/// QEMU's dispatch published by RCU: rebuilt in full, swapped in.
pub struct QemuStyle {
    pub current: ArcSwap<QemuDispatch>,
    pub regions: Mutex<BTreeMap<u64, Region>>,
}

impl QemuStyle {
    pub fn new(regions: &[Region]) -> Self {
        QemuStyle {
            current: ArcSwap::from_pointee(QemuDispatch::build(regions)),
            regions: Mutex::new(regions.iter().map(|r| (r.start, *r)).collect()),
        }
    }
    pub fn replace(&self, r: Region) {
        let mut map = self.regions.lock();
        map.insert(r.start, r);
        let all: Vec<Region> = map.values().copied().collect();
        self.current.store(Arc::new(QemuDispatch::build(&all)));
    }
}

/// Nodes of the radix tree from before early termination (every mapped page gets a full
/// path of 6 levels), counted without building it: the number of distinct prefixes at each
/// level among mapped pages. Bytes at 2 KiB a node.
pub fn uncollapsed_nodes(regions: &[Region]) -> u64 {
    let mut total = 0u64;
    for level in 1..=LEVELS {
        let shift = 9 * level; // pages per node at this level = 2^shift
        let mut last: Option<u64> = None;
        let mut count = 0u64;
        let mut sorted: Vec<(u64, u64)> = regions
            .iter()
            .map(|r| (r.start >> 12, r.end >> 12))
            .collect();
        sorted.sort();
        for (a, b) in sorted {
            let (pa, pb) = (a >> shift, b >> shift);
            let first = match last {
                Some(l) if l >= pa => l + 1,
                _ => pa,
            };
            if pb >= first {
                count += pb - first + 1;
                last = Some(pb);
            }
        }
        total += count;
    }
    total
}
