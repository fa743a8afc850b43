"""Streaming extraction: trace a model batch by batch and write the states to a Zarr store.

:func:`extract_to` runs a whole data set (arrays, ``.npy`` files memory-mapped, or any
iterable of batches: a ``tf.data.Dataset``, a ``torch.utils.data.DataLoader``) or returns a
:class:`Run` that takes batches one at a time::

    with rnnlens.extract_to("run.zarr", model, layers=["bilstm_2"], fields=("h", "c")) as run:
        for batch in loader:
            run.append(batch)
    states = rnnlens.open_states("run.zarr")

Every batch goes through :func:`rnnlens.trace` (so any model ``trace`` accepts works here,
Keras or PyTorch), and its states are written while the next batch is traced: one
background writer thread with a queue of two chunks, so memory holds about one batch of
states being computed plus at most three being written, whatever the data set's size.

Chunks and resuming
-------------------
The store is chunked along ``sample`` in chunks of ``batch_size`` sequences. Batches of
any size are split at chunk boundaries and traced piece by piece (a data set of arrays is
sliced into ``batch_size`` batches, so each chunk is one :func:`rnnlens.trace` batch and
the stored states equal ``trace(model, x, batch_size=batch_size)`` bit for bit). A chunk's
arrays are written whole, then the manifest (``run.zarr/manifest``) is replaced atomically
to count it; a chunk that was being written when the process died is not counted and is
recomputed. Rerunning the same extraction (``resume=True``, the default) feeds the data
again from the start: completed chunks are skipped, their input is hashed and checked
against the manifest (resuming with different data, or data in another order, is refused),
and the run continues where it stopped. A store written with another model (weights hash),
other layers or fields, another ``batch_size`` or ``max_time`` is never mixed with: that is
a :class:`~rnnlens.io.errors.StoreMismatchError` unless ``overwrite=True``.

Variable lengths
----------------
The time axis is fixed by the first batch (its number of steps) or by ``max_time=``. Later
batches may be shorter: they are padded at the end (NaN states, ``mask`` False). A longer
batch is an error that asks for ``max_time``. Valid steps come from the model's own mask
(``Embedding(mask_zero=True)``, ``Masking``) and from ``mask=`` / ``lengths=`` (which, for
Keras, are also applied to the model's input like a ``Masking`` layer): a step is valid when
both say so. ``lengths`` stores the number of valid steps of each sequence. For PyTorch
models ``mask`` / ``lengths`` are only recorded: ``trace`` does not pass them to ``forward``.
"""

from __future__ import annotations

import hashlib
import os
import queue
import shutil
import threading
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .api import framework_of
from .errors import InputError, UnsupportedLayerError
from .io.data import Batch, Digest, chain, open_source, unpack_batch
from .io.errors import StoreError, StoreExistsError, StoreMismatchError
from .io.layout import (
    FORMAT,
    SCHEMA_VERSION,
    TIME_ORDER,
    ArraySpec,
    LayerLayout,
    Layout,
    any_chunk_done,
    direction_path,
    read_manifest,
    record_chunk,
    write_manifest,
)
from .io.progress import ProgressBar
from .spec import ALL_FIELDS
from .states import States

__all__ = ["Run", "StoreTarget", "extract_to", "weights_sha256"]

ProgressArg = bool | Callable[[int, "int | None"], None] | None
_QUEUE_SIZE = 2


