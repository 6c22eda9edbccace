//! The machine's two device buses, each twice: physmap's lock-free [`MmioBus`] / [`PioBus`]
//! and, for comparison, a Cloud-Hypervisor-shaped `RwLock<BTreeMap>` bus. Every placement
//! (a BAR programmed, moved or disabled) is applied to both, so either can dispatch the same
//! run; the vCPUs dispatch through the one `--bus` names.

use physmap::bus::{BusError, MmioBus, PioBus};
use std::collections::BTreeMap;
use std::sync::{Arc, RwLock, Weak};
use vm_device::bus::{MmioAddress, PioAddress};
use vm_device::{DeviceMmio, DevicePio};

pub type Mmio = dyn DeviceMmio + Send + Sync;
pub type Pio = dyn DevicePio + Send + Sync;

/// Which bus dispatches the exits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BusKind {
    /// physmap's lock-free `MmioBus` / `PioBus`.
    Physmap,
    /// `RwLock<BTreeMap<range, Weak<device>>>`, resolved under the read lock (Cloud Hypervisor).
    RwLock,
}

/// Cloud Hypervisor's bus shape: ranges in a `BTreeMap` behind a `RwLock`, devices held
/// weakly, resolved under the read lock and called after unlocking.
pub struct LockedBus<D: ?Sized> {
    devices: RwLock<BTreeMap<u64, (u64, Weak<D>)>>,
}

impl<D: ?Sized> LockedBus<D> {
    fn new() -> Self {
        LockedBus {
            devices: RwLock::new(BTreeMap::new()),
        }
    }
    fn insert(&self, base: u64, len: u64, d: &Arc<D>) {
        self.devices
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(base, (len, Arc::downgrade(d)));
    }
    fn remove(&self, base: u64) {
        self.devices
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&base);
    }
    fn move_device(&self, from: u64, to: u64, len: u64) {
        let mut devices = self.devices.write().unwrap_or_else(|e| e.into_inner());
        if let Some((_, d)) = devices.remove(&from) {
            devices.insert(to, (len, d));
        }
    }
    /// The device holding `len` bytes from `addr`, with its base and the offset.
    #[inline]
    pub fn resolve(&self, addr: u64, len: usize) -> Option<(u64, u64, Arc<D>)> {
        let devices = self.devices.read().unwrap_or_else(|e| e.into_inner());
        let (&base, (size, d)) = devices.range(..=addr).next_back()?;
        let offset = addr - base;
        if offset >= *size || len == 0 || len as u64 > size - offset {
            return None;
        }
        Some((base, offset, d.upgrade()?))
    }
}

/// A device for one of the two address spaces.
#[derive(Clone)]
pub enum Device {
    Mmio(Arc<Mmio>),
    Pio(Arc<Pio>),
}

impl Device {
    /// Whether `other` is this very device (same object).
    pub fn is(&self, other: &Device) -> bool {
        match (self, other) {
            (Device::Mmio(a), Device::Mmio(b)) => std::ptr::addr_eq(Arc::as_ptr(a), Arc::as_ptr(b)),
            (Device::Pio(a), Device::Pio(b)) => std::ptr::addr_eq(Arc::as_ptr(a), Arc::as_ptr(b)),
            _ => false,
        }
    }
}

/// Both buses of both kinds over the same devices.
pub struct Buses {
    pub mmio: MmioBus,
    pub pio: PioBus,
    pub locked_mmio: LockedBus<Mmio>,
    pub locked_pio: LockedBus<Pio>,
}

impl Buses {
    pub fn new() -> Buses {
        Buses {
            mmio: MmioBus::new(),
            pio: PioBus::pio(),
            locked_mmio: LockedBus::new(),
            locked_pio: LockedBus::new(),
        }
    }

