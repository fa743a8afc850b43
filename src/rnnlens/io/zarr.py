"""Zarr v3 reading and writing of state stores (schema: :mod:`rnnlens.io.layout`).

``zarr`` is imported on first use; without it these functions raise
:class:`~rnnlens.io.errors.MissingDependencyError` naming ``pip install 'rnnlens[zarr]'``.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from ..core.optional import require
from ..errors import RnnLensError, RnnLensWarning
from .errors import StoreError, StoreMismatchError
from .layout import (
    FORMAT,
    LAYERS_GROUP,
    SCHEMA_VERSION,
    ArraySpec,
    Layout,
    direction_path,
    encode_name,
    read_manifest,
)
from .location import Location
from .stored import StoredStates

__all__ = ["StoreWriter", "open_states"]


def _zarr() -> Any:
    return require("zarr", purpose="Storing states (extract_to, open_states)")


_WRITE_CONFIG = {"write_empty_chunks": True}


class StoreWriter:
    """Creates a store's arrays from a :class:`Layout` and writes whole chunks into them.

    Used from one thread at a time (the extraction's writer thread).
    """

    def __init__(self, root: Any, layout: Layout, *, batch_size: int, n_samples: int | None):
        self.root = Location.of(root)
        self.layout = layout
        self.batch_size = batch_size
        self.n_samples = n_samples
        self.arrays: dict[str, Any] = {}
        self._rows = 0

    def create(self, attrs: dict[str, Any]) -> None:
        """Create every array afresh (a store with no completed chunk)."""
        zarr = _zarr()
        group = zarr.open_group(self.root.zarr_store(read_only=False), mode="a", zarr_format=3)
        rows = self.n_samples or 0
        create_groups(group, self.layout)
        for spec in self.layout.arrays():
            self.arrays[spec.key] = create_array(
                group, spec, (rows, *spec.tail), (self.batch_size, *spec.tail), overwrite=True
            )
        self._rows = rows
        group.attrs.update(attrs)

    def open(self) -> None:
        """Open the arrays of a store being resumed, checking they match the layout."""
        zarr = _zarr()
        group = zarr.open_group(self.root.zarr_store(read_only=False), mode="r+", zarr_format=3)
        rows = None
        for spec in self.layout.arrays():
            try:
                arr = group[spec.key]
            except KeyError:
                raise StoreError(
                    f"{self.root} lacks the array {spec.key!r} that its manifest promises; the store was "
                    "changed by another program. Pass overwrite=True to start over."
                ) from None
            if tuple(arr.shape[1:]) != spec.tail or np.dtype(arr.dtype) != np.dtype(spec.dtype):
                raise StoreMismatchError(
                    f"Array {spec.key!r} in {self.root} has shape {arr.shape} and dtype {arr.dtype}; "
                    f"expected (sample, {', '.join(map(str, spec.tail))}) {spec.dtype}. Pass "
                    "overwrite=True to start over."
                )
            self.arrays[spec.key] = _with_write_config(arr)
            rows = arr.shape[0] if rows is None else min(rows, arr.shape[0])
        self._rows = rows or 0

    def missing_chunks(self, n_chunks: int) -> set[int]:
        """Before resuming: which of the first ``n_chunks`` chunks (those the manifest counts as
        done) have a missing file in some array (deleted or lost; every chunk is written, so a
        missing file is always damage). A chunk file replaced by a symbolic link is removed and
        counts as missing. Stores written before checksums are not checked. One listing per
        array (an object store answers it in pages, not one request per chunk)."""
        missing: set[int] = set()
        for arr in self.arrays.values():
            if not _checksummed(arr):
                continue  # (chunks past the done ones may exist: every done index is looked at)
            tail = ["0"] * (len(arr.shape) - 1)
            base = f"{arr.path}/c"
            present = self.root.files(base)
            for i in range(n_chunks):
                name = "/".join([str(i), *tail])
                if self.root.local and (self.root.path / base / name).is_symlink():
                    # never read or write through a link: rewrite a real file
                    (self.root.path / base / name).unlink()
                    present.discard(name)
                if name not in present:
                    missing.add(i)
        return missing

    def damaged_chunks(self, n_chunks: int) -> set[int]:
        """:meth:`missing_chunks` and the done chunks whose bytes fail their crc32c checksum (or do
        not decode at all), read one chunk at a time (memory: one chunk). Resuming rewrites them,
        so a store a rerun calls complete holds no damaged chunk."""
        damaged = self.missing_chunks(n_chunks)
        for arr in self.arrays.values():
            if not _checksummed(arr):
                continue
            rows = int(arr.shape[0])
            for i in range(n_chunks):
                start = i * self.batch_size
                if i in damaged or start >= rows:
                    continue
                try:
                    arr[start : min(start + self.batch_size, rows)]
                except Exception:  # a checksum mismatch, truncated bytes: the chunk is damaged
                    damaged.add(i)
        return damaged

    def resize(self, n_samples: int) -> None:
        """Give every array ``n_samples`` rows (a no-op when they have them)."""
        if self._rows != n_samples:
            for arr in self.arrays.values():
                arr.resize((n_samples, *arr.shape[1:]))
            self._rows = n_samples

    def write(self, index: int, n: int, chunk: dict[str, np.ndarray]) -> None:
        """Write chunk ``index`` (``n`` samples; every array of the layout) and return once stored."""
        start = index * self.batch_size
        stop = start + n
        if stop > self._rows:
            for arr in self.arrays.values():
                arr.resize((stop, *arr.shape[1:]))
            self._rows = stop
        for key, arr in self.arrays.items():
            arr[start:stop] = chunk[key]

    def finish(self, n_samples: int, attrs: dict[str, Any]) -> None:
        """Set the final number of samples and the root attributes of a complete run."""
        for arr in self.arrays.values():
            if arr.shape[0] != n_samples:
                arr.resize((n_samples, *arr.shape[1:]))
        self._rows = n_samples
        zarr = _zarr()
        group = zarr.open_group(self.root.zarr_store(read_only=False), mode="r+", zarr_format=3)
        group.attrs.update(attrs)


def create_groups(group: Any, layout: Layout) -> None:
    """The layer and direction groups of ``layout``, with their attributes (the schema of
    :mod:`rnnlens.io.layout`)."""
    for layer in layout.layers:
        lg = group.require_group(f"{LAYERS_GROUP}/{encode_name(layer.name)}")
        lg.attrs.put(layer.to_json())
        for direction in layer.directions:
            dg = group.require_group(direction_path(layer.name, direction))
            dg.attrs.put({"layer": layer.name, "direction": direction, "time_order": "input"})


def create_array(
    group: Any, spec: ArraySpec, shape: tuple[int, ...], chunks: tuple[int, ...], **kw: Any
) -> Any:
    """The array ``spec`` of a store, as every store writes it: with its dimension names and
    attributes, a crc32c checksum per chunk (flipped bytes are an error on read, never data),
    and every chunk written, even one equal to the fill value (so that a missing chunk file
    always means damage, and is reported, rather than "all fill")."""
    return group.create_array(
        name=spec.key,
        shape=shape,
        chunks=chunks,
        dtype=spec.dtype,
        fill_value=spec.fill,
        dimension_names=spec.dims,
        attributes=spec.attrs,
        compressors=[_zarr().codecs.Crc32cCodec()],
        config=_WRITE_CONFIG,
        **kw,
    )


def _with_write_config(arr: Any) -> Any:
    """``arr`` writing every chunk (``write_empty_chunks``). ``Array.with_config`` is zarr 3.1.6's;
    before it, the same array is rebuilt from its metadata and store path with the config."""
    if hasattr(arr, "with_config"):
        return arr.with_config(_WRITE_CONFIG)
    zarr = _zarr()
    inner = arr._async_array
    return zarr.Array(type(inner)(inner.metadata, inner.store_path, config=_WRITE_CONFIG))


def open_states(
    path: str | os.PathLike[str] | Location,
    *,
    verify: bool = True,
    storage_options: dict[str, Any] | None = None,
) -> StoredStates:
    """Open a store written by :func:`rnnlens.extract_to` as a lazy :class:`~rnnlens.States`.

    Nothing is read until indexed: ``states["lstm"].forward.h`` is a ``zarr.Array``
    (``[...]`` or ``[0:10]`` reads NumPy), ``states["lstm"].forward.gates["f"]`` and the
    joined ``states["bilstm"].h`` are lazy views that read on indexing (or ``np.asarray``).
    ``states.mask`` / ``states.lengths`` are the stored arrays; ``states.load()`` reads
    everything (or a range of samples) into an in-memory :class:`~rnnlens.States`.

    ``path`` is a directory or an fsspec URL (``s3://bucket/run.zarr``, ``gs://…``,
    ``memory://…``; ``storage_options`` go to its filesystem, e.g. ``{"client_kwargs":
    {"endpoint_url": ...}}`` for an S3-compatible server).

    Integrity: each chunk carries a crc32c checksum, checked whenever it is read (a damaged
    chunk raises instead of returning its bytes); with ``verify`` (default) opening a
    complete store also checks that no chunk file is missing.

    Example:
        >>> import rnnlens
        >>> rnnlens.open_states("missing.zarr")
        Traceback (most recent call last):
        ...
        FileNotFoundError: No state store at 'missing.zarr'.
    """
    root = Location.of(path, storage_options)
    if not root.exists():
        raise FileNotFoundError(f"No state store at {str(path)!r}.")
    zarr = _zarr()
    try:
        group = zarr.open_group(root.zarr_store(read_only=True), mode="r", zarr_format=3)
    except (FileNotFoundError, ValueError, KeyError, TypeError) as e:
        raise StoreError(
            f"{root} is not a Zarr v3 store ({type(e).__name__}: {e}). Expected a directory written by "
            "rnnlens.extract_to / rnnlens extract."
        ) from None
    attrs = dict(group.attrs)
    if attrs.get("format") != FORMAT:
        raise StoreError(
            f"{root} is a Zarr store but not one written by rnnlens (its root attribute 'format' is "
            f"{attrs.get('format')!r}, expected {FORMAT!r})."
        )
    version = int(attrs.get("schema_version", 0))
    if version > SCHEMA_VERSION:
        raise StoreError(
            f"{root} was written with store schema {version}; this rnnlens reads up to "
            f"{SCHEMA_VERSION}. Upgrade rnnlens."
        )
    if "layout" not in attrs:
        raise StoreError(
            f"{root} holds no states yet: its extraction stopped before the first batch was written. "
            "Rerun the extraction (it resumes)."
        )
    layout = Layout.from_json(attrs["layout"])
    if not attrs.get("complete", False):
        manifest = read_manifest(root) or {}
        done = manifest.get("samples_done", 0)
        warnings.warn(
            f"{root} is incomplete: {done} sample(s) were written before the extraction stopped; "
            "samples after them read as NaN (mask False). Rerun the same extraction to resume it.",
            RnnLensWarning,
            stacklevel=2,
        )
    if verify and root.local:  # (object stores have no links)
        _refuse_links(root.path)
    try:
        if attrs.get("complete", False) and verify:
            check_chunks(group, layout, root, int(attrs.get("n_samples", -1)))
        path_: Path | str = root.path if root.local else root.url
        return StoredStates.from_group(group, layout, attrs, path=path_, location=root)
    except (ValueError, KeyError, TypeError) as e:
        if isinstance(e, RnnLensError):
            raise
        raise StoreError(
            f"{root} has damaged metadata ({type(e).__name__}: {_first_line(e)}): an array's zarr.json "
            "is truncated or was edited. Rerun the extraction with overwrite=True to rebuild the store."
        ) from None


def _refuse_links(root: Path) -> None:
    """A store is plain files: a symlink inside it (a chunk pointing at another file) is damage
    or an attack, and is never followed."""
    for base, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(base, name)
            if path.is_symlink():
                raise StoreError(
                    f"{root} contains a symbolic link ({path.relative_to(root)} -> {os.readlink(path)}); "
                    "rnnlens does not follow links inside a store. Replace it with the real file, or "
                    "rerun the extraction."
                )


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else "no message"


def check_chunks(group: Any, layout: Layout, root: Any, n_samples: int) -> None:
    """Every chunk of every array of a complete store is there (a deleted chunk would read
    back as the fill value: NaN states, an all-False mask). Checksums are verified as chunks
    are read (crc32c)."""
    for spec in layout.arrays():
        try:
            arr = group[spec.key]
        except KeyError:
            raise StoreError(
                f"{root} lacks the array {spec.key!r} (deleted or damaged). Rerun the extraction "
                "with overwrite=True to rebuild it."
            ) from None
        if n_samples >= 0 and arr.shape[0] != n_samples:  # sizes bounded by what the run recorded
            raise StoreError(
                f"{root}: array {spec.key!r} has {arr.shape[0]} samples in its metadata, but the run "
                f"recorded {n_samples}. The store was edited or damaged; rerun the extraction with "
                "overwrite=True."
            )
        if not _checksummed(arr):
            continue  # written before checksums (schema 1 stores of rnnlens 0.1): nothing to compare
        have, want = arr.nchunks_initialized, arr.nchunks
        if have != want:
            raise StoreError(
                f"{root}: array {spec.key!r} is missing {want - have} of its {want} chunks (deleted or "
                "damaged files). Its data cannot be trusted; rerun the extraction (it rewrites them) "
                "or open with verify=False to read what is there."
            )


def _checksummed(arr: Any) -> bool:
    return any(type(c).__name__ == "Crc32cCodec" for c in getattr(arr.metadata, "codecs", ()))


def verify_store(
    path: str | os.PathLike[str] | Location, *, storage_options: dict[str, Any] | None = None
) -> dict[str, int]:
    """Check a store completely: every chunk present and every chunk's crc32c checksum, read
    chunk by chunk (memory: one chunk). Returns ``{array key: chunks checked}``; raises
    :class:`~rnnlens.errors.StoreError` naming the first damaged array and chunk.

    Example:
        >>> verify_store("missing.zarr")
        Traceback (most recent call last):
        ...
        FileNotFoundError: No state store at 'missing.zarr'.
    """
    root = Location.of(path, storage_options)
    states = open_states(root, verify=True)
    if not states.attrs.get("complete", False):
        raise StoreError(
            f"{path} is incomplete (its extraction stopped); rerun the same extraction to finish it, "
            "then verify it."
        )
    zarr = _zarr()
    group = zarr.open_group(root.zarr_store(read_only=True), mode="r", zarr_format=3)
    checked: dict[str, int] = {}
    for spec in states.layout.arrays():
        arr = group[spec.key]
        if not _checksummed(arr):
            raise StoreError(
                f"{path} was written before rnnlens kept checksums (array {spec.key!r} has none): "
                "there is nothing to verify it against. Rerun the extraction with overwrite=True."
            )
        step = int(arr.chunks[0])
        for index, start in enumerate(range(0, int(arr.shape[0]), step)):
            try:
                arr[start : start + step]
            except ValueError as e:
                raise StoreError(
                    f"{path}: chunk {index} of array {spec.key!r} (samples {start}..) is damaged "
                    f"({_first_line(e)}). Rerun the extraction with overwrite=True."
                ) from None
        checked[spec.key] = index + 1 if arr.shape[0] else 0
    return checked
