"""What the ONNX, Keras and Flax recordings share for ``rnnlens.record(model, to=dir)``: a list
of recorded calls drained every so often, keeping the last call to link the next; and the test
of whether a layer's call continues the previous one (:func:`continues`), their joining
(:func:`merge_batches`), and the joining of one trace's chained calls (:func:`join_calls`, for
``trace(..., calls="join")`` on Keras subclassed models and Flax).

Example:
    >>> log = CallLog()
    >>> log.calls = ["a", "b"]
    >>> log.stream_of("rnn", [0, 1], skip_first=False)
    ([0, 1], 0)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np

from ..core.kinds import KINDS
from ..core.spec import LayerSpec, call_entry
from .base import Captured, LayerBatch

__all__ = ["ATOL", "RTOL", "CallLog", "JoiningLog", "continues", "join_calls", "merge_batches"]

#: a call continues another when its initial state equals the other's last within these (the
#: fed-back state is the framework's, rnnlens' c its own, summed in another order)
RTOL, ATOL = 1e-5, 1e-6

Spans = list[tuple[str, str, int, int]]


class CallLog:
    """``calls`` recorded since the last drain; ``base`` is the global number of ``calls[0]``;
    ``carried``: ``calls[0]`` was written by the last drain, kept only to link the next; ``stream``:
    per layer, the global number of the call its open stream began with. Subclasses give
    ``_convert(skip_first=...)``, which skips a chain's first call when it is the carried one."""

    def __init__(self) -> None:
        self.calls: list[Any] = []
        self.on_call: Any = None  # called after each recorded call (a recording written as it goes)
        self.base = 0
        self.carried = False
        self.stream: dict[str, int] = {}

    def _convert(self, *, skip_first: bool) -> tuple[Any, Spans]:
        raise NotImplementedError

    def drain(self) -> tuple[Any, Spans]:
        """The calls since the last drain, converted (a call continuing the last drained one
        extends its entry), and their spans counted from this drain; then only the last call is
        kept, to link the next."""
        if not self.calls or (self.carried and len(self.calls) == 1):
            return None, []
        captured, spans = self._convert(skip_first=self.carried)
        self.base += len(self.calls) - 1
        self.calls = self.calls[-1:]
        self.carried = True
        return captured, spans

    def stream_of(self, layer: str, chain: list[int], *, skip_first: bool) -> tuple[list[int], int] | None:
        """The calls of ``chain`` (local numbers) still to convert, and the global number of the
        call their entry is named after; None when nothing is new (only the carried call)."""
        if skip_first and chain[0] == 0:  # continues the stream written last time
            if len(chain) == 1:
                return None
            return chain[1:], self.stream[layer]
        self.stream[layer] = self.base + chain[0]
        return chain, self.stream[layer]

    def call_name(self, layer: str, k: int) -> str:
        """The name of local call ``k`` of ``layer``: ``layer``, ``layer#<global number>``."""
        return call_entry(layer, self.base + k)

    def convert_calls(
        self,
        calls: list[Any],
        *,
        skip_first: bool,
        joins: Callable[[Any, Any, LayerSpec], bool],
        merge: Callable[[list[Any]], Any],
    ) -> tuple[Any, Spans]:
        """``calls`` (one :class:`~rnnlens.adapters.base.Captured` of one batch per model call)
        as one Captured: per layer, calls that ``joins(prev, call, spec)`` joined by ``merge``
        along time into one entry named after the chain's first call; and each call's span."""
        per_call = [c.batches[0] for c in calls]
        specs: list[LayerSpec] = []
        batch: dict[str, Any] = {}
        spans: Spans = []
        for s in calls[0].specs:
            chains: list[list[int]] = []
            for k in range(len(per_call)):
                if s.name not in per_call[k]:
                    continue
                if chains and joins(per_call[chains[-1][-1]][s.name], per_call[k][s.name], s):
                    chains[-1].append(k)
                else:
                    chains.append([k])
            for chain in chains:
                todo = self.stream_of(s.name, chain, skip_first=skip_first)
                if todo is None:
                    continue
                chain, began = todo
                entry = call_entry(s.name, began)
                specs.append(replace(s, name=entry))
                batch[entry] = merge([per_call[k][s.name] for k in chain])
                start = 0
                for k in chain:
                    steps = int(next(iter(per_call[k][s.name][0].values())).h.shape[1])
                    spans.append((self.call_name(s.name, k), entry, start, start + steps))
                    start += steps
        return Captured(specs, [batch], backend=calls[0].backend), spans