def extract_to(
    path: str | os.PathLike[str],
    model: Any,
    data: Any = None,
    *,
    layers: str | Iterable[str] | None = None,
    fields: str | Sequence[str] | None = ("h",),
    batch_size: int = 256,
    resume: bool = True,
    overwrite: bool = False,
    mask: Any = None,
    lengths: Any = None,
    progress: ProgressArg = None,
    max_time: int | None = None,
    unsafe: bool = False,
    client: Any = None,
) -> Run:
    """Trace ``model`` on ``data`` batch by batch and store the states at ``path`` (Zarr v3).

    Args:
        path: the store directory to create (or resume).
        model: a model :func:`rnnlens.trace` accepts, or a model file path (opened with
            :func:`rnnlens.load_model`, safe mode unless ``unsafe=True``).
        data: NumPy array(s) (a dict of arrays for several inputs), a ``.npy`` path
            (memory-mapped) or ``.npz`` path (arrays ``x`` and optional ``mask``,
            ``lengths``), or an iterable of batches (``tf.data.Dataset``,
            ``torch.utils.data.DataLoader``, a list of arrays; batches ``x``, ``(x,)``,
            ``(x, y)``, ``(x, y, sample_weight)`` or ``{"x": ..., "lengths": ...}``).
            None: return an open :class:`Run`; feed it with :meth:`Run.append`.
        layers: layer name(s) as for :func:`rnnlens.trace`; None: every recurrent layer.
        fields: subset of ``("h", "c", "gates")`` (``h`` always comes); None: every field
            each layer has.
        batch_size: sequences per trace pass and per stored chunk.
        resume: continue an interrupted run of the same extraction at ``path``.
        overwrite: replace whatever store is at ``path``.
        mask, lengths: valid steps, (sample, time) bool or (sample,) ints, as arrays or
            ``.npy`` paths, aligned with ``data``.
        progress: True for a progress bar on stderr, or a callable ``(done, total)``.
        max_time: the stored time axis (default: the first batch's number of steps).
        unsafe: let a model file run code it contains (trusted files only).
        client: a ``dask.distributed.Client``: trace the chunks on its workers, each writing
            its own chunks into the store (see :mod:`rnnlens.distributed`; ``data`` must be
            sliceable: arrays, ``.npy``/``.npz`` path(s), a Zarr array). Same store, bit for bit.

    Returns:
        The :class:`Run`: closed when ``data`` was given, open otherwise (with ``client``: a
        closed :class:`rnnlens.distributed.DistributedRun`).

    Example:
        >>> import keras, numpy as np, rnnlens, tempfile, os
        >>> model = keras.Sequential([keras.Input((None, 3)), keras.layers.LSTM(4, name="enc")])
        >>> x = np.random.default_rng(0).normal(size=(10, 6, 3)).astype("float32")
        >>> out = os.path.join(tempfile.mkdtemp(), "run.zarr")
        >>> run = rnnlens.extract_to(out, model, x, fields=("h", "c"), batch_size=4)
        >>> states = rnnlens.open_states(out)
        >>> states["enc"].forward.c.shape
        (10, 6, 4)
        >>> bool((states["enc"].forward.h[:] == rnnlens.trace(model, x, batch_size=4)["enc"].h).all())
        True
    """
    if client is not None:
        from .distributed import extract_distributed

        return extract_distributed(
            path,
            model,
            data,
            client=client,
            layers=layers,
            fields=fields,
            batch_size=batch_size,
            resume=resume,
            overwrite=overwrite,
            mask=mask,
            lengths=lengths,
            progress=progress,
            max_time=max_time,
            unsafe=unsafe,
        )
    if data is None and (mask is not None or lengths is not None):
        raise InputError(
            "mask= and lengths= go with data=; without data, pass them per batch: "
            "run.append(x, mask=..., lengths=...)."
        )
    run = Run(
        path,
        model,
        layers=layers,
        fields=fields,
        batch_size=batch_size,
        resume=resume,
        overwrite=overwrite,
        progress=progress,
        max_time=max_time,
        unsafe=unsafe,
    )
    if data is None:
        return run
    try:
        source = open_source(data, batch_size=batch_size, mask=mask, lengths=lengths)
        run._expect(source.total)
        for b in source.batches:
            run._append(b)
    except BaseException:
        run._abort()
        raise
    run.close()
    return run


