"""Rebuilding ``c`` and the gates of one direction from the kernel's ``h``: the fast path.

The gates at step ``t`` depend only on ``x_t`` and ``h_{t-1}``, both known once the kernel has
run, so each gate's pre-activations over all (sample, time) rows come from two GEMMs straight
into that gate's returned (sample, time, unit) buffer: ``x @ K_g + b_g``, then ``h_{t-1} @ U_g``
added in place, where ``h_{t-1}`` is the kernel's ``h`` read one row earlier (later, for a
backward direction) in the flattened (sample·time) layout — no ``[x, h]`` concatenation and no
layout conversion afterwards. The rows where the shift crosses into another sample are the
first steps; they get ``h0``. Activations then run once over each contiguous gate buffer (a
strided gate block of a wide buffer is ~10× slower in PyTorch's elementwise kernels), the only
step loop left is ``c_t = f_t * c_{t-1} + i_t * g_t`` (LSTM; a GRU has none), and the rebuilt
``h`` is checked against the kernel's a block of samples at a time, so no full-size temporary
is made (for an LSTM, ``h - o * act(c)`` in two passes). That arithmetic runs on the adapter's
elementwise kernels where it gives them (:class:`~rnnlens.core.spec.Elementwise`: PyTorch's use both
cores, NumPy's one). Only when the check fails is the full comparison computed, for the error
message (:func:`rnnlens.core.cells.check_parity`). Everything stays in the kernel's dtype; large buffers
are reused across calls once dropped (:mod:`rnnlens.core.buffers`).

Example::

    >>> import numpy as np
    >>> from rnnlens.core.rebuild import reconstruct_direction
    >>> from rnnlens.core.spec import CellWeights
    >>> sig = lambda a: 1 / (1 + np.exp(-a))
    >>> rng = np.random.default_rng(0)
    >>> w = CellWeights("lstm", rng.normal(size=(2, 8)).astype("f4"),
    ...                 rng.normal(size=(2, 8)).astype("f4"), None, None, np.tanh, sig)
    >>> x = rng.normal(size=(1, 3, 2)).astype("f4")
    >>> h, c = np.zeros((1, 2), "f4"), np.zeros((1, 2), "f4")
    >>> hs = []
    >>> for t in range(3):  # the kernel: a plain LSTM step loop
    ...     z = x[:, t] @ w.kernel + h @ w.recurrent_kernel
    ...     i, f, g, o = sig(z[:, :2]), sig(z[:, 2:4]), np.tanh(z[:, 4:6]), sig(z[:, 6:])
    ...     c = f * c + i * g
    ...     h = o * np.tanh(c)
    ...     hs.append(h)
    >>> out = reconstruct_direction(w, x, np.stack(hs, 1), np.zeros((1, 2), "f4"), None, None,
    ...                             reverse=False, want_c=True, want_gates=True, layer="l0")
    >>> bool(np.allclose(out.c[:, -1], c, atol=1e-6))
    True
"""

from __future__ import annotations

import numpy as np

from .cells import DirectionArrays, carry_forward
from .kinds import KINDS
from .rebuild_cell import lstm_cell_fed
from .rebuild_ops import (
    _act,
    _act_into,
    _block,
    _blocks,
    _gate,
    _Layout,
    _mm,
    _NumPyElementwise,
    _Parity,
    _rows,
    _Shift,
)
from .spec import CellWeights

__all__ = ["reconstruct_direction"]


def reconstruct_direction(
    w: CellWeights,
    x: np.ndarray | None,
    seq: np.ndarray,
    h0: np.ndarray,
    c0: np.ndarray | None,
    mask: np.ndarray | None,
    *,
    reverse: bool,
    want_c: bool,
    want_gates: bool,
    layer: str,
    tol: tuple[float, float] | None = None,
) -> DirectionArrays:
    """States of one direction from the kernel's output sequence.

    ``x`` (sample, time, feature) is the layer's input, ``seq`` (sample, time, unit) the
    kernel's per-step output and ``mask`` (sample, time) the valid steps, all in *input*
    order; ``reverse`` says the direction reads the sequence back to front. Returns the
    carried ``h`` and, when asked, ``c`` and gates (NaN at masked steps), in input order, as
    (sample, time, unit) arrays (views of time-major buffers when the kernel's output is
    time-major). Raises :class:`ParityError` when the rebuilt ``h`` is not the kernel's
    (within ``tol`` = ``(rtol, atol)``, by default the dtype's :func:`~rnnlens.core.cells.tolerance`).
    """
    flip = (lambda a: a[:, ::-1]) if reverse else (lambda a: a)
    mp = None if mask is None else flip(mask)
    h = flip(carry_forward(flip(seq), mp, h0))  # input order
    out = DirectionArrays(h=h)
    kind = KINDS[w.kind]
    if not (kind.reconstructable and (want_c or want_gates)):
        return out
    if x is None:
        raise ValueError(f"layer {layer!r}: c and gates need the layer's input sequence")
    lay = _Layout(h, reverse)
    hw = lay.working(h)
    m = None if mask is None or mask.all() else lay.view(np.asarray(mask, bool))
    shift = _Shift(w, lay, hw, h0.astype(hw.dtype, copy=False))
    xw = lay.working(np.asarray(x).astype(hw.dtype, copy=False))
    parity = _Parity(hw, m, layer, tol, w.elementwise or _NumPyElementwise())
    if kind.has_c:
        if w.plain:
            gates, c = _lstm(w, xw, shift, c0, m, parity)
        else:  # peepholes, clip, coupled gates: a step loop of its own
            gates, c = lstm_cell_fed(w, xw, shift, c0, m, parity)
        if want_c:
            out.c = lay.back(c)
    else:
        gates = _gru(w, xw, shift, parity)
    parity.done(lay.back)
    if want_gates:
        if m is not None:
            for g in gates:
                g[~m] = np.nan
        out.gates = tuple(lay.back(g) for g in gates)
    return out


