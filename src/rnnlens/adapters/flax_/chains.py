"""Calls of one layer that chain — each starts from exactly the carry the previous call of that
layer ended in (a decoder ``nn.RNN`` fed one token at a time, a stream cut into chunks) — joined
along time into one entry named after the first call (``trace(..., calls="join")``, the
default; ``calls="each"`` keeps one entry per call, ``name#k``).

A call joins the previous one only where it does so in every batch piece, with one direction and
no ``seq_lengths``; the test is :func:`rnnlens.adapters.calllog.continues`.

Example:
    >>> join_calls([], [{}], {}, rtol=0.0, atol=0.0)
    ([], [{}])
"""

from __future__ import annotations

from typing import Any

from ...core.spec import LayerSpec
from ..base import LayerBatch
from ..calllog import continues, merge_batches

__all__ = ["join_calls"]


def join_calls(
    specs: list[LayerSpec],
    batches: list[dict[str, LayerBatch]],
    layer_of: dict[str, str],
    *,
    rtol: float,
    atol: float,
) -> tuple[list[LayerSpec], list[dict[str, LayerBatch]]]:
    """``specs`` and ``batches`` with chained calls joined; ``layer_of`` maps each entry to its
    layer (calls of one layer, in call order, are the entries with the same layer)."""
    chains: list[list[LayerSpec]] = []
    last: dict[str, list[LayerSpec]] = {}
    for spec in specs:
        layer = layer_of.get(spec.name, spec.name)
        chain = last.get(layer)
        if chain is not None and all(
            continues(b[chain[-1].name], b[spec.name], spec.kind, rtol=rtol, atol=atol) for b in batches
        ):
            chain.append(spec)
            continue
        chains.append([spec])
        last[layer] = chains[-1]
    if all(len(c) == 1 for c in chains):
        return specs, batches
    joined = [
        {c[0].name: merge_batches([b[s.name] for s in c]) if len(c) > 1 else b[c[0].name] for c in chains}
        for b in batches
    ]
    return [c[0] for c in chains], joined


def steps_of(batch: dict[str, LayerBatch], name: str) -> int:
    """The time steps of entry ``name`` in one batch."""
    directions: Any = batch[name][0]
    return int(next(iter(directions.values())).h.shape[1])
