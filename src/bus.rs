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
                range: range.0..=range.1,
                with: existing.0..=existing.1,
            },
            e => BusError::InvalidRange(e),
        }
    }
}

/// Where a device sits: what the map holds for each device.
struct Placement<D: ?Sized> {
    base: u64,
    /// Bytes, at least 1.
    size: u64,
    device: Arc<D>,
}

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
        t.insert(range, Placement { base, size, device })?;
        t.commit()?;
        Ok(())
    }

    /// Removes the device whose range holds `addr` and returns its range and the device,
    /// once no vCPU is still dispatching to it (module docs).
    pub fn remove(&self, addr: u64) -> Result<(RangeInclusive<u64>, Arc<D>), BusError> {
        let mut t = self.map.transaction();
        let (range, device) = self.placement(addr)?;
        t.remove(range.clone())?;
        t.commit()?;
        self.synchronize();
        Ok((range, device))
    }

    /// Moves the device whose range holds `old_addr` to `size` bytes from `new_base`, in one
    /// atomic change (a BAR reprogrammed by the guest); returns once no vCPU is still
    /// dispatching to the old placement. The new range may overlap the old one, not another
    /// device's; on error nothing changes.
    pub fn update_range(&self, old_addr: u64, new_base: u64, size: u64) -> Result<(), BusError> {
        let new = crate::checked_range(new_base, size)?;
        let mut t = self.map.transaction();
        let (old, device) = self.placement(old_addr)?;
        t.remove(old)?;
        t.insert(
            new,
            Placement {
                base: new_base,
                size,
                device,
            },
        )?;
        t.commit()?;
        self.synchronize();
        Ok(())
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
            .map(|(_, p)| (p.base..=p.base + (p.size - 1), p.device.clone()))
            .collect()
    }

    /// A dispatcher for one vCPU thread.
    pub fn vcpu(&self) -> BusVcpu<D> {
        let reader = self.map.reader();
        dispatchers::add(reader.dispatch_mark());
        BusVcpu { reader }
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
        let p = hit.value;
        Ok((p.base..=p.base + (p.size - 1), p.device.clone()))
    }
}

/// The dispatches in progress, to tell whether the calling thread is inside one (then
/// `synchronize` must not wait: module docs) without a thread-local access on the dispatch
/// path, which costs a dispatch from cold caches two or three more cache lines (the thread's
/// control block, the variable, and the call's address). A dispatch instead writes its frame
/// address into its reader's own state (`Reader::mark_dispatch`), which it writes anyway;
/// `synchronize` looks for an online dispatcher whose mark lies in the calling thread's
/// stack.
mod dispatchers {
    use crate::reader::DispatchMark;
    use std::sync::{Mutex, Weak};

    /// Every `BusVcpu`'s mark, of every bus.
    static ALL: Mutex<Vec<Weak<dyn DispatchMark>>> = Mutex::new(Vec::new());

    pub(super) fn add(mark: Weak<dyn DispatchMark>) {
        let mut all = ALL.lock().unwrap_or_else(|p| p.into_inner());
        all.retain(|m| m.strong_count() > 0);
        all.push(mark);
    }

    /// Whether a dispatch (on any bus) is in progress on the calling thread.
    pub(super) fn on_this_thread() -> bool {
        let (lo, hi) = stack::bounds().unwrap_or_else(|| {
            // Where the thread's stack is unknown: a dispatch of this thread, being in
            // progress up the stack from here, is taken to be within 1 MiB of this frame
            // (thread stacks are further apart than that).
            let here = std::hint::black_box(0u8);
            let here = &here as *const u8 as usize;
            (here, here + (1 << 20))
        });
        marks().any(|m| (lo..hi).contains(&m))
    }

    /// The marks of the dispatches in progress.
    fn marks() -> impl Iterator<Item = usize> {
        let all = ALL.lock().unwrap_or_else(|p| p.into_inner());
        let marks: Vec<usize> = all
            .iter()
            .filter_map(|m| m.upgrade()?.dispatching())
            .collect();
        marks.into_iter()
    }

    /// The calling thread's stack, `[lo, hi)`.
    #[cfg(target_os = "linux")]
    mod stack {
        use std::cell::Cell;

        thread_local! {
            /// Found once per thread (for the main thread, glibc reads /proc/self/maps).
            static BOUNDS: Cell<Option<(usize, usize)>> = const { Cell::new(None) };
        }

