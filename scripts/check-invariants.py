#!/usr/bin/env python3
"""The numbered invariants (I1, I2, ...) that code comments cite exist in ARCHITECTURE.md,
and each one defined there is cited somewhere: a SAFETY comment or an ordering's comment
citing "I9" fails this check until ARCHITECTURE.md defines I9, and an invariant nobody
relies on any more fails it too. Also prints how many `// SAFETY:` comments cite no
invariant (they say "as above" or discharge a local contract), for the record.
Usage: scripts/check-invariants.py   (from the repository root; exits 1 on a failure)
"""
import os, re, sys

defined = {}
for n, line in enumerate(open("ARCHITECTURE.md"), 1):
    m = re.match(r"- \*\*(I\d+) — ([^*]+)\*\*", line)
    if m:
        if m.group(1) in defined:
            print(f"ARCHITECTURE.md:{n}: {m.group(1)} defined twice")
            sys.exit(1)
        defined[m.group(1)] = m.group(2).strip()

cited, failures, uncited_safety, safety = {}, 0, 0, 0
for top in ("src", "tests", "loom-tests", "benches", "examples"):
    for root, _, names in os.walk(top):
        for name in names:
            if not name.endswith(".rs"):
                continue
            path = os.path.join(root, name)
            lines = open(path).read().split("\n")
            for n, line in enumerate(lines, 1):
                comment = line.split("//", 1)[1] if "//" in line else ""
                for inv in re.findall(r"\bI(\d+)\b", comment):
                    key = "I" + inv
                    cited.setdefault(key, []).append(f"{path}:{n}")
                    if key not in defined:
                        print(f"{path}:{n}: cites {key}, which ARCHITECTURE.md does not define")
                        failures += 1
                if re.match(r"\s*// SAFETY:", line):
                    safety += 1
                    # The comment runs on over the following `//` lines.
                    text, k = line, n
                    while k < len(lines) and re.match(r"\s*//", lines[k]) and not re.match(r"\s*// SAFETY:", lines[k]):
                        text += lines[k]
                        k += 1
                    if not re.search(r"\bI\d+\b", text):
                        uncited_safety += 1

for key in sorted(defined, key=lambda k: int(k[1:])):
    uses = len(cited.get(key, []))
    print(f"{key} ({defined[key]}): cited {uses} times")
    if uses == 0:
        print(f"  {key} is cited nowhere")
        failures += 1
print(f"{safety} SAFETY comments, {safety - uncited_safety} citing an invariant, "
      f"{uncited_safety} not (\"as above\", or a local contract)")
sys.exit(1 if failures else 0)
