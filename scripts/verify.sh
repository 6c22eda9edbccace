#!/usr/bin/env bash
# Deeper checks than CI: Miri on the unit tests (arena, tree, publication) and on the
# panicking-Drop tests, ThreadSanitizer on the many-thread stress test, valgrind memcheck on
# the core, panics and stress tests, and the cargo-fuzz targets for a bounded time each
# (FUZZ_SECONDS, default 60; seeded from tests/data; a crash is saved under fuzz/artifacts).
# Runs whatever the machine has and says what it skipped. Exit status: non-zero if a check
# that ran failed.
#   rustup component add --toolchain nightly miri rust-src   # for Miri and TSan
#   apt-get install valgrind                                  # for memcheck
set -uo pipefail
cd "$(dirname "$0")/.."
status=0
ran=() skipped=()
timed() { local t0=$(date +%s); "$@"; local rc=$?; echo "  ($(( $(date +%s) - t0 )) s, exit $rc)"; return $rc; }
has_nightly_component() { rustup +nightly component list --installed 2>/dev/null | grep -q "^$1"; }

echo "=== Miri: cargo +nightly miri test --lib --test panics, and the page-record tests of core"
if has_nightly_component miri && has_nightly_component rust-src; then
  # The unit tests include proptests: a few cases each (Miri is slow), and no isolation so that
  # proptest can look for its regression files.
  if timed env MIRIFLAGS="-Zmiri-disable-isolation" PROPTEST_CASES=4 \
      cargo +nightly miri test --no-default-features --lib --test panics --target-dir target/miri \
    && timed env MIRIFLAGS="-Zmiri-disable-isolation" \
      cargo +nightly miri test --no-default-features --test core --target-dir target/miri page_records; then ran+=("miri"); else status=1; ran+=("miri (FAILED)"); fi
else
  skipped+=("miri (rustup component add --toolchain nightly miri rust-src)")
fi

echo "=== ThreadSanitizer: stress test on nightly with -Zsanitizer=thread -Zbuild-std"
if has_nightly_component rust-src; then
  host=$(rustc -vV | sed -n 's/^host: //p')
  if timed env RUSTFLAGS="-Zsanitizer=thread" RUSTDOCFLAGS="-Zsanitizer=thread" TSAN_OPTIONS="halt_on_error=1" \
      PHYSMAP_STRESS_LOOKUPS=20000 \
      cargo +nightly test -Zbuild-std --target "$host" --release --target-dir target/tsan --test stress; then
    ran+=("tsan")
  else status=1; ran+=("tsan (FAILED)"); fi
else
  skipped+=("tsan (needs nightly rust-src)")
fi

echo "=== valgrind memcheck: core and stress tests (stable, release)"
if command -v valgrind >/dev/null; then
  bins=$(cargo test --release --test core --test panics --test stress --no-run --message-format=json 2>/dev/null \
    | python3 -c 'import json,sys
for l in sys.stdin:
    m=json.loads(l)
    if m.get("reason")=="compiler-artifact" and m.get("executable") and m["target"]["kind"]==["test"]: print(m["executable"])')
  ok=1
  for b in $bins; do
    echo "  $b"
    timed env PHYSMAP_STRESS_LOOKUPS=2000 PHYSMAP_STRESS_COMMITS=40 \
      valgrind -q --error-exitcode=99 --leak-check=full --errors-for-leak-kinds=definite "$b" --test-threads=1 || ok=0
  done
  if [ $ok = 1 ]; then ran+=("valgrind"); else status=1; ran+=("valgrind (FAILED)"); fi
else
  skipped+=("valgrind (apt-get install valgrind)")
fi

echo "=== cargo fuzz: each target for ${FUZZ_SECONDS:-60} s (nightly + cargo-fuzz)"
if has_nightly_component rust-src && cargo +nightly fuzz --version >/dev/null 2>&1; then
  mkdir -p fuzz/corpus/mtree_parse fuzz/corpus/transactions
  cp tests/data/*.txt fuzz/corpus/mtree_parse/
  ok=1
  for target in mtree_parse transactions; do
    echo "  $target"
    out=$(cd fuzz && cargo +nightly fuzz run -O "$target" -- -max_total_time="${FUZZ_SECONDS:-60}" 2>&1)
    grep -E '^(Done|==|SUMMARY)|panicked|artifact|^error' <<<"$out"
    if [ -n "$(ls -A fuzz/artifacts/"$target" 2>/dev/null)" ]; then ok=0; echo "  finding in $target: fuzz/artifacts/$target"; fi
    if ! grep -q '^Done' <<<"$out"; then ok=0; echo "  $target did not run to its time limit"; fi
  done
  if [ $ok = 1 ]; then ran+=("fuzz"); else status=1; ran+=("fuzz (FAILED)"); fi
else
  skipped+=("fuzz (cargo install cargo-fuzz; needs nightly)")
fi

echo
echo "ran: ${ran[*]:-nothing}"
echo "skipped: ${skipped[*]:-nothing}"
exit $status
