//! Debian's SeaBIOS on a KVM machine carried by physmap (shared by
//! `examples/seabios/main.rs` and `tests/seabios.rs`).
//!
//! The machine is an i440FX PC as SeaBIOS knows it from QEMU, built from physmap's pieces:
//! - memory ([`crate::memory`]): a `PhysAddressSpace` of RAM, the 256 KiB flash at
//!   0xfffc0000 and its alias at 0xe0000, with the window 0xc0000-0xfffff switched by the
//!   host bridge's PAM registers; KVM memslots follow only by replaying `Snapshot::diff`;
//! - buses ([`crate::buses`]): physmap's `MmioBus` / `PioBus` (or a `RwLock<BTreeMap>` bus,
//!   `--bus rwlock`) dispatch every `KVM_EXIT_MMIO` / `KVM_EXIT_IO`;
//! - PCI bus 0 ([`crate::pci`]): host bridge with PAM, PIIX3 ISA bridge, three test devices
//!   whose BAR and command-register writes become `insert`, `update_range` and `remove` on
//!   the buses; one carries our guest as an option ROM behind its ROM BAR;
//! - legacy devices ([`crate::devices`]): CMOS with the RAM size, vm-superio's 16550, the
//!   0x402 debug console, port 0x92; the PIC, PIT and local APICs are KVM's (in-kernel
//!   irqchip and PIT).
//!
//! From reset the vCPU runs SeaBIOS, which shadows itself through PAM, sizes and places every
//! BAR, reads and runs the option ROM, and boots its BEV. The guest then checks its devices
//! where the firmware put them, on every vCPU, while the control plane moves one BAR through
//! config space, switches PAM attributes and plugs a memory block. The VMM checks the
//! firmware's log ("PCI: map device ... addr ...") and the guest's findings against the
//! placements on physmap's bus.

use crate::buses::{self, BusKind, Buses, Device, Mmio, Pio};
use crate::devices::{
    Cmos, DebugCon, Doorbell, IrqLine, Moving, Port92, Registers, Rom, SerialOut, Uart, STAGE_BEV,
    STAGE_CHECKS, STAGE_INIT,
};
use crate::memory::{Memory, Served, BLOCK, RAM_SIZE};
use crate::pci::{Bar, BarKind, Function, Origin, PciRoot};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kvm_bindings::{kvm_pit_config, KVM_MAX_CPUID_ENTRIES, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{Cap, Kvm, VcpuExit, VcpuFd, VmFd};
use vm_memory::{Bytes, GuestAddress, GuestAddressSpace};
use vmm_sys_util::eventfd::EventFd;

/// The option ROM (`optionrom.S`, assembled by `scripts/build-optionrom.sh`).
pub const OPTION_ROM: &[u8] = include_bytes!("optionrom.bin");

/// Where `scripts/guest-seabios.sh` leaves the firmware when the package is not installed.
pub const CACHED_FIRMWARE: &str = "target/seabios/usr/share/seabios/bios-256k.bin";
/// Where Debian's `seabios` package installs it.
pub const INSTALLED_FIRMWARE: &str = "/usr/share/seabios/bios-256k.bin";

/// The test devices: 1234:0001 at 00:02.0, 1234:0002 at 00:03.0, 1234:0003 at 00:04.0.
const DEV_A: u8 = 2 << 3;
const DEV_B: u8 = 3 << 3;
const DEV_C: u8 = 4 << 3;
/// Where the control plane moves the test device's BAR 0 and back (above RAM, below the
/// firmware's placements at the top of the 32-bit PCI window).
const ALT_BAR: u64 = 0xd000_0000;
/// What the guest found (see optionrom.S).
const FOUND: u64 = 0x9000;
const ITER: u64 = 0x9800;
const MOVED: u64 = 0x9840;
const CPUS_UP: u64 = 0x9880;
const GUEST_ERRORS: u64 = 0x9888;

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    pub vcpus: usize,
    /// How long the guest checks its devices once booted.
    pub seconds: f64,
    pub bus: BusKind,
    /// Move the BAR, switch PAM and plug the block while the guest checks.
    pub control_plane: bool,
    /// `bios-256k.bin`.
    pub firmware: PathBuf,
    /// Give up if the option ROM has not started checking after this long.
    pub boot_timeout: f64,
    /// Echo the serial port and the debug log.
    pub verbose: bool,
    /// Also write the firmware's debug log here as it comes.
    pub debug_log: Option<PathBuf>,
}

impl Options {
    pub fn new(firmware: PathBuf) -> Options {
        Options {
            vcpus: 2,
            seconds: 1.0,
            bus: BusKind::Physmap,
            control_plane: true,
            firmware,
            boot_timeout: 30.0,
            verbose: false,
            debug_log: None,
        }
    }
}

/// Exits of one phase, by kind.
#[derive(Debug, Default, Clone)]
pub struct Exits {
    pub mmio_read: u64,
    pub mmio_write: u64,
    pub pio_in: u64,
    pub pio_out: u64,
    /// By destination.
    pub pci_config: u64,
    pub debugcon: u64,
    pub serial: u64,
    pub cmos: u64,
    pub bar_mmio: u64,
    pub bar_io: u64,
    pub rom_bar: u64,
    pub other_pio: u64,
    /// MMIO exits no device claimed: served from guest memory (a memslot being replaced,
    /// a PAM write-enable segment), dropped (a write to ROM or read-only RAM), or unclaimed.
    pub from_memory: u64,
    pub dropped: u64,
    pub unclaimed_mmio: u64,
    /// Port accesses no device claimed, by port (reads gave all ones).
    pub unclaimed_ports: BTreeMap<u16, u64>,
    /// MMIO accesses nothing claimed, by 4 KiB page.
    pub unclaimed_pages: BTreeMap<u64, u64>,
}

