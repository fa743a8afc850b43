"""What the viewer reads from a store: one sample, select-and-match, per-unit statistics.

Everything is read lazily from the Zarr arrays, one chunk of samples at a time; nothing
here holds the whole store. Two caches keep repeated questions fast on large stores: the
``mask`` (one byte per step) is read once, and the columns of recently used units
(``(sample, time)`` float arrays, one per unit) are kept in an LRU bounded by a byte budget.

Select and match (after LSTMVis, Strobelt et al. 2018)
------------------------------------------------------
*Select*: on one sample, a time range ``[t0, t1)`` and a threshold ``θ``. A unit is
selected when it is **on** (value ``> θ``) at every step of the range and **off**
(``≤ θ``) at the step just before (``t0 - 1``) and just after (``t1``) it. A neighbour step
outside the sequence, or masked, counts as off.

*Match*: over every sequence, a span is a maximal run of valid steps at which at least
``min_units`` of the selected units are on (default: all of them). Each span gets

    score = coverage × min(L, Lq) / max(L, Lq)

where ``L`` is the span's length, ``Lq = t1 - t0`` the selection's, and ``coverage`` the
mean, over the span's steps, of the fraction of selected units that are on (1 when every
selected unit is on throughout). So a span scores 1 when the same units switch on for
exactly as long as in the selection. Results are sorted by score, then length (longer
first), then sample and start; the top ``k`` are returned.
"""

from __future__ import annotations

import os
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError, LayerNotFoundError
from ..io.stored import StoredStates
from ..io.zarr import open_states

__all__ = ["Match", "StoreView", "Tokens"]

#: the most units one select-and-match query may use (each costs one column read)
MAX_MATCH_UNITS = 64
#: the most results one match query returns
MAX_K = 500


class Tokens:
    """Tokens per sample from a text file: line ``i`` is sample ``i``.

    Tokens are separated by whitespace, or every character is a token (``chars=True``;
    the line's end-of-line is dropped, nothing else). Only line offsets are held in memory;
    lines are read when asked for.

    Example:
        >>> import tempfile, os
        >>> path = os.path.join(tempfile.mkdtemp(), "t.txt")
        >>> _ = open(path, "w").write("the cat sat\\n(a)\\n")
        >>> Tokens(path).get(0), Tokens(path, chars=True).get(1), len(Tokens(path))
        (['the', 'cat', 'sat'], ['(', 'a', ')'], 2)
    """

    def __init__(self, path: str | os.PathLike[str], *, chars: bool = False):
        self.path = Path(path)
        self.chars = chars
        offsets = [0]
        with open(self.path, "rb") as f:
            for line in f:
                offsets.append(offsets[-1] + len(line))
        self._offsets = np.asarray(offsets, dtype=np.int64)
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def get(self, i: int) -> list[str]:
        """The tokens of sample ``i``; ``[]`` past the file's last line."""
        if not 0 <= i < len(self):
            return []
        start, stop = int(self._offsets[i]), int(self._offsets[i + 1])
        with self._lock, open(self.path, "rb") as f:
            f.seek(start)
            line = f.read(stop - start).decode("utf-8", errors="replace").rstrip("\r\n")
        return list(line) if self.chars else line.split()


@dataclass(frozen=True)
class Match:
    """One matching span ``[start, end)`` of sample ``sample``."""

    sample: int
    start: int
    end: int
    score: float
    coverage: float

    def to_json(self) -> dict[str, Any]:
        return {
            "sample": self.sample,
            "start": self.start,
            "end": self.end,
            "length": self.end - self.start,
            "score": round(self.score, 6),
            "coverage": round(self.coverage, 6),
        }


