"""Helpers for the Keras tests (importable because pytest puts tests/ on sys.path)."""

from __future__ import annotations

import numpy as np
import pytest

keras = pytest.importorskip("keras")


def seed_model():  # type: ignore[no-untyped-def]
    """The model from the seed question (Stack Overflow 46511179)."""
    inp = keras.Input(shape=(None,), dtype="int32", name="tokens")
    e = keras.layers.Embedding(10, 100, mask_zero=True, name="embedding")(inp)
    b1 = keras.layers.Bidirectional(keras.layers.LSTM(10, return_sequences=True), name="bilstm_1")(e)
    b2 = keras.layers.Bidirectional(keras.layers.LSTM(10, return_sequences=True), name="bilstm_2")(b1)
    b3 = keras.layers.Bidirectional(keras.layers.LSTM(2), name="bilstm_3")(b2)
    out = keras.layers.Dense(1, activation="sigmoid", name="dense")(b3)
    return keras.Model(inp, out)


def canonical_weights(cell) -> dict[str, np.ndarray | bool | None]:  # type: ignore[no-untyped-def]
    """A Keras cell's weights in the reference's layout (Keras' gate order is canonical)."""
    out: dict[str, np.ndarray | bool | None] = {
        "kernel": np.asarray(cell.kernel.numpy()),
        "recurrent_kernel": np.asarray(cell.recurrent_kernel.numpy()),
        "bias": None,
        "recurrent_bias": None,
    }
    if cell.use_bias:
        b = np.asarray(cell.bias.numpy())
        if b.ndim == 2:  # GRU reset_after: (input bias, recurrent bias)
            out["bias"], out["recurrent_bias"] = b[0], b[1]
        else:
            out["bias"] = b
    if hasattr(cell, "reset_after"):
        out["reset_after"] = bool(cell.reset_after)
    return out
