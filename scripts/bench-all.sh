#!/usr/bin/env bash
# Runs every benchmark BENCHMARKS.md reports, then regenerates it:
#   - the lookup benchmarks RUNS times (default 5), each run saved as criterion baseline
#     `runN`, so the report can show each figure's spread and check targets run by run;
#   - the concurrent, commit, scale, memory, rust-vmm (vm-memory, bus) and cold-dispatch
#     benchmarks once (and scripts/cold-lines.sh where valgrind is installed);
#   - the KVM guest (scripts/kvm-bench.sh) and SeaBIOS (scripts/seabios-bench.sh), unless
#     SKIP_KVM is set.
# Usage: scripts/bench-all.sh          (about 40 minutes on a 2-core machine)
#        RUNS=3 scripts/bench-all.sh
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-5}
rm -rf target/criterion/lookup* target/physmap-bench
cargo bench --no-run -q --all-features
for n in $(seq 1 "$RUNS"); do
  echo "=== lookup run $n of $RUNS"
  cargo bench -q --bench lookup -- --save-baseline "run$n" --noplot >/dev/null
done
echo "=== concurrent, commit, scale, memory"
cargo bench -q --bench concurrent -- --noplot | grep '^|' || true
cargo bench -q --bench commit -- --noplot >/dev/null
cargo bench -q --bench scale -- --noplot >/dev/null
cargo bench -q --bench memory >/dev/null
cargo bench -q --features vm-memory,bus --bench rustvmm -- --noplot | grep '^|' || true
echo "=== cold dispatch (ns, then cache lines under cachegrind if valgrind is installed)"
cargo bench -q --bench cold -- --noplot >/dev/null
if command -v valgrind >/dev/null; then scripts/cold-lines.sh >/dev/null; else echo "no valgrind: no cache-line table"; fi
if [ -z "${SKIP_KVM:-}" ]; then
  echo "=== KVM guest (SKIP_KVM=1 skips it)"
  scripts/kvm-bench.sh >/dev/null || echo "KVM runs failed or KVM is unusable: no KVM section"
  scripts/seabios-bench.sh >/dev/null || echo "SeaBIOS runs failed (or no KVM, no firmware): no SeaBIOS section"
fi
python3 scripts/bench-report.py
