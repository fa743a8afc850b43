"""The decay and the write of each step of a recurrence linear in its state, read from States.

A field ``x`` is *linear in its previous value* when, once the gates are known,
``x_t = d_t ⊙ x_{t-1} + w_t`` (``d_t`` the step's decay, ``w_t`` its write):

- LSTM and ConvLSTM ``c``: ``d = f``, ``w = i ⊙ g``;
- GRU ``h`` (rnnlens' canonical gates, post-activation: ``h_t = z ⊙ h_{t-1} + (1 − z) ⊙ n``):
  ``d = z``, ``w = (1 − z) ⊙ n``;
- the ``state`` of Mamba (and Zamba v1's multi-head Mamba), Mamba2, RG-LRU and lightning
  attention mixers: :mod:`.decompose_ssm`;
- xLSTM's mLSTM matrix memory ``state`` (and its normaliser, field ``n``) and RWKV-4's WKV
  ``state`` (its ``num`` and ``den`` parts; ``max`` is the stabiliser), stored stabilised by a
  running maximum: :mod:`.decompose_stabilised`;
- the ``state`` of gated delta-nets and Kimi delta attention, whose decay is a matrix per head
  (``x_t = A_t x_{t-1} + w_t``): :mod:`.decompose_delta` (:data:`MATRIX`).

A masked step writes nothing and decays nothing (``d = 1``, ``w = 0``): the state is carried.
Other fields and kinds are refused here, saying why and what to decompose instead.

Example:
    >>> from rnnlens.analysis.decompose_terms import linear_field
    >>> linear_field("lstm", None), linear_field("gru", None)
    ('c', 'h')
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from ..core.kinds import KINDS
from ..errors import FieldNotAvailableError, InputError
from . import decompose_ssm

__all__ = ["MATRIX", "SUPPORTED", "Terms", "linear_field", "read_terms", "refuse_initial"]

#: kinds whose decay is a matrix per head (their terms: :mod:`.decompose_delta`)
MATRIX = frozenset({"gated_deltanet", "kimi_delta"})
#: kind -> the field whose recurrence is linear in itself (what ``decompose`` reads by default)
SUPPORTED: dict[str, str] = {
    "lstm": "c", "convlstm": "c", "gru": "h", **{k: "state" for k in (*decompose_ssm.KINDS, *MATRIX)},
}  # fmt: skip


def linear_field(kind: str, field: str | None) -> str:
    """The field to decompose for a layer of ``kind`` (``field`` checked, or the default)."""
    if kind not in SUPPORTED:
        what = (
            "its update is not known to rnnlens"
            if not KINDS[kind].known
            else ("h_t = act(x W + h_{t-1} U + b) passes the previous state through a nonlinearity")
        )
        raise FieldNotAvailableError(
            f"A {kind!r} layer's state is not linear in its previous state ({what}), so it is not "
            "a sum of per-step writes. Decompose an LSTM's c or a GRU's h instead."
        )
    default = SUPPORTED[kind]
    if field is None or field == default or (kind, field) in decompose_ssm.EXTRA:
        return default if field is None else field
    if field == "h" and default == "c":
        raise FieldNotAvailableError(
            "An LSTM's h = o ⊙ tanh(c) is not linear in the previous state (tanh and the output "
            "gate), so it is not a sum of per-step writes. Decompose its cell state: field='c' "
            "(h follows from c and the output gate at each step)."
        )
    also = [f for k, f in decompose_ssm.EXTRA if k == kind]
    raise FieldNotAvailableError(
        f"A {kind!r} layer has no linear field {field!r}: decompose field={default!r}"
        + (f" (or {', '.join(repr(f) for f in also)})." if also else ".")
    )


def refuse_initial(kind: str) -> None:
    """Kinds stored with a running-maximum stabiliser take no caller's initial state: the
    stabiliser before the first step, which its decay needs, is not stored."""
    if kind in ("mlstm", "rwkv4"):
        raise InputError(
            f"A {kind!r} layer's first decay needs its stabiliser before the first step, which is "
            "not stored: leave initial out (the initial term is then read exactly from the first "
            "stored step)."
        )


class Terms:
    """One chunk of samples in *processing* order, units flattened: the field ``x``
    (n, T, U), the decays ``d`` and writes ``w`` (n, T, U), the valid steps ``valid`` (n, T), all
    float64 but ``valid``. ``matrix``: whether the decay mixes units (then ``d`` is only its
    diagonal part and :meth:`carry` applies it; :mod:`.decompose_delta`)."""

    matrix = False

    def __init__(self, x: np.ndarray, d: np.ndarray, w: np.ndarray, valid: np.ndarray,
                 life: np.ndarray | None = None):  # fmt: skip
        self.x, self.d, self.w, self.valid = x, d, w, valid
        #: the real decays a write's lifetime is read from, where the stored state is
        #: stabilised (:mod:`.decompose_stabilised`); else ``d``
        self.life = d if life is None else life

    def carry(self, a: np.ndarray, p: int) -> np.ndarray:
        """Step p's decay applied to a block of contributions ``a`` (n, m, U), in place: ``a``."""
        a *= self.d[:, p, None]
        return a


def _read(arr: Any, sl: slice) -> np.ndarray:
    return np.asarray(arr[sl], dtype=np.float64)


def read_terms(ds: Any, mask: Any, kind: str, field: str, sl: slice, backward: bool,
               constants: Mapping[str, np.ndarray] | None = None, layer: str = "") -> Terms:  # fmt: skip
    """The field, decays and writes of samples ``sl`` of direction ``ds`` (in memory or stored);
    ``constants``: the layer's (state-space kinds, :mod:`.decompose_ssm`)."""
    x = _read(decompose_ssm.field_array(ds, kind, field), sl)
    n, t = x.shape[:2]
    valid = np.ones((n, t), bool) if mask is None else np.asarray(mask[sl], dtype=bool)
    if kind in decompose_ssm.KINDS:  # padded steps decay and write as the mixer computes them
        d, w, life = decompose_ssm.read(ds, kind, sl, constants or {}, layer, field)
        return Terms(x.reshape(n, t, -1), d, w, valid, life)
    gates = ds.gates
    if kind == "gru":
        z, n_ = gates.read(("z", "n"), sl)
        d = np.array(z, np.float64)  # a copy: masked steps are set below, in place
        w = (1.0 - d) * n_
    else:  # lstm, convlstm
        f, i, g = gates.read(("f", "i", "g"), sl)
        d = np.array(f, np.float64)
        w = np.multiply(i, g, dtype=np.float64)
    x, d, w = (a.reshape(n, t, -1) for a in (x, d, w))
    if not valid.all():
        d[~valid], w[~valid] = 1.0, 0.0
    if backward:  # processing order runs from the last input step to the first
        x, d, w, valid = x[:, ::-1], d[:, ::-1], w[:, ::-1], valid[:, ::-1]
    return Terms(x, d, w, valid)
