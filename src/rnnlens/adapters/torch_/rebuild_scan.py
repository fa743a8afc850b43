"""The cell-state scan of :mod:`.rebuild_fast` (``c_t = f_t * c_{t-1} + i_t * g_t``, in place),
in one compiled call with numba (``rnnlens[fast]``) or two NumPy calls a step.

NumPy's scan costs two ufunc calls a step (~0.3 µs each, more in a trace call's cold caches:
a third of the rebuild of an ``LSTM(32)`` over 20 steps); the kernel walks the same steps in one
call, doing the same float32 (or float64) multiplication then addition in the same order (no
fast-math: no fused multiply-add, no reordering), so ``c`` is bit for bit NumPy's
(``tests/adapters/test_torch_rebuild_scan.py``).

Loading numba and the kernel (from numba's disk cache, ``cache=True``) costs a process about a
second, compiling it the first time a few. So the kernel is loaded only once the NumPy scans have
cost this process :data:`NUMBA_AFTER_S` seconds (a ski-rental rule: whatever the number of calls
still to come, never more than about twice the better of the two choices): a script tracing a
few batches never imports numba, an extraction over many small batches switches early on.
``RNNLENS_NUMBA=1`` loads it at the first scan, ``RNNLENS_NUMBA=0`` never.

Example:
    >>> import numpy as np
    >>> from rnnlens.adapters.torch_.rebuild_scan import scan
    >>> c, f = np.ones((3, 1, 2), np.float32), np.full((3, 1, 2), 0.5, np.float32)
    >>> scan(c, f, None, reverse=False)
    >>> c[:, 0, 0].tolist()
    [1.0, 1.5, 1.75]
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = ["NUMBA_AFTER_S", "kernel", "scan"]

#: seconds of NumPy scans after which the compiled kernel is loaded (about what loading it costs)
NUMBA_AFTER_S = 1.0

_state: dict[str, Any] = {"spent": 0.0}  # "kernel": the compiled scan or None, once decided


def scan(c: np.ndarray, f: np.ndarray, c0: np.ndarray | None, *, reverse: bool) -> None:
    """``c[t] = f[t] * c[t-1] + c[t]`` in place along axis 0 (processing order: backwards where
    ``reverse``), from ``c0`` (None: zeros, the first step is ``c`` itself). ``c`` is (time,
    sample, unit), C-contiguous; ``f`` of its shape, any strides; ``c0`` (sample, unit)."""
    k = kernel()
    if k is not None:
        k(c, f, c0 if c0 is not None else c[0], c0 is not None, reverse)
        return
    start = time.perf_counter()
    cs, fs = list(c), list(f)  # each step's views, made at once (indexing costs ~0.3 µs)
    tmp = np.empty_like(cs[0])
    prev = c0
    mul, add = np.multiply, np.add
    for s in range(len(cs) - 1, -1, -1) if reverse else range(len(cs)):
        cur = cs[s]
        if prev is not None:  # (c0 None: zeros, and the first c is i * g)
            mul(fs[s], prev, tmp)  # (out positional: a tenth less per call than out=)
            add(tmp, cur, cur)
        prev = cur
    _state["spent"] += time.perf_counter() - start


def kernel() -> Callable[..., None] | None:
    """The compiled scan where it is loaded (see the module docstring), else None."""
    if "kernel" in _state:
        return _state["kernel"]  # type: ignore[no-any-return]
    mode = os.environ.get("RNNLENS_NUMBA", "")
    if mode == "0" or (mode != "1" and _state["spent"] < NUMBA_AFTER_S):
        return None
    _state["kernel"] = _compile()
    return _state["kernel"]  # type: ignore[no-any-return]


def _compile() -> Callable[..., None] | None:
    try:
        import numba
    except ImportError:
        return None

    @numba.njit(cache=True, nogil=True, fastmath=False, error_model="numpy")
    def run(c, f, c0, has_c0, reverse):  # type: ignore[no-untyped-def]  # pragma: no cover - compiled
        steps, n, w = c.shape
        for k in range(steps):
            s = steps - 1 - k if reverse else k
            if k == 0:
                if has_c0:
                    for b in range(n):
                        for j in range(w):
                            t = f[s, b, j] * c0[b, j]  # (rounded, then added: NumPy's two calls)
                            c[s, b, j] = t + c[s, b, j]
                continue
            q = s + 1 if reverse else s - 1
            for b in range(n):
                for j in range(w):
                    t = f[s, b, j] * c[q, b, j]
                    c[s, b, j] = t + c[s, b, j]

    return run  # type: ignore[no-any-return]
