"""Lazy, store-backed versions of :class:`~rnnlens.States` and friends.

They subclass the in-memory containers and keep their API; arrays are read from the store
only when indexed. Plain fields (``h``, ``c``, ``gates.array``, ``mask``, ``lengths``) are
``zarr.Array`` objects; one gate (``gates["f"]``) and the direction-joined arrays of a
bidirectional layer are :class:`LazyArray` views.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ..core.states import DirectionStates, Gates, LayerStates, States, layer_table
from ..errors import RnnLensError
from .errors import StoreError
from .layout import LayerLayout, Layout, direction_path
from .location import Location

__all__ = [
    "LazyArray",
    "StoredDirectionStates",
    "StoredGates",
    "StoredLayerStates",
    "StoredStates",
    "reading",
]


def _normalise_key(key: Any, ndim: int) -> tuple[Any, ...]:
    """``key`` as a tuple of exactly ``ndim`` indices (``...`` expanded, missing axes ``:``)."""
    key = key if isinstance(key, tuple) else (key,)
    if any(k is None for k in key):
        raise IndexError("np.newaxis is not supported on stored arrays; index first, then reshape.")
    ellipses = [i for i, k in enumerate(key) if k is Ellipsis]
    if len(ellipses) > 1:
        raise IndexError("an index can only have a single ellipsis ('...')")
    if ellipses:
        i = ellipses[0]
        key = key[:i] + (slice(None),) * (ndim - len(key) + 1) + key[i + 1 :]
    if len(key) > ndim:
        raise IndexError(f"too many indices: the array is {ndim}-dimensional, {len(key)} were indexed")
    return key + (slice(None),) * (ndim - len(key))


class LazyArray:
    """A read-on-index (sample, time, unit) view of stored arrays.

    ``parts`` are ``(array, gate)`` pairs: ``gate`` picks one gate from a (sample, time,
    gate, unit) array (None: the array is already (sample, time, unit)); several parts are
    joined along ``unit`` (forward first), like a bidirectional layer's concatenated output.
    Indexing returns NumPy; ``np.asarray(view)`` reads everything.
    """

    def __init__(self, parts: Sequence[tuple[Any, int | None]]):
        if not parts:
            raise ValueError("LazyArray needs at least one part.")
        self.parts = tuple(parts)
        shapes = [self._shape(a, g) for a, g in self.parts]
        self.shape: tuple[int, ...] = (*shapes[0][:-1], sum(s[-1] for s in shapes))
        self.dtype = np.dtype(self.parts[0][0].dtype)

    @staticmethod
    def _shape(a: Any, gate: int | None) -> tuple[int, ...]:
        s = tuple(int(d) for d in a.shape)
        return s if gate is None else s[:2] + s[3:]

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    def __len__(self) -> int:
        return self.shape[0]

    @staticmethod
    def _read(a: Any, gate: int | None, key: tuple[Any, ...]) -> np.ndarray:
        if gate is not None:
            key = (*key[:2], gate, *key[2:])
        return np.asarray(a[key])

    def __getitem__(self, key: Any) -> np.ndarray:
        k = _normalise_key(key, self.ndim)
        if len(self.parts) == 1:
            a, g = self.parts[0]
            return self._read(a, g, k)
        lead = (*k[:-1], slice(None))
        joined = np.concatenate([self._read(a, g, lead) for a, g in self.parts], axis=-1)
        return joined[..., k[-1]]

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = self[...]
        return out if dtype is None else out.astype(dtype, copy=False)

    def load(self) -> np.ndarray:
        """Read everything into a NumPy array."""
        return self[...]

    def __repr__(self) -> str:
        return f"LazyArray(shape={self.shape}, dtype={self.dtype})"


class StoredGates(Gates):
    """Gates of one direction: ``array`` is the stored (sample, time, gate, unit) array;
    ``gates["f"]`` a lazy (sample, time, unit) view."""

    def __init__(self, array: Any, names: tuple[str, ...]):
        parts: Any = [LazyArray([(array, i)]) for i in range(len(names))]
        super().__init__(parts, names)
        self._array = array

    def read(self, names: Sequence[str], rows: slice) -> list[np.ndarray]:
        """One read of the stored block for every gate asked for (a chunk holds them all)."""
        for name in names:
            self[name]  # unknown names: the error listing the gates
        block = np.asarray(self.array[rows])
        return [block[:, :, self.names.index(name)] for name in names]


def _last_index(mask: np.ndarray, direction: str) -> np.ndarray:
    """Index of the step whose state is the sequence's final one: the last valid step going
    forward, the first valid step going backward (input order)."""
    t = mask.shape[1]
    if direction == "backward":
        idx = np.argmax(mask, axis=1)
        return np.where(mask.any(axis=1), idx, 0)
    idx = t - 1 - np.argmax(mask[:, ::-1], axis=1)
    return np.where(mask.any(axis=1), idx, t - 1)


def _gather(arr: Any, idx: np.ndarray, step: int) -> np.ndarray:
    """``arr[s, idx[s]]`` for every sample, reading one chunk of samples at a time."""
    n = int(arr.shape[0])
    out = np.empty((n, *arr.shape[2:]), dtype=arr.dtype)
    for start in range(0, n, step):
        stop = min(start + step, n)
        block = np.asarray(arr[start:stop])
        out[start:stop] = block[np.arange(stop - start), idx[start:stop]]
    return out


class StoredDirectionStates(DirectionStates):
    """One direction of one stored layer."""

    mask: Any

    def __init__(
        self,
        direction: str,
        h: Any,
        c: Any,
        gates: Gates | None,
        mask: Any,
        *,
        layer: str,
        state: Any = None,
        state_parts: Any = None,
        state_norm: Any = None,
    ):
        super().__init__(
            direction,
            h,
            c,
            gates,
            mask,
            layer=layer,
            state=state,
            state_parts=state_parts,
            state_norm=state_norm,
        )

    def last(self, field: Literal["h", "c"] = "h") -> np.ndarray:
        """State at each sequence's last valid step (first, for ``backward``), (sample, unit).

        The stored mask decides which step that is, so sequences shorter than the store's
        time axis give their own final state (not the NaN padding).
        """
        arr = self.h if field == "h" else self.c
        idx = _last_index(np.asarray(self.mask[...]), self.direction)
        step = int(arr.chunks[0]) if hasattr(arr, "chunks") else 1024
        return _gather(arr, idx, step)


class StoredLayerStates(LayerStates):
    """One stored layer; ``h`` / ``c`` / ``gates`` of a bidirectional layer are lazy joins."""

    def _joined(self, field: str) -> Any:
        arrays = [getattr(d, field) for d in self.directions.values()]
        return arrays[0] if len(arrays) == 1 else LazyArray([(a, None) for a in arrays])

    @property
    def h(self) -> Any:
        return self._joined("h")

    @property
    def c(self) -> Any:
        return self._joined("c")

    @property
    def gates(self) -> Gates:
        per_direction = [d.gates for d in self.directions.values()]
        if len(per_direction) == 1:
            return per_direction[0]
        names = per_direction[0].names
        parts: Any = [LazyArray([(g.array, k) for g in per_direction]) for k in range(len(names))]
        return Gates(parts, names)


class StoredStates(States):
    """States read lazily from a store (see :func:`rnnlens.open_states`).

    Besides the :class:`~rnnlens.States` API: ``lengths`` (valid steps per sequence),
    ``attrs`` (the store's root attributes: model, hash, backend, ...), ``path`` (a
    :class:`~pathlib.Path`, or the URL of a store on an object store), ``location`` (where it
    is, with its storage options), ``complete``, ``n_samples`` and :meth:`load`.
    """

    mask: Any

    def __init__(
        self,
        layers: Mapping[str, LayerStates],
        *,
        backend: str,
        mask: Any,
        lengths: Any,
        attrs: dict[str, Any],
        path: Path | str,
        layout: Layout,
        location: Any = None,
    ):
        super().__init__(layers, backend=backend)
        self.mask = mask
        self.lengths = lengths
        self.attrs = attrs
        self.path = path
        self.layout = layout
        self.location = location if location is not None else Location.of(path)

    @classmethod
    def from_group(
        cls, group: Any, layout: Layout, attrs: dict[str, Any], *, path: Path | str, location: Any = None
    ) -> StoredStates:
        mask = group["mask"]
        layers: dict[str, LayerStates] = {}
        for lay in layout.layers:
            layers[lay.name] = _layer(group, lay, mask)
        return cls(
            layers,
            backend=layout.backend,
            mask=mask,
            lengths=group["lengths"],
            attrs=attrs,
            path=path,
            layout=layout,
            location=location,
        )

    @property
    def complete(self) -> bool:
        return bool(self.attrs.get("complete", False))

    @property
    def n_samples(self) -> int:
        return int(self.mask.shape[0])

    def load(self, samples: slice | None = None) -> States:
        """Read every stored field (of the samples in ``samples``) into an in-memory States."""
        sl = samples if samples is not None else slice(None)
        mask = np.asarray(self.mask[sl])
        layers: dict[str, LayerStates] = {}
        for name, ls in self.items():
            dirs: dict[str, DirectionStates] = {}
            for dname, d in ls.directions.items():
                h = np.asarray(d.h[sl])
                c = np.asarray(d.c[sl]) if "c" in d.fields else None
                g = None
                if "gates" in d.fields and isinstance(d.gates, StoredGates):
                    block = np.asarray(d.gates.array[sl])
                    g = Gates([block[:, :, k] for k in range(block.shape[2])], d.gates.names)
                elif "gates" in d.fields:  # one array per gate
                    g = Gates([np.asarray(d.gates[k][sl]) for k in d.gates.names], d.gates.names)
                state = np.asarray(d.state[sl]) if "state" in d.fields else None
                parts = {k: np.asarray(v[sl]) for k, v in d.state_parts.items()}
                norm = np.asarray(d.state_norm[sl]) if "state_norm" in d.fields else None
                dirs[dname] = DirectionStates(
                    dname, h, c, g, mask, layer=name, state=state, state_parts=parts, state_norm=norm
                )
            layers[name] = LayerStates(ls.spec, dirs, mask)
        return States(layers, backend=self.backend)

    def __repr__(self) -> str:
        n, t = (int(s) for s in self.mask.shape)
        masked = n * t - int(np.asarray(self.lengths[...], dtype=np.int64).sum())
        state = "" if self.complete else ", incomplete"
        table = layer_table(self.values())
        head = f"StoredStates {self.path} ({len(self)} layers, {n} samples, {masked} masked steps{state})"
        return f"{head}\n{table}"


def _layer(group: Any, lay: LayerLayout, mask: Any) -> StoredLayerStates:
    dirs: dict[str, DirectionStates] = {}
    for dname in lay.directions:
        g = group[direction_path(lay.name, dname)]
        h = g["h"]
        c = g["c"] if "c" in lay.fields else None
        gates: Gates | None = None
        if "gates" in lay.fields:
            if lay.state_shape is not None:  # a state-space mixer: one array per gate
                # the gates the store holds (one written before a kind gained a gate has fewer)
                names = tuple(n for n, _ in zip(lay.gate_names, lay.gate_shapes or ()))
                gates = Gates([g[f"gate_{name}"] for name in names], names)
            else:
                gates = StoredGates(g["gates"], lay.gate_names)
        state = g["state"] if "state" in lay.fields else None
        parts = {p: g[f"state_{p}"] for p, _ in lay.part_shapes} if state is not None else None
        norm = g["state_norm"] if "state_norm" in lay.fields else None
        dirs[dname] = StoredDirectionStates(
            dname, h, c, gates, mask, layer=lay.name, state=state, state_parts=parts, state_norm=norm
        )
    return StoredLayerStates(lay.spec(), dirs, mask)


@contextlib.contextmanager
def reading(where: Any) -> Iterator[None]:
    """Reads from the store at ``where``: a chunk that Zarr cannot decode (a checksum that does
    not match, truncated or edited bytes) becomes a :class:`~rnnlens.errors.StoreError` naming
    the store, instead of the codec's bare ``ValueError``."""
    try:
        yield
    except (ValueError, RuntimeError) as e:
        if isinstance(e, RnnLensError) or not _from_codec(e):
            raise
        raise StoreError(
            f"{where} is damaged: a chunk cannot be read ({type(e).__name__}: {str(e).splitlines()[0]}). "
            "rnnlens verify lists the damaged arrays; rerun the extraction with overwrite=True to "
            "rebuild the store."
        ) from None


def _from_codec(e: BaseException) -> bool:
    """Whether ``e`` was raised inside Zarr or its codecs (not by the caller's own code)."""
    tb = e.__traceback__
    last = None
    while tb is not None:
        last = tb.tb_frame.f_code.co_filename
        tb = tb.tb_next
    return last is not None and any(p in last for p in ("/zarr/", "/numcodecs/", "crc32c", "zstandard"))
