#!/usr/bin/env python3
"""Prints criterion results as ns per element: scripts/bench-summary.py [filter]."""
import json, os, sys, glob
root = os.path.join(os.path.dirname(__file__), "..", "target", "criterion")
flt = sys.argv[1] if len(sys.argv) > 1 else ""
for est in sorted(glob.glob(f"{root}/**/new/estimates.json", recursive=True)):
    d = os.path.dirname(est)
    bench = json.load(open(os.path.join(d, "benchmark.json")))
    name = bench["full_id"]
    if flt not in name:
        continue
    e = json.load(open(est))
    ns = e["mean"]["point_estimate"]
    tp = bench.get("throughput") or {}
    n = tp.get("Elements") or tp.get("Bytes") or 1
    print(f"{name:70s} {ns / n:10.2f} ns/elem  (mean of batch {ns/1000:.1f} us)")
