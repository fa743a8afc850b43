"""Edit(target="write") on Flax cells (linen LSTMCell, OptimizedLSTMCell, GRUCell, MGUCell; nnx
LSTMCell): what a step wrote into an LSTM's c / a GRU's or MGU's h, changed on the host and
carried forward.

Oracle: a float64 NumPy loop of the cell's equations with that step's write replaced
(``reference_rnn(edit_write=...)`` for LSTM and GRU; :func:`_mgu_loop` here for MGU), weights read
from the parameter tree (``flax_nets``); hypothesis over kinds, directions, steps, units, ops,
values and seeds, with state edits mixed in. float32 models against float64 loops:
``rtol = atol = 1e-5`` (measured ≈ 1.5e-7). The model is unchanged (its digest).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import rnnlens
from rnnlens.testing import reference_rnn, sigmoid

pytest.importorskip("flax")
import jax
from flax_nets import build, h_of

from flax import nnx

TOL = {"rtol": 1e-5, "atol": 1e-5}
F, U, N, T = 3, 4, 2, 5
FIELD = {"lstm": "c", "optimized_lstm": "c", "gru": "h", "mgu": "h"}


def _mgu_loop(p: Any, x: np.ndarray, *, reverse: bool = False, mask: Any = None, edit_write: Any = None,
              edit: Any = None) -> dict[str, np.ndarray]:  # fmt: skip
    """Flax's MGU in float64, step by step: ``h = f ⊙ h + w``, ``w = (1 − f) ⊙ n`` (edited)."""
    w = {k: {a: np.asarray(b, np.float64) for a, b in v.items()} for k, v in p.items()}
    n, t, _ = x.shape
    h = np.zeros((n, U))
    out = np.zeros((n, t, U))
    for s in range(t)[::-1] if reverse else range(t):
        f = sigmoid(x[:, s] @ w["if"]["kernel"] + w["if"]["bias"] + h @ w["hf"]["kernel"])
        cand = np.tanh(
            x[:, s] @ w["in"]["kernel"] + w["in"]["bias"] + f * (h @ w["hn"]["kernel"] + w["hn"]["bias"])
        )
        wr = (1 - f) * cand
        if edit_write is not None:
            wr = edit_write(s, wr.copy())
        new = f * h + wr
        if edit is not None:
            new, _ = edit(s, new.copy(), None)
        live = np.ones(n, bool) if mask is None else mask[:, s]
        h = np.where(live[:, None], new, h)
        out[:, s] = h
    return {"h": out}


def _apply(a: np.ndarray, units: Any, mode: str, value: float) -> np.ndarray:
    sel = slice(None) if units is None else units
    part = a[:, sel]
    a[:, sel] = value if mode == "set" else part + value if mode == "add" else part * value
    return a


def _reference(kind: str, ref: dict[str, Any], params: Any, x: np.ndarray, direction: str,
               edits: list[rnnlens.Edit], mask: Any = None) -> dict[str, np.ndarray]:  # fmt: skip
    """The float64 loop of one direction with ``edits`` (write and state edits) applied."""
    mine = [e for e in edits if e.direction in (None, direction)]

    def hook(target: str, field: str) -> Any:
        def f(t: int, a: np.ndarray) -> np.ndarray:
            for e in mine:
                if e.target == target and e.field == field and e.step % T == t:
                    mode = next(m for m in ("set", "add", "scale") if getattr(e, m) is not None)
                    a = _apply(a, e.units, mode, getattr(e, mode))
            return a

        return f

    write, h_edit, c_edit = hook("write", FIELD[kind]), hook("state", "h"), hook("state", "c")

    def edit(t: int, h: np.ndarray, c: Any) -> tuple[np.ndarray, Any]:  # h, c edits in the order given
        for e in mine:
            if e.target == "state" and e.step % T == t:
                h, c = (h_edit(t, h), c) if e.field == "h" else (h, c_edit(t, c))
        return h, c

    if kind == "mgu":
        name = {"forward": "fwd", "backward": "bwd"}[direction] if "fwd" in params else "rnn"
        reverse = direction == "backward"
        return _mgu_loop(params[name], x, reverse=reverse, mask=mask, edit_write=write, edit=edit)
    base = "lstm" if "lstm" in kind else kind
    return reference_rnn(base, x, mask=mask, edit_write=write, edit=edit, **ref[direction])


