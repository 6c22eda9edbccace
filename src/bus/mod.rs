//! A lock-free MMIO / port-I/O device bus for rust-vmm VMMs (feature `bus`).
//!
//! The API follows the buses VMMs already have (Cloud Hypervisor's and Firecracker's
//! `RwLock<BTreeMap<BusRange, Weak<dyn BusDevice>>>`, vm-device's `IoManager`), with devices
//! implementing vm-device's [`DeviceMmio`] / [`DevicePio`]:
//!
//! - control plane: [`Bus::insert`] (overlaps refused), [`Bus::remove`], and
//!   [`Bus::update_range`], a BAR move as one atomic change (every vCPU sees the device at its
//!   old place or at its new one, never at both or neither);
//! - vCPU threads: a [`BusVcpu`] each, whose [`mmio_read`](BusVcpu::mmio_read) /
//!   [`mmio_write`](BusVcpu::mmio_write) (or `pio_*`) find the device with a physmap
//!   [`Reader`] lookup (no lock, no atomic read-modify-write) and call it with its base and
//!   the offset. No bus lock is held across the device call, so a device may move or remove
//!   devices from its handler (a PCI config write relocating a BAR) without deadlock.
//!
//! **What `remove` and `update_range` guarantee.** They return only once no vCPU is still
//! dispatching to the old placement: every dispatch that could have found it has returned
//! (built on [`PhysMap::synchronize`]; a [`BusVcpu`] holds a generation of the bus only
//! while it dispatches, so a vCPU in `KVM_RUN` holds nothing back). So after `remove`
//! returns, the removed device is never called again through the bus and may be torn down.
//! The exception is a call from inside a device handler (a dispatch in progress on the
//! calling thread, on any bus, as when a PCI config write moves a BAR): there `remove` and
//! `update_range` publish the change and return without waiting, since waiting could
//! deadlock (on its own dispatch, or on another vCPU blocked on a lock the handler holds).
//! Dispatches already in flight on other vCPUs then finish against the old placement, with
//! the device still alive (the bus holds it in an `Arc`); call [`Bus::synchronize`] from
//! outside a dispatch to wait for them.
//!
//! **What a dispatch costs.** At a real VM exit the caches are cold, so a dispatch costs the
//! cache lines it fetches: the handle's first words (which can share a line with the
//! caller's vCPU state), the reader's state line (its announcement, the held generation's
//! header, the region its walks remember: [`BusVcpu`] walks from past the nodes whose
//! children span 1 GiB or more, as a CPU's paging-structure caches skip a page walk's upper
//! levels), the map's publication line, one or two tree lines, the piece (and a sub-page
//! table's line for a device smaller than a page), the placement, the device's vtable and
//! the device: about 10 lines, where a `RwLock<BTreeMap>` bus fetches 13 to 19 (BENCHMARKS.md,
//! "The exit path"). Code is fetched from cold too: what compiles into the caller is going
//! online and offline, the vCPU's recent placements (which answer when exits go round a few
//! devices, as a driver's do) and the device call, about 600 bytes per call site; the walk
//! is a call (and the first dispatch in a new generation another). No atomic
//! read-modify-write, and with [`Config::membarrier`] no fence.
//!
//! ```
//! use std::sync::{Arc, atomic::{AtomicU64, Ordering}};
//! use physmap::bus::MmioBus;
//! use vm_device::{DeviceMmio, bus::{MmioAddress, MmioAddressOffset}};
//!
//! struct Register(AtomicU64);
//! impl DeviceMmio for Register {
//!     fn mmio_read(&self, _base: MmioAddress, offset: MmioAddressOffset, data: &mut [u8]) {
//!         let v = self.0.load(Ordering::Relaxed).to_le_bytes();
//!         data.copy_from_slice(&v[offset as usize..offset as usize + data.len()]);
//!     }
//!     fn mmio_write(&self, _base: MmioAddress, _offset: MmioAddressOffset, data: &[u8]) {
//!         self.0.store(data[0] as u64, Ordering::Relaxed);
//!     }
//! }
//!
//! let bus = MmioBus::new();
//! bus.insert(0xfe00_0000, 8, Arc::new(Register(AtomicU64::new(7))))?;
//! let mut vcpu = bus.vcpu();                      // one per vCPU thread
//! let mut data = [0u8; 4];
//! vcpu.mmio_read(0xfe00_0000, &mut data)?;
//! assert_eq!(data, [7, 0, 0, 0]);
//!
//! bus.update_range(0xfe00_0000, 0xfe10_0000, 8)?; // the guest moved the BAR
//! assert!(vcpu.mmio_read(0xfe00_0000, &mut data).is_err());
//! vcpu.mmio_write(0xfe10_0000, &[9])?;
//! let (range, _device) = bus.remove(0xfe10_0004)?;
//! assert_eq!(range, 0xfe10_0000..=0xfe10_0007);
//! # Ok::<(), physmap::bus::BusError>(())
//! ```

