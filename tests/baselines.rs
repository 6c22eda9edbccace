//! The benchmark baselines must answer exactly as physmap does, or the comparison means
//! nothing. (The baselines live in `benches/common/`.)

#[path = "../benches/common/baselines.rs"]
mod baselines;
#[path = "../benches/common/workloads.rs"]
mod workloads;

use baselines::*;
use workloads::*;

fn check(w: &Workload) {
    let map = physmap_of(w);
    let snap = map.snapshot();
    let qemu = QemuDispatch::build(&w.regions);
    let vec = ArcSwapVec::new(&w.regions);
    let rw = RwLockBTree::new(&w.regions);
    let mutex = MutexBTree::new(&w.regions);
    let mut probes = w.addrs.clone();
    for r in w.regions.iter().take(5000) {
        probes.extend([
            r.start,
            r.end,
            r.start.wrapping_sub(1),
            r.end.wrapping_add(1),
        ]);
    }
    for a in probes {
        let want = snap.lookup(a).map(|h| (*h.value, h.offset));
        assert_eq!(qemu.lookup(a), want, "{}: qemu-style at {a:#x}", w.name);
        assert_eq!(vec.lookup(a), want, "{}: arcswap-vec at {a:#x}", w.name);
        assert_eq!(
            rw.lookup(a).map(|(v, o)| (*v, o)),
            want,
            "{}: rwlock at {a:#x}",
            w.name
        );
        assert_eq!(
            mutex.lookup(a).map(|(v, o)| (*v, o)),
            want,
            "{}: mutex at {a:#x}",
            w.name
        );
    }
}

#[test]
fn q35_machines() {
    check(&q35("q35-4g-virtio.txt", "q35-virtio"));
    check(&q35("q35-booted.txt", "q35-booted"));
}

#[test]
fn thousand_regions() {
    check(&regions_1k());
}

#[test]
fn uncollapsed_node_count_matches_a_brute_force_count() {
    let w = q35("q35-booted.txt", "q35-booted");
    let mut want = 0u64;
    for level in 1..=6u32 {
        let mut prefixes = std::collections::BTreeSet::new();
        for r in &w.regions {
            for page in (r.start >> 12)..=(r.end >> 12) {
                prefixes.insert(page >> (9 * level));
            }
        }
        want += prefixes.len() as u64;
    }
    assert_eq!(uncollapsed_nodes(&w.regions), want);
}
