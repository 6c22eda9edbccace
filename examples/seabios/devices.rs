//! The devices of the SeaBIOS machine: the legacy ones SeaBIOS talks to (CMOS/RTC, the
//! 16550 UART from vm-superio, QEMU's debug console at 0x402, port 0x92), and what sits
//! behind the test devices' BARs (register files whose answers encode who they are and where
//! they were reached, the doorbell the option ROM rings, the expansion ROM itself).

use std::io::Write;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};
use vm_device::bus::{MmioAddress, MmioAddressOffset, PioAddress, PioAddressOffset};
use vm_device::{DeviceMmio, DevicePio};
use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

fn answer(v: u32, data: &mut [u8]) {
    let b = v.to_le_bytes();
    for (i, d) in data.iter_mut().enumerate() {
        *d = b.get(i).copied().unwrap_or(0);
    }
}

fn value(data: &[u8]) -> u32 {
    let mut b = [0u8; 4];
    let n = data.len().min(4);
    b[..n].copy_from_slice(&data[..n]);
    u32::from_le_bytes(b)
}

// ---------------------------------------------------------------- behind the BARs

/// A register file (MMIO) or port file (I/O): reading offset `o` gives `id << 24 | o`; a
/// write must carry the same, else it was meant for someone else.
pub struct Registers {
    pub id: u8,
    pub misroutes: Arc<AtomicU64>,
}

