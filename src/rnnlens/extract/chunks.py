"""One piece of input through the model's adapter (shared by :class:`~rnnlens.extract.run.Run`
and the Dask driver); :mod:`rnnlens.io.pieces` turns its states into a store chunk's arrays."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from .. import adapters
from ..api.tracer import trace
from ..core.states import States
from ..errors import InputError
from ..io.data import Batch

# --------------------------------------------------------------------------- one chunk


def trace_piece(
    model: Any,
    piece: Batch,
    *,
    layers: str | Iterable[str] | None,
    fields: str | Sequence[str] | None,
) -> tuple[States, np.ndarray | None]:
    """Trace one piece of input as one batch, passed as the model's adapter says
    (:meth:`~rnnlens.adapters.Adapter.to_inputs`); also return the user's mask (from ``mask``
    or ``lengths``) as (sample, time) bool, or None."""
    if _time_steps(piece.x) == 0:
        raise InputError(
            f"The data has 0 time steps (input shape {_shape(piece.x)}): there are no states to "
            "store. Pass sequences of at least one step, (sample, time, feature...)."
        )
    user_mask = piece.mask
    if user_mask is None and piece.lengths is not None:
        steps = _time_steps(piece.x)
        if piece.lengths.size and int(piece.lengths.max()) > steps:
            raise InputError(
                f"lengths has a value {int(piece.lengths.max())} above the batch's {steps} time steps."
            )
        user_mask = np.arange(steps)[None, :] < np.asarray(piece.lengths)[:, None]
    inputs = adapters.for_model(model).to_inputs(piece.x, mask=user_mask, size=piece.size)
    x, *rest = inputs.args
    states = trace(model, x, *rest, layers=layers, fields=fields, **inputs.options, **inputs.kwargs)
    return states, user_mask


def _shape(x: Any) -> tuple[int, ...]:
    first = next(iter(x.values())) if isinstance(x, dict) else x[0] if isinstance(x, (list, tuple)) else x
    return tuple(first.shape)


def _time_steps(x: Any) -> int:
    if isinstance(x, dict):
        x = next(iter(x.values()))
    elif isinstance(x, (list, tuple)):
        x = x[0]
    return int(x.shape[1])
