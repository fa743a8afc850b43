"""Helpers for the storage tests: tiny real Keras models and a bitwise store comparison."""

from __future__ import annotations

import pytest

from store_helpers import assert_same_store, bilstm_gru_model  # noqa: F401  (assert_same_store: re-exported)

keras = pytest.importorskip("keras")


def float_model():  # type: ignore[no-untyped-def]
    """Bidirectional LSTM into a GRU, float features: every field and both directions."""
    return bilstm_gru_model("float_model")


def token_model():  # type: ignore[no-untyped-def]
    """Token ids with Embedding(mask_zero=True): the model masks padding itself."""
    keras.utils.set_random_seed(11)
    inp = keras.Input((None,), dtype="int32", name="tokens")
    e = keras.layers.Embedding(12, 3, mask_zero=True, name="embedding")(inp)
    h = keras.layers.LSTM(5, return_sequences=True, name="lstm_1")(e)
    return keras.Model(inp, h, name="token_model")
