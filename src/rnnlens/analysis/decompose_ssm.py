"""The decay and the write of each step of a state-space mixer, from its stored gates and the
recurrence constants its trace keeps (:attr:`LayerSpec.constants`).

Each is computed with the mixer's own float32 operations, in its order, then widened to float64:

- ``mamba`` (state (channel, d_state)): ``d_t = exp(A ⊙ dt_t)`` per channel and state dim,
  ``w_t = (dt_t B_t) x_t`` (``A = -exp(A_log)``, constant ``A``; gates ``dt``, ``B``, ``x``);
- ``mamba2`` (state (head, head_dim, d_state)): ``d_t = exp(dt_t A)`` per head (a scalar for the
  whole head), ``w_t = (dt_t x_t) ⊗ B_t`` (``B`` of the head's group);
- ``mamba_heads`` (Zamba v1's multi-head Mamba, state (head, head_dim, d_state)): ``mamba``'s
  decay and write per head, with each head's ``A`` (head, head_dim, d_state);
- ``lightning`` (MiniMax's lightning attention, state (head, d_k, d_v)): ``d = exp(−λ)`` per
  head (the fixed ``slope_rate``, constant ``decay``), ``w_t = k_t ⊗ v_t`` (gates ``k``, ``v``);
- ``rglru`` (state (unit,)): ``a_t = exp(-8 r_t softplus(Λ))``, ``w_t = (x_t i_t) sqrt(1 - a_t²)``;
  the first step starts a segment (``a = 0``, no square root), as the block computes it;
- ``mlstm`` (xLSTM's matrix memory ``C``, and its normaliser ``n``) and ``rwkv4`` (the WKV
  ``num`` and ``den``), states kept with a running-maximum stabiliser:
  :mod:`.decompose_stabilised`.

The mixers do not carry their state over padded steps (Mamba zeroes a padded step's input, so
it writes nothing, but its state still decays): the decays and writes are used as they are.

Example:
    >>> import numpy as np
    >>> from rnnlens.analysis.decompose_ssm import mamba_terms
    >>> dt, x = np.full((1, 2, 1), 0.5, np.float32), np.ones((1, 2, 1), np.float32)
    >>> B = np.ones((1, 2, 2), np.float32)
    >>> d, w = mamba_terms({"dt": dt, "B": B, "x": x}, {"A": -np.ones((1, 2), np.float32)})
    >>> d.shape, float(w[0, 0, 0])
    ((1, 2, 2), 0.5)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from ..errors import FieldNotAvailableError
from .decompose_stabilised import LIFE, mlstm_n_terms, mlstm_terms, rwkv4_terms

__all__ = [
    "EXTRA", "KINDS", "field_array", "lightning_terms", "mamba2_terms", "mamba_heads_terms",
    "mamba_terms", "read", "rglru_terms",
]  # fmt: skip


def mamba_terms(g: Mapping[str, np.ndarray], c: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """``(d, w)`` (n, T, channel × d_state), float64."""
    dt, B, x, A = g["dt"], g["B"], g["x"], c["A"]
    d = np.exp(A[None, None] * dt[..., None])
    w = (dt[..., None] * B[:, :, None, :]) * x[..., None]
    n, t = dt.shape[:2]
    return d.reshape(n, t, -1).astype(np.float64), w.reshape(n, t, -1).astype(np.float64)


def mamba_heads_terms(
    g: Mapping[str, np.ndarray], c: Mapping[str, np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """``(d, w)`` (n, T, head × head_dim × d_state), float64: :func:`mamba_terms` per head."""
    dt, B, x, A = g["dt"], g["B"], g["x"], c["A"]  # (n,T,H,P), (n,T,H,N), (n,T,H,P), (H,P,N)
    d = np.exp(A[None, None] * dt[..., None])
    w = (dt[..., None] * B[:, :, :, None, :]) * x[..., None]
    n, t = dt.shape[:2]
    return d.reshape(n, t, -1).astype(np.float64), w.reshape(n, t, -1).astype(np.float64)


def lightning_terms(
    g: Mapping[str, np.ndarray], c: Mapping[str, np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """``(d, w)`` (n, T, head × d_k × d_v), float64."""
    k, v, decay = g["k"], g["v"], c["decay"]  # (n,T,H,Dk), (n,T,H,Dv), (H,)
    w = k[..., :, None] * v[..., None, :]
    d = np.broadcast_to(decay[None, None, :, None, None], w.shape)
    n, t = k.shape[:2]
    return d.reshape(n, t, -1).astype(np.float64), w.reshape(n, t, -1).astype(np.float64)


def mamba2_terms(g: Mapping[str, np.ndarray], c: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """``(d, w)`` (n, T, head × head_dim × d_state), float64."""
    dt, B, x, A = g["dt"], g["B"], g["x"], c["A"]  # (n,T,H), (n,T,G,N), (n,T,H,P), (H,)
    heads, groups = dt.shape[2], B.shape[2]
    Bh = np.repeat(B, heads // groups, axis=2)
    w = (dt[..., None] * x)[..., None] * Bh[:, :, :, None, :]
    d = np.broadcast_to(np.exp(dt * A)[..., None, None], w.shape)
    n, t = dt.shape[:2]
    return d.reshape(n, t, -1).astype(np.float64), w.reshape(n, t, -1).astype(np.float64)


def rglru_terms(g: Mapping[str, np.ndarray], c: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """``(d, w)`` (n, T, unit), float64."""
    r, i, x = g["r"], g["i"], g["x"]
    log_a = np.float32(-8.0) * r * c["softplus_lambda"]
    a = np.exp(log_a)
    multiplier = np.sqrt(np.float32(1) - np.exp(np.float32(2) * log_a))
    multiplier[:, 0] = 1.0  # a segment starts at the first step: no decay, no square root
    a[:, 0] = 0.0
    return a.astype(np.float64), (x * i * multiplier).astype(np.float64)


#: kind -> (the terms of its ``state``, the gates and constants they read); the stabilisers
#: ``m`` (mLSTM's state part) and ``max`` (RWKV-4's third part) are read with the gates
KINDS: dict[str, tuple[Any, tuple[str, ...], tuple[str, ...]]] = {
    "mamba": (mamba_terms, ("dt", "B", "x"), ("A",)),
    "mamba2": (mamba2_terms, ("dt", "B", "x"), ("A",)),
    "mamba_heads": (mamba_heads_terms, ("dt", "B", "x"), ("A",)),
    "lightning": (lightning_terms, ("k", "v"), ("decay",)),
    "rglru": (rglru_terms, ("r", "i", "x"), ("softplus_lambda",)),
    "mlstm": (mlstm_terms, ("i", "f", "k", "v"), ()),
    "rwkv4": (rwkv4_terms, ("k", "v"), ("decay",)),
}
#: (kind, field) -> the same, for a linear field other than ``state`` (a state part)
EXTRA: dict[tuple[str, str], tuple[Any, tuple[str, ...], tuple[str, ...]]] = {
    ("mlstm", "n"): (mlstm_n_terms, ("i", "f", "k"), ()),
}


class _Parts:
    """The first ``keep`` parts (axis 2) of a (sample, time, part, ...) array, read lazily."""

    def __init__(self, arr: Any, keep: int) -> None:
        self._arr, self._keep = arr, keep
        self.shape = (*arr.shape[:2], keep, *arr.shape[3:])
        self.dtype = arr.dtype
        self.chunks = getattr(arr, "chunks", None)

    def __getitem__(self, sl: slice) -> np.ndarray:
        return np.asarray(self._arr[sl])[:, :, : self._keep]


def field_array(ds: Any, kind: str, field: str) -> Any:
    """The array the decomposition of ``field`` covers: the field, a state part (mLSTM ``n``),
    or RWKV-4's ``num`` and ``den`` parts of ``state``."""
    if kind == "rwkv4" and field == "state":
        return _Parts(ds.state, 2)
    if field in ("h", "c", "state"):
        return getattr(ds, field)
    return ds.state_parts[field]