impl Exits {
    pub fn mmio(&self) -> u64 {
        self.mmio_read + self.mmio_write
    }
    pub fn pio(&self) -> u64 {
        self.pio_in + self.pio_out
    }
    pub fn total(&self) -> u64 {
        self.mmio() + self.pio()
    }
    fn add(&mut self, o: &Exits) {
        self.mmio_read += o.mmio_read;
        self.mmio_write += o.mmio_write;
        self.pio_in += o.pio_in;
        self.pio_out += o.pio_out;
        self.pci_config += o.pci_config;
        self.debugcon += o.debugcon;
        self.serial += o.serial;
        self.cmos += o.cmos;
        self.bar_mmio += o.bar_mmio;
        self.bar_io += o.bar_io;
        self.rom_bar += o.rom_bar;
        self.other_pio += o.other_pio;
        self.from_memory += o.from_memory;
        self.dropped += o.dropped;
        self.unclaimed_mmio += o.unclaimed_mmio;
        for (p, n) in &o.unclaimed_ports {
            *self.unclaimed_ports.entry(*p).or_default() += n;
        }
        for (p, n) in &o.unclaimed_pages {
            *self.unclaimed_pages.entry(*p).or_default() += n;
        }
    }
}

/// One "PCI: map device" line of the firmware's log, and what the bus had there.
#[derive(Debug, Clone)]
pub struct LoggedBar {
    pub line: String,
    pub matches: bool,
    pub why: String,
}

/// What happened.
#[derive(Debug, Default, Clone)]
pub struct Report {
    pub bus: String,
    pub vcpus: usize,
    /// The firmware's banner ("SeaBIOS (version ...)") and its platform lines.
    pub banner: bool,
    pub running_on_qemu: bool,
    pub running_on_kvm: bool,
    pub ram_from_cmos: bool,
    /// Reset to the option ROM's initialisation entry, to its BEV, to the checks.
    pub init_ms: Option<f64>,
    pub bev_ms: Option<f64>,
    pub checks_ms: Option<f64>,
    /// How long the guest checked (control plane running).
    pub check_seconds: f64,
    /// Exits while the firmware ran (reset to BEV) and while the guest checked.
    pub firmware_exits: Exits,
    pub guest_exits: Exits,
    /// Bus dispatch time per exit (lookup, access check, device call), ns: median, mean.
    pub dispatch_ns: f64,
    pub dispatch_mean_ns: f64,
    pub firmware_bar_moves: u64,
    pub control_bar_moves: u64,
    pub bar_conflicts: u64,
    pub firmware_pam_changes: u64,
    pub control_pam_changes: u64,
    pub block_changes: u64,
    pub memslot_updates: u64,
    pub memslots_match: bool,
    /// Accesses a device received that were meant for another (device-detected).
    pub misroutes: u64,
    /// Errors the guest reported on its doorbell, by code; and its own count in RAM.
    pub guest_errors: Vec<(usize, u64)>,
    pub guest_error_count: u64,
    /// The firmware's "PCI: map device" lines against physmap's bus (and the RwLock bus).
    pub logged_bars: Vec<LoggedBar>,
    /// BARs on the bus that no log line accounts for.
    pub unlogged_bars: Vec<String>,
    /// Where the guest found its devices against where the bus has them.
    pub found_mismatches: Vec<String>,
    pub iterations: Vec<u64>,
    pub moved_retries: u64,
    pub cpus_started: u64,
    pub rom_base: u32,
    pub rom_reads: u64,
    /// The firmware's PAM writes: ms since reset, PAM0-PAM6, µs to edit the map and replay
    /// the memslots; and the window's regions at BEV time.
    pub firmware_pam: Vec<(f64, [u8; 7], f64)>,
    /// Control-plane operations, µs (median, 99th percentile): a BAR move through config
    /// space (on physmap's bus `update_range` waits for dispatches in flight), a PAM switch
    /// (map edit and memslot replay).
    pub control_move_us: (f64, f64),
    pub control_pam_us: (f64, f64),
    pub window_at_bev: Vec<(u64, u64, crate::memory::Kind)>,
    pub serial: String,
    pub debug_log: String,
    pub errors: Vec<String>,
}

impl Report {
    /// Banner seen and the option ROM reached (init and BEV).
    pub fn firmware_ok(&self) -> bool {
        self.banner && self.init_ms.is_some() && self.bev_ms.is_some()
    }
    /// The guest's checks ran on every vCPU and passed, and it found its devices where the
    /// bus has them.
    pub fn option_rom_ok(&self) -> bool {
        self.checks_ms.is_some()
            && self.guest_errors.is_empty()
            && self.guest_error_count == 0
            && self.iterations.len() == self.vcpus
            && self.iterations.iter().all(|&i| i > 0)
            && self.cpus_started + 1 == self.vcpus as u64
            && self.found_mismatches.is_empty()
            && self
                .serial
                .contains("physmap option ROM: every vCPU checks its devices")
    }
    /// The firmware's account of every BAR equals the bus's.
    pub fn log_matches_bus(&self) -> bool {
        !self.logged_bars.is_empty()
            && self.logged_bars.iter().all(|l| l.matches)
            && self.unlogged_bars.is_empty()
    }
    pub fn bar_moves(&self) -> u64 {
        self.firmware_bar_moves + self.control_bar_moves
    }
    pub fn pam_changes(&self) -> u64 {
        self.firmware_pam_changes + self.control_pam_changes
    }
    pub fn exits(&self) -> Exits {
        let mut e = self.firmware_exits.clone();
        e.add(&self.guest_exits);
        e
    }
    pub fn failed(&self) -> bool {
        !self.firmware_ok()
            || !self.option_rom_ok()
            || !self.log_matches_bus()
            || self.misroutes > 0
            || self.bar_conflicts > 0
            || !self.memslots_match
            || !self.errors.is_empty()
    }

