"""Subclassed keras.Models (a Python ``call``) on the backend KERAS_BACKEND names: trace,
intervene and record run the model's own call with rnnlens' stand-ins for its recurrent layers.

Oracles: a loop of Keras' own cell (``GRUCell`` / ``LSTMCell`` of the same config with the
layer's weights copied), called step by step (masked steps carry the state); the model's own
outputs and returned states. Tolerances: float32, ``rtol=1e-5, atol=1e-6`` against the cell
loop (another summation order than the layer's kernel); the model's own outputs are equal
(``atol=1e-6`` for edited runs, which go through rnnlens' emitter)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import rnnlens
from keras_helpers import canonical_weights
from rnnlens.errors import LayerNotFoundError, UnsupportedModelError
from rnnlens.testing import reference_rnn

keras = pytest.importorskip("keras")
L = keras.layers
ops = keras.ops
RTOL, ATOL = 1e-5, 1e-6
VOCAB, T = 12, 6
# JAX runs the model's own call op by op (eager), several seconds per trace of these models
jax_slow = pytest.mark.slow if keras.backend.backend() == "jax" else pytest.mark.filterwarnings("default")


class MyModel(keras.Model):
    """The TensorFlow "Text generation with an RNN" tutorial's model (Keras 3 spelling)."""

    def __init__(
        self, vocab_size: int = VOCAB, embedding_dim: int = 8, rnn_units: int = 5, mask: bool = False
    ):
        super().__init__()
        self.embedding = L.Embedding(vocab_size, embedding_dim, mask_zero=mask)
        self.gru = L.GRU(rnn_units, return_sequences=True, return_state=True)
        self.dense = L.Dense(vocab_size)

    def call(self, inputs, states=None, return_state=False, training=False):  # type: ignore[no-untyped-def]
        x = self.embedding(inputs, training=training)
        x, states = self.gru(x, initial_state=states, training=training)
        x = self.dense(x, training=training)
        return (x, states) if return_state else x


class Siamese(keras.Model):
    """One Bidirectional(LSTM) encoder called on two inputs, and a list of LSTMs after it."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = L.Bidirectional(L.LSTM(4, return_sequences=True))
        self.blocks = [L.LSTM(3, return_sequences=True), L.LSTM(2)]

    def call(self, x):  # type: ignore[no-untyped-def]
        a, b = self.encoder(x[:, :, :2]), self.encoder(x[:, :, 2:])
        y = self.blocks[0](a + b)
        return self.blocks[1](y)


def _np(v):  # type: ignore[no-untyped-def]
    return np.asarray(ops.convert_to_numpy(v))


def _cell_loop(layer, x, state=None, mask=None, reverse=False):  # type: ignore[no-untyped-def]
    """h (sample, time, unit) of a fresh Keras cell with ``layer``'s weights, step by step."""
    cell = type(layer.cell).from_config(layer.cell.get_config())
    n, t = x.shape[:2]
    units = layer.cell.units
    if state is None:
        state = [np.zeros((n, units), "float32") for _ in np.atleast_1d(layer.cell.state_size)]
    state = [ops.convert_to_tensor(s) for s in state]
    cell(ops.convert_to_tensor(x[:, 0]), state)  # builds it
    cell.set_weights(layer.cell.get_weights())
    hs = np.zeros((n, t, units), "float32")
    steps = range(t - 1, -1, -1) if reverse else range(t)
    for s in steps:
        _, new = cell(ops.convert_to_tensor(x[:, s]), state, training=False)
        new = list(new) if isinstance(new, (list, tuple)) else [new]
        if mask is not None:
            keep = ops.convert_to_tensor(mask[:, s : s + 1])
            new = [ops.where(keep, a, b) for a, b in zip(new, state)]
        state = new
        hs[:, s] = _np(state[0])
    return hs


def _tutorial(mask: bool = False) -> tuple[MyModel, np.ndarray]:
    model = MyModel(mask=mask)
    x = np.random.default_rng(0).integers(1, VOCAB, (3, T))
    if mask:
        x[0, 4:] = 0
    model(x)
    return model, x


