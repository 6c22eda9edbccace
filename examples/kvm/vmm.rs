//! A KVM guest carried by physmap (shared by `examples/kvm/main.rs` and `tests/kvm.rs`).
//!
//! - Guest memory is a [`PhysAddressSpace`] of [`KvmRegion`]s; KVM memslots are added and
//!   removed only by replaying `Snapshot::diff` against the snapshot the kernel last saw
//!   ([`Memslots::sync`]): the map is the one source of truth.
//! - vCPU threads run `guest.S` (32-bit protected mode) and dispatch its `KVM_EXIT_MMIO` /
//!   `KVM_EXIT_IO` exits through physmap's [`MmioBus`] / [`PioBus`] (or, for comparison, a
//!   Cloud-Hypervisor-shaped `RwLock<BTreeMap>` bus; or, for the floor, a fixed table of the
//!   devices scanned with no synchronization, `BusKind::Table`). An MMIO exit that no device claims but
//!   guest memory does (a memslot being replaced) is served from guest memory, as QEMU does;
//!   anything else reads all ones.
//! - A control plane moves a BAR (bus `update_range`, which waits for in-flight dispatches,
//!   then tells the guest through a RAM mailbox), plugs and unplugs a memory block and
//!   toggles a ROM region between ROM and RAM (memory transactions, then memslots from the
//!   diff).
//! - Devices check what they are asked (a register file whose answers encode its identity
//!   and placement, the moving BAR device, a UART, an identity port); the guest checks every
//!   answer and reports a wrong one through port 0x500.

use physmap::bus::{MmioBus, PioBus};
use physmap::vm_memory::{PhysAddressSpace, PhysGuestMemory};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock, Weak};
use std::time::{Duration, Instant};

use kvm_bindings::{kvm_segment, kvm_userspace_memory_region, KVM_MEM_READONLY};
use kvm_ioctls::{Cap, Kvm, VcpuExit, VcpuFd, VmFd};
use vm_device::bus::{MmioAddress, MmioAddressOffset, PioAddress, PioAddressOffset};
use vm_device::{DeviceMmio, DevicePio};
use vm_memory::bitmap::BS;
use vm_memory::{
    Bytes, GuestAddress, GuestAddressSpace, GuestMemoryBackend, GuestMemoryError,
    GuestMemoryRegion, GuestMemoryRegionBytes, GuestRegionMmap, GuestUsize, MemoryRegionAddress,
    VolatileSlice,
};

/// The guest program (`guest.S`, assembled by `scripts/build-guest.sh`), loaded at 0x1000.
const GUEST: &[u8] = include_bytes!("guest.bin");
const CODE: u64 = 0x1000;
const MAILBOX: u64 = 0x2000;
const ITERATIONS: u64 = 0x3000;
const MOVED: u64 = 0x3400;
const ROM: (u64, usize) = (0xe_0000, 0x1_0000);
const BLOCK: (u64, usize) = (0x1000_0000, 2 << 20);
const REGS: [(u64, u8); 2] = [(0xfe00_0000, 0xA1), (0xfe00_1000, 0xA2)];
const BAR: [u64; 2] = [0xd000_0000, 0xd010_0000];
const ERROR_PORT: u16 = 0x500;

/// Which bus dispatches the exits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BusKind {
    /// physmap's lock-free `MmioBus` / `PioBus`.
    Physmap,
    /// `RwLock<BTreeMap<range, Weak<device>>>`, resolved under the read lock (Cloud Hypervisor).
    RwLock,
    /// The floor, not a bus: each vCPU scans a table of its own listing every device (the
    /// moving BAR's device at both its places), with no lock, no generation and no way to
    /// change it. What an exit's dispatch costs here with no synchronization at all: the
    /// timer, the device call, the code around them.
    Table,
}

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    pub vcpus: usize,
    pub seconds: f64,
    pub bus: BusKind,
    /// Move the BAR, plug the block and toggle the ROM while the guest runs.
    pub control_plane: bool,
}

