"""Stores with known contents, written straight through rnnlens' store writer (no model):
for the viewer's tests, its screenshot and its latency measurement on 100k sequences."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..io.layout import LayerLayout, Layout, direction_path, layout_attributes, root_attributes
from ..io.zarr import StoreWriter

__all__ = ["planted_store", "write_store"]

#: fills one chunk: (start, n) -> (h of shape (n, time, units), mask of shape (n, time))
ChunkFn = Callable[[int, int], tuple[np.ndarray, np.ndarray]]


def write_store(
    path: str | os.PathLike[str],
    h: np.ndarray | ChunkFn,
    *,
    mask: np.ndarray | None = None,
    n_samples: int | None = None,
    max_time: int | None = None,
    units: int | None = None,
    layer: str = "lstm",
    batch_size: int = 256,
    backend: str = "synthetic",
) -> Path:
    """Write a one-layer, forward-only store of ``h`` (an array, or a function producing each
    chunk, for stores larger than memory) in rnnlens' layout; returns the path.

    Example:
        >>> import numpy as np, tempfile, os, rnnlens
        >>> p = write_store(os.path.join(tempfile.mkdtemp(), "s.zarr"), np.ones((3, 4, 2), "float32"))
        >>> rnnlens.open_states(p)["lstm"].h.shape
        (3, 4, 2)
    """
    root = Path(path)
    if callable(h):
        if n_samples is None or max_time is None or units is None:
            raise ValueError("A chunk function needs n_samples, max_time and units.")
        fill = h
    else:
        arr = np.asarray(h, np.float32)
        n_samples, max_time, units = arr.shape
        full_mask = np.ones(arr.shape[:2], bool) if mask is None else np.asarray(mask, bool)

        def fill(start: int, n: int) -> tuple[np.ndarray, np.ndarray]:
            return arr[start : start + n], full_mask[start : start + n]

    lay = LayerLayout(
        name=layer, kind="lstm", layer_type="LSTM", units=units, cell_units=None,
        directions=("forward",), fields=("h",), dtype="float32",
    )  # fmt: skip
    layout = Layout(max_time=max_time, backend=backend, layers=(lay,))
    root.mkdir(parents=True, exist_ok=True)
    writer = StoreWriter(root, layout, batch_size=batch_size, n_samples=n_samples)
    attrs = {
        **root_attributes(model_name=backend, batch_size=batch_size, max_time=max_time),
        **layout_attributes(layout),
    }
    writer.create(attrs)
    key = f"{direction_path(layer, 'forward')}/h"
    for index, start in enumerate(range(0, n_samples, batch_size)):
        n = min(batch_size, n_samples - start)
        values, m = fill(start, n)
        values = np.where(m[:, :, None], values, np.nan).astype(np.float32)
        chunk = {"mask": m, "lengths": m.sum(axis=1).astype(np.int32), key: values}
        writer.write(index, n, chunk)
    writer.finish(n_samples, {**attrs, "complete": True, "n_samples": n_samples})
    return root


#: where :func:`planted_store` plants its pattern: (sample, start, end) with units 3 and 7 on
PLANTED = ((5, 10, 14), (17, 3, 7), (42, 20, 24), (63, 30, 34))
#: spans where only unit 3 is on (a decoy: not a match for {3, 7})
DECOYS = ((8, 10, 14), (50, 5, 9))
#: a longer span with 3 and 7 on (matches, ranked below the exact-length ones)
LONG = (70, 2, 12)


def planted_store(
    path: str | os.PathLike[str], *, n_samples: int = 80, max_time: int = 40, units: int = 12, seed: int = 0
) -> Path:
    """A store whose units 3 and 7 are high (0.9) exactly on :data:`PLANTED` (length 4),
    on :data:`LONG` (length 10), unit 3 alone on :data:`DECOYS`; every other value is noise
    in [-1, 0.4]. Unit 5 is high on steps 8..15 of sample 5: on inside the first planted
    span but also around it, so selecting that span selects {3, 7} and not 5. The last 5
    steps of every odd sample are masked (padding)."""
    rng = np.random.default_rng(seed)
    h = rng.uniform(-1.0, 0.4, size=(n_samples, max_time, units)).astype(np.float32)
    for s, a, b in PLANTED:
        h[s, a:b, [3, 7]] = 0.9
    for s, a, b in DECOYS:
        h[s, a:b, 3] = 0.9
    s, a, b = LONG
    h[s, a:b, [3, 7]] = 0.9
    h[5, 8:16, 5] = 0.9
    mask = np.ones((n_samples, max_time), bool)
    mask[1::2, max_time - 5 :] = False
    return write_store(path, h, mask=mask, batch_size=16)