use crate::{Config, PhysMap, Reader};
use std::fmt;
use std::ops::RangeInclusive;
use std::ptr::NonNull;
use std::sync::Arc;
use vm_device::bus::{MmioAddress, PioAddress};
use vm_device::{DeviceMmio, DevicePio};

/// A bus of MMIO devices over the 64-bit guest-physical space.
pub type MmioBus = Bus<dyn DeviceMmio + Send + Sync>;
/// A bus of port-I/O devices over the 16-bit port space.
pub type PioBus = Bus<dyn DevicePio + Send + Sync>;

/// What can go wrong on a [`Bus`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum BusError {
    /// The range is empty, overflows, or runs past the bus's last address.
    InvalidRange(crate::Error),
    /// The range overlaps a device already on the bus.
    Overlap {
        /// The range asked for.
        range: RangeInclusive<u64>,
        /// The device range it collides with.
        with: RangeInclusive<u64>,
    },
    /// No device at this address.
    NoDevice {
        /// The address.
        addr: u64,
    },
    /// The access is empty or runs past the end of the device's range.
    AccessOutOfRange {
        /// First byte accessed.
        addr: u64,
        /// Bytes accessed.
        len: usize,
    },
}

impl fmt::Display for BusError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BusError::InvalidRange(e) => write!(f, "invalid bus range: {e}"),
            BusError::Overlap { range, with } => write!(
                f,
                "{:#x}..={:#x} overlaps the device at {:#x}..={:#x}",
                range.start(),
                range.end(),
                with.start(),
                with.end()
            ),
            BusError::NoDevice { addr } => write!(f, "no device at {addr:#x}"),
            BusError::AccessOutOfRange { addr, len } => {
                write!(f, "access of {len} bytes at {addr:#x} runs past its device")
            }
        }
    }
}

impl std::error::Error for BusError {}

impl From<crate::Error> for BusError {
    fn from(e: crate::Error) -> Self {
        match e {
            crate::Error::Overlap { range, existing } => BusError::Overlap {
                range,
                with: existing,
            },
            e => BusError::InvalidRange(e),
        }
    }
}

/// What the map holds for each device. Its range is its piece's: a placement is inserted as
/// one range and never cut, so the walk's piece gives its first and last byte.
struct Placement<D: ?Sized> {
    /// The device that `device` holds, located once: a dispatch reaches it without waiting
    /// for the vtable, whose `align` locates a `dyn` value in its `ArcInner` (one fetch fewer
    /// in the dependent chain of a dispatch from cold caches). Never changed after `new`.
    at: NonNull<D>,
    device: Arc<D>,
}

impl<D: ?Sized> Placement<D> {
    fn new(device: Arc<D>) -> Self {
        Placement {
            at: NonNull::from(&*device),
            device,
        }
    }

    /// The device.
    #[inline(always)]
    fn device(&self) -> &D {
        // SAFETY: `at` points to the value `self.device` owns (set together in `new`, never
        // changed: private fields), which lives at least as long as `self`; `D: ?Sized`
        // values behind an `Arc` do not move.
        unsafe { self.at.as_ref() }
    }
}

// SAFETY: a placement is its `Arc<D>` and a pointer to the same `D`: sending or sharing it
// is sending or sharing an `Arc<D>`, sound for `D: Send + Sync`.
unsafe impl<D: ?Sized + Send + Sync> Send for Placement<D> {}
// SAFETY: as above; `device()` hands out `&D` only, as `&Arc<D>` would.
unsafe impl<D: ?Sized + Send + Sync> Sync for Placement<D> {}

/// A device bus: devices placed on non-overlapping address ranges, looked up lock-free by
/// [`BusVcpu`]s. See the [module docs](self).
pub struct Bus<D: ?Sized> {
    map: PhysMap<Placement<D>>,
}

impl<D: ?Sized + Send + Sync> Default for Bus<D> {
    fn default() -> Self {
        Self::new()
    }
}