    /// The `SUMMARY` line's JSON.
    pub fn summary_json(&self) -> String {
        let e = self.exits();
        let ms = |v: Option<f64>| v.map_or("null".to_string(), |v| format!("{v:.1}"));
        format!(
            concat!(
                "{{\"bus\":\"{}\",\"vcpus\":{},\"firmware_ok\":{},\"option_rom_ok\":{},",
                "\"log_matches_bus\":{},\"logged_bars\":{},\"misroutes\":{},\"guest_errors\":{},",
                "\"mmio_exits\":{},\"pio_exits\":{},\"firmware_exits\":{},\"guest_exits\":{},",
                "\"bar_moves\":{},\"firmware_bar_moves\":{},\"control_bar_moves\":{},\"bar_conflicts\":{},",
                "\"pam_changes\":{},\"firmware_pam_changes\":{},\"control_pam_changes\":{},",
                "\"block_changes\":{},\"memslot_updates\":{},\"memslots_match\":{},",
                "\"boot_ms\":{},\"bev_ms\":{},\"checks_ms\":{},\"check_seconds\":{:.3},",
                "\"dispatch_ns\":{:.1},\"dispatch_mean_ns\":{:.1},\"iterations\":{:?},",
                "\"control_move_us\":[{:.1},{:.1}],\"control_pam_us\":[{:.1},{:.1}],",
                "\"moved_retries\":{},\"rom_reads\":{},",
                "\"firmware\":{{\"mmio\":{},\"pio\":{},\"unclaimed_pio\":{},\"pci_config\":{},\"debugcon\":{},\"cmos\":{},\"serial\":{},\"rom_bar\":{},\"bar_mmio\":{},\"bar_io\":{},\"other_pio\":{},\"from_memory\":{},\"dropped\":{},\"unclaimed_mmio\":{}}},",
                "\"guest\":{{\"mmio\":{},\"pio\":{},\"unclaimed_pio\":{},\"pci_config\":{},\"serial\":{},\"cmos\":{},\"bar_mmio\":{},\"bar_io\":{},\"from_memory\":{},\"dropped\":{},\"unclaimed_mmio\":{},\"other_pio\":{}}}}}"
            ),
            self.bus, self.vcpus, self.firmware_ok(), self.option_rom_ok(),
            self.log_matches_bus(), self.logged_bars.len(), self.misroutes, self.guest_error_count,
            e.mmio(), e.pio(), self.firmware_exits.total(), self.guest_exits.total(),
            self.bar_moves(), self.firmware_bar_moves, self.control_bar_moves, self.bar_conflicts,
            self.pam_changes(), self.firmware_pam_changes, self.control_pam_changes,
            self.block_changes, self.memslot_updates, self.memslots_match,
            ms(self.init_ms), ms(self.bev_ms), ms(self.checks_ms), self.check_seconds,
            self.dispatch_ns, self.dispatch_mean_ns, self.iterations,
            self.control_move_us.0, self.control_move_us.1, self.control_pam_us.0, self.control_pam_us.1,
            self.moved_retries, self.rom_reads,
            self.firmware_exits.mmio(), self.firmware_exits.pio(),
            self.firmware_exits.unclaimed_ports.values().sum::<u64>(),
            self.firmware_exits.pci_config, self.firmware_exits.debugcon, self.firmware_exits.cmos,
            self.firmware_exits.serial, self.firmware_exits.rom_bar, self.firmware_exits.bar_mmio,
            self.firmware_exits.bar_io, self.firmware_exits.other_pio, self.firmware_exits.from_memory,
            self.firmware_exits.dropped, self.firmware_exits.unclaimed_mmio,
            self.guest_exits.mmio(), self.guest_exits.pio(),
            self.guest_exits.unclaimed_ports.values().sum::<u64>(),
            self.guest_exits.pci_config, self.guest_exits.serial, self.guest_exits.cmos,
            self.guest_exits.bar_mmio, self.guest_exits.bar_io, self.guest_exits.from_memory,
            self.guest_exits.dropped, self.guest_exits.unclaimed_mmio, self.guest_exits.other_pio,
        )
    }
}

/// Where the firmware is: `$PHYSMAP_SEABIOS`, Debian's installed package, or the copy
/// `scripts/guest-seabios.sh` unpacked under `target/`.
pub fn find_firmware() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("PHYSMAP_SEABIOS") {
        let p = PathBuf::from(p);
        if p.is_file() {
            return Ok(p);
        }
        return Err(format!("PHYSMAP_SEABIOS={} is not a file", p.display()));
    }
    let cached = Path::new(env!("CARGO_MANIFEST_DIR")).join(CACHED_FIRMWARE);
    for p in [PathBuf::from(INSTALLED_FIRMWARE), cached] {
        if p.is_file() {
            return Ok(p);
        }
    }
    Err(format!(
        "no SeaBIOS image: neither {INSTALLED_FIRMWARE} nor {CACHED_FIRMWARE} exists \
         (run scripts/guest-seabios.sh, or set PHYSMAP_SEABIOS)"
    ))
}

/// Whether KVM can run the machine here; the reason if not.
pub fn kvm_usable() -> Result<(), String> {
    let kvm = Kvm::new().map_err(|e| format!("cannot open /dev/kvm: {e}"))?;
    if kvm.get_api_version() != 12 {
        return Err(format!(
            "unexpected KVM API version {}",
            kvm.get_api_version()
        ));
    }
    for (cap, name) in [
        (
            Cap::ReadonlyMem,
            "read-only memslots (KVM_CAP_READONLY_MEM)",
        ),
        (Cap::Irqchip, "an in-kernel irqchip (KVM_CAP_IRQCHIP)"),
        (Cap::Pit2, "an in-kernel PIT (KVM_CAP_PIT2)"),
        (Cap::Irqfd, "irqfd (KVM_CAP_IRQFD)"),
    ] {
        if !kvm.check_extension(cap) {
            return Err(format!("KVM lacks {name}"));
        }
    }
    kvm.create_vm()
        .map_err(|e| format!("cannot create a VM: {e}"))?;
    Ok(())
}

/// Checks the option ROM as SeaBIOS will (PCI Firmware Specification 3.0, BIOS Boot
/// Specification 1.01): signature, size, checksum, PCI data structure for 1234:0003, PnP
/// header with its checksum and a BEV. Returns the BEV offset.
pub fn check_option_rom(rom: &[u8]) -> Result<u16, String> {
    let word = |o: usize| u16::from_le_bytes([rom[o], rom[o + 1]]);
    if rom.len() < 0x40 || rom[0] != 0x55 || rom[1] != 0xaa {
        return Err("no 55 AA signature".into());
    }
    if rom[2] as usize * 512 != rom.len() {
        return Err(format!("size byte {} for {} bytes", rom[2], rom.len()));
    }
    if rom.iter().fold(0u8, |s, b| s.wrapping_add(*b)) != 0 {
        return Err("checksum is not 0".into());
    }
    let pcir = word(0x18) as usize;
    if &rom[pcir..pcir + 4] != b"PCIR" || word(pcir + 4) != 0x1234 || word(pcir + 6) != 0x0003 {
        return Err("no PCI data structure for 1234:0003".into());
    }
    if rom[pcir + 0x14] != 0 || word(pcir + 0x10) as usize * 512 != rom.len() {
        return Err("not an x86 image of the ROM's length".into());
    }
    let pnp = word(0x1a) as usize;
    if &rom[pnp..pnp + 4] != b"$PnP" {
        return Err("no PnP expansion header".into());
    }
    let len = rom[pnp + 5] as usize * 16;
    if rom[pnp..pnp + len]
        .iter()
        .fold(0u8, |s, b| s.wrapping_add(*b))
        != 0
    {
        return Err("PnP header checksum is not 0".into());
    }
    match word(pnp + 0x1a) {
        0 => Err("no boot entry vector".into()),
        bev => Ok(bev),
    }
}

