"""A single-process extraction in progress: batches in, chunks written by a background
thread, the manifest updated after each."""

from __future__ import annotations

import os
import queue
import threading
import weakref
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np

from .. import adapters
from ..api.loader import load_model
from ..core.options import check_fields, check_layers
from ..errors import InputError
from ..io.data import Batch, Digest, chain, unpack_batch
from ..io.errors import StoreError, StoreMismatchError
from ..io.layout import (
    Layout,
    record_chunk,
    write_manifest,
)
from ..io.location import Location
from ..io.pieces import ChunkAssembler, piece_arrays
from ..io.progress import ProgressBar
from ..io.zarr import _zarr, open_states
from .chunks import trace_piece
from .lock import StoreLock
from .target import StoreTarget, _model_name

ProgressArg = bool | Callable[[int, "int | None"], None] | None
_QUEUE_SIZE = 2
#: bytes of damaged chunks a resume rewrites in place: each is held in memory until the input
#: is known to be the earlier run's, so the bound is on their size, not their number
_MAX_REDO_BYTES = 1 << 30


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
        storage_options: dict[str, Any] | None = None,
    ):
        check_layers(layers)  # the same option errors as trace()
        check_fields(fields)
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise InputError(f"batch_size must be a positive integer; received {batch_size!r}.")
        if max_time is not None and (
            isinstance(max_time, bool) or not isinstance(max_time, (int, np.integer)) or max_time < 1
        ):
            raise InputError(f"max_time must be a positive integer or None; received {max_time!r}.")
        progress_sink = _progress(progress)
        _zarr()  # fail early, before any work, when zarr is missing
        self.location = Location.of(path, storage_options)
        self.path: Path | str = self.location.path if self.location.local else self.location.url
        self.batch_size = int(batch_size)
        self.max_time = None if max_time is None else int(max_time)
        self._layers = layers if layers is None or isinstance(layers, str) else list(layers)
        self._fields = fields
        model_file = None
        if isinstance(model, (str, os.PathLike)):
            model_file = Path(model).name
            model = load_model(model, unsafe=unsafe)
        self.model = model
        self._target = StoreTarget(
            self.location,
            model_sha256=adapters.model_digest(model),
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
        self._chunk: ChunkAssembler | None = None  # set when the layout is known (_open_writer)
        self._redo: set[int] = set()  # done chunks whose files are missing: rewritten on resume
        self._held: list[Any] = []  # rewritten chunks, written once the input is verified
        self._total: int | None = None
        self._lock = StoreLock(self.location).acquire()  # one writer per store, for the whole run
        # a Run dropped without close() (its loop raised elsewhere) still frees the store
        weakref.finalize(self, self._lock.release)
        try:
            self._resume_state(resume=resume, overwrite=overwrite)
        except BaseException:
            self._lock.release()
            raise
        self._offset = 0
        self._chain = ""
        self._digest = Digest()
        self._closed = False
        self._error: BaseException | None = None
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=_QUEUE_SIZE)
        self._thread = threading.Thread(target=self._write_loop, name="rnnlens-writer", daemon=True)
        self._progress = progress_sink
        self._thread.start()

    # ------------------------------------------------------------------ public

    def _resume_state(self, *, resume: bool, overwrite: bool) -> None:
        """Prepare the store and read what an earlier run left (under the lock)."""
        self._manifest = self._target.prepare(resume=resume, overwrite=overwrite)
        # chunks a Dask run finished out of order are recomputed here, in order (same bytes)
        self._manifest.pop("pending", None)
        self._done_chunks = int(self._manifest["chunks_done"])
        self._done_samples = int(self._manifest["samples_done"])
        if self._done_chunks > 0:
            self._layout = Layout.from_json(self._manifest["layout"])
            self._open_writer(create=False)
            # chunks the manifest counts as done whose files are gone or fail their checksum are
            # traced again (resuming reads every done chunk once to check it)
            self._redo = cast(Any, self._writer).damaged_chunks(self._done_chunks)  # set by _open_writer
            held = len(self._redo) * self.batch_size * self._layout.sample_bytes()
            if held > _MAX_REDO_BYTES:
                raise StoreError(
                    f"{self.path}: {len(self._redo)} chunks the manifest counts as done are missing or "
                    f"damaged (deleted files, flipped bytes): rewriting them in place would hold "
                    f"{held / 2**20:.0f} MiB in memory until the input is verified (limit "
                    f"{_MAX_REDO_BYTES / 2**20:.0f} MiB). Pass overwrite=True (CLI: --overwrite) to "
                    "start over."
                )

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
        self._lock.release()
        if self._progress is not None:
            self._progress_update(final=True)

    def open(self) -> Any:
        """The stored states (:func:`rnnlens.open_states` of this run's path)."""
        return open_states(self.location)

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
        specs = {spec.key: spec for spec in self._layout.arrays()}
        _check_chunk_memory(specs, self.batch_size)
        self._chunk = ChunkAssembler(specs, self.batch_size)

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
            if index >= self._done_chunks or index in self._redo:
                self._add(self._trace(piece), take)
            self._offset += take
            pos += take
            if self._offset % self.batch_size == 0:
                self._end_chunk()
            self._progress_update()

    def _trace(self, piece: Batch) -> dict[str, np.ndarray]:
        states, user_mask = trace_piece(self.model, piece, layers=self._layers, fields=self._fields)
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
        """Put one traced piece into the current chunk."""
        assert self._chunk is not None
        self._chunk.add(arrays, n)

    def _end_chunk(self) -> None:
        index = (self._offset - 1) // self.batch_size
        digest = self._digest.hexdigest()
        self._chain = chain(self._chain, digest)
        self._digest = Digest()
        if index < self._done_chunks:
            if index in self._redo:  # held until the input is known to be the earlier run's
                assert self._chunk is not None
                self._held.append((index, self._chunk.filled, self._chunk.take(), digest))
            if index == self._done_chunks - 1:
                if self._chain != self._manifest["input_sha256"]:
                    raise StoreMismatchError(
                        f"The data fed to this run differs from the data of the interrupted run that "
                        f"wrote {self.path} (input hash of its first {self._done_samples} samples). "
                        "Resuming needs the same data in the same order (no shuffling). Pass "
                        "overwrite=True to start over."
                    )
                for item in self._held:
                    self._put(item)
                self._held = []
            return
        assert self._chunk is not None
        n = self._chunk.filled
        self._put((index, n, self._chunk.take(), digest))

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
                write_manifest(self.location, self._manifest)
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
        if self._chunk is not None:
            self._chunk.clear()
        try:
            self._stop_writer()
        finally:
            self._lock.release()
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


def _check_chunk_memory(specs: dict[str, Any], rows: int) -> None:
    """Refuse a chunk that cannot fit in memory (``batch_size`` × ``max_time`` too large)
    before allocating it, with what to change."""
    per_sample = sum(
        int(np.prod(s.tail, dtype=np.int64)) * np.dtype(s.dtype).itemsize for s in specs.values()
    )
    need = rows * per_sample
    try:
        have = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # not on this platform: no limit known
        return
    if need > have // 2:
        raise InputError(
            f"One chunk of {rows} samples would need {need / 2**30:,.1f} GiB (the store's time axis "
            f"and fields for each sample), more than half of this machine's {have / 2**30:,.0f} GiB. "
            "Lower batch_size (--batch-size) or max_time (--max-time)."
        )