impl<D: ?Sized + Send + Sync> Bus<D> {
    /// A bus over the whole 64-bit space (MMIO).
    pub fn new() -> Self {
        Bus {
            map: PhysMap::new(),
        }
    }

    /// A bus over `0..=2^addr_bits - 1` (16 for port I/O), with 256-byte pages so that the
    /// small ranges of port devices sit in few, small sub-page tables.
    pub fn with_addr_bits(addr_bits: u32) -> Result<Self, BusError> {
        let config = Config {
            addr_bits,
            page_bits: 8.min(addr_bits),
            level_bits: 8,
            ..Config::default()
        };
        Ok(Bus {
            map: PhysMap::with_config(config)?,
        })
    }

    /// Places `device` on `size` bytes from `base`. Overlapping another device, or a range
    /// that is empty or leaves the bus, is an error and changes nothing.
    pub fn insert(&self, base: u64, size: u64, device: Arc<D>) -> Result<(), BusError> {
        let range = crate::checked_range(base, size)?;
        let mut t = self.map.transaction();
        t.insert(range, Placement::new(device))?;
        t.commit()?;
        Ok(())
    }

    /// Removes the device whose range holds `addr` and returns its range and the device,
    /// once no vCPU is still dispatching to it (module docs).
    pub fn remove(&self, addr: u64) -> Result<(RangeInclusive<u64>, Arc<D>), BusError> {
        let removed = self.relocate(addr, |_| Ok::<_, BusError>(()), None)?;
        self.synchronize();
        Ok(removed)
    }

    /// Moves the device whose range holds `old_addr` to `size` bytes from `new_base`, in one
    /// atomic change (a BAR reprogrammed by the guest); returns once no vCPU is still
    /// dispatching to the old placement. The new range may overlap the old one, not another
    /// device's; on error nothing changes.
    pub fn update_range(&self, old_addr: u64, new_base: u64, size: u64) -> Result<(), BusError> {
        self.relocate(old_addr, |_| Ok::<_, BusError>(()), Some((new_base, size)))?;
        self.synchronize();
        Ok(())
    }

    /// Takes the device whose range holds `addr` off its range, if `check` accepts that range,
    /// and puts it on `size` bytes from `new_base` if given, as one atomic change; returns
    /// the old range and the device, without waiting for the dispatches to the old placement
    /// (callers [`synchronize`](Bus::synchronize) where their contract says so). On any
    /// error nothing changes. (The one way `remove`, `update_range` and
    /// the other buses' shapes, `ch_bus` and `fc_bus`, change a placement.)
    pub(crate) fn relocate<E: From<BusError>>(
        &self,
        addr: u64,
        check: impl FnOnce(&RangeInclusive<u64>) -> Result<(), E>,
        new: Option<(u64, u64)>,
    ) -> Result<(RangeInclusive<u64>, Arc<D>), E> {
        let new = match new {
            Some((base, size)) => Some(crate::checked_range(base, size).map_err(BusError::from)?),
            None => None,
        };
        // The transaction first: no other change comes between the check and the commit.
        let mut t = self.map.transaction();
        let (old, device) = self.placement(addr)?;
        check(&old)?;
        t.remove(old.clone()).map_err(BusError::from)?;
        if let Some(range) = new {
            let device = device.clone();
            t.insert(range, Placement::new(device))
                .map_err(BusError::from)?;
        }
        t.commit().map_err(BusError::from)?;
        Ok((old, device))
    }

    /// The device whose range holds `addr`, with its range (for the control plane; vCPU
    /// threads use a [`BusVcpu`]).
    pub fn device(&self, addr: u64) -> Option<(RangeInclusive<u64>, Arc<D>)> {
        self.placement(addr).ok()
    }

    /// Every device with its range, in address order.
    pub fn devices(&self) -> Vec<(RangeInclusive<u64>, Arc<D>)> {
        self.map
            .snapshot()
            .iter()
            .map(|(range, p)| (range, p.device.clone()))
            .collect()
    }

    /// A dispatcher for one vCPU thread.
    pub fn vcpu(&self) -> BusVcpu<D> {
        let reader = self.map.reader();
        dispatchers::add(reader.dispatch_mark());
        reader.set_bus_score(Recent::<D>::ON);
        BusVcpu {
            reader,
            recent: Box::new(Recent::new()),
        }
    }

    /// Waits until every dispatch that may have found an older placement has returned
    /// (dispatches started after this call find the current ones). Called from inside a
    /// device handler it returns at once (see the [module docs](self)).
    pub fn synchronize(&self) {
        if !dispatchers::on_this_thread() {
            self.map.synchronize();
        }
    }