/// What happened.
#[derive(Debug, Default, Clone)]
pub struct Report {
    pub elapsed: f64,
    /// Exits dispatched, per vCPU.
    pub exits: Vec<u64>,
    /// Loop iterations the guest completed, per vCPU.
    pub iterations: Vec<u64>,
    /// Median time of the bus's part of an exit (lookup, access check, device call), ns:
    /// robust to the host interrupts that land inside a few dispatches. Interpolated within
    /// the TSC's step ([`median_ns`]): a guest's TSC may advance in steps of tens of cycles.
    pub dispatch_ns: f64,
    /// Mean of the same, ns (interrupts landing inside a dispatch included).
    pub dispatch_mean_ns: f64,
    /// The timer's own part of each of those figures: the median of back-to-back readings of
    /// the TSC on this thread, ns (interpolated as `dispatch_ns`). Not subtracted from them.
    pub timer_ns: f64,
    /// physmap's bus only: the share of exits that were the first of their vCPU in a new
    /// generation of the MMIO bus (a commit came since its last dispatch), and their mean
    /// ns: what the control plane's changes cost the vCPUs (0 for the `RwLock` bus).
    pub after_commit_share: f64,
    pub after_commit_mean_ns: f64,
    pub bar_moves: u64,
    pub block_changes: u64,
    pub rom_toggles: u64,
    /// `KVM_SET_USER_MEMORY_REGION` calls made by replaying diffs.
    pub memslot_updates: u64,
    /// BAR accesses the guest made at a place the BAR had just left (retried).
    pub moved_retries: u64,
    /// Accesses a device received that were meant for another (device-detected).
    pub misroutes: u64,
    /// Wrong answers the guest detected, by error code (1 to 6, see guest.S).
    pub guest_errors: [u64; 7],
    /// Exits no device claimed that guest memory served (a ROM write, or a memslot being
    /// replaced).
    pub from_memory: u64,
    /// Exits that no device and no memory claimed (the unplugged block: all ones).
    pub unclaimed: u64,
    /// Whether the memslots KVM was given at the end are exactly the regions of the memory
    /// map (start, length, read-only).
    pub memslots_match: bool,
}

impl Report {
    pub fn total_exits(&self) -> u64 {
        self.exits.iter().sum()
    }
    pub fn guest_error_count(&self) -> u64 {
        self.guest_errors.iter().sum()
    }
    pub fn failed(&self) -> bool {
        self.misroutes > 0 || self.guest_error_count() > 0 || !self.memslots_match
    }
}

/// Whether KVM can run the guest here; the reason if not.
pub fn kvm_usable() -> Result<(), String> {
    let kvm = Kvm::new().map_err(|e| format!("cannot open /dev/kvm: {e}"))?;
    if kvm.get_api_version() != 12 {
        return Err(format!(
            "unexpected KVM API version {}",
            kvm.get_api_version()
        ));
    }
    if !kvm.check_extension(Cap::ReadonlyMem) {
        return Err("KVM lacks read-only memslots (KVM_CAP_READONLY_MEM)".into());
    }
    kvm.create_vm()
        .map_err(|e| format!("cannot create a VM: {e}"))?;
    Ok(())
}

// ---------------------------------------------------------------- guest memory

/// A guest memory region that KVM maps as RAM or as ROM (a read-only memslot: writes exit).
/// Toggling a ROM replaces the region by one with the other flag over the same mapping.
pub struct KvmRegion {
    mmap: Arc<GuestRegionMmap<()>>,
    readonly: bool,
}

impl KvmRegion {
    fn new(start: u64, len: usize, readonly: bool) -> Arc<KvmRegion> {
        let mmap = GuestRegionMmap::from_range(GuestAddress(start), len, None).expect("mmap");
        Arc::new(KvmRegion {
            mmap: Arc::new(mmap),
            readonly,
        })
    }
    fn with_flag(&self, readonly: bool) -> Arc<KvmRegion> {
        Arc::new(KvmRegion {
            mmap: self.mmap.clone(),
            readonly,
        })
    }
    fn host_address(&self) -> u64 {
        self.mmap
            .get_host_address(MemoryRegionAddress(0))
            .expect("mmap regions have host addresses") as u64
    }
}

impl GuestMemoryRegion for KvmRegion {
    type B = ();
    fn len(&self) -> GuestUsize {
        self.mmap.len()
    }
    fn start_addr(&self) -> GuestAddress {
        self.mmap.start_addr()
    }
    fn bitmap(&self) -> BS<'_, ()> {}
    fn get_host_address(&self, addr: MemoryRegionAddress) -> Result<*mut u8, GuestMemoryError> {
        self.mmap.get_host_address(addr)
    }
    fn get_slice(
        &self,
        offset: MemoryRegionAddress,
        count: usize,
    ) -> Result<VolatileSlice<'_, BS<'_, ()>>, GuestMemoryError> {
        self.mmap.get_slice(offset, count)
    }
}

impl GuestMemoryRegionBytes for KvmRegion {}

/// Keeps KVM's memslots equal to the memory map by replaying `Snapshot::diff` (the listener
/// recipe of the README): deletions first, then additions.
struct Memslots<'vm> {
    vm: &'vm VmFd,
    /// Memslot of each region start the kernel knows, and what it maps there (length,
    /// read-only): what this listener told KVM.
    slots: HashMap<u64, u32>,
    told: BTreeMap<u64, (u64, bool)>,
    free: Vec<u32>,
    next: u32,
    /// What the kernel knows: kept until the memslots no longer use its regions.
    applied: PhysGuestMemory<KvmRegion>,
    updates: u64,
}

