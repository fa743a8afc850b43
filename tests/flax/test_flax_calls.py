"""Calls: chained calls of one nn.RNN in one model call joined into one entry (``calls="join"``),
and ``rnnlens.record`` of a linen and an nnx model across the user's own calls, against one trace
of the whole sequence and a per-step loop of the cell's own ``__call__``. ``rtol = atol = 1e-5``."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import rnnlens

pytest.importorskip("flax")
import flax.linen as nn
import jax

from flax import nnx

TOL = {"rtol": 1e-5, "atol": 1e-5}
F, U = 3, 4


def _x(seed: int = 0, n: int = 2, t: int = 7) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, t, F)).astype(np.float32)


class _Twice(nn.Module):
    """One RNN called on two chunks, the second from the first's carry; then once afresh."""

    @nn.compact
    def __call__(self, x: Any) -> Any:
        rnn = nn.RNN(nn.LSTMCell(U, name="dec"), return_carry=True)
        carry, a = rnn(x[:, :3])
        _, b = rnn(x[:, 3:], initial_carry=carry)
        _, fresh = rnn(x[:, 3:])
        return a, b, fresh


def _loop(params: Any, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    cell = nn.LSTMCell(U)
    carry = cell.initialize_carry(jax.random.key(0), x[:, 0].shape)
    hs, cs = [], []
    for t in range(x.shape[1]):
        carry, _ = cell.apply({"params": params}, carry, x[:, t])
        cs.append(np.asarray(carry[0]))
        hs.append(np.asarray(carry[1]))
    return np.stack(hs, 1), np.stack(cs, 1)


def test_chained_calls_are_one_entry_and_calls_each_keeps_them_apart() -> None:
    module, x = _Twice(), _x()
    variables = module.init(jax.random.key(0), x)
    model = module.bind(variables)
    states = rnnlens.trace(model, x)
    assert list(states) == ["dec", "dec#2"]
    h, c = _loop(variables["params"]["dec"], x)
    np.testing.assert_allclose(states["dec"].h, h, **TOL)
    np.testing.assert_allclose(states["dec"].c, c, **TOL)
    assert states["dec"].gates.array.shape == (2, 7, 4, U)
    np.testing.assert_allclose(states["dec#2"].h, _loop(variables["params"]["dec"], x[:, 3:])[0], **TOL)
    each = rnnlens.trace(model, x, calls="each")
    assert list(each) == ["dec", "dec#1", "dec#2"]
    np.testing.assert_array_equal(each["dec#1"].h, states["dec"].h[:, 3:])


def test_record_joins_a_linen_stream_and_leaves_the_model_as_it_was() -> None:
    rnn = nn.RNN(nn.GRUCell(U), return_carry=True)
    x = _x(1)
    model = rnn.bind(rnn.init(jax.random.key(1), x))
    before = rnnlens.adapters.model_digest(model)
    outs = []
    with rnnlens.record(model) as rec:
        carry = None
        for lo in range(0, 7, 3):  # chunks of 3, 3, 1 steps, the carry fed back
            carry, y = model(x[:, lo : lo + 3], **({} if carry is None else {"initial_carry": carry}))
            outs.append(np.asarray(y))
        model(x[:, :2])  # a fresh call: an entry of its own
    whole = rnnlens.trace(model, x)["cell"]
    assert list(rec.states) == ["cell", "cell#3"]
    np.testing.assert_allclose(rec.states["cell"].h, whole.h, **TOL)
    np.testing.assert_allclose(rec.states["cell"].gates.array, whole.gates.array, **TOL)
    np.testing.assert_array_equal(np.concatenate(outs, 1), np.asarray(rnn.apply(model.variables, x)[1]))
    assert [(c.name, c.entry, c.start, c.stop) for c in rec.calls] == [
        ("cell", "cell", 0, 3), ("cell#1", "cell", 3, 6), ("cell#2", "cell", 6, 7), ("cell#3", "cell#3", 0, 2)
    ]  # fmt: skip
    np.testing.assert_allclose(rec.states["cell#3"].h, whole.h[:, :2], **TOL)
    assert rnnlens.adapters.model_digest(model) == before
    y = model(x)  # nothing left installed: the model runs as itself
    np.testing.assert_array_equal(np.asarray(y[1]), np.asarray(rnn.apply(model.variables, x)[1]))


def test_record_follows_an_nnx_model_and_puts_its_class_back() -> None:
    model = nnx.RNN(nnx.LSTMCell(F, U, rngs=nnx.Rngs(0)), return_carry=True)
    cls = type(model)
    x = _x(2)
    with rnnlens.record(model, fields=("h",)) as rec:
        carry, _ = model(x[:, :4])
        model(x[:, 4:], initial_carry=carry)
    assert type(model) is cls
    whole = rnnlens.trace(model, x)
    (name,) = list(whole)
    assert list(rec.states) == [name] and rec.states[name].fields == ("h",)
    np.testing.assert_allclose(rec.states[name].h, whole[name].h, **TOL)


def test_record_written_as_it_goes(tmp_path: Any) -> None:
    pytest.importorskip("zarr")
    rnn = nn.RNN(nn.OptimizedLSTMCell(U), return_carry=True)
    x = _x(3, t=8)
    model = rnn.bind(rnn.init(jax.random.key(2), x))
    with rnnlens.record(model, to=tmp_path / "rec", flush_every=2) as rec:
        carry = None
        for lo in range(0, 8, 2):
            carry, _ = model(x[:, lo : lo + 2], **({} if carry is None else {"initial_carry": carry}))
    whole = rnnlens.trace(model, x)["cell"]
    np.testing.assert_allclose(rec.states["cell"].h, whole.h, **TOL)
    np.testing.assert_allclose(rec.states["cell"].c, whole.c, **TOL)
    assert [c.entry for c in rec.calls] == ["cell"] * 4
