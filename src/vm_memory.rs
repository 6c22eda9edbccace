//! Guest memory for rust-vmm: a [`vm_memory`] 0.18 backend whose `find_region` walks physmap
//! (feature `vm-memory`).
//!
//! - [`PhysGuestMemory`] implements [`GuestMemoryBackend`] over any [`GuestMemoryRegion`]
//!   (for example `GuestRegionMmap`): an immutable snapshot of the regions, so vm-memory's own
//!   `Bytes` reads and writes, `get_slice`, `check_range` and everything else built on
//!   `find_region` work unchanged. `find_region` is a physmap lookup (a few dependent loads)
//!   where `GuestMemoryMmap` binary-searches a `Vec`.
//! - [`PhysAddressSpace`] implements [`GuestAddressSpace`]: `memory()` hands out the current
//!   snapshot through vm-memory's own [`GuestMemoryAtomic`] (an `arc-swap` load, no lock), so
//!   devices written against `GuestMemoryAtomic<GuestMemoryMmap>` take it as is. Hotplug,
//!   unplug and virtio-mem resizing are [`MemoryUpdate`] transactions: all their changes
//!   appear at once, and a commit costs O(log n) in the number of regions (copy-on-write),
//!   where `GuestMemoryMmap` clones and re-sorts its `Vec`.
//!
//! ```
//! use std::sync::Arc;
//! use vm_memory::{Bytes, GuestAddress, GuestAddressSpace, GuestMemoryBackend, GuestRegionMmap};
//! use physmap::vm_memory::PhysAddressSpace;
//!
//! let ram = |start: u64, len: usize| {
//!     Arc::new(GuestRegionMmap::<()>::from_range(GuestAddress(start), len, None).unwrap())
//! };
//! let space = PhysAddressSpace::new([ram(0, 0xa_0000), ram(0x10_0000, 0x100_0000)])?;
//! let mem = space.memory();
//! mem.write_obj(0xdead_beef_u32, GuestAddress(0x10_0040)).unwrap();
//! assert_eq!(mem.read_obj::<u32>(GuestAddress(0x10_0040)).unwrap(), 0xdead_beef);
//! assert!(mem.read_obj::<u32>(GuestAddress(0xb_0000)).is_err()); // the legacy hole
//!
//! // Hotplug a DIMM: one transaction, published atomically.
//! let mut update = space.update();
//! update.insert(ram(0x1_0000_0000, 0x10_0000))?;
//! update.commit()?;
//! assert!(space.memory().address_in_range(GuestAddress(0x1_0000_0000)));
//! assert!(!mem.address_in_range(GuestAddress(0x1_0000_0000))); // old snapshots stay as they were
//! # Ok::<(), physmap::vm_memory::Error>(())
//! ```

use crate::{PhysMap, Snapshot, Transaction};
use std::fmt;
use std::sync::Arc;
use vm_memory::atomic::GuestMemoryExclusiveGuard;
use vm_memory::{
    GuestAddress, GuestAddressSpace, GuestMemoryAtomic, GuestMemoryBackend, GuestMemoryLoadGuard,
    GuestMemoryRegion,
};

/// What can go wrong changing the regions of a [`PhysAddressSpace`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// The region's range is invalid or overlaps another region (see [`crate::Error`]).
    Map(crate::Error),
    /// A region of length zero.
    EmptyRegion {
        /// Its first address.
        start: u64,
    },
    /// No region holds this address (for [`MemoryUpdate::remove`]).
    NoRegion {
        /// The address asked for.
        addr: u64,
    },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Map(e) => write!(f, "{e}"),
            Error::EmptyRegion { start } => write!(f, "region at {start:#x} has length zero"),
            Error::NoRegion { addr } => write!(f, "no region holds address {addr:#x}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Map(e) => Some(e),
            _ => None,
        }
    }
}

impl From<crate::Error> for Error {
    fn from(e: crate::Error) -> Self {
        Error::Map(e)
    }
}

/// The byte range a region covers, checked (a region of `len` bytes at `start`).
fn span<R: GuestMemoryRegion>(region: &R) -> Result<std::ops::RangeInclusive<u64>, Error> {
    let start = region.start_addr().0;
    let len = region.len();
    if len == 0 {
        return Err(Error::EmptyRegion { start });
    }
    Ok(crate::checked_range(start, len)?)
}

/// An immutable set of guest memory regions, looked up through physmap: a
/// [`GuestMemoryBackend`], so vm-memory's `Bytes`, `get_slice`, `check_range`... work on it.
///
/// Cheap to clone (a snapshot). Made by [`PhysAddressSpace`] (or [`PhysGuestMemory::new`]).
pub struct PhysGuestMemory<R> {
    snapshot: Snapshot<Arc<R>>,
    regions: usize,
}

impl<R> Clone for PhysGuestMemory<R> {
    fn clone(&self) -> Self {
        PhysGuestMemory {
            snapshot: self.snapshot.clone(),
            regions: self.regions,
        }
    }
}

