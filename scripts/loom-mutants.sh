#!/usr/bin/env bash
# Breaks the publish/read/reclaim protocol on purpose, one mutation at a time, and runs the
# loom models against each; every mutation must be caught by at least one model.
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
  local out
  out=$(RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=2 cargo test -q -p loom-tests --release \
        --target-dir target/loom --test models 2>&1)
  local failed
  failed=$(grep -E '^    [a-z_]+$' <<<"$out" | tr -d ' ' | sort -u | paste -sd, -)
  if grep -q 'test result: FAILED' <<<"$out"; then
    echo "CAUGHT  $name  by: $failed"
  else
    echo "MISSED  $name"
  fi
  git checkout -q -- src
}

run "free retired slots at commit instead of after the old generation is dropped" \
  src/writer.rs 'old\.link\(retired, next\.clone\(\)\);' \
  'self.w.storage.push_freed(retired); old.link(Default::default(), next.clone());'
run "hand-back push with Relaxed instead of Release" \
  src/arena.rs '(compare_exchange_weak\(\s*head,\s*batch,\s*)Ordering::Release' '\1Ordering::Relaxed'
run "writer drains the hand-back stack with Relaxed instead of Acquire" \
  src/arena.rs 'self\.freed\.swap\(ptr::null_mut\(\), Ordering::Acquire\)' 'self.freed.swap(ptr::null_mut(), Ordering::Relaxed)'
run "reader keeps its MRU piece across a refresh" \
  src/reader.rs 'if v\.generation == self\.mru_generation && ' 'if '
run "dropped generation never hands its slots back (leak)" \
  src/publish.rs 'self\.storage\.push_freed\(retired\);' 'drop(retired);'
run "dropped generation loses its successor (successor's slots leak)" \
  src/publish.rs 'Ok\(successor\) => link = successor\.link\.lock\(\)\.take\(\),' 'Ok(successor) => { std::mem::forget(successor); break }'
run "abandoned transaction is not rolled back" \
  src/writer.rs 'if self\.finished \{\s*return;\s*\}' 'return;'
