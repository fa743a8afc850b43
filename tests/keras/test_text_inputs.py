"""Models that take strings, as the TensorFlow text-classification tutorial builds them:
TextVectorization -> Embedding(mask_zero=True) -> Bidirectional(LSTM)."""

from __future__ import annotations

import numpy as np
import pytest

import rnnlens

keras = pytest.importorskip("keras")
pytestmark = pytest.mark.skipif(
    keras.backend.backend() != "tensorflow", reason="TextVectorization takes strings on TensorFlow only"
)

TEXTS = np.array(["the movie was great", "awful plot", "great great acting and a fine plot"])


def _model() -> keras.Model:
    keras.utils.set_random_seed(3)
    vec = keras.layers.TextVectorization(max_tokens=50, output_sequence_length=6)
    vec.adapt(TEXTS)
    inp = keras.Input((1,), dtype="string")
    h = keras.layers.Embedding(50, 8, mask_zero=True)(vec(inp))
    h = keras.layers.Bidirectional(keras.layers.LSTM(4, return_sequences=True), name="bilstm")(h)
    return keras.Model(inp, h)


def test_strings_in_states_out() -> None:
    model = _model()
    x = TEXTS[:, None]
    states = rnnlens.trace(model, x)
    ls = states["bilstm"]
    assert ls.mask.sum(axis=1).tolist() == [4, 2, 6] and ls.fields == ("h", "c", "gates")
    import tensorflow as tf

    own = np.asarray(model.predict(tf.constant(x), verbose=0))  # predict wants tf strings
    valid = ls.mask
    np.testing.assert_allclose(ls.h[valid], own[valid], rtol=1e-5, atol=1e-6)
    assert rnnlens.trace(model, [[t] for t in TEXTS])["bilstm"].h.shape == (3, 6, 8)  # a list works too
    with pytest.raises(rnnlens.InputError, match="expected strings"):
        rnnlens.trace(model, np.zeros((3, 1)))


def test_a_flat_list_of_reviews_as_the_tutorial_predicts() -> None:
    """``Input(shape=(), dtype="string")``: one string per sample, as a list, a NumPy str or
    object array, or ``tf.constant``; the mask comes from the model (Embedding mask_zero)."""
    import tensorflow as tf

    keras.utils.set_random_seed(4)
    vec = keras.layers.TextVectorization(max_tokens=50)
    vec.adapt(TEXTS)
    model = keras.Sequential(
        [keras.Input(shape=(), dtype="string"), vec, keras.layers.Embedding(50, 8, mask_zero=True),
         keras.layers.Bidirectional(keras.layers.LSTM(4), name="bilstm"), keras.layers.Dense(1)]
    )  # fmt: skip
    first = rnnlens.trace(model, TEXTS)["bilstm"]
    assert first.mask.sum(axis=1).tolist() == [4, 2, 7]
    for x in (list(TEXTS), [str(t) for t in TEXTS], TEXTS.astype(object), tf.constant(TEXTS)):
        ls = rnnlens.trace(model, x)["bilstm"]
        np.testing.assert_array_equal(ls.h, first.h)
        np.testing.assert_array_equal(ls.mask, first.mask)
    # the last valid step of each direction is what the Bidirectional layer returns
    inner = keras.Model(model.inputs, model.get_layer("bilstm").output)
    own = np.asarray(inner.predict(tf.constant(TEXTS), verbose=0))
    np.testing.assert_allclose(
        np.concatenate([first.forward.last(), first.backward.last()], 1), own, rtol=1e-5, atol=1e-6
    )
