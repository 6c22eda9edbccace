//! Firecracker's device bus on physmap (feature `fc-bus`): the API of Firecracker's
//! `vmm::vstate::bus` (`Bus`, `BusDevice`, `BusError`, `BusRange`), so that a VMM switches
//! with one import:
//!
//! ```text
//! -use crate::vstate::bus::{Bus, BusDevice, BusError, BusRange};
//! +use physmap::fc_bus::{Bus, BusDevice, BusError, BusRange};
//! ```
//!
//! Devices are `Arc<Mutex<dyn BusDevice>>` as in Firecracker, and callers keep accessing them
//! through a shared `&Bus`; underneath, each thread has a physmap dispatcher of its own for
//! each bus (`thread_vcpus.rs`): the lookup takes no lock and writes nothing another thread
//! reads, where Firecracker's takes two `RwLock`s (and holds one across the device call).
//!
//! **Same as Firecracker's:** the trait and its defaults, the device's own `Mutex` locked for
//! the call (a panic in a device poisons it and later accesses to that device panic, as in
//! Firecracker; the bus is not blocked), a hit decided by the access's first address alone,
//! the device called with its range's base and `addr - base`, `remove(base, len)` matching the
//! range that starts at `base` and waiting for the accesses in flight, `move_range` callable
//! from inside a device's own access (a BAR relocated by a config write) and refused onto an
//! occupied range with the device kept in place, ranges up to the last address.
//!
//! **Different, on purpose:**
//! - The bus holds its devices **strongly**, where Firecracker's holds a `Weak` and upgrades
//!   it at each access: a device dropped by its owner stays on the bus until `remove`d.
//! - `move_range` with a `len` other than the registered one returns
//!   [`BusError::InvalidRange`] and changes nothing (Firecracker's panics, with its range
//!   already removed).
//! - `insert` and `remove` may be called from inside a device's access without deadlock
//!   (they then return without waiting: see [`physmap::bus`](crate::bus)).
//!
//! ```
//! use std::sync::{Arc, Barrier, Mutex};
//! use physmap::fc_bus::{Bus, BusDevice};
//!
//! struct Id(u8);
//! impl BusDevice for Id {
//!     fn read(&mut self, _base: u64, _offset: u64, data: &mut [u8]) {
//!         data.fill(self.0);
//!     }
//! }
//!
//! let bus = Bus::new();
//! bus.insert(Arc::new(Mutex::new(Id(0xd))), 0xd000_0000, 0x1000)?;
//! let mut data = [0u8; 4];
//! bus.read(0xd000_0ffc, &mut data)?;
//! assert_eq!(data, [0xd; 4]);
//! bus.move_range(0xd000_0000, 0xd010_0000, 0x1000)?;
//! assert!(bus.read(0xd000_0000, &mut data).is_err());
//! bus.remove(0xd010_0000, 0x1000)?;
//! # Ok::<(), physmap::fc_bus::BusError>(())
//! ```

use crate::bus::BusError as Core;
use crate::thread_vcpus::{self, Key, Vcpus};
use std::cell::RefCell;
use std::cmp::Ordering;
use std::fmt;
use std::sync::{Arc, Barrier, Mutex};

/// A device on a [`Bus`] (behind a `Mutex`).
#[allow(unused_variables)]
pub trait BusDevice: Send {
    /// Reads at `offset` from this device
    fn read(&mut self, base: u64, offset: u64, data: &mut [u8]) {}
    /// Writes at `offset` into this device
    fn write(&mut self, base: u64, offset: u64, data: &[u8]) -> Option<Arc<Barrier>> {
        None
    }
}

/// Error type for [`Bus`]-related operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BusError {
    /// The insertion failed because the new device overlapped with an old device.
    Overlap,
    /// Failed to operate on zero sized range.
    ZeroSizedRange,
    /// Failed to find address range.
    MissingAddressRange,
    /// The supplied range is invalid.
    InvalidRange,
}

impl fmt::Display for BusError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BusError::Overlap => {
                "The insertion failed because the new device overlapped with an old device."
            }
            BusError::ZeroSizedRange => "Failed to operate on zero sized range.",
            BusError::MissingAddressRange => "Failed to find address range.",
            BusError::InvalidRange => "The supplied range is invalid.",
        })
    }
}

impl std::error::Error for BusError {}

impl From<Core> for BusError {
    fn from(e: Core) -> Self {
        match e {
            Core::Overlap { .. } => BusError::Overlap,
            Core::NoDevice { .. } | Core::AccessOutOfRange { .. } => BusError::MissingAddressRange,
            Core::InvalidRange(crate::Error::EmptyRange { .. }) => BusError::ZeroSizedRange,
            Core::InvalidRange(_) => BusError::InvalidRange,
        }
    }
}