    /// The whole placement holding `addr` (placements are never cut: one piece each).
    fn placement(&self, addr: u64) -> Result<(RangeInclusive<u64>, Arc<D>), BusError> {
        let snap = self.map.snapshot();
        let hit = snap.lookup(addr).ok_or(BusError::NoDevice { addr })?;
        Ok((hit.range, hit.value.device.clone()))
    }
}

mod dispatchers;
mod recent;

use recent::Recent;

/// The access check of a dispatch: `len` bytes from `addr`, in a device whose last byte is
/// `last` (and whose range holds `addr`), are at least one and end in it.
#[inline(always)]
fn check_access(addr: u64, len: usize, last: u64) -> Result<(), BusError> {
    if len == 0 || len as u64 - 1 > last - addr {
        return Err(BusError::AccessOutOfRange { addr, len });
    }
    Ok(())
}

/// Takes its reader offline when dropped, unwinding included.
struct Offline<'r, V>(&'r mut Reader<V>);

impl<V> Drop for Offline<'_, V> {
    fn drop(&mut self) {
        self.0.offline();
    }
}

/// One vCPU thread's view of a [`Bus`]: dispatches accesses to devices without a lock.
/// Send it to its thread; one per thread.
#[repr(C)]
pub struct BusVcpu<D: ?Sized> {
    /// On a line of its own, looked at only while the score says it hits.
    recent: Box<Recent<D>>,
    /// A dispatch reads this word and the reader's first three (they can share a line with
    /// the caller's own state), then the reader's state.
    reader: Reader<Placement<D>>,
}

// SAFETY: `recent` holds pointers to devices of placements in the generation it is tagged
// with, dereferenced only by the owning `BusVcpu` while its reader holds that generation
// (I8), whatever the thread; the devices are `Sync` (shared with every vCPU) and the reader
// is `Send` for `Placement<D>: Send + Sync`.
unsafe impl<D: ?Sized + Send + Sync> Send for BusVcpu<D> {}

impl<D: ?Sized + Send + Sync> BusVcpu<D> {
    /// Finds the device holding `len` bytes from `addr` and calls `f(device, base, offset)`.
    /// The placement is held (a `remove` or `update_range` on another thread waits) until `f`
    /// returns or unwinds; between dispatches the vCPU holds nothing, even after a panicking
    /// device handler (a VMM that catches the panic and lets the vCPU idle delays no one).
    #[inline(always)]
    pub fn dispatch<T>(
        &mut self,
        addr: u64,
        len: usize,
        f: impl FnOnce(&D, u64, u64) -> T,
    ) -> Result<T, BusError> {
        // This dispatch is in progress on this thread (for `Bus::synchronize`): an address in
        // its frame, written before going online.
        let frame = 0u8;
        self.reader.mark_dispatch(&frame as *const u8 as usize);
        if !self.reader.dispatch_enter_held() {
            return self.dispatch_entering(addr, len, f);
        }
        self.dispatch_online(addr, len, f)
    }

    /// A dispatch that first enters a newer generation (once per commit and vCPU): out of
    /// line, so that copying the new header enlarges no frame but this one.
    #[cold]
    #[inline(never)]
    fn dispatch_entering<T>(
        &mut self,
        addr: u64,
        len: usize,
        f: impl FnOnce(&D, u64, u64) -> T,
    ) -> Result<T, BusError> {
        self.reader.online();
        self.dispatch_online(addr, len, f)
    }