def _lstm(
    w: CellWeights, x: np.ndarray, shift: _Shift, c0: np.ndarray | None, mask: np.ndarray | None,
    parity: _Parity,
) -> tuple[tuple[np.ndarray, ...], np.ndarray]:  # fmt: skip
    lay = shift.lay
    u, dtype = w.cell_units, shift.h.dtype
    biases = [b for b in (w.bias, w.recurrent_bias) if b is not None]
    bias = sum(biases[1:], biases[0]) if biases else None
    gates = []
    for k in range(4):
        g = _gate(w, x, lay, k, u, None if bias is None else bias[k * u : (k + 1) * u], dtype)
        shift.add(g, _block(w, k, u, dtype))
        _act(w.activation if k == 2 else w.recurrent_activation, g)
        gates.append(g)
    i, f, g, o = gates
    ew = parity.ew
    c = lay.empty(u, dtype)
    ew.mul(c, i, g)  # i * g for every step in one pass; the scan adds f * c_prev
    prev = np.zeros((lay.n, u), dtype) if c0 is None else c0.astype(dtype)
    at = (lambda a, s: a[s]) if lay.time_major else (lambda a, s: a[:, s])
    for s in range(lay.t - 1, -1, -1) if lay.reverse else range(lay.t):
        cur = at(c, s)
        ew.addcmul(cur, at(f, s), prev)
        if mask is not None:
            off = ~at(mask, s)
            if off.any():
                cur[off] = prev[off]
        prev = cur
    projection = None if w.projection is None else w.projection.astype(dtype, copy=False)

    scratch = np.empty((0,), dtype)  # one buffer for every block: no fresh pages per block

    def act_c(rows: slice) -> np.ndarray:
        nonlocal scratch
        part = c[rows]
        if scratch.size < part.size:
            scratch = np.empty(part.size, dtype)
        hc = scratch[: part.size].reshape(part.shape)
        _act_into(w.activation, hc, part)
        return hc

    def rebuilt(rows: slice) -> np.ndarray:
        hc = act_c(rows)
        ew.mul(hc, hc, o[rows])
        if projection is None:
            return hc
        return np.asarray(_mm(w)(_rows(hc), projection)).reshape(*hc.shape[:2], -1)

    def residual(rows: slice) -> np.ndarray:  # h - o * act(c): two passes over the block
        hc = act_c(rows)
        ew.submul(hc, parity.h[rows], hc, o[rows])
        return hc

    parity.check(rebuilt, "o * act(c)", None if projection is not None else residual)
    return (i, f, g, o), c


def _gru(w: CellWeights, x: np.ndarray, shift: _Shift, parity: _Parity) -> tuple[np.ndarray, ...]:
    """z, r (x K + h U), then the candidate n: ``act(x K_n + b_n + r * (h U_n + rb_n))`` when
    ``reset_after``, else ``act(x K_n + b_n + (r * h) U_n + rb_n)``."""
    lay = shift.lay
    u, dtype = w.cell_units, shift.h.dtype
    b = np.zeros(3 * u, dtype) if w.bias is None else w.bias.astype(dtype)
    rb = np.zeros(3 * u, dtype) if w.recurrent_bias is None else w.recurrent_bias.astype(dtype)
    z, r = (_gate(w, x, lay, k, u, b[k * u : (k + 1) * u] + rb[k * u : (k + 1) * u], dtype) for k in range(2))
    for k, g in enumerate((z, r)):
        shift.add(g, _block(w, k, u, dtype))
        _act(w.recurrent_activation, g)
    u_n = _block(w, 2, u, dtype)
    if w.reset_after:
        cand = _gate(w, x, lay, 2, u, b[2 * u :], dtype)
        hn = lay.empty(u, dtype)
        hn[...] = rb[2 * u :]
        shift.add(hn, u_n)
        parity.ew.addcmul(cand, r, hn)
        del hn
    else:
        cand = _gate(w, x, lay, 2, u, b[2 * u :] + rb[2 * u :], dtype)
        for rows in _blocks(cand):
            rh = shift.previous(rows)
            rh *= r[rows]
            part = np.asarray(_mm(w)(_rows(rh), u_n)).reshape(rh.shape)
            cand[rows] += part
    _act(w.activation, cand)

    def rebuilt(rows: slice) -> np.ndarray:  # n + z * (h_prev - n)
        hp = shift.previous(rows)
        hp -= cand[rows]
        hp *= z[rows]
        hp += cand[rows]
        return hp

    parity.check(rebuilt, "z * h_prev + (1 - z) * n")
    return z, r, cand
