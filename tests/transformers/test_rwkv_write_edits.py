"""Edit(target="write") on RWKV-4 time mixing (a tiny random transformers model, no hub): step
t's writes ``exp(k_t − max_t)·(v_t, 1)`` into the WKV ``num`` and ``den`` parts, changed and
carried; ``max_t`` (the stabiliser) as computed.

Oracles:

- a float64 loop of the WKV recurrence (``num``, ``den``, ``max``, the block's ``time_first``
  and ``decay = −exp(time_decay)``) from the traced keys and values, the edited step's writes
  scaled / set / added, state edits (any part) mixed in; the edited run's states against it
  (``atol = 1e-5 · max|num, den|`` on num and den, ``1e-5 · max|max|`` on max);
- the model run with the block's output replaced (a forward hook) by ``W_out (r ⊙ wkv)`` with
  ``wkv`` read from the oracle's states (a step's output reads the state before it): the logits
  against the edited run's (``rtol = 1e-4, atol = 1e-5``);
- :func:`rnnlens.decompose`: ``scale=0`` on step s's write leaves num and den minus that
  write's carried contribution at every later step (``atol = 1e-6 · max|num, den|``).

The model is unchanged (its digest; no instance ``forward`` left).
"""

from __future__ import annotations

from functools import cache
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

import torch.nn.functional as F  # noqa: E402
from ssm_builders import IDS, rwkv  # noqa: E402
from write_edit_checks import apply_edits, check_untouched_before, intervene_unchanged  # noqa: E402

import rnnlens  # noqa: E402

T = IDS.shape[1]
NAME = "rwkv.blocks.1.attention"


@cache
def _model() -> tuple[Any, Any]:
    torch.manual_seed(3)
    model = rwkv()
    with torch.no_grad():  # decays and bonuses spread over units (the default init gives one value)
        for block in model.rwkv.blocks:
            block.attention.time_decay.normal_(0.0, 1.0)
            block.attention.time_first.normal_(0.0, 1.0)
    return model, rnnlens.trace(model, IDS)


def _oracle(model: Any, ls: Any, edits: list[rnnlens.Edit]) -> tuple[np.ndarray, np.ndarray]:
    """Every step's (num, den, max) (n, T, 3, U) and WKV output (n, T, U), float64."""
    block = model.get_submodule(NAME)
    decay = -np.exp(block.time_decay.detach().double().numpy())
    first = block.time_first.detach().double().numpy()
    k, v = (np.asarray(ls.gates[x], np.float64) for x in ("k", "v"))
    num, den, mx = np.zeros_like(k[:, 0]), np.zeros_like(k[:, 0]), np.full_like(k[:, 0], -1e38)
    states, wkv = np.zeros((*k.shape[:2], 3, k.shape[2])), np.zeros_like(k)
    for t in range(T):
        out_max = np.maximum(mx, k[:, t] + first)
        a, b = np.exp(mx - out_max), np.exp(k[:, t] + first - out_max)
        wkv[:, t] = (a * num + b * v[:, t]) / (a * den + b)
        m = np.maximum(mx + decay, k[:, t])
        e1, e2 = np.exp(mx + decay - m), np.exp(k[:, t] - m)
        w = np.stack([e2 * v[:, t], e2, np.zeros_like(e2)], axis=1)
        apply_edits(w, edits, "write", t, T)
        s = np.stack([e1 * num + w[:, 0], e1 * den + w[:, 1], m], axis=1)
        apply_edits(s, edits, "state", t, T)
        states[:, t] = s
        num, den, mx = s[:, 0], s[:, 1], s[:, 2]
    return states, wkv


def _oracle_logits(model: Any, ls: Any, wkv: np.ndarray) -> np.ndarray:
    block = model.get_submodule(NAME)
    r = torch.from_numpy(np.asarray(ls.gates["r"], np.float64) * wkv).float()

    def out(mod: Any, args: Any, output: Any) -> Any:
        return (F.linear(r, mod.output.weight), *output[1:])

    handle = block.register_forward_hook(out)
    try:
        with torch.no_grad():
            return model(IDS).logits.numpy()  # type: ignore[no-any-return]
    finally:
        handle.remove()


@st.composite
def edit_lists(draw: Any) -> list[rnnlens.Edit]:
    edits = []
    for _ in range(draw(st.integers(1, 2))):
        target = draw(st.sampled_from(["write", "write", "state"]))
        mode = draw(st.sampled_from(["set", "add", "scale"]))
        value = draw(st.floats(-3, 3, width=32)) if mode == "scale" else draw(st.floats(-0.5, 0.5, width=32))
        parts: list[Any] = [[0], [1], [0, 1]] + ([None] if mode == "scale" else [])
        if target == "state":  # set / add: num only (den stays > 0); scale: max too
            parts = [[0], [2]] if mode == "scale" else [[0]]
        units = draw(st.sampled_from(parts))
        step = draw(st.integers(-T, T - 1))
        edits.append(rnnlens.Edit(NAME, step, field="state", units=units, target=target, **{mode: value}))
    return edits


@given(edit_lists())
def test_rwkv_write_edits_equal_the_oracle_loop_and_the_hooked_model(edits: list[rnnlens.Edit]) -> None:
    model, plain = _model()
    run = intervene_unchanged(model, IDS, edits)
    states, wkv = _oracle(model, plain[NAME], edits)
    got = run.states[NAME].state
    for part in (slice(0, 2), slice(2, 3)):
        scale = np.abs(states[:, :, part]).max()
        np.testing.assert_allclose(got[:, :, part], states[:, :, part], rtol=0, atol=1e-5 * scale)
    check_untouched_before(got, plain[NAME].state, edits, T)
    want = _oracle_logits(model, plain[NAME], wkv)
    np.testing.assert_allclose(run.outputs["logits"], want, rtol=1e-4, atol=1e-5)


def test_ablating_a_write_removes_its_decompose_contribution() -> None:
    model, plain = _model()
    dec = rnnlens.decompose(plain, NAME)
    state = plain[NAME].state
    for s, units in ((2, None), (4, [1])):
        edit = rnnlens.Edit(NAME, s, field="state", units=units, target="write", scale=0.0)
        got = rnnlens.intervene(model, IDS, edit).states[NAME].state
        np.testing.assert_array_equal(got[:, :s], state[:, :s])
        sel = slice(0, 2) if units is None else units
        for t in range(s, T):
            want = state[:, t, :2].astype(np.float64)
            want[:, sel] -= dec.at(t)[:, s][:, sel]
            np.testing.assert_allclose(got[:, t, :2], want, rtol=0, atol=1e-6 * np.abs(state[:, :, :2]).max())
            np.testing.assert_array_equal(got[:, t, 2], state[:, t, 2])  # max as computed


def test_rwkv_write_edit_refuses_the_max_part() -> None:
    model, _ = _model()
    for units, kw in (([2], {"scale": 0.0}), ([1, 2], {"add": 1.0}), (None, {"set": 0.0})):
        with pytest.raises(rnnlens.FieldNotAvailableError, match="units=\\[0\\], \\[1\\] or \\[0, 1\\]"):
            rnnlens.intervene(
                model, IDS, rnnlens.Edit(NAME, 1, field="state", units=units, target="write", **kw)
            )
