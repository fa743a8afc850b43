"""The Flax adapter against a per-step loop of each cell's own ``__call__`` (same parameters) and
the NumPy reference: h, c and gates of LSTMCell, OptimizedLSTMCell, GRUCell, MGUCell and
SimpleCell; nn.RNN reverse / keep_order / seq_lengths, Bidirectional, cells the user drives in a
Python loop or an nn.scan; interventions; checkpoints; identity. float32 models against float64
references: ``rtol = atol = 1e-5``."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import rnnlens
from rnnlens.testing import reference_rnn, sigmoid

pytest.importorskip("flax")
import flax.linen as nn
import jax
from flax_nets import CELLS, build, h_of

TOL = {"rtol": 1e-5, "atol": 1e-5}
F, U = 3, 4


def _x(seed: int = 0, n: int = 3, t: int = 6) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, t, F)).astype(np.float32)


def _loop(
    kind: str, params: Any, x: np.ndarray, *, reverse: bool = False
) -> tuple[np.ndarray, np.ndarray | None]:
    """h (and c) of the cell's own __call__, one step at a time, eager, input time order."""
    cell = CELLS[kind](U)
    carry = cell.initialize_carry(jax.random.key(0), x[:, 0].shape)
    hs, cs = np.zeros(x.shape[:2] + (U,)), np.zeros(x.shape[:2] + (U,))
    for t in range(x.shape[1])[::-1] if reverse else range(x.shape[1]):
        carry, y = cell.apply({"params": params}, carry, x[:, t])
        hs[:, t] = h_of(carry)
        np.testing.assert_array_equal(np.asarray(y), h_of(carry))
        if isinstance(carry, tuple):
            cs[:, t] = np.asarray(carry[0])
    return hs, (cs if kind.endswith("lstm") else None)


def _mgu_reference(p: Any, x: np.ndarray, reverse: bool = False) -> dict[str, np.ndarray]:
    """MGU in float64, step by step, written from its paper's equations (Flax's variant)."""
    w = {k: {a: np.asarray(b, np.float64) for a, b in v.items()} for k, v in p.items()}
    n, t, _ = x.shape
    h = np.zeros((n, U))
    out, gates = np.zeros((n, t, U)), np.zeros((n, t, 2, U))
    for s in range(t)[::-1] if reverse else range(t):
        f = sigmoid(x[:, s] @ w["if"]["kernel"] + w["if"]["bias"] + h @ w["hf"]["kernel"])
        cand = np.tanh(
            x[:, s] @ w["in"]["kernel"] + w["in"]["bias"] + f * (h @ w["hn"]["kernel"] + w["hn"]["bias"])
        )
        h = (1 - f) * cand + f * h
        out[:, s], gates[:, s, 0], gates[:, s, 1] = h, f, cand
    return {"h": out, "gates": gates}


@pytest.mark.parametrize("kind", list(CELLS))
def test_every_cell_equals_a_loop_of_its_own_call_and_the_reference(kind: str) -> None:
    model, layer, ref = build(kind, False, F, U, 1)
    params = model.variables["params"]["rnn"]
    x = _x()
    ls = rnnlens.trace(model, x)[layer]
    assert ls.spec.kind == {"optimized_lstm": "lstm"}.get(kind, kind)
    h, c = _loop(kind, params, x)
    np.testing.assert_allclose(ls.h, h, **TOL)
    if c is not None:
        np.testing.assert_allclose(ls.c, c, **TOL)
    if kind == "mgu":
        want = _mgu_reference(params, x)
    else:
        want = reference_rnn({"optimized_lstm": "lstm"}.get(kind, kind), x, **ref["forward"])
    np.testing.assert_allclose(ls.h, want["h"], **TOL)
    if "gates" in want:
        np.testing.assert_allclose(ls.gates.array, want["gates"], **TOL)
    carry, _ = model(x)
    np.testing.assert_allclose(ls.last(), h_of(carry), **TOL)


