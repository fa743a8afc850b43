"""The attention map and the lifetimes of a layer whose decays are diagonal, chunk by chunk
(:meth:`Decomposition.maps <rnnlens.Decomposition.maps>`).

An LSTM's ``c`` and a GRU's ``h`` stored as float32 or float64 take the fused kernel of
:mod:`.decompose_fused` when numba is installed (one pass over the stored arrays instead of one
per quantity): one thread reads the chunks in order (:mod:`.read_ahead`) while the caller runs
the kernel, which releases the GIL, on the chunk before. Everything else, and any chunk the
kernel cannot take (a failed check, which is re-run for its message; products out of range,
which take the log route), takes the NumPy route, where each chunk's whole work — reading it,
checking its writes against the stored field at every step, the running products, its rows of
the map and its lifetimes — runs in a read-ahead thread, two chunks at once. Either way each
chunk writes into its rows of the results, which live in :mod:`rnnlens.core.buffers`' reused
memory.

Example:
    >>> import numpy as np, torch, rnnlens
    >>> states = rnnlens.trace(torch.nn.LSTM(2, 3, batch_first=True), torch.randn(2, 5, 2))
    >>> m = rnnlens.decompose(states, "lstm").maps()
    >>> m.attention.shape, m.lifetimes.steps.shape
    ((2, 5, 5), (2, 5, 3))
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from ..core import buffers
from ..errors import InputError
from . import decompose_fused as fused
from .decompose_maps import (
    _TINY,
    STEPS_DTYPE,
    Lifetimes,
    Scratch,
    carry,
    from_squares,
    lifetimes,
    norms,
    products,
)
from .decompose_ssm import field_array
from .decompose_terms import Terms
from .read_ahead import read_ahead

if TYPE_CHECKING:
    from .decompose import Decomposition

__all__ = ["maps", "zeros"]

_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))
_BLOCK_VALUES = 1 << 17  # samples × time × units a kernel call: its 1 MiB float64 factors stay in cache


def maps(dec: Decomposition, rows: range, cols: slice | np.ndarray, ord: float | None,
         fraction: float | None, ahead: int) -> tuple[np.ndarray | None, Lifetimes | None]:  # fmt: skip
    """The map (``ord`` not None; over units ``cols``) and the lifetimes (``fraction`` not None)
    of samples ``rows``, processing order for the map; ``ahead`` chunks worked on in threads."""
    n, t, u = len(rows), dec.n_steps, int(np.prod(dec.state_shape, dtype=int))
    # every route writes all of the lifetimes and of the L2 map (zeros above the diagonal); the
    # map of another norm only on and below it
    att = None if ord is None else (buffers.empty if ord == 2 else zeros)((n, t, t), dec.map_dtype)
    steps = buffers.empty((n, t, u), STEPS_DTYPE) if fraction is not None else None
    alive = buffers.empty((n, t, u), bool) if fraction is not None else None
    takes = ord in (2, None) and dec.kind in ("lstm", "convlstm", "gru") and n * t * u >= fused.MIN_VALUES
    kernel = fused.kernel() if takes else None

    def results(sl: slice) -> tuple[np.ndarray | None, tuple[np.ndarray, np.ndarray] | None]:
        at = slice(sl.start - rows.start, sl.stop - rows.start)
        life = None if steps is None or alive is None else (steps[at], alive[at])
        return (None if att is None else att[at]), life

    chunks = list(dec._chunks(rows))
    if kernel is None:  # each chunk's whole job in the threads
        for _ in read_ahead(chunks, lambda sl: _numpy(dec, sl, cols, ord, fraction, *results(sl)), ahead):
            pass
    else:
        # One thread reads the chunks in order while this one runs the kernel (which releases
        # the GIL): two reads of one store at once each took twice as long, so two whole jobs
        # in threads overlapped reading with reading, not with computing.
        for sl, raw in read_ahead(chunks, lambda sl: _raw(dec, sl), ahead, workers=1):
            if raw is None or not _fused(dec, kernel, sl, raw, cols, fraction, *results(sl)):
                _numpy(dec, sl, cols, ord, fraction, *results(sl))
    return att, dec._lifetimes(fraction, steps, alive)


def zeros(shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    """A zeroed result array in :mod:`rnnlens.core.buffers`' memory: pages a dropped earlier
    result touched, else ordinary pages. ``np.zeros`` of a large array asks for huge pages, and
    where the kernel compacts memory for them (``defrag=madvise``) first touching the maps'
    ~260 MB of results took 0.5 s on the benchmark's VM, against 0.15 s on ordinary pages."""
    a = buffers.empty(shape, dtype)
    a.fill(0)
    return a


def _refuse_growth(dec: Decomposition) -> None:
    raise InputError(
        f"Layer {dec.layer!r} has decays above 1 in magnitude (a custom gate activation?): a "
        "write's weight can grow again, so its lifetime is not defined."
    )


