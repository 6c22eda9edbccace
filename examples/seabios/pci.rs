//! PCI bus 0 of the SeaBIOS machine, reached through configuration mechanism #1 (ports
//! 0xcf8/0xcfc): an i440FX host bridge with its PAM registers, a PIIX3 ISA bridge, and the
//! three physmap test devices with 32-bit, 64-bit and 64-bit prefetchable memory BARs, I/O
//! BARs and an expansion ROM.
//!
//! Config space is modelled as QEMU models it (`hw/pci/pci.c`): 256 bytes and a write mask,
//! so a BAR written with all ones reads back its size mask; after every write to the command
//! register, a BAR or the ROM BAR, each BAR's decoded placement is recomputed
//! (`pci_update_mappings`) and the difference applied to the buses: an `insert` when a BAR
//! starts decoding, `update_range` when it moves, `remove` when it stops. A placement is
//! decoded as QEMU's `pci_bar_address` decodes it: memory BARs only with the command's
//! memory bit, I/O BARs with its I/O bit, the ROM BAR only with its own enable bit as well;
//! address 0, a range that wraps, a 32-bit BAR reaching 0xffffffff (the sizing pattern), or
//! an I/O range past 0xffff decodes nowhere.

use crate::buses::{Buses, Device};
use crate::memory::Memory;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use vm_device::bus::{PioAddress, PioAddressOffset};
use vm_device::DevicePio;

/// Who wrote config space.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// The guest, through 0xcf8/0xcfc: the firmware, or our option ROM.
    Guest,
    /// The VMM's control plane.
    ControlPlane,
}

/// A BAR's kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BarKind {
    Io,
    Mem32,
    Mem64 { prefetchable: bool },
}

/// A BAR: kind, size (a power of two) and the device answering there.
#[derive(Clone)]
pub struct Bar {
    pub kind: BarKind,
    pub size: u64,
    pub device: Device,
}

/// One change a config write made to a placement: (device/function, BAR 0-5 or 6 for the
/// ROM, new placement or `None`), with who made it.
#[derive(Debug, Clone)]
pub struct Placement {
    pub devfn: u8,
    pub bar: usize,
    pub at: Option<u64>,
    pub origin: Origin,
}

/// What happened on the bus, counted.
#[derive(Default)]
pub struct PciStats {
    /// Placements applied (insert, update_range, remove), by origin.
    pub guest_moves: AtomicU64,
    pub control_moves: AtomicU64,
    /// Placements the bus refused (a BAR overlapping another device): left undecoded.
    pub conflicts: AtomicU64,
    /// PAM writes that changed the memory map, by origin.
    pub guest_pam: AtomicU64,
    pub control_pam: AtomicU64,
    /// Every placement, in order (for checking the firmware's log against the bus).
    pub history: Mutex<Vec<Placement>>,
    /// The first error a config write hit (a memslot update failing).
    pub error: Mutex<Option<String>>,
    /// The guest's PAM writes that changed the map: (time since reset, PAM0-PAM6, how long
    /// the map edit and the memslot replay took).
    pub guest_pam_log: Mutex<Vec<(std::time::Duration, [u8; 7], std::time::Duration)>>,
}

/// One PCI function's configuration space.
pub struct Function {
    pub devfn: u8,
    cfg: [u8; 256],
    wmask: [u8; 256],
    bars: [Option<Bar>; 6],
    rom: Option<Bar>,
    placed: [Option<u64>; 7],
    /// The host bridge: writes to 0x59-0x5f switch the PAM window.
    host_bridge: bool,
}

/// i440FX PAM0..PAM6 (82441FX datasheet, 3.2.20-3.2.26; QEMU `I440FX_PAM`).
pub const PAM0: usize = 0x59;

impl Function {
    fn new(devfn: u8, vendor: u16, device: u16, class: u32, revision: u8) -> Function {
        let mut f = Function {
            devfn,
            cfg: [0; 256],
            wmask: [0; 256],
            bars: Default::default(),
            rom: None,
            placed: [None; 7],
            host_bridge: false,
        };
        f.cfg[0..2].copy_from_slice(&vendor.to_le_bytes());
        f.cfg[2..4].copy_from_slice(&device.to_le_bytes());
        f.cfg[8] = revision;
        f.cfg[9..12].copy_from_slice(&class.to_le_bytes()[..3]);
        // Command: I/O, memory, bus master, parity, SERR, interrupt disable (QEMU's wmask).
        f.wmask[4..6].copy_from_slice(&0x0547u16.to_le_bytes());
        f.wmask[0x0c] = 0xff; // cache line size
        f.wmask[0x0d] = 0xff; // latency timer
        f.wmask[0x3c] = 0xff; // interrupt line
        f
    }

