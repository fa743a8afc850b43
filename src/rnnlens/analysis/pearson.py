"""Pearson r of every unit with a feature, from sums streamed chunk by chunk — in this process or
on the workers of a Dask cluster (each task reads one chunk of a stored layer).

The sums are added in chunk order in both cases, from the same chunks, so a Dask run gives the
same bits as the in-process stream. Each chunk contributes ``Σx, Σx², Σxy`` per unit and, for the
permutation p-values, ``xᵀ P`` where ``P`` holds the chunk's rows of the permuted features.

Example:
    >>> import numpy as np
    >>> x = np.arange(12.0).reshape(6, 2); y = np.arange(6.0)
    >>> acc = PearsonSums(y, None)
    >>> acc.add(*chunk_sums(x[:4], y[:4], None)); acc.add(*chunk_sums(x[4:], y[4:], None))
    >>> np.round(acc.finish()[0], 6)
    array([1., 1.])
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from ..errors import OptionError
from ..io.zarr import open_states

__all__ = ["PearsonSums", "chunk_sums", "on_dask", "stream", "values"]


def values(src: Any, mask: Any, start: int, stop: int, gate: int | None = None) -> np.ndarray:
    """The valid steps of samples ``[start, stop)`` of ``src`` as (points, unit) float64."""
    v = np.asarray(src[start:stop], dtype=np.float64)
    if gate is not None:
        v = v[:, :, gate]
    v = v.reshape(v.shape[0], v.shape[1], -1)
    if mask is None:
        return v.reshape(-1, v.shape[-1])
    return v[np.asarray(mask[start:stop], bool)]


def chunk_sums(x: np.ndarray, y: np.ndarray, perms: np.ndarray | None) -> tuple[np.ndarray, Any]:
    """One chunk's ``(Σx, Σx², Σxy)`` stacked (3, unit), and ``xᵀ perms`` (unit, permutation)."""
    sums = np.stack([x.sum(0), (x * x).sum(0), (x * y[:, None]).sum(0)])
    return sums, (None if perms is None else x.T @ perms)


class PearsonSums:
    """Adds chunks' sums in order; ``finish`` gives (r, p-values or None)."""

    def __init__(self, y_valid: np.ndarray, perms: np.ndarray | None):
        self.y, self.perms = y_valid, perms
        self.sums: Any = 0
        self.perm_xy: Any = 0

    def add(self, sums: np.ndarray, perm_xy: Any) -> None:
        self.sums = self.sums + sums
        if perm_xy is not None:
            self.perm_xy = self.perm_xy + perm_xy

    def finish(self) -> tuple[np.ndarray, np.ndarray | None]:
        m = self.y.size
        sx, sxx, sxy = self.sums
        sy, syy = self.y.sum(), (self.y * self.y).sum()
        denom = np.sqrt(np.maximum(m * sxx - sx * sx, 0) * max(m * syy - sy * sy, 0))
        safe = np.where(denom > 0, denom, 1)
        r = np.where(denom > 0, (m * sxy - sx * sy) / safe, 0.0)
        if self.perms is None:
            return r, None
        r_perm = (m * self.perm_xy - sx[:, None] * sy) / safe[:, None]
        n_perm = self.perms.shape[1]
        p = (1 + (np.abs(r_perm) >= np.abs(r)[:, None] - 1e-12).sum(1)) / (1 + n_perm)
        return r, p


def _bounds(n: int, chunk: int) -> Iterator[tuple[int, int]]:
    for start in range(0, n, chunk):
        yield start, min(start + chunk, n)


def stream(
    src: Any, mask: Any, y_valid: np.ndarray, perms: np.ndarray | None, chunk: int, gate: int | None = None
) -> tuple[np.ndarray, np.ndarray | None]:
    """Pearson r (and p) of ``src`` (sample, time, ...) with ``y_valid``, read ``chunk`` samples at a time."""
    acc = PearsonSums(y_valid, perms)
    offset = 0
    for start, stop in _bounds(int(src.shape[0]), chunk):
        x = values(src, mask, start, stop, gate)
        k = x.shape[0]
        p = None if perms is None else perms[offset : offset + k]
        acc.add(*chunk_sums(x, y_valid[offset : offset + k], p))
        offset += k
    return acc.finish()


def _task(
    path: Any, layer: str, field: str, direction: str | None, start: int, stop: int, y: Any, perms: Any
) -> Any:
    """On a worker: one chunk's sums, read from the store at ``path`` (a Location: its URL and
    storage options travel with it)."""
    states = open_states(path, verify=False)  # the client verified the store once
    ls = states[layer]
    x = values(getattr(ls if direction is None else getattr(ls, direction), field), ls.mask, start, stop)
    return chunk_sums(x, y, perms)


def on_dask(
    client: Any,
    states: Any,
    layer: str,
    field: str,
    direction: str | None,
    valid: np.ndarray,
    y_valid: np.ndarray,
    perms: np.ndarray | None,
    chunk: int,
) -> tuple[np.ndarray, np.ndarray | None]:
    """The same sums as :func:`stream`, one Dask task per chunk of a stored layer; ``valid`` is the
    (sample, time) mask the client already read (it sizes each chunk's slice of the feature)."""
    location = getattr(states, "location", None)
    if location is None:
        raise OptionError(
            "rank_units(client=...) spreads the reads of a *stored* layer over the workers "
            "(rnnlens.open_states(path)); in-memory states are ranked in this process: drop client=."
        )
    counts = valid.reshape(valid.shape[0], -1).sum(1)
    futures = []
    offset = 0
    for start, stop in _bounds(valid.shape[0], chunk):
        k = int(counts[start:stop].sum())
        p = None if perms is None else perms[offset : offset + k]
        where = (location.resolved(), layer, field, direction, start, stop)  # workers' cwd differs
        futures.append(client.submit(_task, *where, y_valid[offset : offset + k], p, pure=False))
        offset += k
    acc = PearsonSums(y_valid, perms)
    for sums, perm_xy in client.gather(futures):  # in chunk order: the in-process bits
        acc.add(sums, perm_xy)
    return acc.finish()
