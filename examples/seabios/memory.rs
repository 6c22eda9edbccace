//! Guest memory of the SeaBIOS machine: RAM, the BIOS flash at 0xfffc0000 and its last
//! 128 KiB aliased at 0xe0000, and the window 0xc0000-0xfffff whose thirteen segments the
//! host bridge's PAM registers switch between the PCI side (the BIOS alias, or nothing) and
//! RAM. The map is a [`PhysAddressSpace`] of [`Region`]s; KVM memslots follow it only by
//! replaying `Snapshot::diff` ([`Memslots::sync`]).

use physmap::vm_memory::{PhysAddressSpace, PhysGuestMemory};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use kvm_bindings::{kvm_userspace_memory_region, KVM_MEM_READONLY};
use kvm_ioctls::VmFd;
use vm_memory::bitmap::BS;
use vm_memory::{
    Bytes, GuestAddress, GuestAddressSpace, GuestMemoryBackend, GuestMemoryError,
    GuestMemoryRegion, GuestMemoryRegionBytes, GuestRegionMmap, GuestUsize, MemoryRegionAddress,
    VolatileSlice,
};

/// Guest RAM (QEMU's default `-m 128`): below 640 KiB, the PAM window's shadow RAM, and from
/// 1 MiB on.
pub const RAM_SIZE: u64 = 128 << 20;
/// The BIOS flash: Debian's `bios-256k.bin`, mapped at the top of 4 GiB as QEMU does.
pub const BIOS_SIZE: u64 = 256 << 10;
pub const BIOS_BASE: u64 = (1 << 32) - BIOS_SIZE;
/// QEMU's `isa-bios`: the flash's last 128 KiB also answer at 0xe0000-0xfffff on the PCI side
/// of the PAM window (`x86_bios_rom_init`). SeaBIOS relies on it: the reset vector jumps to
/// F000:E05B, and its code runs from there until it has shadowed itself.
pub const BIOS_ALIAS: u64 = 0xe_0000;
/// The window the PAM registers govern.
pub const PAM_WINDOW: std::ops::Range<u64> = 0xc_0000..0x10_0000;
/// The memory block the control plane plugs and unplugs (above RAM, below the PCI window).
pub const BLOCK: (u64, u64) = (0x6000_0000, 2 << 20);

/// What a region is, and so where a write to it goes (reads always see its backing).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Read-write RAM.
    Ram,
    /// PAM "read enable" only: reads see RAM; writes go to the PCI side, where nothing takes
    /// them in 0xc0000-0xdffff and the BIOS flash ignores them above: dropped.
    RamReadOnly,
    /// The flash or its alias (PAM "disabled": reads and writes go to PCI): writes dropped.
    Rom,
    /// PAM "write enable" only over the flash alias: reads see the flash, writes go to the
    /// shadow RAM under it (the state a real BIOS copies itself with: `mov` from ROM to the
    /// same address in RAM). KVM maps the flash read-only; each write exits and is written
    /// into RAM here.
    RomWritesRam,
}

/// A guest memory region: `len` bytes of a backing mapping from `offset`, at `start`.
/// Several regions may share a backing (RAM under the PAM window and above it; the flash
/// and its alias).
pub struct Region {
    backing: Arc<GuestRegionMmap<()>>,
    offset: u64,
    start: GuestAddress,
    len: u64,
    pub kind: Kind,
}

impl Region {
    fn new(
        backing: &Arc<GuestRegionMmap<()>>,
        offset: u64,
        start: u64,
        len: u64,
        kind: Kind,
    ) -> Arc<Region> {
        assert!(offset + len <= backing.len(), "region past its backing");
        Arc::new(Region {
            backing: backing.clone(),
            offset,
            start: GuestAddress(start),
            len,
            kind,
        })
    }
    fn host_address(&self) -> u64 {
        self.backing
            .get_host_address(MemoryRegionAddress(self.offset))
            .expect("mmap regions have host addresses") as u64
    }
    /// Same backing, same place, same kind: one memslot's worth of equality.
    fn same(&self, other: &Region) -> bool {
        Arc::ptr_eq(&self.backing, &other.backing)
            && (self.offset, self.start, self.len, self.kind)
                == (other.offset, other.start, other.len, other.kind)
    }
    pub fn readonly(&self) -> bool {
        self.kind != Kind::Ram
    }
}

