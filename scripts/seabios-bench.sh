#!/usr/bin/env bash
# The SeaBIOS machine's figures for BENCHMARKS.md: `cargo run --release --features kvm
# --example seabios` (Debian's SeaBIOS from reset to our option ROM, then the option ROM's
# checks for SECONDS_EACH seconds under the control plane) with physmap's bus and with the
# RwLock<BTreeMap> bus, 1 and 2 vCPUs, interleaved, ROUNDS rounds (default 3).
# Writes target/physmap-bench/seabios.jsonl; `python3 scripts/bench-report.py --seabios`
# prints the section of BENCHMARKS.md made from it.
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_EACH=${SECONDS_EACH:-5}; ROUNDS=${ROUNDS:-3}
bash scripts/guest-seabios.sh >&2
cargo build -q --release --features kvm --example seabios
bin=target/release/examples/seabios
out=target/physmap-bench/seabios.jsonl
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
cat "$out"
