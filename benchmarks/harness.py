"""Interleaved timing: every case of a group runs once per round (A B C A B C ...), after a
warm-up round, so slow drifts of the machine hit all cases alike. Only ratios to the
group's baseline, taken round by round, are compared; absolute times are printed for
reference."""

from __future__ import annotations

import gc
import statistics
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
    rss_mib: float | None = None

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
            "peak_rss_mib": self.rss_mib,
            "note": self.note,
        }


def interleaved(cases: list[Case], *, repeats: int = 5, warmup: int = 1) -> list[Result]:
    """Time ``cases`` interleaved; ratios are to ``cases[0]`` within each round."""
    for _ in range(warmup):
        for c in cases:
            c.fn()
    times: dict[str, list[float]] = {c.name: [] for c in cases}
    for _ in range(repeats):
        for c in cases:
            gc.collect()
            t0 = time.perf_counter()
            c.fn()
            times[c.name].append(time.perf_counter() - t0)
    base = times[cases[0].name]
    return [
        Result(c.name, times[c.name], [t / b for t, b in zip(times[c.name], base)], c.note) for c in cases
    ]


def format_table(title: str, results: list[Result]) -> str:
    lines = [f"\n{title}", f"{'case':<34} {'ratio':>6} {'spread':>13} {'median s':>9} {'peak RSS':>9}  note"]
    for r in results:
        spread = f"{min(r.ratios):.2f}–{max(r.ratios):.2f}"
        rss = f"{r.rss_mib:.0f} MiB" if r.rss_mib is not None else "-"
        lines.append(f"{r.name:<34} {r.ratio:>6.2f} {spread:>13} {r.median:>9.3f} {rss:>9}  {r.note}")
    return "\n".join(lines)


def markdown_table(results: list[Result]) -> str:
    lines = ["| case | ratio to floor | spread | median s | peak RSS |", "|---|---:|---:|---:|---:|"]
    for r in results:
        rss = f"{r.rss_mib:.0f} MiB" if r.rss_mib is not None else "–"
        lines.append(
            f"| {r.name} | {r.ratio:.2f} | {min(r.ratios):.2f}–{max(r.ratios):.2f} | {r.median:.3f} | {rss} |"
        )
    return "\n".join(lines)
