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
from ...core.edits import LINEAR, WRITE, LayerEdits, Op
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
    #: per site run by rnnlens' scan: its steps, time first (names: ``scan.STACKED``)
    stacked: dict[int, dict[str, np.ndarray]] = field(default_factory=dict)
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
            _edit(run, index, len(records), arrays, back)
        records.append((*arrays, *back))
    except BaseException as e:  # raised after the run, by the caller
        run.error = run.error or e


def _edit(run: Run, index: int, s: int, arrays: list[np.ndarray], back: list[np.ndarray]) -> None:
    """Step ``s`` of site ``index`` edited in ``back``: its write first (``write:c`` of an LSTM,
    ``write:h`` of a GRU or MGU: the state formed again from the edited write), then h and c."""
    site = run.sites[index]
    edits = (run.edits or {}).get(site.entry)
    if edits is None:
        return
    n = back[0].shape[0]
    names = ("h", "c")[: len(back)]
    linear = LINEAR.get(site.kind)
    fields = [*names, *([WRITE + linear] if linear in names else [])]
    if site.steps is None:  # a cell called directly: its calls count the steps
        at = {f: edits.ops_at(site.direction, f, s, n) for f in fields}
        rows = np.ones(n, bool)
        if at.get(fields[-1]) and len(fields) > len(names):
            _write(site, arrays, back, at[fields[-1]], rows)
        for f, state in zip(names, back):
            _apply(state, at[f], rows)
        return
    if index not in run._plans:
        lengths = arrays[-1].reshape(-1).astype(np.int64)
        lens = lengths if site.lengths else None
        order = input_order(lens, site.steps, reverse=site.reverse, samples=n)
        mask = None if lens is None else np.arange(site.steps)[None, :] < lens[:, None]
        plans = {f: edits.steps(site.direction, f, site.steps, n, mask=mask) for f in fields}
        run._plans[index] = (order, plans)
    order, plans = run._plans[index]
    times = order[:, s]
    for t in np.unique(times):
        rows = times == t
        if len(fields) > len(names) and plans[fields[-1]].get(int(t)):
            _write(site, arrays, back, plans[fields[-1]][int(t)], rows)
        for f, state in zip(names, back):
            ops = plans[f].get(int(t))
            if ops:
                _apply(state, ops, rows)


def _write(
    site: Site, arrays: list[np.ndarray], back: list[np.ndarray], ops: list[Op], rows: np.ndarray
) -> None:
    """Edit what the step wrote into its linear state at ``rows`` and form the state (and an
    LSTM's ``h``) again from it, in the cell's arithmetic: ``c = f ⊙ c_in + w``, ``h = o ⊙ act(c)``
    (LSTM, ``w = i ⊙ g``); ``h = z ⊙ h_in + w`` (GRU, ``w = (1 − z) ⊙ n``; MGU, ``f`` for ``z``).
    ``arrays``: the step's ``h_in, h_model, h_ours, (c_in, c_model, c_ours,) gates, lengths``."""
    gates = arrays[-2]  # (sample, gate, unit), rnnlens' order: i f g o / z r n / f n
    if site.kind == "lstm":
        i, f, g, o = (gates[:, k] for k in range(4))
        w = i * g
        _apply(w, ops, rows)
        c = f * arrays[3] + w
        h = o * _on_host(site.activation, c)
        back[1][rows], back[0][rows] = c[rows], h[rows]
        return
    z, cand = gates[:, 0], gates[:, -1]
    w = (1 - z) * cand
    _apply(w, ops, rows)
    back[0][rows] = (z * arrays[0] + w)[rows]


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


def _on_host(fn: Any, a: np.ndarray) -> np.ndarray:
    """The cell's own JAX function of ``a``, run on the CPU (never on the device the model's
    callback waits for), as NumPy in ``a``'s dtype."""
    import jax

    with jax.default_device(jax.devices("cpu")[0]):
        return np.asarray(fn(a), dtype=a.dtype)


def _steps(run: Run, index: int, has_c: bool) -> dict[str, np.ndarray] | None:
    """Site ``index``'s steps, (sample, time, ...): ``h_model``, ``h_ours``, ``h`` (what the model
    carried on, edited where asked), ``h0``, the same of c, ``gates``, ``lengths`` where given."""
    stacked = run.stacked.get(index)
    if stacked is not None:  # rnnlens' scan: nothing edited
        # (time, sample, ...) -> (sample, time, ...); what is returned, copied (writable, contiguous)
        out = {k: np.moveaxis(v, 0, 1) for k, v in stacked.items() if k not in ("h0", "c0", "lengths")}
        for name in ("h_model", "c_model", "gates"):
            if name in out:
                out[name] = np.ascontiguousarray(out[name]) if out[name].flags.writeable else out[name].copy()
        out.update((name, stacked[name]) for name in ("h0", "c0") if name in stacked)
        out["h"] = out["h_model"]
        if has_c:
            out["c"] = out["c_model"]
        if "lengths" in stacked:
            out["lengths"] = stacked["lengths"].reshape(-1).astype(np.int64)
        return out if out["h"].shape[1] else None
    records = run.steps.get(index)
    if not records:
        return None

    def stacked_at(k: int) -> np.ndarray:
        return np.stack([r[k] for r in records], axis=1)

    names = ["h_in", "h_model", "h_ours"] + (["c_in", "c_model", "c_ours"] if has_c else []) + ["gates"]
    out = {name: stacked_at(i) for i, name in enumerate(names) if not name.endswith("_in")}
    k = len(names)
    if run.sites[index].lengths:
        out["lengths"] = records[0][k].reshape(-1).astype(np.int64)
    out["h"], out["h0"] = stacked_at(k + 1), records[0][0]
    if has_c:
        out["c"], out["c0"] = stacked_at(k + 2), records[0][3]
    return out


def direction_arrays(
    run: Run, index: int, *, want_c: bool, want_gates: bool
) -> tuple[DirectionArrays, np.ndarray | None]:
    """Site ``index``'s steps as one direction, input time order, checked against the cell's own
    ``h`` (and ``c``); and its valid-step mask (``seq_lengths``) or None."""
    site = run.sites[index]
    has_c = KINDS[site.kind].has_c
    got = _steps(run, index, has_c)
    if got is None:
        raise InputError(f"Layer {site.layer!r} ran no step: give inputs with at least one time step.")
    h_model = got["h_model"]
    n, steps = h_model.shape[:2]
    if "h_ours" in got:  # rnnlens' step ran (for the gates): it must give the cell's own h and c
        check_parity(h_model, got["h_ours"].astype(h_model.dtype), None, layer=site.layer,
                     what="rnnlens' step (h)")  # fmt: skip
        if has_c:
            check_parity(got["c_model"], got["c_ours"].astype(h_model.dtype), None, layer=site.layer,
                         what="rnnlens' step (c)")  # fmt: skip
    gates, lengths = got.get("gates", np.zeros((n, steps, 0, 0), h_model.dtype)), got.get("lengths")
    h, c = got["h"], got.get("c")
    h0, c0 = got["h0"], got.get("c0")
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
    out.initial = (np.asarray(h0), None if c0 is None else np.asarray(c0))  # to join chained calls
    return out, mask