def join_calls(
    specs: list[LayerSpec],
    batches: list[dict[str, LayerBatch]],
    layer_of: dict[str, str],
    *,
    rtol: float,
    atol: float,
) -> tuple[list[LayerSpec], list[dict[str, LayerBatch]]]:
    """``specs`` and ``batches`` (one trace's entries, calls in call order) with chained calls
    joined along time into one entry named after the first call: calls of one layer (the
    entries ``layer_of`` maps to it) where each :func:`continues` the previous in every batch
    (one direction, no masked step).

    Example:
        >>> join_calls([], [{}], {}, rtol=0.0, atol=0.0)
        ([], [{}])
    """
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


def continues(prev: Any, call: Any, kind: str, *, rtol: float, atol: float) -> bool:
    """Whether ``call`` (a layer's ``(directions, mask)``) started from the state ``prev`` ended
    in: one direction, no masked step, its ``initial`` h0 (and c0) equal to ``prev``'s last h
    (and c) within ``rtol`` / ``atol``."""
    (prev_dirs, prev_mask), (dirs, mask) = prev, call
    if len(dirs) != 1 or not KINDS[kind].known:
        return False
    if any(m is not None and not np.all(m) for m in (prev_mask, mask)):
        return False
    name, a = next(iter(dirs.items()))
    b = prev_dirs.get(name)
    if b is None or a.initial is None or a.initial[0] is None:
        return False
    finals = [(a.initial[0], b.h[:, -1])]
    if KINDS[kind].has_c:
        if a.initial[1] is None or b.c is None:
            return False
        finals.append((a.initial[1], b.c[:, -1]))
    return all(
        np.shape(start) == np.shape(end) and np.allclose(start, end, rtol=rtol, atol=atol)
        for start, end in finals
    )


def merge_batches(parts: list[Any], *, with_c: bool = True) -> Any:
    """Calls of one layer (``(directions, mask)`` each) joined along time into one."""
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
        mask = np.concatenate(
            [
                np.ones(p[0][next(iter(p[0]))].h.shape[:2], bool) if m is None else m
                for p, m in zip(parts, masks)
            ],
            axis=1,
        )
    return dirs, mask


class JoiningLog(CallLog):
    """A :class:`CallLog` of calls each traced to one :class:`~rnnlens.adapters.base.Captured`
    (one batch), joined by :func:`continues` within ``rtol`` / ``atol`` and :func:`merge_batches`
    (c kept where ``wanted_c``): the Keras and Flax recordings."""

    backend_name = "?"
    rtol, atol = RTOL, ATOL
    wanted_c = True

    def joined(self) -> tuple[Captured, Spans]:
        """The recorded calls, chained ones joined along time, and each call's span."""
        if not self.calls:
            return Captured([], [], backend=self.backend_name), []
        return self._convert(skip_first=False)

    def _convert(self, *, skip_first: bool) -> tuple[Captured, Spans]:
        def joins(prev: Any, call: Any, spec: LayerSpec) -> bool:
            return continues(prev, call, spec.kind, rtol=self.rtol, atol=self.atol)

        def merge(parts: list[Any]) -> Any:
            return merge_batches(parts, with_c=self.wanted_c)

        return self.convert_calls(self.calls, skip_first=skip_first, joins=joins, merge=merge)