@pytest.mark.parametrize("kind", ["optimized_lstm", "mgu"])
def test_bidirectional_with_seq_lengths_carries_the_state(kind: str) -> None:
    model, layer, ref = build(kind, True, F, U, 2)
    x, lengths = _x(3), np.array([6, 2, 4])
    ls = rnnlens.trace(model, x, seq_lengths=lengths)[layer]
    valid = np.arange(6)[None, :] < lengths[:, None]
    assert (ls.mask == valid).all() and ls.spec.directions == ("forward", "backward")
    params = model.variables["params"]
    for direction, name in (("forward", "fwd"), ("backward", "bwd")):
        reverse = direction == "backward"
        if kind == "mgu":
            for i, n in enumerate(lengths):
                one = _mgu_reference(params[name], x[i : i + 1, :n], reverse)
                np.testing.assert_allclose(ls.directions[direction].h[i, :n], one["h"][0], **TOL)
                np.testing.assert_allclose(
                    ls.directions[direction].gates.array[i, :n], one["gates"][0], **TOL
                )
            gates = ls.directions[direction].gates.array
            assert np.isnan(gates[~valid]).all() and not np.isnan(gates[valid]).any()
            continue
        want = reference_rnn("lstm", x, mask=valid, **ref[direction])
        d = ls.directions[direction]
        np.testing.assert_allclose(d.h, want["h"], **TOL)
        np.testing.assert_allclose(d.c, want["c"], **TOL)
        np.testing.assert_allclose(d.gates.array, want["gates"], **TOL)
    (fwd, bwd), _ = model(x, seq_lengths=lengths)
    np.testing.assert_allclose(ls.last(), np.concatenate([h_of(fwd), h_of(bwd)], axis=-1), **TOL)


class _Loops(nn.Module):
    """Cells driven by the user: a Python loop, an nn.scan, and nn.RNN reversed in order."""

    @nn.compact
    def __call__(self, x: Any) -> Any:
        cell = nn.GRUCell(U, name="looped")
        h = cell.initialize_carry(jax.random.key(0), x[:, 0].shape)
        outs = []
        for t in range(x.shape[1]):
            h, y = cell(h, x[:, t])
            outs.append(y)
        scan = nn.scan(lambda c, carry, xt: c(carry, xt), variable_broadcast="params",
                       split_rngs={"params": False}, in_axes=1, out_axes=1)  # fmt: skip
        lstm = nn.LSTMCell(U, name="scanned")
        _, ys = scan(lstm, lstm.initialize_carry(jax.random.key(0), x[:, 0].shape), x)
        back = nn.RNN(nn.SimpleCell(U, name="back"), reverse=True, keep_order=True)(x)
        return outs[-1], ys, back