impl<R> fmt::Debug for PhysGuestMemory<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PhysGuestMemory")
            .field("generation", &self.snapshot.generation())
            .field("regions", &self.regions)
            .finish()
    }
}

impl<R: GuestMemoryRegion + Send + Sync> PhysGuestMemory<R> {
    /// Guest memory made of `regions` (any order; they must not overlap).
    pub fn new(regions: impl IntoIterator<Item = Arc<R>>) -> Result<Self, Error> {
        Ok(PhysAddressSpace::new(regions)?.current())
    }

    /// The physmap snapshot behind this memory (one value per region).
    pub fn snapshot(&self) -> &Snapshot<Arc<R>> {
        &self.snapshot
    }
}

impl<R: GuestMemoryRegion> GuestMemoryBackend for PhysGuestMemory<R> {
    type R = R;

    fn num_regions(&self) -> usize {
        self.regions
    }

    #[inline]
    fn find_region(&self, addr: GuestAddress) -> Option<&R> {
        self.snapshot.lookup(addr.0).map(|hit| &**hit.value)
    }

    fn iter(&self) -> impl Iterator<Item = &R> {
        // Regions are inserted and removed whole and never overlap: one piece each.
        self.snapshot.iter().map(|(_, region)| &**region)
    }
}

/// Guest memory whose regions change (hotplug, unplug, virtio-mem), for devices: a
/// [`GuestAddressSpace`] whose [`memory()`](GuestAddressSpace::memory) is the current
/// [`PhysGuestMemory`] snapshot, handed out through vm-memory's [`GuestMemoryAtomic`].
///
/// Cheap to clone (all clones share the regions). A snapshot keeps its regions, and so their
/// mappings, alive for as long as it is held, as with `GuestMemoryAtomic<GuestMemoryMmap>`.
pub struct PhysAddressSpace<R: GuestMemoryRegion> {
    inner: Arc<Inner<R>>,
}

struct Inner<R: GuestMemoryRegion> {
    map: PhysMap<Arc<R>>,
    /// What `memory()` returns; replaced (under its lock, which also serialises updates)
    /// after each commit.
    current: GuestMemoryAtomic<PhysGuestMemory<R>>,
}

impl<R: GuestMemoryRegion> Clone for PhysAddressSpace<R> {
    fn clone(&self) -> Self {
        PhysAddressSpace {
            inner: self.inner.clone(),
        }
    }
}

impl<R: GuestMemoryRegion + Send + Sync> PhysAddressSpace<R> {
    /// An address space holding `regions` (any order; overlapping or empty regions are an
    /// error).
    pub fn new(regions: impl IntoIterator<Item = Arc<R>>) -> Result<Self, Error> {
        let map = PhysMap::new();
        let mut t = map.transaction();
        let mut count = 0;
        for region in regions {
            t.insert(span(&*region)?, region)?;
            count += 1;
        }
        t.commit()?;
        let first = PhysGuestMemory {
            snapshot: map.snapshot(),
            regions: count,
        };
        Ok(PhysAddressSpace {
            inner: Arc::new(Inner {
                map,
                current: GuestMemoryAtomic::new(first),
            }),
        })
    }

    /// The current regions, as an owned snapshot (what `memory()` derefs to).
    pub fn current(&self) -> PhysGuestMemory<R> {
        (*self.memory()).clone()
    }

    /// Starts changing the regions; nothing is visible until [`MemoryUpdate::commit`].
    /// Updates are serialised: this waits for another one in progress.
    pub fn update(&self) -> MemoryUpdate<'_, R> {
        // Poisoning: a panicking update left nothing half-published (the transaction rolled
        // back), so the lock is taken anyway.
        let lock = self.inner.current.lock().unwrap_or_else(|p| p.into_inner());
        let base = (*self.inner.current.memory()).clone();
        MemoryUpdate {
            space: self,
            txn: self.inner.map.transaction(),
            base,
            added: Vec::new(),
            removed: Vec::new(),
            lock,
        }
    }

    /// The read side of the physmap behind the address space: vCPU-style [`crate::Reader`]s
    /// (one per thread: a lookup without the `arc-swap` load of `memory()`), snapshots and
    /// `synchronize`. No transaction: every change goes through [`update`](Self::update),
    /// which keeps `memory()` in step with the map.
    pub fn map(&self) -> MapReadSide<'_, R> {
        MapReadSide {
            map: &self.inner.map,
        }
    }
}