impl<'vm> Memslots<'vm> {
    fn new(vm: &'vm VmFd) -> Self {
        let empty = PhysAddressSpace::<KvmRegion>::new([])
            .expect("empty")
            .current();
        Memslots {
            vm,
            slots: HashMap::new(),
            told: BTreeMap::new(),
            free: Vec::new(),
            next: 0,
            applied: empty,
            updates: 0,
        }
    }

    fn set(&mut self, slot: u32, region: Option<&KvmRegion>, start: u64) -> Result<(), String> {
        let r = kvm_userspace_memory_region {
            slot,
            flags: match region {
                Some(r) if r.readonly => KVM_MEM_READONLY,
                _ => 0,
            },
            guest_phys_addr: start,
            memory_size: region.map_or(0, |r| r.len()),
            userspace_addr: region.map_or(0, |r| r.host_address()),
        };
        // SAFETY: the host range is a live mapping of `r.len()` bytes, kept alive by
        // `applied` (or the snapshot replacing it) until this memslot is deleted; a deletion
        // (size 0) maps nothing.
        unsafe { self.vm.set_user_memory_region(r) }
            .map_err(|e| format!("KVM_SET_USER_MEMORY_REGION slot {slot} at {start:#x}: {e}"))?;
        match region {
            Some(r) => self.told.insert(start, (r.len(), r.readonly)),
            None => self.told.remove(&start),
        };
        self.updates += 1;
        Ok(())
    }

    /// Brings the memslots from `applied` to `now`.
    fn sync(&mut self, now: PhysGuestMemory<KvmRegion>) -> Result<(), String> {
        // The old snapshot stays alive (its regions mapped) until the memslots stop using
        // them, at the end of this function.
        let old = std::mem::replace(&mut self.applied, now.clone());
        let changes = now.snapshot().diff(old.snapshot());
        for c in &changes {
            if let Some(old) = &c.old {
                if let Some(slot) = self.slots.remove(old.piece.start()) {
                    self.set(slot, None, *old.piece.start())?;
                    self.free.push(slot);
                }
            }
        }
        for c in &changes {
            if let Some(new) = &c.new {
                let start = *new.piece.start();
                if !self.slots.contains_key(&start) {
                    let slot = self.free.pop().unwrap_or_else(|| {
                        self.next += 1;
                        self.next - 1
                    });
                    self.set(slot, Some(new.value), start)?;
                    self.slots.insert(start, slot);
                }
            }
        }
        // The old regions may go now: no memslot maps them any more.
        drop(changes);
        drop(old);
        Ok(())
    }
}

// ---------------------------------------------------------------- devices

/// Register file `id`: reading offset `o` gives `id << 24 | o`; a write must carry the same.
struct RegFile {
    id: u8,
    misroutes: Arc<AtomicU64>,
}

