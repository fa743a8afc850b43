"""rnnlens' own NumPy step loop for one direction of an LSTM / GRU / simple RNN, with edits.

For adapters whose framework runs the recurrence where rnnlens cannot reach into it (ONNX
Runtime's fused ``LSTM`` op): the edited layer is run here instead, step by step from its
weights (:class:`~rnnlens.core.spec.CellWeights`), with each step's edits
(:meth:`rnnlens.core.edits.LayerEdits.steps`) applied to ``h`` / ``c`` after the step, and the rest
of the model runs on what this returns. The input projection of every step is one GEMM; each
step adds ``h @ U``. Computed in the input's dtype.

Example:
    >>> import numpy as np
    >>> from rnnlens.core.spec import CellWeights
    >>> from rnnlens.core.steploop import run_direction
    >>> rng = np.random.default_rng(0)
    >>> k, u = rng.normal(size=(2, 3)), rng.normal(size=(3, 3))
    >>> w = CellWeights("simple", k, u, None, None, np.tanh, np.tanh)
    >>> out = run_direction(w, rng.normal(size=(1, 4, 2)), np.zeros((1, 3)), None, None, reverse=False)
    >>> out.arrays.h.shape, out.h_last.shape
    ((1, 4, 3), (1, 3))
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from .cells import DirectionArrays
from .edits import Op
from .kinds import KINDS
from .spec import CellWeights

__all__ = ["LoopResult", "apply_ops", "run_direction"]


@dataclass
class LoopResult:
    """One direction's states (input time order; carried at masked steps, gates NaN there) and
    its final state (after the last step it processed)."""

    arrays: DirectionArrays
    h_last: np.ndarray
    c_last: np.ndarray | None


def apply_ops(state: np.ndarray, ops: list[Op]) -> None:
    """``state[:, units] = / += / *= value`` for each op, in order, in place."""
    for op in ops:
        value = op.value.astype(state.dtype, copy=False)
        if op.mode == "set":
            state[:, op.units] = value
        elif op.mode == "add":
            state[:, op.units] = state[:, op.units] + value
        else:
            state[:, op.units] = state[:, op.units] * value


def run_direction(
    w: CellWeights,
    x: np.ndarray,
    h0: np.ndarray,
    c0: np.ndarray | None,
    mask: np.ndarray | None,
    *,
    reverse: bool,
    edits_h: Mapping[int, list[Op]] | None = None,
    edits_c: Mapping[int, list[Op]] | None = None,
    edits_w: Mapping[int, list[Op]] | None = None,
) -> LoopResult:
    """Run one direction over ``x`` (sample, time, feature), input order, from ``h0``/``c0``;
    ``mask`` (sample, time) marks valid steps (the state is carried over the others).
    ``edits_w``: edits of each step's write (LSTM ``i ⊙ g`` into c, GRU ``(1 − z) ⊙ n`` into h),
    applied before the step's state is computed from it."""
    mm = w.matmul or np.matmul
    dtype = x.dtype
    n, t, _ = x.shape
    kind = w.kind
    u, cu = w.units, w.cell_units
    n_gates = len(KINDS[kind].gates)
    k = w.kernel.astype(dtype, copy=False)
    rk = w.recurrent_kernel.astype(dtype, copy=False)
    b = np.zeros(k.shape[1], dtype) if w.bias is None else w.bias.astype(dtype)
    rb = np.zeros(k.shape[1], dtype) if w.recurrent_bias is None else w.recurrent_bias.astype(dtype)
    xw = np.asarray(mm(np.ascontiguousarray(x).reshape(n * t, -1), k)).reshape(n, t, -1) + b
    proj = None if w.projection is None else w.projection.astype(dtype, copy=False)
    hs = np.empty((n, t, u), dtype)
    cs = np.empty((n, t, cu), dtype) if KINDS[kind].has_c else None
    gates = np.full((n, t, n_gates, cu), np.nan, dtype) if n_gates else None
    h = np.array(h0, dtype=dtype)
    c = np.zeros((n, cu), dtype) if c0 is None else np.array(c0, dtype=dtype)
    act, ract = w.activation, w.recurrent_activation
    peep = None if w.peepholes is None else np.asarray(w.peepholes, dtype)
    bound = w.clip

    def clip(z: np.ndarray) -> np.ndarray:  # ONNX clip: every gate's pre-activation
        return z if bound is None else np.clip(z, -bound, bound)

    for s in range(t - 1, -1, -1) if reverse else range(t):
        if kind == "lstm":
            z = xw[:, s] + np.asarray(mm(h, rk)) + rb
            zi, zf, zg, zo = z[:, :cu], z[:, cu : 2 * cu], z[:, 2 * cu : 3 * cu], z[:, 3 * cu :]
            if peep is not None:  # ONNX P: i and f read c_{t-1}, o reads c_t (see rebuild_cell)
                zi, zf = zi + peep[0] * c, zf + peep[1] * c
            i = ract(clip(zi))
            f = 1 - i if w.input_forget else ract(clip(zf))
            g = act(clip(zg))
            write = i * g
            if edits_w and s in edits_w:
                write = np.array(write, dtype)
                apply_ops(write, edits_w[s])
            c_new = f * c + write
            o = ract(clip(zo if peep is None else zo + peep[2] * c_new))
            h_new = o * act(c_new)
            if proj is not None:
                h_new = np.asarray(mm(h_new, proj))
            step_gates: tuple[np.ndarray, ...] = (i, f, g, o)
        elif kind == "gru":
            hz = np.asarray(mm(h, rk[:, : 2 * cu])) + rb[: 2 * cu]
            zg = ract(xw[:, s, :cu] + hz[:, :cu])
            r = ract(xw[:, s, cu : 2 * cu] + hz[:, cu:])
            if w.reset_after:
                cand = act(xw[:, s, 2 * cu :] + r * (np.asarray(mm(h, rk[:, 2 * cu :])) + rb[2 * cu :]))
            else:
                cand = act(xw[:, s, 2 * cu :] + np.asarray(mm(r * h, rk[:, 2 * cu :])) + rb[2 * cu :])
            write = (1 - zg) * cand
            if edits_w and s in edits_w:
                write = np.array(write, dtype)
                apply_ops(write, edits_w[s])
            h_new, c_new = zg * h + write, c
            step_gates = (zg, r, cand)
        else:
            h_new, c_new = act(xw[:, s] + np.asarray(mm(h, rk)) + rb), c
            step_gates = ()
        if mask is not None and not mask[:, s].all():
            keep = ~mask[:, s]
            h_new, c_new = np.array(h_new, dtype), np.array(c_new, dtype)
            h_new[keep], c_new[keep] = h[keep], c[keep]
        else:
            h_new, c_new = np.array(h_new, dtype), np.array(c_new, dtype)
        if edits_h and s in edits_h:
            apply_ops(h_new, edits_h[s])
        if edits_c and s in edits_c:
            apply_ops(c_new, edits_c[s])
        h, c = h_new, c_new
        hs[:, s] = h
        if cs is not None:
            cs[:, s] = c
        if gates is not None:
            valid = np.ones(n, bool) if mask is None else mask[:, s]
            for gi, gv in enumerate(step_gates):
                gates[valid, s, gi] = gv[valid]
    arrays = DirectionArrays(
        h=hs, c=cs, gates=None if gates is None else tuple(gates[:, :, gi] for gi in range(n_gates))
    )
    return LoopResult(arrays, h, c if KINDS[kind].has_c else None)
