#!/usr/bin/env bash
# The KVM guest's figures for BENCHMARKS.md: the example with physmap's bus and with the
# RwLock<BTreeMap> bus, 1 and 2 vCPUs, control plane on, SECONDS each (default 10),
# interleaved, ROUNDS rounds (default 3); then one run of LONG seconds (default 60) with
# physmap and 2 vCPUs for the misroute count. Writes target/physmap-bench/kvm.jsonl.
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
    for bus in physmap rwlock; do
      echo "round $r: $v vCPUs, $bus" >&2
      "$bin" --json --seconds "$SECONDS_EACH" --vcpus "$v" --bus "$bus" | sed "s/^{/{\"round\":$r,/" >> "$out"
    done
  done
done
echo "long run: $LONG s, 2 vCPUs, physmap" >&2
"$bin" --json --seconds "$LONG" --vcpus 2 --bus physmap | sed 's/^{/{"round":"long",/' >> "$out"
cat "$out"