def _stabiliser(ds: Any, kind: str, sl: slice) -> dict[str, np.ndarray]:
    if kind == "mlstm":
        return {"m": np.asarray(ds.state_parts["m"][sl], dtype=np.float32)}
    if kind == "rwkv4":
        return {"max": np.asarray(ds.state[sl], dtype=np.float32)[:, :, 2]}
    return {}


def read(
    ds: Any, kind: str, sl: slice, constants: Mapping[str, np.ndarray], layer: str, field: str = "state"
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """The decays and writes of samples ``sl`` of a state-space layer (in memory or stored), and
    the real decays its lifetimes read (None: the decays themselves)."""
    terms, gate_names, needed = KINDS[kind] if field == "state" else EXTRA[(kind, field)]
    if "gates" not in ds.fields:
        raise FieldNotAvailableError(
            f"Decomposing {kind!r} layer {layer!r} needs its gates {list(gate_names)}: trace or "
            "extract it with fields including 'gates' (the default)."
        )
    missing = [k for k in needed if k not in constants]
    if missing or any(g not in ds.gates for g in gate_names):
        raise FieldNotAvailableError(
            f"Layer {layer!r} was traced without the {kind} constants {missing or list(needed)} or "
            f"gates {list(gate_names)} that its decays and writes need (states traced or stored "
            "by an older rnnlens): trace it again."
        )
    if kind == "mlstm" and "m" not in ds.state_parts:
        raise FieldNotAvailableError(
            f"Decomposing mlstm layer {layer!r} needs its stabiliser m (a part of 'state'): trace "
            "or extract it with fields including 'state'."
        )
    g = {name: np.asarray(ds.gates[name][sl], dtype=np.float32) for name in gate_names}
    g.update(_stabiliser(ds, kind, sl))
    c = {k: np.asarray(constants[k], dtype=np.float32) for k in needed}
    d, w = terms(g, c)
    life = LIFE[kind](g, c, d.shape[2]) if kind in LIFE else None
    return d, w, life
