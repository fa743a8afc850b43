"""Calls of one Keras recurrent layer that chain: each starts from the state the previous call
ended in (a subclassed model that feeds a sequence in pieces, carrying the state; a
text-generation loop under :func:`rnnlens.record`). :func:`continues` tells whether a call
continues another, :func:`merge` joins a chain's arrays along time, :func:`join_calls` does both
for the calls of one :func:`rnnlens.trace` (``calls="join"``, the default).

A call continues the previous call of a layer when the layer started from the state that call
ended in: its ``h0`` (and ``c0``) equal the previous call's last ``h`` (``c``) within rnnlens'
stated agreement with Keras' kernels (rtol 1e-5, atol 1e-6: the fed-back state is Keras', while
rnnlens' ``c`` comes from its probe, in another summation order). One direction and no masked
steps are needed to join.

Example:
    >>> from rnnlens.adapters.keras_.chains import join_calls
    >>> join_calls([], {}, [])
    ([], [])
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from ...core.kinds import KINDS
from ...core.spec import LayerSpec

__all__ = ["ATOL", "RTOL", "continues", "join_calls", "merge"]

RTOL, ATOL = 1e-5, 1e-6

#: one call's converted arrays: (direction name -> DirectionArrays, (sample, time) mask or None)
Part = tuple[dict[str, Any], "np.ndarray | None"]


def continues(prev: Part, call: Part, spec: LayerSpec) -> bool:
    """``call`` of one layer started from the state ``prev`` ended in (see the module docstring)."""
    (prev_dirs, prev_mask), (dirs, mask) = prev, call
    if len(dirs) != 1 or not KINDS[spec.kind].known:
        return False
    if any(m is not None and not np.all(m) for m in (prev_mask, mask)):
        return False
    name, a = next(iter(dirs.items()))
    b = prev_dirs.get(name)
    if b is None or a.initial is None or a.initial[0] is None:
        return False
    finals = [(a.initial[0], b.h[:, -1])]
    if KINDS[spec.kind].has_c:
        if a.initial[1] is None or b.c is None:
            return False
        finals.append((a.initial[1], b.c[:, -1]))
    return all(
        np.shape(start) == np.shape(end) and np.allclose(start, end, rtol=RTOL, atol=ATOL)
        for start, end in finals
    )


def merge(parts: list[Part], *, with_c: bool = True) -> Part:
    """One call standing for a chain: every field joined along time (and the masks)."""
    dirs = {}
    for name, first in parts[0][0].items():
        arrays = [p[0][name] for p in parts]
        joined = type(first)(h=np.concatenate([a.h for a in arrays], axis=1))
        if first.c is not None and with_c:
            joined.c = np.concatenate([a.c for a in arrays], axis=1)
        if first.gates is not None:
            joined.gates = tuple(
                np.concatenate([a.gates[g] for a in arrays], axis=1) for g in range(len(first.gates))
            )
        joined.initial = first.initial
        dirs[name] = joined
    masks = [p[1] for p in parts]
    mask = None
    if any(m is not None for m in masks):
        shapes = [next(iter(p[0].values())).h.shape[:2] for p in parts]
        mask = np.concatenate([np.ones(s, bool) if m is None else m for s, m in zip(shapes, masks)], axis=1)
    return dirs, mask


def _chains(
    order: list[tuple[str, str]], specs: Mapping[str, LayerSpec], batch: Mapping[str, Part]
) -> list[list[str]]:
    chains: list[list[str]] = []
    last: dict[str, list[str]] = {}
    for entry, base in order:
        chain = last.get(base)
        if chain is not None and continues(batch[chain[-1]], batch[entry], specs[base]):
            chain.append(entry)
            continue
        chains.append([entry])
        last[base] = chains[-1]
    return chains


def join_calls(
    order: list[tuple[str, str]], specs: Mapping[str, LayerSpec], batches: list[dict[str, Part]]
) -> tuple[list[tuple[str, str]], list[dict[str, Part]]]:
    """``order`` (entry, layer) in call order and each batch's arrays by entry, with every chain
    of calls joined into one entry named after its first call. Calls join only where they chain
    in every batch alike (else each stays an entry of its own)."""
    plans = [_chains(order, specs, b) for b in batches]
    if not plans or any(p != plans[0] for p in plans) or all(len(c) == 1 for c in plans[0]):
        return order, batches
    base_of = dict(order)
    joined_order = [(chain[0], base_of[chain[0]]) for chain in plans[0]]
    joined = [
        {chain[0]: merge([b[e] for e in chain]) if len(chain) > 1 else b[chain[0]] for chain in plans[0]}
        for b in batches
    ]
    return joined_order, joined
