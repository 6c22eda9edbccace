//! Cloud Hypervisor's device bus on physmap (feature `ch-bus`): the API of
//! `vm_device::Bus` in Cloud Hypervisor (`vm-device/src/bus.rs`), so that a VMM switches with
//! one import:
//!
//! ```text
//! -use vm_device::{Bus, BusDevice, BusDeviceSync, BusError};
//! +use physmap::ch_bus::{Bus, BusDevice, BusDeviceSync, BusError};
//! ```
//!
//! Callers keep calling `bus.read(addr, data)` / `bus.write(addr, data)` through a shared
//! `&Bus` from every vCPU thread; underneath, each thread has a physmap dispatcher of its own
//! for each bus (`thread_vcpus.rs`): the lookup takes no lock and writes nothing another
//! thread reads, where Cloud Hypervisor's takes the bus's `RwLock` and upgrades a `Weak` on
//! every access.
//!
//! **Same as Cloud Hypervisor's:** the traits and their defaults (`impl<B: BusDevice>
//! BusDeviceSync for Mutex<B>`), a hit decided by the access's first address alone (an access
//! that starts in a device's range and runs past its end reaches the device), the device
//! called with its range's base and `addr - base`, no bus lock held across the call,
//! `remove(base, len)` matching the range that starts at `base` (any non-zero `len`),
//! `update_range` finding the device by an address in its range and removing the range that
//! starts at `old_base`, `remove_by_device` returning `Ok` whether it found the device or not.
//!
//! **Different, on purpose:**
//! - The bus holds its devices **strongly** (an `Arc`), where Cloud Hypervisor's holds a
//!   `Weak` and upgrades it at each access (an atomic read-modify-write on the device's count,
//!   which every vCPU accessing that device writes). A device dropped by its owner therefore
//!   stays on the bus until `remove`d; a VMM that tears a VM down by dropping its devices
//!   should `remove` them (or drop the bus).
//! - Every change is atomic: `insert` checks and inserts in one step; `update_range` onto an
//!   occupied range is refused with the device **kept** at its old range (Cloud Hypervisor's
//!   removes it first and loses it); a range that runs past the last address is refused with
//!   [`Error::InvalidRange`] (Cloud Hypervisor's wraps around); `remove_by_device` compares
//!   the device's address (not the vtable too) and never panics.
//! - `remove` and `remove_by_device` return once no access to the removed device is in
//!   flight (`update_range` does not wait, as in Cloud Hypervisor: the device is the same) (from inside a device handler they do not wait: see
//!   [`physmap::bus`](crate::bus)); a panicking device leaves nothing blocked.
//!
//! ```
//! use std::sync::{Arc, Barrier, Mutex};
//! use physmap::ch_bus::{Bus, BusDevice};
//!
//! struct Uart { last: u8 }
//! impl BusDevice for Uart {
//!     fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
//!         data.fill(if offset == 0 { self.last } else { 0 });
//!     }
//!     fn write(&mut self, _base: u64, _offset: u64, data: &[u8]) -> Option<Arc<Barrier>> {
//!         self.last = data[0];
//!         None
//!     }
//! }
//!
//! let bus = Bus::new();
//! bus.insert(Arc::new(Mutex::new(Uart { last: 0 })), 0x3f8, 8)?;
//! bus.write(0x3f8, b"A")?;                        // from any vCPU thread, through &Bus
//! let mut data = [0u8; 1];
//! bus.read(0x3f8, &mut data)?;
//! assert_eq!(&data, b"A");
//! bus.update_range(0x3f8, 8, 0x2f8, 8)?;          // moved
//! assert!(bus.read(0x3f8, &mut data).is_err());
//! bus.remove(0x2f8, 8)?;
//! # Ok::<(), physmap::ch_bus::BusError>(())
//! ```

use crate::bus::BusError as Core;
use crate::thread_vcpus::{self, Key, Vcpus};
use std::cell::RefCell;
use std::cmp::Ordering;
use std::fmt;
use std::sync::{Arc, Barrier, Mutex};

