"""The delta-rule mixers' state as a sum of per-step writes: a decay that is a matrix per head.

A gated delta-net (kind ``gated_deltanet``) and Kimi delta attention (``kimi_delta``) update
each value head's state ``S`` (d_k, d_v) as the mixer's scan does (:mod:`rnnlens.adapters.hf_.delta`):
first the decay, then the delta rule,

    S_t = A_t S_{t-1} + β_t k_t v_tᵀ,   A_t = (I − β_t k_t k_tᵀ) diag(d_t),   d_t = exp(g_t)

(``d_t`` one number per head for a gated delta-net, one per key channel for Kimi; ``k_t`` the
keys the rule used, L2-normalised if the mixer asks for it, each key head serving consecutive
value heads). So the write of step s is ``w_s = β_s k_s v_sᵀ`` and its contribution to ``S_t``
is ``P(s→t) w_s`` with ``P(s→t) = A_t ⋯ A_{s+1}``, a product of (d_k × d_k) matrices per head;
the initial term is ``P(0→t) A_0 S_{-1}``.

:class:`DeltaTerms` is the :class:`~rnnlens.analysis.decompose_terms.Terms` of such a layer:
``carry(a, p)`` applies ``A_p`` to a block of contributions; ``unrolled(p, init0)`` computes
every contribution to step p at once, right to left (``M ← M A_s``: O(d_k²) a step and head);
``walk(init0)`` goes through the steps carrying only the keys — a write stays rank one,
``P(s→t) w_s = (P(s→t) β_s k_s) v_sᵀ`` — and sums the contributions with one matrix product per
head (the check at every step, the attention map: ``‖P k‖ · ‖v‖`` per head).
Padded steps decay and write as the mixer computes them (as for the state-space kinds).

A write's *lifetime* is per head: the steps during which ``‖P(s→t) w_s‖ ≥ fraction · ‖w_s‖``
(Frobenius norms over the head's d_k × d_v state), the same for every unit of the head — a
matrix decay mixes the units, so one unit's share of a write is not a decaying weight. With
``d ≤ 1`` and ``0 ≤ β ≤ 2`` each ``A_t`` is non-expansive (‖I − β k kᵀ‖₂ = max(1, |1 − β|) for
a unit key), so that norm never grows again.

Example:
    >>> import numpy as np
    >>> from rnnlens.analysis.decompose_delta import DeltaTerms
    >>> k = np.ones((1, 2, 1, 1))  # one head, d_k = d_v = 1: S_t = d (1 − β) S_{t-1} + β v
    >>> terms = DeltaTerms(np.zeros((1, 2, 1)), np.full((1, 2, 1, 1), 0.5), k,
    ...                    np.full((1, 2, 1), 0.5), np.ones((1, 2, 1, 1)), np.ones((1, 2), bool))
    >>> contrib, init = terms.unrolled(1, np.zeros((1, 1)))
    >>> contrib[0, :, 0].tolist()  # step 0's write 0.5 carried by 0.5 × (1 − 0.5)
    [0.125, 0.5]
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from ..errors import FieldNotAvailableError, InputError
from .decompose_terms import Terms

__all__ = ["GATES", "DeltaTerms", "read"]

#: the gates the decays and writes are read from
GATES = ("beta", "g", "k", "v")


class DeltaTerms(Terms):
    """A chunk of a delta-rule layer, processing order: the state ``x`` (n, T, U) with
    U = head × d_k × d_v, the writes ``w`` (n, T, U), the diagonal part of each decay
    ``d`` (n, T, head, d_k), the keys ``k`` (n, T, head, d_k, per value head) and ``beta``
    (n, T, head), the values ``values`` (n, T, head, d_v), float64; ``valid`` (n, T)."""

    matrix = True

    def __init__(self, x: np.ndarray, d: np.ndarray, k: np.ndarray, beta: np.ndarray, v: np.ndarray,
                 valid: np.ndarray) -> None:  # fmt: skip
        n, t, h, dk = k.shape
        self.shape = (h, dk, v.shape[-1])
        self.k, self.beta, self.values = k, beta, v
        w = (beta[..., None] * k)[..., :, None] * v[..., None, :]
        super().__init__(x, d, w.reshape(n, t, -1), valid)

    def _heads(self, a: np.ndarray) -> np.ndarray:
        """``a`` (n, m, U) viewed as (n, m, head, d_k, d_v) (a view: writes reach ``a``)."""
        view = a.view()
        view.shape = (*a.shape[:2], *self.shape)  # raises rather than copies
        return view

    def carry(self, a: np.ndarray, p: int) -> np.ndarray:
        """``A_p a`` for a block of contributions ``a`` (n, m, U), in place: ``a``."""
        s = self._heads(a)
        s *= self.d[:, p, None, :, :, None]
        proj = np.einsum("nmhkv,nhk->nmhv", s, self.k[:, p])  # kᵀ (d ⊙ S)
        s -= (self.beta[:, p, :, None] * self.k[:, p])[:, None, :, :, None] * proj[:, :, :, None, :]
        return a

    def unrolled(self, p: int, init0: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Every step's contribution to the state at step p, (n, p + 1, U), and the initial
        term's (n, U) (``init0`` = ``A_0 S_{-1}``): ``P(s→p) w_s`` with ``M = P(s→p)`` built
        right to left, ``M ← M A_s``."""
        n = self.x.shape[0]
        h, dk, dv = self.shape
        m = np.broadcast_to(np.eye(dk), (n, h, dk, dk)).copy()
        out = np.empty((n, p + 1, h, dk, dv))
        for s in range(p, -1, -1):
            mk = np.einsum("nhij,nhj->nhi", m, self.k[:, s])
            out[:, s] = (self.beta[:, s, :, None] * mk)[..., None] * self.values[:, s, :, None, :]
            if s:
                m -= (self.beta[:, s, :, None] * mk)[..., None] * self.k[:, s, :, None, :]
                m *= self.d[:, s, :, None, :]
        initial = np.einsum("nhij,nhjv->nhiv", m, init0.reshape(n, h, dk, dv))
        return out.reshape(n, p + 1, -1), initial.reshape(n, -1)

    def walk(self, init0: np.ndarray) -> Iterator[tuple[int, np.ndarray, np.ndarray, np.ndarray]]:
        """For each step p: ``(p, total, scale, keys)`` with the sum of every contribution and the
        initial term at p and their Σ|·| (n, U), and ``keys`` (n, p + 1, head, d_k) the carried
        keys ``P(s→p) β_s k_s`` (valid until the next step). A write ``β_s k_s v_sᵀ`` stays rank
        one as it is carried (``P`` acts on its key), so only keys are carried: O(d_k) a source
        and step, the sums one matrix product per head."""
        n, t, _ = self.x.shape
        h, dk, dv = self.shape
        keys = np.zeros((n, t, h, dk))
        init = np.array(init0).reshape(n, 1, -1)
        values = np.ascontiguousarray(self.values.transpose(0, 2, 1, 3))  # (n, head, T, d_v)
        for p in range(t):
            if p:
                live = keys[:, :p]
                live *= self.d[:, p, None]
                proj = np.einsum("nshk,nhk->nsh", live, self.k[:, p])
                live -= (self.beta[:, p, :, None] * self.k[:, p])[:, None] * proj[..., None]
                self.carry(init, p)
            keys[:, p] = self.beta[:, p, :, None] * self.k[:, p]
            k_t = keys[:, : p + 1].transpose(0, 2, 3, 1)  # (n, head, d_k, s)
            first = init.reshape(n, h, dk, dv)
            total = first + k_t @ values[:, :, : p + 1]
            scale = np.abs(first) + np.abs(k_t) @ np.abs(values[:, :, : p + 1])
            yield p, total.reshape(n, -1), scale.reshape(n, -1), keys[:, : p + 1]

    def contributions(self, keys: np.ndarray) -> np.ndarray:
        """The contributions (n, s, U) of the carried ``keys`` (n, s, head, d_k) of :meth:`walk`."""
        n, m = keys.shape[:2]
        return (keys[..., None] * self.values[:, :m, :, None, :]).reshape(n, m, -1)

    def norms(self, keys: np.ndarray) -> np.ndarray:
        """The Frobenius norm of each contribution per head (n, s, head): ‖P k‖ · ‖v‖."""
        m = keys.shape[1]
        return np.linalg.norm(keys, axis=-1) * np.linalg.norm(self.values[:, :m], axis=-1)

    def lifetimes(self, fraction: float) -> tuple[np.ndarray, np.ndarray]:
        """Per head, broadcast over its units (n, T, U): the later valid steps during which each
        write keeps ``‖P(s→t) w_s‖ ≥ fraction ‖w_s‖``, and whether it still did at the end; NaN
        where the step is not valid or wrote nothing."""
        beta = self.beta
        if self.d.max(initial=0.0) > 1.0 or beta.min(initial=0.0) < 0.0 or beta.max(initial=0.0) > 2.0:
            raise InputError(
                "This delta-rule layer has decays above 1 or write strengths beta outside [0, 2]: "
                "a write's norm can grow again, so its lifetime is not defined."
            )
        n, t, _ = self.x.shape
        heads = self.shape[0]
        norm = np.zeros((n, t, heads))
        steps = np.zeros((n, t, heads))
        still = np.zeros((n, t, heads), bool)
        for p, _, _, keys in self.walk(np.zeros((n, self.x.shape[2]))):
            kept = self.norms(keys)
            norm[:, p] = kept[:, p]
            still[:, p] = self.valid[:, p, None] & (kept[:, p] > 0)
            if p:
                still[:, :p] &= kept[:, :p] >= fraction * norm[:, :p]
                steps[:, :p] += still[:, :p] & self.valid[:, p, None, None]
        steps[~(self.valid[:, :, None] & (norm > 0))] = np.nan
        per = self.shape[1] * self.shape[2]
        return np.repeat(steps, per, axis=2), np.repeat(still, per, axis=2)