    /// The i440FX host bridge, 8086:1237, with QEMU's subsystem IDs 1af4:1100: SeaBIOS takes
    /// its QEMU path on seeing them (`qemu_detect`).
    pub fn host_bridge() -> Function {
        let mut f = Function::new(0, 0x8086, 0x1237, 0x06_0000, 0x02);
        f.cfg[0x2c..0x30].copy_from_slice(&[0xf4, 0x1a, 0x00, 0x11]);
        f.wmask[PAM0..PAM0 + 7].fill(0xff);
        f.cfg[0x72] = 0x02; // SMRAM, as QEMU resets it
        f.wmask[0x72] = 0x78;
        f.host_bridge = true;
        f
    }

    /// The PIIX3 PCI-to-ISA bridge (8086:7000) at 00:01.0; SeaBIOS programs its PIRQ routing
    /// registers 0x60-0x63.
    pub fn isa_bridge() -> Function {
        let mut f = Function::new(1 << 3, 0x8086, 0x7000, 0x06_0100, 0x00);
        f.cfg[0x60..0x64].fill(0x80); // PIRQ routing disabled at reset
        f.wmask[0x60..0x64].fill(0x8f);
        f
    }

    /// A physmap test device 1234:`device` at slot `slot`: class 0xff8000 (unassigned), INTA.
    pub fn test_device(slot: u8, device: u16, bars: &[(usize, Bar)], rom: Option<Bar>) -> Function {
        let mut f = Function::new(slot << 3, 0x1234, device, 0xff_8000, 0x01);
        f.cfg[0x2c..0x30].copy_from_slice(&[0x34, 0x12, 0x00, 0x00]);
        f.cfg[0x3d] = 1;
        for (i, bar) in bars {
            let reg = 0x10 + 4 * i;
            let low_mask = !(bar.size - 1);
            let flags: u32 = match bar.kind {
                BarKind::Io => 1,
                BarKind::Mem32 => 0,
                BarKind::Mem64 { prefetchable } => 0x4 | if prefetchable { 0x8 } else { 0 },
            };
            f.cfg[reg..reg + 4].copy_from_slice(&flags.to_le_bytes());
            let writable = match bar.kind {
                BarKind::Io => low_mask as u32 & !0x3,
                _ => low_mask as u32 & !0xf,
            };
            f.wmask[reg..reg + 4].copy_from_slice(&writable.to_le_bytes());
            if let BarKind::Mem64 { .. } = bar.kind {
                f.wmask[reg + 4..reg + 8].copy_from_slice(&((low_mask >> 32) as u32).to_le_bytes());
            }
            f.bars[*i] = Some(bar.clone());
        }
        if let Some(rom) = rom {
            let writable = (!(rom.size - 1) as u32 & 0xffff_f800) | 1;
            f.wmask[0x30..0x34].copy_from_slice(&writable.to_le_bytes());
            f.rom = Some(rom);
        }
        f
    }

    fn dword(&self, reg: usize) -> u32 {
        u32::from_le_bytes(self.cfg[reg..reg + 4].try_into().expect("4 bytes"))
    }

    /// BAR `i`'s (or the ROM's, `i` = 6) size and device.
    pub fn bar(&self, i: usize) -> Option<&Bar> {
        if i == 6 {
            self.rom.as_ref()
        } else {
            self.bars[i].as_ref()
        }
    }

