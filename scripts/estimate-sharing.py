#!/usr/bin/env python3
"""Estimates, from `physmap dump` of real QEMU maps, how small the default layout's 512-entry
nodes could get if nodes shared cells (ARCHITECTURE.md, "Issue 13's targets, and why they
conflict"). Nothing here is built: it reads each node's cells and packs them on paper.

  scripts/estimate-sharing.py [PHYSMAP_BINARY] DUMP...      (default: target/release/physmap)

Per FlatView with 512-entry nodes (one-node spaces such as port I/O are skipped), the total bytes `physmap import` reports and what they
would be with each scheme, as a percentage of QEMU's bytes:
  empty:    nodes overlap where both are empty, at 64-byte lines (a window holds only its own
            entries or empty cells: the lookup is unchanged); best order of the nodes.
  +default: the same, a node's most frequent leaf (16 cells or more) left out as its default
            (an empty cell would then mean "the default": one more load on that path).
  owner:    with defaults, lines of other nodes allowed inside a window (an ownership check
            rejects them), except lines holding node entries; greedy placement.
  narrow1:  the last level's nodes only keep 16..512 cells (child i in cell (i >> c) & mask,
            empty children aliasing others).
"""
import itertools
import os
import re
import subprocess
import sys
from collections import Counter

ARGS = sys.argv[1:]
BIN = ARGS.pop(0) if ARGS and not ARGS[0].endswith(".txt") else "target/release/physmap"
LINE, WINDOW, NODE = 16, 32, 512 * 4


def flatviews(dump):
    """(address space name, bytes, QEMU bytes) of every FlatView with a dispatch tree."""
    out = subprocess.run([BIN, "import", dump], capture_output=True, text=True, check=True).stdout
    for l in out.splitlines():
        cols = l.split("|")
        if len(cols) != 5 or not re.match(r"\d+\s", cols[0]) or "-" == cols[3].split()[-1]:
            continue
        name = re.match(r"\d+\s+(.*?)\s+\d+\s*$", cols[0]).group(1).split(",")[0].strip()
        yield name, int(cols[1].split()[-1]), int(cols[3].split()[-1])


def nodes_of(dump, name):
    """Each dense node's 512 cells (None if empty) and its height."""
    out = subprocess.run([BIN, "dump", "--as", name, dump], capture_output=True, text=True,
                         check=True).stdout
    if re.search(r"^root \(height 1,", out, re.M):
        return None  # a one-node space: its node is as wide as the space, not 512
    nodes, cur = [], None
    for l in out.splitlines()[2:]:
        m = re.match(r"  node \d+: height (\d+)", l)
        if m:
            cur = [None] * 512
            nodes.append((cur, int(m.group(1))))
            continue
        if l.startswith("  "):
            if not l.startswith("    "):
                cur = None
            m = re.match(r"\s+(\d+)(?:\.\.(\d+))?\s+(.*)", l)
            if cur is not None and m:
                a, b = int(m.group(1)), int(m.group(2) or m.group(1))
                if b >= 512:
                    return None  # not a 512-entry node
                for j in range(a, b + 1):
                    cur[j] = None if m.group(3).strip() == "-" else m.group(3).strip()
    return nodes


def default_of(cells):
    c = Counter(e for e in cells if e and e.startswith("leaf"))
    if c:
        e, n = c.most_common(1)[0]
        if n >= LINE:
            return e
    return None


def lines(cells, dflt):
    """Line -> whether it holds a node entry, for the lines with explicit cells."""
    own = {}
    for j, e in enumerate(cells):
        if e is not None and e != dflt:
            own[j // LINE] = own.get(j // LINE, False) or e.startswith("node")
    return own or {0: False}


def empty_sharing(nodes, defaults):
    spans = []
    for cells, _ in nodes:
        own = lines(cells, default_of(cells) if defaults else None)
        spans.append((min(own), max(own)))
    best = None
    orders = itertools.permutations(spans) if len(spans) <= 8 else [sorted(spans)]
    for order in orders:
        pos = 0
        for a, b in zip(order, order[1:]):
            pos += max(a[1] + 1, WINDOW - b[0])
        ext = pos + order[-1][1] + 1 - order[0][0]
        best = ext if best is None else min(best, ext)
    return best


def owner_checked(nodes):
    owned, node_lines, windows = set(), set(), []
    for own in sorted((lines(c, default_of(c)) for c, _ in nodes), key=lambda o: -len(o)):
        b = 0
        while True:
            ok = all(b + l not in owned and not (isnode and any(w <= b + l < w + WINDOW
                                                                  for w in windows))
                     for l, isnode in own.items())
            ok = ok and not any(p in node_lines for p in range(b, b + WINDOW))
            if ok:
                break
            b += 1
        windows.append(b)
        for l, isnode in own.items():
            owned.add(b + l)
            if isnode:
                node_lines.add(b + l)
    return max(w + WINDOW for w in windows) - min(windows)


def narrow_cells(cells):
    nonempty = [(j, e) for j, e in enumerate(cells) if e is not None]
    for w in range(4, 9):
        for c in range(0, 10 - w):
            seen = {}
            if all(seen.setdefault((j >> c) & ((1 << w) - 1), e) == e for j, e in nonempty):
                return 1 << w
    return 512


def main():
    print(f"{'dump':22} {'FlatView':12} nodes {'bytes':>7} {'QEMU':>7} | now  empty +default owner narrow1")
    for dump in ARGS:
        for name, total, qemu in flatviews(dump):
            nodes = nodes_of(dump, name)
            if not nodes:
                continue
            base = total - len(nodes) * NODE
            ndef = sum(1 for c, _ in nodes if default_of(c))
            est = [
                total,
                base + empty_sharing(nodes, False) * LINE * 4,
                base + empty_sharing(nodes, True) * LINE * 4 + 4 * ndef,
                base + owner_checked(nodes) * LINE * 4 + 4 * ndef,
                base + sum(narrow_cells(c) * 4 if h == 1 else NODE for c, h in nodes),
            ]
            pct = " ".join(f"{100 * e / qemu:5.1f}%" for e in est)
            print(f"{os.path.basename(dump):22} {name[:12]:12} {len(nodes):5} {total:7} {qemu:7} | {pct}")


main()
