"""Fixtures for the storage tests (tiny sizes: the suite runs on 2 cores)."""

from __future__ import annotations

import numpy as np
import pytest
from io_helpers import float_model, token_model

pytest.importorskip("keras")
pytest.importorskip("zarr")


@pytest.fixture(scope="session")
def fmodel():  # type: ignore[no-untyped-def]
    return float_model()


@pytest.fixture(scope="session")
def tmodel():  # type: ignore[no-untyped-def]
    return token_model()


@pytest.fixture(scope="session")
def fdata() -> np.ndarray:
    return np.random.default_rng(0).normal(size=(22, 6, 3)).astype("float32")


@pytest.fixture(scope="session")
def tdata() -> tuple[np.ndarray, np.ndarray]:
    """Token ids padded with 0 after each sequence's length, and the lengths."""
    rng = np.random.default_rng(1)
    lengths = rng.integers(1, 8, size=13)
    x = rng.integers(1, 12, size=(13, 7)).astype("int32")
    x[np.arange(7)[None, :] >= lengths[:, None]] = 0
    return x, lengths
