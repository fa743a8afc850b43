"""Peak RSS of one case in a fresh process: ``python -m benchmarks.rss SUITE CASE``.

Prints the process's peak resident set (MiB) after building the suite and running the case
twice (the first run traces and warms up): framework, model and data included, so compare
a case with the floor case of the same suite."""

from __future__ import annotations

import resource
import sys


def main() -> None:
    suite, name = sys.argv[1], sys.argv[2]
    from .__main__ import all_suites

    cases = {c.name: c for c in all_suites()[suite]()}
    cases[name].fn()
    cases[name].fn()
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


if __name__ == "__main__":
    main()
