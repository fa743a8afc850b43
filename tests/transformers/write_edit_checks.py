"""Shared by the state-space write-edit tests: the edits hypothesis draws, the edited run (with
the model checked unchanged after it), an edit's operation applied to a float64 array (the
oracle loops' side), and the cross-check that ablating step s's write leaves exactly the state
minus s's contribution from :func:`rnnlens.decompose`."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from hypothesis import strategies as st

import rnnlens


def draw_edits(
    draw: Any, name: str, width: int, steps: int, max_units: int, value: Callable[[str], Any]
) -> list[rnnlens.Edit]:
    """One or two edits of ``name``'s state (mostly of a write) at steps in ``-steps..steps-1``, on
    every unit or up to ``max_units`` of ``width``; ``value(mode)``: the strategy of the value
    ``set`` / ``add`` / ``scale`` takes."""
    edits = []
    for _ in range(draw(st.integers(1, 2))):
        target = draw(st.sampled_from(["write", "write", "state"]))
        some = st.lists(st.integers(0, width - 1), min_size=1, max_size=max_units, unique=True)
        mode = draw(st.sampled_from(["set", "add", "scale"]))
        edits.append(rnnlens.Edit(name, draw(st.integers(-steps, steps - 1)), field="state",
                                  units=draw(st.one_of(st.none(), some)), target=target,
                                  **{mode: draw(value(mode))}))  # fmt: skip
    return edits


def intervene_unchanged(model: Any, ids: Any, edits: Sequence[rnnlens.Edit]) -> Any:
    """``rnnlens.intervene``, checking that the model is as it was after it (weights, and no
    instance ``forward`` left behind)."""
    before = rnnlens.adapters.model_digest(model)
    run = rnnlens.intervene(model, ids, edits)
    assert rnnlens.adapters.model_digest(model) == before
    assert not any("forward" in vars(m) for m in model.modules())
    return run


def check_untouched_before(
    got: np.ndarray, plain: np.ndarray, edits: Sequence[rnnlens.Edit], steps: int
) -> None:
    """The edited run's states before the first edited step are bitwise the plain run's."""
    first = min(e.step % steps for e in edits)
    np.testing.assert_array_equal(got[:, :first], plain[:, :first])


def apply_op(a: np.ndarray, edit: rnnlens.Edit) -> None:
    """``edit``'s set / add / scale on ``a[:, units]``, in place."""
    sel = slice(None) if edit.units is None else edit.units
    mode = next(m for m in ("set", "add", "scale") if getattr(edit, m) is not None)
    v = getattr(edit, mode)
    a[:, sel] = v if mode == "set" else a[:, sel] + v if mode == "add" else a[:, sel] * v


def apply_edits(a: np.ndarray, edits: Sequence[rnnlens.Edit], target: str, t: int, steps: int) -> None:
    """Every edit of ``target`` (``"write"`` / ``"state"``) at step ``t`` of ``steps``, on ``a``."""
    for e in edits:
        if e.target == target and e.step % steps == t:
            apply_op(a, e)


def edited_loop(
    step: Callable[[int, np.ndarray], np.ndarray], w: np.ndarray, edits: Sequence[rnnlens.Edit]
) -> tuple[np.ndarray, np.ndarray]:
    """The float64 oracle of a state linear in itself, ``x_t = step(t, x_{t−1}) + w_t`` from a
    zero state, with ``edits`` applied: each step's write edited before the state is formed,
    the state after. Returns the states (stored, carried) and the states each step's output
    reads (before the step's state edits)."""
    steps = w.shape[1]
    s = np.zeros_like(w[:, 0])
    states, reads = np.zeros_like(w), np.zeros_like(w)
    for t in range(steps):
        wt = w[:, t].copy()
        apply_edits(wt, edits, "write", t, steps)
        s = step(t, s) + wt
        reads[:, t] = s
        apply_edits(s, edits, "state", t, steps)
        states[:, t] = s
    return states, reads


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
