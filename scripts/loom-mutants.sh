#!/usr/bin/env bash
# Breaks the publish / read / announce / reclaim / synchronize protocol on purpose, one
# mutation at a time, and runs the loom models against each, printing CAUGHT (at which
# preemption bound, by which models) or MISSED.
# Known miss: replacing `Arc::try_unwrap` (whose Acquire fence orders the writer's reuse after
# every reader's Release decrement) by a Relaxed `Arc::strong_count(..) == 1` check is not
# caught: loom's `Arc` does not model a plain count read as unsynchronised. The code relies
# on try_unwrap's documented ordering; see publish.rs.
# Usage: scripts/loom-mutants.sh    (restores the sources afterwards; needs python3)
set -uo pipefail
cd "$(dirname "$0")/.."
if ! git diff --quiet -- src; then echo "src/ has uncommitted changes; commit or stash first" >&2; exit 2; fi

mutate() { # file, python-regex, replacement
  python3 - "$1" "$2" "$3" <<'PY'
import re, sys
path, pat, rep = sys.argv[1:]
src = open(path).read()
out, n = re.subn(pat, rep, src, count=1, flags=re.S)
if n != 1:
    sys.exit(f"mutation pattern not found in {path}: {pat}")
open(path, "w").write(out)
PY
}

run() { # name, file, pattern, replacement
  local name=$1
  if ! mutate "$2" "$3" "$4"; then echo "SETUP FAILED: $name"; git checkout -q -- src; return; fi
  # The smallest preemption bound at which some model fails: a bug found only with
  # preemptions shows the models explore interleavings, not just one order of events.
  local bound verdict="MISSED  $name  (bounds 0..=$MAX_BOUND)"
  for bound in $(seq 0 "$MAX_BOUND"); do
    local out
    out=$(RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=$bound cargo test -q -p loom-tests --release \
          --target-dir target/loom --test models 2>&1)
    if grep -q 'could not compile' <<<"$out"; then
      verdict="BROKEN  $name  (the mutated source does not compile)"; break
    fi
    if grep -q 'test result: FAILED' <<<"$out"; then
      local failed
      failed=$(grep -E '^    [a-z_]+$' <<<"$out" | tr -d ' ' | sort -u | paste -sd, -)
      verdict="CAUGHT  $name  at preemption bound $bound, by: $failed"; break
    fi
  done
  echo "$verdict"
  git checkout -q -- src
}

MAX_BOUND=${MAX_BOUND:-3}

run "update a published node in place instead of copying it (no copy-on-write)" \
  src/writer/rebuild.rs 'Err\(kids\) => self\.arena\(cx\)\.node\(h, base, &kids\)\?,' \
  'Err(kids) if expanded => { if let Kind::Node { index, .. } = old.kind() { unsafe { self.arena.write_node(index, &kids) } } old.get() } Err(kids) => self.arena(cx).node(h, base, &kids)?,'
run "free a superseded generation's slots without checking that nobody holds it" \
  src/reclaim.rs 'match Arc::try_unwrap\(version\) \{' 'match Ok::<_, Arc<Version<V>>>(version) {'
run "check 'nobody holds it' with a Relaxed count read instead of try_unwrap's Acquire" \
  src/reclaim.rs 'match Arc::try_unwrap\(version\) \{' 'match if Arc::strong_count(&version) == 1 { Ok(()) } else { Err(version) } {'
run "free unheld generations newest first (past an older one still held)" \
  src/reclaim.rs 'self\.queue\.pop_front\(\)(.*?)self\.queue\.push_front' 'self.queue.pop_back()\1self.queue.push_back'
run "superseded generation is never buried (its slots leak)" \
  src/reclaim.rs 'self\.queue\.push_back\(\(version, retired\)\);' 'drop((version, retired));'
run "a published section freed at commit with the never-published ones" \
  src/writer/mod.rs 'if self\.sections\.published\[s as usize\] \{' 'if false {'
run "reader keeps its remembered piece across a refresh" \
  src/reader.rs 'self\.generation = generation;\n        self\.mru = no_piece\(\);' 'self.generation = generation;'
run "reader never catches up with the publisher" \
  src/reader.rs 'if !std::ptr::eq\(p, self\.cached\) \{' 'if self.cached.is_null() {'
# Quiescent-state readers (qsbr.rs).
run "announcement weakened to Relaxed" \
  src/qsbr.rs 'self\.state\.store\(g, Ordering::Release\);' 'self.state.store(g, Ordering::Relaxed);'
run "going offline weakened to Relaxed" \
  src/qsbr.rs 'self\.state\.store\(OFFLINE, Ordering::Release\);' 'self.state.store(OFFLINE, Ordering::Relaxed);'
run "going online without the fence" \
  src/qsbr.rs 'self\.state\.store\(last, Ordering::Relaxed\);\n        fence\(Ordering::SeqCst\);' 'self.state.store(last, Ordering::Relaxed);'
run "reclaiming at the announced generation instead of after it" \
  src/reclaim.rs 'if version\.generation >= oldest_in_use \{' 'if version.generation > oldest_in_use {'
run "an offline reader treated as online (at generation 0)" \
  src/qsbr.rs 'OFFLINE => None,' 'OFFLINE => Some(0),'
run "an online reader treated as offline" \
  src/qsbr.rs 'g => Some\(g\),' '_ => None,'
run "synchronize returning early" \
  src/map.rs 'self\.shared\.registry\.lagging\(target\)' 'self.shared.registry.lagging(target - 1)'
run "synchronize forgets to re-read the readers it waits for" \
  src/map.rs 'Registry::still_lagging\(target, &mut lagging\);' 'lagging.clear();'
run "abandoned transaction is not rolled back" \
  src/transaction.rs 'self\.w\.rollback\(log\);' 'drop(log);'
