"""Run the benchmarks: ``python -m benchmarks [--quick] [--device cpu|cuda] [--no-rss]``.

Prints one table per model (ratios to the plain forward pass, measured interleaved in this
run, and the peak memory each case adds), the streaming memory figures, the scaling table,
and writes benchmarks/results/latest.json, latest.md and scaling.png.

On a machine other processes load, ``RNNLENS_BENCH_THREADS=1 RNNLENS_BENCH_CLOCK=cpu`` runs
PyTorch on one thread and times CPU time instead of wall time, in every suite.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

from .harness import Case, Result, env_threads, format_table, interleaved, markdown_table, measure_rss

RESULTS = Path(__file__).parent / "results"
SLOW_SUITE_ROUNDS = {"dask": 3}


def all_suites() -> dict[str, Callable[[], list[Case]]]:
    from . import keras_suite

    suites = dict(keras_suite.SUITES)
    others = ("torch_suite", "grid", "recording", "ssm_suite", "streaming", "dask_suite", "peers")
    for module in (*others, "flax_suite", "torch_compile"):
        with contextlib.suppress(ImportError):
            suites.update(importlib.import_module(f"benchmarks.{module}").SUITES)
    return suites


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


def gpus() -> dict[str, bool]:
    """Which frameworks see a CUDA GPU here."""
    seen = {"tensorflow": False, "torch": False}
    with contextlib.suppress(ImportError):
        import tensorflow as tf

        seen["tensorflow"] = bool(tf.config.list_physical_devices("GPU"))
    with contextlib.suppress(ImportError):
        import torch

        seen["torch"] = torch.cuda.is_available()
    return seen


def _framework_of_suite(name: str) -> str:
    return "torch" if name.startswith(("torch", "peers")) else "tensorflow"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    p.add_argument("--quick", action="store_true", help="fewer repeats and scaling points (a smoke run)")
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument("--no-rss", action="store_true", help="skip the memory figures (extra run per case)")
    p.add_argument("--no-scaling", action="store_true")
    p.add_argument("--only", default=None, help="comma-separated suite names (see --list)")
    p.add_argument("--list", action="store_true", help="list the suites and exit")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--full", action="store_true", help="grid: every shape of the grid, not the diagonal")
    args = p.parse_args(argv)
    if args.device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # before any framework import: CPU kernels only
    os.environ["RNNLENS_BENCH_DEVICE"] = args.device
    env_threads()  # RNNLENS_BENCH_THREADS / RNNLENS_BENCH_CLOCK apply to every suite
    suites = all_suites()
    if args.list:
        print("\n".join(suites))
        return 0
    chosen = args.only.split(",") if args.only else list(suites)
    # "peers": the suites that run torchlens, nnsight and transformer-lens beside rnnlens
    chosen = [
        s for n in chosen for s in ([k for k in suites if k.startswith("peers-")] if n == "peers" else [n])
    ]
    unknown = [n for n in chosen if n not in suites]
    if unknown:
        p.error(f"unknown suite(s) {', '.join(unknown)}; choose from {', '.join(suites)}")
    if args.device == "cuda":
        seen = gpus()
        if not any(seen.values()):
            print("--device cuda: neither TensorFlow nor PyTorch sees a CUDA GPU here; nothing measured.")
            return 0
        skipped = [n for n in chosen if not seen[_framework_of_suite(n)]]
        for n in skipped:
            print(f"--device cuda: {_framework_of_suite(n)} sees no GPU; skipping suite {n}.")
        chosen = [n for n in chosen if n not in skipped]
    repeats = args.repeats or (2 if args.quick else 5)
    RESULTS.mkdir(exist_ok=True)
    report: dict[str, object] = {
        "machine": machine(),
        "device": args.device,
        "date": time.strftime("%Y-%m-%d"),
        "suites": {},
    }
    print(f"Machine: {report['machine']}; device {args.device}")
    if any(n.startswith("peers-") for n in chosen):
        from .peers import versions

        report["peers"] = versions()
        print(f"Peers: {report['peers']}")
    md = []
    for name in chosen:
        t0 = time.perf_counter()
        if name == "grid":  # one interleaved group per shape: a table of its own
            from .grid import format_table as grid_table
            from .grid import main as grid_main

            rows = grid_main(full=args.full, repeats=args.repeats or (3 if args.quick else 7))
            print(f"  ({time.perf_counter() - t0:.0f} s)")
            report["grid"] = rows
            md.append(f"**grid**\n\n{grid_table(rows)}\n")
            continue
        if name == "keras-main":
            from .keras_suite import main_cases

            cases, notes = main_cases(quick=args.quick)
            for n in notes:
                print(f"  note: {n}")
            report["notes"] = notes
        else:
            cases = suites[name]()
        # a Dask round takes seconds of fixed cluster costs: fewer rounds keep the whole run under 10 min
        rounds = min(repeats, SLOW_SUITE_ROUNDS.get(name, repeats))
        results: list[Result] = interleaved(cases, repeats=rounds)
        if not args.no_rss:
            measure_rss(results, cases)
        print(
            format_table(
                f"[{name}] ratio = time / {cases[0].name}, median of {rounds} interleaved rounds; "
                "+RSS = peak memory the case adds",
                results,
            )
        )
        print(f"  ({time.perf_counter() - t0:.0f} s)")
        report["suites"][name] = [r.as_dict() for r in results]  # type: ignore[index]
        md.append(f"**{name}**\n\n{markdown_table(results)}\n")
        if name == "streaming" and not args.no_rss:
            from .streaming import memory_report

            mem = memory_report(quick=args.quick)
            print(mem)
            report["streaming_memory"] = mem
            md.append(f"```{mem}\n```\n")
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