def read(ds: Any, mask: Any, kind: str, sl: slice, layer: str) -> DeltaTerms:
    """The terms of samples ``sl`` of a delta-rule layer (in memory or stored)."""
    if "gates" not in ds.fields or any(g not in ds.gates for g in GATES):
        raise FieldNotAvailableError(
            f"Decomposing {kind!r} layer {layer!r} needs its gates {list(GATES)} (the keys and "
            "values the rule used among them): trace or extract it with fields including 'gates' "
            "(the default), with this rnnlens (older ones kept only beta and g)."
        )
    beta, g, k, v = (np.asarray(ds.gates[name][sl], dtype=np.float32) for name in GATES)
    d = np.exp(g)  # float32, as the scan computes it
    heads = v.shape[2]
    k = np.repeat(k, heads // k.shape[2], axis=2)  # each key head serves consecutive value heads
    if d.ndim == 3:  # one decay per head: the same for its key channels
        d = np.broadcast_to(d[..., None], k.shape)
    x = np.asarray(ds.state[sl], dtype=np.float64)
    n, t = x.shape[:2]
    valid = np.ones((n, t), bool) if mask is None else np.asarray(mask[sl], dtype=bool)
    d64, k64, beta64, v64 = (np.asarray(a, np.float64) for a in (d, k, beta, v))
    return DeltaTerms(x.reshape(n, t, -1), d64, k64, beta64, v64, valid)
