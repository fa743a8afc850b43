"""The client side of a distributed extraction (:mod:`rnnlens.distributed`, where the
user-facing docs are): :func:`extract_distributed` validates the arguments and hands them to
``_Driver``, which ships the model to the workers, probes the store's layout, submits one
task per chunk to do (see :mod:`rnnlens.extract.dask_tasks`), records the chunks in the
manifest as they finish and releases the workers' state at the end; plus the result,
:class:`DistributedRun`, and the client helper :func:`connect`.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .. import adapters
from ..core.optional import require
from ..errors import InputError
from ..io.data import Batch, chain, open_whole
from ..io.errors import SchedulerError, StoreMismatchError
from ..io.layout import Layout, done_chunks, record_chunk, write_manifest
from ..io.location import Location
from ..io.progress import ProgressBar
from ..io.zarr import _zarr, open_states
from .dask_tasks import (
    _chunk_task,
    _client_ids,
    _digest_task,
    _ModelBytes,
    _ModelFile,
    _pieces,
    _probe_task,
    _prune_task,
    _release_task,
)
from .lock import StoreLock
from .run import _progress
from .target import StoreTarget, _model_name

__all__ = ["DistributedRun", "connect", "extract_distributed"]


def extract_distributed(
    path: str | os.PathLike[str],
    model: Any,
    data: Any,
    *,
    client: Any,
    layers: str | Iterable[str] | None = None,
    fields: str | Sequence[str] | None = ("h",),
    batch_size: int = 256,
    resume: bool = True,
    overwrite: bool = False,
    mask: Any = None,
    lengths: Any = None,
    progress: Any = None,
    max_time: int | None = None,
    unsafe: bool = False,
    storage_options: dict[str, Any] | None = None,
) -> DistributedRun:
    """:func:`rnnlens.extract_to` on the workers of a Dask ``client`` (see the module docs).

    Called by ``extract_to(..., client=client)``; the arguments are those of
    :func:`rnnlens.extract_to`, and ``data`` is required.

    Example:
        >>> import keras, numpy as np, os, rnnlens, tempfile
        >>> from dask.distributed import Client, LocalCluster
        >>> model = keras.Sequential([keras.Input((None, 3)), keras.layers.GRU(4, name="gru")])
        >>> x = np.random.default_rng(0).normal(size=(10, 5, 3)).astype("float32")
        >>> out = os.path.join(tempfile.mkdtemp(), "run.zarr")
        >>> with LocalCluster(n_workers=1, processes=False, dashboard_address=":0") as cluster:
        ...     with Client(cluster) as client:
        ...         run = rnnlens.extract_to(out, model, x, batch_size=4, client=client)
        >>> run.n_samples, [s["chunks"] for s in run.worker_stats.values()]
        (10, [3])
        >>> expected = rnnlens.trace(model, x, batch_size=4)["gru"].h  # one process, same batches
        >>> bool((rnnlens.open_states(out)["gru"].h[:] == expected).all())
        True
    """
    _require_distributed()
    if not (hasattr(client, "submit") and hasattr(client, "scatter")):
        raise InputError(
            f"client must be a dask.distributed.Client; received a {type(client).__name__}. "
            "Connect one with Client('tcp://scheduler:8786')."
        )
    if data is None:
        raise InputError(
            "client= needs data= (an array, a .npy/.npz file, a list of .npy files or a Zarr array): a "
            "distributed run splits the data into chunks itself; Run.append is for one process."
        )
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise InputError(f"batch_size must be a positive integer; received {batch_size!r}.")
    if max_time is not None and (not isinstance(max_time, (int, np.integer)) or max_time < 1):
        raise InputError(f"max_time must be a positive integer or None; received {max_time!r}.")
    _zarr()
    sink = _progress(progress)
    whole = open_whole(data, mask=mask, lengths=lengths, why="a distributed extraction (client=) needs")
    driver = _Driver(
        Location.of(path, storage_options),
        whole,
        client=client,
        layers=layers if layers is None or isinstance(layers, str) else list(layers),
        fields=fields,
        batch_size=int(batch_size),
        max_time=None if max_time is None else int(max_time),
        progress=sink,
    )
    return driver.run(model, unsafe=unsafe, resume=resume, overwrite=overwrite)


class DistributedRun:
    """The result of a distributed extraction, finished when it is returned: what a closed
    :class:`rnnlens.Run` tells (``open()``, ``n_samples``, ``completed_samples``, ``closed``)
    plus what each worker did. Not a :class:`~rnnlens.Run`: it takes no batches.

    ``worker_stats``: ``{worker address: {"loads": models loaded, "chunks": chunks written,
    "traces": trace passes}}`` for the workers alive at the end (a worker that died took its
    counts with it). ``chunks_traced``: the chunks this run computed (not resumed).
    ``run_id``: the run's id on the workers (see :func:`held_runs`).
    """

    closed = True

    def __init__(
        self,
        path: Location,
        *,
        n_samples: int,
        resumed_samples: int,
        worker_stats: dict[str, dict[str, int]],
        chunks_traced: int,
        run_id: str,
    ):
        self.location = path
        self.path: Path | str = path.path if path.local else path.url
        self.n_samples = n_samples
        self.completed_samples = resumed_samples
        self.worker_stats = worker_stats
        self.chunks_traced = chunks_traced
        self.run_id = run_id

    def open(self) -> Any:
        """The stored states (:func:`rnnlens.open_states` of this run's path)."""
        return open_states(self.location)

    def append(self, batch: Any, *, mask: Any = None, lengths: Any = None) -> None:
        raise InputError("A distributed run takes all its data at once (extract_to(..., data, client=)).")

    def close(self) -> None:
        return None

    def __enter__(self) -> DistributedRun:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        return None

    def __repr__(self) -> str:
        workers = len(self.worker_stats)
        return f"DistributedRun({str(self.path)!r}, {self.n_samples} samples, {workers} workers)"


class _Driver:
    def __init__(
        self,
        path: Location,
        whole: Batch,
        *,
        client: Any,
        layers: str | list[str] | None,
        fields: str | Sequence[str] | None,
        batch_size: int,
        max_time: int | None,
        progress: Any,
    ):
        self.path = path
        self.whole = whole
        self.client = client
        self.layers = layers
        self.fields = fields
        self.batch_size = batch_size
        self.max_time = max_time
        self.progress = progress
        self.total = whole.size
        self.pieces = _pieces(whole, batch_size)
        # the client's id in the run's id lets workers drop the state of runs whose driver died
        self.token = f"{uuid.uuid4().hex}@{getattr(client, 'id', '')}"
        self.futures: list[Any] = []

    def run(self, model: Any, *, unsafe: bool, resume: bool, overwrite: bool) -> DistributedRun:
        client = self.client
        self._prune()
        payload = None
        target: StoreTarget | None = None
        manifest: dict[str, Any] | None = None
        lock = StoreLock(self.path).acquire()  # the driver holds the store for the whole run
        try:
            if isinstance(model, (str, os.PathLike)):
                p = Path(model)
                if not p.is_file():
                    raise FileNotFoundError(f"No model file at {str(model)!r}.")
                spec: Any = _ModelFile(str(p.resolve()), unsafe)
                model_file: str | None = p.name
                expected = None
            else:
                import cloudpickle

                spec, model_file = _ModelBytes(), None
                expected = adapters.model_digest(model)
                # refuse a mismatched store before shipping the model anywhere
                target = self._target(expected, _model_name(model), None)
                manifest = target.prepare(resume=resume, overwrite=overwrite)
                portable = adapters.for_model(model).portable(model)
                payload = client.scatter(cloudpickle.dumps(portable), broadcast=True, hash=False)
            # the probe: one worker loads the model, reports its hash, and traces the first
            # chunk to do (kept there for that chunk's task), which fixes the store's layout
            guess = 0 if overwrite and manifest is None else self._first_todo(manifest)
            info = self._probe(spec, payload, guess)
            if expected is not None and info["sha256"] != expected:
                raise StoreMismatchError(
                    f"The model a worker unpickled has other weights than the client's (sha256 "
                    f"{info['sha256'][:12]}… vs {expected[:12]}…): different framework versions on the "
                    "workers? Install the same versions everywhere."
                )
            if target is None or manifest is None:
                target = self._target(info["sha256"], info["name"], model_file)
                manifest = target.prepare(resume=resume, overwrite=overwrite)
            return self._extract(target, manifest, spec, payload, info, guess)
        except BaseException:
            self._cancel()
            raise
        finally:
            lock.release()
            if payload is not None:
                self._quietly(lambda: client.cancel([payload]))

    # ------------------------------------------------------------------ steps

    def _target(self, sha: str, name: str, model_file: str | None) -> StoreTarget:
        return StoreTarget(
            self.path,
            model_sha256=sha,
            model_name=name,
            model_file=model_file,
            layers=self.layers,
            fields=self.fields,
            batch_size=self.batch_size,
            max_time=self.max_time,
        )

    def _probe(self, spec: Any, payload: Any, index: int | None) -> dict[str, Any]:
        """One worker loads the model and reports its hash; with ``index``, it also traces that
        chunk (kept on the worker for the chunk's task), which fixes the store's layout."""
        probe = self.client.submit(
            _probe_task,
            self.token,
            spec,
            payload,
            None if index is None else self.pieces[index],
            self.layers,
            self.fields,
            self.max_time,
            self.path,
            key=f"rnnlens-probe-{index}-{self.token}",
            pure=False,
        )
        self.futures.append(probe)
        return dict(probe.result())

    def _first_todo(self, manifest: dict[str, Any] | None) -> int | None:
        done = set() if manifest is None else done_chunks(manifest)
        if manifest is None and self.path.exists():
            from ..io.layout import read_manifest

            try:
                found = read_manifest(self.path)
            except Exception:  # an unreadable manifest is reported by prepare(), later
                found = None
            if found is not None and found.get("config", {}).get("batch_size") == self.batch_size:
                done = done_chunks(found)
        todo = [p.index for p in self.pieces if p.index not in done]
        return todo[0] if todo else None

    def _extract(
        self,
        target: StoreTarget,
        manifest: dict[str, Any],
        spec: Any,
        payload: Any,
        info: dict[str, Any],
        guess: int | None,
    ) -> DistributedRun:
        client = self.client
        sha = target.config["model_sha256"]
        done = done_chunks(manifest)
        resumed = int(manifest["samples_done"]) + sum(
            int(e["n"]) for e in manifest.get("pending", {}).values()
        )
        self._check_resume(manifest, done)
        layout = Layout.from_json(manifest["layout"]) if done else None
        probe_layout = None if info.get("layout") is None else Layout.from_json(info["layout"])
        if layout is None:
            if probe_layout is None:  # the probe guessed that nothing was left to trace; it was wrong
                guess = 0
                info = self._probe(spec, payload, guess)
                probe_layout = Layout.from_json(info["layout"])
            layout = probe_layout
            writer = target.writer(layout, manifest, total=self.total, create=True)
        else:
            if probe_layout is not None and (
                probe_layout.layers != layout.layers or probe_layout.backend != layout.backend
            ):
                raise StoreMismatchError(
                    f"The model's states differ from those already in {self.path}. Pass overwrite=True "
                    "to start over."
                )
            writer = target.writer(layout, manifest, total=self.total, create=False)
            writer.resize(self.total)  # the size is set once, here: workers never resize
            # done chunks whose files are gone or fail their checksum are traced again (their
            # input was just verified to be the earlier run's, so they get the same bytes)
            done = done - writer.damaged_chunks(max(done) + 1)
        todo = [p for p in self.pieces if p.index not in done]
        layout_json = layout.to_json()
        chunks: list[Any] = []
        for p in todo:
            pinned = p.index == guess
            fut = client.submit(
                _chunk_task,
                self.token,
                spec,
                payload,
                p,
                layout_json,
                sha,
                self.path,
                self.batch_size,
                self.total,
                self.layers,
                self.fields,
                self.max_time,
                key=f"rnnlens-chunk-{p.index}-{self.token}",
                pure=False,
                workers=[info["worker"]] if pinned else None,
                allow_other_workers=pinned,
            )
            chunks.append(fut)
        self.futures.extend(chunks)
        from distributed import as_completed

        samples = resumed
        self._report(samples)
        for fut in as_completed(chunks):
            res = fut.result()
            record_chunk(manifest, res["index"], res["n"], res["digest"])
            write_manifest(self.path, manifest)
            samples += res["n"]
            self._report(samples)
        target.finish(writer, manifest, self.total)
        stats = self._release()
        if isinstance(self.progress, ProgressBar):
            self.progress.update(self.total)
            self.progress.close(f"-> {self.path} ({len(stats)} workers)")
        return DistributedRun(
            self.path,
            n_samples=self.total,
            resumed_samples=resumed,
            worker_stats=stats,
            chunks_traced=len(todo),
            run_id=self.token,
        )

    def _check_resume(self, manifest: dict[str, Any], done: set[int]) -> None:
        """The input of every chunk the manifest counts must hash as it did then (on the
        workers, reading each chunk's rows), as a single-process resume checks."""
        if not done:
            return
        if max(done) >= len(self.pieces):  # (a shorter last chunk is caught by its hash)
            raise StoreMismatchError(
                f"This run's data has {self.total} samples, fewer than {self.path} already holds from an "
                "earlier run of this extraction. Feed the same data again, or pass overwrite=True."
            )
        order = sorted(done)
        futs = [
            self.client.submit(
                _digest_task, self.pieces[i], key=f"rnnlens-digest-{i}-{self.token}", pure=False
            )
            for i in order
        ]
        self.futures.extend(futs)
        digests = dict(zip(order, self.client.gather(futs)))
        running = ""
        for i in range(int(manifest["chunks_done"])):
            running = chain(running, digests[i])
        ok = running == manifest["input_sha256"] and all(
            digests[int(k)] == e["input_sha256"] for k, e in manifest.get("pending", {}).items()
        )
        if not ok:
            raise StoreMismatchError(
                f"The data fed to this run differs from the data of the interrupted run that wrote "
                f"{self.path} (input hash of the chunks it completed). Resuming needs the same data in "
                "the same order (no shuffling). Pass overwrite=True to start over."
            )

    def _report(self, samples: int) -> None:
        if self.progress is None:
            return
        if isinstance(self.progress, ProgressBar):
            self.progress.total = self.total
            self.progress.update(samples)
        else:
            self.progress(samples, self.total)

    def _prune(self) -> None:
        """Free the models that runs of clients no longer connected (a driver killed) left on
        the workers."""

        def go() -> None:
            active = self.client.run_on_scheduler(_client_ids)
            self.client.run(_prune_task, list(active), on_error="ignore")

        self._quietly(go)

    def _release(self) -> dict[str, dict[str, int]]:
        stats: dict[str, dict[str, int]] = {}

        def go() -> None:
            stats.update(self.client.run(_release_task, self.token, on_error="ignore"))

        self._quietly(go)
        return stats

    def _cancel(self) -> None:
        if self.futures:
            self._quietly(lambda: self.client.cancel(self.futures))
        self._release()
        if isinstance(self.progress, ProgressBar):
            self.progress.abort()

    @staticmethod
    def _quietly(fn: Callable[[], Any]) -> None:
        # cleanup after a failure or with a closed client must not hide the cause
        with contextlib.suppress(Exception):
            fn()


def connect(address: str, *, timeout: float = 30.0) -> Any:
    """A ``dask.distributed.Client`` connected to the scheduler at ``address`` (what the CLI's
    ``--scheduler`` does); a clear :class:`~rnnlens.io.errors.SchedulerError` when unreachable.

    Example:
        >>> connect("tcp://127.0.0.1:1", timeout=0.5)  # doctest: +SKIP
        Traceback (most recent call last):
        ...
        rnnlens.io.errors.SchedulerError: Could not connect to a Dask scheduler at 'tcp://127.0.0.1:1' ...
    """
    _require_distributed()
    from distributed import Client

    try:
        return Client(address, timeout=timeout)
    except (OSError, TimeoutError, ValueError) as e:
        raise SchedulerError(
            f"Could not connect to a Dask scheduler at {address!r} within {timeout:g} s "
            f"({type(e).__name__}: {e}). Start one with 'dask scheduler' and give its address "
            "(tcp://HOST:8786), and check that this machine can reach it."
        ) from None


def _require_distributed() -> None:
    require("distributed", purpose="Distributed extraction (client=, --scheduler)")
