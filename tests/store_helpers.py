"""Shared by the io and dask tests: a tiny Keras model with every field, and comparing Zarr
stores array by array (with zarr only)."""

from __future__ import annotations

from typing import Any

import numpy as np


def bilstm_gru_model(name: str):  # type: ignore[no-untyped-def]
    """A bidirectional LSTM into a GRU on float features: both directions, every field, two
    cell kinds. Rebuilt with the same seed, it has the same weights (and weights hash)."""
    import keras

    keras.utils.set_random_seed(7)
    inp = keras.Input((None, 3), name="features")
    b = keras.layers.Bidirectional(keras.layers.LSTM(4, return_sequences=True), name="bilstm")(inp)
    g = keras.layers.GRU(3, return_sequences=True, name="gru")(b)
    return keras.Model(inp, g, name=name)


def _group(path: Any):  # type: ignore[no-untyped-def]
    """The root group of a store: a path, or a Location (a store at a URL)."""
    import zarr

    from rnnlens.io.location import Location

    return zarr.open_group(Location.of(path).zarr_store(read_only=True), mode="r")


def stored_arrays(path: Any) -> dict[str, np.ndarray]:
    """Every array of a store, by path (read with zarr only)."""

    out: dict[str, np.ndarray] = {}

    def walk(group, prefix: str) -> None:  # type: ignore[no-untyped-def]
        for key, arr in group.arrays():
            out[f"{prefix}{key}"] = arr[...]
        for key, sub in group.groups():
            walk(sub, f"{prefix}{key}/")

    walk(_group(path), "")
    return out


def assert_same_store(a: Any, b: Any, *, complete: bool = False) -> None:
    """Every array equal bit for bit (NaN payloads included), same keys, shapes and dtypes;
    with ``complete``, both stores also hold states and are marked complete."""
    left, right = stored_arrays(a), stored_arrays(b)
    assert sorted(left) == sorted(right)
    for key in left:
        assert left[key].dtype == right[key].dtype, key
        assert left[key].shape == right[key].shape, key
        assert left[key].tobytes() == right[key].tobytes(), key
    if complete:
        assert len(left) > 2  # mask, lengths and states
        for p in (a, b):
            assert _group(p).attrs["complete"] is True
