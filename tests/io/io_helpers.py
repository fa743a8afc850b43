"""Helpers for the storage tests: tiny real Keras models and a bitwise store comparison."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

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


def stored_arrays(path: Path) -> dict[str, np.ndarray]:
    """Every array of a store, by path (read with zarr only)."""
    import zarr

    out: dict[str, np.ndarray] = {}

    def walk(group, prefix: str) -> None:  # type: ignore[no-untyped-def]
        for key, arr in group.arrays():
            out[f"{prefix}{key}"] = arr[...]
        for key, sub in group.groups():
            walk(sub, f"{prefix}{key}/")

    walk(zarr.open_group(str(path), mode="r"), "")
    return out


def assert_same_store(a: Path, b: Path) -> None:
    """Every array equal bit for bit (NaN payloads included), same keys, shapes and dtypes."""
    left, right = stored_arrays(a), stored_arrays(b)
    assert sorted(left) == sorted(right)
    for key in left:
        assert left[key].dtype == right[key].dtype, key
        assert left[key].shape == right[key].shape, key
        assert left[key].tobytes() == right[key].tobytes(), key
