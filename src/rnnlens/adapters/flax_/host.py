"""The host side of a traced Flax run: each cell step arrives here (an ordered ``io_callback``),
is recorded, and goes back edited where an intervention asks; after the run the steps become
one direction's arrays in input time order.

One run at a time (:func:`active`); an error inside a callback is kept and raised after the
run (an exception raised in a callback would surface as the runtime's own error).

Example:
    >>> import numpy as np
    >>> input_order(np.array([3, 2]), 4, reverse=True)  # where nn.RNN's reversed scan reads
    array([[2, 1, 0, 3],
           [1, 0, 2, 3]])
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ...core.cells import DirectionArrays, check_parity, split_emitted
from ...core.edits import LayerEdits, Op
from ...core.kinds import KINDS
from ...core.steploop import apply_ops
from ...errors import InputError
from .entries import Site

__all__ = ["Run", "active", "direction_arrays", "input_order", "on_step"]

_lock = threading.Lock()
_run: Run | None = None


@dataclass
class Run:
    """The records of one run: per site, each step's arrays (see :func:`on_step`)."""

    sites: list[Site]
    edits: Mapping[str, LayerEdits] | None = None
    steps: dict[int, list[tuple[np.ndarray, ...]]] = field(default_factory=dict)
    error: BaseException | None = None
    _plans: dict[int, tuple[np.ndarray, dict[str, dict[int, list[Op]]]]] = field(default_factory=dict)


@contextmanager
def active(run: Run) -> Iterator[Run]:
    """Make ``run`` the one the callbacks record into, for the duration of one model call."""
    global _run
    with _lock:
        _run = run
        try:
            yield run
        finally:
            _run = None


def input_order(lengths: np.ndarray | None, steps: int, *, reverse: bool, samples: int = 0) -> np.ndarray:
    """(sample, step) → the input time step ``nn.RNN`` reads at that scan step (its
    ``flip_sequences``: a reversed scan reads each sample's valid steps backwards, then its padding)."""
    ramp = np.arange(steps)
    n = samples if lengths is None else len(lengths)
    if not reverse:
        return np.broadcast_to(ramp, (n, steps))
    if lengths is None:
        return np.broadcast_to(ramp[::-1], (n, steps))
    lengths = np.asarray(lengths)[:, None]
    return np.where(ramp < lengths, lengths - 1 - ramp, ramp)


def on_step(
    index: int, has_c: bool, layout: tuple[tuple[tuple[int, ...], str], ...], packed: Any
) -> np.ndarray:
    """One step of site ``index``: ``packed`` (sample, …) holds ``h_in, h_model, h_ours, (c_in,
    c_model, c_ours,) gates, lengths`` side by side (``layout``: each one's shape after the sample
    axis, and dtype). Records them; returns the state the model carries on, ``h`` (and ``c``)
    side by side (edited where asked)."""
    packed = np.asarray(packed)
    n, arrays, start = packed.shape[0], [], 0
    for shape, dtype in layout:
        stop = start + math.prod(shape)
        arrays.append(packed[:, start:stop].reshape((n, *shape)).astype(dtype))
        start = stop
    back = [arrays[1].copy()] + ([arrays[4].copy()] if has_c else [])
    run = _run
    if run is not None:
        _record(run, index, arrays, back)
    return np.concatenate(back, axis=1).astype(packed.dtype) if has_c else back[0].astype(packed.dtype)


def _record(run: Run, index: int, arrays: list[np.ndarray], back: list[np.ndarray]) -> None:
    try:
        records = run.steps.setdefault(index, [])
        if run.edits:
            _edit(run, index, len(records), back, arrays[-1].reshape(-1).astype(np.int64))
        records.append((*arrays, *back))
    except BaseException as e:  # raised after the run, by the caller
        run.error = run.error or e


def _edit(run: Run, index: int, s: int, back: list[np.ndarray], lengths: np.ndarray) -> None:
    site = run.sites[index]
    edits = (run.edits or {}).get(site.entry)
    if edits is None:
        return
    n = back[0].shape[0]
    names = ("h", "c")[: len(back)]
    if site.steps is None:  # a cell called directly: its calls count the steps
        for f, state in zip(names, back):
            _apply(state, edits.ops_at(site.direction, f, s, n), np.ones(n, bool))
        return
    if index not in run._plans:
        lens = lengths if site.lengths else None
        order = input_order(lens, site.steps, reverse=site.reverse, samples=n)
        mask = None if lens is None else np.arange(site.steps)[None, :] < lens[:, None]
        plans = {f: edits.steps(site.direction, f, site.steps, n, mask=mask) for f in names}
        run._plans[index] = (order, plans)
    order, plans = run._plans[index]
    times = order[:, s]
    for f, state in zip(names, back):
        for t in np.unique(times):
            ops = plans[f].get(int(t))
            if ops:
                _apply(state, ops, times == t)


def _apply(state: np.ndarray, ops: list[Op], rows: np.ndarray) -> None:
    """``state[rows, units] = / += / *= value`` for each op, in order, in place: the step loop's
    :func:`~rnnlens.core.steploop.apply_ops` on those rows, each op's values taken at them."""
    n = state.shape[0]
    at_rows = [
        Op(op.units, op.mode, np.broadcast_to(op.value, (n, np.arange(state.shape[1])[op.units].size))[rows])
        for op in ops
    ]
    block = state[rows]
    apply_ops(block, at_rows)
    state[rows] = block


def direction_arrays(
    run: Run, index: int, *, want_c: bool, want_gates: bool
) -> tuple[DirectionArrays, np.ndarray | None]:
    """Site ``index``'s steps as one direction, input time order, checked against the cell's own
    ``h`` (and ``c``); and its valid-step mask (``seq_lengths``) or None."""
    site = run.sites[index]
    records = run.steps.get(index)
    if not records:
        raise InputError(f"Layer {site.layer!r} ran no step: give inputs with at least one time step.")
    has_c = KINDS[site.kind].has_c

    def stacked(k: int) -> np.ndarray:
        return np.stack([r[k] for r in records], axis=1)

    h_model, h_ours = stacked(1), stacked(2)
    n, steps = h_model.shape[:2]
    check_parity(h_model, h_ours.astype(h_model.dtype), None, layer=site.layer, what="rnnlens' step (h)")
    k = 3
    if has_c:
        check_parity(stacked(4), stacked(5).astype(h_model.dtype), None, layer=site.layer,
                     what="rnnlens' step (c)")  # fmt: skip
        k = 6
    gates = stacked(k)
    lengths = records[0][k + 1].reshape(-1).astype(np.int64) if site.lengths else None
    h, c = stacked(k + 2), stacked(k + 3) if has_c else None
    h0 = records[0][0]
    c0 = records[0][3] if has_c else None
    parts = [h] + ([c] if c is not None else []) + [gates[:, :, g] for g in range(gates.shape[2])]
    mask = None
    if site.steps is not None and site.reverse:
        order = input_order(lengths, steps, reverse=True, samples=n)
        rows = np.arange(n)[:, None]
        for p in parts:
            p[rows, order] = p.copy()
    if lengths is not None:
        if lengths.min(initial=steps) < 1 or lengths.max(initial=0) > steps:
            raise InputError(
                f"seq_lengths of {site.layer!r} must lie in 1..{steps}; received {lengths.tolist()}."
            )
        mask = np.arange(steps)[None, :] < lengths[:, None]
    out = split_emitted(
        site.kind, parts, h0, c0, mask, reverse=site.reverse, want_c=want_c, want_gates=want_gates
    )
    return out, mask