/// A device with exclusive access (wrap it in a `Mutex` to put it on a [`Bus`]).
#[allow(unused_variables)]
pub trait BusDevice: Send {
    /// Reads at `offset` from this device
    fn read(&mut self, base: u64, offset: u64, data: &mut [u8]) {}
    /// Writes at `offset` into this device
    fn write(&mut self, base: u64, offset: u64, data: &[u8]) -> Option<Arc<Barrier>> {
        None
    }
}

/// A device that synchronises itself.
#[allow(unused_variables)]
pub trait BusDeviceSync: Send + Sync {
    /// Reads at `offset` from this device
    fn read(&self, base: u64, offset: u64, data: &mut [u8]) {}
    /// Writes at `offset` into this device
    fn write(&self, base: u64, offset: u64, data: &[u8]) -> Option<Arc<Barrier>> {
        None
    }
}

impl<B: BusDevice> BusDeviceSync for Mutex<B> {
    /// Locks the device; panics if another access panicked while holding it (as Cloud
    /// Hypervisor's does). The bus itself is not blocked by that panic.
    fn read(&self, base: u64, offset: u64, data: &mut [u8]) {
        self.lock()
            .expect("Failed to acquire device lock")
            .read(base, offset, data)
    }
    /// As `read`.
    fn write(&self, base: u64, offset: u64, data: &[u8]) -> Option<Arc<Barrier>> {
        self.lock()
            .expect("Failed to acquire device lock")
            .write(base, offset, data)
    }
}

/// What can go wrong on a [`Bus`] (Cloud Hypervisor's `vm_device::BusError`, plus
/// `InvalidRange`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Error {
    /// The insertion failed because the new device overlapped with an old device.
    Overlap,
    /// Failed to operate on zero sized range.
    ZeroSizedRange,
    /// Failed to find address range.
    MissingAddressRange,
    /// The range runs past the last address (Cloud Hypervisor's bus does not check).
    InvalidRange,
}

/// The name Cloud Hypervisor's `vm_device` exports [`Error`] under.
pub type BusError = Error;

/// A `Result` with [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Error::Overlap => {
                "The insertion failed because the new device overlapped with an old device"
            }
            Error::ZeroSizedRange => "Failed to operate on zero sized range",
            Error::MissingAddressRange => "Failed to find address range",
            Error::InvalidRange => "The range runs past the last address",
        })
    }
}

impl std::error::Error for Error {}

impl From<Error> for std::io::Error {
    fn from(e: Error) -> Self {
        std::io::Error::other(e)
    }
}

impl From<Core> for Error {
    fn from(e: Core) -> Self {
        match e {
            Core::Overlap { .. } => Error::Overlap,
            Core::NoDevice { .. } | Core::AccessOutOfRange { .. } => Error::MissingAddressRange,
            Core::InvalidRange(crate::Error::EmptyRange { .. }) => Error::ZeroSizedRange,
            Core::InvalidRange(_) => Error::InvalidRange,
        }
    }
}

/// A range of a [`Bus`]: `len` bytes from `base`. Equal and ordered by `base` alone, as Cloud
/// Hypervisor's.
#[derive(Debug, Copy, Clone)]
pub struct BusRange {
    /// First address.
    pub base: u64,
    /// Bytes.
    pub len: u64,
}

impl BusRange {
    /// Returns true if there is overlap with the given range.
    pub fn overlaps(&self, base: u64, len: u64) -> bool {
        // In 128 bits: a range may end at the last address.
        let end = |b: u64, l: u64| u128::from(b) + u128::from(l);
        let (a, b) = (u128::from(self.base), u128::from(base));
        a < end(base, len) && b < end(self.base, self.len)
    }
}

impl Eq for BusRange {}

impl PartialEq for BusRange {
    fn eq(&self, other: &BusRange) -> bool {
        self.base == other.base
    }
}

impl Ord for BusRange {
    fn cmp(&self, other: &BusRange) -> Ordering {
        self.base.cmp(&other.base)
    }
}

impl PartialOrd for BusRange {
    fn partial_cmp(&self, other: &BusRange) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

type Dev = dyn BusDeviceSync;

thread_local! {
    /// This thread's dispatchers, one per bus it accessed.
    static VCPUS: RefCell<Vcpus<Dev>> = const { RefCell::new(Vcpus::new()) };
}

/// Cloud Hypervisor's `Bus`: devices on non-overlapping ranges of the 64-bit space, accessed
/// through `&Bus` from any thread. See the [module docs](self).
#[derive(Default)]
pub struct Bus {
    inner: crate::bus::Bus<Dev>,
    key: Key,
}

impl fmt::Debug for Bus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ranges = self.inner.devices().into_iter().map(|(r, _)| r);
        f.debug_struct("Bus")
            .field("ranges", &ranges.collect::<Vec<_>>())
            .finish()
    }
}

