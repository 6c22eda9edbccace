#!/usr/bin/env bash
# A/B of two builds' lookups, alternated in one session (tools/src/bin/lookup_driver.rs).
#   scripts/lookup-ab.sh OLD_DRIVER NEW_DRIVER [ROUNDS]
# OLD_DRIVER / NEW_DRIVER: target/release/lookup_driver of each build (`cargo build --release -p physmap-tools`; for the old
# one, copy tools/src/bin/lookup_driver.rs and benches/common into a worktree of the old commit).
# Runs from tests/data. Prints, per mode, the median and range over the real maps x mixes of
# new/old (min of 2 runs each side), and the same divided by the QEMU-style walk's new/old.
set -euo pipefail
old=$(realpath "$1"); new=$(realpath "$2"); rounds=${3:-60}
cd "$(dirname "$0")/../tests/data"
maps="q35-booted q35-24-virtio-net pc-i440fx pc-dimms virt-arm"
mixes="mmio ram low64g bursts"
t() { "$1" "$2.txt" "$3" "$4" "$rounds" | awk '{print $2}'; }
for mode in snapshot reader snapshot-call reader-call; do
  for m in $maps; do for x in $mixes; do
    echo "$(t $old $m $x $mode) $(t $new $m $x $mode) $(t $old $m $x $mode) $(t $new $m $x $mode)" \
      "$(t $old $m $x qemu) $(t $new $m $x qemu) $(t $old $m $x qemu) $(t $new $m $x qemu)"
  done; done | python3 -c "
import sys, statistics as st
r = []; n = []
for l in sys.stdin:
    x = list(map(float, l.split()))
    a = min(x[1], x[3]) / min(x[0], x[2]); q = min(x[5], x[7]) / min(x[4], x[6])
    r.append(a); n.append(a / q)
print('$mode: new/old median %.3f (%.3f-%.3f); / walk median %.3f (%.3f-%.3f); %d cells'
      % (st.median(r), min(r), max(r), st.median(n), min(n), max(n), len(r)))
"
done