    /// Where BAR `i` decodes now (QEMU's `pci_bar_address`), if anywhere.
    fn decode(&self, i: usize) -> Option<u64> {
        let bar = self.bar(i)?;
        let command = self.cfg[4];
        let (io, mem) = (command & 1 != 0, command & 2 != 0);
        let size = bar.size;
        if i == 6 {
            let reg = self.dword(0x30);
            if !mem || reg & 1 == 0 {
                return None;
            }
            let addr = (reg & 0xffff_f800) as u64 & !(size - 1);
            return (addr != 0 && addr + size - 1 < 0xffff_ffff).then_some(addr);
        }
        let reg = 0x10 + 4 * i;
        match bar.kind {
            BarKind::Io => {
                let addr = (self.dword(reg) & !3) as u64 & !(size - 1);
                (io && addr != 0 && addr + size - 1 <= 0xffff).then_some(addr)
            }
            BarKind::Mem32 => {
                let addr = (self.dword(reg) & !0xf) as u64;
                (mem && addr != 0 && addr + size - 1 < 0xffff_ffff).then_some(addr)
            }
            BarKind::Mem64 { .. } => {
                let addr = ((self.dword(reg + 4) as u64) << 32 | self.dword(reg) as u64) & !0xf;
                let last = addr.checked_add(size - 1)?;
                (mem && addr != 0 && last != u64::MAX).then_some(addr)
            }
        }
    }

