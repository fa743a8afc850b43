"""One pass over a chunk of an LSTM's ``c`` or a GRU's ``h`` for :meth:`Decomposition.maps
<rnnlens.Decomposition.maps>`, compiled with numba when it is installed (``rnnlens[fast]``).

The NumPy route makes a pass over the chunk's arrays for each quantity (the decays and writes
widened to float64, the check at each step, the running products, their squares, the lifetimes),
each over ``samples × time × units`` values. This kernel reads the stored float32 (or float64)
field and gates once and, for each sample and unit, walks the steps in processing order doing
the same float64 arithmetic in the same order:

- the check: ``total = d_p · total + w_p`` and ``scale = |d_p| · scale + |w_p|`` from the
  initial term, ``|total − x_p| ≤ rtol · scale + atol`` at every step (the same operations as
  :meth:`Decomposition._checked`, so the same verdict; a failure is re-run there for its message);
- the running products ``q_p = q_{p-1} · d_p`` (``q_0 = 1``) and the map's factors ``q_p²`` and
  ``(w_p / q_p)²`` (:func:`.decompose_maps.products`, ``_norms_products``: the map is then the
  same batched matrix product);
- the lifetimes from ``|q|`` (``_lifetimes_products``: write s is alive at s + k while
  ``|q_{s+k}| ≥ fraction · |q_s|``, a prefix because ``|q|`` does not increase).

It returns the smallest and largest ``|q|`` and the largest ``|d|`` so that the caller takes the
log route (or refuses the lifetimes) exactly where the NumPy route does. Every value it writes is
bit-for-bit the NumPy route's (no fast-math: the compiler may not reorder or fuse the float64
operations); ``tests/probes/test_decompose_fused.py`` checks both routes agree.

Without numba, :func:`kernel` returns None and the NumPy route runs. The first call compiles the
kernel for its array types (a few seconds, cached on disk: ``cache=True``).

Example:
    >>> import numpy as np
    >>> from rnnlens.analysis.decompose_fused import factors
    >>> f = np.full((1, 3, 1), 0.5, np.float32)
    >>> a, b, code = factors("lstm", {"f": f, "i": f, "g": f})
    >>> code, a is f
    (0, True)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

__all__ = ["GRU", "LSTM", "MIN_VALUES", "factors", "finish", "kernel", "write0"]

#: samples × time × units below which the NumPy route runs: there it takes milliseconds, while
#: the kernel's first call in a process loads it from numba's cache (~1 s) or compiles it (~5 s)
MIN_VALUES = 1 << 22
LSTM, GRU = 0, 1  # how the write is formed: i ⊙ g (from a = f's partners); (1 − z) ⊙ n


def factors(kind: str, gates: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, int]:
    """The decay's array and the write's two factors' code for ``kind`` (lstm, convlstm, gru):
    ``(d, b, code)``; the write is ``i ⊙ g`` (code LSTM: ``b`` is ``g`` and ``i`` is passed as
    ``gates["i"]``) or ``(1 − z) ⊙ n`` (GRU: ``d`` is ``z``, ``b`` is ``n``)."""
    if kind == "gru":
        return gates["z"], gates["n"], GRU
    return gates["f"], gates["g"], LSTM


def write0(code: int, d: np.ndarray, i: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The write of the first processing step, (n, U) float64, as :func:`.read_terms` forms it."""
    if code == GRU:
        return (1.0 - np.asarray(d, np.float64)) * b
    return np.multiply(i, b, dtype=np.float64)


_FEW = 4  # units still alive below which the lifetimes' scan follows each alone


