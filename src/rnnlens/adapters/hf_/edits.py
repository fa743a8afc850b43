"""Edits of a mixer's state as its scan runs (:func:`rnnlens.intervene` on transformers models).

Each rebuild (:mod:`.mamba`, :mod:`.mamba2`, :mod:`.gdn`) calls :func:`apply` on the state of
step ``t`` right after computing it and after step ``t``'s own output has read it, before step
``t + 1`` reads it (as an LSTM ``c`` edit): the edit is carried forward and changes the outputs
from ``t + 1`` on; the states stored for step ``t`` are the edited ones. A write edit
(``target="write"``, every kind :func:`rnnlens.decompose` covers) is applied to what step ``t``
adds to its state before the state is formed from it, so step ``t``'s own output reads it
(RWKV-4's output at ``t`` reads the state before ``t``: its write edits change later outputs).
The mixer's output is computed from these states and given to the rest of the model in place
of the mixer's own; the steps before the first one an edit changes are checked against the
mixer's own output.

Example:
    >>> import numpy as np, torch
    >>> from rnnlens.core.edits import Op
    >>> s = torch.ones(2, 3, 4)
    >>> apply(s, [Op(slice(0, 1), "scale", np.asarray(0.0))])
    >>> float(s[:, 0].sum()), float(s[:, 1:].sum())
    (0.0, 16.0)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from ...core.cells import check_parity
from ...core.edits import Op

__all__ = ["apply", "check_unedited", "first_step"]


def apply(s: torch.Tensor, ops: Sequence[Op]) -> None:
    """Apply ``ops`` to one step's state ``s`` (sample, first state dim, ...) in place."""
    for op in ops:
        sel: Any = op.units if isinstance(op.units, slice) else torch.as_tensor(op.units, device=s.device)
        value = torch.as_tensor(op.value, dtype=s.dtype, device=s.device)
        current = s[:, sel]
        if op.mode == "set":
            new = value.expand(current.shape)
        elif op.mode == "add":
            new = current + value
        else:
            new = current * value
        s[:, sel] = new


def check_unedited(
    own: torch.Tensor,
    rebuilt: torch.Tensor,
    ops: Mapping[int, Sequence[Op]] | None,
    *,
    layer: str,
    what: str,
    time_axis: int = 1,
    writes: Mapping[int, Sequence[Op]] | None = None,
) -> np.ndarray:
    """Check the rebuilt output against the mixer's ``own`` at the steps the edits leave as the
    mixer computed them (all without edits; ``writes``: the write edits by step, which change
    their own step's output too); return the rebuilt output as float NumPy.
    :func:`~rnnlens.core.cells.check_parity` sees (sample, time, everything else)."""
    got = rebuilt.detach().float().cpu().numpy()
    expected = own.detach().float().cpu().numpy()
    upto = min(first_step(ops, got.shape[time_axis]), min(writes or (), default=got.shape[time_axis]))

    def steps(a: np.ndarray) -> np.ndarray:
        a = np.moveaxis(a, time_axis, 1)[:, :upto]
        return a.reshape(a.shape[0], a.shape[1], -1)

    if upto:  # a write edit at step 0 leaves no step as the mixer computed it
        check_parity(steps(expected), steps(got), None, layer=layer, what=what)
    return got


def first_step(ops: Mapping[int, Sequence[Op]] | None, t: int) -> int:
    """How many leading steps the edits leave as the mixer computed them (``t``: all): those up
    to and including the first edited one, whose output reads its state before the edit."""
    return min(min(ops) + 1, t) if ops else t
