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

Example:
    >>> import numpy as np
    >>> from rnnlens.analysis.decompose_maps import norms
    >>> d, w = np.full((1, 3, 1), 0.5), np.ones((1, 3, 1))
    >>> norms(d, w)[0]
    array([[1.  , 0.  , 0.  ],
           [0.5 , 1.  , 0.  ],
           [0.25, 0.5 , 1.  ]])
"""

from __future__ import annotations

import numpy as np

__all__ = ["lifetimes", "norms"]

_BLOCK = 16
_LIMIT = 600.0  # |exponent| beyond which exp leaves float64's comfortable range
_LOG0 = -1e4  # log|0|: a write carried through an exact zero is gone


def _log_decay(d: np.ndarray) -> np.ndarray:
    out = np.abs(d)
    with np.errstate(divide="ignore"):
        np.log(out, out=out)
    np.maximum(out, _LOG0, out=out)
    for k in range(1, out.shape[1]):  # a running sum over time: ~2× np.cumsum on a middle axis
        np.add(out[:, k], out[:, k - 1], out=out[:, k])
    return out


def norms(d: np.ndarray, w: np.ndarray) -> np.ndarray:
    """``out[n, t, s]`` = the L2 norm over units of step s's write carried to step t (0 for s > t);
    ``d``, ``w`` (n, T, U), processing order, float64."""
    n, t, _ = d.shape
    big = _log_decay(d)
    sq = w * w
    out = np.zeros((n, t, t))
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


def _carried(d: np.ndarray, w: np.ndarray, a: int, b: int, out: np.ndarray) -> None:
    """The block of sources a..b-1, carried step by step (the exact fallback)."""
    v = np.array(w[:, a:b])  # (n, B, U)
    for p in range(a, d.shape[1]):
        k = min(p + 1, b) - a
        if p > a:
            v[:, : min(k, p - a)] *= d[:, p, None]
        out[:, p, a : a + k] = np.sqrt(np.einsum("nsu,nsu->ns", v[:, :k], v[:, :k]))


def lifetimes(d: np.ndarray, valid: np.ndarray, fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """For each write (n, T, U): the later valid steps it keeps ``|Π d| ≥ fraction``, and whether
    it still did at the end (censored); NaN where the step is not valid. Needs ``|d| ≤ 1``."""
    n, t, u = d.shape
    big = _log_decay(d)
    target = big + np.log(fraction)  # write s is alive at r while big[r] ≥ target[s]
    alive = np.broadcast_to(valid[:, :, None], (n, t, u)).copy()
    steps = np.zeros((n, t, u))
    for k in range(1, t):  # k steps later; stops when no write is alive (most die young)
        live = alive[:, : t - k]
        live &= big[:, k:] >= target[:, : t - k]
        steps[:, : t - k] += live & valid[:, k:, None]
        if not live.any():
            break
    censored = _censored(big, target, valid)
    steps[~valid] = np.nan
    return steps, censored


def _censored(big: np.ndarray, target: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Alive at the last step (the prefix of alive steps reaches the end: ``L`` does not increase)."""
    return (big[:, -1:] >= target) & valid[:, :, None]