class Run:
    """An extraction in progress; see :func:`extract_to`. Use it as a context manager, or
    call :meth:`close` at the end (only a closed run is marked complete; after an exception
    in the ``with`` block the chunks already written stay, and rerunning resumes).

    Example:
        >>> import keras, numpy as np, rnnlens, tempfile, os
        >>> model = keras.Sequential([keras.Input((None, 2)), keras.layers.GRU(3, name="gru")])
        >>> out = os.path.join(tempfile.mkdtemp(), "run.zarr")
        >>> with rnnlens.extract_to(out, model, fields=("h", "gates"), batch_size=8) as run:
        ...     for batch in np.ones((3, 8, 5, 2), "float32"):  # any loader
        ...         run.append(batch)
        >>> run.n_samples, rnnlens.open_states(out)["gru"].gates["z"].shape
        (24, (24, 5, 3))
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        model: Any,
        *,
        layers: str | Iterable[str] | None = None,
        fields: str | Sequence[str] | None = ("h",),
        batch_size: int = 256,
        resume: bool = True,
        overwrite: bool = False,
        progress: ProgressArg = None,
        max_time: int | None = None,
        unsafe: bool = False,
    ):
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise InputError(f"batch_size must be a positive integer; received {batch_size!r}.")
        if max_time is not None and (not isinstance(max_time, (int, np.integer)) or max_time < 1):
            raise InputError(f"max_time must be a positive integer or None; received {max_time!r}.")
        progress_sink = _progress(progress)
        from .io.zarr import _zarr

        _zarr()  # fail early, before any work, when zarr is missing
        self.path = Path(path)
        self.batch_size = int(batch_size)
        self.max_time = None if max_time is None else int(max_time)
        self._layers = layers if layers is None or isinstance(layers, str) else list(layers)
        self._fields = fields
        model_file = None
        if isinstance(model, (str, os.PathLike)):
            from .loading import load_model

            model_file = Path(model).name
            model = load_model(model, unsafe=unsafe)
        self.model = model
        self.framework = _framework(model)
        self._target = StoreTarget(
            self.path,
            model_sha256=weights_sha256(model),
            model_name=_model_name(model),
            model_file=model_file,
            layers=layers,
            fields=fields,
            batch_size=self.batch_size,
            max_time=self.max_time,
        )
        self.config = self._target.config
        self._root_attrs = self._target.root_attrs
        self._layout: Layout | None = None
        self._writer: Any = None
        self._specs: dict[str, ArraySpec] = {}
        self._total: int | None = None
        self._manifest = self._target.prepare(resume=resume, overwrite=overwrite)
        # chunks a Dask run finished out of order are recomputed here, in order (same bytes)
        self._manifest.pop("pending", None)
        self._done_chunks = int(self._manifest["chunks_done"])
        self._done_samples = int(self._manifest["samples_done"])
        if self._done_chunks > 0:
            self._layout = Layout.from_json(self._manifest["layout"])
            self._open_writer(create=False)
        self._offset = 0
        self._chain = ""
        self._digest = Digest()
        self._buffer: dict[str, np.ndarray] | None = None
        self._filled = 0
        self._closed = False
        self._error: BaseException | None = None
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=_QUEUE_SIZE)
        self._thread = threading.Thread(target=self._write_loop, name="rnnlens-writer", daemon=True)
        self._progress = progress_sink
        self._thread.start()

    # ------------------------------------------------------------------ public

    def append(self, batch: Any, *, mask: Any = None, lengths: Any = None) -> None:
        """Trace one batch and queue its states for writing.

        ``batch``: ``x`` (an array, or a list / dict of arrays for several inputs), or
        ``(x,)``, ``(x, y)``, ``(x, y, sample_weight)``, or ``{"x": ..., "mask": ...,
        "lengths": ...}``. Tensors of any framework are accepted.
        """
        self._check_open()
        try:
            self._append(unpack_batch(batch, mask=mask, lengths=lengths, what="batch"))
        except BaseException:
            self._abort()
            raise

    def close(self) -> None:
        """Write the last (partial) chunk, wait for every write, and mark the store complete."""
        if self._closed:
            return
        try:
            if self._offset % self.batch_size:
                self._end_chunk()
            if self._offset < self._done_samples:
                raise StoreMismatchError(
                    f"This run's data ended after {self._offset} samples, but {self.path} already holds "
                    f"{self._done_samples} from an earlier run of this extraction. Feed the same data "
                    "again, or pass overwrite=True to start over."
                )
            if self._offset == 0:
                raise InputError("No data was appended: the data set or loader yielded no batches.")
            self._stop_writer()
            self._raise_writer_error()
            self._target.finish(self._writer, self._manifest, self._offset)
        except BaseException:
            self._abort()
            raise
        self._closed = True
        if self._progress is not None:
            self._progress_update(final=True)

    def open(self) -> Any:
        """The stored states (:func:`rnnlens.open_states` of this run's path)."""
        from .io.zarr import open_states

        return open_states(self.path)

    @property
    def n_samples(self) -> int:
        """Samples appended so far (including those skipped because an earlier run wrote them)."""
        return self._offset

    @property
    def completed_samples(self) -> int:
        """Samples an earlier, interrupted run of this extraction already wrote."""
        return self._done_samples

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> Run:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.close()
        else:
            self._abort()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"Run({str(self.path)!r}, {state}, {self._offset} samples)"

    # ------------------------------------------------------------------ store

    def _open_writer(self, *, create: bool) -> None:
        assert self._layout is not None
        self._writer = self._target.writer(self._layout, self._manifest, total=self._total, create=create)
        self._specs = {spec.key: spec for spec in self._layout.arrays()}

    def _expect(self, total: int | None) -> None:
        self._total = total

    # ------------------------------------------------------------------ batches

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError(f"This run of {self.path} is closed; start a new one with extract_to(...).")
        self._raise_writer_error()

    def _append(self, b: Batch) -> None:
        self._check_open()
        b_size = b.size
        pos = 0
        while pos < b_size:
            index = self._offset // self.batch_size
            room = (index + 1) * self.batch_size - self._offset
            take = min(room, b_size - pos)
            piece = b if take == b_size else b.slice(pos, pos + take)
            self._digest.update(piece)
            if index >= self._done_chunks:
                self._add(self._trace(piece), take)
            self._offset += take
            pos += take
            if self._offset % self.batch_size == 0:
                self._end_chunk()
            self._progress_update()

    def _trace(self, piece: Batch) -> dict[str, np.ndarray]:
        states, user_mask = trace_piece(
            self.model, self.framework, piece, layers=self._layers, fields=self._fields
        )
        layout, arrays = piece_arrays(
            states,
            user_mask,
            piece.size,
            layout=self._layout,
            max_time=self.max_time,
            offset=self._offset,
            path=self.path,
        )
        if self._layout is None:
            self._layout = layout
            self._open_writer(create=True)
        return arrays

    def _add(self, arrays: dict[str, np.ndarray], n: int) -> None:
        """Put one traced piece into the current chunk (no copy when it is the whole chunk)."""
        assert self._layout is not None
        full_time = arrays["mask"].shape[1] == self._layout.max_time
        whole = self._filled == 0 and n == self.batch_size and full_time
        if whole:
            self._buffer = {k: _cast(a, self._specs[k].dtype) for k, a in arrays.items()}
            self._filled = n
            return
        if self._buffer is None:
            self._buffer = {
                key: np.full((self.batch_size, *spec.tail), spec.fill, dtype=spec.dtype)
                for key, spec in self._specs.items()
            }
        start, stop = self._filled, self._filled + n
        for key, a in arrays.items():
            if key == "lengths":
                self._buffer[key][start:stop] = a
            else:
                self._buffer[key][start:stop, : a.shape[1]] = a
        self._filled = stop

    def _end_chunk(self) -> None:
        index = (self._offset - 1) // self.batch_size
        digest = self._digest.hexdigest()
        self._chain = chain(self._chain, digest)
        self._digest = Digest()
        if index < self._done_chunks:
            if index == self._done_chunks - 1 and self._chain != self._manifest["input_sha256"]:
                raise StoreMismatchError(
                    f"The data fed to this run differs from the data of the interrupted run that wrote "
                    f"{self.path} (input hash of its first {self._done_samples} samples). Resuming needs "
                    "the same data in the same order (no shuffling). Pass overwrite=True to start over."
                )
            return
        assert self._buffer is not None
        n = self._filled
        chunk = {k: v[:n] for k, v in self._buffer.items()}
        self._buffer, self._filled = None, 0
        self._put((index, n, chunk, digest))

    # ------------------------------------------------------------------ writer thread

    def _put(self, item: Any) -> None:
        while True:
            self._raise_writer_error()
            try:
                self._queue.put(item, timeout=0.2)
                return
            except queue.Full:
                continue

    def _write_loop(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            if self._error is not None:
                continue  # drain without writing after a failure
            index, n, chunk, digest = item
            try:
                self._writer.write(index, n, chunk)
                record_chunk(self._manifest, index, n, digest)
                write_manifest(self.path, self._manifest)
            except BaseException as e:
                self._error = e

    def _stop_writer(self) -> None:
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()

    def _raise_writer_error(self) -> None:
        if self._error is not None:
            e = self._error
            raise StoreError(f"Writing to {self.path} failed: {type(e).__name__}: {e}") from e

    def _abort(self) -> None:
        """Stop after an error: finish writing chunks already complete, leave the rest undone."""
        if self._closed:
            return
        self._closed = True
        self._buffer = None
        self._stop_writer()
        if isinstance(self._progress, ProgressBar):
            self._progress.abort()

    def _progress_update(self, final: bool = False) -> None:
        if self._progress is None:
            return
        if isinstance(self._progress, ProgressBar):
            self._progress.update(self._offset)
            if self._total is not None:
                self._progress.total = self._total
            if final:
                self._progress.close(f"-> {self.path}")
        else:
            self._progress(self._offset, self._total)


class StoreTarget:
    """The store side of one extraction: its configuration (what must match to resume), root
    attributes, preparation (create, resume or refuse), array creation and completion.

    Shared by :class:`Run` (one process) and the Dask driver (:mod:`rnnlens.distributed`),
    which knows the model only by its weights hash, name and file.
    """

    def __init__(
        self,
        path: Path,
        *,
        model_sha256: str,
        model_name: str,
        model_file: str | None,
        layers: str | Iterable[str] | None,
        fields: str | Sequence[str] | None,
        batch_size: int,
        max_time: int | None,
    ):
        self.path = path
        self.batch_size = batch_size
        self.config: dict[str, Any] = {
            "schema_version": SCHEMA_VERSION,
            "model_sha256": model_sha256,
            "layers": _norm_layers(layers),
            "fields": _norm_fields(fields),
            "batch_size": batch_size,
            "max_time": max_time,
        }
        self.root_attrs: dict[str, Any] = {
            "format": FORMAT,
            "schema_version": SCHEMA_VERSION,
            "rnnlens_version": _version(),
            "model_name": model_name,
            "model_file": model_file,
            "model_sha256": model_sha256,
            "layers": self.config["layers"],
            "fields": self.config["fields"],
            "time_order": TIME_ORDER,
            "batch_size": batch_size,
            "max_time": max_time,
            "complete": False,
        }

    def prepare(self, *, resume: bool, overwrite: bool) -> dict[str, Any]:
        """Create the store, or check the one there may be resumed; return its manifest."""
        root = self.path
        manifest = None
        if root.exists():
            if not root.is_dir():
                raise StoreExistsError(f"{root} exists and is a file, not a store; choose another path.")
            has_entries = any(root.iterdir())
            manifest = read_manifest(root) if not overwrite else None
            if manifest is not None and not any_chunk_done(manifest) and not manifest.get("complete"):
                # an earlier run stopped before storing anything: nothing to mix with, start afresh
                shutil.rmtree(root)
                has_entries, manifest = False, None
            if has_entries and overwrite:
                if not ((root / "zarr.json").exists() or (root / "manifest" / "zarr.json").exists()):
                    raise StoreExistsError(
                        f"{root} exists and is not a Zarr store; refusing to delete it even with "
                        "overwrite=True. Choose another output path."
                    )
                shutil.rmtree(root)
            elif has_entries and manifest is None:
                raise StoreExistsError(
                    f"{root} exists and is not a resumable rnnlens store. Pass overwrite=True (CLI: "
                    "--overwrite) to replace it, or choose another path."
                )
            elif manifest is not None and not resume:
                done = (
                    "complete" if manifest.get("complete") else f"{manifest.get('samples_done', 0)} samples"
                )
                raise StoreExistsError(
                    f"{root} already holds an extraction ({done}). Pass overwrite=True (CLI: --overwrite) "
                    "to replace it, or resume=True to continue it."
                )
        if manifest is not None:
            diffs = _config_diff(manifest.get("config", {}), self.config)
            if diffs:
                raise StoreMismatchError(
                    f"{root} was written by a different extraction: {'; '.join(diffs)}. Refusing to mix "
                    "them in one store. Pass overwrite=True (CLI: --overwrite) to replace it, or write "
                    "to another path."
                )
        else:
            root.mkdir(parents=True, exist_ok=True)
            manifest = {
                "config": self.config,
                "layout": None,
                "chunks_done": 0,
                "samples_done": 0,
                "input_sha256": "",
                "complete": False,
            }
            write_manifest(root, manifest)
        self._write_root_attrs(manifest)
        return manifest

    def _write_root_attrs(self, manifest: dict[str, Any]) -> None:
        from .io.zarr import _zarr

        group = _zarr().open_group(str(self.path), mode="a", zarr_format=3)
        attrs = dict(self.root_attrs)
        if manifest.get("complete"):
            attrs.update(complete=True, n_samples=manifest["samples_done"])
        group.attrs.update(attrs)

    def writer(self, layout: Layout, manifest: dict[str, Any], *, total: int | None, create: bool) -> Any:
        """A :class:`~rnnlens.io.zarr.StoreWriter`: the arrays created afresh (the manifest
        records the layout first) or opened to resume."""
        from .io.zarr import StoreWriter

        writer = StoreWriter(self.path, layout, batch_size=self.batch_size, n_samples=total)
        if create:
            manifest.update(layout=layout.to_json(), chunks_done=0, samples_done=0, input_sha256="")
            manifest.pop("pending", None)
            write_manifest(self.path, manifest)
            writer.create(
                {
                    **self.root_attrs,
                    "backend": layout.backend,
                    "layer_names": [layer.name for layer in layout.layers],
                    "layout": layout.to_json(),
                }
            )
        else:
            writer.open()
        return writer

    def finish(self, writer: Any, manifest: dict[str, Any], n_samples: int) -> None:
        """Set the final size and attributes, then mark the manifest complete."""
        writer.finish(n_samples, {**self.root_attrs, "complete": True, "n_samples": n_samples})
        manifest.update(complete=True, samples_done=n_samples)
        write_manifest(self.path, manifest)


# --------------------------------------------------------------------------- one chunk


def trace_piece(
    model: Any,
    framework: str,
    piece: Batch,
    *,
    layers: str | Iterable[str] | None,
    fields: str | Sequence[str] | None,
) -> tuple[States, np.ndarray | None]:
    """Trace one piece of input as one batch; also return the user's mask (from ``mask`` or
    ``lengths``) as (sample, time) bool, or None."""
    import rnnlens

    user_mask = piece.mask
    if user_mask is None and piece.lengths is not None:
        steps = _time_steps(piece.x)
        if piece.lengths.size and int(piece.lengths.max()) > steps:
            raise InputError(
                f"lengths has a value {int(piece.lengths.max())} above the batch's {steps} time steps."
            )
        user_mask = np.arange(steps)[None, :] < np.asarray(piece.lengths)[:, None]
    if framework == "keras":
        states = rnnlens.trace(
            model, piece.x, layers=layers, fields=fields, mask=user_mask, batch_size=piece.size
        )
    elif framework == "onnx":  # NumPy straight to ONNX Runtime; valid steps come from the graph
        states = rnnlens.trace(model, piece.x, layers=layers, fields=fields)
    else:
        states = rnnlens.trace(model, _to_torch(piece.x), layers=layers, fields=fields)
    return states, user_mask


def piece_arrays(
    states: States,
    user_mask: np.ndarray | None,
    n: int,
    *,
    layout: Layout | None,
    max_time: int | None,
    offset: int,
    path: Path,
) -> tuple[Layout, dict[str, np.ndarray]]:
    """The stored arrays of one traced piece (``mask``, ``lengths``, each layer's fields, not
    yet padded in time), and the layout: ``layout`` when given (checked to match), else the
    one these states define. ``max_time``: the store's time axis requested by the caller."""
    first = next(iter(states.values()))
    steps = int(first.directions[next(iter(first.directions))].h.shape[1])
    axis = layout.max_time if layout is not None else max_time or steps
    if steps > axis:
        raise InputError(
            f"Samples {offset}..{offset + n - 1} have {steps} time steps, but the store's "
            f"time axis has {axis} (fixed by {'max_time' if max_time else 'the first batch'}). "
            "Pass max_time=<longest sequence> (CLI: --max-time) with overwrite=True, or pad every "
            "batch to one length."
        )
    mine = _layout_of(states, axis)
    if layout is None:
        layout = mine
    elif mine.layers != layout.layers or mine.backend != layout.backend:
        raise StoreMismatchError(
            f"This batch's states ({_describe_layout(mine)}) differ from those already in "
            f"{path} ({_describe_layout(layout)}). Pass overwrite=True to start over."
        )
    mask = np.ones((n, steps), dtype=bool)
    for given, what in ((states.mask, "the model's mask"), (user_mask, "mask")):
        if given is None:
            continue
        given = np.asarray(given, dtype=bool)
        if given.shape != (n, steps):
            raise InputError(
                f"{what} has shape {given.shape}; the traced states have (sample, time) = {(n, steps)}."
            )
        mask &= given
    out: dict[str, np.ndarray] = {"mask": mask, "lengths": mask.sum(axis=1, dtype=np.int32)}
    for lay in layout.layers:
        ls = states[lay.name]
        for dname in lay.directions:
            d = ls.directions[dname]
            base = direction_path(lay.name, dname)
            for field in lay.fields:
                arr = d.gates.array if field == "gates" else getattr(d, field)
                out[f"{base}/{field}"] = arr
    return layout, out


def whole_chunk(arrays: dict[str, np.ndarray], layout: Layout, n: int) -> dict[str, np.ndarray]:
    """One traced piece as a chunk of ``n`` samples: cast to the stored dtypes and padded in
    time with the fill values, exactly as :class:`Run` assembles a chunk."""
    specs = {spec.key: spec for spec in layout.arrays()}
    if arrays["mask"].shape[1] == layout.max_time:
        return {k: _cast(a, specs[k].dtype) for k, a in arrays.items()}
    out = {}
    for key, spec in specs.items():
        buf = np.full((n, *spec.tail), spec.fill, dtype=spec.dtype)
        a = arrays[key]
        if key == "lengths":
            buf[:] = a
        else:
            buf[:, : a.shape[1]] = a
        out[key] = buf
    return out


# --------------------------------------------------------------------------- helpers


def weights_sha256(model: Any) -> str:
    """sha256 over a model's weight arrays (shapes, dtypes and bytes, in order; not their
    names, which Keras renames when a model is loaded twice).

    Keras: ``model.weights``; PyTorch: ``model.state_dict()``; ONNX: the initializers.

    Example:
        >>> import keras, rnnlens.extract as ex
        >>> model = keras.Sequential([keras.Input((None, 3)), keras.layers.GRU(2)])
        >>> len(ex.weights_sha256(model))
        64
    """
    h = hashlib.sha256()
    state_dict = getattr(model, "state_dict", None)
    if _framework(model) == "torch" and callable(state_dict):
        arrays = [_torch_bytes(t) for t in state_dict().values()]
    elif _framework(model) == "onnx":  # initializers and Constant tensors, in graph order
        from .adapters import onnx as oadapter

        arrays = oadapter.weight_arrays(model)
    else:
        arrays = [_np(v) for v in getattr(model, "weights", [])]
    for a in arrays:
        h.update(f"{a.dtype.str}|{a.shape}|".encode())
        h.update(np.ascontiguousarray(a).data.cast("B"))
    return h.hexdigest()


def _np(v: Any) -> np.ndarray:
    return np.asarray(v.numpy() if hasattr(v, "numpy") else v)


def _torch_bytes(t: Any) -> np.ndarray:
    if not hasattr(t, "detach"):
        return np.asarray(t)
    t = t.detach().cpu().contiguous()
    try:
        return np.asarray(t.numpy())
    except TypeError:  # bfloat16 and other dtypes NumPy lacks: hash the raw bytes
        import torch

        flat = t.reshape(-1) if t.dim() else t.reshape(1)
        return np.asarray(flat.view(torch.uint8).numpy())


def _framework(model: Any) -> str:
    return framework_of(model) or "other"


def _model_name(model: Any) -> str:
    name = getattr(model, "name", None)
    return str(name) if isinstance(name, str) and name else type(model).__name__


def _version() -> str:
    from . import __version__

    return str(__version__)


def _norm_layers(layers: str | Iterable[str] | None) -> list[str] | None:
    if layers is None:
        return None
    return [layers] if isinstance(layers, str) else sorted(set(layers))


def _norm_fields(fields: str | Sequence[str] | None) -> list[str] | None:
    if fields is None:
        return None
    asked = {fields} if isinstance(fields, str) else set(fields)
    asked.add("h")
    return [f for f in ALL_FIELDS if f in asked] + sorted(asked - set(ALL_FIELDS))


_CONFIG_WORDS = {
    "model_sha256": "model weights (sha256)",
    "layers": "layers",
    "fields": "fields",
    "batch_size": "batch_size",
    "max_time": "max_time",
    "schema_version": "store schema version",
}


def _config_diff(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    out = []
    for key, word in _CONFIG_WORDS.items():
        a, b = old.get(key), new.get(key)
        if a != b:
            if key == "model_sha256":
                a, b = f"{str(a)[:12]}…", f"{str(b)[:12]}…"
            out.append(f"{word} {a!r} there, {b!r} now")
    return out


def _layout_of(states: States, max_time: int) -> Layout:
    layers = []
    for name, ls in states.items():
        if ls.spec.feature_shape is not None:  # the store's arrays are (sample, time, unit)
            others = [n for n in states if states[n].spec.feature_shape is None]
            raise UnsupportedLayerError(
                f"Layer {name!r} ({ls.spec.layer_type}) has feature-map states, each step "
                f"{ls.spec.feature_shape}; Zarr stores hold (sample, time, unit) states only "
                "(ConvLSTM storage is not supported yet, issue #8). Trace it in memory with "
                f"rnnlens.trace(model, x, layers=[{name!r}], batch_size=...), or leave it out of "
                + (f"the store with layers={others}." if others else "the store with layers=[...].")
            )
        d0 = next(iter(ls.directions.values()))
        layers.append(
            LayerLayout(
                name=name,
                kind=ls.spec.kind,
                layer_type=ls.spec.layer_type,
                units=int(ls.spec.units),
                cell_units=None if ls.spec.cell_units is None else int(ls.spec.cell_units),
                directions=tuple(ls.directions),
                fields=tuple(d0.fields),
                dtype=np.dtype(d0.h.dtype).name,
                notes=tuple(ls.spec.notes),
            )
        )
    return Layout(max_time=max_time, backend=states.backend, layers=tuple(layers))


def _describe_layout(layout: Layout) -> str:
    return (
        "; ".join(
            f"{lay.name}: {lay.kind} {lay.units} units, {'+'.join(lay.directions)}, {','.join(lay.fields)}"
            for lay in layout.layers
        )
        + f"; backend {layout.backend}"
    )


def _cast(a: np.ndarray, dtype: str) -> np.ndarray:
    return a if a.dtype == np.dtype(dtype) else a.astype(dtype)


def _time_steps(x: Any) -> int:
    if isinstance(x, dict):
        x = next(iter(x.values()))
    elif isinstance(x, (list, tuple)):
        x = x[0]
    return int(x.shape[1])


def _to_torch(x: Any) -> Any:
    import torch

    def conv(a: np.ndarray) -> Any:
        a = np.asarray(a)
        if not a.flags.writeable or not a.flags.c_contiguous:
            a = np.array(a)
        return torch.from_numpy(a)

    if isinstance(x, dict):
        return {k: conv(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [conv(v) for v in x]
    return conv(x)


def _progress(progress: ProgressArg) -> Any:
    if progress is None or progress is False:
        return None
    if progress is True:
        return ProgressBar(label="extract")
    if callable(progress):
        return progress
    raise InputError(
        f"progress must be True, False, None or a callable (done, total); received {progress!r}."
    )
