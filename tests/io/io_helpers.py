"""Helpers for the storage tests: tiny real Keras models and a bitwise store comparison."""

from __future__ import annotations

import pytest

from store_helpers import assert_same_store  # noqa: F401  (re-exported for the io tests)

keras = pytest.importorskip("keras")


def float_model():  # type: ignore[no-untyped-def]
    """Bidirectional LSTM into a GRU, float features: every field and both directions."""
    keras.utils.set_random_seed(7)
    inp = keras.Input((None, 3), name="features")
    b = keras.layers.Bidirectional(keras.layers.LSTM(4, return_sequences=True), name="bilstm")(inp)
    g = keras.layers.GRU(3, return_sequences=True, name="gru")(b)
    return keras.Model(inp, g, name="float_model")


def token_model():  # type: ignore[no-untyped-def]
    """Token ids with Embedding(mask_zero=True): the model masks padding itself."""
    keras.utils.set_random_seed(11)
    inp = keras.Input((None,), dtype="int32", name="tokens")
    e = keras.layers.Embedding(12, 3, mask_zero=True, name="embedding")(inp)
    h = keras.layers.LSTM(5, return_sequences=True, name="lstm_1")(e)
    return keras.Model(inp, h, name="token_model")


