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
elementwise kernels where it gives them (:class:`~rnnlens.spec.Elementwise`: PyTorch's use both
cores, NumPy's one). Only when the check fails is the full comparison computed, for the error
message (:func:`rnnlens.cells.check_parity`). Everything stays in the kernel's dtype; large buffers
are reused across calls once dropped (:mod:`rnnlens.buffers`).

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

from collections.abc import Callable

import numpy as np

from .buffers import empty
from .cells import DirectionArrays, carry_forward, check_parity, tolerance
from .errors import ParityError
from .kinds import KINDS
from .spec import Activation, CellWeights, Elementwise, MatMul

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
    (within ``tol`` = ``(rtol, atol)``, by default the dtype's :func:`~rnnlens.cells.tolerance`).
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
            from .rebuild_cell import lstm_cell_fed

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


class _Layout:
    """The working layout: time-major (time, sample, ...) when the kernel's ``h`` is laid out so
    in memory (PyTorch's layer outputs), else sample-major; either way (axis 0 · axis 1) rows
    flatten without a copy, and ``h_{t-1}`` is the row ``shift`` places earlier."""

    def __init__(self, h: np.ndarray, reverse: bool):
        n, t = h.shape[:2]
        s = h.strides
        self.time_major = t > 1 and n > 1 and s[0] > 0 and s[1] > 0 and s[1] == n * s[0]
        self.n, self.t, self.reverse = n, t, reverse
        self.shift = n if self.time_major else 1  # rows between a step and the next

    def view(self, a: np.ndarray) -> np.ndarray:
        """(sample, time, ...) in the working layout (a view)."""
        return np.swapaxes(a, 0, 1) if self.time_major else a

    back = view  # the swap is its own inverse

    def working(self, a: np.ndarray) -> np.ndarray:
        """``view(a)`` whose first two axes merge into rows without a copy (copied if not)."""
        v = self.view(a)
        s = v.strides
        if s[0] > 0 and s[1] > 0 and s[0] == v.shape[1] * s[1] and all(st > 0 for st in s[2:]):
            return v
        return np.ascontiguousarray(v)

    def empty(self, width: int, dtype: np.dtype) -> np.ndarray:
        shape = (self.t, self.n, width) if self.time_major else (self.n, self.t, width)
        return empty(shape, dtype)

    def first(self, a: np.ndarray) -> np.ndarray:
        """The first processed step of every sample in working array ``a`` (a view)."""
        step = -1 if self.reverse else 0
        return a[step] if self.time_major else a[:, step]


def _rows(a: np.ndarray) -> np.ndarray:
    """(a, b, k) as (a·b, k): a view where the strides allow, else a copy."""
    return a.reshape(a.shape[0] * a.shape[1], a.shape[2])


def _mm(w: CellWeights) -> MatMul:
    return w.matmul or np.matmul


def _gemm_into(
    w: CellWeights, out: np.ndarray, a: np.ndarray, b: np.ndarray, *, bias: np.ndarray | None = None,
    accumulate: bool = False,
) -> None:  # fmt: skip
    """``out = a @ b (+ bias)``, or ``out += a @ b`` with ``accumulate``; 2-D arrays.

    An adapter's matmul may carry an ``into(out, a, b, bias, accumulate)`` attribute that
    writes into ``out`` directly (PyTorch's ``addmm``); otherwise NumPy's ``out=``."""
    into = getattr(w.matmul, "into", None)
    if into is not None:
        into(out, a, b, bias, accumulate)
        return
    if accumulate:
        out += _mm(w)(a, b)
        return
    if w.matmul is None:
        np.matmul(a, b, out=out)
    else:
        out[...] = w.matmul(a, b)
    if bias is not None:
        out += bias


class _Shift:
    """``h_{t-1} @ U`` added to working-layout buffers: the kernel's ``h`` read ``shift`` rows
    earlier in the flattened layout (later, for a backward direction), ``h0`` at the first steps.
    Sample-major rows shifted by one cross into the previous sample at each first step: those
    rows are put back from their ``x @ K + b`` and ``h0``."""

    def __init__(self, w: CellWeights, lay: _Layout, h: np.ndarray, h0: np.ndarray):
        self.w, self.lay, self.h, self.h0 = w, lay, h, h0
        self.rows = _rows(h)

    def add(self, out: np.ndarray, u: np.ndarray) -> None:
        lay, k = self.lay, self.lay.shift
        first = lay.first(out)
        start = first.copy()  # x @ K + b at the first steps, before the shifted rows land
        flat = _rows(out)
        if flat.shape[0] > k:
            if lay.reverse:
                _gemm_into(self.w, flat[:-k], self.rows[k:], u, accumulate=True)
            else:
                _gemm_into(self.w, flat[k:], self.rows[:-k], u, accumulate=True)
        _gemm_into(self.w, start, self.h0, u, accumulate=True)
        first[...] = start

    def previous(self, rows: slice) -> np.ndarray:
        """``h_{t-1}`` over the working rows ``rows`` (axis 0), in the working layout."""
        lay, h = self.lay, self.h
        step = 1 if lay.reverse else -1
        if lay.time_major:  # blocks of steps
            idx = np.arange(lay.t)[rows] + step
            inside = (idx >= 0) & (idx < lay.t)
            hp = np.empty((idx.size, *h.shape[1:]), h.dtype)
            hp[inside] = h[idx[inside]]
            hp[~inside] = self.h0
            return hp
        block = h[rows]  # blocks of samples
        hp = np.empty(block.shape, h.dtype)
        if lay.reverse:
            hp[:, :-1], hp[:, -1] = block[:, 1:], self.h0[rows]
        else:
            hp[:, 1:], hp[:, 0] = block[:, :-1], self.h0[rows]
        return hp


def _gate(
    w: CellWeights, x: np.ndarray, lay: _Layout, k: int, u: int, bias: np.ndarray | None, dtype: np.dtype
) -> np.ndarray:
    """Gate block ``k``'s ``x @ K_k + bias`` over all rows, in a fresh working-layout buffer."""
    out = lay.empty(u, dtype)
    kernel = np.ascontiguousarray(w.kernel[:, k * u : (k + 1) * u], dtype=dtype)
    _gemm_into(w, _rows(out), _rows(x), kernel, bias=None if bias is None else bias.astype(dtype))
    return out


def _block(w: CellWeights, k: int, u: int, dtype: np.dtype) -> np.ndarray:
    return np.ascontiguousarray(w.recurrent_kernel[:, k * u : (k + 1) * u], dtype=dtype)


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


def _act_into(fn: Activation, out: np.ndarray, a: np.ndarray) -> None:
    """``out = fn(a)``: through the activation's ``into(out, a)`` when an adapter gives one
    (PyTorch's ``out=``), else copied and activated in place."""
    into = getattr(fn, "into", None)
    if into is not None:
        into(out, a)
    else:
        np.copyto(out, a)
        _act(fn, out)


class _NumPyElementwise:
    """:class:`~rnnlens.spec.Elementwise` in NumPy (one core); one per rebuild, for its scratch."""

    def __init__(self) -> None:
        self.scratch = np.empty(0)

    def mul(self, out: np.ndarray, a: np.ndarray, b: np.ndarray) -> None:
        np.multiply(a, b, out=out)

    def addcmul(self, out: np.ndarray, a: np.ndarray, b: np.ndarray) -> None:
        if self.scratch.size < out.size or self.scratch.dtype != out.dtype:
            self.scratch = np.empty(out.size, out.dtype)
        tmp = self.scratch[: out.size].reshape(out.shape)
        out += np.multiply(a, b, out=tmp)

    def sub(self, out: np.ndarray, a: np.ndarray, b: np.ndarray) -> None:
        np.subtract(a, b, out=out)

    def submul(self, out: np.ndarray, c: np.ndarray, a: np.ndarray, b: np.ndarray) -> None:
        np.multiply(a, b, out=out)
        np.subtract(c, out, out=out)

    def absmax(self, a: np.ndarray) -> float:
        return absmax_of(float(a.min()), float(a.max()))


def absmax_of(lo: float, hi: float) -> float:
    """The largest ``|v|`` of values whose min is ``lo`` and max ``hi``, NaN if either is
    (Python's ``max`` would drop it): every :class:`~rnnlens.spec.Elementwise` ``absmax``."""
    return float("nan") if lo != lo or hi != hi else max(hi, -lo)


def _blocks(a: np.ndarray) -> list[slice]:
    """Blocks along axis 0 of about 1M values each: the parity check's temporaries stay small."""
    per = max(1, int(np.prod(a.shape[1:])))
    step = max(1, (1 << 20) // per)
    return [slice(s, min(s + step, a.shape[0])) for s in range(0, a.shape[0], step)]


class _Parity:
    """The rebuilt ``h`` against the kernel's, a block at a time (valid steps only)."""

    def __init__(
        self, h: np.ndarray, mask: np.ndarray | None, layer: str, tol: tuple[float, float] | None,
        ew: Elementwise,
    ):  # fmt: skip
        self.h, self.mask, self.layer, self.tol, self.ew = h, mask, layer, tol, ew
        self.rtol, self.atol = tol or tolerance(h.dtype)
        self.worst = 0.0
        self.rebuild: Callable[[slice], np.ndarray] | None = None
        self.what = ""

    def check(
        self, rebuild: Callable[[slice], np.ndarray], what: str,
        residual: Callable[[slice], np.ndarray] | None = None,
    ) -> None:  # fmt: skip
        """``rebuild(rows)`` gives the rebuilt h of working rows ``rows`` (a scratch buffer);
        ``residual(rows)``, when given, the kernel's h minus it, computed in fewer passes."""
        self.rebuild, self.what = rebuild, what
        for rows in _blocks(self.h):
            expected = self.h[rows]
            if residual is not None:
                diff = residual(rows)
            else:
                diff = rebuild(rows)
                self.ew.sub(diff, expected, diff)
            if not diff.size:
                continue
            if self.mask is not None:
                diff[~self.mask[rows]] = 0
            worst = self.ew.absmax(diff)
            if worst > self.atol:  # rare: the elementwise bound atol + rtol * |expected|
                worst = float((np.abs(diff) - self.rtol * np.abs(expected)).max())
            if not worst <= self.worst:  # also catches NaN
                self.worst = worst

    def done(self, back: Callable[[np.ndarray], np.ndarray]) -> None:
        if self.worst <= self.atol:
            return
        assert self.rebuild is not None
        got = back(self.rebuild(slice(None)))
        mask = None if self.mask is None else back(self.mask)
        check_parity(back(self.h), got, mask, layer=self.layer, what=self.what, tol=self.tol)
        raise ParityError(  # unreachable unless the two checks disagree on rounding
            f"Layer {self.layer!r}: the rebuilt h is off by {self.worst:.3g} from the framework's own h."
        )


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