@st.composite
def configs(draw: Any) -> Any:
    kind = draw(st.sampled_from(list(FIELD)))
    bi = draw(st.booleans())
    model, layer, ref = build(kind, bi, F, U, draw(st.integers(1, 2)))
    edits = []
    for _ in range(draw(st.integers(1, 3))):
        target = draw(st.sampled_from(["write", "write", "state"]))
        field = FIELD[kind] if target == "write" else draw(st.sampled_from(sorted({"h", FIELD[kind]})))
        some = st.lists(st.integers(0, U - 1), min_size=1, max_size=3, unique=True)
        units = draw(st.one_of(st.none(), some))
        mode = draw(st.sampled_from(["set", "add", "scale"]))
        direction = draw(st.sampled_from([None, "forward"] + (["backward"] if bi else [])))
        edits.append(rnnlens.Edit(layer, draw(st.integers(0, T - 1)), field=field, units=units,
                                  direction=direction, target=target,
                                  **{mode: draw(st.floats(-2, 2, width=32))}))  # fmt: skip
    x = np.random.default_rng(draw(st.integers(0, 2**16))).normal(size=(N, T, F)).astype(np.float32)
    return kind, bi, model, layer, ref, edits, x


@given(configs())
def test_flax_write_edits_equal_the_reference_loop(cfg: Any) -> None:
    kind, bi, model, layer, ref, edits, x = cfg
    before = rnnlens.adapters.model_digest(model)
    run = rnnlens.intervene(model, x, edits)
    assert rnnlens.adapters.model_digest(model) == before
    params = model.variables["params"]
    for direction in ("forward", "backward") if bi else ("forward",):
        want = _reference(kind, ref, params, x, direction, edits)
        got = run.states[layer].directions[direction]
        np.testing.assert_allclose(got.h, want["h"], **TOL)
        if "c" in want and got.c is not None:
            np.testing.assert_allclose(got.c, want["c"], **TOL)
    carry, ys = run.outputs
    if not bi:  # the model's own outputs carry the edited states
        np.testing.assert_allclose(np.asarray(ys), run.states[layer].h, **TOL)
        np.testing.assert_allclose(h_of(carry), run.states[layer].h[:, -1], **TOL)


def test_flax_write_edit_with_seq_lengths_on_a_reversed_direction() -> None:
    model, layer, ref = build("optimized_lstm", True, F, U, 2)
    x, lengths = np.random.default_rng(3).normal(size=(3, T, F)).astype(np.float32), np.array([5, 2, 4])
    valid = np.arange(T)[None, :] < lengths[:, None]
    edits = [
        rnnlens.Edit(layer, 1, field="c", units=[0, 2], target="write", scale=-1.5, direction="backward")
    ]
    run = rnnlens.intervene(model, x, edits, seq_lengths=lengths)
    want = _reference("optimized_lstm", ref, model.variables["params"], x, "backward", edits, mask=valid)
    np.testing.assert_allclose(run.states[layer].backward.h, want["h"], **TOL)
    np.testing.assert_allclose(run.states[layer].backward.c, want["c"], **TOL)
    with pytest.raises(rnnlens.OptionError, match="masked"):
        rnnlens.intervene(model, x, rnnlens.Edit(layer, 4, field="c", target="write", scale=0.0),
                          seq_lengths=lengths)  # fmt: skip


