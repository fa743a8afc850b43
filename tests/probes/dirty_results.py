"""A module-scoped autouse fixture for the decomposition's tests: the maps' result arrays handed
out dirty (NaN, True), as a reused buffer of :mod:`rnnlens.core.buffers` can be, so that every
route must write all of what it returns. Import it into a test module to use it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest


@pytest.fixture(autouse=True, scope="module")
def dirty_results() -> Iterator[None]:
    from rnnlens.core import buffers

    real = buffers.empty

    def dirty(shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        a = real(shape, dtype)
        a.fill(np.nan if np.dtype(dtype).kind == "f" else 1)
        return a

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(buffers, "empty", dirty)
        yield
