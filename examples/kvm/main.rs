//! A real KVM guest driven through physmap: vCPU threads run a small guest program
//! (`guest.S`) whose MMIO and port I/O exits are dispatched through physmap's bus, guest RAM
//! comes from physmap's vm-memory backend and becomes KVM memslots only by replaying
//! `Snapshot::diff`, while a control plane moves a BAR, plugs and unplugs a memory block and
//! toggles a ROM region. See `vmm.rs`.
//!
//! ```sh
//! cargo run --release --features kvm --example kvm -- [--seconds S] [--vcpus N]
//!     [--bus physmap|rwlock|table] [--no-control-plane] [--json]
//! ```
//! Exits non-zero on any misrouted access or guest-detected error, or if KVM is unusable.

#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
mod vmm;

#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
fn main() {
    use vmm::{BusKind, Options};
    let mut opts = Options {
        vcpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        seconds: 5.0,
        bus: BusKind::Physmap,
        control_plane: true,
    };
    let mut json = false;
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    let fail = |msg: String| -> ! {
        eprintln!("kvm: {msg}");
        std::process::exit(2)
    };
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
                    .filter(|&n| (1..=64).contains(&n))
                    .unwrap_or_else(|| fail("--vcpus takes 1 to 64".into()));
                i += 1;
            }
            "--bus" => {
                opts.bus = match value(i).as_str() {
                    "physmap" => BusKind::Physmap,
                    "rwlock" => BusKind::RwLock,
                    "table" => BusKind::Table,
                    other => fail(format!(
                        "--bus takes physmap, rwlock or table, not {other:?}"
                    )),
                };
                i += 1;
            }
            "--no-control-plane" => opts.control_plane = false,
            "--json" => json = true,
            "-h" | "--help" => {
                println!("usage: kvm [--seconds S] [--vcpus N] [--bus physmap|rwlock|table] [--no-control-plane] [--json]");
                return;
            }
            other => fail(format!("unknown argument {other:?} (try --help)")),
        }
        i += 1;
    }
    let report = match vmm::run(&opts) {
        Ok(r) => r,
        Err(e) => fail(e),
    };
    if json {
        let r = &report;
        println!(
            "{{\"bus\":\"{:?}\",\"vcpus\":{},\"control_plane\":{},\"seconds\":{:.3},\"exits\":{:?},\"exits_per_s\":{:.0},\"dispatch_ns\":{:.1},\"dispatch_mean_ns\":{:.1},\"timer_ns\":{:.1},\"after_commit_share\":{:.5},\"after_commit_mean_ns\":{:.1},\"bar_moves\":{},\"block_changes\":{},\"rom_toggles\":{},\"memslot_updates\":{},\"misroutes\":{},\"guest_errors\":{},\"memslots_match\":{}}}",
            opts.bus, opts.vcpus, opts.control_plane, r.elapsed, r.exits,
            r.total_exits() as f64 / r.elapsed, r.dispatch_ns, r.dispatch_mean_ns, r.timer_ns, r.after_commit_share, r.after_commit_mean_ns, r.bar_moves, r.block_changes,
            r.rom_toggles, r.memslot_updates, r.misroutes, r.guest_error_count(), r.memslots_match
        );
        std::process::exit(if report.failed() { 1 } else { 0 });
    }
    println!(
        "bus {:?}, {} vCPUs, {:.1} s, control plane {}",
        opts.bus,
        opts.vcpus,
        report.elapsed,
        if opts.control_plane { "on" } else { "off" }
    );
    for (id, (exits, iterations)) in report.exits.iter().zip(&report.iterations).enumerate() {
        println!(
            "  vCPU {id}: {:>10.0} exits/s  ({exits} exits, {iterations} guest loops)",
            *exits as f64 / report.elapsed
        );
    }
    println!(
        "  total {:.0} exits/s; bus dispatch {:.1} ns per exit, median ({:.1} mean; lookup, check, device call; the timer's own {:.1} ns included)",
        report.total_exits() as f64 / report.elapsed,
        report.dispatch_ns,
        report.dispatch_mean_ns,
        report.timer_ns
    );
    if report.after_commit_share > 0.0 {
        println!(
            "  first exits in a new bus generation: {:.2} % of exits, {:.1} ns mean",
            report.after_commit_share * 100.0,
            report.after_commit_mean_ns
        );
    }
    println!(
        "  control plane: {} BAR moves, {} block plug/unplugs, {} ROM toggles, {} memslot updates from diffs",
        report.bar_moves, report.block_changes, report.rom_toggles, report.memslot_updates
    );
    println!(
        "  guest saw the BAR gone {} times (retried); exits served from guest memory: {}, claimed by nothing (all ones): {}",
        report.moved_retries, report.from_memory, report.unclaimed
    );
    println!(
        "  misroutes: {} (devices), {} (guest: {:?})",
        report.misroutes,
        report.guest_error_count(),
        &report.guest_errors[1..]
    );
    println!(
        "  memslots at the end: {}",
        if report.memslots_match {
            "exactly the memory map's regions"
        } else {
            "DIFFERENT from the memory map"
        }
    );
    if report.failed() {
        eprintln!("kvm: FAILED");
        std::process::exit(1);
    }
}

#[cfg(not(all(target_os = "linux", target_arch = "x86_64")))]
fn main() {
    eprintln!("kvm: this example needs Linux on x86-64");
    std::process::exit(2);
}
