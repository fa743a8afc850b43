"""Run the benchmarks: ``python -m benchmarks [--quick] [--device cpu|cuda] [--no-rss]``.

Prints one table per model (ratios to the plain forward pass, measured interleaved in this
run), the scaling table, and writes benchmarks/results/latest.json and scaling.png.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from .harness import Case, Result, format_table, interleaved, markdown_table

RESULTS = Path(__file__).parent / "results"


def all_suites() -> dict[str, Callable[[], list[Case]]]:
    from . import keras_suite

    suites = dict(keras_suite.SUITES)
    for module in ("torch_suite", "streaming"):
        with contextlib.suppress(ImportError):
            suites.update(importlib.import_module(f"benchmarks.{module}").SUITES)
    return suites


def _rss(suite: str, case: str) -> float | None:
    try:
        out = subprocess.run(
            [sys.executable, "-m", "benchmarks.rss", suite, case],
            capture_output=True,
            text=True,
            timeout=300,
            cwd=Path(__file__).parent.parent,
        )
        return float(out.stdout.strip().splitlines()[-1])
    except (subprocess.SubprocessError, ValueError, IndexError):
        return None


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import numpy
    import tensorflow as tf

    versions = f"Python {platform.python_version()}, NumPy {numpy.__version__}, TensorFlow {tf.__version__}"
    try:
        import torch

        versions += f", PyTorch {torch.__version__}"
    except ImportError:
        pass
    return f"{os.cpu_count()} cores ({cpu}), {versions}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    p.add_argument("--quick", action="store_true", help="fewer repeats and scaling points (a smoke run)")
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument("--no-rss", action="store_true", help="skip the per-case peak-RSS subprocesses")
    p.add_argument("--no-scaling", action="store_true")
    p.add_argument("--only", default=None, help="comma-separated suite names")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    args = p.parse_args(argv)
    if args.device == "cuda":
        import tensorflow as tf

        if not tf.config.list_physical_devices("GPU"):
            print("--device cuda: no GPU visible here; skipping (nothing measured).")
            return 0
    else:
        os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
    repeats = args.repeats or (2 if args.quick else 5)
    RESULTS.mkdir(exist_ok=True)
    report: dict[str, object] = {"machine": machine(), "date": time.strftime("%Y-%m-%d"), "suites": {}}
    print(f"Machine: {report['machine']}")
    suites = all_suites()
    chosen = args.only.split(",") if args.only else list(suites)
    md = []
    for name in chosen:
        cases = suites[name]()
        if name == "keras-main":
            from .keras_suite import main_cases

            cases, notes = main_cases(quick=args.quick)
            for n in notes:
                print(f"  note: {n}")
            report["notes"] = notes
        results: list[Result] = interleaved(cases, repeats=repeats)
        if not args.no_rss:
            for r in results:
                r.rss_mib = _rss(name, r.name)
        print(
            format_table(
                f"[{name}] ratio = time / {cases[0].name}, median of {repeats} interleaved rounds", results
            )
        )
        report["suites"][name] = [r.as_dict() for r in results]  # type: ignore[index]
        md.append(f"**{name}**\n\n{markdown_table(results)}\n")
    if not args.no_scaling and not args.only:
        from .scaling import format_scaling, plot, run

        out = run(quick=args.quick)
        print(format_scaling(out))
        report["scaling"] = out
        plot(out, str(RESULTS / "scaling.png"))
    (RESULTS / "latest.json").write_text(json.dumps(report, indent=1))
    (RESULTS / "latest.md").write_text("\n".join(md))
    print(f"\nWrote {RESULTS / 'latest.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
