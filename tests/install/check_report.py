"""Check a ``pip install --dry-run --report`` against what rnnlens' extras promise.

    python tests/install/check_report.py REPORT.json keeps torch        # torch is not (re)installed
    python tests/install/check_report.py REPORT.json excludes tensorflow  # no tensorflow* distribution

Prints what pip would install, and exits 1 when the promise is broken.
"""

from __future__ import annotations

import json
import sys


def main(report: str, verb: str, name: str) -> int:
    with open(report) as f:
        names = sorted(item["metadata"]["name"].lower() for item in json.load(f)["install"])
    print(f"pip would install: {', '.join(names)}")
    if verb == "keeps":
        broken = [n for n in names if n == name]
    elif verb == "excludes":
        broken = [n for n in names if n.replace("_", "-").startswith(name)]
    else:
        raise SystemExit(f"unknown check {verb!r}")
    if broken:
        print(f"FAILED: {verb} {name}: {broken}")
        return 1
    print(f"ok: {verb} {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:4]))