// ---------------------------------------------------------------- vCPUs

/// One vCPU's way to the devices.
// One per vCPU thread, on its stack: its size does not matter, a box would add a load per exit.
#[allow(clippy::large_enum_variant)]
enum Dispatch<'a> {
    Physmap(physmap::bus::BusVcpu<Mmio>, physmap::bus::BusVcpu<Pio>),
    Locked(&'a Buses),
}

impl Dispatch<'_> {
    #[inline]
    fn mmio_read(&mut self, a: u64, d: &mut [u8]) -> bool {
        match self {
            Dispatch::Physmap(m, _) => m.mmio_read(a, d).is_ok(),
            Dispatch::Locked(b) => buses::locked_mmio_read(&b.locked_mmio, a, d),
        }
    }
    #[inline]
    fn mmio_write(&mut self, a: u64, d: &[u8]) -> bool {
        match self {
            Dispatch::Physmap(m, _) => m.mmio_write(a, d).is_ok(),
            Dispatch::Locked(b) => buses::locked_mmio_write(&b.locked_mmio, a, d),
        }
    }
    #[inline]
    fn pio_read(&mut self, p: u16, d: &mut [u8]) -> bool {
        match self {
            Dispatch::Physmap(_, io) => io.pio_read(p, d).is_ok(),
            Dispatch::Locked(b) => buses::locked_pio_read(&b.locked_pio, p, d),
        }
    }
    #[inline]
    fn pio_write(&mut self, p: u16, d: &[u8]) -> bool {
        match self {
            Dispatch::Physmap(_, io) => io.pio_write(p, d).is_ok(),
            Dispatch::Locked(b) => buses::locked_pio_write(&b.locked_pio, p, d),
        }
    }
}

/// What a vCPU thread hands back.
#[derive(Default)]
struct Tally {
    exits: [Exits; 2],
    /// TSC cycles of each exit's bus dispatch.
    cycles: Vec<u32>,
}

fn classify_port(e: &mut Exits, port: u16, claimed: bool) {
    match port {
        0xcf8..=0xcff => e.pci_config += 1,
        0x402 => e.debugcon += 1,
        0x3f8..=0x3ff => e.serial += 1,
        0x70..=0x71 => e.cmos += 1,
        _ if claimed && port >= 0x1000 => e.bar_io += 1,
        _ if claimed => e.other_pio += 1,
        _ => *e.unclaimed_ports.entry(port).or_default() += 1,
    }
}

struct Shared<'a> {
    memory: &'a Memory,
    buses: &'a Buses,
    rom: &'a Arc<Rom>,
    stop: &'a AtomicBool,
    doorbell: &'a Doorbell,
}

fn run_vcpu(mut vcpu: VcpuFd, kind: BusKind, s: &Shared<'_>) -> Result<Tally, String> {
    let mut dispatch = match kind {
        BusKind::Physmap => Dispatch::Physmap(s.buses.mmio.vcpu(), s.buses.pio.vcpu()),
        BusKind::RwLock => Dispatch::Locked(s.buses),
    };
    let mut t = Tally::default();
    // Relaxed: a stop flag and a phase flag; every exit comes back here.
    while !s.stop.load(Ordering::Relaxed) {
        let exit = vcpu.run();
        // After the exit: an AP waits in KVM_RUN from the firmware's days into the guest's.
        let phase = s.doorbell.guest_phase.load(Ordering::Relaxed) as usize;
        let e = &mut t.exits[phase];
        let t0;
        let claimed;
        match exit {
            Ok(VcpuExit::IoIn(port, data)) => {
                t0 = cycles_now();
                claimed = dispatch.pio_read(port, data);
                t.cycles
                    .push((cycles_now() - t0).min(u32::MAX as u64) as u32);
                if !claimed {
                    data.fill(0xff);
                }
                e.pio_in += 1;
                classify_port(e, port, claimed);
            }
            Ok(VcpuExit::IoOut(port, data)) => {
                t0 = cycles_now();
                claimed = dispatch.pio_write(port, data);
                t.cycles
                    .push((cycles_now() - t0).min(u32::MAX as u64) as u32);
                e.pio_out += 1;
                classify_port(e, port, claimed);
            }
            Ok(VcpuExit::MmioRead(addr, data)) => {
                let rom_reads = s.rom.reads.load(Ordering::Relaxed);
                t0 = cycles_now();
                claimed = dispatch.mmio_read(addr, data);
                t.cycles
                    .push((cycles_now() - t0).min(u32::MAX as u64) as u32);
                e.mmio_read += 1;
                if claimed {
                    if s.rom.reads.load(Ordering::Relaxed) != rom_reads {
                        e.rom_bar += 1;
                    } else {
                        e.bar_mmio += 1;
                    }
                } else {
                    match s.memory.read_exit(addr, data) {
                        Served::Memory => e.from_memory += 1,
                        _ => {
                            e.unclaimed_mmio += 1;
                            *e.unclaimed_pages.entry(addr & !0xfff).or_default() += 1;
                        }
                    }
                }
            }
            Ok(VcpuExit::MmioWrite(addr, data)) => {
                t0 = cycles_now();
                claimed = dispatch.mmio_write(addr, data);
                t.cycles
                    .push((cycles_now() - t0).min(u32::MAX as u64) as u32);
                e.mmio_write += 1;
                if claimed {
                    e.bar_mmio += 1;
                } else {
                    match s.memory.write_exit(addr, data) {
                        Served::Memory => e.from_memory += 1,
                        Served::Dropped => e.dropped += 1,
                        Served::Unclaimed => {
                            e.unclaimed_mmio += 1;
                            *e.unclaimed_pages.entry(addr & !0xfff).or_default() += 1;
                        }
                    }
                }
            }
            Ok(VcpuExit::Intr) | Ok(VcpuExit::Hlt) => continue,
            Ok(VcpuExit::Shutdown) => return Err(vcpu_state(&vcpu, "shutdown (triple fault)")),
            Ok(VcpuExit::InternalError) => {
                return Err(vcpu_state(&vcpu, "KVM internal error (emulation failure)"))
            }
            Ok(other) => {
                let what = format!("unexpected exit {other:?}");
                return Err(vcpu_state(&vcpu, &what));
            }
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => continue,
            Err(e) => return Err(format!("KVM_RUN: {e}")),
        }
    }
    Ok(t)
}