impl GuestMemoryRegion for Region {
    type B = ();
    fn len(&self) -> GuestUsize {
        self.len
    }
    fn start_addr(&self) -> GuestAddress {
        self.start
    }
    fn bitmap(&self) -> BS<'_, ()> {}
    fn get_host_address(&self, addr: MemoryRegionAddress) -> Result<*mut u8, GuestMemoryError> {
        if addr.0 >= self.len {
            return Err(GuestMemoryError::InvalidBackendAddress);
        }
        self.backing
            .get_host_address(MemoryRegionAddress(self.offset + addr.0))
    }
    fn get_slice(
        &self,
        offset: MemoryRegionAddress,
        count: usize,
    ) -> Result<VolatileSlice<'_, BS<'_, ()>>, GuestMemoryError> {
        match offset.0.checked_add(count as u64) {
            Some(end) if end <= self.len => self
                .backing
                .get_slice(MemoryRegionAddress(self.offset + offset.0), count),
            _ => Err(GuestMemoryError::InvalidBackendAddress),
        }
    }
}

impl GuestMemoryRegionBytes for Region {}

/// The PAM segment holding `addr` (0xc0000-0xfffff): (first byte, length, register 0-6
/// (PAM0 at config 0x59), shift of its nibble). 82441FX datasheet: PAM0[7:4] covers
/// 0xf0000-0xfffff (PAM0[3:0] is reserved); PAM1-PAM6 cover 0xc0000-0xeffff in 16 KiB
/// segments, low nibble first. In a nibble, bit 0 is read enable, bit 1 write enable.
pub fn pam_segment(addr: u64) -> Option<(u64, u64, usize, u32)> {
    match addr {
        0xf_0000..=0xf_ffff => Some((0xf_0000, 0x1_0000, 0, 4)),
        0xc_0000..=0xe_ffff => {
            let i = (addr - 0xc_0000) / 0x4000;
            Some((
                0xc_0000 + i * 0x4000,
                0x4000,
                1 + i as usize / 2,
                (i as u32 % 2) * 4,
            ))
        }
        _ => None,
    }
}

fn attributes(pam: &[u8; 7], addr: u64) -> u8 {
    let (_, _, reg, shift) = pam_segment(addr).expect("in the PAM window");
    (pam[reg] >> shift) & 3
}

/// The window's regions for PAM registers `pam`, adjacent segments of one kind merged.
fn pam_regions(
    pam: &[u8; 7],
    ram: &Arc<GuestRegionMmap<()>>,
    bios: &Arc<GuestRegionMmap<()>>,
) -> Vec<Arc<Region>> {
    // (start, len, backing is RAM, kind)
    let mut runs: Vec<(u64, u64, bool, Kind)> = Vec::new();
    let mut addr = PAM_WINDOW.start;
    while addr < PAM_WINDOW.end {
        let (start, len, _, _) = pam_segment(addr).expect("in the window");
        let a = attributes(pam, start);
        let (read_ram, write_ram) = (a & 1 != 0, a & 2 != 0);
        let run = if read_ram {
            Some((
                true,
                if write_ram {
                    Kind::Ram
                } else {
                    Kind::RamReadOnly
                },
            ))
        } else if start >= BIOS_ALIAS {
            Some((
                false,
                if write_ram {
                    Kind::RomWritesRam
                } else {
                    Kind::Rom
                },
            ))
        } else {
            None // the PCI side of 0xc0000-0xdffff: nothing there
        };
        if let Some((is_ram, kind)) = run {
            match runs.last_mut() {
                Some(last) if last.0 + last.1 == start && last.2 == is_ram && last.3 == kind => {
                    last.1 += len
                }
                _ => runs.push((start, len, is_ram, kind)),
            }
        }
        addr = start + len;
    }
    runs.into_iter()
        .map(|(start, len, is_ram, kind)| {
            if is_ram {
                Region::new(ram, start, start, len, kind)
            } else {
                // The alias shows the flash's last 128 KiB: 0xe0000 is flash offset 0x20000.
                Region::new(bios, start - (0x10_0000 - BIOS_SIZE), start, len, kind)
            }
        })
        .collect()
}

/// Keeps KVM's memslots equal to the memory map by replaying `Snapshot::diff` (the listener
/// recipe of the README): deletions first, then additions.
pub struct Memslots {
    vm: Arc<VmFd>,
    slots: HashMap<u64, u32>,
    /// What this listener told KVM: start -> (length, read-only).
    pub told: BTreeMap<u64, (u64, bool)>,
    free: Vec<u32>,
    next: u32,
    /// What the kernel knows: kept until the memslots no longer use its regions.
    applied: PhysGuestMemory<Region>,
    pub updates: u64,
}

