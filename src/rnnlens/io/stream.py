"""Stores written along time as a recording goes (``rnnlens.record(model, to=dir)``): each
recorded stream — one entry of the recording — becomes a store of its own,
``<dir>/<entry>.zarr``, whose arrays grow along ``time`` chunk by chunk.

The stores have the schema of :mod:`rnnlens.io.layout` (``open_states``, the viewer, ``export``
and xarray read them), chunked along time (``chunk_steps`` steps) as well as along samples
(:data:`SAMPLE_CHUNK`): a stream is often a few sequences of many steps. Each segment the recording hands
over is written at once (its arrays resized along time; a chunk that a segment only starts is
rewritten by the next), so memory holds one segment, not the stream. The root attributes say
``complete`` only when the recording ended; a stream cut short by a crash opens with a warning.

Example:
    >>> import numpy as np, os, tempfile, rnnlens
    >>> from rnnlens.core.spec import LayerSpec
    >>> from rnnlens.core.states import DirectionStates, LayerStates, States
    >>> spec = LayerSpec("gru", "gru", "GRU", 2, ("forward",), ("h",), None, ())
    >>> seg = lambda t: States({"gru": LayerStates(spec, {"forward": DirectionStates(
    ...     "forward", np.zeros((3, t, 2), "float32"))}, None)}, backend="torch")
    >>> sink = StreamSink(os.path.join(tempfile.mkdtemp(), "rec"), chunk_steps=4)
    >>> sink.write(seg(5), {}); sink.write(seg(2), {}); paths = sink.close()
    >>> rnnlens.open_states(paths["gru"])["gru"].h.shape
    (3, 7, 2)
"""

from __future__ import annotations

import os
from dataclasses import replace
from typing import Any

import numpy as np

from ..core.states import States
from .errors import StoreExistsError, StoreMismatchError
from .layout import Layout, encode_name, layout_attributes, root_attributes
from .location import Location
from .pieces import piece_arrays
from .zarr import _zarr, create_array, create_groups

__all__ = ["StreamSink", "StreamStore"]

#: samples per chunk (a recording of many sequences is chunked along samples as well)
SAMPLE_CHUNK = 256


class StreamStore:
    """One stream's store, appended to along time."""

    def __init__(self, path: Location, chunk_steps: int, model_name: str):
        self.path, self.chunk_steps, self.model_name = path, chunk_steps, model_name
        self.layout: Layout | None = None
        self.arrays: dict[str, Any] = {}
        self.steps = 0
        self.lengths: np.ndarray | None = None

    def append(self, states: States) -> int:
        """Write one segment (a States of this stream's one entry); returns the steps before it."""

        first = next(iter(states.values()))
        n = int(first.h.shape[0])
        layout, arrays = piece_arrays(states, None, n, layout=None, max_time=None, offset=0, path=self.path)
        if self.layout is None:
            self._create(layout, n)
        elif layout.layers != self.layout.layers or n != self.lengths.shape[0]:  # type: ignore[union-attr]
            raise StoreMismatchError(
                f"{self.path}: this segment of the stream ({n} samples) does not match the store's "
                f"({self.lengths.shape[0] if self.lengths is not None else '?'} samples, same fields)."
            )
        before, after = self.steps, self.steps + int(arrays["mask"].shape[1])
        for key, a in arrays.items():
            if key == "lengths":
                self.lengths = self.lengths + a  # type: ignore[operator]
                continue
            arr = self.arrays[key]
            arr.resize((n, after, *arr.shape[2:]))
            arr[:, before:after] = a
        self.steps = after
        return before

    def _create(self, layout: Layout, n: int) -> None:
        if self.path.exists():
            raise StoreExistsError(f"{self.path} exists: a recording writes new stores only.")
        group = _zarr().open_group(self.path.zarr_store(read_only=False), mode="w-", zarr_format=3)
        create_groups(group, layout)
        for spec in layout.arrays():
            if spec.key == "lengths":
                continue
            tail = spec.tail[1:]  # chunked along time as well as samples
            self.arrays[spec.key] = create_array(
                group, spec, (n, 0, *tail), (min(n, SAMPLE_CHUNK), self.chunk_steps, *tail)
            )
        attrs = root_attributes(model_name=self.model_name, batch_size=n, max_time=None)
        group.attrs.update({**attrs, "recorded": True})
        self.layout, self.lengths = layout, np.zeros(n, np.int32)

    def close(self) -> None:
        """Write ``lengths`` and the final layout (its time axis); mark the store complete."""
        assert self.layout is not None and self.lengths is not None
        group = _zarr().open_group(self.path.zarr_store(read_only=False), mode="r+", zarr_format=3)
        spec = next(s for s in self.layout.arrays() if s.key == "lengths")
        n = self.lengths.shape[0]
        create_array(group, spec, (n,), (n,))[...] = self.lengths
        final = replace(self.layout, max_time=self.steps)
        group.attrs.update(
            {**layout_attributes(final), "max_time": self.steps, "n_samples": int(self.lengths.shape[0]),
             "complete": True}
        )  # fmt: skip


class StreamSink:
    """The stores of one recording: ``<root>/<entry>.zarr`` per stream, created as they appear.
    ``root`` is a directory or an fsspec URL (with ``storage_options``)."""

    def __init__(
        self,
        root: str | os.PathLike[str] | Location,
        *,
        chunk_steps: int = 256,
        model_name: str = "model",
        storage_options: dict[str, Any] | None = None,
    ):
        self.root = Location.of(root, storage_options)
        if self.root.exists() and (self.root.is_file() or self.root.has_entries()):
            raise StoreExistsError(
                f"{self.root} exists and is not an empty directory; a recording writes its stores "
                "into a new one. Choose another path."
            )
        self.root.mkdir()
        self.chunk_steps, self.model_name = int(chunk_steps), model_name
        self.streams: dict[str, StreamStore] = {}

    def write(self, states: States, offsets: dict[str, int]) -> None:
        """Append each entry of ``states`` to its stream; ``offsets`` gets each entry's steps
        before this segment (to place the calls' spans)."""
        for name, ls in states.items():
            stream = self.streams.get(name)
            if stream is None:
                path = self.root.child(f"{encode_name(name)}.zarr")
                stream = self.streams[name] = StreamStore(path, self.chunk_steps, self.model_name)
            offsets[name] = stream.append(States({name: ls}, backend=states.backend))

    def close(self) -> dict[str, Location]:
        for stream in self.streams.values():
            stream.close()
        return {name: s.path for name, s in self.streams.items()}
