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

import os
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from ..errors import InputError, RnnLensError
from ..io.data import open_source
from .dask_driver import extract_distributed
from .run import ProgressArg, Run
from .target import StoreTarget

if TYPE_CHECKING:
    from .dask_driver import DistributedRun

__all__ = ["Run", "StoreTarget", "extract_to"]


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
    storage_options: dict[str, Any] | None = None,
) -> Run | DistributedRun:
    """Trace ``model`` on ``data`` batch by batch and store the states at ``path`` (Zarr v3).

    Args:
        path: the store directory to create (or resume), or an fsspec URL
            (``s3://bucket/run.zarr``, ``gs://…``, ``memory://…``).
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
        mask: valid steps, (sample, time) bool, as an array or a ``.npy`` path, aligned with
            ``data``.
        lengths: valid steps as (sample,) ints (an array or a ``.npy`` path), instead of ``mask``.
        progress: True for a progress bar on stderr, or a callable ``(done, total)``.
        max_time: the stored time axis (default: the first batch's number of steps).
        unsafe: let a model file run code it contains (trusted files only).
        client: a ``dask.distributed.Client``: trace the chunks on its workers, each writing
            its own chunks into the store (see :mod:`rnnlens.distributed`; ``data`` must be
            sliceable: arrays, ``.npy``/``.npz`` path(s), a Zarr array). Same store, bit for bit.
        storage_options: options of the URL's filesystem (``s3fs``: ``key``, ``secret``,
            ``client_kwargs={"endpoint_url": ...}``, …); its environment variables work too.

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
            storage_options=storage_options,
        )
    if data is None and (mask is not None or lengths is not None):
        raise InputError(
            "mask= and lengths= go with data=; without data, pass them per batch: "
            "run.append(x, mask=..., lengths=...)."
        )
    source = None
    sized = isinstance(batch_size, int) and not isinstance(batch_size, bool) and batch_size > 0
    if data is not None and sized and not hasattr(data, "__next__"):
        try:
            source = open_source(data, batch_size=batch_size, mask=mask, lengths=lengths)
        except RnnLensError:
            source = None  # reported below, after the model's own errors, as before
        if source is not None and source.total and batch_size > source.total:
            # chunks (and their buffers) are sized by the data, not by a huge option
            batch_size = source.total
            source = open_source(data, batch_size=batch_size, mask=mask, lengths=lengths)
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
        storage_options=storage_options,
    )
    if data is None:
        return run
    try:
        if source is None:
            source = open_source(data, batch_size=batch_size, mask=mask, lengths=lengths)
        run._expect(source.total)
        for b in source.batches:
            run._append(b)
    except BaseException:
        run._abort()
        raise
    run.close()
    return run