impl Memslots {
    fn new(vm: Arc<VmFd>) -> Self {
        let empty = PhysAddressSpace::<Region>::new([])
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

    fn set(&mut self, slot: u32, region: Option<&Region>, start: u64) -> Result<(), String> {
        let r = kvm_userspace_memory_region {
            slot,
            flags: match region {
                Some(r) if r.readonly() => KVM_MEM_READONLY,
                _ => 0,
            },
            guest_phys_addr: start,
            memory_size: region.map_or(0, |r| r.len),
            userspace_addr: region.map_or(0, |r| r.host_address()),
        };
        // SAFETY: the host range is `r.len` bytes of a live mapping (its backing), kept alive
        // by `applied` (or the snapshot replacing it) until this memslot is deleted; a
        // deletion (size 0) maps nothing.
        unsafe { self.vm.set_user_memory_region(r) }
            .map_err(|e| format!("KVM_SET_USER_MEMORY_REGION slot {slot} at {start:#x}: {e}"))?;
        match region {
            Some(r) => self.told.insert(start, (r.len, r.readonly())),
            None => self.told.remove(&start),
        };
        self.updates += 1;
        Ok(())
    }

    /// Brings the memslots from `applied` to `now`.
    fn sync(&mut self, now: PhysGuestMemory<Region>) -> Result<(), String> {
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
        drop(changes);
        drop(old);
        Ok(())
    }
}

/// Where an exit that no device claimed went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Served {
    /// Read from or written to guest memory (a memslot being replaced, or a PAM
    /// write-enable segment's RAM).
    Memory,
    /// A write to ROM or to read-only RAM: dropped, as the hardware drops it.
    Dropped,
    /// Nothing there: reads all ones, writes go nowhere.
    Unclaimed,
}

/// The machine's memory: the map, its backings, the PAM state it was built from, and the
/// memslots that follow it.
pub struct Memory {
    pub space: PhysAddressSpace<Region>,
    ram: Arc<GuestRegionMmap<()>>,
    bios: Arc<GuestRegionMmap<()>>,
    /// The PAM registers the window was last built from (7 bytes; read by write exits into
    /// the window).
    pam: AtomicU64,
    /// Memory map edits and the KVM memslot replay, one at a time.
    slots: Mutex<Memslots>,
    block: Mutex<Option<Arc<Region>>>,
}