impl Registers {
    fn read(&self, offset: u64, data: &mut [u8]) {
        answer((self.id as u32) << 24 | offset as u32, data);
    }
    fn write(&self, offset: u64, data: &[u8]) {
        if data.len() != 4 || value(data) != (self.id as u32) << 24 | offset as u32 {
            // Relaxed: a counter, read after the vCPUs are joined.
            self.misroutes.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl DeviceMmio for Registers {
    fn mmio_read(&self, _: MmioAddress, offset: MmioAddressOffset, data: &mut [u8]) {
        self.read(offset, data)
    }
    fn mmio_write(&self, _: MmioAddress, offset: MmioAddressOffset, data: &[u8]) {
        self.write(offset, data)
    }
}

impl DevicePio for Registers {
    fn pio_read(&self, _: PioAddress, offset: PioAddressOffset, data: &mut [u8]) {
        self.read(offset.into(), data)
    }
    fn pio_write(&self, _: PioAddress, offset: PioAddressOffset, data: &[u8]) {
        self.write(offset.into(), data)
    }
}

/// The BAR the control plane keeps moving: reading address `A` gives `0xB0 << 24 |
/// (A >> 20 & 0xfff) << 12 | (A & 0xfff)`, computed from the base and offset the bus passes.
pub struct Moving {
    pub misroutes: Arc<AtomicU64>,
}

impl DeviceMmio for Moving {
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

/// The expansion ROM behind the test device's ROM BAR: the option ROM image, then all ones
/// (an unprogrammed part of the chip). Read-only.
pub struct Rom {
    pub image: Vec<u8>,
    pub reads: AtomicU64,
}

impl DeviceMmio for Rom {
    fn mmio_read(&self, _: MmioAddress, offset: MmioAddressOffset, data: &mut [u8]) {
        self.reads.fetch_add(1, Ordering::Relaxed);
        for (i, d) in data.iter_mut().enumerate() {
            *d = self.image.get(offset as usize + i).copied().unwrap_or(0xff);
        }
    }
    fn mmio_write(&self, _: MmioAddress, _: MmioAddressOffset, _: &[u8]) {}
}

/// Stages the option ROM reports on its doorbell.
pub const STAGE_INIT: u32 = 1;
pub const STAGE_BEV: u32 = 2;
pub const STAGE_CHECKS: u32 = 3;

/// The test device's I/O BAR, the option ROM's doorbell: offset 0 takes a stage (1 init
/// entered, 2 BEV entered and devices found, 3 every vCPU checking), 4 an error code, 8 where
/// the ROM was shadowed. Reading offset 0 gives "PMAP".
pub struct Doorbell {
    pub start: Instant,
    /// Set when the BEV rings (stage 2): from then on exits count as the guest's.
    pub guest_phase: std::sync::atomic::AtomicBool,
    /// Nanoseconds from reset to each stage (0: not reached).
    pub stages: [AtomicU64; 4],
    pub errors: [AtomicU64; 16],
    pub rom_base: AtomicU32,
}

impl Doorbell {
    pub fn new(start: Instant) -> Doorbell {
        Doorbell {
            start,
            guest_phase: std::sync::atomic::AtomicBool::new(false),
            stages: Default::default(),
            errors: Default::default(),
            rom_base: AtomicU32::new(0),
        }
    }
    /// Time from reset to `stage`, if reached.
    pub fn reached(&self, stage: u32) -> Option<std::time::Duration> {
        // Acquire: pairs with the Release store below (the stage's side effects first).
        match self.stages[stage as usize].load(Ordering::Acquire) {
            0 => None,
            ns => Some(std::time::Duration::from_nanos(ns)),
        }
    }
}

impl DevicePio for Doorbell {
    fn pio_read(&self, _: PioAddress, offset: PioAddressOffset, data: &mut [u8]) {
        answer(
            if offset == 0 {
                u32::from_le_bytes(*b"PMAP")
            } else {
                0
            },
            data,
        );
    }
    fn pio_write(&self, _: PioAddress, offset: PioAddressOffset, data: &[u8]) {
        let v = value(data);
        match offset {
            0 if (1..=3).contains(&v) => {
                let ns = self.start.elapsed().as_nanos().max(1) as u64;
                if v >= STAGE_BEV {
                    self.guest_phase.store(true, Ordering::Relaxed);
                }
                let _ = self.stages[v as usize].compare_exchange(
                    0,
                    ns,
                    Ordering::Release,
                    Ordering::Relaxed,
                );
            }
            4 => {
                self.errors[(v as usize).min(15)].fetch_add(1, Ordering::Relaxed);
            }
            8 => self.rom_base.store(v, Ordering::Relaxed),
            _ => {
                self.errors[15].fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

// ---------------------------------------------------------------- legacy devices

/// QEMU's `isa-debugcon` at 0x402: SeaBIOS writes its log there once a read of the port
/// returned 0xe9 (`qemu_debug_preinit`).
pub struct DebugCon {
    pub log: Mutex<Vec<u8>>,
    /// Where the log also goes as it is written (`--debug-log`), each line stamped with the
    /// time since reset; and whether the next byte starts a line.
    pub tee: Option<Mutex<(std::fs::File, bool)>>,
    pub start: Instant,
}

impl DevicePio for DebugCon {
    fn pio_read(&self, _: PioAddress, _: PioAddressOffset, data: &mut [u8]) {
        data.fill(0xe9);
    }
    fn pio_write(&self, _: PioAddress, _: PioAddressOffset, data: &[u8]) {
        self.log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(data);
        if let Some(f) = &self.tee {
            let mut f = f.lock().unwrap_or_else(|e| e.into_inner());
            for &b in data {
                if f.1 {
                    let stamp = format!("[{:9.3} ms] ", self.start.elapsed().as_secs_f64() * 1e3);
                    let _ = f.0.write_all(stamp.as_bytes());
                }
                let _ = f.0.write_all(&[b]);
                f.1 = b == b'\n';
            }
        }
    }
}

/// The CMOS RAM and real-time clock (MC146818) at 0x70/0x71, filled as QEMU's
/// `pc_cmos_init` fills it: base and extended memory (0x15-0x18, 0x30-0x31), memory above
/// 16 MiB in 64 KiB units (0x34-0x35, which SeaBIOS reads when there is no fw_cfg), above
/// 4 GiB (0x5b-0x5d), the vCPU count less one (0x5f), no floppy (0x10), and the boot order
/// (0x3d, 0x38: network first, so SeaBIOS boots the option ROM's BEV as QEMU's `-boot n`
/// would).
pub struct Cmos {
    state: Mutex<(u8, [u8; 128])>,
}

fn bcd(v: u64) -> u8 {
    ((v / 10) << 4 | (v % 10)) as u8
}

impl Cmos {
    pub fn new(ram: u64, vcpus: usize) -> Cmos {
        let mut r = [0u8; 128];
        r[0x0a] = 0x26; // 32.768 kHz time base, 1024 Hz rate
        r[0x0b] = 0x02; // 24-hour, BCD
        r[0x0d] = 0x80; // valid RAM and time
        r[0x14] = 0x06; // equipment: math coprocessor, PS/2 mouse, no floppy, EGA/VGA display
        r[0x15] = 0x80; // 640 KiB base memory
        r[0x16] = 0x02;
        let ext_kib = ((ram - (1 << 20)) >> 10).min(0xffff);
        r[0x17] = ext_kib as u8;
        r[0x18] = (ext_kib >> 8) as u8;
        r[0x30] = ext_kib as u8;
        r[0x31] = (ext_kib >> 8) as u8;
        let above16 = (ram.saturating_sub(16 << 20) >> 16).min(0xffff);
        r[0x34] = above16 as u8;
        r[0x35] = (above16 >> 8) as u8;
        r[0x38] = 0x01; // do not check the floppy boot signature; boot order nibble 3 empty
        r[0x3d] = 0x04; // boot order: network (BEV) first
        r[0x5f] = (vcpus - 1) as u8;
        Cmos {
            state: Mutex::new((0, r)),
        }
    }

    fn clock(reg: u8) -> Option<u8> {
        let secs = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let (days, day_secs) = (secs / 86_400, secs % 86_400);
        // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
        let z = days as i64 + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = (doy - (153 * mp + 2) / 5 + 1) as u64;
        let month = if mp < 10 { mp + 3 } else { mp - 9 } as u64;
        let year = (yoe + era * 400 + i64::from(month <= 2)) as u64;
        Some(match reg {
            0x00 => bcd(day_secs % 60),
            0x02 => bcd(day_secs / 60 % 60),
            0x04 => bcd(day_secs / 3600),
            0x06 => bcd((days + 4) % 7 + 1),
            0x07 => bcd(day),
            0x08 => bcd(month),
            0x09 => bcd(year % 100),
            0x32 => bcd(year / 100),
            _ => return None,
        })
    }
}

impl DevicePio for Cmos {
    fn pio_read(&self, _: PioAddress, offset: PioAddressOffset, data: &mut [u8]) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let v = match offset {
            1 => {
                let index = s.0;
                match Cmos::clock(index) {
                    Some(v) => v,
                    None if index == 0x0c => std::mem::take(&mut s.1[0x0c]), // read clears
                    None => s.1[index as usize],
                }
            }
            _ => 0xff, // the index register is write-only
        };
        data.fill(v);
    }
    fn pio_write(&self, _: PioAddress, offset: PioAddressOffset, data: &[u8]) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        match offset {
            0 => s.0 = data[0] & 0x7f, // bit 7 masks NMI
            _ => {
                let index = s.0 as usize;
                match index {
                    0x0a => s.1[0x0a] = data[0] & 0x7f,           // UIP is read-only
                    0x0c | 0x0d => {}                             // read-only
                    _ if Cmos::clock(index as u8).is_some() => {} // the clock follows the host
                    _ => s.1[index] = data[0],
                }
            }
        }
    }
}

/// System control port A (0x92): bit 1 gates A20 (KVM cannot mask A20; the bit is kept for
/// the guest to read back), bit 0 asks for a reset.
pub struct Port92 {
    pub value: AtomicU8,
    pub reset: std::sync::atomic::AtomicBool,
}

impl DevicePio for Port92 {
    fn pio_read(&self, _: PioAddress, _: PioAddressOffset, data: &mut [u8]) {
        data.fill(self.value.load(Ordering::Relaxed));
    }
    fn pio_write(&self, _: PioAddress, _: PioAddressOffset, data: &[u8]) {
        self.value.store(data[0] & 2, Ordering::Relaxed);
        if data[0] & 1 != 0 {
            self.reset.store(true, Ordering::Relaxed);
        }
    }
}

/// Raises the UART's interrupt line: an eventfd registered with KVM as an irqfd on GSI 4.
pub struct IrqLine(pub EventFd);

impl Trigger for IrqLine {
    type E = std::io::Error;
    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}

/// Where the UART's output goes: kept for the report (and echoed with `--verbose`).
#[derive(Clone)]
pub struct SerialOut {
    pub bytes: Arc<Mutex<Vec<u8>>>,
    pub echo: bool,
}

impl Write for SerialOut {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.bytes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(buf);
        if self.echo {
            let _ = std::io::stderr().write_all(buf);
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// COM1 (0x3f8-0x3ff, IRQ 4): vm-superio's 16550A.
pub struct Uart(pub Mutex<Serial<IrqLine, vm_superio::serial::NoEvents, SerialOut>>);

impl DevicePio for Uart {
    fn pio_read(&self, _: PioAddress, offset: PioAddressOffset, data: &mut [u8]) {
        let v = self
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .read(offset as u8);
        data.fill(v);
    }
    fn pio_write(&self, _: PioAddress, offset: PioAddressOffset, data: &[u8]) {
        let _ = self
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .write(offset as u8, data[0]);
    }
}
