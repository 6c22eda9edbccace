#!/usr/bin/env python3
"""Writes BENCHMARKS.md and benches/results/scaling.svg from the runs of scripts/bench-all.sh.

It reads criterion's lookup baselines run1, run2, ... and the other benchmarks' `new`
results under target/criterion, target/physmap-bench/{concurrent,memory}.json, and the
hand-written analysis in benches/results/notes.md.
Only the Python standard library is used.
"""
import glob
import json
import statistics
import os
import platform
import subprocess
import sys
from datetime import datetime, timezone

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
CRIT = os.path.join(ROOT, "target", "criterion")


def bench_output(name):
    """A file the benchmarks write beside criterion's results (target/physmap-bench)."""
    return os.path.join(ROOT, "target", "physmap-bench", name)


def load(baseline="new"):
    """Criterion results saved under `baseline`, by full id: ns per iteration and per element."""
    out = {}
    for est in glob.glob(f"{CRIT}/**/{baseline}/estimates.json", recursive=True):
        d = os.path.dirname(est)
        bench = json.load(open(os.path.join(d, "benchmark.json")))
        e = json.load(open(est))
        tp = bench.get("throughput") or {}
        n = tp.get("Elements") or tp.get("Bytes") or 1
        out[bench["full_id"]] = {
            "ns": e["mean"]["point_estimate"],  # per iteration
            "per": e["mean"]["point_estimate"] / n,  # per element
            "n": n,
        }
    return out


def load_runs():
    """The lookup runs saved by scripts/bench-all.sh as baselines run1, run2, ..."""
    runs = []
    k = 1
    while True:
        r = load(f"run{k}")
        if not r:
            break
        runs.append(r)
        k += 1
    return runs


def machine():
    cpu = "unknown CPU"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    rustc = subprocess.run(["rustc", "--version"], capture_output=True, text=True).stdout.strip()
    return f"{cpu}, {os.cpu_count()} logical CPUs, {platform.system()} {platform.release()}, {rustc}"


def fmt_ns(x):
    if x >= 1e6:
        return f"{x / 1e6:.2f} ms"
    if x >= 1e3:
        return f"{x / 1e3:.1f} µs"
    return f"{x:.2f} ns"


def scaling_svg(curves, sizes):
    """Log-log plot of ns per lookup against the number of ranges, one line per structure."""
    import math
    colors = {"physmap-reader": "#1b7837", "physmap-snapshot": "#5aae61", "arcswap-vec": "#762a83",
              "rwlock-btreemap": "#d6604d", "qemu-dispatch": "#4393c3"}
    W, H, L, B, T, R = 640, 380, 60, 40, 30, 170
    ys = [v for pts in curves.values() for _, v in pts]
    y0, y1 = math.log10(min(ys) * 0.8), math.log10(max(ys) * 1.25)
    x0, x1 = math.log10(sizes[0]), math.log10(sizes[-1])
    X = lambda n: L + (math.log10(n) - x0) / (x1 - x0) * (W - L - R)
    Y = lambda v: H - B - (math.log10(v) - y0) / (y1 - y0) * (H - B - T)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="11">',
           f'<text x="{L}" y="18" font-size="13" font-weight="bold">Lookup ns (log) against ranges in the map (log)</text>',
           f'<line x1="{L}" y1="{H - B}" x2="{W - R}" y2="{H - B}" stroke="#000"/>',
           f'<line x1="{L}" y1="{T}" x2="{L}" y2="{H - B}" stroke="#000"/>']
    for n in sizes:
        out.append(f'<text x="{X(n):.0f}" y="{H - B + 15}" text-anchor="middle">{n:,}</text>')
    for e in range(math.floor(y0), math.ceil(y1) + 1):
        for m in (1, 2, 5):
            v = m * 10 ** e
            if y0 <= math.log10(v) <= y1:
                out.append(f'<line x1="{L - 4}" y1="{Y(v):.0f}" x2="{W - R}" y2="{Y(v):.0f}" stroke="#ddd"/>')
                out.append(f'<text x="{L - 6}" y="{Y(v) + 4:.0f}" text-anchor="end">{v:g}</text>')
    for i, (s, pts) in enumerate(curves.items()):
        c = colors.get(s, "#777")
        out.append('<polyline fill="none" stroke-width="2" stroke="' + c + '" points="'
                   + " ".join(f"{X(n):.1f},{Y(v):.1f}" for n, v in pts) + '"/>')
        out.append(f'<text x="{W - R + 10}" y="{T + 14 * i + 10}" fill="{c}">{s}</text>')
    out.append("</svg>")
    os.makedirs(os.path.join(ROOT, "benches", "results"), exist_ok=True)
    open(os.path.join(ROOT, "benches", "results", "scaling.svg"), "w").write("\n".join(out) + "\n")