        pub(crate) fn bounds() -> Option<(usize, usize)> {
            if let Some(b) = BOUNDS.with(|b| b.get()) {
                return Some(b);
            }
            let b = query()?;
            BOUNDS.with(|c| c.set(Some(b)));
            Some(b)
        }

        fn query() -> Option<(usize, usize)> {
            let mut attr = std::mem::MaybeUninit::<libc::pthread_attr_t>::uninit();
            // SAFETY: pthread_getattr_np initialises `attr` for the calling thread (0 on
            // success); pthread_attr_getstack reads it; pthread_attr_destroy frees it once.
            unsafe {
                if libc::pthread_getattr_np(libc::pthread_self(), attr.as_mut_ptr()) != 0 {
                    return None;
                }
                let (mut addr, mut size) = (std::ptr::null_mut(), 0usize);
                let ok = libc::pthread_attr_getstack(attr.as_ptr(), &mut addr, &mut size) == 0;
                libc::pthread_attr_destroy(attr.as_mut_ptr());
                ok.then(|| (addr as usize, addr as usize + size))
            }
        }
    }

    #[cfg(not(target_os = "linux"))]
    mod stack {
        pub(crate) fn bounds() -> Option<(usize, usize)> {
            None
        }
    }
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
pub struct BusVcpu<D: ?Sized> {
    reader: Reader<Placement<D>>,
}

impl<D: ?Sized + Send + Sync> BusVcpu<D> {
    /// Finds the device holding `len` bytes from `addr` and calls `f(device, base, offset)`.
    /// The placement is held (a `remove` or `update_range` on another thread waits) until `f`
    /// returns or unwinds; between dispatches the vCPU holds nothing, even after a panicking
    /// device handler (a VMM that catches the panic and lets the vCPU idle delays no one).
    #[inline]
    pub fn dispatch<T>(
        &mut self,
        addr: u64,
        len: usize,
        f: impl FnOnce(&D, u64, u64) -> T,
    ) -> Result<T, BusError> {
        // Offline when this returns or unwinds: a vCPU blocked in `KVM_RUN`, one whose device
        // handler moves a BAR on another bus, or one whose handler panicked, never holds a
        // `synchronize` back.
        let vcpu = Offline(&mut self.reader);
        // This dispatch is in progress on this thread (for `Bus::synchronize`).
        vcpu.0
            .mark_dispatch(&vcpu as *const Offline<'_, _> as usize);
        let hit = vcpu.0.lookup_from_offline(addr);
        let hit = hit.ok_or(BusError::NoDevice { addr })?;
        let p = hit.value;
        let offset = addr - p.base;
        if len == 0 || len as u64 > p.size - offset {
            return Err(BusError::AccessOutOfRange { addr, len });
        }
        Ok(f(&p.device, p.base, offset))
    }

    /// The generation of the bus that answered the last access (0 before any).
    pub fn last_generation(&self) -> u64 {
        self.reader.last_generation()
    }
}

impl BusVcpu<dyn DeviceMmio + Send + Sync> {
    /// An MMIO read of `data.len()` bytes at `addr`.
    #[inline]
    pub fn mmio_read(&mut self, addr: u64, data: &mut [u8]) -> Result<(), BusError> {
        self.dispatch(addr, data.len(), |d, base, offset| {
            d.mmio_read(MmioAddress(base), offset, data)
        })
    }

    /// An MMIO write of `data` at `addr`.
    #[inline]
    pub fn mmio_write(&mut self, addr: u64, data: &[u8]) -> Result<(), BusError> {
        self.dispatch(addr, data.len(), |d, base, offset| {
            d.mmio_write(MmioAddress(base), offset, data)
        })
    }
}

impl BusVcpu<dyn DevicePio + Send + Sync> {
    /// A port read of `data.len()` bytes at `port`.
    #[inline]
    pub fn pio_read(&mut self, port: u16, data: &mut [u8]) -> Result<(), BusError> {
        self.dispatch(port.into(), data.len(), |d, base, offset| {
            // A port bus has 16 address bits: base and offset fit in 16 bits.
            d.pio_read(PioAddress(base as u16), offset as u16, data)
        })
    }

    /// A port write of `data` at `port`.
    #[inline]
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