def _numpy(dec: Decomposition, sl: slice, cols: slice | np.ndarray, ord: float | None,
           fraction: float | None, att: np.ndarray | None,
           life: tuple[np.ndarray, np.ndarray] | None) -> None:  # fmt: skip
    """One chunk on the NumPy route: checked (:meth:`Decomposition._checked`), then the running
    products of the decays (the map's) and of the real decays (the lifetimes'; the same but for
    stabilised states) where they stay in range, the log route otherwise."""
    terms = dec._checked(sl)[0]
    bounded = None
    if fraction is not None:
        lf = terms.life
        bounded = bool(lf.size == 0 or max(lf.max(), -lf.min()) <= 1.0)
        if not bounded:
            _refuse_growth(dec)
    same = terms.life is terms.d
    q = products(terms.d, bounded if same else None) if ord == 2 or (same and fraction is not None) else None
    scratch = dec._scratch()
    if att is not None:
        _attention(terms, q, ord, cols, att, scratch)
    if life is not None and fraction is not None:
        q_life = q if same else products(terms.life, bounded)
        lifetimes(terms.life, terms.valid, fraction, q_life, out=life, scratch=scratch)


def _attention(terms: Terms, q: np.ndarray | None, ord: float | None, cols: slice | np.ndarray,
               out: np.ndarray, scratch: Scratch) -> None:  # fmt: skip
    """One chunk's map into ``out`` (n, T, T), processing order."""
    if ord == 2:  # batched matrix products (decompose_maps.norms)
        qc = None if q is None else q[..., cols]
        norms(terms.d[..., cols], terms.w[..., cols], qc, out=out, scratch=scratch)
        return

    def visit(p: int, live: np.ndarray) -> None:
        out[:, p, : p + 1] = np.linalg.norm(live[..., cols], ord=ord, axis=-1)

    carry(terms.d, terms.w, visit)


def _raw(dec: Decomposition, sl: slice) -> tuple[Any, ...] | None:
    """A chunk's stored field and gates as stored (no float64 copies), processing order, units
    flattened: ``(x, d, i, b, code, valid)`` (:func:`.decompose_fused.factors`), or None where
    the kernel does not take the dtype."""
    ds = dec._ds
    x = np.asarray(field_array(ds, dec.kind, dec.field)[sl])
    names = ("z", "n") if dec.kind == "gru" else ("f", "i", "g")
    gates = dict(zip(names, ds.gates.read(names, sl), strict=True))
    d, b, code = fused.factors(dec.kind, gates)
    i = gates.get("i", b)
    if any(a.dtype not in _FLOATS for a in (x, d, i, b)):
        return None
    n, t = x.shape[:2]
    mask = dec._mask
    valid = np.ones((n, t), bool) if mask is None else np.asarray(mask[sl], dtype=bool)
    x, d, i, b = (a.reshape(n, t, -1) for a in (x, d, i, b))
    if dec.backward:
        x, d, i, b, valid = x[:, ::-1], d[:, ::-1], i[:, ::-1], b[:, ::-1], valid[:, ::-1]
    return x, d, i, b, code, valid


def _fused(dec: Decomposition, kernel: Callable[..., Any], sl: slice, raw: tuple[Any, ...],
           cols: slice | np.ndarray,
           fraction: float | None, att: np.ndarray | None,
           life: tuple[np.ndarray, np.ndarray] | None) -> bool:  # fmt: skip
    """Chunk ``sl`` (read: :func:`_raw`) through the kernel; False where the NumPy route must
    take it instead."""
    x, d, i, b, code, valid = raw
    n, _, u = x.shape
    first = valid[:, 0, None]
    w0 = np.where(first, fused.write0(code, d[:, 0], i[:, 0], b[:, 0]), 0.0)
    if dec._initial is not None:  # the first step's decay applied to the given state
        init = dec._initial[sl].reshape(n, u) * np.where(first, d[:, 0], 1.0)
    else:
        init = np.asarray(x[:, 0], np.float64) - w0
    t = x.shape[1]
    init = np.ascontiguousarray(init)
    sub = max(1, _BLOCK_VALUES // max(1, t * u))  # samples a block: its factors stay in cache
    scratch, n_t_u = dec._scratch(), (min(n, sub), t, u) if att is not None else (0, 0, 0)
    e, f = scratch("e", n_t_u), scratch("f", n_t_u)
    steps, alive = life or (np.zeros((0, 0, 0), STEPS_DTYPE), np.zeros((0, 0, 0), bool))
    masked = not valid.all()
    for lo in range(0, n, sub):
        hi = min(n, lo + sub)
        ef = (e[: hi - lo], f[: hi - lo]) if att is not None else (e, f)
        lf = (steps[lo:hi], alive[lo:hi]) if life is not None else (steps, alive)
        bad, qmin, qmax, dmax = kernel(
            x[lo:hi], d[lo:hi], i[lo:hi], b[lo:hi], code, valid[lo:hi], masked, init[lo:hi],
            dec.rtol, dec.atol, float(fraction or 1.0), att is not None, life is not None, *ef, *lf,
        )  # fmt: skip
        # a failed check (the NumPy route checks the chunk again and raises, saying where),
        # decays above 1 for lifetimes (refused there, after the whole chunk's check) or
        # products out of range or NaN (the log route, for the whole chunk as there)
        if bad or (life is not None and dmax > 1.0):
            return False
        if not (qmin >= _TINY and (dmax <= 1.0 or qmax <= 1 / _TINY)):
            return False
        if att is not None:  # the same batched matrix product as the NumPy route's
            from_squares(ef[0][..., cols], ef[1][..., cols], att[lo:hi], fused.finish, scratch)
    return True
