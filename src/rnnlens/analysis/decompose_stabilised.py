"""The decay and the write of each step of a recurrence kept with a running-maximum stabiliser
(xLSTM's mLSTM, RWKV-4's WKV), from the stored gates, the stored stabiliser and the recurrence
constants its trace keeps (:attr:`LayerSpec.constants`).

Both states are stored *stabilised*: what the mixer carries is the real state divided by
``exp(m_t)`` (``m_t`` the stabiliser after step t). Given the stored ``m``, the stabilised state
is linear in its previous value, ``x_t = d_t ⊙ x_{t-1} + w_t``, with the rescaling folded into
``d_t`` and ``w_t``; computed with the mixer's own float32 operations, in its order, then
widened to float64:

- ``mlstm`` (state ``C`` (head, d_qk, d_v), gates ``i``, ``f`` (pre-activations, per head),
  ``k`` (head, d_qk), ``v`` (head, d_v); stabiliser: the stored part ``m``):
  ``d_t = exp(log σ(f_t) + m_{t-1} − m_t)`` per head, ``w_t = exp(i_t − m_t) (k_t ⊗ v_t)``
  (``k`` unscaled: the 1/√d_qk scaling is the query's). Its normaliser, field ``n`` (head, d_qk),
  has the same decays and the writes ``exp(i_t − m_t) k_t``;
- ``rwkv4`` (state (part, unit), parts ``num, den, max``; gates ``k``, ``v``; constant
  ``decay = −exp(time_decay)``): the decomposed field is the ``num`` and ``den`` parts,
  (sample, time, 2, unit): ``d_t = exp(max_{t-1} + decay − max_t)`` for both,
  ``w_t = exp(k_t − max_t) · (v_t, 1)``. ``max`` is a running maximum, not a sum of writes: it is
  the stabiliser the decays and writes are read with, not part of the decomposition.

Because ``m_t ≥ log σ(f_t) + m_{t-1}`` (``max_t ≥ max_{t-1} + decay``), every stabilised decay
is at most 1. Its product over a write's path, though, is the real decay times
``exp(m_s − m_t)``, a rescaling shared by every term of the state at step t (it cancels in the
mixer's output). :meth:`Decomposition.lifetime <rnnlens.Decomposition.lifetime>` therefore
reads the real decays, the *unstabilised* ``σ(f_t)`` (mLSTM) and ``exp(decay)`` (RWKV-4), both
≤ 1 (:data:`LIFE`): a write's lifetime is how long the memory keeps it, not how long it stays
large next to newer writes.

The stabiliser before the first step is not stored (a trace may continue a cache): the first
step's decay is the kernel's start (``m_{-1} = 0``; ``max_{-1} = −1e38``, so ``d_0 = 0``), and
``decompose(..., initial=)`` is refused for these kinds; the initial term is read exactly from
the first stored step (``x_0 − w_0``). The mixers do not mask padded steps: they are decomposed
as computed.

Example:
    >>> import numpy as np
    >>> from rnnlens.analysis.decompose_stabilised import rwkv4_terms
    >>> k, v = np.zeros((1, 2, 1), np.float32), np.full((1, 2, 1), 3.0, np.float32)
    >>> mx = np.zeros((1, 2, 1), np.float32)
    >>> d, w = rwkv4_terms({"k": k, "v": v, "max": mx}, {"decay": np.zeros(1, np.float32)})
    >>> d[0, :, 0].tolist(), w[0, 1].tolist()
    ([0.0, 1.0], [3.0, 1.0])
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = ["LIFE", "mlstm_n_terms", "mlstm_terms", "rwkv4_terms"]

_RWKV_START = np.float32(-1e38)  # the WKV kernel's max before its first step


def _log_sigmoid(x: np.ndarray) -> np.ndarray:
    """``log σ(x)`` in float32 without overflow (PyTorch's ``logsigmoid`` form)."""
    return np.minimum(x, np.float32(0)) - np.log1p(np.exp(-np.abs(x)))


def _previous(a: np.ndarray, start: np.float32) -> np.ndarray:
    """``a`` shifted one step later along time (axis 1), ``start`` before the first step."""
    out = np.empty_like(a)
    out[:, 0] = start
    out[:, 1:] = a[:, :-1]
    return out


def _mlstm_scales(g: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """The stabilised forget and input factors ``(f', i')``, (n, T, head), float32."""
    f, i, m = g["f"], g["i"], g["m"][..., 0]
    f_act = np.exp(_log_sigmoid(f) + _previous(m, np.float32(0)) - m)
    return f_act, np.exp(i - m)


def mlstm_terms(g: Mapping[str, np.ndarray], c: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """``(d, w)`` of the matrix memory ``C``, (n, T, head × d_qk × d_v), float64."""
    f_act, i_act = _mlstm_scales(g)
    k, v = g["k"], g["v"]  # (n, T, H, Dk), (n, T, H, Dv)
    w = i_act[..., None, None] * (k[..., :, None] * v[..., None, :])
    d = np.broadcast_to(f_act[..., None, None], w.shape)
    n, t = f_act.shape[:2]
    return d.reshape(n, t, -1).astype(np.float64), w.reshape(n, t, -1).astype(np.float64)


def mlstm_n_terms(g: Mapping[str, np.ndarray], c: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """``(d, w)`` of the normaliser ``n``, (n, T, head × d_qk), float64."""
    f_act, i_act = _mlstm_scales(g)
    w = i_act[..., None] * g["k"]
    d = np.broadcast_to(f_act[..., None], w.shape)
    n, t = f_act.shape[:2]
    return d.reshape(n, t, -1).astype(np.float64), w.reshape(n, t, -1).astype(np.float64)


def rwkv4_terms(g: Mapping[str, np.ndarray], c: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """``(d, w)`` of the ``num`` and ``den`` parts, (n, T, 2 × unit), float64."""
    k, v, mx, decay = g["k"], g["v"], g["max"], c["decay"]
    e1 = np.exp(_previous(mx, _RWKV_START) + decay - mx)
    e2 = np.exp(k - mx)
    w = np.stack([e2 * v, e2], axis=2)
    d = np.broadcast_to(e1[:, :, None], w.shape)
    n, t = k.shape[:2]
    return d.reshape(n, t, -1).astype(np.float64), w.reshape(n, t, -1).astype(np.float64)


def _mlstm_life(g: Mapping[str, np.ndarray], c: Mapping[str, np.ndarray], size: int) -> np.ndarray:
    forget = np.exp(_log_sigmoid(g["f"].astype(np.float64)))  # (n, T, H)
    n, t, h = forget.shape
    return np.broadcast_to(forget[..., None], (n, t, h, size // h)).reshape(n, t, size)


def _rwkv4_life(g: Mapping[str, np.ndarray], c: Mapping[str, np.ndarray], size: int) -> np.ndarray:
    n, t = g["k"].shape[:2]
    per_unit = np.exp(np.asarray(c["decay"], np.float64))
    return np.broadcast_to(np.tile(per_unit, size // per_unit.size), (n, t, size))


#: kind -> the real (unstabilised) decays, (n, T, size), that lifetimes are read from
LIFE: dict[str, Any] = {"mlstm": _mlstm_life, "rwkv4": _rwkv4_life}