@jax_slow
@pytest.mark.parametrize("mask", [False, True])
def test_tutorial_model_h_and_gates_match_keras_cells(mask: bool) -> None:
    model, x = _tutorial(mask)
    own = _np(model(x))
    states = rnnlens.trace(model, x, fields=["h", "gates"])
    assert list(states) == ["gru"]
    emb = _np(model.embedding(x))
    m = (x != 0) if mask else None
    ref = _cell_loop(model.gru, emb, mask=m)
    np.testing.assert_allclose(states["gru"].h, ref, rtol=RTOL, atol=ATOL)
    if mask:
        np.testing.assert_array_equal(states.mask, x != 0)
    # the model's own final state, and its output unchanged by the trace
    _, final = model(x, return_state=True)
    last = states["gru"].h[np.arange(3), (x != 0).sum(1) - 1 if mask else T - 1]
    np.testing.assert_allclose(last, _np(final), rtol=RTOL, atol=ATOL)
    np.testing.assert_array_equal(_np(model(x)), own)
    assert type(model.gru) is L.GRU


def test_initial_state_as_the_layer_receives_it() -> None:
    model, x = _tutorial()
    h0 = np.random.default_rng(1).normal(size=(3, 5)).astype("float32")
    states = rnnlens.trace(model, x, states=h0, return_state=True)
    ref = _cell_loop(model.gru, _np(model.embedding(x)), state=[h0])
    np.testing.assert_allclose(states["gru"].h, ref, rtol=RTOL, atol=ATOL)


