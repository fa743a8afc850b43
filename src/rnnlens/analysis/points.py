"""The valid (sample, time) points of a traced layer, read a chunk of samples at a time from
memory or from a store, for the rankings and probes of :mod:`rnnlens.analysis.probes`.

Example:
    >>> import numpy as np
    >>> from types import SimpleNamespace
    >>> h = np.arange(12, dtype="f4").reshape(2, 3, 2)
    >>> mask = np.array([[True, True, False], [True, True, True]])
    >>> layer = SimpleNamespace(h=h, mask=mask)  # what a LayerStates has
    >>> [(v.shape, idx.tolist()) for v, idx in points({"l": layer}, "l", "h", None, chunk=8)]
    [((5, 2), [0, 1, 3, 4, 5])]
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from .pearson import values

__all__ = ["points"]


def points(
    states: Any, layer: str, field: str, direction: str | None, chunk: int
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(values of the valid steps (points, unit), their (sample, time) flat index) per sample chunk."""
    ls = states[layer]
    src = getattr(ls if direction is None else getattr(ls, direction), field)
    mask = ls.mask
    n, t = src.shape[:2]
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        m = np.ones((stop - start, t), bool) if mask is None else np.asarray(mask[start:stop], bool)
        idx = (np.arange(start, stop)[:, None] * t + np.arange(t)[None, :])[m]
        yield values(src, None, start, stop)[m.reshape(-1)], idx  # the chunk's mask read once
