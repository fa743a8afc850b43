"""The working pieces of the rebuild (:mod:`rnnlens.core.rebuild`, :mod:`rnnlens.core.rebuild_cell`):
the working layout, the shared GEMMs with the shifted ``h_{t-1}``, in-place activations, NumPy's
elementwise kernels and the blockwise parity check against the kernel's ``h``.

Example:
    >>> from rnnlens.core.rebuild_ops import absmax_of
    >>> absmax_of(-3.0, 2.0)
    3.0
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ..errors import ParityError
from .buffers import empty
from .cells import check_parity, tolerance
from .spec import Activation, CellWeights, Elementwise, MatMul

__all__ = ["absmax_of"]


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
    """:class:`~rnnlens.core.spec.Elementwise` in NumPy (one core); one per rebuild, for its scratch."""

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
    (Python's ``max`` would drop it): every :class:`~rnnlens.core.spec.Elementwise` ``absmax``."""
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
