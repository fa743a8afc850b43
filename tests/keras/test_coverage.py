"""Model shapes people build: stacked, encoder-decoder with initial_state, nested, files, several inputs."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import rnnlens
from keras_helpers import canonical_weights
from rnnlens.testing import reference_rnn

keras = pytest.importorskip("keras")
L = keras.layers

RNG = np.random.default_rng(7)
X = RNG.normal(size=(3, 6, 4)).astype("float32")


def _ref(layer, x, **kw):  # type: ignore[no-untyped-def]
    w = canonical_weights(layer.cell)
    return reference_rnn(
        kw.pop("kind", "lstm"), x, w["kernel"], w["recurrent_kernel"], w["bias"], w["recurrent_bias"], **kw
    )


def test_encoder_decoder_initial_state_and_return_state() -> None:
    enc_in = keras.Input((6, 4))
    dec_in = keras.Input((5, 2))
    enc = L.LSTM(8, return_state=True, name="encoder")
    _, h, c = enc(enc_in)
    dec = L.LSTM(8, return_sequences=True, name="decoder")
    y = dec(dec_in, initial_state=[h, c])
    model = keras.Model([enc_in, dec_in], L.Dense(1)(y))
    xd = RNG.normal(size=(3, 5, 2)).astype("float32")

    states = rnnlens.trace(model, [X, xd])

    assert list(states) == ["encoder", "decoder"]
    # h comes from the kernel itself: bitwise (on torch the eager emitter may round an ulp
    # differently from Keras' own loop: README's rtol 1e-6). c is rebuilt from the gates
    # (another summation order), so it equals the state return_state=True gives to float32
    # rounding.
    _, h_own, c_own = map(keras.ops.convert_to_numpy, keras.Model(enc_in, enc.output)(X))
    np.testing.assert_allclose(states["encoder"].last("c"), c_own, rtol=1e-5, atol=1e-6)
    if keras.backend.backend() == "torch":
        np.testing.assert_allclose(states["encoder"].last(), h_own, rtol=1e-6, atol=1e-7)
    else:
        np.testing.assert_array_equal(states["encoder"].last(), h_own)
    ref = _ref(dec, xd, h0=h_own, c0=c_own)
    np.testing.assert_allclose(states["decoder"].h, ref["h"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(states["decoder"].c, ref["c"], rtol=1e-5, atol=1e-5)
    # dict input by input name works too
    by_name = rnnlens.trace(model, {model.inputs[0].name: X, model.inputs[1].name: xd}, layers="decoder")
    # (the encoder here runs its own kernel, above the emitter: its state may differ by an ulp)
    np.testing.assert_allclose(by_name["decoder"].h, states["decoder"].h, rtol=1e-6, atol=1e-7)


def test_stacked_sequential_without_input_after_fit() -> None:
    model = keras.Sequential(
        [
            L.LSTM(5, return_sequences=True, name="l1"),
            L.GRU(4, return_sequences=True, name="l2"),
            L.SimpleRNN(3, name="l3"),
            L.Dense(1),
        ]
    )
    model.compile("sgd", "mse")
    model.fit(X, np.zeros((3, 1)), epochs=1, verbose=0)

    states = rnnlens.trace(model, X)

    assert [(s, states[s].kind) for s in states] == [("l1", "lstm"), ("l2", "gru"), ("l3", "simple")]
    assert states["l2"].fields == ("h", "gates") and states["l3"].fields == ("h",)
    r1 = _ref(model.layers[0], X)
    r2 = _ref(model.layers[1], r1["h"], kind="gru", reset_after=True)
    np.testing.assert_allclose(states["l2"].h, r2["h"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(states["l2"].gates.array, r2["gates"], rtol=1e-5, atol=1e-5)


def test_nested_sequential_inside_functional_with_embedding_mask() -> None:
    inner = keras.Sequential([L.LSTM(4, return_sequences=True, name="inner_lstm"), L.Dense(3)], name="block")
    inp = keras.Input((None,), dtype="int32")
    h = L.Embedding(20, 6, mask_zero=True)(inp)
    h = inner(h)
    out = L.GRU(2, go_backwards=True, name="top_gru")(h)
    model = keras.Model(inp, out)
    x = np.array([[3, 4, 5, 0], [1, 0, 0, 0], [0, 0, 7, 8]])  # right, heavy and left padding

    states = rnnlens.trace(model, x)

    assert list(states) == ["inner_lstm", "top_gru"]
    assert states["top_gru"].directions.keys() == {"backward"}
    np.testing.assert_array_equal(states.mask, x != 0)
    np.testing.assert_allclose(model.predict(x, verbose=0), states["top_gru"].last(), rtol=1e-6, atol=1e-7)


def test_unroll_and_no_bias_and_model_from_keras_file(tmp_path) -> None:  # type: ignore[no-untyped-def]
    model = keras.Sequential(
        [keras.Input((6, 4)), L.LSTM(3, unroll=True, use_bias=False, return_sequences=True, name="lstm")]
    )
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)

    states = rnnlens.trace(loaded, X)

    np.testing.assert_array_equal(states["lstm"].h, loaded.predict(X, verbose=0))
    ref = _ref(loaded.layers[0], X)
    np.testing.assert_allclose(states["lstm"].c, ref["c"], rtol=1e-5, atol=1e-5)


class MinimalCell(keras.layers.Layer):
    """A cell rnnlens does not know: h_t = tanh(x W + h U)."""

    def __init__(self, units, **kw):  # type: ignore[no-untyped-def]
        super().__init__(**kw)
        self.units = units
        self.state_size = units

    def build(self, input_shape):  # type: ignore[no-untyped-def]
        self.w = self.add_weight(shape=(input_shape[-1], self.units))
        self.u = self.add_weight(shape=(self.units, self.units))

    def call(self, x, states):  # type: ignore[no-untyped-def]
        h = keras.ops.tanh(keras.ops.matmul(x, self.w) + keras.ops.matmul(states[0], self.u))
        return h, [h]


def test_unknown_cell_gives_h_with_a_warning() -> None:
    inp = keras.Input((6, 4))
    layer = L.RNN(MinimalCell(3), return_sequences=True, name="custom")
    model = keras.Model(inp, layer(inp))
    with pytest.warns(rnnlens.RnnLensWarning, match="c and gates need"):
        states = rnnlens.trace(model, X)
    assert states["custom"].kind == "rnn" and states["custom"].fields == ("h",)
    np.testing.assert_array_equal(states["custom"].h, model.predict(X, verbose=0))
    with pytest.raises(rnnlens.FieldNotAvailableError):
        _ = states["custom"].c


def test_subclassed_lstm_cell_with_other_maths_is_not_trusted() -> None:
    class HalfLSTMCell(L.LSTMCell):
        def call(self, inputs, states, training=False):  # type: ignore[no-untyped-def]
            h, (h2, c) = super().call(inputs, states, training=training)
            return h * 0.5, [h2 * 0.5, c]

    inp = keras.Input((6, 4))
    layer = L.RNN(HalfLSTMCell(3), return_sequences=True, name="half")
    model = keras.Model(inp, layer(inp))
    with warnings.catch_warnings(record=True):
        states = rnnlens.trace(model, X)
    assert states["half"].kind == "rnn"  # no wrong gates are invented for it


def test_rnn_wrapping_a_known_cell_gets_gates() -> None:
    inp = keras.Input((6, 4))
    layer = L.RNN(L.GRUCell(3, reset_after=False), return_sequences=True, name="gru_rnn")
    model = keras.Model(inp, layer(inp))
    states = rnnlens.trace(model, X)
    ref = _ref(layer, X, kind="gru", reset_after=False)
    np.testing.assert_allclose(states["gru_rnn"].gates.array, ref["gates"], rtol=1e-5, atol=1e-5)


def test_user_mask_argument_and_batching() -> None:
    inp = keras.Input((6, 4))
    model = keras.Model(inp, L.LSTM(3, return_sequences=True, name="lstm")(inp))
    mask = np.ones((3, 6), bool)
    mask[0, 4:] = False
    whole = rnnlens.trace(model, X, mask=mask)
    batched = rnnlens.trace(model, X, mask=mask, batch_size=2)
    # BLAS may round a row differently in a smaller matrix: equal to float32 rounding
    np.testing.assert_allclose(whole["lstm"].c, batched["lstm"].c, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(whole.mask, mask)
    np.testing.assert_array_equal(whole["lstm"].h[0, 5], whole["lstm"].h[0, 3])
    ref = _ref(model.layers[-1], X, mask=mask)
    np.testing.assert_allclose(whole["lstm"].c, ref["c"], rtol=1e-5, atol=1e-5)


def test_repr_and_describe() -> None:
    inp = keras.Input((6, 4))
    model = keras.Model(inp, L.Bidirectional(L.GRU(3), name="bi")(inp))
    d = rnnlens.describe(model)
    assert d.names == ["bi"] and d[0].directions == ("forward", "backward") and d[0].units == 3
    assert "Bidirectional(GRU" in repr(d)
    states = rnnlens.trace(model, X)
    text = repr(states)
    assert "bi" in text and "gru" in text and "3×6×6" in text
    assert states["bi"].gates["z"].shape == (3, 6, 6)