/// A range of a [`Bus`], from `base` to `end` inclusive. Equal and ordered by `base` alone,
/// as Firecracker's.
#[derive(Debug, Copy, Clone)]
pub struct BusRange {
    base: u64,
    end: u64,
}

impl BusRange {
    /// `len` bytes from `base`: [`BusError::ZeroSizedRange`] for `len == 0`,
    /// [`BusError::InvalidRange`] past the last address.
    pub fn new(base: u64, len: u64) -> Result<Self, BusError> {
        if len == 0 {
            return Err(BusError::ZeroSizedRange);
        }
        let end = base.checked_add(len - 1).ok_or(BusError::InvalidRange)?;
        Ok(BusRange { base, end })
    }

    /// First address.
    pub fn base(&self) -> u64 {
        self.base
    }

    /// Last address (inclusive).
    pub fn end(&self) -> u64 {
        self.end
    }

    /// Returns true if there is overlap with the given range.
    pub fn overlaps(&self, other: &BusRange) -> bool {
        self.base <= other.end && other.base <= self.end
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

type Dev = Mutex<dyn BusDevice>;

thread_local! {
    /// This thread's dispatchers, one per bus it accessed.
    static VCPUS: RefCell<Vcpus<Dev>> = const { RefCell::new(Vcpus::new()) };
}

/// Firecracker's `Bus`: devices on non-overlapping ranges of the 64-bit space, accessed
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

    /// Puts `device` on `len` bytes from `base` ([`BusRange::new`]'s errors, or
    /// [`BusError::Overlap`]); on error nothing changes.
    pub fn insert(
        &self,
        device: Arc<Mutex<dyn BusDevice>>,
        base: u64,
        len: u64,
    ) -> Result<(), BusError> {
        BusRange::new(base, len)?;
        Ok(self.inner.insert(base, len, device)?)
    }

    /// Removes the range that starts at `base` (`len` is checked as [`BusRange::new`] does and
    /// not otherwise, as in Firecracker); returns once no access to it is in flight.
    pub fn remove(&self, base: u64, len: u64) -> Result<(), BusError> {
        BusRange::new(base, len)?;
        self.inner
            .relocate(base, |r| starts_at(r, base, None), None)?;
        self.inner.synchronize();
        Ok(())
    }

    /// Moves the range of `len` bytes that starts at `old_base` to `new_base`, in one atomic
    /// change; the new range may overlap the old one, not another device's
    /// ([`BusError::Overlap`], the device kept in place). A `len` other than the range's is
    /// [`BusError::InvalidRange`]. Callable from inside a device's access. Like
    /// Firecracker's, returns without waiting for accesses in flight at the old range (they
    /// reach the same device).
    pub fn move_range(&self, old_base: u64, new_base: u64, len: u64) -> Result<(), BusError> {
        BusRange::new(old_base, len)?;
        BusRange::new(new_base, len)?;
        let check = |r: &std::ops::RangeInclusive<u64>| starts_at(r, old_base, Some(len));
        self.inner
            .relocate(old_base, check, Some((new_base, len)))?;
        Ok(())
    }

    /// Reads `data.len()` bytes at `addr` from the device whose range holds `addr`;
    /// [`BusError::MissingAddressRange`] (and `data` untouched) if none does.
    #[inline]
    pub fn read(&self, addr: u64, data: &mut [u8]) -> Result<(), BusError> {
        self.access(addr, |d, base, offset| d.read(base, offset, data))
    }

    /// Writes `data` at `addr` to the device whose range holds `addr`, and returns what the
    /// device returns; [`BusError::MissingAddressRange`] if no device's range holds `addr`.
    #[inline]
    pub fn write(&self, addr: u64, data: &[u8]) -> Result<Option<Arc<Barrier>>, BusError> {
        self.access(addr, |d, base, offset| d.write(base, offset, data))
    }

    /// The hit rule of Firecracker's bus: the first address alone; the device's `Mutex` held
    /// for the call.
    #[inline]
    fn access<T>(
        &self,
        addr: u64,
        f: impl FnOnce(&mut dyn BusDevice, u64, u64) -> T,
    ) -> Result<T, BusError> {
        thread_vcpus::with(&VCPUS, &self.key, &self.inner, |vcpu| {
            Ok(vcpu.dispatch(addr, 1, |d, base, offset| {
                let mut d = d.lock().expect("Failed to acquire device lock");
                f(&mut *d, base, offset)
            })?)
        })
    }
}

/// Accepts a range that starts at `base` (and is `len` bytes long, if given).
fn starts_at(
    r: &std::ops::RangeInclusive<u64>,
    base: u64,
    len: Option<u64>,
) -> Result<(), BusError> {
    if *r.start() != base {
        return Err(BusError::MissingAddressRange);
    }
    match len {
        Some(len) if r.end() - r.start() != len - 1 => Err(BusError::InvalidRange),
        _ => Ok(()),
    }
}
