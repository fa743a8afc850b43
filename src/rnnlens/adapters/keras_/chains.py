"""Calls of one Keras recurrent layer inside one model call that chain: each starts from the
state the previous call ended in (a subclassed model that feeds a sequence in pieces, carrying
the state). :func:`join_calls` joins them along time for :func:`rnnlens.trace`
(``calls="join"``, the default), with the test and the joining :func:`rnnlens.record` uses
(:func:`~rnnlens.adapters.calllog.continues`, :func:`~rnnlens.adapters.calllog.merge_batches`;
within :data:`RTOL` / :data:`ATOL`: the fed-back state is Keras', while rnnlens' ``c`` comes
from its probe, in another summation order).

Example:
    >>> from rnnlens.adapters.keras_.chains import join_calls
    >>> join_calls([], {}, [])
    ([], [])
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ...core.spec import LayerSpec
from ..calllog import continues, merge_batches

__all__ = ["ATOL", "RTOL", "join_calls"]

#: a call continues another when its initial state equals the other's last within these
RTOL, ATOL = 1e-5, 1e-6


def _chains(
    order: list[tuple[str, str]], specs: Mapping[str, LayerSpec], batch: Mapping[str, Any]
) -> list[list[str]]:
    chains: list[list[str]] = []
    last: dict[str, list[str]] = {}
    for entry, base in order:
        chain = last.get(base)
        if chain is not None and continues(
            batch[chain[-1]], batch[entry], specs[base].kind, rtol=RTOL, atol=ATOL
        ):
            chain.append(entry)
            continue
        chains.append([entry])
        last[base] = chains[-1]
    return chains


def join_calls(
    order: list[tuple[str, str]], specs: Mapping[str, LayerSpec], batches: list[dict[str, Any]]
) -> tuple[list[tuple[str, str]], list[dict[str, Any]]]:
    """``order`` (entry, layer) in call order and each batch's ``(directions, mask)`` by entry,
    with every chain of calls joined into one entry named after its first call. Calls join only
    where they chain in every batch alike (else each stays an entry of its own)."""
    plans = [_chains(order, specs, b) for b in batches]
    if not plans or any(p != plans[0] for p in plans) or all(len(c) == 1 for c in plans[0]):
        return order, batches
    base_of = dict(order)
    joined = [
        {c[0]: merge_batches([b[e] for e in c]) if len(c) > 1 else b[c[0]] for c in plans[0]} for b in batches
    ]
    return [(c[0], base_of[c[0]]) for c in plans[0]], joined