def test_flax_write_edits_on_cells_called_directly_and_nnx() -> None:
    """A GRUCell the user calls step by step (steps counted by its calls), and an nnx LSTM."""
    import flax.linen as nn

    class Looped(nn.Module):
        @nn.compact
        def __call__(self, x: Any) -> Any:
            cell = nn.GRUCell(U, name="looped")
            h = cell.initialize_carry(jax.random.key(0), x[:, 0].shape)
            for t in range(x.shape[1]):
                h, _ = cell(h, x[:, t])
            return h

    x = np.random.default_rng(4).normal(size=(N, T, F)).astype(np.float32)
    module = Looped()
    variables = module.init(jax.random.key(1), x)
    model = module.bind(variables)
    from flax_nets import reference_weights

    edit = rnnlens.Edit("looped", 2, field="h", units=[1, 3], target="write", add=0.75)
    run = rnnlens.intervene(model, x, edit)
    ref = {"forward": reference_weights("gru", variables["params"]["looped"])}
    want = _reference("gru", ref, {}, x, "forward", [edit])
    np.testing.assert_allclose(run.states["looped"].h, want["h"], **TOL)
    np.testing.assert_allclose(np.asarray(run.outputs), want["h"][:, -1], **TOL)

    rnn = nnx.RNN(nnx.LSTMCell(F, U, rngs=nnx.Rngs(1)), rngs=nnx.Rngs(2))
    cell = rnn.cell

    def v(a: Any) -> np.ndarray:
        return np.asarray(a[...] if isinstance(a, nnx.Variable) else a)

    def cat(names: tuple[str, ...], what: str) -> np.ndarray:
        return np.concatenate([v(getattr(getattr(cell, n), what)) for n in names], -1)

    nref = {"forward": {"kernel": cat(("ii", "if_", "ig", "io"), "kernel"),
                        "recurrent_kernel": cat(("hi", "hf", "hg", "ho"), "kernel"),
                        "recurrent_bias": cat(("hi", "hf", "hg", "ho"), "bias")}}  # fmt: skip
    edit = rnnlens.Edit("cell", 1, field="c", target="write", set=0.5)
    before = rnnlens.adapters.model_digest(rnn)
    run = rnnlens.intervene(rnn, x, edit)
    assert rnnlens.adapters.model_digest(rnn) == before
    want = _reference("lstm", nref, {}, x, "forward", [edit])
    np.testing.assert_allclose(run.states["cell"].h, want["h"], **TOL)
    np.testing.assert_allclose(run.states["cell"].c, want["c"], **TOL)


def test_flax_write_edit_refusals() -> None:
    model, layer, _ = build("simple", False, F, U, 1)
    x = np.zeros((1, T, F), np.float32)
    with pytest.raises(rnnlens.FieldNotAvailableError, match="MGU"):
        rnnlens.intervene(model, x, rnnlens.Edit(layer, 1, target="write", scale=0.0))
    model, layer, _ = build("lstm", False, F, U, 1)
    with pytest.raises(rnnlens.FieldNotAvailableError, match="field='c'"):
        rnnlens.intervene(model, x, rnnlens.Edit(layer, 1, field="h", target="write", scale=0.0))


def test_flax_write_edit_uses_the_cells_own_activation() -> None:
    """An LSTM cell with ``activation_fn=relu``: h is formed from the edited c with that function."""
    import flax.linen as nn
    from flax_nets import reference_weights

    rnn = nn.RNN(nn.LSTMCell(U, activation_fn=nn.relu, name="cell"), return_carry=True)
    x = np.random.default_rng(8).normal(size=(N, T, F)).astype(np.float32)
    variables = rnn.init(jax.random.key(2), x)
    model = rnn.bind(variables)
    layer = next(iter(rnnlens.trace(model, x)))
    edit = rnnlens.Edit(layer, 2, field="c", units=[0, 1], target="write", add=-1.0)
    run = rnnlens.intervene(model, x, edit)
    ref = {"forward": {**reference_weights("lstm", variables["params"]["cell"]),
                       "activation": lambda a: np.maximum(a, 0.0)}}  # fmt: skip
    want = _reference("lstm", ref, {}, x, "forward", [edit])
    np.testing.assert_allclose(run.states[layer].h, want["h"], **TOL)
    np.testing.assert_allclose(run.states[layer].c, want["c"], **TOL)