impl DeviceMmio for RegFile {
    fn mmio_read(&self, _: MmioAddress, offset: MmioAddressOffset, data: &mut [u8]) {
        answer((self.id as u32) << 24 | offset as u32, data);
    }
    fn mmio_write(&self, _: MmioAddress, offset: MmioAddressOffset, data: &[u8]) {
        if data.len() != 4 || data != ((self.id as u32) << 24 | offset as u32).to_le_bytes() {
            // Relaxed: a counter, read after the vCPUs are joined.
            self.misroutes.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The relocatable device: reading address `A` gives `0xB0 << 24 | (A >> 20 & 0xfff) << 12 |
/// (A & 0xfff)`, computed from the base and offset it is called with.
struct BarDevice {
    misroutes: Arc<AtomicU64>,
}

impl DeviceMmio for BarDevice {
    fn mmio_read(&self, base: MmioAddress, offset: MmioAddressOffset, data: &mut [u8]) {
        let a = base.0 + offset;
        answer(
            0xB000_0000 | ((a >> 20 & 0xfff) << 12 | (a & 0xfff)) as u32,
            data,
        );
    }
    fn mmio_write(&self, _: MmioAddress, _: MmioAddressOffset, _: &[u8]) {
        self.misroutes.fetch_add(1, Ordering::Relaxed); // the guest never writes it
    }
}

fn answer(v: u32, data: &mut [u8]) {
    let b = v.to_le_bytes();
    let n = data.len().min(4);
    data[..n].copy_from_slice(&b[..n]);
}

/// Port devices: the identity port, the UART, the error port.
struct Ports {
    uart_bytes: AtomicU64,
    errors: [AtomicU64; 7],
    misroutes: Arc<AtomicU64>,
}

struct IdentityPort(Arc<Ports>);
impl DevicePio for IdentityPort {
    fn pio_read(&self, _: PioAddress, _: PioAddressOffset, data: &mut [u8]) {
        answer(0xC0DE_0510, data);
    }
    fn pio_write(&self, _: PioAddress, _: PioAddressOffset, _: &[u8]) {
        self.0.misroutes.fetch_add(1, Ordering::Relaxed);
    }
}

struct Uart(Arc<Ports>);
impl DevicePio for Uart {
    fn pio_read(&self, _: PioAddress, _: PioAddressOffset, data: &mut [u8]) {
        data.fill(0x60); // transmitter empty
    }
    fn pio_write(&self, _: PioAddress, _: PioAddressOffset, data: &[u8]) {
        self.0
            .uart_bytes
            .fetch_add(data.len() as u64, Ordering::Relaxed);
    }
}

struct ErrorPort(Arc<Ports>);
impl DevicePio for ErrorPort {
    fn pio_read(&self, _: PioAddress, _: PioAddressOffset, data: &mut [u8]) {
        data.fill(0);
    }
    fn pio_write(&self, _: PioAddress, _: PioAddressOffset, data: &[u8]) {
        let mut b = [0u8; 4];
        b[..data.len().min(4)].copy_from_slice(&data[..data.len().min(4)]);
        let code = (u32::from_le_bytes(b) as usize).min(6);
        self.0.errors[code].fetch_add(1, Ordering::Relaxed);
    }
}

// ---------------------------------------------------------------- buses

type Mmio = dyn DeviceMmio + Send + Sync;
type Pio = dyn DevicePio + Send + Sync;

/// Cloud Hypervisor's bus shape: ranges in a `BTreeMap` behind a `RwLock`, devices held
/// weakly, resolved under the read lock and called after unlocking.
struct LockedBus<D: ?Sized> {
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
            .unwrap()
            .insert(base, (len, Arc::downgrade(d)));
    }
    /// The device holding `len` bytes from `addr`, with its base and the offset.
    fn resolve(&self, addr: u64, len: usize) -> Option<(u64, u64, Arc<D>)> {
        let devices = self.devices.read().unwrap();
        let (&base, (size, d)) = devices.range(..=addr).next_back()?;
        let offset = access(base, *size, addr, len)?;
        Some((base, offset, d.upgrade()?))
    }
    fn move_device(&self, from: u64, to: u64) {
        let mut devices = self.devices.write().unwrap();
        let d = devices.remove(&from).expect("device to move");
        devices.insert(to, d);
    }
}

/// The access check of the comparison buses, as physmap's bus makes it: `len` bytes from
/// `addr` (at least one) lie in the `size` bytes from `base`; their offset there.
fn access(base: u64, size: u64, addr: u64, len: usize) -> Option<u64> {
    let offset = addr.checked_sub(base)?;
    if offset >= size || len == 0 || len as u64 > size - offset {
        return None;
    }
    Some(offset)
}

/// The floor's table ([`BusKind::Table`]): `(base, size, device)`, scanned in order.
struct Table<D: ?Sized>(Vec<(u64, u64, Arc<D>)>);

impl<D: ?Sized> Table<D> {
    /// The table of `bus`'s devices, plus `extra`.
    fn of(bus: &physmap::bus::Bus<D>, extra: impl IntoIterator<Item = (u64, u64, Arc<D>)>) -> Self
    where
        D: Send + Sync,
    {
        let devices = bus.devices().into_iter();
        let mut t: Vec<_> = devices
            .map(|(r, d)| (*r.start(), r.end() - r.start() + 1, d))
            .collect();
        t.extend(extra);
        Table(t)
    }

    /// The device holding `len` bytes from `addr`, with its base and the offset (the same
    /// access check as the buses').
    #[inline]
    fn resolve(&self, addr: u64, len: usize) -> Option<(u64, u64, &D)> {
        let (base, size, d) = self.0.iter().find(|e| e.0 <= addr && addr - e.0 < e.1)?;
        let offset = access(*base, *size, addr, len)?;
        Some((*base, offset, &**d))
    }
}

/// What a vCPU thread reports: exits dispatched, TSC cycles spent dispatching, and each
/// exit's cycles ([`AFTER_COMMIT`] set on the first exit in a new generation).
type VcpuRun = (u64, u64, Vec<u32>);

/// The bit of a sample that marks an exit dispatched in a new generation of physmap's bus.
const AFTER_COMMIT: u32 = 1 << 31;

/// Both buses over the same devices; the devices are owned here.
struct Buses {
    mmio: MmioBus,
    pio: PioBus,
    locked_mmio: LockedBus<Mmio>,
    locked_pio: LockedBus<Pio>,
    _mmio_devices: Vec<Arc<Mmio>>,
    _pio_devices: Vec<Arc<Pio>>,
}

impl Buses {
    fn new(misroutes: &Arc<AtomicU64>, ports: &Arc<Ports>) -> Buses {
        let mut b = Buses {
            mmio: MmioBus::new(),
            pio: PioBus::pio(),
            locked_mmio: LockedBus::new(),
            locked_pio: LockedBus::new(),
            _mmio_devices: Vec::new(),
            _pio_devices: Vec::new(),
        };
        let mut mmio = |base: u64, len: u64, d: Arc<Mmio>| {
            b.mmio.insert(base, len, d.clone()).expect("mmio device");
            b.locked_mmio.insert(base, len, &d);
            b._mmio_devices.push(d);
        };
        for (base, id) in REGS {
            let misroutes = misroutes.clone();
            mmio(base, 0x1000, Arc::new(RegFile { id, misroutes }));
        }
        let misroutes = misroutes.clone();
        mmio(BAR[0], 0x1000, Arc::new(BarDevice { misroutes }));
        let mut pio = |base: u16, len: u64, d: Arc<Pio>| {
            b.pio
                .insert(base.into(), len, d.clone())
                .expect("pio device");
            b.locked_pio.insert(base.into(), len, &d);
            b._pio_devices.push(d);
        };
        pio(0x510, 4, Arc::new(IdentityPort(ports.clone())));
        pio(0x3f8, 8, Arc::new(Uart(ports.clone())));
        pio(ERROR_PORT, 4, Arc::new(ErrorPort(ports.clone())));
        b
    }
}

/// One vCPU's way to the devices.
// One per vCPU thread, on its stack: its size does not matter, a box would add a load per exit.
#[allow(clippy::large_enum_variant)]
enum Dispatch<'a> {
    Physmap(physmap::bus::BusVcpu<Mmio>, physmap::bus::BusVcpu<Pio>),
    Locked(&'a Buses),
    Table(Table<Mmio>, Table<Pio>),
}

impl Dispatch<'_> {
    /// The generation of physmap's MMIO bus this vCPU dispatched in last (0 for the other
    /// bus).
    fn generation(&self) -> u64 {
        match self {
            Dispatch::Physmap(m, _) => m.last_generation(),
            Dispatch::Locked(_) | Dispatch::Table(..) => 0,
        }
    }

    /// Dispatches an exit to a device; false if no device claims it.
    #[inline]
    fn exit(&mut self, exit: &mut Exit<'_>) -> bool {
        match (self, exit) {
            (Dispatch::Physmap(m, _), Exit::MmioRead(a, d)) => m.mmio_read(*a, d).is_ok(),
            (Dispatch::Physmap(m, _), Exit::MmioWrite(a, d)) => m.mmio_write(*a, d).is_ok(),
            (Dispatch::Physmap(_, p), Exit::IoIn(a, d)) => p.pio_read(*a, d).is_ok(),
            (Dispatch::Physmap(_, p), Exit::IoOut(a, d)) => p.pio_write(*a, d).is_ok(),
            (Dispatch::Locked(b), Exit::MmioRead(a, d)) => locked(&b.locked_mmio, *a, d.len())
                .map(|(base, off, dev)| dev.mmio_read(MmioAddress(base), off, d))
                .is_some(),
            (Dispatch::Locked(b), Exit::MmioWrite(a, d)) => locked(&b.locked_mmio, *a, d.len())
                .map(|(base, off, dev)| dev.mmio_write(MmioAddress(base), off, d))
                .is_some(),
            (Dispatch::Locked(b), Exit::IoIn(a, d)) => locked(&b.locked_pio, (*a).into(), d.len())
                .map(|(base, off, dev)| dev.pio_read(PioAddress(base as u16), off as u16, d))
                .is_some(),
            (Dispatch::Locked(b), Exit::IoOut(a, d)) => locked(&b.locked_pio, (*a).into(), d.len())
                .map(|(base, off, dev)| dev.pio_write(PioAddress(base as u16), off as u16, d))
                .is_some(),
            (Dispatch::Table(m, _), Exit::MmioRead(a, d)) => m
                .resolve(*a, d.len())
                .map(|(base, off, dev)| dev.mmio_read(MmioAddress(base), off, d))
                .is_some(),
            (Dispatch::Table(m, _), Exit::MmioWrite(a, d)) => m
                .resolve(*a, d.len())
                .map(|(base, off, dev)| dev.mmio_write(MmioAddress(base), off, d))
                .is_some(),
            (Dispatch::Table(_, p), Exit::IoIn(a, d)) => p
                .resolve((*a).into(), d.len())
                .map(|(base, off, dev)| dev.pio_read(PioAddress(base as u16), off as u16, d))
                .is_some(),
            (Dispatch::Table(_, p), Exit::IoOut(a, d)) => p
                .resolve((*a).into(), d.len())
                .map(|(base, off, dev)| dev.pio_write(PioAddress(base as u16), off as u16, d))
                .is_some(),
        }
    }
}

/// The locked bus's lookup, with the same access check as physmap's.
#[inline]
fn locked<D: ?Sized>(bus: &LockedBus<D>, addr: u64, len: usize) -> Option<(u64, u64, Arc<D>)> {
    bus.resolve(addr, len)
}

enum Exit<'a> {
    MmioRead(u64, &'a mut [u8]),
    MmioWrite(u64, &'a [u8]),
    IoIn(u16, &'a mut [u8]),
    IoOut(u16, &'a [u8]),
}

// ---------------------------------------------------------------- the VM

fn setup_vcpu(vm: &VmFd, id: u64) -> Result<VcpuFd, String> {
    let vcpu = vm
        .create_vcpu(id)
        .map_err(|e| format!("KVM_CREATE_VCPU {id}: {e}"))?;
    let mut sregs = vcpu
        .get_sregs()
        .map_err(|e| format!("KVM_GET_SREGS: {e}"))?;
    // Flat 32-bit protected mode, no paging: no GDT needed, the guest never reloads a
    // segment or takes an interrupt.
    let seg = |selector: u16, type_: u8| kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector,
        type_,
        present: 1,
        dpl: 0,
        db: 1,
        s: 1,
        l: 0,
        g: 1,
        avl: 0,
        unusable: 0,
        padding: 0,
    };
    sregs.cs = seg(0x08, 0xb);
    for s in [
        &mut sregs.ds,
        &mut sregs.es,
        &mut sregs.fs,
        &mut sregs.gs,
        &mut sregs.ss,
    ] {
        *s = seg(0x10, 0x3);
    }
    sregs.cr0 = (sregs.cr0 | 1) & !(1 << 31);
    sregs.efer = 0;
    vcpu.set_sregs(&sregs)
        .map_err(|e| format!("KVM_SET_SREGS: {e}"))?;
    let mut regs = vcpu.get_regs().map_err(|e| format!("KVM_GET_REGS: {e}"))?;
    regs.rip = CODE;
    regs.rflags = 2;
    regs.rsi = id;
    regs.rsp = 0x8_0000 - id * 0x1000;
    vcpu.set_regs(&regs)
        .map_err(|e| format!("KVM_SET_REGS: {e}"))?;
    Ok(vcpu)
}

/// Serves an exit no device claimed from guest memory when a region holds it (its memslot is
/// being replaced, or it is ROM being written); false if nothing holds it.
fn from_memory(memory: &PhysAddressSpace<KvmRegion>, exit: &mut Exit<'_>) -> bool {
    let mem = memory.memory();
    match exit {
        Exit::MmioRead(a, d) => {
            let ok = mem.read_slice(d, GuestAddress(*a)).is_ok();
            if !ok {
                d.fill(0xff);
            }
            ok
        }
        Exit::MmioWrite(a, d) => match mem.find_region(GuestAddress(*a)) {
            Some(r) if r.readonly => true, // a write to ROM: dropped
            Some(_) => mem.write_slice(d, GuestAddress(*a)).is_ok(),
            None => false,
        },
        Exit::IoIn(_, d) => {
            d.fill(0xff);
            false
        }
        Exit::IoOut(..) => false,
    }
}

/// Runs the guest; see the module docs.
pub fn run(opts: &Options) -> Result<Report, String> {
    kvm_usable()?;
    let kvm = Kvm::new().map_err(|e| e.to_string())?;
    let vm = kvm.create_vm().map_err(|e| format!("KVM_CREATE_VM: {e}"))?;
    vm.set_tss_address(0xfffb_d000)
        .map_err(|e| format!("KVM_SET_TSS_ADDR: {e}"))?;

    // Guest memory: RAM below the ROM and above 1 MiB, the ROM; the block comes and goes.
    let rom = KvmRegion::new(ROM.0, ROM.1, true);
    let memory = PhysAddressSpace::new([
        KvmRegion::new(0, ROM.0 as usize, false),
        rom.clone(),
        KvmRegion::new(0x10_0000, 0x10_0000, false),
    ])
    .map_err(|e| e.to_string())?;
    let mem = memory.memory();
    mem.write_slice(GUEST, GuestAddress(CODE))
        .map_err(|e| e.to_string())?;
    mem.write_obj(BAR[0] as u32, GuestAddress(MAILBOX))
        .map_err(|e| e.to_string())?;
    mem.write_slice(b"ROM!", GuestAddress(ROM.0))
        .map_err(|e| e.to_string())?;
    drop(mem);
    let mut memslots = Memslots::new(&vm);
    memslots.sync(memory.current())?;

    let misroutes = Arc::new(AtomicU64::new(0));
    let ports = Arc::new(Ports {
        uart_bytes: AtomicU64::new(0),
        errors: Default::default(),
        misroutes: misroutes.clone(),
    });
    let buses = Buses::new(&misroutes, &ports);
    let vcpus: Vec<VcpuFd> = (0..opts.vcpus as u64)
        .map(|id| setup_vcpu(&vm, id))
        .collect::<Result<_, _>>()?;

    let stop = AtomicBool::new(false);
    let (unclaimed, served) = (AtomicU64::new(0), AtomicU64::new(0));
    let (mut bar_moves, mut block_changes, mut rom_toggles) = (0u64, 0u64, 0u64);
    let start = Instant::now();
    let results: Vec<Result<VcpuRun, String>> = std::thread::scope(|s| {
        let handles: Vec<_> = vcpus
            .into_iter()
            .map(|mut vcpu| {
                let (buses, memory, stop) = (&buses, &memory, &stop);
                let (unclaimed, served) = (&unclaimed, &served);
                let kind = opts.bus;
                s.spawn(move || -> Result<VcpuRun, String> {
                    let mut dispatch = match kind {
                        BusKind::Physmap => Dispatch::Physmap(buses.mmio.vcpu(), buses.pio.vcpu()),
                        BusKind::RwLock => Dispatch::Locked(buses),
                        BusKind::Table => {
                            // The BAR's device at its other place too: the table never changes.
                            let bar = buses.mmio.device(BAR[0]).map(|(_, d)| (BAR[1], 0x1000, d));
                            Dispatch::Table(
                                Table::of(&buses.mmio, bar),
                                Table::of(&buses.pio, None),
                            )
                        }
                    };
                    let (mut exits, mut cycles) = (0u64, 0u64);
                    // Each exit's dispatch time, for the median (at most 8M exits kept).
                    let mut samples: Vec<u32> = Vec::with_capacity(1 << 20);
                    // Relaxed: a stop flag; every exit comes back here.
                    while !stop.load(Ordering::Relaxed) {
                        let mut exit = match vcpu.run() {
                            Ok(VcpuExit::MmioRead(a, d)) => Exit::MmioRead(a, d),
                            Ok(VcpuExit::MmioWrite(a, d)) => Exit::MmioWrite(a, d),
                            Ok(VcpuExit::IoIn(p, d)) => Exit::IoIn(p, d),
                            Ok(VcpuExit::IoOut(p, d)) => Exit::IoOut(p, d),
                            Ok(VcpuExit::Intr) => continue,
                            Ok(other) => return Err(format!("unexpected exit {other:?}")),
                            Err(e) if e.errno() == libc_eintr() => continue,
                            Err(e) => return Err(format!("KVM_RUN: {e}")),
                        };
                        // Timed: the bus (lookup, access check, device call).
                        let before = dispatch.generation();
                        let t0 = cycles_now();
                        let claimed = dispatch.exit(&mut exit);
                        let took = cycles_now() - t0;
                        cycles += took;
                        if samples.len() < 8 << 20 {
                            let new = (dispatch.generation() != before) as u32;
                            let took = took.min((AFTER_COMMIT - 1) as u64) as u32;
                            samples.push(took | (new * AFTER_COMMIT));
                        }
                        exits += 1;
                        if !claimed {
                            if from_memory(memory, &mut exit) {
                                served.fetch_add(1, Ordering::Relaxed);
                            } else {
                                unclaimed.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                    Ok((exits, cycles, samples))
                })
            })
            .collect();

        // The control plane.
        let mut tick = 0u64;
        let mut bar_at = 0;
        let mut block: Option<Arc<KvmRegion>> = None;
        let mut rom_readonly = true;
        let outcome = (|| -> Result<(), String> {
            while start.elapsed() < Duration::from_secs_f64(opts.seconds) {
                std::thread::sleep(Duration::from_micros(500));
                if !opts.control_plane {
                    continue;
                }
                tick += 1;
                // Move the BAR, wait for in-flight dispatches, then tell the guest.
                let to = 1 - bar_at;
                match opts.bus {
                    BusKind::Physmap => buses
                        .mmio
                        .update_range(BAR[bar_at], BAR[to], 0x1000)
                        .map_err(|e| e.to_string())?,
                    BusKind::RwLock => buses.locked_mmio.move_device(BAR[bar_at], BAR[to]),
                    // Listed at both places.
                    BusKind::Table => {}
                }
                memory
                    .memory()
                    .write_obj(BAR[to] as u32, GuestAddress(MAILBOX))
                    .map_err(|e| e.to_string())?;
                bar_at = to;
                bar_moves += 1;
                if tick % 4 == 0 {
                    // Plug or unplug the block.
                    let mut u = memory.update();
                    match block.take() {
                        Some(_) => {
                            drop(u.remove(GuestAddress(BLOCK.0)).map_err(|e| e.to_string())?)
                        }
                        None => {
                            let r = KvmRegion::new(BLOCK.0, BLOCK.1, false);
                            r.mmap
                                .write_slice(b"PLUG", MemoryRegionAddress(0))
                                .map_err(|e| e.to_string())?;
                            u.insert(r.clone()).map_err(|e| e.to_string())?;
                            block = Some(r);
                        }
                    }
                    u.commit().map_err(|e| e.to_string())?;
                    memslots.sync(memory.current())?;
                    block_changes += 1;
                }
                if tick % 8 == 2 {
                    // Toggle the ROM between ROM and RAM (same contents).
                    rom_readonly = !rom_readonly;
                    let mut u = memory.update();
                    u.remove(GuestAddress(ROM.0)).map_err(|e| e.to_string())?;
                    u.insert(rom.with_flag(rom_readonly))
                        .map_err(|e| e.to_string())?;
                    u.commit().map_err(|e| e.to_string())?;
                    memslots.sync(memory.current())?;
                    rom_toggles += 1;
                }
            }
            Ok(())
        })();
        stop.store(true, Ordering::Relaxed);
        let mut results: Vec<_> = handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err("vCPU thread panicked".into()))
            })
            .collect();
        if let Err(e) = outcome {
            results.push(Err(format!("control plane: {e}")));
        }
        results
    });
    let elapsed = start.elapsed().as_secs_f64();
    let mut report = Report {
        elapsed,
        bar_moves,
        block_changes,
        rom_toggles,
        memslot_updates: memslots.updates,
        misroutes: misroutes.load(Ordering::Relaxed),
        unclaimed: unclaimed.load(Ordering::Relaxed),
        from_memory: served.load(Ordering::Relaxed),
        ..Report::default()
    };
    let (mut cycles, mut samples) = (0, Vec::new());
    for r in results {
        let (exits, c, s) = r?;
        report.exits.push(exits);
        cycles += c;
        samples.extend(s);
    }
    for (i, e) in ports.errors.iter().enumerate() {
        report.guest_errors[i] = e.load(Ordering::Relaxed);
    }
    let mem = memory.memory();
    for id in 0..opts.vcpus as u64 {
        report.iterations.push(
            mem.read_obj::<u32>(GuestAddress(ITERATIONS + 4 * id))
                .unwrap_or(0) as u64,
        );
        report.moved_retries += mem
            .read_obj::<u32>(GuestAddress(MOVED + 4 * id))
            .unwrap_or(0) as u64;
    }
    let regions: BTreeMap<u64, (u64, bool)> = mem
        .iter()
        .map(|r| (r.start_addr().0, (r.len(), r.readonly)))
        .collect();
    report.memslots_match = regions == memslots.told;
    let per_ns = cycles_per_ns();
    report.dispatch_mean_ns = cycles as f64 / per_ns / report.total_exits().max(1) as f64;
    let after: Vec<u64> = samples
        .iter()
        .filter(|&&s| s & AFTER_COMMIT != 0)
        .map(|&s| (s & !AFTER_COMMIT) as u64)
        .collect();
    report.after_commit_share = after.len() as f64 / samples.len().max(1) as f64;
    report.after_commit_mean_ns =
        after.iter().sum::<u64>() as f64 / per_ns / after.len().max(1) as f64;
    let mut cycles: Vec<u32> = samples.iter().map(|&s| s & !AFTER_COMMIT).collect();
    cycles.sort_unstable();
    report.dispatch_ns = median_ns(&cycles, per_ns);
    report.timer_ns = timer_ns(per_ns);
    Ok(report)
}

/// The median of sorted TSC samples, in ns, interpolated within the TSC's step.
///
/// A guest's TSC may advance in steps (26 cycles, 10 ns, on the nested machines this was
/// measured on), so the plain median jumps by whole steps between runs whose distributions
/// barely differ. Each sample value `v` stands for the interval `v - step/2 .. v + step/2`
/// (`step`: the smallest gap between two distinct values), its samples spread evenly over
/// it, the usual median of grouped data.
fn median_ns(sorted: &[u32], per_ns: f64) -> f64 {
    let Some(&mid) = sorted.get(sorted.len() / 2) else {
        return 0.0;
    };
    let step = sorted
        .windows(2)
        .filter(|w| w[1] > w[0])
        .map(|w| w[1] - w[0])
        .min()
        .unwrap_or(1) as f64;
    let below = sorted.partition_point(|&c| c < mid) as f64;
    let at = sorted.partition_point(|&c| c <= mid) as f64 - below;
    let half = sorted.len() as f64 / 2.0;
    (mid as f64 - step / 2.0 + step * (half - below) / at) / per_ns
}

fn libc_eintr() -> i32 {
    4 // EINTR on Linux
}

#[inline]
fn cycles_now() -> u64 {
    // SAFETY: rdtsc has no preconditions on x86-64.
    unsafe { std::arch::x86_64::_rdtsc() }
}

/// The median of 100,001 back-to-back TSC readings' differences, ns: what the two readings
/// around a dispatch add to it.
fn timer_ns(per_ns: f64) -> f64 {
    let mut d: Vec<u32> = (0..100_001)
        .map(|_| {
            let t0 = cycles_now();
            (cycles_now() - t0) as u32
        })
        .collect();
    d.sort_unstable();
    median_ns(&d, per_ns)
}

/// TSC cycles per nanosecond, measured against the monotonic clock.
fn cycles_per_ns() -> f64 {
    let (t0, c0) = (Instant::now(), cycles_now());
    std::thread::sleep(Duration::from_millis(20));
    (cycles_now() - c0) as f64 / t0.elapsed().as_nanos() as f64
}