@jax_slow
def test_bidirectional_called_twice_and_attribute_paths() -> None:
    model = Siamese()
    x = np.random.default_rng(2).normal(size=(2, 5, 4)).astype("float32")
    own = _np(model(x))
    states = rnnlens.trace(model, x)
    assert list(states) == ["encoder", "encoder#1", "blocks.0", "blocks.1"]
    for entry, part in (("encoder", x[:, :, :2]), ("encoder#1", x[:, :, 2:])):
        enc = model.encoder
        for direction, sub in (("forward", enc.forward_layer), ("backward", enc.backward_layer)):
            ref = _cell_loop(sub, part, reverse=direction == "backward")
            got = states[entry].directions[direction].h
            np.testing.assert_allclose(got, ref, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(states["blocks.1"].h[:, -1], own, rtol=RTOL, atol=ATOL)
    assert [s.name for s in rnnlens.describe(model)] == ["encoder", "blocks.0", "blocks.1"]
    only = rnnlens.trace(model, x, layers=["encoder#1"])
    assert list(only) == ["encoder#1"]
    with pytest.raises(LayerNotFoundError):
        rnnlens.trace(model, x, layers=["encoder#2"])


def test_intervene_matches_the_model_run_from_the_edited_state() -> None:
    model, x = _tutorial()
    k, value = 2, 0.5
    result = rnnlens.intervene(model, x, [rnnlens.Edit("gru", step=k, units=[0], set=value)])
    emb = _np(model.embedding(x))
    _, h = model.gru(emb[:, : k + 1])
    h = _np(h).copy()
    h[:, 0] = value
    rest, _ = model.gru(emb[:, k + 1 :], initial_state=h)
    np.testing.assert_allclose(_np(result.outputs)[:, k + 1 :], _np(model.dense(rest)), rtol=RTOL, atol=ATOL)
    assert np.all(result.states["gru"].h[:, k, 0] == value)


def test_record_a_generation_loop_joins_the_chained_calls() -> None:
    model, x = _tutorial()
    with rnnlens.record(model) as rec:
        states = None
        for t in range(T):
            kwargs = {} if states is None else {"states": states}
            _, states = model(x[:, t : t + 1], return_state=True, **kwargs)
    whole = rnnlens.trace(model, x)
    assert list(rec.states) == ["gru"]
    np.testing.assert_allclose(rec.states["gru"].h, whole["gru"].h, rtol=RTOL, atol=ATOL)
    assert type(model) is MyModel


def test_model_is_restored_after_an_error() -> None:
    class Broken(MyModel):
        fail = False

        def call(self, inputs, states=None, return_state=False, training=False):  # type: ignore[no-untyped-def]
            out = super().call(inputs, states, return_state, training)
            if self.fail:
                raise RuntimeError("boom")
            return out

    model = Broken()
    x = np.ones((1, 3), "int64")
    model(x)
    model.fail = True
    weights = [_np(w).copy() for w in model.weights]
    with pytest.raises(RuntimeError, match="boom"):
        rnnlens.trace(model, x)
    assert type(model.gru) is L.GRU
    for a, b in zip(weights, model.weights):
        np.testing.assert_array_equal(a, _np(b))


def test_unbuilt_model_is_refused() -> None:
    with pytest.raises(UnsupportedModelError, match="not been built"):
        rnnlens.trace(MyModel(), np.ones((1, 3), "int64"))


def test_recurrent_layer_inside_compiled_call_is_refused() -> None:
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        compile_fn = tf.function
    elif backend == "jax":
        import jax

        compile_fn = jax.jit
    else:
        pytest.skip("torch.compile traces through Python")

    class Compiled(keras.Model):
        def __init__(self) -> None:
            super().__init__()
            self.lstm = L.LSTM(3)

        def call(self, x):  # type: ignore[no-untyped-def]
            return compile_fn(lambda v: self.lstm(v))(x)

    model = Compiled()
    model.lstm(np.zeros((1, 4, 2), "float32"))
    model.built = True
    with pytest.raises(UnsupportedModelError, match="compiled code"):
        rnnlens.trace(model, np.zeros((1, 4, 2), "float32"))
    assert type(model.lstm) is L.LSTM


class _Pieces(keras.Model):  # type: ignore[misc]
    """Feeds the sequence to one recurrent layer 3 steps at a time; ``carry``: each piece starts
    from the state the previous one ended in (a chain), else from zeros (separate calls)."""

    def __init__(self, kind: str, carry: bool) -> None:
        super().__init__()
        layer = keras.layers.LSTM if kind == "lstm" else keras.layers.GRU
        self.rnn = layer(4, return_sequences=True, return_state=True)
        self.carry = carry

    def call(self, x: Any) -> Any:
        state, outs = None, []
        for k in range(0, x.shape[1], 3):
            out, *new = self.rnn(x[:, k : k + 3], initial_state=state if self.carry else None)
            state = new
            outs.append(out)
        return keras.ops.concatenate(outs, axis=1)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_calls_that_carry_the_state_on_are_joined_along_time(kind: str) -> None:
    """Oracle: the reference loop over the whole sequence with the layer's weights (chained),
    and the per-piece reference from zeros (not chained)."""
    x = np.random.default_rng(3).normal(size=(2, 9, 3)).astype("float32")
    model = _Pieces(kind, carry=True)
    model(x)
    states = rnnlens.trace(model, x)
    assert list(states) == ["rnn"]
    ref = reference_rnn(kind, x, **canonical_weights(model.rnn.cell))  # type: ignore[arg-type]
    np.testing.assert_allclose(states["rnn"].h, ref["h"], rtol=1e-5, atol=1e-5)
    if kind == "lstm":
        np.testing.assert_allclose(states["rnn"].c, ref["c"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(states["rnn"].gates.array, ref["gates"], rtol=1e-5, atol=1e-5)
    each = rnnlens.trace(model, x, calls="each")
    assert list(each) == ["rnn", "rnn#1", "rnn#2"]
    np.testing.assert_array_equal(each["rnn#2"].h, states["rnn"].h[:, 6:])

    apart = _Pieces(kind, carry=False)
    apart(x)
    apart.set_weights(model.get_weights())
    separate = rnnlens.trace(apart, x)
    assert list(separate) == ["rnn", "rnn#1", "rnn#2"]
    piece = reference_rnn(kind, x[:, 3:6], **canonical_weights(model.rnn.cell))  # type: ignore[arg-type]
    np.testing.assert_allclose(separate["rnn#1"].h, piece["h"], rtol=1e-5, atol=1e-5)