def seabios_section(w):
    """The "Real firmware" section, from target/physmap-bench/seabios.jsonl
    (scripts/seabios-bench.sh); nothing if that file is missing."""
    path = bench_output("seabios.jsonl")
    if not os.path.exists(path):
        return
    runs = [json.loads(l) for l in open(path) if l.strip()]
    if not runs:
        return
    rounds = sorted({x["round"] for x in runs})
    secs = runs[0]["check_seconds"]
    w("## Real firmware: SeaBIOS to our option ROM")
    w("")
    w("`scripts/seabios-bench.sh`: `cargo run --release --features kvm --example seabios` (Debian's "
      "SeaBIOS 1.16.2 from reset: PAM shadowing, PCI enumeration and BAR placement, option ROM read "
      "through its ROM BAR and booted; then the option ROM checks its devices on every vCPU for "
      f"{secs:.0f} s while the control plane moves a BAR every 0.5 ms, switches PAM every 1 ms and plugs a "
      "memory block every 4 ms) with physmap's bus and with the `RwLock<BTreeMap>` bus, 1 and 2 vCPUs, "
      f"{len(rounds)} interleaved rounds. Machine: 2-core Xeon, nested KVM (`kvm_pvm`, shadow paging): "
      "an exit costs microseconds, the bus's part is measured on its own (lookup, access check, device "
      "call). Median of the rounds (fastest..slowest).")
    w("")
    w("| vCPUs | bus | reset to ROM init | reset to BEV | firmware exits (MMIO / port) | guest exits/s | dispatch ns per exit, median | mean | BAR move µs (p99) | misroutes, guest errors | log = bus |")
    w("|---|---|---|---|---|---|---|---|---|---|---|")
    med = lambda v: sorted(v)[len(v) // 2]
    rng = lambda v, f: f"{f(med(v))} ({f(min(v))}..{f(max(v))})"
    for v in (1, 2):
        for bus in ("Physmap", "RwLock"):
            rs = [x for x in runs if x["vcpus"] == v and x["bus"] == bus]
            if not rs:
                continue
            fw = rs[0]["firmware"]
            bad = sum(x["misroutes"] + x["guest_errors"] for x in rs)
            ok = all(x["log_matches_bus"] and x["firmware_ok"] and x["option_rom_ok"] for x in rs)
            w(f"| {v} | {bus} | {rng([x['boot_ms'] for x in rs], lambda t: f'{t:.0f} ms')} | "
              f"{rng([x['bev_ms'] for x in rs], lambda t: f'{t:.0f} ms')} | "
              f"{med([x['firmware_exits'] for x in rs]):,} ({fw['mmio']:,} / {fw['pio']:,}) | "
              f"{rng([x['guest_exits'] / x['check_seconds'] for x in rs], lambda t: f'{t:,.0f}')} | "
              f"{rng([x['dispatch_ns'] for x in rs], lambda t: f'{t:.0f}')} | "
              f"{med([x['dispatch_mean_ns'] for x in rs]):.0f} | "
              f"{med([x['control_move_us'][0] for x in rs]):.0f} ({med([x['control_move_us'][1] for x in rs]):.0f}) | "
              f"{bad} | {'yes' if ok else 'NO'} |")
    w("")
    ratios = []
    for r in rounds:
        for v in (1, 2):
            p = [x for x in runs if x["round"] == r and x["vcpus"] == v and x["bus"] == "Physmap"]
            q = [x for x in runs if x["round"] == r and x["vcpus"] == v and x["bus"] == "RwLock"]
            if p and q:
                ratios.append((v, q[0]["dispatch_ns"] / p[0]["dispatch_ns"]))
    for v in (1, 2):
        rv = [x for vv, x in ratios if vv == v]
        if rv:
            w(f"- {v} vCPU{'s' if v > 1 else ''}: `RwLock<BTreeMap>` / physmap median dispatch, per round: "
              + ", ".join(f"{x:.2f}x" for x in rv) + ".")
    x = next(r for r in runs if r["bus"] == "Physmap")
    fw, g = x["firmware"], x["guest"]
    w(f"- Exits by kind, firmware (reset to BEV, one run): {fw['pci_config']:,} PCI config (0xcf8/0xcfc), "
      f"{fw['debugcon']:,} debug console (its log, a byte an exit), {fw['cmos']} CMOS, {fw['serial']} serial, "
      f"{fw['rom_bar']:,} expansion-ROM reads through the ROM BAR, {fw['bar_io'] + fw['bar_mmio']} to BARs "
      f"(the ROM's doorbell), {fw['other_pio']} to port 0x92 (A20, at mode switches), {fw['unclaimed_pio']} to ports "
      "nothing claims (keyboard controller, DMA, LPT and serial probes, fw_cfg at 0x510), "
      f"{fw['from_memory'] + fw['dropped'] + fw['unclaimed_mmio']} MMIO exits outside devices. "
      "The PIC, PIT and local APIC are in-kernel: they never exit.")
    w(f"- Exits by kind, guest ({x['vcpus']} vCPUs, {x['check_seconds']:.0f} s): {g['bar_mmio']:,} BAR MMIO, "
      f"{g['bar_io']:,} BAR port I/O, {g['pci_config']:,} PCI config (re-reading the moving BAR), "
      f"{g['dropped']:,} writes dropped at read-only PAM segments or the flash, {g['from_memory']:,} served from "
      f"guest memory (PAM write-only segments, memslots being replaced), {g['unclaimed_mmio']:,} unclaimed "
      "(the unplugged block, the BAR's old place).")
    w("")


def exit_path_section(w):
    """The "Exit path" section: data cache lines per cold dispatch from
    target/physmap-bench/cold-lines.json (scripts/cold-lines.sh) and ns per cold dispatch
    from the criterion group cold/<map>/<structure> (cargo bench --bench cold); nothing if
    neither was run."""
    path = bench_output("cold-lines.json")
    lines = json.load(open(path)) if os.path.exists(path) else []
    ns = {k: v["ns"] for k, v in load().items() if k.startswith("cold/")}
    if not lines and not ns:
        return
    maps = []
    for x in lines:
        if x["map"] not in maps:
            maps.append(x["map"])
    for k in ns:
        m = k.split("/")[1]
        if m not in maps:
            maps.append(m)
    S = ["physmap-bus", "rwlock-bus", "rwlock-bus-inlined", "physmap-reader", "qemu-walk"]
    w("## The exit path: a dispatch from cold caches")
    w("")
    w("Between two exits the guest ran and evicted what the VMM touched: what a dispatch costs at a "
      "real exit is the number of cache lines it fetches from far away. `benches/cold.rs` dispatches "
      "4-byte MMIO reads spread uniformly over every MMIO range of each map (each range a device) "
      "after a walk that evicts the caches: `physmap-bus` is physmap's `MmioBus` with one `BusVcpu` "
      "(online, lookup, access check, device call, offline), `rwlock-bus` Cloud Hypervisor's "
      "`RwLock<BTreeMap>` bus (read lock, range search, `Weak::upgrade`, device call) called as "
      "VMMs call their bus crate's `read`, `rwlock-bus-inlined` the same compiled into its caller "
      "as physmap's dispatch is, `physmap-reader` a `Reader::lookup` alone and `qemu-walk` QEMU's dispatch walk alone.")
    w("")
    if lines:
        w("Data cache lines fetched per cold dispatch, `scripts/cold-lines.sh` (callgrind's cache "
          "simulation, counted inside the dispatch: D1 32 KiB, LL 1 MiB, I1 32 KiB, a 2 MiB walk and "
          "64 KiB of no-ops before each of 1,000 dispatches, the walks alone subtracted; address "
          "randomisation off, so the figures are exact and repeat run after run), with the "
          "instructions and the code lines (I1 misses):")
        w("")
        w("| map | " + " | ".join(f"{s} lines (instr., code)" for s in S) + " | bus: physmap / RwLock lines | walk: physmap / QEMU lines |")
        w("|---|" + "---|" * (len(S) + 2))
        for m in maps:
            d = {x["structure"]: x for x in lines if x["map"] == m}
            if not d:
                continue
            cells = [f"{d[s]['d1_lines']:.1f} ({d[s]['instructions']:.0f}, {d[s].get('code_lines', float('nan')):.1f})"
                     if s in d else "" for s in S]
            r1 = d["physmap-bus"]["d1_lines"] / d["rwlock-bus"]["d1_lines"] if "physmap-bus" in d and "rwlock-bus" in d else None
            r2 = d["physmap-reader"]["d1_lines"] / d["qemu-walk"]["d1_lines"] if "physmap-reader" in d and "qemu-walk" in d else None
            f = lambda r: f"**{r:.2f}x**" if r is not None else ""
            w(f"| {m} | " + " | ".join(cells) + f" | {f(r1)} | {f(r2)} |")
        w("")
    if ns:
        w("ns per cold dispatch, criterion (`cargo bench --bench cold`: each dispatch timed alone after "
          "an 8 MiB walk, so the lines come from L3; `none` is the timer and the loop alone, subtracted "
          "below):")
        w("")
        w("| map | " + " | ".join(S) + " | bus: physmap / RwLock |")
        w("|---|" + "---|" * (len(S) + 1))
        for m in maps:
            base = ns.get(f"cold/{m}/none", 0.0)
            d = {s: ns[f"cold/{m}/{s}"] - base for s in S if f"cold/{m}/{s}" in ns}
            if not d:
                continue
            r = d["physmap-bus"] / d["rwlock-bus"] if "physmap-bus" in d and "rwlock-bus" in d else None
            w(f"| {m} | " + " | ".join(f"{d[s]:.1f}" if s in d else "" for s in S)
              + (f" | **{r:.2f}x** |" if r is not None else " | |"))
        w("")
    kpath = bench_output("kvm.jsonl")
    runs = [json.loads(l) for l in open(kpath) if l.strip()] if os.path.exists(kpath) else []
    runs = [x for x in runs if x["round"] != "long"]
    if runs:
        w("At a real exit (`scripts/kvm-bench.sh`, the section \"A real KVM guest\": its `SUMMARY` "
          "line), dispatch ns per exit, median of the rounds, and physmap / `RwLock<BTreeMap>` per "
          "round (issue 25's targets: at most 0.75x with 1 vCPU, 0.5x with 2); the floor is "
          "`--bus table` (no bus: a fixed table scanned with no synchronization), and a bus's own "
          "part its median minus the floor's (the script's `FLOOR` line):")
        w("")
        w("| vCPUs | physmap | `RwLock<BTreeMap>` | floor | ratio of the medians | floor / RwLock | own parts: physmap, RwLock | ratio per round |")
        w("|---|---|---|---|---|---|---|---|")
        for v in sorted({x["vcpus"] for x in runs}):
            by = {b: {x["round"]: x["dispatch_ns"] for x in runs if x["vcpus"] == v and x["bus"] == b}
                  for b in ("Physmap", "RwLock", "Table")}
            md = lambda d: statistics.median(d.values()) if d else float("nan")
            per = ", ".join(f"{by['Physmap'][r] / by['RwLock'][r]:.2f}x"
                            for r in sorted(by["Physmap"]) if r in by["RwLock"])
            p, q, f = md(by["Physmap"]), md(by["RwLock"]), md(by["Table"])
            w(f"| {v} | {p:.1f} | {q:.1f} | {f:.1f} | **{p / q:.2f}x** | {f / q:.2f}x | "
              f"{p - f:.1f}, {q - f:.1f} | {per} |")
        w("")


def main():
    r = load()
    if not r:
        sys.exit("no criterion results under target/criterion: run the benchmarks first")
    lines = []
    w = lines.append
    w("# Benchmarks")
    w("")
    w("Generated by `python3 scripts/bench-report.py` from one run of the commands below; every")
    w("ratio compares figures measured in that same run. Machine: " + machine() + ".")
    w(f"Run finished {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}. This is a shared 2-core")
    w("machine: absolute times drift by ±30 % between runs; the ratios are what to read.")
    w("")
    w("```sh")
    w("scripts/bench-all.sh              # 5 lookup runs, then concurrent, commit, scale, memory")
    w("python3 scripts/bench-report.py   # this file and benches/results/scaling.svg (bench-all runs it)")
    w("```")
    w("")
    w("Baselines live in `benches/common/baselines.rs`: `rwlock-btreemap` (Cloud Hypervisor /")
    w("Firecracker `Bus`: `RwLock<BTreeMap>`, `Weak::upgrade` per access), `arcswap-vec` (rust-vmm")
    w("vm-memory `GuestMemoryAtomic`: `ArcSwap<Vec<Arc<region>>>`, `load()` + binary search),")
    w("`qemu-dispatch` (QEMU's `AddressSpaceDispatch` walk: 6 levels of 512 32-bit entries, leaves at")
    w("any level, skip-compressed paths, 8 KiB sub-page tables, section index in the entry; rebuilt in")
    w("full per change). Every baseline answers exactly as physmap does (checked before timing, and")
    w("in `tests/baselines.rs`). Maps: the \"memory\" FlatView of QEMU 7.2 dumps in `tests/data`")
    w("(`q35-booted`, `q35-24-virtio-net` with 24 virtio-net devices, `pc-i440fx`, `pc-dimms`,")
    w("`virt-arm`), and large synthetic ones (q35 plus 1 TiB of virtio-mem in 2 MiB blocks with 8K")
    w("or 64K plugged runs; 1M 4 KiB pages alternating private/shared). Workloads:")
    w("`benches/common/workloads.rs`.")
    w("")

    # 1. lookup, one table per mix
    runs = load_runs()
    MAPS = ["q35-booted", "q35-24-virtio-net", "pc-i440fx", "pc-dimms", "virt-arm"]
    MIXES = [("mmio", "MMIO exits: a uniformly chosen MMIO range, a uniform address in it"),
             ("ram", "device DMA: a uniformly chosen RAM range, a uniform address in it"),
             ("low64g", "uniform over the low 64 GiB, mapped or not"),
             ("bursts", "bursts: runs of 2 to 17 repeats of one MMIO address (exits cluster)")]
    S = ["physmap-reader", "physmap-snapshot", "qemu-dispatch", "arcswap-vec", "rwlock-btreemap"]

    def per_run(group, s):
        return [r[f"{group}/{s}"]["per"] for r in runs if f"{group}/{s}" in r]

    def med(v):
        v = sorted(v)
        return v[len(v) // 2] if v else None

    def cell(v):
        if not v:
            return "-"
        return f"{med(v):.2f} ({min(v):.2f}..{max(v):.2f})"

    w("## Single-thread lookup")
    w("")
    w(f"{len(runs)} runs of `cargo bench --bench lookup` (criterion baselines `run1`..`run{len(runs)}`), "
      "65,536 addresses per iteration. Each cell: ns per lookup, median of the runs (fastest..slowest "
      "run). Target columns: the median over runs of the per-run ratio, with **met** or by how much "
      "it is missed.")
    w("")
    w("Targets (issue 10): `Snapshot::lookup` no slower than the QEMU-style walk; `Reader::lookup` "
      "within 1 ns of `Snapshot::lookup` on the three spread mixes and no slower than the walk on "
      "bursts; the `Reader` at least 3x faster than `RwLock<BTreeMap>` and 1.5x faster than "
      "`ArcSwap<Vec>` + binary search.")
    w("")
    misses = []
    for mix, what in MIXES:
        w(f"### {mix}: {what}")
        w("")
        w("| map | reader | snapshot | QEMU-style walk | ArcSwap<Vec> | RwLock<BTreeMap> | snapshot / walk | "
          + ("reader - snapshot" if mix != "bursts" else "reader / walk") + " | rwlock / reader | vec / reader |")
        w("|---|---|---|---|---|---|---|---|---|---|")
        for m in MAPS:
            g = f"lookup/{m}/{mix}"
            vals = {s: per_run(g, s) for s in S}
            if not vals["physmap-reader"]:
                continue
            pairs = lambda x, y: [a / b for a, b in zip(vals[x], vals[y])]
            snap_walk = med(pairs("physmap-snapshot", "qemu-dispatch"))
            ok = lambda good, by: "**met**" if good else f"missed by {by}"
            c1 = f"{snap_walk:.2f}x " + ok(snap_walk <= 1.0, f"{(snap_walk - 1) * 100:.0f} %")
            if mix != "bursts":
                d = med([a - b for a, b in zip(vals["physmap-reader"], vals["physmap-snapshot"])])
                c2 = f"{d:+.2f} ns " + ok(d <= 1.0, f"{d - 1:.2f} ns")
            else:
                rq = med(pairs("physmap-reader", "qemu-dispatch"))
                c2 = f"{rq:.2f}x " + ok(rq <= 1.0, f"{(rq - 1) * 100:.0f} %")
            rw = med(pairs("rwlock-btreemap", "physmap-reader"))
            av = med(pairs("arcswap-vec", "physmap-reader"))
            c3 = f"{rw:.2f}x " + ok(rw >= 3.0, f"{(1 - rw / 3) * 100:.0f} %")
            c4 = f"{av:.2f}x " + ok(av >= 1.5, f"{(1 - av / 1.5) * 100:.0f} %")
            for c in (c1, c2, c3, c4):
                if "missed" in c:
                    misses.append(f"{m}/{mix}")
            w(f"| {m} | " + " | ".join(cell(vals[s]) for s in S) + f" | {c1} | {c2} | {c3} | {c4} |")
        w("")
    if misses:
        w("Rows with a missed target: " + ", ".join(sorted(set(misses))) + ".")
        w("")

    # 1b. large maps
    w("### Large maps, addresses spread over the RAM ranges (device DMA)")
    w("")
    w("Targets: `Snapshot::lookup` within 1.5x of the walk and at least 1.2x faster than both other "
      "baselines in every run; slowest run within 1.5x of the fastest (or no wider than the walk's spread).")
    w("")
    w("| map | snapshot | reader | QEMU-style walk | ArcSwap<Vec> | RwLock<BTreeMap> | snapshot / walk (worst run) | vec / snapshot, rwlock / snapshot (worst run) | spread slowest/fastest: snapshot, walk |")
    w("|---|---|---|---|---|---|---|---|---|")
    for m in ["q35-virtio-mem-1t-8k-runs", "q35-virtio-mem-1t-64k-runs", "cvm-1m-pages"]:
        g = f"lookup-large/{m}"
        vals = {s: per_run(g, s) for s in S}
        if not vals["physmap-snapshot"]:
            continue
        sw = max(a / b for a, b in zip(vals["physmap-snapshot"], vals["qemu-dispatch"]))
        vs = min(a / b for a, b in zip(vals["arcswap-vec"], vals["physmap-snapshot"]))
        rs = min(a / b for a, b in zip(vals["rwlock-btreemap"], vals["physmap-snapshot"])) if vals["rwlock-btreemap"] else None
        sp = max(vals["physmap-snapshot"]) / min(vals["physmap-snapshot"])
        qp = max(vals["qemu-dispatch"]) / min(vals["qemu-dispatch"])
        ok1 = "**met**" if sw <= 1.5 else f"missed by {(sw / 1.5 - 1) * 100:.0f} %"
        worst = min(vs, rs) if rs else vs
        ok2 = "**met**" if worst >= 1.2 else f"missed by {(1 - worst / 1.2) * 100:.0f} %"
        ok3 = "**met**" if sp <= 1.5 or sp <= qp else "missed"
        rs_txt = f"{rs:.2f}x" if rs else "-"
        w(f"| {m} | {cell(vals['physmap-snapshot'])} | {cell(vals['physmap-reader'])} | {cell(vals['qemu-dispatch'])} | "
          f"{cell(vals['arcswap-vec'])} | {cell(vals['rwlock-btreemap'])} | {sw:.2f}x {ok1} | {vs:.2f}x, {rs_txt} {ok2} | "
          f"{sp:.2f}, {qp:.2f} {ok3} |")
    w("")

    # 1c. scaling plot
    sizes = [10, 100, 1000, 10000, 100000, 1000000]
    curves = {}
    for s in S:
        pts = [(n, med(per_run(f"lookup-scaling/{n}", s))) for n in sizes]
        pts = [(n, v) for n, v in pts if v]
        if pts:
            curves[s] = pts
    if curves:
        w("### Lookup time against the number of ranges")
        w("")
        w("Synthetic maps of 10 to 1M ranges of mixed sizes (`workloads::ranges_n`), addresses uniform "
          "over the ranges; median of the runs, ns per lookup.")
        w("")
        w("| structure | " + " | ".join(f"{n:,}" for n in sizes) + " |")
        w("|---|" + "---|" * len(sizes))
        for s, pts in curves.items():
            d = dict(pts)
            w(f"| {s} | " + " | ".join(f"{d[n]:.2f}" if n in d else "-" for n in sizes) + " |")
        w("")
        w("![lookup ns against the number of ranges](benches/results/scaling.svg)")
        w("")
        scaling_svg(curves, sizes)

    # 1d. epoch
    e_s, e_p = med(per_run("lookup-epoch", "physmap-snapshot")), med(per_run("lookup-epoch", "epoch-pin+snapshot"))
    if e_s and e_p:
        w(f"crossbeam-epoch, measured (q35-24-virtio-net, MMIO): pinning a guard around each lookup costs "
          f"{e_p - e_s:.2f} ns a lookup on top of `Snapshot::lookup` ({e_p / e_s:.2f}x); a `Reader` "
          "announces its generation with a plain store only when the generation changes.")
        w("")

    # 2. concurrent
    cpath = bench_output("concurrent.json")
    if os.path.exists(cpath):
        cj = json.load(open(cpath))
        w("## Readers with and without a writer committing back to back")
        w("")
        w("`cargo bench --bench concurrent`: readers look up for 0.5 s without a writer, then with a "
          "writer committing back to back (one 2 MiB block overwritten per commit, outside every lookup "
          "address), then with a writer sleeping between commits; 7 such rounds, interleaved. Ratio: "
          "lookups per second with the writer over without, per round; median and range. Target "
          "(issue 12): 1 reader keeps at least 95 % with the back-to-back writer.")
        w("")
        w("| mix | readers | without writer: M lookups/s | with writer: M lookups/s | commits/s | ratio (median) | ratio range | with a sleeping writer: ratio (commits/s) |")
        w("|---|---|---|---|---|---|---|---|")
        for p in cj["pairs"]:
            md = lambda v: sorted(v)[len(v) // 2]
            tgt = ""
            if p["readers"] == 1:
                r1 = md(p["ratios"])
                tgt = " **met**" if r1 >= 0.95 else f" missed by {(0.95 - r1) * 100:.1f} points"
            w(f"| {p['mix']} | {p['readers']} | {md(p['without']) / 1e6:.1f} | {md(p['with']) / 1e6:.1f} | "
              f"{md(p['commits_per_s']):,.0f} | **{md(p['ratios']) * 100:.1f} %**{tgt} | "
              f"{min(p['ratios']) * 100:.1f} .. {max(p['ratios']) * 100:.1f} % | "
              f"{md(p['paced_ratios']) * 100:.1f} % ({md(p['paced_commits_per_s']):,.0f}) |")
        w("")
        w("`PhysMap::synchronize()` latency: a writer commits, then synchronizes; readers look up "
          "continuously, or go offline between bursts of 64 lookups and sleep 20 µs (as a vCPU in "
          "the guest).")
        w("")
        w("| readers | readers' behaviour | p50 | p99 | max |")
        w("|---|---|---|---|---|")
        for x in cj["synchronize"]:
            b = "offline between bursts" if x["offline_between"] else "looking up continuously"
            w(f"| {x['readers']} | {b} | {fmt_ns(x['p50_us'] * 1e3)} | {fmt_ns(x['p99_us'] * 1e3)} | {fmt_ns(x['max_us'] * 1e3)} |")
        w("")

    # 2b. rust-vmm adapters
    fr = {k.split("/")[-1]: v["per"] for k, v in load().items() if k.startswith("find-region/64-regions/")}
    rpath = bench_output("rustvmm.json")
    if fr or os.path.exists(rpath):
        w("## rust-vmm: vm-memory `find_region` and the device bus")
        w("")
        w("`cargo bench --bench rustvmm`, against the real crates in the same run.")
        w("")
    if fr:
        w("`find_region` on a 64-region guest memory layout (regions of 2 MiB to 512 MiB with gaps), "
          "addresses uniform over the regions (device DMA); ns per call. Target (issue 14): "
          "at least 2x faster than `GuestMemoryMmap`.")
        w("")
        w("| call | vm-memory 0.18 `GuestMemoryMmap` | physmap `PhysGuestMemory` | ratio |")
        w("|---|---|---|---|")
        pairs = [("`memory().find_region(a)` through `GuestMemoryAtomic`", "vm-memory-atomic-memory+find_region",
                  "physmap-atomic-memory+find_region"),
                 ("`find_region(a)` on a held snapshot", "vm-memory-mmap-find_region", "physmap-snapshot-find_region")]
        for name, a, b in pairs:
            if a in fr and b in fr:
                ratio = fr[a] / fr[b]
                ok = "**met**" if ratio >= 2 else f"missed by {(1 - ratio / 2) * 100:.0f} %"
                w(f"| {name} | {fr[a]:.2f} | {fr[b]:.2f} | {ratio:.2f}x {ok} |")
        w("")
    if os.path.exists(rpath):
        rj = json.load(open(rpath))
        w("Bus dispatch: 4-byte MMIO reads spread over the 160 MMIO devices of the q35 map with 24 "
          "virtio-net devices; millions of dispatches per second over all vCPU threads (median of 5 "
          "interleaved rounds of 0.3 s); with a control plane moving a BAR every 100 µs. Target "
          "(issue 14): at least 3x the `RwLock<BTreeMap>` bus with 8 vCPU threads and a BAR moving.")
        w("")
        w("| vCPU threads | BAR moving | physmap `MmioBus` | vm-device 0.1 `IoManager` in a `RwLock` | `RwLock<BTreeMap>` (Cloud Hypervisor) | physmap / `RwLock<BTreeMap>` | physmap / vm-device |")
        w("|---|---|---|---|---|---|---|")
        for x in rj["bus"]:
            tgt = ""
            if x["threads"] == 8 and x["moving"]:
                tgt = " **met**" if x["ratio_rwlock"] >= 3 else " missed"
            w(f"| {x['threads']} | {'yes' if x['moving'] else 'no'} | {x['physmap'] / 1e6:.1f} | {x['vm_device'] / 1e6:.1f} | "
              f"{x['rwlock_btreemap'] / 1e6:.1f} | {x['ratio_rwlock']:.2f}x{tgt} | {x['ratio_vm_device']:.2f}x |")
        w("")

    # 2c. KVM guest
    kpath = bench_output("kvm.jsonl")
    if os.path.exists(kpath):
        kvm_runs = [json.loads(l) for l in open(kpath) if l.strip()]
        w("## A real KVM guest")
        w("")
        w("`scripts/kvm-bench.sh`: `cargo run --release --features kvm --example kvm` (a 32-bit guest "
          "looping over MMIO and port I/O to several devices, checking every answer) with physmap's bus, "
          "with the `RwLock<BTreeMap>` bus and with the floor (`Table`: a fixed table of the devices "
          "scanned with no synchronization, not a usable bus), interleaved rounds, control plane on (a BAR moved every "
          "0.5 ms, a memory block plugged or unplugged every 2 ms and the ROM toggled every 4 ms, memslots "
          "from `Snapshot::diff`). Exits per second over all vCPUs and bus dispatch ns per exit (lookup, "
          "access check, device call; the exit itself, through nested virtualization here, costs "
          "microseconds): median of the rounds (range).")
        w("")
        w("| vCPUs | bus | exits/s | dispatch ns per exit | BAR moves | memslot updates | misroutes |")
        w("|---|---|---|---|---|---|---|")
        for v in (1, 2):
            for bus in ("Physmap", "RwLock", "Table"):
                rs = [x for x in kvm_runs if x["vcpus"] == v and x["bus"] == bus and x["round"] != "long"]
                if not rs:
                    continue
                md = lambda k: sorted(x[k] for x in rs)[len(rs) // 2]
                lo = lambda k: min(x[k] for x in rs)
                hi = lambda k: max(x[k] for x in rs)
                mis = sum(x["misroutes"] + x["guest_errors"] for x in rs)
                w(f"| {v} | {bus} | {md('exits_per_s'):,.0f} ({lo('exits_per_s'):,.0f}..{hi('exits_per_s'):,.0f}) | "
                  f"{md('dispatch_ns'):.0f} ({lo('dispatch_ns'):.0f}..{hi('dispatch_ns'):.0f}) | {md('bar_moves')} | "
                  f"{md('memslot_updates')} | {mis} |")
        for k in kvm_runs:
            if k["round"] == "long":
                w("")
                w(f"Long run: {k['seconds']:.0f} s, {k['vcpus']} vCPUs, physmap: {sum(k['exits']):,} exits, "
                  f"{k['bar_moves']:,} BAR moves, {k['block_changes']:,} block changes, {k['rom_toggles']:,} ROM "
                  f"toggles, {k['memslot_updates']:,} memslot updates; misroutes: {k['misroutes']} (devices), "
                  f"{k['guest_errors']} (guest); memslots at the end {'equal' if k['memslots_match'] else 'NOT equal'} "
                  "to the memory map.")
        w("")

    # 2d. SeaBIOS
    seabios_section(w)

    # 2e. cold dispatch
    exit_path_section(w)

    # 3. commit
    w("## Commit of a one-range change")
    w("")
    w("One 4 KiB page overwritten on maps of N contiguous 4 KiB ranges (alternating values).")
    w("")
    sizes = ["1000", "100000", "1000000"]
    w("| structure | " + " | ".join(f"N = {s}" for s in sizes) + " | N = 1M / N = 1K |")
    w("|---|---|---|---|---|")
    for s in ["physmap", "physmap-with-old-snapshot-held", "qemu-full-rebuild", "arcswap-vec-clone-sort",
              "rwlock-btreemap-in-place"]:
        cells = [fmt_ns(r[f"commit/{s}/{n}"]["ns"]) if f"commit/{s}/{n}" in r else "-" for n in sizes]
        a, b = r.get(f"commit/{s}/1000"), r.get(f"commit/{s}/1000000")
        ratio = f"{b['ns'] / a['ns']:.2f}×" if a and b else "-"
        w(f"| {s} | " + " | ".join(cells) + f" | {ratio} |")
    w("")
    w("`rwlock-btreemap-in-place` edits the shared map under the write lock (readers wait); it")
    w("publishes no snapshot. Target: physmap's commit on 1M within 2× of 1K.")
    w("")

    # 4. scale
    w("## Bulk build and diff")
    w("")
    for k in sorted(k for k in r if k.startswith("bulk-build-1m-pages/")):
        w(f"- `{k}`: {fmt_ns(r[k]['ns'])}")
    cores = os.cpu_count()
    a, b = r.get("bulk-build-1m-pages/extend+commit/1-threads"), r.get(f"bulk-build-1m-pages/extend+commit/{cores}-threads")
    if a and b and cores > 1:
        w(f"- rayon speed-up on {cores} threads against 1: **{a['ns'] / b['ns']:.2f}×**")
    a, b = r.get("diff-one-range/1000"), r.get("diff-one-range/1000000")
    if a and b:
        w(f"- diff of a one-range change: {fmt_ns(a['ns'])} on 1K ranges, {fmt_ns(b['ns'])} on 1M ranges: "
          f"**{b['ns'] / a['ns']:.2f}×** (target: within 2×)")
    w("")

    # 4b. the flat-node layout against the default, same runs
    if any(k.startswith("lookup-flat/") for r in runs for k in r):
        w("## Flat nodes (`Config::flat_nodes`) against the default layout")
        w("")
        w("`Snapshot::lookup` on each real map and mix, both layouts built from the same ranges and "
          "timed in the same runs (criterion group `lookup-flat`); ns per lookup, median of the runs, "
          "and the median per-run ratio flat / dense.")
        w("")
        w("| map | mix | dense | flat | flat / dense |")
        w("|---|---|---|---|---|")
        for m in MAPS:
            for mix, _ in MIXES:
                g = f"lookup-flat/{m}/{mix}"
                d, f = per_run(g, "dense"), per_run(g, "flat")
                if not d or not f:
                    continue
                ratio = med([b / a for a, b in zip(d, f)])
                w(f"| {m} | {mix} | {cell(d)} | {cell(f)} | {ratio:.2f}x |")
        w("")

    # 5. memory
    mem_path = bench_output("memory.json")
    if os.path.exists(mem_path):
        m = json.load(open(mem_path))
        w("## Memory")
        w("")
        w("Tree bytes: nodes and sub-page tables (what QEMU's figure counts). Total: plus per-range")
        w("records (physmap: 32-byte pieces, 12-byte page records of `insert_shared` pages, and section slots; QEMU-style: its section table at 64 B a")
        w("`MemoryRegionSection`). Uncollapsed: the radix tree before early termination, counted.")
        w("One entry per page: an XArray at 9 bytes a 4 KiB page (576-byte nodes of 64 entries, a lower bound).")
        w("")
        w("| workload | ranges | physmap nodes / tables | physmap tree / total bytes | with flat nodes: nodes + flat, total bytes | QEMU-style nodes / tables | QEMU-style tree / total bytes | uncollapsed bytes | one entry per page |")
        w("|---|---|---|---|---|---|---|---|---|")
        for x in m["workloads"]:
            qn = "-" if x["qemu_style_nodes"] is None else f"{x['qemu_style_nodes']} / {x['qemu_style_subpages']}"
            qb = "-" if x["qemu_style_bytes"] is None else f"{x['qemu_style_bytes']:,} / {x['qemu_style_bytes'] + 64 * (x['ranges'] + 1):,}"
            w(f"| {x['name']} | {x['ranges']:,} | {x['physmap_nodes']} / {x['physmap_subpage_tables']} | "
              f"{x['physmap_tree_bytes']:,} / {x['physmap_bytes']:,} | {x['flat_dense_nodes']} + {x['flat_nodes']}, {x['flat_bytes']:,} | "
              f"{qn} | {qb} | {x['uncollapsed_bytes']:,} | {x['xarray_bytes']:,.0f} |")
        w("")
        for x in m["workloads"]:
            if x["name"].startswith("cvm-1m-pages") and "runs" not in x["name"]:
                w(f"- {x['name']}: physmap total bytes **{x['physmap_bytes'] / x['xarray_bytes']:.1f}x** one entry per page "
                  f"({x['flat_bytes'] / x['xarray_bytes']:.1f}x with flat nodes; target of issue 13: at most 2x).")
        w("")
        w("Against QEMU's own dispatch, as dumped by QEMU 7.2 (`tests/data`), every FlatView with a "
          "dispatch tree (port I/O included); total bytes = tree, pieces, sub-page rows and section "
          "slots (`physmap import` prints the same). Default layout, and with `Config::flat_nodes`:")
        w("")
        w("| dump | FlatView | ranges | physmap total bytes | with flat nodes | QEMU's tree bytes | default / QEMU | flat / QEMU |")
        w("|---|---|---|---|---|---|---|---|")
        for x in m["qemu_dumps"]:
            d = 100 * x["physmap_bytes"] / x["qemu_bytes"]
            f = 100 * x["flat_bytes"] / x["qemu_bytes"]
            mark = lambda v: f"**{v:.1f} %**" if v <= 15 else f"{v:.1f} % (over 15 %)"
            w(f"| {x['file']} | #{x['flatview']} {x['label'][:40]} | {x['ranges']} | {x['physmap_bytes']:,} | "
              f"{x['flat_bytes']:,} | {x['qemu_bytes']:,} | {mark(d)} | {mark(f)} |")
        fl = [100 * x["flat_bytes"] / x["qemu_bytes"] for x in m["qemu_dumps"]]
        de = [100 * x["physmap_bytes"] / x["qemu_bytes"] for x in m["qemu_dumps"]]
        w("")
        w(f"At most 15 % of QEMU's (issue 13): {sum(v <= 15 for v in de)} of {len(de)} FlatViews in the "
          f"default layout ({min(de):.1f}..{max(de):.1f} %), {sum(v <= 15 for v in fl)} of {len(fl)} with flat "
          f"nodes ({min(fl):.1f}..{max(fl):.1f} %); at most 10 % (the reach goal): {sum(v <= 10 for v in fl)} "
          "with flat nodes.")
        w("")

    notes = os.path.join(ROOT, "benches", "results", "notes.md")
    if os.path.exists(notes):
        w(open(notes).read().rstrip())
        w("")
    open(os.path.join(ROOT, "BENCHMARKS.md"), "w").write("\n".join(lines) + "\n")

    print("wrote BENCHMARKS.md and benches/results/scaling.svg")


if __name__ == "__main__":
    if sys.argv[1:] == ["--seabios"]:
        # Only the SeaBIOS section (scripts/seabios-bench.sh's runs), to stdout.
        out = []
        seabios_section(out.append)
        print("\n".join(out))
    elif sys.argv[1:] == ["--exit-path"]:
        # Only the cold-dispatch section (benches/cold.rs, scripts/cold-lines.sh), to stdout.
        out = []
        exit_path_section(out.append)
        print("\n".join(out))
    else:
        main()