impl Memory {
    /// RAM, the flash holding `bios`, and the window as PAM registers at reset (all 0: the
    /// PCI side, i.e. the flash alias at 0xe0000-0xfffff) leave it.
    pub fn new(vm: Arc<VmFd>, bios: &[u8]) -> Result<Memory, String> {
        if bios.len() as u64 != BIOS_SIZE {
            return Err(format!(
                "the BIOS image is {} bytes, not {BIOS_SIZE}",
                bios.len()
            ));
        }
        let mmap = |len| {
            GuestRegionMmap::<()>::from_range(GuestAddress(0), len as usize, None)
                .map(Arc::new)
                .map_err(|e| format!("mmap: {e}"))
        };
        let ram = mmap(RAM_SIZE)?;
        let flash = mmap(BIOS_SIZE)?;
        flash
            .write_slice(bios, MemoryRegionAddress(0))
            .map_err(|e| e.to_string())?;
        let pam = [0u8; 7];
        let mut regions = vec![
            Region::new(&ram, 0, 0, 0xa_0000, Kind::Ram),
            Region::new(&ram, 0x10_0000, 0x10_0000, RAM_SIZE - 0x10_0000, Kind::Ram),
            Region::new(&flash, 0, BIOS_BASE, BIOS_SIZE, Kind::Rom),
        ];
        regions.extend(pam_regions(&pam, &ram, &flash));
        let space = PhysAddressSpace::new(regions).map_err(|e| e.to_string())?;
        let memory = Memory {
            space,
            ram,
            bios: flash,
            pam: AtomicU64::new(0),
            slots: Mutex::new(Memslots::new(vm)),
            block: Mutex::new(None),
        };
        memory.lock().sync(memory.space.current())?;
        Ok(memory)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Memslots> {
        self.slots.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Rebuilds the PAM window for registers `pam` (config 0x59-0x5f) and replays the diff
    /// into KVM's memslots. Returns whether the map changed.
    pub fn set_pam(&self, pam: [u8; 7]) -> Result<bool, String> {
        let mut slots = self.lock();
        let mut word = [0u8; 8];
        word[..7].copy_from_slice(&pam);
        // Relaxed: read by write exits into the window, which then act on the segment
        // attributes they see; the map itself is published by the commit below.
        self.pam.store(u64::from_le_bytes(word), Ordering::Relaxed);
        let want = pam_regions(&pam, &self.ram, &self.bios);
        let now = self.space.current();
        let have: Vec<Arc<Region>> = now
            .snapshot()
            .range(PAM_WINDOW)
            .expect("a valid range")
            .map(|(_, r)| r.clone())
            .collect();
        if have.len() == want.len() && have.iter().zip(&want).all(|(a, b)| a.same(b)) {
            return Ok(false);
        }
        let mut u = self.space.update();
        for r in have.iter().filter(|r| !want.iter().any(|w| w.same(r))) {
            u.remove(r.start).map_err(|e| e.to_string())?;
        }
        for w in want.iter().filter(|w| !have.iter().any(|r| r.same(w))) {
            u.insert(w.clone()).map_err(|e| e.to_string())?;
        }
        u.commit().map_err(|e| e.to_string())?;
        slots.sync(self.space.current())?;
        Ok(true)
    }

    /// Plugs the memory block ("PLUG" at its start) or unplugs it.
    pub fn toggle_block(&self) -> Result<(), String> {
        let mut slots = self.lock();
        let mut block = self.block.lock().unwrap_or_else(|e| e.into_inner());
        let mut u = self.space.update();
        match block.take() {
            Some(_) => drop(u.remove(GuestAddress(BLOCK.0)).map_err(|e| e.to_string())?),
            None => {
                let mmap = Arc::new(
                    GuestRegionMmap::<()>::from_range(GuestAddress(0), BLOCK.1 as usize, None)
                        .map_err(|e| format!("mmap: {e}"))?,
                );
                mmap.write_slice(b"PLUG", MemoryRegionAddress(0))
                    .map_err(|e| e.to_string())?;
                let r = Region::new(&mmap, 0, BLOCK.0, BLOCK.1, Kind::Ram);
                u.insert(r.clone()).map_err(|e| e.to_string())?;
                *block = Some(r);
            }
        }
        u.commit().map_err(|e| e.to_string())?;
        slots.sync(self.space.current())
    }

    /// Serves an MMIO read no device claimed: from guest memory if a region holds it (its
    /// memslot is being replaced), else all ones.
    pub fn read_exit(&self, addr: u64, data: &mut [u8]) -> Served {
        if self
            .space
            .memory()
            .read_slice(data, GuestAddress(addr))
            .is_ok()
        {
            Served::Memory
        } else {
            data.fill(0xff);
            Served::Unclaimed
        }
    }

    /// Serves an MMIO write no device claimed, as the region (or the PAM segment) under it
    /// says.
    pub fn write_exit(&self, addr: u64, data: &[u8]) -> Served {
        let mem = self.space.memory();
        let to_ram =
            |ram: &GuestRegionMmap<()>| match ram.write_slice(data, MemoryRegionAddress(addr)) {
                Ok(()) => Served::Memory,
                Err(_) => Served::Unclaimed,
            };
        match mem.find_region(GuestAddress(addr)) {
            Some(r) => match r.kind {
                Kind::Ram => match mem.write_slice(data, GuestAddress(addr)) {
                    Ok(()) => Served::Memory,
                    Err(_) => Served::Unclaimed,
                },
                Kind::RamReadOnly | Kind::Rom => Served::Dropped,
                Kind::RomWritesRam => to_ram(&self.ram),
            },
            // A write-enabled segment of 0xc0000-0xdffff whose reads go to the (empty) PCI
            // side has no region: its writes still reach the shadow RAM.
            None if PAM_WINDOW.contains(&addr) => {
                let pam = self.pam.load(Ordering::Relaxed).to_le_bytes();
                let pam: [u8; 7] = pam[..7].try_into().expect("7 bytes");
                if attributes(&pam, addr) & 2 != 0 {
                    to_ram(&self.ram)
                } else {
                    Served::Unclaimed
                }
            }
            None => Served::Unclaimed,
        }
    }

    /// Memslot updates made so far.
    pub fn memslot_updates(&self) -> u64 {
        self.lock().updates
    }

    /// Whether the memslots KVM has are exactly the map's regions (start, length,
    /// read-only).
    pub fn memslots_match(&self) -> bool {
        let slots = self.lock();
        let regions: BTreeMap<u64, (u64, bool)> = self
            .space
            .memory()
            .iter()
            .map(|r| (r.start.0, (r.len, r.readonly())))
            .collect();
        regions == slots.told
    }

    /// The map's regions in the PAM window: (start, length, kind), for the report.
    pub fn window(&self) -> Vec<(u64, u64, Kind)> {
        self.space
            .current()
            .snapshot()
            .range(PAM_WINDOW)
            .expect("a valid range")
            .map(|(_, r)| (r.start.0, r.len, r.kind))
            .collect()
    }
}
