"""The rebuild of an LSTM whose gates read the cell state — peepholes, ``clip``, coupled input
and forget gates (ONNX ``P``, ``clip``, ``input_forget``), a clipped cell (TFLite ``cell_clip``)
— from the kernel's ``h``.

The pre-activations ``x @ K + h_{t-1} @ U + b`` of every step still come from the shared GEMMs
of :mod:`rnnlens.core.rebuild` (``h_{t-1}`` is the kernel's); what reads ``c`` cannot be batched
over time, so each step then adds its peepholes, clips and activates its own slot, in ONNX's
order (ONNX Runtime's kernel, checked against it):

    i = σ(clip(z_i + p_i ⊙ c_{t-1}))     f = σ(clip(z_f + p_f ⊙ c_{t-1}))  (1 - i if coupled)
    g = act(clip(z_g))                   c_t = f ⊙ c_{t-1} + i ⊙ g
    o = σ(clip(z_o + p_o ⊙ c_t))         h_t = o ⊙ act(c_t)   (c itself is not clipped by ``clip``;
                                         TFLite's ``cell_clip`` clips it before o reads it)

Example:
    >>> from rnnlens.core.spec import CellWeights
    >>> import numpy as np
    >>> w = CellWeights("lstm", np.zeros((1, 8)), np.zeros((2, 8)), None, None, np.tanh, np.tanh,
    ...                 clip=1.0)
    >>> w.plain
    False
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import rebuild_ops as rb
from .spec import CellWeights

__all__ = ["lstm_cell_fed"]


def lstm_cell_fed(
    w: CellWeights, x: np.ndarray, shift: Any, c0: np.ndarray | None, mask: np.ndarray | None, parity: Any
) -> tuple[tuple[np.ndarray, ...], np.ndarray]:
    """``(i, f, g, o), c`` in the working layout of :mod:`rnnlens.core.rebuild` (the ``_Shift``,
    ``_Parity`` and helpers of :mod:`rnnlens.core.rebuild_ops`), checked against the kernel's ``h``."""
    lay = shift.lay
    u, dtype = w.cell_units, shift.h.dtype
    biases = [b for b in (w.bias, w.recurrent_bias) if b is not None]
    bias = sum(biases[1:], biases[0]) if biases else None
    gates = []
    for k in range(4):  # pre-activations only: the peepholes come first
        g = rb._gate(w, x, lay, k, u, None if bias is None else bias[k * u : (k + 1) * u], dtype)
        shift.add(g, rb._block(w, k, u, dtype))
        gates.append(g)
    i, f, g, o = gates
    p = None if w.peepholes is None else np.asarray(w.peepholes, dtype)
    clip = w.clip
    c = lay.empty(u, dtype)
    prev = np.zeros((lay.n, u), dtype) if c0 is None else c0.astype(dtype)
    at = (lambda a, s: a[s]) if lay.time_major else (lambda a, s: a[:, s])

    def activate(fn: Any, z: np.ndarray) -> None:
        if clip is not None:
            np.clip(z, -clip, clip, out=z)
        rb._act(fn, z)

    for s in range(lay.t - 1, -1, -1) if lay.reverse else range(lay.t):
        i_s, f_s, g_s, o_s, cur = at(i, s), at(f, s), at(g, s), at(o, s), at(c, s)
        if p is not None:
            i_s += p[0] * prev
            f_s += p[1] * prev
        activate(w.recurrent_activation, i_s)
        if w.input_forget:
            np.subtract(1, i_s, out=f_s)
        else:
            activate(w.recurrent_activation, f_s)
        activate(w.activation, g_s)
        np.multiply(f_s, prev, out=cur)
        cur += i_s * g_s
        if w.cell_clip is not None:  # TFLite's cell_clip bounds c itself
            np.clip(cur, -w.cell_clip, w.cell_clip, out=cur)
        if mask is not None:
            off = ~at(mask, s)
            if off.any():
                cur[off] = prev[off]
        if p is not None:
            o_s += p[2] * cur
        activate(w.recurrent_activation, o_s)
        prev = cur

    def rebuilt(rows: slice) -> np.ndarray:
        hc = c[rows].copy()
        rb._act(w.activation, hc)
        hc *= o[rows]
        return hc

    parity.check(rebuilt, "o * act(c) (peepholes, clip)")
    return (i, f, g, o), c