    /// Places `device` on `size` bytes from `base` (refused if it overlaps another).
    pub fn insert(&self, base: u64, size: u64, device: &Device) -> Result<(), BusError> {
        match device {
            Device::Mmio(d) => {
                self.mmio.insert(base, size, d.clone())?;
                self.locked_mmio.insert(base, size, d);
            }
            Device::Pio(d) => {
                self.pio.insert(base, size, d.clone())?;
                self.locked_pio.insert(base, size, d);
            }
        }
        Ok(())
    }

    /// Removes the device placed at `base`.
    pub fn remove(&self, base: u64, device: &Device) -> Result<(), BusError> {
        match device {
            Device::Mmio(_) => {
                self.mmio.remove(base)?;
                self.locked_mmio.remove(base);
            }
            Device::Pio(_) => {
                self.pio.remove(base)?;
                self.locked_pio.remove(base);
            }
        }
        Ok(())
    }

    /// Moves the device placed at `from` to `size` bytes from `to`, atomically on physmap's
    /// bus (`update_range`); refused, changing nothing, if the new range overlaps another.
    pub fn update_range(
        &self,
        from: u64,
        to: u64,
        size: u64,
        device: &Device,
    ) -> Result<(), BusError> {
        match device {
            Device::Mmio(_) => {
                self.mmio.update_range(from, to, size)?;
                self.locked_mmio.move_device(from, to, size);
            }
            Device::Pio(_) => {
                self.pio.update_range(from, to, size)?;
                self.locked_pio.move_device(from, to, size);
            }
        }
        Ok(())
    }

    /// The device physmap's bus has at `addr` (MMIO or port), with its range.
    pub fn placed_at(
        &self,
        addr: u64,
        mmio: bool,
    ) -> Option<(std::ops::RangeInclusive<u64>, Device)> {
        if mmio {
            self.mmio.device(addr).map(|(r, d)| (r, Device::Mmio(d)))
        } else {
            self.pio.device(addr).map(|(r, d)| (r, Device::Pio(d)))
        }
    }

    /// The same, on the `RwLock<BTreeMap>` bus.
    pub fn locked_placed_at(
        &self,
        addr: u64,
        mmio: bool,
    ) -> Option<(std::ops::RangeInclusive<u64>, Device)> {
        if mmio {
            let (base, _, d) = self.locked_mmio.resolve(addr, 1)?;
            let len = self
                .mmio
                .device(addr)
                .map_or(1, |(r, _)| r.end() - r.start() + 1);
            Some((base..=base + len - 1, Device::Mmio(d)))
        } else {
            let (base, _, d) = self.locked_pio.resolve(addr, 1)?;
            let len = self
                .pio
                .device(addr)
                .map_or(1, |(r, _)| r.end() - r.start() + 1);
            Some((base..=base + len - 1, Device::Pio(d)))
        }
    }
}

/// Reads a `DeviceMmio` through the locked bus (for the dispatch enum).
#[inline]
pub fn locked_mmio_read(bus: &LockedBus<Mmio>, addr: u64, data: &mut [u8]) -> bool {
    bus.resolve(addr, data.len())
        .map(|(base, off, dev)| dev.mmio_read(MmioAddress(base), off, data))
        .is_some()
}

#[inline]
pub fn locked_mmio_write(bus: &LockedBus<Mmio>, addr: u64, data: &[u8]) -> bool {
    bus.resolve(addr, data.len())
        .map(|(base, off, dev)| dev.mmio_write(MmioAddress(base), off, data))
        .is_some()
}

#[inline]
pub fn locked_pio_read(bus: &LockedBus<Pio>, port: u16, data: &mut [u8]) -> bool {
    bus.resolve(port.into(), data.len())
        .map(|(base, off, dev)| dev.pio_read(PioAddress(base as u16), off as u16, data))
        .is_some()
}

#[inline]
pub fn locked_pio_write(bus: &LockedBus<Pio>, port: u16, data: &[u8]) -> bool {
    bus.resolve(port.into(), data.len())
        .map(|(base, off, dev)| dev.pio_write(PioAddress(base as u16), off as u16, data))
        .is_some()
}