    /// The rest of a dispatch, the vCPU online: the recent placements when they hold the
    /// address (inline: the common case at a driver's exits, a few lines of code), else the
    /// walk (out of line, [`walk`](BusVcpu::walk)), then the access check and the device call.
    #[inline(always)]
    fn dispatch_online<T>(
        &mut self,
        addr: u64,
        len: usize,
        f: impl FnOnce(&D, u64, u64) -> T,
    ) -> Result<T, BusError> {
        // Offline when this returns or unwinds: a vCPU blocked in `KVM_RUN`, one whose device
        // handler moves a BAR on another bus, or one whose handler panicked, never holds a
        // `synchronize` back.
        let vcpu = Offline(&mut self.reader);
        let generation = vcpu.0.last_generation();
        let score = vcpu.0.bus_score();
        let recent = &mut *self.recent;
        // Looked at only while the score says they hit (their line is not fetched
        // otherwise), and used only if remembered in this generation.
        let remembered = if score >= Recent::<D>::ON && recent.generation == generation {
            recent.find(addr)
        } else {
            None
        };
        let hit = match remembered {
            Some((first, last, device)) => {
                vcpu.0
                    .set_bus_score(Recent::<D>::ON + 2 * Recent::<D>::MISS);
                // SAFETY: `device` is the device of a placement of generation `generation`
                // (`remember`; entries are dropped with their generation in `walk`), which the
                // reader holds until `vcpu` takes it offline, after `f` (I8): the placement
                // and its `Arc` are alive until then.
                Some((first, last, unsafe { device.as_ref() }))
            }
            _ => Self::walk(vcpu.0, recent, addr, score, generation),
        };
        let (first, last, device) = hit.ok_or(BusError::NoDevice { addr })?;
        check_access(addr, len, last)?;
        Ok(f(device, first, addr - first))
    }

    /// A dispatch's walk, when the recent placements did not answer: keeps their score and
    /// entries, then finds the placement in the tree. Out of line, so that the inline part of
    /// a dispatch (which every call site of `dispatch` holds) is the recent placements' few
    /// lines of code; a walk costs a call.
    #[inline(never)]
    fn walk<'r>(
        reader: &'r Reader<Placement<D>>,
        recent: &mut Recent<D>,
        addr: u64,
        score: u8,
        generation: u64,
    ) -> Option<(u64, u64, &'r D)> {
        if score >= Recent::<D>::ON {
            if recent.generation != generation {
                // Remembered in another generation: nothing of it may be used.
                *recent = Recent::new();
                recent.generation = generation;
            } else if recent.is_full() {
                // Every entry in use, and none held the address.
                let mut score = score - Recent::<D>::MISS;
                if score < Recent::<D>::ON {
                    // Off, for `ON` dispatches; then the entries fill up anew (no miss
                    // counts until all are in use again).
                    score = 0;
                    recent.generation = Recent::<D>::NONE;
                }
                reader.set_bus_score(score);
            }
        } else {
            reader.set_bus_score(score + 1);
        }
        let hit = reader.dispatch_lookup(addr)?;
        // The placement's range is its piece's (never cut), its base the piece's start.
        let (first, last) = (*hit.range.start(), *hit.range.end());
        let device = hit.value.device();
        if score >= Recent::<D>::ON {
            recent.remember(first, last, device);
        }
        Some((first, last, device))
    }

    /// The generation of the bus that answered the last access (0 before any).
    pub fn last_generation(&self) -> u64 {
        self.reader.last_generation()
    }
}

impl BusVcpu<dyn DeviceMmio + Send + Sync> {
    /// An MMIO read of `data.len()` bytes at `addr`.
    #[inline(always)]
    pub fn mmio_read(&mut self, addr: u64, data: &mut [u8]) -> Result<(), BusError> {
        self.dispatch(addr, data.len(), |d, base, offset| {
            d.mmio_read(MmioAddress(base), offset, data)
        })
    }

    /// An MMIO write of `data` at `addr`.
    #[inline(always)]
    pub fn mmio_write(&mut self, addr: u64, data: &[u8]) -> Result<(), BusError> {
        self.dispatch(addr, data.len(), |d, base, offset| {
            d.mmio_write(MmioAddress(base), offset, data)
        })
    }
}

impl BusVcpu<dyn DevicePio + Send + Sync> {
    /// A port read of `data.len()` bytes at `port`.
    #[inline(always)]
    pub fn pio_read(&mut self, port: u16, data: &mut [u8]) -> Result<(), BusError> {
        self.dispatch(port.into(), data.len(), |d, base, offset| {
            // A port bus has 16 address bits: base and offset fit in 16 bits.
            d.pio_read(PioAddress(base as u16), offset as u16, data)
        })
    }

    /// A port write of `data` at `port`.
    #[inline(always)]
    pub fn pio_write(&mut self, port: u16, data: &[u8]) -> Result<(), BusError> {
        self.dispatch(port.into(), data.len(), |d, base, offset| {
            d.pio_write(PioAddress(base as u16), offset as u16, data)
        })
    }
}

impl PioBus {
    /// A port-I/O bus: 16 address bits.
    pub fn pio() -> Self {
        // 16 bits is a valid geometry: cannot fail.
        Self::with_addr_bits(16).unwrap_or_else(|_| unreachable!())
    }
}

#[cfg(test)]
mod tests;
