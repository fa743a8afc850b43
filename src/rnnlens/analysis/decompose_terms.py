"""The decay and the write of each step of a recurrence linear in its state, read from States.

A field ``x`` is *linear in its previous value* when, once the gates are known,
``x_t = d_t ⊙ x_{t-1} + w_t`` (``d_t`` the step's decay, ``w_t`` its write):

- LSTM and ConvLSTM ``c``: ``d = f``, ``w = i ⊙ g``;
- GRU ``h`` (rnnlens' canonical gates, post-activation: ``h_t = z ⊙ h_{t-1} + (1 − z) ⊙ n``):
  ``d = z``, ``w = (1 − z) ⊙ n``.

A masked step writes nothing and decays nothing (``d = 1``, ``w = 0``): the state is carried.
Other fields and kinds are refused here, saying why and what to decompose instead.

Example:
    >>> from rnnlens.analysis.decompose_terms import linear_field
    >>> linear_field("lstm", None), linear_field("gru", None)
    ('c', 'h')
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..core.kinds import KINDS
from ..errors import FieldNotAvailableError, UnsupportedLayerError

__all__ = ["SUPPORTED", "Terms", "linear_field", "read_terms"]

#: kind -> the field whose recurrence is linear in itself (what ``decompose`` reads by default)
SUPPORTED: dict[str, str] = {"lstm": "c", "convlstm": "c", "gru": "h"}

_STATE_SPACE = ("mamba", "mamba2", "mlstm", "gated_deltanet", "rglru", "rwkv4")


def linear_field(kind: str, field: str | None) -> str:
    """The field to decompose for a layer of ``kind`` (``field`` checked, or the default)."""
    if kind in _STATE_SPACE:
        raise UnsupportedLayerError(
            f"decompose does not yet support {kind!r} layers: their state is linear in the previous "
            "state, but rnnlens does not store every parameter of the decay (for Mamba the matrix "
            "A = -exp(A_log)) nor the step's input, so the writes cannot be computed exactly from "
            "the stored gates. Decompose an LSTM's c or a GRU's h."
        )
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
    if field is None or field == default:
        return default
    if field == "h" and default == "c":
        raise FieldNotAvailableError(
            "An LSTM's h = o ⊙ tanh(c) is not linear in the previous state (tanh and the output "
            "gate), so it is not a sum of per-step writes. Decompose its cell state: field='c' "
            "(h follows from c and the output gate at each step)."
        )
    raise FieldNotAvailableError(
        f"A {kind!r} layer has no linear field {field!r}: decompose field={default!r}."
    )


class Terms:
    """One chunk of samples in *processing* order, units flattened: the field ``x``
    (n, T, U), the decays ``d`` and writes ``w`` (n, T, U), the valid steps ``valid`` (n, T), all
    float64 but ``valid``."""

    def __init__(self, x: np.ndarray, d: np.ndarray, w: np.ndarray, valid: np.ndarray):
        self.x, self.d, self.w, self.valid = x, d, w, valid


def _read(arr: Any, sl: slice) -> np.ndarray:
    return np.asarray(arr[sl], dtype=np.float64)


def read_terms(ds: Any, mask: Any, kind: str, field: str, sl: slice, backward: bool) -> Terms:
    """The field, decays and writes of samples ``sl`` of direction ``ds`` (in memory or stored)."""
    x = _read(getattr(ds, field), sl)
    gates = ds.gates
    if kind == "gru":
        z, n_ = (np.asarray(a, np.float64) for a in gates.read(("z", "n"), sl))
        d, w = z, (1.0 - z) * n_
    else:  # lstm, convlstm
        f, i, g = (np.asarray(a, np.float64) for a in gates.read(("f", "i", "g"), sl))
        d, w = f, i * g
    n, t = x.shape[:2]
    x, d, w = (a.reshape(n, t, -1) for a in (x, d, w))
    valid = np.ones((n, t), bool) if mask is None else np.asarray(mask[sl], dtype=bool)
    if not valid.all():  # (d and w are fresh float64 arrays here: edited in place)
        d[~valid], w[~valid] = 1.0, 0.0
    if backward:  # processing order runs from the last input step to the first
        x, d, w, valid = x[:, ::-1], d[:, ::-1], w[:, ::-1], valid[:, ::-1]
    return Terms(x, d, w, valid)
