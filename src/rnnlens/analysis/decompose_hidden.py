"""Mamba's "hidden attention" (Ali et al., "The Hidden Attention of Mamba Models", ACL 2025).

The selective scan's output is a causal mixing of its inputs, per channel:
``y_t = Σ_{s≤t} α_{t,s} x_s + D x_t`` with

    α_{t,s} = C_t · (Π_{r=s+1..t} Ā_r) · B̄_s,   Ā_r = exp(dt_r A),  B̄_s = dt_s B_s.

Mamba (``A`` (channel, d_state)) has one α per channel; Mamba2 (``A`` a scalar per head) one per
head: ``α = (C_t · B_s) exp(A Σ_{r=s+1..t} dt_r) dt_s`` (the SSD "attention" matrix).

Example:
    >>> import numpy as np
    >>> g = {"dt": np.ones((1, 2, 1)), "B": np.ones((1, 2, 1)), "C": np.ones((1, 2, 1))}
    >>> hidden("mamba", g, np.array([[np.log(0.5)]]))[0, 0]
    array([[1. , 0. ],
           [0.5, 1. ]])
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

__all__ = ["hidden"]


def hidden(kind: str, g: Mapping[str, np.ndarray], A: np.ndarray) -> np.ndarray:
    """``α`` (n, channel or head, T, T) from the gates ``dt``, ``B``, ``C`` (float64) and ``A``."""
    dt, B, C = g["dt"], g["B"], g["C"]
    n, t = dt.shape[:2]
    if kind == "mamba":  # dt (n,T,c), B, C (n,T,N), A (c,N): carry Ā per (channel, state)
        out = np.zeros((n, dt.shape[2], t, t))
        v = np.zeros((n, t, *A.shape))
        for p in range(t):
            if p:
                v[:, :p] *= np.exp(dt[:, p, :, None] * A)[:, None]
            v[:, p] = dt[:, p, :, None] * B[:, p, None, :]
            out[:, :, p, : p + 1] = np.einsum("nscN,nN->ncs", v[:, : p + 1], C[:, p])
        return out
    # mamba2: dt (n,T,H), B, C (n,T,G,N), A (H,): a scalar decay per head
    heads, groups = dt.shape[2], B.shape[2]
    cb = np.einsum("ntgk,nsgk->ngts", C, B)
    cb = np.repeat(cb, heads // groups, axis=1)  # (n, H, T, T)
    big = np.cumsum(dt * A, axis=1)  # (n, T, H): Σ_{r≤t} dt_r A
    gap = big.transpose(0, 2, 1)[:, :, :, None] - big.transpose(0, 2, 1)[:, :, None, :]
    causal = np.tril(np.ones((t, t), bool))
    decay = np.where(causal, np.exp(np.where(causal, gap, 0.0)), 0.0)
    return np.asarray(cb * decay * dt.transpose(0, 2, 1)[:, :, None, :])