    /// Recomputes every placement and applies the changes to the buses.
    fn update_mappings(&mut self, buses: &Buses, stats: &PciStats, origin: Origin) {
        for i in 0..7 {
            let Some(bar) = self.bar(i).cloned() else {
                continue;
            };
            let (old, new) = (self.placed[i], self.decode(i));
            if old == new {
                continue;
            }
            let applied = match (old, new) {
                (None, Some(n)) => buses.insert(n, bar.size, &bar.device).map(|_| Some(n)),
                (Some(o), None) => buses.remove(o, &bar.device).map(|_| None),
                (Some(o), Some(n)) => match buses.update_range(o, n, bar.size, &bar.device) {
                    Ok(()) => Ok(Some(n)),
                    // Refused (it would overlap another device): it stops decoding.
                    Err(e) => {
                        let _ = buses.remove(o, &bar.device);
                        self.placed[i] = None;
                        Err(e)
                    }
                },
                (None, None) => unreachable!("old != new"),
            };
            match applied {
                Ok(at) => {
                    self.placed[i] = at;
                    match origin {
                        Origin::Guest => &stats.guest_moves,
                        Origin::ControlPlane => &stats.control_moves,
                    }
                    // Relaxed: counters, read after the run.
                    .fetch_add(1, Ordering::Relaxed);
                    stats
                        .history
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(Placement {
                            devfn: self.devfn,
                            bar: i,
                            at,
                            origin,
                        });
                }
                Err(_) => {
                    stats.conflicts.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }

    /// Where BAR `i` is placed now (as applied to the buses).
    pub fn placed(&self, i: usize) -> Option<u64> {
        self.placed[i]
    }
}

/// Bus 0 and its config ports 0xcf8-0xcff (a `DevicePio` on the port bus). Also the PIIX3
/// reset control register at 0xcf9 (a byte access; the dword at 0xcf8 is the address latch).
pub struct PciRoot {
    latch: AtomicU32,
    functions: Vec<(u8, Mutex<Function>)>,
    buses: Arc<Buses>,
    memory: Arc<Memory>,
    pub stats: Arc<PciStats>,
    /// The guest asked for a reset (0xcf9 bit 2).
    pub reset: AtomicBool,
    start: std::time::Instant,
}

impl PciRoot {
    pub fn new(
        functions: Vec<Function>,
        buses: Arc<Buses>,
        memory: Arc<Memory>,
        start: std::time::Instant,
    ) -> PciRoot {
        PciRoot {
            latch: AtomicU32::new(0),
            functions: functions
                .into_iter()
                .map(|f| (f.devfn, Mutex::new(f)))
                .collect(),
            buses,
            memory,
            stats: Arc::new(PciStats::default()),
            reset: AtomicBool::new(false),
            start,
        }
    }

    fn function(&self, devfn: u8) -> Option<std::sync::MutexGuard<'_, Function>> {
        self.functions
            .iter()
            .find(|(d, _)| *d == devfn)
            .map(|(_, f)| f.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Runs `f` on function `devfn` (for the VMM's checks).
    pub fn with<T>(&self, devfn: u8, f: impl FnOnce(&Function) -> T) -> Option<T> {
        self.function(devfn).map(|g| f(&g))
    }

    /// Reads `data.len()` bytes of config space of `devfn` from `reg`; all ones where no
    /// function answers.
    pub fn config_read(&self, devfn: u8, reg: usize, data: &mut [u8]) {
        match self.function(devfn) {
            Some(f) => {
                for (i, b) in data.iter_mut().enumerate() {
                    *b = f.cfg.get(reg + i).copied().unwrap_or(0xff);
                }
            }
            None => data.fill(0xff),
        }
    }

    /// Writes `data` to config space of `devfn` at `reg` through the write mask, then
    /// applies what changed: placements on the buses, the PAM window in memory.
    pub fn config_write(&self, devfn: u8, reg: usize, data: &[u8], origin: Origin) {
        // Lock order: a function, then (for the host bridge) the memory map's lock. The bus
        // changes may wait for MMIO dispatches in flight (from the control plane), and no
        // MMIO device takes a function's lock.
        let Some(mut f) = self.function(devfn) else {
            return;
        };
        let mut touched = [false; 256];
        for (i, &b) in data.iter().enumerate() {
            let r = reg + i;
            if r < 256 {
                f.cfg[r] = (f.cfg[r] & !f.wmask[r]) | (b & f.wmask[r]);
                touched[r] = true;
            }
        }
        let any = |range: std::ops::Range<usize>| touched[range].iter().any(|&t| t);
        if f.host_bridge && any(PAM0..PAM0 + 7) {
            let pam: [u8; 7] = f.cfg[PAM0..PAM0 + 7].try_into().expect("7 bytes");
            let t0 = std::time::Instant::now();
            match self.memory.set_pam(pam) {
                Ok(true) => {
                    if origin == Origin::Guest {
                        let at = t0.duration_since(self.start);
                        self.stats
                            .guest_pam_log
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .push((at, pam, t0.elapsed()));
                    }
                    match origin {
                        Origin::Guest => &self.stats.guest_pam,
                        Origin::ControlPlane => &self.stats.control_pam,
                    }
                    .fetch_add(1, Ordering::Relaxed);
                }
                Ok(false) => {}
                Err(e) => {
                    self.stats
                        .error
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .get_or_insert(e);
                }
            }
        }
        if any(0x04..0x06) || any(0x10..0x28) || any(0x30..0x34) {
            f.update_mappings(&self.buses, &self.stats, origin);
        }
    }

    /// The function and register the latch selects, if enabled and on bus 0.
    fn selected(&self, offset: u64) -> Option<(u8, usize)> {
        // Relaxed: the latch is the guest's to serialise (one config cycle at a time).
        let latch = self.latch.load(Ordering::Relaxed);
        let bus = (latch >> 16) & 0xff;
        (latch & 0x8000_0000 != 0 && bus == 0).then(|| {
            (
                ((latch >> 8) & 0xff) as u8,
                (latch & 0xfc) as usize + (offset as usize - 4),
            )
        })
    }
}

impl DevicePio for PciRoot {
    fn pio_read(&self, _: PioAddress, offset: PioAddressOffset, data: &mut [u8]) {
        match (offset, data.len()) {
            (0, 4) => data.copy_from_slice(&self.latch.load(Ordering::Relaxed).to_le_bytes()),
            (1, 1) => data[0] = 0, // reset control
            (4..=7, _) => match self.selected(offset.into()) {
                Some((devfn, reg)) => self.config_read(devfn, reg, data),
                None => data.fill(0xff),
            },
            _ => data.fill(0xff),
        }
    }

    fn pio_write(&self, _: PioAddress, offset: PioAddressOffset, data: &[u8]) {
        match (offset, data.len()) {
            (0, 4) => {
                let v = u32::from_le_bytes(data.try_into().expect("4 bytes"));
                self.latch.store(v & 0x80ff_fffc, Ordering::Relaxed);
            }
            (1, 1) if data[0] & 4 != 0 => self.reset.store(true, Ordering::Relaxed),
            (4..=7, _) => {
                if let Some((devfn, reg)) = self.selected(offset.into()) {
                    self.config_write(devfn, reg, data, Origin::Guest);
                }
            }
            _ => {}
        }
    }
}

impl Function {
    /// Config byte `reg` (for the VMM's checks and the control plane).
    pub fn cfg(&self, reg: usize) -> u8 {
        self.cfg[reg]
    }
}