fn vcpu_state(vcpu: &VcpuFd, what: &str) -> String {
    match (vcpu.get_regs(), vcpu.get_sregs()) {
        (Ok(r), Ok(s)) => format!(
            "{what} at cs={:#x} (base {:#x}) rip={:#x}, cr0={:#x}, rax={:#x}",
            s.cs.selector, s.cs.base, r.rip, s.cr0, r.rax
        ),
        _ => what.to_string(),
    }
}

fn setup_vcpu(kvm: &Kvm, vm: &VmFd, id: u64, vcpus: usize) -> Result<VcpuFd, String> {
    let vcpu = vm
        .create_vcpu(id)
        .map_err(|e| format!("KVM_CREATE_VCPU {id}: {e}"))?;
    // What KVM supports, with this vCPU's APIC ID and the package's logical processor
    // count (QEMU does the same); SeaBIOS finds KVM's signature at 0x40000000.
    let mut cpuid = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(|e| format!("KVM_GET_SUPPORTED_CPUID: {e}"))?;
    for e in cpuid.as_mut_slice() {
        match e.function {
            1 => e.ebx = (e.ebx & 0xffff) | (vcpus as u32) << 16 | (id as u32) << 24,
            0xb | 0x1f => e.edx = id as u32,
            _ => {}
        }
    }
    vcpu.set_cpuid2(&cpuid)
        .map_err(|e| format!("KVM_SET_CPUID2: {e}"))?;
    // The register state is KVM's reset state: CS 0xf000 based at 0xffff0000, IP 0xfff0,
    // the flash's reset vector. The APs wait for INIT and SIPI in the kernel.
    Ok(vcpu)
}

extern "C" fn on_kick(_: libc::c_int) {}

/// The signal that kicks a vCPU thread out of `KVM_RUN` (its handler does nothing; the
/// ioctl returns EINTR and the thread sees the stop flag).
fn kick_signal() -> libc::c_int {
    libc::SIGRTMIN() + 1
}

fn install_kick_handler() -> Result<(), String> {
    // SAFETY: installs a handler that does nothing (async-signal-safe), without SA_RESTART
    // so that KVM_RUN returns EINTR; the sigaction struct is fully initialised.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_kick as *const () as usize;
        libc::sigemptyset(&mut sa.sa_mask);
        if libc::sigaction(kick_signal(), &sa, std::ptr::null_mut()) != 0 {
            return Err(format!("sigaction: {}", std::io::Error::last_os_error()));
        }
    }
    Ok(())
}

// ---------------------------------------------------------------- checks

/// Parses "PCI: map device bdf=00:02.0  bar 0, addr febff000, size 00001000 [mem]".
fn parse_map_line(line: &str) -> Option<(u8, u8, usize, u64, u64, String)> {
    let rest = line.split("PCI: map device bdf=").nth(1)?;
    let (bdf, rest) = rest.split_once(' ')?;
    let (bus, devfn) = bdf.split_once(':')?;
    let (dev, func) = devfn.split_once('.')?;
    let bus = u8::from_str_radix(bus, 16).ok()?;
    let devfn = u8::from_str_radix(dev, 16).ok()? << 3 | u8::from_str_radix(func, 16).ok()?;
    let rest = rest.trim_start().strip_prefix("bar ")?;
    let (bar, rest) = rest.split_once(", addr ")?;
    let (addr, rest) = rest.split_once(", size ")?;
    let (size, kind) = rest.split_once(' ')?;
    Some((
        bus,
        devfn,
        bar.parse().ok()?,
        u64::from_str_radix(addr, 16).ok()?,
        u64::from_str_radix(size, 16).ok()?,
        kind.trim()
            .trim_matches(|c| c == '[' || c == ']')
            .to_string(),
    ))
}

/// Every "PCI: map device" line against physmap's bus (and the RwLock bus): the BAR is on
/// the bus at that address with its size, and it is this BAR's device; a ROM BAR was placed
/// there while the firmware read it, and is closed again. Then every BAR the bus holds has
/// a line.
fn check_log(log: &str, pci: &PciRoot, buses: &Buses, report: &mut Report) {
    let mut seen = Vec::new();
    for line in log.lines().filter(|l| l.contains("PCI: map device")) {
        let mut why = String::new();
        match parse_map_line(line) {
            None => why = "unparsed".into(),
            Some((bus, devfn, bar, addr, size, kind)) => {
                seen.push((devfn, bar));
                let ours = pci.with(devfn, |f| f.bar(bar).cloned()).flatten();
                match ours {
                    _ if bus != 0 => why = format!("bus {bus}"),
                    None => why = "no such BAR".into(),
                    Some(b) => {
                        let want_kind = match b.kind {
                            BarKind::Io => "io",
                            BarKind::Mem64 { prefetchable: true } => "prefmem",
                            _ => "mem",
                        };
                        // SeaBIOS rounds memory BARs up to 4 KiB (PCI_DEVICE_MEM_MIN).
                        let logged = if b.kind == BarKind::Io {
                            b.size
                        } else {
                            b.size.max(0x1000)
                        };
                        let mmio = b.kind != BarKind::Io;
                        if kind != want_kind || size != logged {
                            why = format!("BAR is {want_kind}, {:#x} bytes", b.size);
                        } else if bar == 6 {
                            let history =
                                pci.stats.history.lock().unwrap_or_else(|e| e.into_inner());
                            let placed = history.iter().any(|p| {
                                (p.origin, p.devfn, p.bar, p.at)
                                    == (Origin::Guest, devfn, 6, Some(addr))
                            });
                            let closed = pci.with(devfn, |f| f.placed(6)).flatten().is_none();
                            if !placed {
                                why = format!("the ROM BAR never decoded at {addr:#x}");
                            } else if !closed {
                                why = "the ROM BAR is still open".into();
                            }
                        } else {
                            let want = addr..=addr + b.size - 1;
                            for (name, found) in [
                                ("physmap", buses.placed_at(addr, mmio)),
                                ("rwlock", buses.locked_placed_at(addr, mmio)),
                            ] {
                                match found {
                                    Some((r, d)) if r == want && d.is(&b.device) => {}
                                    Some((r, _)) => {
                                        why = format!(
                                            "{name} bus has {r:x?} there (another device or size)"
                                        )
                                    }
                                    None => why = format!("{name} bus has nothing at {addr:#x}"),
                                }
                            }
                        }
                    }
                }
            }
        }
        report.logged_bars.push(LoggedBar {
            line: line.trim().to_string(),
            matches: why.is_empty(),
            why,
        });
    }
    for devfn in [DEV_A, DEV_B, DEV_C] {
        for bar in 0..6 {
            if let Some(at) = pci.with(devfn, |f| f.placed(bar)).flatten() {
                if !seen.contains(&(devfn, bar)) {
                    report.unlogged_bars.push(format!(
                        "{:02x}.{} BAR {bar} at {at:#x}",
                        devfn >> 3,
                        devfn & 7
                    ));
                }
            }
        }
    }
}

