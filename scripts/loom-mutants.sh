#!/usr/bin/env bash
# Breaks the publish / read / announce / reclaim / synchronize protocol on purpose, one
# mutation at a time, and runs the loom models against each, printing CAUGHT (at which
# preemption bound, by which models) or MISSED.
# Known miss: replacing `Arc::try_unwrap` (whose Acquire fence orders the writer's reuse after
# every snapshot's Release decrement) by a Relaxed `Arc::strong_count(..) == 1` check is not
# caught: loom's `Arc` does not model a plain count read as unsynchronised. The code relies
# on try_unwrap's documented ordering; see src/reclaim.rs.
# Usage: scripts/loom-mutants.sh [ONLY=text]   (restores the sources afterwards; needs python3)
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

run() { # name, file, pattern, replacement [, file, pattern, replacement]; BARRIER=fence|membarrier (default membarrier)
  local name="$1 [${BARRIER:-membarrier}]"
  # ONLY=<text>: run only the mutations whose name contains it.
  if [ -n "${ONLY:-}" ] && [[ "$name" != *"$ONLY"* ]]; then return; fi
  if ! mutate "$2" "$3" "$4"; then echo "SETUP FAILED: $name"; git checkout -q -- src; return; fi
  if [ $# -ge 7 ] && ! mutate "$5" "$6" "$7"; then echo "SETUP FAILED: $name"; git checkout -q -- src; return; fi
  # The smallest preemption bound at which some model fails: a bug found only with
  # preemptions shows the models explore interleavings, not just one order of events.
  local bound verdict="MISSED  $name  (bounds 0..=$MAX_BOUND)"
  for bound in $(seq 0 "$MAX_BOUND"); do
    local out rc
    out=$(PHYSMAP_LOOM_BARRIER=${BARRIER:-membarrier} RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=$bound cargo test -q -p loom-tests --release \
          --target-dir target/loom --test models 2>&1)
    rc=$?
    if grep -q 'could not compile' <<<"$out"; then
      verdict="BROKEN  $name  (the mutated source does not compile)"; break
    fi
    # A failed model, or the test process aborted by a panic during a panic (loom's checks of
    # objects used after they were freed do that): either way the bug was found.
    if [ $rc -ne 0 ]; then
      local failed
      failed=$( (grep -E '^    [a-z_]+$' <<<"$out"; grep -oE "^thread '[a-z_]+'" <<<"$out" | cut -d"'" -f2) | sort -u | paste -sd, -)
      verdict="CAUGHT  $name  at preemption bound $bound, by: ${failed:-the aborted test process}"; break
    fi
  done
  echo "$verdict"
  git checkout -q -- src
}

MAX_BOUND=${MAX_BOUND:-3}

# (The arena offers no way to write a node it did not just allocate: the mutant adds one.)
run "update a published node in place instead of copying it (no copy-on-write)" \
  src/writer/rebuild.rs 'Err\(kids\) => self\.arena\(cx\)\.node\(h, base, &kids\)\?,' \
  'Err(kids) if expanded => { if let Kind::Node { index, .. } = old.kind() { self.arena.rewrite_node(index, &kids) } old.get() } Err(kids) => self.arena(cx).node(h, base, &kids)?,' \
  src/arena/alloc.rs '(    /// A new piece slot holding `piece`)' \
  '    pub(crate) fn rewrite_node(&mut self, unit: u32, kids: &[Entry]) { for (i, &k) in as_words(kids).iter().enumerate() { self.arrays.nodes.cell(unit as usize * NODE_UNIT + i).with_mut(|p| unsafe { *p = k }); } }\n\n\1'
# Interval-based reclamation (reclaim.rs).
run "free a retired slot although a snapshot holds a generation in its interval" \
  src/reclaim.rs 'Err\(held\) => \{\n                    pins\.push\(g\);' 'Err(held) => {'
run "check 'nobody holds it' with a Relaxed count read instead of try_unwrap's Acquire" \
  src/reclaim.rs 'match Arc::try_unwrap\(self\.versions\.swap_remove\(i\)\) \{' 'match { let version = self.versions.swap_remove(i); if Arc::strong_count(&version) == 1 { Ok(()) } else { Err(version) } } {'
run "free a retired slot although a reader announces a generation in its interval" \
  src/reclaim.rs 'pins\.extend_from_slice\(announced\);' ''
run "interval off by one at its start (a slot taken as unreachable from its birth generation)" \
  src/reclaim.rs 'pins\.partition_point\(\|&p\| p < w\.born\)' 'pins.partition_point(|&p| p <= w.born)'
run "interval off by one at its end (a slot taken as unreachable from the generation before its retirement)" \
  src/reclaim.rs 'Some\(&p\) if p < w\.retired =>' 'Some(&p) if p + 1 < w.retired =>'
run "a piece's birth recorded one generation late" \
  src/writer/rebuild.rs 'info\.born = cx\.generation;' 'info.born = cx.generation + 1;'
run "retired slots are never freed (they leak)" \
  src/reclaim.rs '_ => free\.push\(w\.slot\),' '_ => {}'
run "a published section freed at commit with the never-published ones" \
  src/writer/mod.rs 'if self\.sections\.published\[i\] \{' 'if false {'
# Readers (reader.rs, qsbr.rs) and the publication point (sync.rs).
run "reader keeps its remembered piece across a refresh" \
  src/reader.rs 'self\.hot = hot;\n        self\.mru = Mru::NONE;' 'self.hot = hot;'
run "reader never catches up with the publisher" \
  src/reader.rs 'if newest != self\.held \{' 'let _ = newest;\n        if self.held & OFFLINE != 0 {'
run "a reader going offline does not clear its announcement" \
  src/reader.rs 'self\.state\.slot\.leave\(barrier\);' 'let _ = barrier;'
run "announcement weakened to Relaxed" \
  src/qsbr.rs 'self\.state\.store\(g, Ordering::Release\);' 'self.state.store(g, Ordering::Relaxed);'
run "going offline weakened to Relaxed" \
  src/qsbr.rs 'self\.state\.store\(self\.held\(\) \| OFFLINE, Ordering::Release\);' 'self.state.store(self.held() | OFFLINE, Ordering::Relaxed);'
BARRIER=fence run "entering a generation without the reader's fence" \
  src/qsbr.rs '            barrier\.reader\(&self\.state\);\n' ''
run "entering a generation without checking it after the announcement" \
  src/qsbr.rs 'if latest\.generation_relaxed\(\) == g \{' 'if true {'
BARRIER=fence run "the writer reads the announcements without its fence" \
  src/sync.rs '(pub\(crate\) fn writer\(self\) \{.*?)fence\(Ordering::SeqCst\);' '\1'
run "the writer reads the announcements without its membarrier (the stand-in)" \
  src/qsbr.rs 'drop\(s\.slot\(\)\.cpu\.lock\(\)\.unwrap_or_else\(\|p\| p\.into_inner\(\)\)\);' '{}'
# (The stand-in lets the writer's barrier in only at the reader's interruption points, which
# the code places between any two of its shared accesses: the mutant keeps that rule.)
run "a reader's announcement the writer's membarrier does not cover (checked before it is made)" \
  src/qsbr.rs '(            self\.state\.store\(g, Ordering::Release\);\n)(.*?)(            if latest\.generation_relaxed\(\) == g \{\n.*?return \(g, Some\(read\(unsafe \{ &\*version \}\)\)\);\n            \})' '\2            if latest.generation_relaxed() != g { continue; }\n            cpu.interruptible();\n\1            return (g, (g != before).then(|| read(unsafe { &*version })));'
run "reclamation judges what commits retired after its last covering reading" \
  src/reclaim.rs 'let judge = w\.retired <= covered;' 'let judge = true;'
run "synchronize confirms offline readers without a barrier" \
  src/qsbr.rs 'self\.barrier_locked\(slots\);\n            slots\.iter\(\)' 'slots.iter()'
run "the publisher stores the generation before the version's address" \
  src/sync.rs '(        self\.versions\[\(generation % 2\) as usize\]\.store\(ptr as \*mut T, Ordering::Release\);)(.*?)(        self\.generation\.store\(generation, Ordering::Release\);)' '\3\2\1'
run "an offline reader treated as online (at the generation it left)" \
  src/qsbr.rs '\(v & OFFLINE == 0\)\.then_some\(v\)' 'Some(v & !OFFLINE)'
run "an online reader treated as offline" \
  src/qsbr.rs '\(v & OFFLINE == 0\)\.then_some\(v\)' 'None::<u64>.filter(|_| v == 0)'
run "synchronize returning early (a reader one generation behind counts as done)" \
  src/qsbr.rs 'Some\(g\) => g < target,' 'Some(g) => g + 1 < target,'
run "synchronize gives up waiting after one round" \
  src/qsbr.rs 'if pending\.is_empty\(\) \{\n                return true;' 'if true {\n                return true;'
run "abandoned transaction is not rolled back" \
  src/transaction.rs 'self\.w\.rollback\(log\);' 'drop(log);'
