"""A feature loaded into the viewer (``rnnlens view STORE --feature depth.npy``): every unit's
Pearson r with it over the store's valid steps, for the panel that colours units by it.

The r values are the ones :func:`rnnlens.rank_units` gives (the same streamed sums, read a
block of samples at a time), computed once per (layer, field, direction) and kept.

Example:
    >>> import numpy as np, os, tempfile
    >>> from rnnlens.testing.stores import write_store
    >>> from rnnlens.viewer.store import StoreView
    >>> h = np.zeros((4, 5, 3), "float32"); h[..., 1] = np.arange(5)
    >>> view = StoreView(write_store(os.path.join(tempfile.mkdtemp(), "s.zarr"), h))
    >>> f = Feature(np.tile(np.arange(5.0), (4, 1)), view, name="position")
    >>> [round(v, 6) for v in f.correlation(view, "lstm", "h", "forward")["r"]]
    [0.0, 1.0, 0.0]
"""

from __future__ import annotations

import os
import threading
from typing import Any

import numpy as np

from ..analysis.pearson import stream
from ..analysis.probes import _feature
from ..errors import InputError
from .store import StoreView

__all__ = ["Feature"]


class Feature:
    """A feature per (sample, time), or per sample (repeated over time), of the viewed store."""

    def __init__(self, values: Any, view: StoreView, *, name: str = "feature"):
        f = np.asarray(values)
        if not np.issubdtype(f.dtype, np.number) and f.dtype != bool:
            raise InputError(f"--feature must be numeric; {name!r} has dtype {f.dtype}.")
        try:
            flat = _feature(f, view.n_samples, view.max_time)
        except InputError as e:
            raise InputError(f"--feature {name!r} of the store: {e}") from None
        self.y = flat[view.mask.reshape(-1)]  # the valid points, sample-major
        if not np.all(np.isfinite(self.y)):
            raise InputError(f"--feature {name!r} has NaN or infinite values at valid steps.")
        self.name = name
        self._cache: dict[tuple[str, str, str], dict[str, Any]] = {}
        self._lock = threading.Lock()

    @classmethod
    def load(cls, path: str | os.PathLike[str], view: StoreView) -> Feature:
        """Read a ``.npy`` file (never unpickled)."""
        try:
            values = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise InputError(f"Cannot read --feature {os.fspath(path)!r} as .npy: {e}") from None
        return cls(values, view, name=os.path.basename(os.fspath(path)))

    def correlation(self, view: StoreView, layer: str, field: str, direction: str) -> dict[str, Any]:
        """``r`` per unit (0 where a unit or the feature is constant), ``top`` units by |r|."""
        key = (layer, field, direction)
        with self._lock:
            if key not in self._cache:
                arr, gate = view._array(layer, field, direction)
                r, _ = stream(arr, view.mask, self.y, None, view.block_samples, gate)
                order = np.argsort(-np.abs(r), kind="stable")
                self._cache[key] = {
                    "feature": self.name,
                    "n_points": int(self.y.size),
                    "r": [float(v) for v in r],
                    "top": [int(u) for u in order[:20]],
                }
            return self._cache[key]