/// The read side of a [`PhysAddressSpace`]'s physmap ([`PhysAddressSpace::map`]): what
/// [`PhysMap`] offers, without [`PhysMap::transaction`].
///
/// ```
/// use std::sync::Arc;
/// use vm_memory::{GuestAddress, GuestRegionMmap};
/// use physmap::vm_memory::PhysAddressSpace;
///
/// let ram = Arc::new(GuestRegionMmap::<()>::from_range(GuestAddress(0), 0x10_0000, None).unwrap());
/// let space = PhysAddressSpace::new([ram])?;
/// let mut vcpu = space.map().reader();
/// assert_eq!(vcpu.lookup(0x1234).unwrap().offset, 0x1234);
/// # Ok::<(), physmap::vm_memory::Error>(())
/// ```
///
/// Changes go through [`PhysAddressSpace::update`] only:
///
/// ```compile_fail
/// # use std::sync::Arc;
/// # use vm_memory::{GuestAddress, GuestRegionMmap};
/// # let ram = Arc::new(GuestRegionMmap::<()>::from_range(GuestAddress(0), 0x1000, None).unwrap());
/// let space = physmap::vm_memory::PhysAddressSpace::new([ram]).unwrap();
/// space.map().transaction(); // no such method: `memory()` would fall out of step
/// ```
pub struct MapReadSide<'a, R> {
    map: &'a PhysMap<Arc<R>>,
}

impl<R> MapReadSide<'_, R> {
    /// A per-vCPU reader ([`PhysMap::reader`]).
    pub fn reader(&self) -> crate::Reader<Arc<R>> {
        self.map.reader()
    }

    /// The newest generation, held ([`PhysMap::snapshot`]).
    pub fn snapshot(&self) -> Snapshot<Arc<R>> {
        self.map.snapshot()
    }

    /// Waits for the readers ([`PhysMap::synchronize`]).
    pub fn synchronize(&self) {
        self.map.synchronize()
    }

    /// The same, giving up after `timeout` ([`PhysMap::synchronize_timeout`]).
    pub fn synchronize_timeout(&self, timeout: std::time::Duration) -> bool {
        self.map.synchronize_timeout(timeout)
    }

    /// The arena's memory ([`PhysMap::memory`]).
    pub fn memory(&self) -> crate::Memory {
        self.map.memory()
    }

    /// The map's barrier ([`PhysMap::barrier`]).
    pub fn barrier(&self) -> crate::Barrier {
        self.map.barrier()
    }
}

impl<R: GuestMemoryRegion + Send + Sync> GuestAddressSpace for PhysAddressSpace<R> {
    type M = PhysGuestMemory<R>;
    type T = GuestMemoryLoadGuard<PhysGuestMemory<R>>;

    #[inline]
    fn memory(&self) -> Self::T {
        self.inner.current.memory()
    }
}

/// A set of region changes to a [`PhysAddressSpace`], published together by
/// [`commit`](MemoryUpdate::commit); dropped without commit, it changes nothing.
pub struct MemoryUpdate<'a, R: GuestMemoryRegion> {
    space: &'a PhysAddressSpace<R>,
    txn: Transaction<'a, Arc<R>>,
    /// The regions when the update started.
    base: PhysGuestMemory<R>,
    /// Regions inserted by this update (start, region), and those of `base` it removed.
    added: Vec<(u64, Arc<R>)>,
    removed: Vec<u64>,
    /// vm-memory's update lock, held until the commit publishes through it. Declared last:
    /// fields drop in order, so a dropped update rolls its transaction back first.
    lock: GuestMemoryExclusiveGuard<'a, PhysGuestMemory<R>>,
}

impl<R: GuestMemoryRegion + Send + Sync> MemoryUpdate<'_, R> {
    /// Adds `region` (hotplug); overlapping another region is an error and changes nothing.
    pub fn insert(&mut self, region: Arc<R>) -> Result<(), Error> {
        let range = span(&*region)?;
        let start = *range.start();
        self.txn.insert(range, region.clone())?;
        self.added.push((start, region));
        Ok(())
    }

    /// Removes the region holding `addr` (unplug) and returns it; its mapping lives on in
    /// the snapshots still holding it.
    pub fn remove(&mut self, addr: GuestAddress) -> Result<Arc<R>, Error> {
        let holds = |r: &R| r.start_addr() <= addr && addr <= r.last_addr();
        let region = if let Some(i) = self.added.iter().position(|(_, r)| holds(r)) {
            self.added.swap_remove(i).1
        } else {
            match self.base.find_region(addr) {
                Some(r) if !self.removed.contains(&r.start_addr().0) => {
                    self.removed.push(r.start_addr().0);
                    self.base
                        .snapshot
                        .lookup(addr.0)
                        .map(|hit| hit.value.clone())
                        .ok_or(Error::NoRegion { addr: addr.0 })?
                }
                _ => return Err(Error::NoRegion { addr: addr.0 }),
            }
        };
        self.txn.remove(span(&*region)?)?;
        Ok(region)
    }

    /// Publishes the changes: `memory()` returns the new regions from now on.
    pub fn commit(self) -> Result<(), Error> {
        let MemoryUpdate {
            space,
            txn,
            base,
            added,
            removed,
            lock,
        } = self;
        txn.commit()?;
        // Under the lock every update takes, so this is the generation just committed.
        lock.replace(PhysGuestMemory {
            snapshot: space.inner.map.snapshot(),
            regions: base.regions + added.len() - removed.len(),
        });
        Ok(())
    }
}