/// What the guest found (optionrom.S FOUND_*) against the placements.
fn check_found(memory: &Memory, pci: &PciRoot, report: &mut Report) {
    let mem = memory.space.memory();
    let read = |o: u64| mem.read_obj::<u32>(GuestAddress(FOUND + o)).unwrap_or(0) as u64;
    let placed = |devfn: u8, bar: usize| pci.with(devfn, |f| f.placed(bar)).flatten().unwrap_or(0);
    for (name, off, devfn, bar) in [
        ("1234:0001 BAR0", 0x00, DEV_A, 0),
        ("1234:0001 BAR1", 0x04, DEV_A, 1),
        ("1234:0001 BAR2", 0x08, DEV_A, 2),
        ("1234:0002 BAR0", 0x0c, DEV_B, 0),
        ("1234:0002 BAR4", 0x10, DEV_B, 4),
        ("1234:0003 BAR0", 0x14, DEV_C, 0),
        ("1234:0003 BAR1", 0x18, DEV_C, 1),
    ] {
        let (g, b) = (read(off), placed(devfn, bar));
        if g != b || b == 0 {
            report.found_mismatches.push(format!(
                "{name}: the guest found {g:#x}, the bus has {b:#x}"
            ));
        }
    }
    if read(0x20) != 0x8000_0000 | (DEV_C as u64) << 8 {
        report
            .found_mismatches
            .push(format!("1234:0003 at config address {:#x}", read(0x20)));
    }
}

// ---------------------------------------------------------------- the machine

