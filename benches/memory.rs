//! Bytes and nodes per workload: physmap against the QEMU-style dispatch (built by the same
//! rules as QEMU's), the radix tree from before early termination (counted, not built), one
//! entry per 4 KiB page (KVM's memory attributes xarray), and QEMU's own dispatch from the
//! captured dumps. Not timed: prints a table and writes `target/physmap-bench/memory.json`.

#[path = "common/baselines.rs"]
mod baselines;
#[path = "common/workloads.rs"]
mod workloads;

use baselines::*;
use std::fmt::Write as _;
use workloads::*;

/// Bytes of one QEMU `MemoryRegionSection` (QEMU 7.2, x86-64: an `Int128` size, two
/// pointers, two offsets, two bools; 16-byte aligned).
const QEMU_SECTION_BYTES: usize = 64;

/// XArray cost of one entry per page: 64-entry nodes of 576 bytes on x86-64, so 9 bytes a
/// page in the best (dense) case, plus the upper levels (ignored: a lower bound).
const XARRAY_BYTES_PER_PAGE: f64 = 576.0 / 64.0;

fn main() {
    // `cargo bench` passes `--bench`; ignore arguments.
    // `true`: ranges with equal values share one section (`Transaction::insert_shared`).
    let mut shared_cvm = cvm_1m();
    shared_cvm.name = "cvm-1m-pages, insert_shared";
    let workloads = [
        (q35("q35-4g-virtio.txt", "q35-virtio"), false),
        (q35("q35-booted.txt", "q35-booted"), false),
        (regions_1k(), false),
        (virtio_mem_1t(), false),
        (cvm_1m(), false),
        (shared_cvm, true),
        (cvm_runs(), false),
    ];
    let mut json = String::from("{\"workloads\":[");
    println!("Tree bytes = nodes + sub-page tables. Total = tree + per-range records (physmap: pieces and section slots; QEMU: its section table at {QEMU_SECTION_BYTES} B a MemoryRegionSection).\n");
    println!("| workload | ranges | physmap nodes | sub-page tables | physmap tree bytes | physmap total bytes | with flat nodes: nodes + flat, total bytes | QEMU-style nodes (reachable) | sub-page tables | QEMU-style tree bytes | QEMU-style total bytes | uncollapsed nodes | uncollapsed bytes | one entry per page (xarray) |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    let flat = physmap::Config {
        flat_nodes: true,
        ..physmap::Config::default()
    };
    for (i, (w, shared)) in workloads.iter().enumerate() {
        let map = if *shared {
            physmap_shared_of(w)
        } else {
            physmap_of(w)
        };
        let s = map.snapshot().stats();
        let f = if *shared {
            physmap_shared_with(w, flat.clone())
        } else {
            physmap_with(w, flat.clone())
        }
        .snapshot()
        .stats();
        let q = (w.regions.len() <= 100_000).then(|| QemuDispatch::build(&w.regions));
        let unc = uncollapsed_nodes(&w.regions);
        let pages: u64 = w
            .regions
            .iter()
            .map(|r| (r.end >> 12) - (r.start >> 12) + 1)
            .sum();
        let xarray = pages as f64 * XARRAY_BYTES_PER_PAGE;
        let (qn, qr, qs, qb, qt) = match &q {
            Some(q) => (
                q.nodes.len().to_string(),
                q.reachable_nodes().to_string(),
                q.subpages.len().to_string(),
                q.bytes().to_string(),
                (q.bytes() + q.sections.len() * QEMU_SECTION_BYTES).to_string(),
            ),
            None => ("-".into(), "-".into(), "-".into(), "-".into(), "-".into()),
        };
        println!(
            "| {} | {} | {} | {} | {} | {} | {} + {}, {} | {} ({}) | {} | {} | {} | {} | {} | {:.0} |",
            w.name,
            w.regions.len(),
            s.nodes,
            s.subpage_tables,
            s.tree_bytes,
            s.bytes,
            f.nodes,
            f.flat_nodes,
            f.bytes,
            qn,
            qr,
            qs,
            qb,
            qt,
            unc,
            unc * 2048,
            xarray
        );
        if i > 0 {
            json.push(',');
        }
        write!(
            json,
            "{{\"name\":\"{}\",\"ranges\":{},\"physmap_nodes\":{},\"physmap_subpage_tables\":{},\"physmap_bytes\":{},\"physmap_tree_bytes\":{},\"flat_nodes\":{},\"flat_dense_nodes\":{},\"flat_bytes\":{},\"qemu_style_nodes\":{},\"qemu_style_reachable\":{},\"qemu_style_subpages\":{},\"qemu_style_bytes\":{},\"uncollapsed_nodes\":{},\"uncollapsed_bytes\":{},\"xarray_bytes\":{:.0}}}",
            w.name,
            w.regions.len(),
            s.nodes,
            s.subpage_tables,
            s.bytes,
            s.tree_bytes,
            f.flat_nodes,
            f.nodes,
            f.bytes,
            q.as_ref().map_or("null".into(), |q| q.nodes.len().to_string()),
            q.as_ref().map_or("null".into(), |q| q.reachable_nodes().to_string()),
            q.as_ref().map_or("null".into(), |q| q.subpages.len().to_string()),
            q.as_ref().map_or("null".into(), |q| q.bytes().to_string()),
            unc,
            unc * 2048,
            xarray
        )
        .unwrap();
    }
    json.push_str("],\"qemu_dumps\":[");
    // QEMU's own dispatch, from the dumps, against physmap on the same FlatViews.
    println!();
    println!("| QEMU dump | FlatView | ranges | physmap total bytes | with flat nodes | QEMU's own tree bytes (2 KiB a node, 8 KiB a sub-page table) | dense / QEMU | flat / QEMU |");
    println!("|---|---|---|---|---|---|---|---|");
    let dumps = [
        "q35-booted.txt",
        "q35-4g-virtio.txt",
        "q35-24-virtio-net.txt",
        "q35-idle.txt",
        "pc-i440fx.txt",
        "pc-dimms.txt",
        "virt-arm.txt",
    ];
    let mut first = true;
    for file in dumps {
        let path = format!("{}/tests/data/{file}", env!("CARGO_MANIFEST_DIR"));
        let dump =
            physmap::mtree::Dump::parse(&std::fs::read_to_string(&path).unwrap(), &path).unwrap();
        for fv in &dump.flatviews {
            let Some(d) = &fv.dispatch else { continue };
            let dense = fv.build().unwrap().snapshot().stats().bytes;
            let flat = fv
                .build_with(physmap::Config {
                    flat_nodes: true,
                    ..fv.config()
                })
                .unwrap()
                .snapshot()
                .stats()
                .bytes;
            let theirs = d.bytes();
            println!(
                "| {file} | #{} {} | {} | {dense} | {flat} | {theirs} | {:.1}% | {:.1}% |",
                fv.index,
                fv.label(),
                fv.ranges.len(),
                100.0 * dense as f64 / theirs as f64,
                100.0 * flat as f64 / theirs as f64
            );
            if !first {
                json.push(',');
            }
            first = false;
            write!(
                json,
                "{{\"file\":\"{file}\",\"flatview\":{},\"label\":\"{}\",\"ranges\":{},\"physmap_bytes\":{dense},\"flat_bytes\":{flat},\"qemu_bytes\":{theirs}}}",
                fv.index,
                fv.label().replace('"', "'"),
                fv.ranges.len()
            )
            .unwrap();
        }
    }
    json.push_str("]}");
    let dir = format!("{}/target/physmap-bench", env!("CARGO_MANIFEST_DIR"));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(format!("{dir}/memory.json"), json).unwrap();
    println!("\nwritten {dir}/memory.json");
}
