#!/usr/bin/env bash
# The KVM guest's figures for BENCHMARKS.md: the example with physmap's bus, with the
# RwLock<BTreeMap> bus and with the floor (`--bus table`: a fixed table of the devices scanned
# with no synchronization, what any bus's dispatch costs at least here), 1 and 2 vCPUs, control plane on, SECONDS_EACH seconds each (default
# 10), interleaved, ROUNDS rounds (default 3); then one run of LONG seconds (default 60; 0
# skips it) with physmap and 2 vCPUs for the misroute count. Writes
# target/physmap-bench/kvm.jsonl and ends with one line
# SUMMARY {"1":{"physmap":NS,"rwlock":NS},"2":{"physmap":NS,"rwlock":NS}}: the median over
# the rounds of dispatch ns per exit (each run's median, interpolated within the TSC's step:
# examples/kvm/vmm.rs, median_ns), per vCPU count and bus; the line before it, MEANS, gives
# the median over the rounds of each run's mean, and TIMER before that what the two TSC
# readings around a dispatch add to each figure (not subtracted), and FLOOR before that the
# floor's medians and each bus's own part (its median minus the floor's) with their ratio.
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_EACH=${SECONDS_EACH:-10}; ROUNDS=${ROUNDS:-3}; LONG=${LONG:-60}
cargo build -q --release --features kvm --example kvm
bin=target/release/examples/kvm
out=target/physmap-bench/kvm.jsonl
mkdir -p target/physmap-bench
: > "$out"
for r in $(seq 1 "$ROUNDS"); do
  for v in 1 2; do
    for bus in physmap rwlock table; do
      echo "round $r: $v vCPUs, $bus" >&2
      "$bin" --json --seconds "$SECONDS_EACH" --vcpus "$v" --bus "$bus" | sed "s/^{/{\"round\":$r,/" >> "$out"
    done
  done
done
if [ "$LONG" != 0 ]; then
  echo "long run: $LONG s, 2 vCPUs, physmap" >&2
  "$bin" --json --seconds "$LONG" --vcpus 2 --bus physmap | sed 's/^{/{"round":"long",/' >> "$out"
fi
cat "$out"
python3 - "$out" <<'PY'
import json, statistics, sys
runs = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
summary = {}
for v in (1, 2):
    summary[str(v)] = {}
    for bus, name in (("Physmap", "physmap"), ("RwLock", "rwlock")):
        ns = [r["dispatch_ns"] for r in runs if r["round"] != "long" and r["vcpus"] == v and r["bus"] == bus]
        summary[str(v)][name] = round(statistics.median(ns), 1) if ns else None
means = {}
for v in (1, 2):
    means[str(v)] = {}
    for bus, name in (("Physmap", "physmap"), ("RwLock", "rwlock")):
        ns = [r["dispatch_mean_ns"] for r in runs if r["round"] != "long" and r["vcpus"] == v and r["bus"] == bus]
        means[str(v)][name] = round(statistics.median(ns), 1) if ns else None
# The floor, and what each bus adds to it (the part of a dispatch a bus can change).
floor = {}
for v in (1, 2):
    ns = [r["dispatch_ns"] for r in runs if r["round"] != "long" and r["vcpus"] == v and r["bus"] == "Table"]
    if ns:
        f = statistics.median(ns)
        p, l = summary[str(v)]["physmap"], summary[str(v)]["rwlock"]
        own = {"physmap": round(p - f, 1), "rwlock": round(l - f, 1)}
        ratio = round((p - f) / (l - f), 2) if l - f > 0 else None
        floor[str(v)] = {"table": round(f, 1), "own": own, "own_ratio": ratio}
if floor:
    print("FLOOR " + json.dumps(floor, separators=(",", ":")))
# The timer's own part of every dispatch figure (two TSC readings back to back; not
# subtracted), the median over all runs.
timer = [r.get("timer_ns") for r in runs if r.get("timer_ns") is not None]
if timer:
    print("TIMER %.1f" % statistics.median(timer))
# The same with each run's mean instead of its median (host interrupts inside a dispatch and
# the first dispatches after each commit included), for comparison; SUMMARY is the last line.
print("MEANS " + json.dumps(means, separators=(",", ":")))
print("SUMMARY " + json.dumps(summary, separators=(",", ":")))
PY
