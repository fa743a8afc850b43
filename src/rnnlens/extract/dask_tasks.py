"""The worker side of a distributed extraction (:mod:`rnnlens.distributed`): the functions
the driver submits to Dask workers (probe, chunk, digest, release, prune), the per-run state
each worker process keeps between tasks (the loaded model, the open store, the probe's
trace, counts) and :func:`held_runs`, which lists it; plus the small task payloads both sides
share (the chunks' inputs, :class:`_Piece` cut by ``_pieces``, and how a worker gets the model,
:class:`_ModelFile` / :class:`_ModelBytes`). Dask pickles these by module path, so workers
import this module; it never imports the driver.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import adapters
from ..api.loader import load_model
from ..io.data import Batch, Digest, _map
from ..io.errors import StoreMismatchError
from ..io.layout import Layout
from ..io.location import Location
from ..io.pieces import piece_arrays, whole_chunk
from ..io.zarr import StoreWriter
from .chunks import trace_piece
from .target import _model_name

# --------------------------------------------------------------------------- shared payloads


@dataclass(frozen=True)
class _Piece:
    """One chunk's input as a task carries it: leaves are NumPy slices, or lazy arrays
    (``.npy`` files, Zarr) with the rows to read on the worker."""

    index: int
    start: int
    stop: int
    batch: Batch

    def read(self) -> Batch:
        sl = slice(self.start, self.stop)

        def get(a: Any) -> Any:
            return a if isinstance(a, np.ndarray) else np.asarray(a[sl])

        b = self.batch
        return Batch(
            _map(b.x, get),
            None if b.mask is None else get(b.mask),
            None if b.lengths is None else get(b.lengths),
        )

    @property
    def size(self) -> int:
        return self.stop - self.start


def _pieces(whole: Batch, batch_size: int) -> list[_Piece]:
    out = []
    for index, start in enumerate(range(0, whole.size, batch_size)):
        stop = min(start + batch_size, whole.size)

        def cut(a: Any, start: int = start, stop: int = stop) -> Any:
            # NumPy (and memory-mapped) arrays are sliced here and travel in the task (a view:
            # pickling copies just these rows)
            return a[start:stop] if isinstance(a, np.ndarray) else a

        b = Batch(
            _map(whole.x, cut),
            None if whole.mask is None else cut(whole.mask),
            None if whole.lengths is None else cut(whole.lengths),
        )
        out.append(_Piece(index, start, stop, b))
    return out


@dataclass(frozen=True)
class _ModelFile:
    """A model file every worker opens itself (same path on every machine)."""

    path: str
    unsafe: bool

    def load(self, payload: Any) -> Any:
        return load_model(self.path, unsafe=self.unsafe)


@dataclass(frozen=True)
class _ModelBytes:
    """An in-memory model, pickled once by the client and scattered to the workers."""

    def load(self, payload: Any) -> Any:
        import pickle

        return pickle.loads(payload)  # the bytes are the client's own model (trusted)


# --------------------------------------------------------------------------- the workers

_RUNS: dict[str, _WorkerRun] = {}
_RUNS_LOCK = threading.Lock()


class _WorkerRun:
    """What one worker process keeps for one run: the model (loaded once), the store's
    arrays (opened once), the probe's trace, and counts."""

    def __init__(self) -> None:
        self.lock = threading.Lock()  # one load, and one trace at a time (adapters patch the model)
        self.model: Any = None
        self.sha256 = ""
        self.name = ""
        self.writer: Any = None
        self.first: dict[int, Any] = {}
        self.loads = 0
        self.chunks = 0
        self.traces = 0

    def get_model(self, spec: Any, payload: Any) -> Any:
        with self.lock:
            if self.model is None:
                model = spec.load(payload)
                self.sha256 = adapters.model_digest(model)
                self.name = _model_name(model)
                self.model = model
                self.loads += 1
            return self.model


def _state(token: str) -> _WorkerRun:
    with _RUNS_LOCK:
        run = _RUNS.get(token)
        if run is None:
            run = _RUNS[token] = _WorkerRun()
        return run


def _address() -> str:
    from distributed import get_worker

    return str(get_worker().address)


def _probe_task(
    token: str,
    spec: Any,
    payload: Any,
    piece: _Piece | None,
    layers: Any,
    fields: Any,
    max_time: int | None,
    path: Any,
) -> dict[str, Any]:
    state = _state(token)
    model = state.get_model(spec, payload)
    info: dict[str, Any] = {
        "sha256": state.sha256,
        "name": state.name,
        "worker": _address(),
        "layout": None,
    }
    if piece is not None:
        batch = piece.read()
        with state.lock:
            traced = trace_piece(model, batch, layers=layers, fields=fields)
            state.traces += 1
        states, user_mask = traced
        layout, _ = piece_arrays(
            states, user_mask, piece.size, layout=None, max_time=max_time, offset=piece.start, path=path
        )
        state.first[piece.index] = traced
        info["layout"] = layout.to_json()
    return info


def _chunk_task(
    token: str,
    spec: Any,
    payload: Any,
    piece: _Piece,
    layout_json: dict[str, Any],
    sha256: str,
    path: Any,
    batch_size: int,
    total: int,
    layers: Any,
    fields: Any,
    max_time: int | None,
) -> dict[str, Any]:
    state = _state(token)
    model = state.get_model(spec, payload)
    if state.sha256 != sha256:
        raise StoreMismatchError(
            f"Worker {_address()} loaded a model with other weights (sha256 {state.sha256[:12]}…) than "
            f"this run's ({sha256[:12]}…): is the model file the same on every machine?"
        )
    batch = piece.read()
    digest = Digest()
    digest.update(batch)
    traced = state.first.pop(piece.index, None)
    if traced is None:
        with state.lock:
            traced = trace_piece(model, batch, layers=layers, fields=fields)
            state.traces += 1
    layout = Layout.from_json(layout_json)
    states, user_mask = traced
    _, arrays = piece_arrays(
        states, user_mask, piece.size, layout=layout, max_time=max_time, offset=piece.start, path=path
    )
    chunk = whole_chunk(arrays, layout, piece.size)
    with state.lock:
        if state.writer is None:
            writer = StoreWriter(Location.of(path), layout, batch_size=batch_size, n_samples=total)
            writer.open()
            state.writer = writer
    state.writer.write(piece.index, piece.size, chunk)
    state.chunks += 1
    return {"index": piece.index, "n": piece.size, "digest": digest.hexdigest(), "worker": _address()}


def _digest_task(piece: _Piece) -> str:
    digest = Digest()
    digest.update(piece.read())
    return digest.hexdigest()


def _release_task(token: str) -> dict[str, int]:
    with _RUNS_LOCK:
        run = _RUNS.pop(token, None)
    if run is None:
        return {"loads": 0, "chunks": 0, "traces": 0}
    return {"loads": run.loads, "chunks": run.chunks, "traces": run.traces}


def _client_ids(dask_scheduler: Any) -> list[str]:
    return sorted(str(c) for c in dask_scheduler.clients)


def _prune_task(active: list[str]) -> list[str]:
    with _RUNS_LOCK:
        stale = [t for t in _RUNS if t.rpartition("@")[2] not in active]
        for t in stale:
            del _RUNS[t]
    return stale


def _held_runs_task() -> list[str]:
    with _RUNS_LOCK:
        return sorted(_RUNS)


def held_runs(client: Any) -> dict[str, list[str]]:
    """The runs whose model each worker still holds, ``{worker address: [run token, ...]}``:
    empty lists once every extraction has ended (each releases its workers' state)."""
    return dict(client.run(_held_runs_task))
