"""Rebuilding ``c`` and the gates of one direction from the kernel's ``h``: the fast path.

The gates at step ``t`` depend only on ``x_t`` and ``h_{t-1}``, both known once the kernel has
run, so every step's pre-activations come from **one** GEMM ``[x_t, h_{t-1}] @ [[K], [U]]``
over all (time, sample) rows, written into a time-major buffer that becomes the returned
gates. The scan then walks time once; each step works on one (sample, 4·unit) slot that fits
in cache: activate in place, ``c_t = f_t * c_{t-1} + i_t * g_t`` into its slot, and check the
rebuilt ``h_t`` against the kernel's on the spot (:func:`_Parity`), so no full-size temporary
is made. Only when the check fails is the full comparison computed, for the error message
(:func:`rnnlens.cells.check_parity`). Everything stays in the input's dtype.

Example::

    >>> import numpy as np
    >>> from rnnlens.rebuild import reconstruct_direction
    >>> from rnnlens.spec import CellWeights
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

from .cells import DirectionArrays, carry_forward, check_parity, tolerance
from .errors import ParityError
from .kinds import KINDS
from .spec import Activation, CellWeights, MatMul

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
    (sample, time, unit) views of time-major buffers. Raises :class:`ParityError` when the
    rebuilt ``h`` is not the kernel's (within ``tol`` = ``(rtol, atol)``,
    by default the dtype's :func:`~rnnlens.cells.tolerance`).
    """
    flip = (lambda a: a[:, ::-1]) if reverse else (lambda a: a)
    mp = None if mask is None else flip(mask)
    h = carry_forward(flip(seq), mp, h0)
    out = DirectionArrays(h=flip(h))
    kind = KINDS[w.kind]
    if not (kind.reconstructable and (want_c or want_gates)):
        return out
    if x is None:
        raise ValueError(f"layer {layer!r}: c and gates need the layer's input sequence")
    m_tm = None if mp is None or mp.all() else np.ascontiguousarray(mp.T)
    xh = _inputs(flip(x), h, h0)
    parity = _Parity(h, m_tm, layer, tol)
    if kind.has_c:
        z, c = _lstm(w, xh, c0, m_tm, parity)
        if want_c:
            out.c = flip(c.transpose(1, 0, 2))
    else:
        z = _gru(w, xh, x.shape[2], m_tm, parity)
    parity.done(lambda: _full_rebuild(w, z, c if kind.has_c else None, xh, x.shape[2]))
    if want_gates:
        u = w.cell_units
        if m_tm is not None:
            z[~m_tm] = np.nan
        blocks = (z[:, :, k * u : (k + 1) * u] for k in range(len(kind.gates)))
        out.gates = tuple(flip(g.transpose(1, 0, 2)) for g in blocks)
    return out


def _inputs(xp: np.ndarray, h: np.ndarray, h0: np.ndarray) -> np.ndarray:
    """``[x_t, h_{t-1}, 1]`` for every step, time-major (time, sample, feature + unit + 1), one
    copy; the column of ones carries the bias through the GEMM (no separate pass over the gates)."""
    n, t, f = xp.shape
    u = h.shape[2]
    xh = np.empty((t, n, f + u + 1), dtype=h.dtype)
    xh[:, :, :f] = xp.transpose(1, 0, 2)
    xh[0, :, f : f + u] = h0
    xh[1:, :, f : f + u] = h[:, :-1].transpose(1, 0, 2)
    xh[:, :, -1] = 1
    return xh


def _mm(w: CellWeights) -> MatMul:
    return w.matmul or np.matmul


def _gemm(w: CellWeights, xh: np.ndarray, weight: np.ndarray, bias: np.ndarray | None) -> np.ndarray:
    """``[x, h_prev, 1] @ [[weight], [bias]]`` over all (time, sample) rows: (time, sample, width)."""
    t, n, k = xh.shape
    b = np.zeros(weight.shape[1], xh.dtype) if bias is None else bias
    full = np.concatenate([weight, b[None]]).astype(xh.dtype, copy=False)
    return np.asarray(_mm(w)(xh.reshape(t * n, k), full)).reshape(t, n, -1)


def _act(fn: Activation, a: np.ndarray) -> None:
    """Apply a layer's (elementwise) activation to ``a`` in place.

    An adapter may give its activation an ``inplace(view)`` attribute that writes into the
    view directly (PyTorch's ``out=``); otherwise the result is copied back.
    """
    inplace = getattr(fn, "inplace", None)
    if inplace is not None and a.flags.writeable:
        inplace(a)
    else:
        a[...] = fn(a)


class _Parity:
    """The rebuilt ``h`` against the kernel's, one step at a time (valid steps only)."""

    def __init__(
        self, h: np.ndarray, mask_tm: np.ndarray | None, layer: str, tol: tuple[float, float] | None
    ) -> None:
        self.h, self.mask, self.layer, self.tol = h, mask_tm, layer, tol
        self.rtol, self.atol = tol or tolerance(h.dtype)
        self.worst = 0.0

    def step(self, s: int, rebuilt: np.ndarray) -> None:
        expected = self.h[:, s]
        diff = np.subtract(rebuilt, expected, out=rebuilt)  # rebuilt is a scratch buffer
        np.abs(diff, out=diff)
        if self.mask is not None:
            diff[~self.mask[s]] = 0
        worst = float(diff.max()) if diff.size else 0.0
        if worst > self.atol:  # rare: the elementwise bound atol + rtol * |expected|
            worst = float((diff - self.rtol * np.abs(expected)).max())
        if not worst <= self.worst:  # also catches NaN
            self.worst = worst

    def done(self, rebuild: object) -> None:
        if self.worst <= self.atol:
            return
        assert callable(rebuild)
        got, what = rebuild()
        mp = None if self.mask is None else self.mask.T
        check_parity(self.h, got, mp, layer=self.layer, what=what, tol=self.tol)
        raise ParityError(  # unreachable unless the two checks disagree on rounding
            f"Layer {self.layer!r}: the rebuilt h is off by {self.worst:.3g} from the framework's own h."
        )