def test_cells_driven_by_the_user() -> None:
    module = _Loops()
    x = _x(4)
    variables = module.init(jax.random.key(5), x)
    model = module.bind(variables)
    states = rnnlens.trace(model, x)
    assert list(states) == ["looped", "scanned", "back"]
    p = variables["params"]
    for name, kind, reverse in (
        ("looped", "gru", False),
        ("scanned", "lstm", False),
        ("back", "simple", True),
    ):
        h, c = _loop(kind, p[name], x, reverse=reverse)
        np.testing.assert_allclose(states[name].h, h, **TOL, err_msg=name)
        if c is not None:
            np.testing.assert_allclose(states[name].c, c, **TOL)
    assert states["back"].spec.directions == ("backward",)
    _, ys, back = model(x)
    np.testing.assert_allclose(states["scanned"].h, ys, **TOL)
    np.testing.assert_allclose(states["back"].h, back, **TOL)
    # an edit on a looped cell: steps counted by its calls
    edit = rnnlens.Edit("looped", 2, units=[0, 3], scale=0.0)
    run = rnnlens.intervene(model, x, edit)
    h = run.states["looped"].h
    assert (h[:, 2, [0, 3]] == 0).all()
    np.testing.assert_allclose(run.outputs[0], h[:, -1], **TOL)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_interventions_equal_the_reference_with_the_edit(kind: str) -> None:
    model, layer, ref = build(kind, False, F, U, 1)
    x = _x(6)
    edits = [rnnlens.Edit(layer, 2, units=[1, 2], scale=0.0), rnnlens.Edit(layer, slice(3, 5), add=0.5)]
    if kind == "lstm":
        edits.append(rnnlens.Edit(layer, 1, field="c", set=1.0))

    def edit(t: int, h: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if kind == "lstm" and t == 1:
            c[:] = 1.0
        if t == 2:
            h[:, [1, 2]] = 0.0
        if t in (3, 4):
            h += 0.5
        return h, c

    run = rnnlens.intervene(model, x, edits)
    want = reference_rnn(kind, x, edit=edit, **ref["forward"])
    ls = run.states[layer]
    np.testing.assert_allclose(ls.h, want["h"], **TOL)
    np.testing.assert_allclose(ls.gates.array, want["gates"], **TOL)
    carry, ys = run.outputs
    np.testing.assert_allclose(ys, want["h"], **TOL)
    np.testing.assert_allclose(h_of(carry), want["h"][:, -1], **TOL)


def test_interventions_on_a_reversed_direction_with_seq_lengths() -> None:
    model, layer, ref = build("gru", True, F, U, 2)
    x, lengths = _x(7), np.array([6, 3, 5])
    valid = np.arange(6)[None, :] < lengths[:, None]

    def edit(t: int, h: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if t == 1:
            h[:, 0] = 2.0
        return h, c

    run = rnnlens.intervene(model, x, rnnlens.Edit(layer, 1, units=0, set=2.0, direction="backward"),
                            seq_lengths=lengths)  # fmt: skip
    want = reference_rnn("gru", x, mask=valid, edit=edit, **ref["backward"])
    np.testing.assert_allclose(run.states[layer].backward.h, want["h"], **TOL)
    np.testing.assert_allclose(
        run.states[layer].forward.h, rnnlens.trace(model, x, seq_lengths=lengths)[layer].forward.h
    )
    with pytest.raises(rnnlens.OptionError, match="masked"):
        rnnlens.intervene(model, x, rnnlens.Edit(layer, 4, scale=0.0), seq_lengths=lengths)


def test_compiled_once_per_shape_and_the_model_untouched() -> None:
    from rnnlens.adapters.flax_ import run

    model, layer, _ = build("lstm", False, F, U, 9)
    before = rnnlens.adapters.model_digest(model)
    x = _x(8)
    first = rnnlens.trace(model, x)[layer].h
    again = rnnlens.trace(model, x * 1)[layer].h
    assert len(run._CACHE[id(model)]) == 1
    np.testing.assert_array_equal(first, again)
    rnnlens.trace(model, _x(8, t=4))
    assert len(run._CACHE[id(model)]) == 2
    assert rnnlens.adapters.model_digest(model) == before


def test_checkpoint_and_identity(tmp_path: Any) -> None:
    from flax import serialization

    model, layer, _ = build("gru", False, F, U, 3)
    module, variables = model.unbind()
    path = tmp_path / "w.msgpack"
    path.write_bytes(serialization.to_bytes(variables))
    loaded = rnnlens.load_model(path, module=module)
    assert rnnlens.adapters.model_digest(loaded) == rnnlens.adapters.model_digest(model)
    x = _x(2)
    np.testing.assert_array_equal(rnnlens.trace(loaded, x)[layer].h, rnnlens.trace(model, x)[layer].h)
    with pytest.raises(rnnlens.RnnLensError, match="module="):
        rnnlens.load_model(path)
    changed = jax.tree_util.tree_map(lambda a: a + 1, variables)
    assert rnnlens.adapters.model_digest(module.bind(changed)) != rnnlens.adapters.model_digest(model)
    other = type(module)(module.kind, module.units)
    assert rnnlens.adapters.model_digest(other.bind(variables)) == rnnlens.adapters.model_digest(model)
    relu = nn.RNN(nn.GRUCell(U, activation_fn=nn.relu, name="rnn"), return_carry=True)
    assert rnnlens.adapters.model_digest(relu.bind(variables)) != rnnlens.adapters.model_digest(model)


def test_unbound_modules_and_other_flax_objects_are_refused_clearly() -> None:
    with pytest.raises(rnnlens.UnsupportedModelError, match="bind"):
        rnnlens.trace(nn.RNN(nn.LSTMCell(U)), _x())
    from flax import nnx

    with pytest.raises(rnnlens.UnsupportedModelError, match="nnx Module"):
        rnnlens.trace(nnx.Rngs(0), _x())
