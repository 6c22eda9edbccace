//! Debian's SeaBIOS boots on the physmap KVM machine (feature `kvm`, Linux on x86-64; see
//! `examples/seabios`): it shadows itself through PAM, places every BAR, runs our option ROM,
//! and the option ROM's checks pass while the control plane moves a BAR and switches memory.
//! Skipped, saying why, where `/dev/kvm` or the firmware is missing
//! (`scripts/guest-seabios.sh` provides the firmware).

#![cfg(all(target_os = "linux", target_arch = "x86_64"))]

#[path = "../examples/seabios/buses.rs"]
#[allow(dead_code)]
mod buses;
#[path = "../examples/seabios/devices.rs"]
#[allow(dead_code)]
mod devices;
#[path = "../examples/seabios/memory.rs"]
#[allow(dead_code)]
mod memory;
#[path = "../examples/seabios/pci.rs"]
#[allow(dead_code)]
mod pci;
#[path = "../examples/seabios/vmm.rs"]
#[allow(dead_code)]
mod vmm;

#[test]
fn the_option_rom_is_what_seabios_accepts() {
    assert_eq!(vmm::check_option_rom(vmm::OPTION_ROM), Ok(0xa5));
    let mut rom = vmm::OPTION_ROM.to_vec();
    rom[0x800] ^= 1;
    assert_eq!(vmm::check_option_rom(&rom), Err("checksum is not 0".into()));
    let mut rom = vmm::OPTION_ROM.to_vec();
    rom[0x26] = 4; // another device ID in the PCI data structure
    rom[0xfff] = rom[0xfff].wrapping_sub(1);
    assert!(vmm::check_option_rom(&rom)
        .unwrap_err()
        .contains("PCI data structure"));
}

#[test]
fn seabios_boots_our_option_rom_through_physmap() {
    if let Err(why) = vmm::kvm_usable() {
        eprintln!("SKIPPED: KVM is not usable here: {why}");
        return;
    }
    let firmware = match vmm::find_firmware() {
        Ok(f) => f,
        Err(why) => {
            eprintln!("SKIPPED: {why}");
            return;
        }
    };
    let mut opts = vmm::Options::new(firmware);
    opts.vcpus = 2;
    opts.seconds = 1.0;
    let r = vmm::run(&opts).expect("the VM runs");
    eprintln!("SUMMARY {}", r.summary_json());
    let log_tail: Vec<&str> = r.debug_log.lines().rev().take(20).collect();
    assert!(
        r.errors.is_empty(),
        "errors: {:?}; log ends {log_tail:#?}",
        r.errors
    );

    // The firmware ran its QEMU path, sized RAM from CMOS, and reached the option ROM.
    assert!(r.banner, "no SeaBIOS banner on 0x402");
    assert!(r.running_on_qemu && r.running_on_kvm, "{log_tail:#?}");
    assert!(r.ram_from_cmos, "RAM not sized from CMOS: {log_tail:#?}");
    assert!(r.firmware_ok(), "init {:?} BEV {:?}", r.init_ms, r.bev_ms);

    // It shadowed itself: the first PAM change opens the window as RAM, the last locks the F
    // segment read-only again.
    let first = r.firmware_pam.first().expect("PAM changes").1;
    let last = r.firmware_pam.last().expect("PAM changes").1;
    assert_eq!((first[0], first[1]), (0x30, 0x33), "{:x?}", r.firmware_pam);
    assert_eq!(last[0], 0x10, "{:x?}", r.firmware_pam);

    // Every BAR it placed is where the bus has it (7 BARs and the ROM BAR), no other.
    for l in &r.logged_bars {
        assert!(l.matches, "{}: {}", l.line, l.why);
    }
    assert_eq!(r.logged_bars.len(), 8, "{:#?}", r.logged_bars);
    assert!(r.log_matches_bus(), "unlogged: {:?}", r.unlogged_bars);
    assert!(r.rom_reads > 0, "the ROM BAR was never read");

    // The guest's checks passed on both vCPUs, under a busy control plane.
    assert!(
        r.option_rom_ok(),
        "guest: {:?} {} found {:?} iterations {:?} CPUs {} serial {:?}",
        r.guest_errors,
        r.guest_error_count,
        r.found_mismatches,
        r.iterations,
        r.cpus_started,
        r.serial
    );
    assert_eq!(r.misroutes, 0, "device-detected misroutes");
    assert_eq!(r.bar_conflicts, 0);
    let e = r.exits();
    assert!(e.mmio() > 0 && e.pio() > 0, "{e:?}");
    assert!(
        r.firmware_bar_moves >= 9 && r.control_bar_moves > 0,
        "{r:?}"
    );
    assert!(
        r.firmware_pam_changes > 0 && r.control_pam_changes > 0,
        "{r:?}"
    );
    assert!(r.memslot_updates > 0 && r.memslots_match);
    assert!(!r.failed());
}

