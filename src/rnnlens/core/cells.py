"""The maths of recovering ``c`` and the gates from the hidden sequence.

The framework's own kernel gives ``h`` at every step. The gates at step ``t`` depend only on
``x_t`` and ``h_{t-1}``, so they come from one batched matmul over all (sample, time) rows;
``c_t = f_t * c_{t-1} + i_t * g_t`` is then an elementwise scan. Finally the reconstruction
must give back the kernel's own ``h`` (:func:`check_parity`), otherwise :class:`ParityError`.

All functions take arrays in *processing order* (time already reversed for a backward
direction). The fast whole-sequence path built on these is :mod:`rnnlens.core.rebuild`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import ParityError
from .kinds import KINDS
from .spec import CellWeights, MatMul

__all__ = [
    "DirectionArrays",
    "carry_forward",
    "check_parity",
    "gru_gates",
    "lstm_gates",
    "split_emitted",
    "tolerance",
]


@dataclass
class DirectionArrays:
    """One direction's per-step arrays, input time order; ``gates`` has one (sample, time, unit)
    array per gate, in canonical order."""

    h: np.ndarray
    c: np.ndarray | None = None
    gates: tuple[np.ndarray, ...] | None = None
    state: np.ndarray | None = None  # state-space mixers: (sample, time, *state_shape)
    #: further named parts of the state (mLSTM: its normaliser ``n`` and stabiliser ``m``)
    parts: dict[str, np.ndarray] | None = None
    #: the state's L2 norm over its last axis, (sample, time, product of the other axes)
    state_norm: np.ndarray | None = None
    #: ``(h0, c0)`` the direction started from, where the adapter knows it (to join calls)
    initial: tuple[np.ndarray | None, np.ndarray | None] | None = None


def tolerance(dtype: np.dtype) -> tuple[float, float]:
    """``(rtol, atol)`` for comparing a reconstruction with the kernel's output.

    The reconstruction sums ``x W`` and ``h U`` in another order than the kernel, and the
    cell scan accumulates that rounding over time, so float32 gets ~100 ulp of slack. A wrong
    equation (gate order, activation, bias) is off by 1e-2 or more and is still caught.
    """
    dtype = np.dtype(dtype)
    if dtype == np.float64:
        return 1e-9, 1e-10
    if dtype == np.float32:
        return 1e-4, 2e-5
    return 2e-2, 5e-3  # float16 and bfloat16


def carry_forward(seq: np.ndarray, mask: np.ndarray | None, h0: np.ndarray) -> np.ndarray:
    """The state sequence: ``seq`` where ``mask``, else the previous state (``h0`` before t=0).

    Frameworks disagree on what they *output* at masked steps (previous output, zeros);
    the state is always carried. ``seq`` is (sample, time, unit), processing order (or
    (sample, time, *feature_shape) for ConvLSTM feature maps).
    """
    if mask is None or mask.all():
        return seq
    t = mask.shape[1]
    lengths = mask.sum(axis=1)
    ramp = np.arange(t)
    if np.array_equal(mask, ramp < lengths[:, None]):  # padded at the end: repeat the last valid
        out = np.array(seq)
        for i in np.flatnonzero(lengths < t):
            n_valid = int(lengths[i])
            out[i, n_valid:] = out[i, n_valid - 1] if n_valid else h0[i]
        return out
    if np.array_equal(mask, ramp >= (t - lengths)[:, None]):  # padded at the start: h0 until then
        out = np.array(seq)
        for i in np.flatnonzero(lengths < t):
            out[i, : t - int(lengths[i])] = h0[i]
        return out
    steps = np.where(mask, np.arange(1, t + 1), 0)
    np.maximum.accumulate(steps, axis=1, out=steps)  # index of the last valid step, 1-based
    padded = np.concatenate([h0[:, None].astype(seq.dtype, copy=False), seq], axis=1)
    return np.take_along_axis(padded, steps.reshape(steps.shape + (1,) * (seq.ndim - 2)), axis=1)


def _affine(a: np.ndarray, w: np.ndarray, b: np.ndarray | None, matmul: MatMul | None = None) -> np.ndarray:
    """``a @ w + b`` over all (sample, time) rows at once (on the adapter's GEMM when it gives
    one: NumPy's BLAS threads would compete with the framework's for the cores)."""
    n, t, f = a.shape
    out = np.asarray((matmul or np.matmul)(a.reshape(n * t, f), w.astype(a.dtype, copy=False)))
    if b is not None:
        out += b.astype(a.dtype, copy=False)
    return out.reshape(n, t, -1)


def lstm_gates(w: CellWeights, x: np.ndarray, h_prev: np.ndarray) -> np.ndarray:
    """Post-activation gates ``i, f, g, o`` as (sample, time, 4, cell_unit)."""
    z = _affine(x, w.kernel, w.bias, w.matmul)
    z += _affine(h_prev, w.recurrent_kernel, w.recurrent_bias, w.matmul)
    n, t, _ = z.shape
    z = z.reshape(n, t, 4, -1)
    g = w.activation(np.ascontiguousarray(z[:, :, 2]))  # a strided block: ~8x slower in PyTorch's tanh
    gates = np.asarray(w.recurrent_activation(z), dtype=x.dtype)
    gates[:, :, 2] = g
    return gates


def gru_gates(w: CellWeights, x: np.ndarray, h_prev: np.ndarray) -> np.ndarray:
    """Post-activation gates ``z, r, n`` as (sample, time, 3, unit)."""
    units = w.cell_units
    xz = _affine(x, w.kernel, w.bias, w.matmul)
    n_, t, _ = xz.shape
    if w.reset_after:
        hz = _affine(h_prev, w.recurrent_kernel, w.recurrent_bias, w.matmul)
        zr = np.asarray(w.recurrent_activation(xz[..., : 2 * units] + hz[..., : 2 * units]))
        r = zr[..., units:]
        cand = xz[..., 2 * units :] + r * hz[..., 2 * units :]
    else:
        rb = w.recurrent_bias
        hz = _affine(
            h_prev, w.recurrent_kernel[:, : 2 * units], None if rb is None else rb[: 2 * units], w.matmul
        )
        zr = np.asarray(w.recurrent_activation(xz[..., : 2 * units] + hz))
        r = zr[..., units:]
        cand = xz[..., 2 * units :] + _affine(
            r * h_prev, w.recurrent_kernel[:, 2 * units :], None if rb is None else rb[2 * units :], w.matmul
        )
    gates = np.empty((n_, t, 3, units), dtype=x.dtype)
    gates[:, :, :2] = zr.reshape(n_, t, 2, units)
    gates[:, :, 2] = w.activation(cand)
    return gates


#: The gate function of each reconstructable kind (``KINDS[k].reconstructable``).
GATES = {"lstm": lstm_gates, "gru": gru_gates}


def check_parity(
    expected: np.ndarray,
    got: np.ndarray,
    mask: np.ndarray | None,
    *,
    layer: str,
    what: str,
    tol: tuple[float, float] | None = None,
) -> None:
    """Raise :class:`ParityError` unless ``got`` matches the kernel's ``expected`` at valid steps
    (within ``tol`` = ``(rtol, atol)``, by default :func:`tolerance` of the dtype)."""
    rtol, atol = tol or tolerance(expected.dtype)
    err = np.abs(got - expected)
    bound = atol + rtol * np.abs(expected)
    bad = err > bound
    if mask is not None:
        bad &= mask[:, :, None]
    if not bad.any():
        return
    sample, step, unit = (int(v) for v in np.argwhere(bad)[0])
    raise ParityError(
        f"Layer {layer!r}: {what} does not reproduce the framework's own h "
        f"(max error {float(err[bad].max()):.3g} > tolerance rtol={rtol:g}, atol={atol:g}; first at "
        f"sample {sample}, step {step} in processing order, unit {unit}; {int(bad.sum())} values off). "
        "The cell probably computes something other than the standard equations (a subclassed "
        "cell with its own call?). Ask for fields=('h',), which comes straight from the kernel."
    )


def split_emitted(
    kind: str,
    parts: Sequence[np.ndarray],
    h0: np.ndarray,
    c0: np.ndarray | None,
    mask: np.ndarray | None,
    *,
    reverse: bool,
    want_c: bool,
    want_gates: bool,
    settled: bool = False,
) -> DirectionArrays:
    """States of one direction from a probe that emitted ``h, (c,) gate...`` every step.

    ``parts`` are (sample, time, unit) arrays in input order (views are fine). At masked
    steps frameworks repeat their previous output (zeros before the first valid step), so
    ``h`` and ``c`` are carried from ``h0`` / ``c0`` here and the gates set to NaN —
    unless ``settled``: the probe wrote its c and gates so already (only ``h`` is carried).
    """
    flip = (lambda a: a[:, ::-1]) if reverse else (lambda a: a)
    mp = None if mask is None else flip(mask)
    h = flip(carry_forward(flip(parts[0]), mp, h0))
    out = DirectionArrays(h=h)
    gates = list(parts[1:])
    if settled:
        mask = mp = None
    if KINDS[kind].has_c:
        c_part = gates.pop(0)
        if want_c:
            if c0 is None:
                c0 = np.zeros(h0.shape[:1] + c_part.shape[2:], c_part.dtype)
            out.c = flip(carry_forward(flip(c_part), mp, c0))
    if want_gates:
        if mask is not None and not mask.all():
            invalid = ~mask
            gates = [
                np.where(invalid.reshape(invalid.shape + (1,) * (g.ndim - 2)), np.nan, g).astype(
                    g.dtype, copy=False
                )
                for g in gates
            ]
        out.gates = tuple(gates)
    return out
