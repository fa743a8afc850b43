"""Streaming extraction (``rnnlens.extract_to`` into a Zarr store) against the in-memory
``rnnlens.trace`` of the same batches: ``python -m benchmarks.streaming [--quick]``.

Prints the throughput ratio (interleaved timing, see :mod:`benchmarks.harness`) and the peak
resident memory of extracting N and 10×N sequences from a ``.npy`` file, each in a fresh
process (``python -m benchmarks.streaming --rss N``), next to in-memory ``trace`` of N.
``SUITES`` plugs the timing cases into ``python -m benchmarks``.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .harness import Case, PeakRSS, format_table, interleaved

BATCH, TIME, FEATURES, UNITS, LAYERS = 256, 100, 32, 64, 2
N = 2048  # timing: 8 chunks
N_RSS = 2048  # memory: 1× and 10× (enough chunks to reach the steady state)
RSS_FIELDS = ("h", "c")
FIELDS = ("h", "c", "gates")


def model() -> Any:
    from .keras_suite import stacked_lstm

    return stacked_lstm(units=UNITS, layers=LAYERS, time=TIME, features=FEATURES)


def data(n: int) -> np.ndarray:
    return np.random.default_rng(0).normal(size=(n, TIME, FEATURES)).astype("float32")


def write_npy(path: Path, n: int) -> None:
    """``n`` sequences written block by block (the writer never holds them all)."""
    out = np.lib.format.open_memmap(path, mode="w+", dtype="float32", shape=(n, TIME, FEATURES))
    rng = np.random.default_rng(0)
    for start in range(0, n, BATCH):
        stop = min(start + BATCH, n)
        out[start:stop] = rng.normal(size=(stop - start, TIME, FEATURES)).astype("float32")
    out.flush()
    del out


def cases(fields: tuple[str, ...] = FIELDS, n: int = N) -> list[Case]:
    import rnnlens

    m = model()
    x = data(n)
    store = Path(tempfile.mkdtemp(prefix="rnnlens-bench-")) / "run.zarr"
    return [
        Case(
            f"trace in memory ({','.join(fields)})",
            lambda: rnnlens.trace(m, x, fields=fields, batch_size=BATCH),
        ),
        Case(
            f"extract_to zarr ({','.join(fields)})",
            lambda: rnnlens.extract_to(store, m, x, fields=fields, batch_size=BATCH, overwrite=True),
            "writer thread overlaps the next batch's trace",
        ),
    ]


SUITES: dict[str, Callable[[], list[Case]]] = {"streaming": cases}


def _rss_child(n: int, how: str) -> None:
    import rnnlens

    m = model()
    tmp = Path(tempfile.mkdtemp(prefix="rnnlens-rss-"))
    try:
        write_npy(tmp / "x.npy", n)
        # warm up: the framework's first pass allocates its own buffers
        rnnlens.trace(m, data(BATCH), fields=RSS_FIELDS, batch_size=BATCH)
        with PeakRSS() as rss:
            base = rss.now()
            t0 = time.perf_counter()
            if how == "extract":
                rnnlens.extract_to(tmp / "run.zarr", m, tmp / "x.npy", fields=RSS_FIELDS, batch_size=BATCH)
            else:
                rnnlens.trace(m, np.load(tmp / "x.npy"), fields=RSS_FIELDS, batch_size=BATCH)
            seconds = time.perf_counter() - t0
        print(f"{base:.0f} {rss.peak:.0f} {seconds:.1f}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _rss(n: int, how: str) -> tuple[float, float, float]:
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.streaming", "--rss", str(n), "--how", how],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).parent.parent,
    )
    base, peak, seconds = out.stdout.split()[-3:]
    return float(base), float(peak), float(seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer repeats, no 10× memory run")
    parser.add_argument("--part", choices=("all", "timing", "memory"), default="all")
    parser.add_argument("--rss", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--how", default="extract", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rss:
        _rss_child(args.rss, args.how)
        return
    for fields in (("h",), FIELDS) if args.part != "memory" else ():
        results = interleaved(cases(fields), repeats=2 if args.quick else 5)
        print(format_table(f"{N} sequences × {TIME} steps, {LAYERS}×LSTM({UNITS}), batch {BATCH}", results))
        rate = results[1].ratio
        print(f"throughput of extract_to relative to in-memory trace: {1 / rate:.2f}×")
    if args.part == "timing":
        return
    print(memory_report(quick=args.quick))


def memory_report(quick: bool = False) -> str:
    """Peak RSS of extracting 1× and 10× the data (each in a fresh process) vs in-memory trace."""
    sizes = [N_RSS] if quick else [N_RSS, 10 * N_RSS]
    lines = []
    per_seq = LAYERS * TIME * UNITS * 2 * 4 / 2**20
    lines.append(f"\npeak RSS (MiB) with {','.join(RSS_FIELDS)}: {per_seq:.3f} MiB of states per sequence")
    for how, n in [("extract", n) for n in sizes] + [("trace", n) for n in sizes]:
        base, peak, seconds = _rss(n, how)
        label = "extract_to .npy -> zarr" if how == "extract" else "trace in memory"
        grow = peak - base
        lines.append(
            f"{label:<24} {n:>6} sequences: {base:.0f} before, peak {peak:.0f} (+{grow:.0f}), {seconds:.1f} s"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
