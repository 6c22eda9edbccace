//! Debian's SeaBIOS boots on a KVM machine carried by physmap: it shadows itself through the
//! i440FX PAM registers (memory map and KVM memslots change under the running vCPU, memslots
//! replayed from `Snapshot::diff`), sizes and places every PCI BAR (each placement an
//! `insert`, `update_range` or `remove` on physmap's bus), reads our option ROM through its
//! ROM BAR and boots it; the option ROM (`optionrom.S`) then checks its devices where the
//! firmware put them, on every vCPU, while the control plane keeps moving a BAR and switching
//! memory. See `vmm.rs`.
//!
//! ```sh
//! bash scripts/guest-seabios.sh        # Debian's bios-256k.bin, installed or unpacked
//! cargo run --release --features kvm --example seabios -- [--seconds S] [--vcpus N]
//!     [--bus physmap|rwlock] [--no-control-plane] [--firmware PATH] [--debug-log PATH]
//!     [--verbose] [--json]
//! ```
//! The last line is `SUMMARY {json}`. Exits non-zero if anything failed, 2 if KVM or the
//! firmware is unusable.

#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
mod buses;
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
mod devices;
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
mod memory;
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
mod pci;
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
mod vmm;

#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
fn main() {
    use buses::BusKind;
    let fail = |msg: String| -> ! {
        eprintln!("seabios: {msg}");
        std::process::exit(2)
    };
    let mut firmware = None;
    let mut opts = vmm::Options::new(std::path::PathBuf::new());
    let mut json = false;
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < args.len() {
        let value = |i: usize| {
            args.get(i + 1)
                .cloned()
                .unwrap_or_else(|| fail(format!("{} needs a value", args[i])))
        };
        match args[i].as_str() {
            "--seconds" => {
                opts.seconds = value(i)
                    .parse()
                    .ok()
                    .filter(|s: &f64| s.is_finite() && *s > 0.0)
                    .unwrap_or_else(|| fail("--seconds takes a positive number".into()));
                i += 1;
            }
            "--vcpus" => {
                opts.vcpus = value(i)
                    .parse()
                    .ok()
                    .filter(|&n| (1..=16).contains(&n))
                    .unwrap_or_else(|| fail("--vcpus takes 1 to 16".into()));
                i += 1;
            }
            "--bus" => {
                opts.bus = match value(i).as_str() {
                    "physmap" => BusKind::Physmap,
                    "rwlock" => BusKind::RwLock,
                    other => fail(format!("--bus takes physmap or rwlock, not {other:?}")),
                };
                i += 1;
            }
            "--firmware" => {
                firmware = Some(std::path::PathBuf::from(value(i)));
                i += 1;
            }
            "--debug-log" => {
                opts.debug_log = Some(std::path::PathBuf::from(value(i)));
                i += 1;
            }
            "--no-control-plane" => opts.control_plane = false,
            "--verbose" => opts.verbose = true,
            "--json" => json = true,
            "-h" | "--help" => {
                println!("usage: seabios [--seconds S] [--vcpus N] [--bus physmap|rwlock] [--no-control-plane] [--firmware PATH] [--debug-log PATH] [--verbose] [--json]");
                return;
            }
            other => fail(format!("unknown argument {other:?} (try --help)")),
        }
        i += 1;
    }
    opts.firmware = match firmware {
        Some(f) => f,
        None => vmm::find_firmware().unwrap_or_else(|e| fail(e)),
    };
    let r = vmm::run(&opts).unwrap_or_else(|e| fail(e));
    if json {
        println!("{}", r.summary_json());
        std::process::exit(if r.failed() { 1 } else { 0 });
    }
    let yes = |b: bool| if b { "yes" } else { "NO" };
    let ms = |v: Option<f64>| v.map_or("never".to_string(), |v| format!("{v:.0} ms"));
    println!(
        "SeaBIOS ({}) on {} vCPUs, bus {:?}, control plane {}",
        opts.firmware.display(),
        opts.vcpus,
        opts.bus,
        if opts.control_plane { "on" } else { "off" }
    );
    println!(
        "  firmware: banner {}, \"Running on QEMU (i440fx)\" {}, \"Running on KVM\" {}, RAM from CMOS {}",
        yes(r.banner),
        yes(r.running_on_qemu),
        yes(r.running_on_kvm),
        yes(r.ram_from_cmos)
    );
    println!(
        "  reset to option ROM init {}, to its BEV {}, to its checks {} (shadowed at {:#x})",
        ms(r.init_ms),
        ms(r.bev_ms),
        ms(r.checks_ms),
        r.rom_base
    );
    println!(
        "  firmware: {} placements applied, {} PAM changes; its {} \"PCI: map device\" lines {} physmap's bus",
        r.firmware_bar_moves,
        r.firmware_pam_changes,
        r.logged_bars.len(),
        if r.log_matches_bus() { "all match" } else { "do NOT all match" }
    );
    for (at, pam, took) in &r.firmware_pam {
        println!(
            "    PAM at {at:7.1} ms: PAM0-6 = {:02x?}, map edited and memslots replayed in {took:.0} µs",
            pam
        );
    }
    println!(
        "    window 0xc0000-0xfffff at BEV: {}",
        r.window_at_bev
            .iter()
            .map(|(s, l, k)| format!("{s:#x}+{l:#x} {k:?}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    for l in &r.logged_bars {
        println!(
            "    {} {}{}",
            if l.matches { "ok " } else { "BAD" },
            l.line,
            if l.why.is_empty() {
                String::new()
            } else {
                format!("  <- {}", l.why)
            }
        );
    }
    for u in &r.unlogged_bars {
        println!("    BAD on the bus without a log line: {u}");
    }
    for m in &r.found_mismatches {
        println!("    BAD guest: {m}");
    }
    println!(
        "  guest: {:.1} s of checks, iterations per vCPU {:?}, BAR found moved {} times (retried)",
        r.check_seconds, r.iterations, r.moved_retries
    );
    println!(
        "  control plane: {} BAR moves, {} PAM changes, {} block plug/unplugs; {} memslot updates in all, memslots {} the memory map",
        r.control_bar_moves,
        r.control_pam_changes,
        r.block_changes,
        r.memslot_updates,
        if r.memslots_match { "equal" } else { "DIFFER from" }
    );
    println!(
        "    a BAR move took {:.0} µs (p99 {:.0}), a PAM switch {:.0} µs (p99 {:.0})",
        r.control_move_us.0, r.control_move_us.1, r.control_pam_us.0, r.control_pam_us.1
    );
    for (phase, e) in [("firmware", &r.firmware_exits), ("guest", &r.guest_exits)] {
        println!(
            "  {phase} exits: {} MMIO ({} read, {} write), {} port I/O; config {}, debugcon {}, serial {}, cmos {}, ROM BAR {}, BAR MMIO {}, BAR I/O {}, memory {}, dropped {}, unclaimed MMIO {} (pages {:x?}), unclaimed ports {:x?}",
            e.mmio(), e.mmio_read, e.mmio_write, e.pio(), e.pci_config, e.debugcon, e.serial, e.cmos,
            e.rom_bar, e.bar_mmio, e.bar_io, e.from_memory, e.dropped, e.unclaimed_mmio, e.unclaimed_pages, e.unclaimed_ports
        );
    }
    println!(
        "  bus dispatch: median {:.0} ns per exit (mean {:.0})",
        r.dispatch_ns, r.dispatch_mean_ns
    );
    println!(
        "  misroutes: {} (devices), guest errors {} {:?}, BAR conflicts {}",
        r.misroutes, r.guest_error_count, r.guest_errors, r.bar_conflicts
    );
    for e in &r.errors {
        println!("  ERROR: {e}");
    }
    if r.failed() {
        let tail: Vec<&str> = r.debug_log.lines().rev().take(15).collect();
        eprintln!("seabios: FAILED; the firmware's log ends:");
        for l in tail.iter().rev() {
            eprintln!("    {l}");
        }
        eprintln!("serial: {}", r.serial);
    }
    println!("SUMMARY {}", r.summary_json());
    std::process::exit(if r.failed() { 1 } else { 0 });
}

#[cfg(not(all(target_os = "linux", target_arch = "x86_64")))]
fn main() {
    eprintln!("seabios: this example needs Linux on x86-64");
    std::process::exit(2);
}
