"""The whole-sequence maps of a decomposition, for one chunk of samples, without carrying every
write step by step (that costs time² × units small operations a chunk).

With ``L_t = Σ_{r≤t} log|d_r|`` (processing order), the weight step s's write still has at step t
is ``|Π_{r=s+1..t} d_r| = exp(L_t − L_s)``:

- **norms** (the attention map): ``‖contribution(s→t)‖² = Σ_u exp(2(L_t − L_a)) · exp(2(L_a − L_s)) w_s²``
  — for the steps s of a block starting at a, one batched matrix product over units. Every term is
  positive (no cancellation), so the result keeps float64's relative precision; where a block's
  factors would leave float64's range (a decay of ~e^-300 within one block, an exact 0) the block
  falls back to carrying the writes step by step.
- **lifetimes**: ``L`` does not increase when ``|d| ≤ 1`` (sigmoid gates), so the steps a write keeps
  ``≥ fraction`` of its weight are a prefix of those after it: one comparison of ``L`` shifted by
  k steps for k = 1, 2, … until no write is alive (most die within a few steps).

**The products route** (both maps, when it applies): with the running products
``q_t = Π_{r=1..t} d_r`` (:func:`products`; ``q_0 = 1``) the weight is ``q_t / q_s``, so the map is
*one* batched matrix product per sample, ``Σ_u q_t² · (w_s² / q_s²)``, and a write is alive at t
while ``|q_t| ≥ fraction · |q_s|`` — no logarithm or exponential. It needs every ``|q|`` within
``[1e-60, 1e60]`` (:func:`products` returns None otherwise: an exact zero, a decay of ~e-300, a long
sequence whose weights fade below 1e-60), and then the log route above is used.

Example:
    >>> import numpy as np
    >>> from rnnlens.analysis.decompose_maps import norms
    >>> d, w = np.full((1, 3, 1), 0.5), np.ones((1, 3, 1))
    >>> norms(d, w)[0]
    array([[1.  , 0.  , 0.  ],
           [0.5 , 1.  , 0.  ],
           [0.25, 0.5 , 1.  ]])
    >>> from rnnlens.analysis.decompose_maps import products
    >>> bool(np.allclose(norms(d, w, products(d)), norms(d, w)))  # the products route
    True
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

__all__ = [
    "DecompositionMaps", "Lifetimes", "Scratch", "carry", "from_squares", "lifetimes", "norms", "products",
]  # fmt: skip


@dataclass
class Lifetimes:
    """How long each write keeps a fraction of its weight.

    ``steps`` (sample, time, *state_shape), float32: for the write of step s, the number of later valid
    steps during which ``|Π d_r|`` (its carried weight) stays ≥ ``fraction``; NaN where the
    step is masked (it wrote nothing). ``censored``: the write still held that fraction when the
    sequence ended (its lifetime is at least ``steps``).
    """

    fraction: float
    steps: np.ndarray
    censored: np.ndarray

    def per_unit(self) -> np.ndarray:
        """The median lifetime of each unit over every sample and step, (*state_shape,)."""
        flat = self.steps.reshape(-1, *self.steps.shape[2:])
        return np.asarray(np.nanmedian(flat, axis=0))


@dataclass
class DecompositionMaps:
    """:meth:`Decomposition.maps`: the attention map (sample, time, time) and the lifetimes of
    every write, from one read and one check of each chunk."""

    attention: np.ndarray
    lifetimes: Lifetimes


_BLOCK = 16
#: lifetimes are counts of steps (NaN where masked): float32 holds every count below 2**24 exactly,
#: at half the memory of float64 (writing the results' fresh pages is a sizeable part of maps()).
STEPS_DTYPE = np.float32
_LIMIT = 600.0  # |exponent| beyond which exp leaves float64's comfortable range
_LOG0 = -1e4  # log|0|: a write carried through an exact zero is gone
_TINY = 1e-60  # the products route needs |q| in [_TINY, 1/_TINY]: q², 1/q² and their ratios in range


class Scratch:
    """Working arrays kept from one chunk to the next: a fresh array of a chunk's size costs its
    page faults again each time (a quarter of the maps' CPU time on a 10,000-sequence store)."""

    def __init__(self) -> None:
        self._arrays: dict[str, np.ndarray] = {}

    def __call__(self, name: str, shape: tuple[int, ...], dtype: type = np.float64) -> np.ndarray:
        size = int(np.prod(shape, dtype=np.int64))
        buf = self._arrays.get(name)
        if buf is None or buf.size < size or buf.dtype != dtype:
            buf = self._arrays[name] = np.empty(size, dtype)
        return buf[:size].reshape(shape)


def products(d: np.ndarray, decays_at_most_1: bool | None = None) -> np.ndarray | None:
    """``q[:, t] = Π_{r=1..t} d_r`` (n, T, U), ``q[:, 0] = 1`` — the weight of step s's write at
    step t is ``q_t / q_s`` — or None where some ``|q|`` leaves ``[1e-60, 1e60]`` (then the maps
    take the log route). ``decays_at_most_1``: whether ``|d| ≤ 1`` is known (then ``|q|`` does
    not increase and only the last step's is looked at)."""
    t = d.shape[1]
    q = np.empty_like(d)
    q[:, 0] = 1.0
    with np.errstate(over="ignore"):  # an overflow is looked at below
        for p in range(1, t):  # the decay of step p applied to the running product (diagonal)
            np.multiply(q[:, p - 1], d[:, p], out=q[:, p])
    if decays_at_most_1 is None:
        decays_at_most_1 = bool(d.size == 0 or max(d.max(), -d.min()) <= 1.0)  # no |d| temporary
    last = np.abs(q[:, -1]) if decays_at_most_1 else np.abs(q)
    if last.size and not (last.min() >= _TINY and (decays_at_most_1 or last.max() <= 1 / _TINY)):
        return None  # NaN too
    return q


def _log_decay(d: np.ndarray) -> np.ndarray:
    out = np.abs(d)
    with np.errstate(divide="ignore"):
        np.log(out, out=out)
    np.maximum(out, _LOG0, out=out)
    for k in range(1, out.shape[1]):  # a running sum over time: ~2× np.cumsum on a middle axis
        np.add(out[:, k], out[:, k - 1], out=out[:, k])
    return out


def norms(d: np.ndarray, w: np.ndarray, q: np.ndarray | None = None,
          out: np.ndarray | None = None, scratch: Scratch | None = None) -> np.ndarray:  # fmt: skip
    """``out[n, t, s]`` = the L2 norm over units of step s's write carried to step t (0 for s > t);
    ``d``, ``w`` (n, T, U), processing order, float64; ``q``: :func:`products` of ``d`` (the
    products route) or None (the log route); ``out``: a C-contiguous (n, T, T) float64 array to
    fill (a new one otherwise); ``scratch``: working arrays to reuse."""
    n, t, _ = d.shape
    if out is None:
        out = np.empty((n, t, t))
    if q is not None:
        return _norms_products(w, q, out, scratch or Scratch())
    out[:] = 0.0
    big = _log_decay(d)
    sq = w * w
    for a in range(0, t, _BLOCK):
        b = min(a + _BLOCK, t)
        ref = big[:, a : a + 1]  # (n, 1, U)
        right = 2.0 * (ref - big[:, a:b])  # ≥ 0 when |d| ≤ 1
        left = 2.0 * (big[:, a:] - ref)  # ≤ 0 when |d| ≤ 1
        if right.max(initial=0.0) > _LIMIT or left.max(initial=0.0) > _LIMIT:
            _carried(d, w, a, b, out)
            continue
        g = np.matmul(np.exp(left), np.swapaxes(np.exp(right) * sq[:, a:b], 1, 2))  # (n, T-a, b-a)
        g[:, : b - a][:, np.triu_indices(b - a, 1)[0], np.triu_indices(b - a, 1)[1]] = 0.0
        out[:, a:, a:b] = np.sqrt(g)
    return out


def _norms_products(w: np.ndarray, q: np.ndarray, out: np.ndarray, scratch: Scratch) -> np.ndarray:
    """``sqrt(Σ_u q_t² · w_s² / q_s²)``: one batched matrix product per sample, written into
    ``out`` (the upper triangle, s > t, holds ratios above 1 and is set to 0)."""
    e = np.square(q, out=scratch("e", q.shape))
    f = np.divide(w, q, out=scratch("f", q.shape))
    f *= f
    return from_squares(e, f, out, scratch=scratch)


def from_squares(e: np.ndarray, f: np.ndarray, out: np.ndarray,
                 finish: Callable[[np.ndarray, np.ndarray], None] | None = None,
                 scratch: Scratch | None = None) -> np.ndarray:  # fmt: skip
    """The map of the products route from its factors ``e = q²`` and ``f = (w / q)²`` (n, T, U):
    ``out[n, t, s] = sqrt(Σ_u e[n, t, u] f[n, s, u])`` for s ≤ t, 0 above, summed in float64
    (in ``scratch``'s array where ``out`` is float32, then rounded once); ``finish(src, out)``:
    that last step (the square root below the diagonal, 0 above) in one pass, if given."""
    t = e.shape[1]
    sums = out if out.dtype == np.float64 else (scratch or Scratch())("sums", out.shape)
    ft = np.swapaxes(f, 1, 2)
    # rows a..b-1 need only the columns s < b: in bands of ~12 rows (at most 8), 3/8 of the
    # products are left out at 50 steps (measured 0.074 → 0.053 s per 10,000 samples)
    bands = max(1, min(8, t // 12))
    cuts = [t * j // bands for j in range(bands + 1)]
    with np.errstate(over="ignore", invalid="ignore"):  # only in the discarded upper triangle
        for a, b in itertools.pairwise(cuts):
            np.matmul(e[:, a:b], ft[:, :, :b], out=sums[:, a:b, :b])
        if finish is not None:
            finish(sums, out)
            return out
        np.sqrt(sums, out=out, casting="same_kind")
    np.copyto(out, 0.0, where=_upper(t))  # also the products left out
    return out


def _upper(t: int) -> np.ndarray:
    return np.triu(np.ones((t, t), bool), 1)


def _carried(d: np.ndarray, w: np.ndarray, a: int, b: int, out: np.ndarray) -> None:
    """The block of sources a..b-1, carried step by step (the exact fallback)."""
    v = np.array(w[:, a:b])  # (n, B, U)
    for p in range(a, d.shape[1]):
        k = min(p + 1, b) - a
        if p > a:
            v[:, : min(k, p - a)] *= d[:, p, None]
        out[:, p, a : a + k] = np.sqrt(np.einsum("nsu,nsu->ns", v[:, :k], v[:, :k]))


def lifetimes(d: np.ndarray, valid: np.ndarray, fraction: float, q: np.ndarray | None = None,
              out: tuple[np.ndarray, np.ndarray] | None = None,
              scratch: Scratch | None = None) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """For each write (n, T, U): the later valid steps it keeps ``|Π d| ≥ fraction``, and whether
    it still did at the end (censored); NaN where the step is not valid. Needs ``|d| ≤ 1``.
    ``q``: :func:`products` of ``d`` (the products route) or None (the log route); ``out``: the
    (steps, censored) arrays to fill (new ones otherwise); ``scratch``: working arrays to reuse."""
    if q is not None:
        steps, censored = out or (np.empty(d.shape, STEPS_DTYPE), np.empty(d.shape, bool))
        _lifetimes_products(q, valid, fraction, steps, censored, scratch or Scratch())
        return steps, censored
    n, t, u = d.shape
    big = _log_decay(d)
    target = big + np.log(fraction)  # write s is alive at r while big[r] ≥ target[s]
    alive = np.broadcast_to(valid[:, :, None], (n, t, u)).copy()
    steps = np.zeros((n, t, u), STEPS_DTYPE)
    for k in range(1, t):  # k steps later; stops when no write is alive (most die young)
        live = alive[:, : t - k]
        live &= big[:, k:] >= target[:, : t - k]
        steps[:, : t - k] += live & valid[:, k:, None]
        if not live.any():
            break
    censored = _censored(big, target, valid)
    steps[~valid] = np.nan
    if out is not None:
        out[0][:], out[1][:] = steps, censored
        return out
    return steps, censored


def _censored(big: np.ndarray, target: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Alive at the last step (the prefix of alive steps reaches the end: ``L`` does not increase)."""
    return (big[:, -1:] >= target) & valid[:, :, None]


def _lifetimes_products(q: np.ndarray, valid: np.ndarray, fraction: float, steps: np.ndarray,
                        censored: np.ndarray, scratch: Scratch) -> None:  # fmt: skip
    """Write s is alive k steps later while ``|q_{s+k}| ≥ fraction · |q_s|``. ``|q|`` never
    increases (``|d| ≤ 1``; rounding a product by a factor ≤ 1 keeps it ≤), so the alive steps
    are a prefix and counting the k for which it holds counts that prefix."""
    t = q.shape[1]
    mag = np.abs(q, out=scratch("mag", q.shape))
    threshold = np.multiply(mag, fraction, out=scratch("threshold", q.shape))
    count = scratch("count", q.shape, np.uint16 if t < 1 << 16 else np.int64)
    count[:] = 0
    masked = not valid.all()
    for k in range(1, t):  # most writes die within a few steps
        live = np.greater_equal(mag[:, k:], threshold[:, : t - k])
        if not live.any():
            break
        if masked:
            live &= valid[:, k:, None]
        count[:, : t - k] += live
    np.copyto(steps, count)
    np.greater_equal(mag[:, -1:], threshold, out=censored)
    if masked:
        censored &= valid[:, :, None]
        steps[~valid] = np.nan


def carry(d: np.ndarray, w: np.ndarray, visit: Callable[[int, np.ndarray], None]) -> None:
    """``visit(p, V)`` at each processing step p of one chunk, V (n, p + 1, U) the contributions
    of steps 0..p to the field there, every write carried step by step (diagonal decays ``d``)."""
    n, t, u = w.shape
    v = np.zeros((n, t, u))
    for p in range(t):
        if p:  # the decay of step p applied to every earlier write
            v[:, :p] *= d[:, p, None]
        v[:, p] = w[:, p]
        visit(p, v[:, : p + 1])
