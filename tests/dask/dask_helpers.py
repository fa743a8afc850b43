"""Helpers for the distributed-extraction tests: tiny real models and a bitwise store check."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def torch_lstm():  # type: ignore[no-untyped-def]
    """Two stacked LSTM layers (entries ``lstm.l0``, ``lstm.l1``): h, c and gates."""
    import torch

    torch.manual_seed(3)
    return torch.nn.LSTM(3, 5, num_layers=2, batch_first=True)


def keras_model():  # type: ignore[no-untyped-def]
    """A bidirectional LSTM into a GRU: both directions, every field, two cell kinds."""
    import keras

    keras.utils.set_random_seed(7)
    inp = keras.Input((None, 3), name="features")
    b = keras.layers.Bidirectional(keras.layers.LSTM(4, return_sequences=True), name="bilstm")(inp)
    g = keras.layers.GRU(3, return_sequences=True, name="gru")(b)
    return keras.Model(inp, g, name="dask_keras_model")


def data(n: int, time: int = 6, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, time, 3)).astype("float32")


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
    """Every array equal bit for bit (NaN payloads included), same keys, shapes and dtypes,
    and both stores complete."""
    import zarr

    left, right = stored_arrays(a), stored_arrays(b)
    assert sorted(left) == sorted(right)
    assert len(left) > 2  # mask, lengths and states
    for key in left:
        assert left[key].dtype == right[key].dtype, key
        assert left[key].shape == right[key].shape, key
        assert left[key].tobytes() == right[key].tobytes(), key
    for p in (a, b):
        assert zarr.open_group(str(p), mode="r").attrs["complete"] is True
