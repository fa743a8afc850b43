"""Helpers for the distributed-extraction tests: tiny real models and a bitwise store check."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from store_helpers import assert_same_store as _same
from store_helpers import bilstm_gru_model


def torch_lstm():  # type: ignore[no-untyped-def]
    """Two stacked LSTM layers (entries ``lstm.l0``, ``lstm.l1``): h, c and gates."""
    import torch

    torch.manual_seed(3)
    return torch.nn.LSTM(3, 5, num_layers=2, batch_first=True)


def keras_model():  # type: ignore[no-untyped-def]
    """A bidirectional LSTM into a GRU: both directions, every field, two cell kinds."""
    return bilstm_gru_model("dask_keras_model")


def data(n: int, time: int = 6, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, time, 3)).astype("float32")


def assert_same_store(a: Path, b: Path) -> None:
    """Equal bit for bit, and both runs complete."""
    _same(a, b, complete=True)