/// Boots SeaBIOS and the option ROM, lets the guest check for `opts.seconds` under the
/// control plane, and reports; see the module docs.
pub fn run(opts: &Options) -> Result<Report, String> {
    kvm_usable()?;
    check_option_rom(OPTION_ROM).map_err(|e| format!("optionrom.bin: {e}"))?;
    let bios = std::fs::read(&opts.firmware)
        .map_err(|e| format!("cannot read {}: {e}", opts.firmware.display()))?;
    let kvm = Kvm::new().map_err(|e| e.to_string())?;
    let vm = Arc::new(kvm.create_vm().map_err(|e| format!("KVM_CREATE_VM: {e}"))?);
    // Where SeaBIOS reserves them on KVM (paravirt.c: 0xfffbc000, 4 pages): the identity
    // map page, then the three pages of the real-mode TSS; both before any vCPU exists.
    vm.set_identity_map_address(0xfffb_c000)
        .map_err(|e| format!("KVM_SET_IDENTITY_MAP_ADDR: {e}"))?;
    vm.set_tss_address(0xfffb_d000)
        .map_err(|e| format!("KVM_SET_TSS_ADDR: {e}"))?;
    vm.create_irq_chip()
        .map_err(|e| format!("KVM_CREATE_IRQCHIP: {e}"))?;
    // The in-kernel PIT, with the speaker port 0x61 (SeaBIOS reads PIT channel 2's output
    // there when it calibrates the TSC).
    let pit = kvm_pit_config {
        flags: KVM_PIT_SPEAKER_DUMMY,
        ..Default::default()
    };
    vm.create_pit2(pit)
        .map_err(|e| format!("KVM_CREATE_PIT2: {e}"))?;

    let memory = Arc::new(Memory::new(vm.clone(), &bios)?);
    let buses = Arc::new(Buses::new());
    let misroutes = Arc::new(AtomicU64::new(0));
    let start = Instant::now();

    // Legacy devices.
    let irq = EventFd::new(libc::EFD_NONBLOCK).map_err(|e| format!("eventfd: {e}"))?;
    vm.register_irqfd(&irq, 4)
        .map_err(|e| format!("KVM_IRQFD: {e}"))?;
    let serial_out = SerialOut {
        bytes: Arc::new(Mutex::new(Vec::new())),
        echo: opts.verbose,
    };
    let uart = Uart(Mutex::new(vm_superio::Serial::new(
        IrqLine(irq),
        serial_out.clone(),
    )));
    let debugcon = Arc::new(DebugCon {
        log: Mutex::new(Vec::new()),
        tee: match &opts.debug_log {
            Some(p) => Some(Mutex::new((
                std::fs::File::create(p).map_err(|e| format!("{}: {e}", p.display()))?,
                true,
            ))),
            None => None,
        },
        start,
    });
    let port92 = Arc::new(Port92 {
        value: 0.into(),
        reset: AtomicBool::new(false),
    });
    let legacy: [(u64, u64, Arc<Pio>); 4] = [
        (0x70, 2, Arc::new(Cmos::new(RAM_SIZE, opts.vcpus))),
        (0x92, 1, port92.clone()),
        (0x3f8, 8, Arc::new(uart)),
        (0x402, 1, debugcon.clone()),
    ];
    for (base, len, d) in legacy {
        buses
            .insert(base, len, &Device::Pio(d))
            .map_err(|e| e.to_string())?;
    }

    // PCI: host bridge, ISA bridge, test devices.
    let regs = |id: u8| Registers {
        id,
        misroutes: misroutes.clone(),
    };
    let mmio = |d: Arc<Mmio>| Device::Mmio(d);
    let pio = |d: Arc<Pio>| Device::Pio(d);
    let bar = |kind, size, device| Bar { kind, size, device };
    let doorbell = Arc::new(Doorbell::new(start));
    let rom = Arc::new(Rom {
        image: OPTION_ROM.to_vec(),
        reads: AtomicU64::new(0),
    });
    let functions = vec![
        Function::host_bridge(),
        Function::isa_bridge(),
        Function::test_device(
            DEV_A >> 3,
            0x0001,
            &[
                (0, bar(BarKind::Mem32, 0x1000, mmio(Arc::new(regs(0xA1))))),
                (1, bar(BarKind::Io, 0x40, pio(Arc::new(regs(0xC1))))),
                (
                    2,
                    bar(
                        BarKind::Mem64 {
                            prefetchable: false,
                        },
                        0x4000,
                        mmio(Arc::new(regs(0xA2))),
                    ),
                ),
            ],
            None,
        ),
        Function::test_device(
            DEV_B >> 3,
            0x0002,
            &[
                (
                    0,
                    bar(
                        BarKind::Mem64 { prefetchable: true },
                        0x10_0000,
                        mmio(Arc::new(regs(0xA3))),
                    ),
                ),
                (4, bar(BarKind::Io, 0x100, pio(Arc::new(regs(0xC3))))),
            ],
            None,
        ),
        Function::test_device(
            DEV_C >> 3,
            0x0003,
            &[
                (
                    0,
                    bar(
                        BarKind::Mem32,
                        0x1000,
                        mmio(Arc::new(Moving {
                            misroutes: misroutes.clone(),
                        })),
                    ),
                ),
                (1, bar(BarKind::Io, 0x10, pio(doorbell.clone()))),
            ],
            Some(bar(BarKind::Mem32, 0x4000, mmio(rom.clone()))),
        ),
    ];
    let pci = Arc::new(PciRoot::new(
        functions,
        buses.clone(),
        memory.clone(),
        start,
    ));
    buses
        .insert(0xcf8, 8, &Device::Pio(pci.clone()))
        .map_err(|e| e.to_string())?;

    let vcpus: Vec<VcpuFd> = (0..opts.vcpus as u64)
        .map(|id| setup_vcpu(&kvm, &vm, id, opts.vcpus))
        .collect::<Result<_, _>>()?;
    install_kick_handler()?;

    let stop = AtomicBool::new(false);
    let shared = Shared {
        memory: &memory,
        buses: &buses,
        rom: &rom,
        stop: &stop,
        doorbell: &doorbell,
    };
    let mut report = Report {
        bus: format!("{:?}", opts.bus),
        vcpus: opts.vcpus,
        ..Report::default()
    };
    let mut block_changes = 0u64;
    let threads: Mutex<Vec<(libc::pthread_t, Arc<AtomicBool>)>> = Mutex::new(Vec::new());

    let results: Vec<Result<Tally, String>> = std::thread::scope(|s| {
        let handles: Vec<_> = vcpus
            .into_iter()
            .map(|vcpu| {
                let (shared, threads, kind) = (&shared, &threads, opts.bus);
                let done = Arc::new(AtomicBool::new(false));
                // SAFETY: pthread_self has no preconditions.
                let handle = s.spawn(move || {
                    threads
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push((unsafe { libc::pthread_self() }, done.clone()));
                    let r = run_vcpu(vcpu, kind, shared);
                    // Release: the monitor stops kicking a thread it sees done.
                    done.store(true, Ordering::Release);
                    r
                });
                handle
            })
            .collect();

        // The monitor: wait for the option ROM to start checking (or for a failure).
        let outcome = (|| -> Result<(), String> {
            let deadline = Duration::from_secs_f64(opts.boot_timeout);
            loop {
                if doorbell.reached(STAGE_CHECKS).is_some() {
                    break;
                }
                if handles.iter().any(|h| h.is_finished()) {
                    return Err("a vCPU stopped during boot".into());
                }
                if pci.reset.load(Ordering::Relaxed) || port92.reset.load(Ordering::Relaxed) {
                    return Err("the guest asked for a reset during boot".into());
                }
                if start.elapsed() > deadline {
                    return Err(format!(
                        "the option ROM did not start its checks within {:.0} s (init {}, BEV {})",
                        opts.boot_timeout,
                        doorbell.reached(STAGE_INIT).is_some(),
                        doorbell.reached(STAGE_BEV).is_some()
                    ));
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            // Nothing has moved since the firmware placed everything: the firmware's log,
            // the guest's findings and the bus must agree now.
            let log =
                String::from_utf8_lossy(&debugcon.log.lock().unwrap_or_else(|e| e.into_inner()))
                    .into_owned();
            check_log(&log, &pci, &buses, &mut report);
            report.window_at_bev = memory.window();
            check_found(&memory, &pci, &mut report);

            // The control plane.
            let checks_start = Instant::now();
            let rom_base = doorbell.rom_base.load(Ordering::Relaxed) as u64;
            let fw_bar = pci.with(DEV_C, |f| f.placed(0)).flatten();
            if opts.control_plane && (fw_bar.is_none() || buses.placed_at(ALT_BAR, true).is_some())
            {
                return Err("the moving BAR is not placed, or its other place is taken".into());
            }
            let mut tick = 0u64;
            let mut at_alt = false;
            let (mut move_us, mut pam_us) = (Vec::new(), Vec::new());
            while checks_start.elapsed() < Duration::from_secs_f64(opts.seconds) {
                std::thread::sleep(Duration::from_micros(500));
                if !opts.control_plane {
                    continue;
                }
                tick += 1;
                // Move BAR 0 of 1234:0003, as a guest would: through config space.
                at_alt = !at_alt;
                let to = if at_alt { ALT_BAR } else { fw_bar.unwrap_or(0) };
                let t0 = Instant::now();
                pci.config_write(
                    DEV_C,
                    0x10,
                    &(to as u32).to_le_bytes(),
                    Origin::ControlPlane,
                );
                move_us.push(t0.elapsed().as_secs_f64() * 1e6);
                if tick % 2 == 0 {
                    // PAM: the segment of the shadowed option ROM between read-only and
                    // read-write; the F segment through all four states.
                    let (reg, shift, cycle): (usize, u32, &[u8]) = if tick % 4 == 0 {
                        let (_, _, reg, shift) =
                            crate::memory::pam_segment(rom_base).unwrap_or((0, 0, 1, 0));
                        (crate::pci::PAM0 + reg, shift, &[1, 3])
                    } else {
                        (crate::pci::PAM0, 4, &[1, 2, 0, 3])
                    };
                    let old = pci.with(0, |f| f.cfg(reg)).unwrap_or(0);
                    let now = (old >> shift) & 3;
                    let i = cycle
                        .iter()
                        .position(|&c| c == now)
                        .map_or(0, |i| (i + 1) % cycle.len());
                    let new = (old & !(3 << shift)) | cycle[i] << shift;
                    let t0 = Instant::now();
                    pci.config_write(0, reg, &[new], Origin::ControlPlane);
                    pam_us.push(t0.elapsed().as_secs_f64() * 1e6);
                }
                if tick % 8 == 0 {
                    memory.toggle_block()?;
                    block_changes += 1;
                }
            }
            report.check_seconds = checks_start.elapsed().as_secs_f64();
            report.control_move_us = median_p99(&mut move_us);
            report.control_pam_us = median_p99(&mut pam_us);
            Ok(())
        })();
        // Stop: raise the flag, then kick every vCPU out of KVM_RUN until it has seen it.
        stop.store(true, Ordering::Relaxed);
        let kick_deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let threads = threads.lock().unwrap_or_else(|e| e.into_inner());
            let running: Vec<_> = threads
                .iter()
                .filter(|(_, d)| !d.load(Ordering::Acquire))
                .collect();
            if (running.is_empty() && threads.len() == handles.len())
                || Instant::now() > kick_deadline
            {
                break;
            }
            for (tid, _) in running {
                // SAFETY: the thread has not returned (it is joined only at the end of the
                // scope), so its pthread_t is valid; the handler does nothing.
                unsafe { libc::pthread_kill(*tid, kick_signal()) };
            }
            drop(threads);
            std::thread::sleep(Duration::from_millis(2));
        }
        let mut results: Vec<_> = handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err("vCPU thread panicked".into()))
            })
            .collect();
        if let Err(e) = outcome {
            results.push(Err(e));
        }
        results
    });

    // Collect.
    let mut cycles = Vec::new();
    for r in results {
        match r {
            Ok(t) => {
                report.firmware_exits.add(&t.exits[0]);
                report.guest_exits.add(&t.exits[1]);
                cycles.extend(t.cycles);
            }
            Err(e) => report.errors.push(e),
        }
    }
    if let Some(e) = pci
        .stats
        .error
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone()
    {
        report.errors.push(e);
    }
    let per_ns = cycles_per_ns();
    cycles.sort_unstable();
    if !cycles.is_empty() {
        report.dispatch_ns = cycles[cycles.len() / 2] as f64 / per_ns;
        report.dispatch_mean_ns =
            cycles.iter().map(|&c| c as f64).sum::<f64>() / cycles.len() as f64 / per_ns;
    }
    let ms = |stage| doorbell.reached(stage).map(|d| d.as_secs_f64() * 1e3);
    report.init_ms = ms(STAGE_INIT);
    report.bev_ms = ms(STAGE_BEV);
    report.checks_ms = ms(STAGE_CHECKS);
    let log = String::from_utf8_lossy(&debugcon.log.lock().unwrap_or_else(|e| e.into_inner()))
        .into_owned();
    report.banner = log.contains("SeaBIOS (version");
    report.running_on_qemu = log.contains("Running on QEMU (i440fx)");
    report.running_on_kvm = log.contains("Running on KVM");
    report.ram_from_cmos = log.contains("RamSize: 0x08000000 [cmos]");
    report.debug_log = log;
    report.serial =
        String::from_utf8_lossy(&serial_out.bytes.lock().unwrap_or_else(|e| e.into_inner()))
            .into_owned();
    let st = &pci.stats;
    report.firmware_bar_moves = st.guest_moves.load(Ordering::Relaxed);
    report.control_bar_moves = st.control_moves.load(Ordering::Relaxed);
    report.bar_conflicts = st.conflicts.load(Ordering::Relaxed);
    report.firmware_pam_changes = st.guest_pam.load(Ordering::Relaxed);
    report.control_pam_changes = st.control_pam.load(Ordering::Relaxed);
    report.block_changes = block_changes;
    report.firmware_pam = st
        .guest_pam_log
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .map(|(at, pam, took)| (at.as_secs_f64() * 1e3, *pam, took.as_secs_f64() * 1e6))
        .collect();
    report.memslot_updates = memory.memslot_updates();
    report.memslots_match = memory.memslots_match();
    report.misroutes = misroutes.load(Ordering::Relaxed);
    report.guest_errors = doorbell
        .errors
        .iter()
        .enumerate()
        .map(|(i, e)| (i, e.load(Ordering::Relaxed)))
        .filter(|&(_, n)| n > 0)
        .collect();
    report.rom_base = doorbell.rom_base.load(Ordering::Relaxed);
    report.rom_reads = rom.reads.load(Ordering::Relaxed);
    let mem = memory.space.memory();
    let word = |a: u64| mem.read_obj::<u32>(GuestAddress(a)).unwrap_or(0) as u64;
    report.guest_error_count = word(GUEST_ERRORS);
    report.cpus_started = word(CPUS_UP);
    for id in 0..opts.vcpus as u64 {
        report.iterations.push(word(ITER + 4 * id));
        report.moved_retries += word(MOVED + 4 * id);
    }
    let _ = BLOCK;
    Ok(report)
}

fn median_p99(v: &mut [f64]) -> (f64, f64) {
    if v.is_empty() {
        return (0.0, 0.0);
    }
    v.sort_by(f64::total_cmp);
    (v[v.len() / 2], v[(v.len() * 99 / 100).min(v.len() - 1)])
}

#[inline]
fn cycles_now() -> u64 {
    // SAFETY: rdtsc has no preconditions on x86-64.
    unsafe { std::arch::x86_64::_rdtsc() }
}

/// TSC cycles per nanosecond, measured against the monotonic clock.
fn cycles_per_ns() -> f64 {
    let (t0, c0) = (Instant::now(), cycles_now());
    std::thread::sleep(Duration::from_millis(20));
    (cycles_now() - c0) as f64 / t0.elapsed().as_nanos() as f64
}