def _compile() -> tuple[Callable[..., Any], Callable[..., Any]] | None:
    try:
        import numba
    except ImportError:
        return None

    @numba.njit(cache=True, nogil=True, fastmath=False, error_model="numpy")
    def run(x, d, i, b, code, valid, masked, init, rtol, atol, fraction, want_map, want_life,
            e, f, steps, alive):  # fmt: skip  # pragma: no cover - compiled
        n, t, u = x.shape
        total, scale, q = np.empty(u), np.empty(u), np.empty(u)
        dd, ww, xx, thr, count = np.empty(u), np.empty(u), np.empty(u), np.empty(u), np.empty(u)
        bad, dmax, qmin, qmax = np.zeros(u), np.zeros(u), np.full(u, np.inf), np.zeros(u)
        mag = np.empty((t, u))
        for s in range(n):
            for k in range(u):
                total[k] = init[s, k]
                scale[k] = abs(init[s, k])
                q[k] = 1.0
            for p in range(t):  # the check, the running products and the map's factors
                for k in range(u):  # the stored row into contiguous float64 (then SIMD below)
                    xx[k] = x[s, p, k]
                if masked and not valid[s, p]:
                    dd[:] = 1.0
                    ww[:] = 0.0
                elif code == 1:
                    for k in range(u):
                        z = np.float64(d[s, p, k])
                        dd[k] = z
                        ww[k] = (1.0 - z) * np.float64(b[s, p, k])
                else:
                    for k in range(u):
                        dd[k] = d[s, p, k]
                        ww[k] = np.float64(i[s, p, k]) * np.float64(b[s, p, k])
                first = p == 0  # step 0's decay is in the initial term already
                for k in range(u):
                    a = abs(dd[k])
                    dmax[k] = max(dmax[k], a)
                    m = 1.0 if first else dd[k]
                    tk = total[k] * m + ww[k]
                    sk = scale[k] * abs(m) + abs(ww[k])
                    qk = q[k] * m
                    total[k], scale[k], q[k] = tk, sk, qk
                    bad[k] += np.float64(not abs(tk - xx[k]) <= rtol * sk + atol)  # NaN fails
                    aq = abs(qk)
                    qmin[k] = min(qmin[k], aq)
                    qmax[k] = max(qmax[k], aq)
                    mag[p, k] = aq
                    if want_map:
                        e[s, p, k] = qk * qk
                        r = ww[k] / qk
                        f[s, p, k] = r * r
            if want_life:  # alive while |q_r| ≥ fraction |q_p|: a prefix (|q| does not increase)
                for p in range(t):
                    if masked and not valid[s, p]:
                        steps[s, p, :] = np.nan
                        alive[s, p, :] = False
                        continue
                    for k in range(u):
                        thr[k] = mag[p, k] * fraction
                        count[k] = 0.0
                    for r2 in range(p + 1, t):
                        if masked and not valid[s, r2]:
                            continue  # counts no step; |q| is unchanged there
                        live = 0
                        for k in range(u):
                            c2 = mag[r2, k] >= thr[k]
                            count[k] += c2
                            live += c2
                        if live <= _FEW:
                            # A few long-lived units keep a scan over every unit going: follow
                            # each alone (alive at r2 and, |q| never growing, a prefix after)
                            for k in range(u):
                                if live and mag[r2, k] >= thr[k]:
                                    for r3 in range(r2 + 1, t):
                                        if not mag[r3, k] >= thr[k]:
                                            break
                                        count[k] += not masked or valid[s, r3]
                            break
                    for k in range(u):
                        steps[s, p, k] = count[k]
                        alive[s, p, k] = mag[t - 1, k] >= thr[k]
        return bad.sum(), qmin.min(), qmax.max(), dmax.max()

    @numba.njit(cache=True, nogil=True, fastmath=False, error_model="numpy")
    def finish(src, out):  # type: ignore[no-untyped-def]  # pragma: no cover - compiled
        n, t, _ = out.shape
        for s in range(n):
            for tt in range(t):
                for s2 in range(tt + 1):
                    out[s, tt, s2] = np.sqrt(src[s, tt, s2])
                for s2 in range(tt + 1, t):
                    out[s, tt, s2] = 0.0

    return run, finish


_KERNEL: list[tuple[Callable[..., Any], Callable[..., Any]] | None] = []


def _kernels() -> tuple[Callable[..., Any], Callable[..., Any]] | None:
    if not _KERNEL:
        _KERNEL.append(_compile())
    return _KERNEL[0]


def kernel() -> Callable[..., Any] | None:
    """The compiled kernel, or None without numba (then the NumPy route runs); numba is imported
    on the first call, not with rnnlens."""
    k = _kernels()
    return None if k is None else k[0]


def finish(src: np.ndarray, out: np.ndarray) -> None:
    """``out`` (n, T, T) ← the square root of ``src`` on and below the diagonal, 0 above
    (``src`` may be ``out``; a float32 ``out`` takes each float64 root rounded once): the last
    step of :func:`.decompose_maps.from_squares`, in one pass (compiled: call after
    :func:`kernel` returned one)."""
    k = _kernels()
    assert k is not None
    k[1](src, out)
