#!/usr/bin/env bash
# Data and code cache lines one cold dispatch fetches, per structure and real map: runs
# benches/cold.rs in its cache-line mode under callgrind's cache simulation (D1 32 KiB 8-way,
# LL 1 MiB 16-way, I1 32 KiB 8-way, 64-byte lines; a 2 MiB walk evicts D1 and LL before each
# of 1,000 dispatches, and 64 KiB of no-ops I1), counting only inside the dispatch, and
# subtracts the same run without the dispatches. Deterministic: the same figures on every run
# of the same binary. Prints a Markdown table and writes target/physmap-bench/cold-lines.json.
# Usage: [MIX=few] scripts/cold-lines.sh [MAP...]   (needs valgrind)
# MIX=few: the accesses go round three devices (as a driver's exits do) instead of spreading
# over every MMIO range; writes cold-lines-few.json.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v valgrind >/dev/null || { echo "valgrind is not installed" >&2; exit 2; }
bin=$(cargo bench --bench cold --no-run --message-format=json 2>/dev/null \
  | python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "cold" and m.get("executable"):
        print(m["executable"])')
maps=("$@")
[ ${#maps[@]} -gt 0 ] || maps=(q35-booted q35-24-virtio-net pc-i440fx pc-dimms virt-arm)
structures=(physmap-bus rwlock-bus rwlock-bus-inlined physmap-reader qemu-walk)
suffix=""; [ "${MIX:-spread}" = few ] && suffix=/few
out=target/physmap-bench/cold-lines${suffix:+-few}.json
mkdir -p target/physmap-bench
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
count() { # map/structure -> "Ir D1miss LLmiss I1miss"
  local f="$tmp/$(tr / _ <<<"$1").out"
  # Counted only inside the harness's dispatch function (callgrind's --toggle-collect; the
  # caches are simulated throughout): the map's setup and the process's teardown, whose heap
  # work differs from run to run of different structures, stay out of the difference.
  PHYSMAP_COLD_LINES=$1 setarch -R valgrind --tool=callgrind --cache-sim=yes \
    --D1=32768,8,64 --LL=1048576,16,64 --I1=32768,8,64 --toggle-collect='*dispatch_aligned*' \
    --callgrind-out-file="$f" "$bin" >/dev/null 2>&1 || { echo "the run of $1 failed" >&2; exit 1; }
  python3 - "$f" <<'PY'
import sys
ev = summ = None
for line in open(sys.argv[1]):
    if line.startswith("events:"): ev = line.split()[1:]
    if line.startswith(("summary:", "totals:")): summ = list(map(int, line.split()[1:]))
d = dict(zip(ev, summ))
print(d["Ir"], d["D1mr"] + d["D1mw"], d["DLmr"] + d["DLmw"], d["I1mr"])
PY
}
echo "| map | structure | instructions | D1 misses (lines) | LL misses | code lines (I1 misses) |"
echo "|---|---|---:|---:|---:|---:|"
echo "[" > "$out"
first=1
for m in "${maps[@]}"; do
  read -r ir0 d0 l0 c0 < <(count "$m/none$suffix")
  for s in "${structures[@]}"; do
    read -r ir d l c < <(count "$m/$s$suffix")
    row=$(python3 -c "print('%.1f %.2f %.2f %.2f' % (($ir-$ir0)/1000, ($d-$d0)/1000, ($l-$l0)/1000, ($c-$c0)/1000))")
    read -r i1 d1 l1 c1 <<<"$row"
    echo "| $m | $s | $i1 | $d1 | $l1 | $c1 |"
    [ $first = 1 ] || echo "," >> "$out"; first=0
    echo "{\"map\":\"$m\",\"structure\":\"$s\",\"instructions\":$i1,\"d1_lines\":$d1,\"ll_lines\":$l1,\"code_lines\":$c1}" >> "$out"
  done
done
echo "]" >> "$out"
