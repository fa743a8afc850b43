"""Shared by the state-space write-edit tests: an edit's operation applied to a float64 array
(the oracle loops' side), and the cross-check that ablating step s's write leaves exactly the
state minus s's contribution from :func:`rnnlens.decompose`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

import rnnlens


def apply_op(a: np.ndarray, edit: rnnlens.Edit) -> None:
    """``edit``'s set / add / scale on ``a[:, units]``, in place."""
    sel = slice(None) if edit.units is None else edit.units
    mode = next(m for m in ("set", "add", "scale") if getattr(edit, m) is not None)
    v = getattr(edit, mode)
    a[:, sel] = v if mode == "set" else a[:, sel] + v if mode == "add" else a[:, sel] * v


def check_ablation_matches_decompose(
    model: Any, ids: Any, plain: Any, name: str, cases: Sequence[tuple[int, list[int] | None]]
) -> None:
    """For each (step s, units): ``Edit(target="write", scale=0)`` at s gives, at every later t,
    the traced state minus ``decompose(...).at(t)[:, s]`` on those units (1e-6 of the largest
    state value); earlier steps and the other units are bit-equal."""
    dec = rnnlens.decompose(plain, name)
    state = plain[name].state
    steps = state.shape[1]
    for s, units in cases:
        edit = rnnlens.Edit(name, s, field="state", units=units, target="write", scale=0.0)
        got = rnnlens.intervene(model, ids, edit).states[name].state
        np.testing.assert_array_equal(got[:, :s], state[:, :s])
        sel = slice(None) if units is None else units
        for t in range(s, steps):
            want = state[:, t].astype(np.float64)
            want[:, sel] -= dec.at(t)[:, s][:, sel]
            np.testing.assert_allclose(got[:, t], want, rtol=0, atol=1e-6 * np.abs(state).max())
            if units is not None:  # the other units (heads) are untouched at the edited layer
                rest = np.setdiff1d(np.arange(state.shape[2]), units)
                np.testing.assert_array_equal(got[:, t][:, rest], state[:, t][:, rest])
