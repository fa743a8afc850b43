"""Distributed extraction on Dask: many workers trace chunks and write one Zarr store.

``rnnlens.extract_to(path, model, data, client=client)`` (CLI: ``rnnlens extract ...
--scheduler ADDRESS``) runs the same extraction as a single process, spread over the
workers of a ``dask.distributed.Client``, and writes the same store bit for bit.

How it runs
-----------
* **Chunks.** ``data`` (a NumPy or Zarr array, a dict of them, a ``.npy`` / ``.npz`` path or a
  list of ``.npy`` paths read as one array) is cut into tasks of ``batch_size`` samples, one
  per chunk of the store. Each task is traced as one batch, as :class:`rnnlens.Run` traces
  it, so the states are those of ``trace(model, x, batch_size=batch_size)``. Files and Zarr
  arrays are read by the workers (each task opens its rows); in-memory NumPy arrays travel
  inside the tasks (through the scheduler: for large data, save it as ``.npy`` or Zarr on
  storage every worker sees).
* **The model, once per worker.** A model *file* is opened by each worker with
  :func:`rnnlens.load_model` (the same safe-loading rules; ``unsafe=True`` is passed on). An
  in-memory model is pickled once in the client (Keras 3 models pickle as a ``.keras``
  archive, ``torch.nn.Module`` objects as themselves, with ``cloudpickle`` so classes defined
  in ``__main__`` travel by value) and the bytes are scattered to every worker once
  (``broadcast=True``: a worker that dies does not take the only copy with it). Either way a
  worker loads the model on its first task and keeps it for the rest of the run, in a
  per-run cache released at the end; each task checks the loaded weights' hash against the
  run's before writing anything.
* **States never cross the network.** A worker writes its chunk straight into the store's
  arrays (one Zarr chunk per array, written atomically by Zarr's local store) and returns
  only ``(index, samples, input hash)``. The store must therefore be on storage every
  worker and the client can reach at the same path (a shared filesystem).
* **The driver** (the process calling ``extract_to``) creates the store layout from the
  first traced chunk (the probe's trace is kept on its worker and written by that chunk's
  task: no chunk is traced twice), then records chunks in the manifest as their tasks
  finish, each time replacing the manifest atomically. Chunks finish out of order: those
  past the first gap wait in the manifest's ``pending`` map (:func:`rnnlens.io.layout.
  record_chunk`).

Guarantees
----------
* Interrupt the driver at any moment and rerun: the chunks recorded are kept (their input is
  hashed again on the workers and checked against the manifest, as a single-process resume
  does) and only the others are traced. A single process and a cluster resume each other's
  runs.
* A worker that dies mid-task: Dask runs its tasks again elsewhere (up to
  ``distributed.scheduler.allowed-failures`` times). A chunk written twice is written with
  the same bytes; a chunk is counted only after its task returned, so none is lost, and the
  manifest counts each index once.
* Equal bit for bit to a single-process run when every worker computes like the client's
  machine would (same framework versions and device kind; a GPU worker and a CPU client
  differ in the last bits, as the same model does on those devices).
* Threads: tasks of one worker share its model and trace one at a time (the frameworks use
  every core for one trace); start workers with one thread (``--nthreads 1``) and more
  processes or machines.
"""

from __future__ import annotations

from .extract.dask_driver import DistributedRun, connect, extract_distributed
from .extract.dask_tasks import held_runs

__all__ = ["DistributedRun", "connect", "extract_distributed", "held_runs"]
