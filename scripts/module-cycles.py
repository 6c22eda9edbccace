#!/usr/bin/env python3
"""Import cycles between the crate's modules: prints the graph's cycles (strongly connected
components of more than one module) and exits 1 if there is any.

A module is a file under src/ (`src/arena/cells.rs` is `arena::cells`, a `mod.rs` its
directory's module). An edge A -> B is a path in A naming an item of B: `crate::b::...`,
`super::...`, or a name the crate root re-exports (`crate::Error` is `error`'s). A child's
`use super::*` counts as an edge to its parent, and a parent's `pub(crate) use child::*`
as one to the child: a cycle, unless the parent only re-exports (see --allow-reexports).
Comments, doc comments and inline `#[cfg(test)] mod tests` blocks are ignored.
Usage: scripts/module-cycles.py [--allow-reexports]   (from the repository root)
"""
import os, re, sys

SRC = "src"
allow_reexports = "--allow-reexports" in sys.argv


def module_of(path):
    rel = os.path.relpath(path, SRC)[:-3].split(os.sep)
    if rel[-1] in ("mod", "lib", "main"):
        rel = rel[:-1]
    return "::".join(rel)


files = {}
for root, _, names in os.walk(SRC):
    for n in names:
        if n.endswith(".rs"):
            p = os.path.join(root, n)
            if p == os.path.join(SRC, "main.rs") or p.startswith(os.path.join(SRC, "cli")):
                continue  # the binary: a separate crate
            files[module_of(p)] = p
mods = set(files)

# Names the crate root re-exports: `pub use a::{X, Y}` -> X: a.
root_names = {}
lib = open(files[""]).read()
for m in re.finditer(r"pub use (\w+)::\{?([^;}]*)\}?;", lib):
    for name in re.split(r"\s*,\s*", m.group(2)):
        if name.strip():
            root_names[name.strip().split(" as ")[0]] = m.group(1)


def strip_comments(text):
    """The code of a file without comments and without its inline test module (a test
    naming what the module serves is no dependency of it)."""
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    text = re.split(r"\n#\[cfg\((?:all\()?test\b[^\n]*\]\s*\nmod tests \{", text)[0]
    return "\n".join(re.sub(r"//.*", "", l) for l in text.split("\n"))


def resolve(segments):
    """The longest module prefix of `segments` (absolute, from the crate root)."""
    best = None
    for k in range(1, len(segments) + 1):
        cand = "::".join(segments[:k])
        if cand in mods:
            best = cand
    if best is None and segments and segments[0] in root_names:
        best = root_names[segments[0]]
    return best


def expand_use(tree):
    """Paths of a use tree, e.g. `a::{b, c::{d, e}}` -> [a::b, a::c::d, a::c::e]."""
    tree = tree.strip()
    i = tree.find("{")
    if i < 0:
        return [tree.split(" as ")[0].strip()]
    prefix, inner = tree[:i], tree[i + 1 : tree.rindex("}")]
    parts, depth, cur = [], 0, ""
    for ch in inner:
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
            continue
        depth += ch == "{"
        depth -= ch == "}"
        cur += ch
    parts.append(cur)
    return [prefix + q for p in parts if p.strip() for q in expand_use(p)]


edges = {m: set() for m in mods}
for m, path in files.items():
    text = strip_comments(open(path).read())
    here = m.split("::") if m else []
    paths = []
    for u in re.finditer(r"\buse\s+([^;]+);", text):
        paths += expand_use(u.group(1))
    paths += re.findall(r"\b(?:crate|super)(?:::\w+)+", text)
    for p in paths:
        segs = [s for s in p.replace(" ", "").split("::") if s]
        if not segs:
            continue
        if segs[0] == "crate":
            absolute = segs[1:]
        elif segs[0] == "super":
            base = here[:]
            while segs and segs[0] == "super":
                base = base[:-1]
                segs = segs[1:]
            absolute = base + segs
        elif segs[0] == "self":
            absolute = here + segs[1:]
        elif m and segs[0] in {c.split("::")[-1] for c in mods if c.startswith(m + "::") and c.count("::") == m.count("::") + 1}:
            absolute = here + segs  # `use child::*` in a parent
        else:
            continue
        target = resolve(absolute) if absolute else ""
        if absolute and absolute[-1] == "*" and target is None:
            target = "::".join(absolute[:-1])
        if target is None or target == m:
            continue
        edges[m].add(target)

if allow_reexports:
    for m in mods:
        text = strip_comments(open(files[m]).read())
        for r in re.findall(r"pub(?:\(crate\))? use (\w+)::", text):
            child = f"{m}::{r}" if m else r
            edges[m].discard(child)

# Tarjan's strongly connected components.
index, low, stack, on, sccs, counter = {}, {}, [], set(), [], [0]
sys.setrecursionlimit(10000)


def visit(v):
    index[v] = low[v] = counter[0]
    counter[0] += 1
    stack.append(v)
    on.add(v)
    for w in edges[v]:
        if w not in index:
            visit(w)
            low[v] = min(low[v], low[w])
        elif w in on:
            low[v] = min(low[v], index[w])
    if low[v] == index[v]:
        comp = []
        while True:
            w = stack.pop()
            on.discard(w)
            comp.append(w)
            if w == v:
                break
        if len(comp) > 1:
            sccs.append(sorted(comp))


for v in sorted(mods):
    if v not in index:
        visit(v)
for c in sccs:
    inner = [(a, b) for a in c for b in sorted(edges[a]) if b in c]
    print("cycle:", ", ".join(c or ["(root)"]))
    for a, b in inner:
        print(f"  {a or '(root)'} -> {b or '(root)'}")
print(f"{len(mods)} modules, {sum(len(e) for e in edges.values())} edges, {len(sccs)} cycles")
sys.exit(1 if sccs else 0)