impl Bus {
    /// An empty bus.
    pub fn new() -> Bus {
        Bus::default()
    }

    /// Puts `device` on `len` bytes from `base`: [`Error::ZeroSizedRange`] for `len == 0`,
    /// [`Error::Overlap`] over another device, [`Error::InvalidRange`] past the last address;
    /// on error nothing changes.
    pub fn insert(&self, device: Arc<dyn BusDeviceSync>, base: u64, len: u64) -> Result<()> {
        Ok(self.inner.insert(base, len, device)?)
    }

    /// Removes the range that starts at `base` (`len` must not be 0 and is not otherwise
    /// checked, as in Cloud Hypervisor); returns once no access to it is in flight.
    pub fn remove(&self, base: u64, len: u64) -> Result<()> {
        if len == 0 {
            return Err(Error::ZeroSizedRange);
        }
        self.inner.relocate(base, starts_at(base), None)?;
        self.inner.synchronize();
        Ok(())
    }

    /// Removes every range of `device` (compared by address); `Ok` whether it had any or not.
    pub fn remove_by_device(&self, device: &dyn BusDeviceSync) -> Result<()> {
        let target = std::ptr::from_ref(device).cast::<()>();
        for (range, d) in self.inner.devices() {
            if std::ptr::addr_eq(Arc::as_ptr(&d), target) {
                // Gone already if another thread removed it meanwhile: fine.
                let _ = self
                    .inner
                    .relocate(*range.start(), starts_at(*range.start()), None);
            }
        }
        self.inner.synchronize();
        Ok(())
    }

    /// Moves the device whose range holds `old_base` (the range must start there, `old_len`
    /// not 0) to `new_len` bytes from `new_base`, in one atomic change; on error (the new
    /// range empty, past the end, or over another device) the device stays where it was.
    /// Like Cloud Hypervisor's, returns without waiting for accesses in flight at the old
    /// range (they reach the same device); [`Bus::remove`] waits.
    pub fn update_range(
        &self,
        old_base: u64,
        old_len: u64,
        new_base: u64,
        new_len: u64,
    ) -> Result<()> {
        if old_len == 0 || new_len == 0 {
            return Err(Error::ZeroSizedRange);
        }
        let new = Some((new_base, new_len));
        self.inner.relocate(old_base, starts_at(old_base), new)?;
        Ok(())
    }

    /// Reads `data.len()` bytes at `addr` from the device whose range holds `addr`;
    /// [`Error::MissingAddressRange`] (and `data` untouched) if none does.
    #[inline]
    pub fn read(&self, addr: u64, data: &mut [u8]) -> Result<()> {
        self.access(addr, |d, base, offset| d.read(base, offset, data))
    }

    /// Writes `data` at `addr` to the device whose range holds `addr`, and returns what the
    /// device returns; [`Error::MissingAddressRange`] if no device's range holds `addr`.
    #[inline]
    pub fn write(&self, addr: u64, data: &[u8]) -> Result<Option<Arc<Barrier>>> {
        self.access(addr, |d, base, offset| d.write(base, offset, data))
    }

    /// The hit rule of Cloud Hypervisor's bus: the first address alone (an access of 1 byte
    /// as far as the bus checks).
    #[inline]
    fn access<T>(&self, addr: u64, f: impl FnOnce(&Dev, u64, u64) -> T) -> Result<T> {
        thread_vcpus::with(&VCPUS, &self.key, &self.inner, |vcpu| {
            Ok(vcpu.dispatch(addr, 1, f)?)
        })
    }
}

/// The check of a range that must start at `base`.
fn starts_at(base: u64) -> impl FnOnce(&std::ops::RangeInclusive<u64>) -> Result<()> {
    move |r| match *r.start() == base {
        true => Ok(()),
        false => Err(Error::MissingAddressRange),
    }
}
