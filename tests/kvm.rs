//! A real KVM guest (feature `kvm`, Linux on x86-64): its MMIO and port I/O exits are
//! dispatched through physmap's bus and its memslots follow `Snapshot::diff`, while a
//! control plane moves a BAR, plugs and unplugs a memory block and toggles a ROM. Skipped,
//! saying why, where `/dev/kvm` is missing or unusable.

#![cfg(all(target_os = "linux", target_arch = "x86_64"))]

#[path = "../examples/kvm/vmm.rs"]
#[allow(dead_code)]
mod vmm;

use vmm::{BusKind, Options};

#[test]
fn a_kvm_guest_runs_through_physmap_with_a_busy_control_plane() {
    if let Err(why) = vmm::kvm_usable() {
        eprintln!("SKIPPED: KVM is not usable here: {why}");
        return;
    }
    let opts = Options {
        vcpus: 2,
        seconds: 3.0,
        bus: BusKind::Physmap,
        control_plane: true,
    };
    let r = vmm::run(&opts).expect("the VM runs");
    eprintln!("{r:?}");
    assert_eq!(r.misroutes, 0, "device-detected misroutes");
    assert_eq!(
        r.guest_error_count(),
        0,
        "guest-detected errors: {:?}",
        r.guest_errors
    );
    assert!(r.total_exits() >= 1_000, "exits: {}", r.total_exits());
    assert!(
        r.exits.iter().all(|&e| e > 0),
        "every vCPU ran: {:?}",
        r.exits
    );
    assert!(r.bar_moves >= 10, "BAR moves: {}", r.bar_moves);
    assert!(
        r.memslot_updates >= 10,
        "memslot updates: {}",
        r.memslot_updates
    );
    assert!(r.block_changes >= 2 && r.rom_toggles >= 2, "{r:?}");
    assert!(r.memslots_match, "memslots differ from the memory map");
}

/// The comparison runs of `scripts/kvm-bench.sh` answer the guest correctly too: the
/// `RwLock<BTreeMap>` bus, and the floor's fixed table (which lists the moving BAR at both of
/// its places), so that their figures are of the same work.
#[test]
fn the_benchmark_baselines_serve_the_same_guest() {
    if let Err(why) = vmm::kvm_usable() {
        eprintln!("SKIPPED: KVM is not usable here: {why}");
        return;
    }
    for bus in [BusKind::RwLock, BusKind::Table] {
        let opts = Options {
            vcpus: 2,
            seconds: 1.0,
            bus,
            control_plane: true,
        };
        let r = vmm::run(&opts).expect("the VM runs");
        assert_eq!(r.misroutes, 0, "{bus:?}: device-detected misroutes");
        assert_eq!(r.guest_error_count(), 0, "{bus:?}: {:?}", r.guest_errors);
        assert!(
            r.total_exits() >= 1_000,
            "{bus:?}: exits {}",
            r.total_exits()
        );
        assert!(r.bar_moves >= 10, "{bus:?}: BAR moves {}", r.bar_moves);
        // The guest reads all ones (and retries) only where no device answers at the BAR's
        // address: in the moment between a move and the mailbox's update, not half the time.
        let iterations: u64 = r.iterations.iter().sum();
        assert!(r.moved_retries * 10 <= iterations, "{bus:?}: {r:?}");
    }
}
