"""Interleaved timing: every case of a group runs once per round (A B C A B C ...), after a
warm-up round, so slow drifts of the machine hit all cases alike. Only ratios to the
group's baseline, taken round by round, are compared; absolute times are printed for
reference."""

from __future__ import annotations

import contextlib
import ctypes
import gc
import os
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Case:
    name: str
    fn: Callable[[], Any]
    note: str = ""


@dataclass
class Result:
    name: str
    times: list[float]
    ratios: list[float] = field(default_factory=list)
    note: str = ""
    rss_mib: float | None = None  # peak resident memory the case adds over the process before it

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    @property
    def ratio(self) -> float:
        return statistics.median(self.ratios)

    def as_dict(self) -> dict[str, Any]:
        return {
            "case": self.name,
            "median_s": self.median,
            "times_s": self.times,
            "ratio_median": self.ratio,
            "ratio_min": min(self.ratios),
            "ratio_max": max(self.ratios),
            "peak_extra_rss_mib": self.rss_mib,
            "note": self.note,
        }


def env_clock() -> Callable[[], float]:
    """``time.process_time`` where ``RNNLENS_BENCH_CLOCK=cpu`` (a machine other processes load:
    with ``RNNLENS_BENCH_THREADS=1``, CPU time is the steadier measure), else wall time."""
    return time.process_time if os.environ.get("RNNLENS_BENCH_CLOCK") == "cpu" else time.perf_counter


def env_threads() -> None:
    """PyTorch's intra-op threads from ``RNNLENS_BENCH_THREADS``, where set and torch is installed."""
    if os.environ.get("RNNLENS_BENCH_THREADS"):
        with contextlib.suppress(ImportError):
            import torch

            torch.set_num_threads(int(os.environ["RNNLENS_BENCH_THREADS"]))


def interleaved(
    cases: list[Case], *, repeats: int = 5, warmup: int = 1, clock: Callable[[], float] | None = None
) -> list[Result]:
    """Time ``cases`` interleaved; ratios are to ``cases[0]`` within each round. ``clock``:
    :func:`env_clock` by default (wall time unless ``RNNLENS_BENCH_CLOCK=cpu``)."""
    clock = clock or env_clock()
    for _ in range(warmup):
        for c in cases:
            c.fn()
    times: dict[str, list[float]] = {c.name: [] for c in cases}
    for _ in range(repeats):
        for c in cases:
            gc.collect()
            t0 = clock()
            c.fn()
            times[c.name].append(clock() - t0)
    base = times[cases[0].name]
    return [
        Result(c.name, times[c.name], [t / b for t, b in zip(times[c.name], base)], c.note) for c in cases
    ]


class PeakRSS:
    """Resident memory (``/proc/self/statm``) sampled every 2 ms in a thread; ``peak`` in MiB."""

    def __init__(self) -> None:
        self.page = os.sysconf("SC_PAGE_SIZE")
        self.peak = self.now()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def now(self) -> float:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * self.page / 2**20

    def _run(self) -> None:
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, self.now())

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.now())


def _release_free_memory() -> None:
    """Give freed heap back to the OS, so the next case starts from what is really in use
    (without it glibc and rnnlens keep earlier cases' buffers and the next case reuses them
    unseen)."""
    gc.collect()
    import rnnlens

    rnnlens.release_memory()  # and the buffers rnnlens keeps for reuse (rnnlens.core.buffers)
    with contextlib.suppress(OSError, AttributeError):  # not glibc: the figures are then lower bounds
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def measure_rss(results: list[Result], cases: list[Case]) -> None:
    """One more run of each case, after the timed rounds (everything warmed up and compiled):
    ``rss_mib`` = peak resident memory during the run minus resident memory just before it,
    i.e. what the case adds on top of the framework, the model and the data."""
    for r, c in zip(results, cases):
        _release_free_memory()
        with PeakRSS() as rss:
            before = rss.now()
            out = c.fn()
            del out
        r.rss_mib = rss.peak - before


def format_table(title: str, results: list[Result]) -> str:
    lines = [f"\n{title}", f"{'case':<34} {'ratio':>6} {'spread':>13} {'median s':>9} {'+RSS':>9}  note"]
    for r in results:
        spread = f"{min(r.ratios):.2f}–{max(r.ratios):.2f}"
        rss = f"{r.rss_mib:+.0f} MiB" if r.rss_mib is not None else "-"
        lines.append(f"{r.name:<34} {r.ratio:>6.2f} {spread:>13} {r.median:>9.3f} {rss:>9}  {r.note}")
    return "\n".join(lines)


def markdown_table(results: list[Result]) -> str:
    lines = ["| case | ratio to floor | spread | median s | peak extra RSS |", "|---|---:|---:|---:|---:|"]
    for r in results:
        rss = f"{r.rss_mib:+.0f} MiB" if r.rss_mib is not None else "–"
        lines.append(
            f"| {r.name} | {r.ratio:.2f} | {min(r.ratios):.2f}–{max(r.ratios):.2f} | {r.median:.3f} | {rss} |"
        )
    return "\n".join(lines)