def runs(on: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Maximal runs of True along the last axis of a 2-D bool array, vectorised.

    Returns ``(row, start, end)`` arrays, ``end`` exclusive.

    Example:
        >>> runs(np.array([[0, 1, 1, 0, 1], [1, 1, 1, 1, 1]], bool))
        (array([0, 0, 1]), array([1, 4, 0]), array([3, 5, 5]))
    """
    n, t = on.shape
    padded = np.zeros((n, t + 2), np.int8)
    padded[:, 1:-1] = on
    edges = np.diff(padded, axis=1)  # +1 at a run's start, -1 one past its end
    rows, starts = np.nonzero(edges == 1)
    _, ends = np.nonzero(edges == -1)  # same row order, one end per start
    return rows, starts, ends


class StoreView:
    """A lazily read store, with the lookups, validation and caches the viewer needs.

    ``field`` is ``"h"``, ``"c"`` or a gate name of the layer (``"f"``, ``"z"``, ...);
    ``direction`` is one the layer has. Names are looked up in the store's own layout, so a
    name that is not there is a :class:`~rnnlens.LayerNotFoundError` listing what exists.

    Example:
        >>> import numpy as np, tempfile, os
        >>> from rnnlens.testing.stores import write_store
        >>> h = np.zeros((4, 6, 3), "float32"); h[2, 1:4, 1] = 1.0
        >>> path = write_store(os.path.join(tempfile.mkdtemp(), "s.zarr"), h)
        >>> view = StoreView(path)
        >>> view.select("lstm", "h", "forward", sample=2, t0=1, t1=4, threshold=0.5)
        [1]
        >>> [m.to_json()["sample"] for m in view.match("lstm", "h", "forward", [1], 0.5, query_length=3)]
        [2]
    """

    def __init__(
        self,
        store: str | os.PathLike[str] | StoredStates,
        *,
        tokens: Tokens | None = None,
        cache_bytes: int = 512 * 2**20,
        block_samples: int | None = None,
    ):
        if isinstance(store, StoredStates):
            self.states = store
        else:
            self.states = open_states(store)
        self.tokens = tokens
        self.layout = self.states.layout
        self.n_samples = self.states.n_samples
        self.max_time = self.layout.max_time
        self.cache_bytes = int(cache_bytes)
        chunk = int(getattr(self.states.mask, "chunks", (256,))[0]) or 256
        # Read whole chunks, several at a time: zarr fetches a multi-chunk slice concurrently.
        self.block_samples = block_samples or max(chunk, (4096 // chunk) * chunk)
        # read once, up front: 1 byte a step, and every query needs it
        self._mask = np.asarray(self.states.mask[...], dtype=bool)
        self._columns: OrderedDict[tuple[str, str, str, int], np.ndarray] = OrderedDict()
        self._stats: dict[tuple[str, str, str, int], dict[str, Any]] = {}
        self._lock = threading.RLock()
        self.feature: Any = None  # a viewer.feature.Feature, when the viewer loaded one

    # ------------------------------------------------------------------ names

    def layer_names(self) -> list[str]:
        """The layers the page shows: those whose states are rows of units (not ConvLSTM
        feature maps, which ``open_states`` and xarray read)."""
        return [lay.name for lay in self.layout.layers if lay.feature_shape is None]

    def _layer(self, name: str) -> Any:
        for lay in self.layout.layers:
            if lay.name == name and lay.feature_shape is None:
                return lay
        raise LayerNotFoundError(name, self.layer_names(), what="layer in this store")

    def fields(self, layer: str) -> list[str]:
        """Viewable fields of a layer: ``h``, ``c`` (LSTM) and each gate by name. A state-space
        mixer shows ``h`` (its output, one value per unit and step) and ``state_norm`` when
        stored (its state's norm over the last axis, a row of units); its state and gates have
        shapes of their own (``open_states`` and xarray read them)."""
        lay = self._layer(layer)
        out = [f for f in ("h", "c", "state_norm") if f in lay.fields]
        if "gates" in lay.fields and lay.state_shape is None:
            out += list(lay.gate_names)
        return out

    def _array(self, layer: str, field: str, direction: str) -> tuple[Any, int | None]:
        """The stored array for (layer, field, direction), and the gate index (None: not a gate)."""
        lay = self._layer(layer)
        if field not in self.fields(layer):
            raise LayerNotFoundError(field, self.fields(layer), what=f"field of layer {layer!r}")
        if direction not in lay.directions:
            raise LayerNotFoundError(direction, lay.directions, what=f"direction of layer {layer!r}")
        d = self.states[layer].directions[direction]
        if field in ("h", "c", "state_norm"):
            return getattr(d, field), None
        return d.gates.array, list(lay.gate_names).index(field)

    def width(self, layer: str, field: str) -> int:
        lay = self._layer(layer)
        return int(lay.width("gates" if field not in ("h", "c", "state_norm") else field))

    def meta(self) -> dict[str, Any]:
        """What the page needs to build its pickers."""
        return {
            "store": os.path.basename(str(self.states.path).rstrip("/")),
            "n_samples": self.n_samples,
            "max_time": self.max_time,
            "backend": self.layout.backend,
            "complete": self.states.complete,
            "has_tokens": self.tokens is not None,
            "chars": bool(self.tokens is not None and self.tokens.chars),
            "layers": [
                {
                    "name": lay.name,
                    "kind": lay.kind,
                    "units": lay.units,
                    "directions": list(lay.directions),
                    "fields": self.fields(lay.name),
                    "widths": {f: self.width(lay.name, f) for f in self.fields(lay.name)},
                }
                for lay in self.layout.layers
                if lay.feature_shape is None
            ],
        }

    # ------------------------------------------------------------------ reads

    def check_sample(self, sample: int) -> int:
        if not 0 <= sample < self.n_samples:
            raise InputError(
                f"sample {sample} is out of range: the store holds {self.n_samples} sequence(s) "
                f"(0..{self.n_samples - 1})."
            )
        return sample

    @property
    def mask(self) -> np.ndarray:
        """The (sample, time) mask of valid steps (read once, when the view opened)."""
        return self._mask

    def sample(self, layer: str, field: str, direction: str, sample: int) -> np.ndarray:
        """One sample's values, (time, unit) float32 (reads one chunk)."""
        arr, gate = self._array(layer, field, direction)
        self.check_sample(sample)
        block = np.asarray(arr[sample])
        return np.asarray(block if gate is None else block[:, gate], dtype=np.float32)

    def sample_tokens(self, sample: int) -> list[str] | None:
        return None if self.tokens is None else self.tokens.get(sample)

    def _blocks(self, arr: Any, gate: int | None, units: Sequence[int]) -> Iterator[tuple[int, np.ndarray]]:
        """(start, values[start:stop, :, units]) for every block of samples, streamed."""
        cols = list(units)
        for start in range(0, self.n_samples, self.block_samples):
            stop = min(start + self.block_samples, self.n_samples)
            block = np.asarray(arr[start:stop])
            if gate is not None:
                block = block[:, :, gate]
            yield start, block[:, :, cols]

    def columns(self, layer: str, field: str, direction: str, units: Sequence[int]) -> list[np.ndarray]:
        """Each unit's (sample, time) values over the whole store; the missing ones are read in
        one streaming pass and kept in the LRU cache."""
        arr, gate = self._array(layer, field, direction)
        width = self.width(layer, field)
        for u in units:
            if not 0 <= u < width:
                raise InputError(
                    f"unit {u} is out of range: {layer}.{field} has {width} units (0..{width - 1})."
                )
        with self._lock:
            keys = [(layer, field, direction, int(u)) for u in units]
            missing = sorted({k[3] for k in keys if k not in self._columns})
            if missing:
                out = {u: np.empty((self.n_samples, self.max_time), np.float32) for u in missing}
                for start, block in self._blocks(arr, gate, missing):
                    for j, u in enumerate(missing):
                        out[u][start : start + block.shape[0]] = block[:, :, j]
                for u in missing:
                    self._columns[(layer, field, direction, u)] = out[u]
            result = []
            for k in keys:
                self._columns.move_to_end(k)
                result.append(self._columns[k])
            self._evict(keep=set(keys))
            return result

    def _evict(self, keep: set[tuple[str, str, str, int]]) -> None:
        total = sum(a.nbytes for a in self._columns.values())
        for k in list(self._columns):
            if total <= self.cache_bytes:
                break
            if k not in keep:
                total -= self._columns.pop(k).nbytes

    # ------------------------------------------------------------------ select and match

    def select(
        self, layer: str, field: str, direction: str, *, sample: int, t0: int, t1: int, threshold: float
    ) -> list[int]:
        """Units on (``> threshold``) throughout ``[t0, t1)`` of ``sample`` and off (``<= threshold``)
        at ``t0 - 1`` and ``t1`` (a neighbour outside the sequence or masked counts as off)."""
        values = self.sample(layer, field, direction, sample)
        t = values.shape[0]
        if not (0 <= t0 < t1 <= t):
            raise InputError(f"time range [{t0}, {t1}) is not inside [0, {t}); need 0 <= t0 < t1 <= {t}.")
        mask = self.mask[sample]
        with np.errstate(invalid="ignore"):
            on = (values > threshold) & mask[:, None]
        chosen = on[t0:t1].all(axis=0)
        if t0 > 0:
            chosen &= ~on[t0 - 1]
        if t1 < t:
            chosen &= ~on[t1]
        return [int(u) for u in np.flatnonzero(chosen)]

    def match(
        self,
        layer: str,
        field: str,
        direction: str,
        units: Sequence[int],
        threshold: float,
        *,
        query_length: int,
        min_units: int | None = None,
        k: int = 20,
    ) -> list[Match]:
        """Spans of every sequence where at least ``min_units`` of ``units`` are on; the top ``k``
        by score (see the module docstring)."""
        units = sorted({int(u) for u in units})
        if not units:
            return []
        if len(units) > MAX_MATCH_UNITS:
            raise InputError(f"{len(units)} units selected; match takes at most {MAX_MATCH_UNITS}.")
        need = len(units) if min_units is None else int(min_units)
        if not 1 <= need <= len(units):
            raise InputError(
                f"min_units must be between 1 and {len(units)} (the selected units); got {need}."
            )
        if query_length < 1:
            raise InputError(f"query_length must be at least 1; got {query_length}.")
        k = max(1, min(int(k), MAX_K))
        cols = self.columns(layer, field, direction, units)
        with np.errstate(invalid="ignore"):
            if need == len(units):  # every unit on: a boolean AND, no counting
                on = cols[0] > threshold
                for col in cols[1:]:
                    on &= col > threshold
                on &= self.mask
                count = None
            else:
                count = np.zeros((self.n_samples, self.max_time), np.int16)
                for col in cols:
                    count += col > threshold
                count[~self.mask] = 0
                on = count >= need
        hit = np.flatnonzero(on.any(axis=1))  # spans are rare: work on those rows only
        if hit.size == 0:
            return []
        local, starts, ends = runs(on[hit])
        rows = hit[local]
        lengths = ends - starts
        if count is None:
            coverage = np.ones(len(rows))
        else:  # mean fraction of the units on over each span, from a running sum per row
            csum = np.zeros((hit.size, self.max_time + 1), np.int32)
            np.cumsum(count[hit], axis=1, out=csum[:, 1:])
            coverage = (csum[local, ends] - csum[local, starts]) / (lengths * len(units))
        similarity = np.minimum(lengths, query_length) / np.maximum(lengths, query_length)
        score = coverage * similarity
        order = np.lexsort((starts, rows, -lengths, -score))[:k]
        return [
            Match(int(rows[i]), int(starts[i]), int(ends[i]), float(score[i]), float(coverage[i]))
            for i in order
        ]

    # ------------------------------------------------------------------ one unit, whole data set

    def unit_stats(
        self,
        layer: str,
        field: str,
        direction: str,
        unit: int,
        *,
        threshold: float | None = None,
        bins: int = 40,
    ) -> dict[str, Any]:
        """One unit over every valid step of every sequence: histogram, mean and spread per time
        step, overall mean/std/min/max, and the fraction of steps above ``threshold``."""
        key = (layer, field, direction, int(unit))
        with self._lock:
            cached = self._stats.get(key)
        if cached is None:
            started = time.perf_counter()
            (col,) = self.columns(layer, field, direction, [unit])
            mask = self.mask & np.isfinite(col)
            valid = col[mask]
            if valid.size:
                lo, hi = float(valid.min()), float(valid.max())
                span = hi - lo if hi > lo else 1.0
                # bin indices by arithmetic + bincount: several times faster than np.histogram
                scaled = valid - np.float32(lo)
                scaled *= np.float32(bins / span)
                idx = np.minimum(scaled.astype(np.int32), bins - 1)
                counts = np.bincount(idx, minlength=bins)
                edges = lo + span * np.arange(bins + 1) / bins
            else:
                lo = hi = 0.0
                counts, edges = np.zeros(bins, np.int64), np.linspace(0.0, 1.0, bins + 1)
            per_t = np.where(mask, col, np.float32(0))
            n_t = mask.sum(axis=0)
            sum_t = per_t.sum(axis=0, dtype=np.float64)
            sq_t = np.einsum("st,st->t", per_t, per_t, dtype=np.float64)
            with np.errstate(invalid="ignore", divide="ignore"):
                mean_t = sum_t / n_t
                std_t = np.sqrt(np.maximum(sq_t / n_t - mean_t**2, 0.0))
            total = max(int(valid.size), 1)
            mean = float(sum_t.sum() / total)
            std = float(np.sqrt(max(float(sq_t.sum()) / total - mean**2, 0.0)))
            cached = {
                "unit": int(unit),
                "n_steps": int(valid.size),
                "mean": mean if valid.size else None,
                "std": std if valid.size else None,
                "min": lo if valid.size else None,
                "max": hi if valid.size else None,
                "hist_counts": [int(c) for c in counts],
                "hist_edges": [float(e) for e in edges],
                "mean_by_time": [None if not np.isfinite(m) else float(m) for m in mean_t],
                "std_by_time": [None if not np.isfinite(s) else float(s) for s in std_t],
                "compute_ms": round(1e3 * (time.perf_counter() - started), 1),
            }
            with self._lock:
                self._stats[key] = cached
        out = dict(cached)
        if threshold is not None:
            (col,) = self.columns(layer, field, direction, [unit])  # cached unless evicted
            with np.errstate(invalid="ignore"):
                on = int(((col > threshold) & self.mask).sum())
            out["threshold"] = threshold
            out["fraction_on"] = on / cached["n_steps"] if cached["n_steps"] else None
        return out