def _lstm(
    w: CellWeights, xh: np.ndarray, c0: np.ndarray | None, mask: np.ndarray | None, parity: _Parity
) -> tuple[np.ndarray, np.ndarray]:
    t, n, _ = xh.shape
    u = w.cell_units
    biases = [b for b in (w.bias, w.recurrent_bias) if b is not None]
    bias = sum(biases[1:], biases[0]) if biases else None
    z = _gemm(w, xh, np.concatenate([w.kernel, w.recurrent_kernel]), bias)
    c = np.empty((t, n, u), dtype=xh.dtype)
    prev = np.zeros((n, u), xh.dtype) if c0 is None else c0.astype(xh.dtype)
    ig = np.empty((n, u), dtype=xh.dtype)
    hc = np.empty((n, u), dtype=xh.dtype)
    sig, act = w.recurrent_activation, w.activation
    for s in range(t):
        zs = z[s]
        _act(sig, zs[:, : 2 * u])
        _act(act, zs[:, 2 * u : 3 * u])
        _act(sig, zs[:, 3 * u :])
        cur = c[s]
        np.multiply(zs[:, u : 2 * u], prev, out=cur)
        np.multiply(zs[:, :u], zs[:, 2 * u : 3 * u], out=ig)
        cur += ig
        if mask is not None and not mask[s].all():
            cur[~mask[s]] = prev[~mask[s]]
        np.copyto(hc, cur)
        _act(act, hc)
        rebuilt = np.multiply(hc, zs[:, 3 * u :], out=hc)
        if w.projection is not None:
            rebuilt = _mm(w)(rebuilt, w.projection.astype(rebuilt.dtype, copy=False))
        parity.step(s, rebuilt)
        prev = cur
    return z, c


def _gru(w: CellWeights, xh: np.ndarray, f: int, mask: np.ndarray | None, parity: _Parity) -> np.ndarray:
    """GRU pre-activations in one GEMM: columns z, r, x·K_n (+ h·U_n when reset_after)."""
    t, n, _ = xh.shape
    u = w.cell_units
    k, rk = w.kernel, w.recurrent_kernel
    b = np.zeros(3 * u, xh.dtype) if w.bias is None else w.bias.astype(xh.dtype)
    rb = np.zeros(3 * u, xh.dtype) if w.recurrent_bias is None else w.recurrent_bias.astype(xh.dtype)
    zeros = np.zeros((rk.shape[0], u), rk.dtype)
    if w.reset_after:  # n = act(x K_n + b_n + r * (h U_n + rb_n))
        weight = np.block([[k, np.zeros((k.shape[0], u), k.dtype)], [rk[:, : 2 * u], zeros, rk[:, 2 * u :]]])
        bias = np.concatenate([b[: 2 * u] + rb[: 2 * u], b[2 * u :], rb[2 * u :]])
    else:  # n = act(x K_n + b_n + (r * h) U_n + rb_n)
        weight = np.block([[k], [rk[:, : 2 * u], zeros]])
        bias = np.concatenate([b[: 2 * u] + rb[: 2 * u], b[2 * u :] + rb[2 * u :]])
    z = _gemm(w, xh, weight, bias)
    u_n = rk[:, 2 * u :].astype(xh.dtype, copy=False)
    tmp = np.empty((n, u), dtype=xh.dtype)
    sig, act = w.recurrent_activation, w.activation
    for s in range(t):
        zs = z[s]
        _act(sig, zs[:, : 2 * u])
        gz, r, cand = zs[:, :u], zs[:, u : 2 * u], zs[:, 2 * u : 3 * u]
        h_prev = xh[s, :, f:-1]
        if w.reset_after:
            np.multiply(r, zs[:, 3 * u :], out=tmp)
            cand += tmp
        else:
            np.multiply(r, h_prev, out=tmp)
            cand += _mm(w)(tmp, u_n)
        _act(act, cand)
        parity.step(s, cand + gz * (h_prev - cand))
    return z


def _full_rebuild(
    w: CellWeights, z: np.ndarray, c: np.ndarray | None, xh: np.ndarray, f: int
) -> tuple[np.ndarray, str]:
    """The rebuilt ``h`` of every step (sample-major), only for the error message."""
    u = w.cell_units
    if c is not None:
        h = np.asarray(w.activation(c)) * z[:, :, 3 * u : 4 * u]
        if w.projection is not None:
            h = h @ w.projection
        return h.transpose(1, 0, 2), "o * act(c)"
    gz, cand = z[:, :, :u], z[:, :, 2 * u : 3 * u]
    return (cand + gz * (xh[:, :, f:-1] - cand)).transpose(1, 0, 2), "z * h_prev + (1 - z) * n"