#[test]
fn pam_states_route_reads_and_writes_as_the_82441fx_datasheet_says() {
    use memory::{Kind, Memory, Served, BIOS_SIZE};
    if let Err(why) = vmm::kvm_usable() {
        eprintln!("SKIPPED: KVM is not usable here: {why}");
        return;
    }
    let vm = std::sync::Arc::new(kvm_ioctls::Kvm::new().unwrap().create_vm().unwrap());
    let flash: Vec<u8> = (0..BIOS_SIZE).map(|i| (i * 7 + 3) as u8).collect();
    let m = Memory::new(vm, &flash).unwrap();
    let pam = |p: [u8; 7]| m.set_pam(p).unwrap();
    let read = |a: u64| {
        let mut d = [0u8; 4];
        (m.read_exit(a, &mut d), d)
    };
    let at = |a: u64| -> [u8; 4] { flash[a as usize..a as usize + 4].try_into().unwrap() };

    // Reset (all PAM 0): the PCI side, where 0xe0000-0xfffff is the flash's last 128 KiB.
    assert_eq!(m.window(), [(0xe_0000, 0x2_0000, Kind::Rom)]);
    assert_eq!(read(0xf_0010), (Served::Memory, at(0x3_0010)));
    assert_eq!(read(0xc_0000), (Served::Unclaimed, [0xff; 4]));
    assert_eq!(m.write_exit(0xf_0010, &[9; 4]), Served::Dropped);

    // F segment write-only: reads see the flash, writes reach the RAM under it.
    assert!(pam([0x20, 0, 0, 0, 0, 0, 0]));
    assert_eq!(
        m.window(),
        [
            (0xe_0000, 0x1_0000, Kind::Rom),
            (0xf_0000, 0x1_0000, Kind::RomWritesRam)
        ]
    );
    assert_eq!(m.write_exit(0xf_0010, &[9; 4]), Served::Memory);
    assert_eq!(read(0xf_0010), (Served::Memory, at(0x3_0010)));

    // Read-write: the RAM, with what was written.
    assert!(pam([0x30, 0, 0, 0, 0, 0, 0]));
    assert_eq!(m.window()[1], (0xf_0000, 0x1_0000, Kind::Ram));
    assert_eq!(read(0xf_0010), (Served::Memory, [9; 4]));

    // Read-only RAM: reads the RAM, writes go to the PCI side (the flash): dropped.
    assert!(pam([0x10, 0, 0, 0, 0, 0, 0]));
    assert_eq!(m.window()[1], (0xf_0000, 0x1_0000, Kind::RamReadOnly));
    assert_eq!(m.write_exit(0xf_0010, &[5; 4]), Served::Dropped);
    assert_eq!(read(0xf_0010), (Served::Memory, [9; 4]));

    // 0xc0000 write-only, nothing on the PCI side there: no region, reads all ones, writes
    // reach the shadow RAM; 0xc4000 (PAM1's high nibble) read-only at the same time.
    assert!(pam([0x10, 0x12, 0, 0, 0, 0, 0]));
    assert_eq!(m.window()[0], (0xc_4000, 0x4000, Kind::RamReadOnly));
    assert_eq!(m.write_exit(0xc_0000, &[7; 4]), Served::Memory);
    assert_eq!(read(0xc_0000), (Served::Unclaimed, [0xff; 4]));
    assert!(pam([0x10, 0x13, 0, 0, 0, 0, 0]));
    assert_eq!(m.window()[0], (0xc_0000, 0x4000, Kind::Ram));
    assert_eq!(read(0xc_0000), (Served::Memory, [7; 4]));

    // All read-write: one region; the same registers again change nothing.
    assert!(pam([0x30, 0x33, 0x33, 0x33, 0x33, 0x33, 0x33]));
    assert_eq!(m.window(), [(0xc_0000, 0x4_0000, Kind::Ram)]);
    assert!(!pam([0x30, 0x33, 0x33, 0x33, 0x33, 0x33, 0x33]));
    assert!(m.memslots_match());
}
