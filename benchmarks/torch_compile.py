"""``torch.compile``: the first ``rnnlens.trace`` of a freshly compiled module (traced through the
module it wraps, rnnlens' step loop never compiled) against the first trace of the same,
uncompiled module (issue 31: no more than 1.5×). Each round builds a fresh module, so every trace
is a first trace. ``SUITES`` plugs the cases into ``python -m benchmarks``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .harness import Case

STEPS, BATCH, FEATURES, UNITS = 50, 8, 16, 32


def cases() -> list[Case]:
    import torch

    import rnnlens

    x = torch.randn(BATCH, STEPS, FEATURES)

    def fresh() -> Any:
        torch.manual_seed(0)
        return torch.nn.LSTM(FEATURES, UNITS, num_layers=2, batch_first=True).eval()

    return [
        Case("first trace, uncompiled module (floor)", lambda: rnnlens.trace(fresh(), x)),
        Case("first trace, torch.compile(module)", lambda: rnnlens.trace(torch.compile(fresh()), x)),
    ]


SUITES: dict[str, Callable[[], list[Case]]] = {"torch-compile": cases}
