#!/usr/bin/env bash
# Shows that a reader's lookup, refresh, going online and going offline do no atomic
# read-modify-write: disassembles the reader paths of tools/src/bin/disasm.rs (x86-64: a
# `lock`-prefixed instruction or an `xchg` with memory is an atomic RMW on shared memory;
# `mfence`, or a `lock or` of 0, is a SeqCst fence: LLVM emits it on the thread's own stack,
# the reader's side of the fence barrier on its own slot, `sync.rs`, which it leaves
# unchanged) and prints every such instruction per function. Any RMW fails. A fence is allowed only
# where a reader enters a generation (the out-of-line catch-up, and going online, which
# calls it): that is the reader's side of the fence barrier (`Config::membarrier` off, the
# default), a compiler fence only with membarrier; lookup, refresh (when nothing changed) and
# offline have none.
# Usage: scripts/check-no-rmw.sh   (needs objdump)
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build -q --release -p physmap-tools --bin disasm
bin=target/release/disasm
asm=$(objdump -d --no-show-raw-insn "$bin")
status=0
for f in disasm_reader_lookup disasm_reader_refresh disasm_reader_online disasm_reader_offline \
         '_ZN7physmap6reader15Reader$LT$V$GT$8catch_up'; do
  body=$(awk -v f="$f" 'index($0, "<"f) && /:$/ {p=1} p && /^$/ {exit} p' <<<"$asm")
  if [ -z "$body" ]; then echo "$f: not found"; status=1; continue; fi
  n=$(grep -c '^ ' <<<"$body")
  rmw=$(grep -E '\slock |\sxchg[a-z]*\s.*\(|\scmpxchg' <<<"$body" | grep -v 'lock or[lq] *\$0x0,' || true)
  fences=$(grep -E '\smfence|lock or[lq] *\$0x0,' <<<"$body" || true)
  echo "$f: $n instructions, atomic RMWs: ${rmw:-none}, fences: ${fences:-none}"
  case "$f" in
    *catch_up) ;;                       # enters a generation: the fence barrier's fence
    *) [ -n "$fences" ] && status=1 ;;
  esac
  [ -n "$rmw" ] && status=1
done
exit $status
