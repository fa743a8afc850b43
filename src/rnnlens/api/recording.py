"""``rnnlens.record``: the states of a model run step by step or chunk by chunk by the user's own
loop, every call of each recurrent layer, with chained calls joined along time.

    >>> import torch, rnnlens
    >>> rnn = torch.nn.GRU(3, 4, batch_first=True)
    >>> x = torch.randn(2, 6, 3)
    >>> with rnnlens.record(rnn) as rec:
    ...     h = None
    ...     for t in range(6):  # a decoder fed one step at a time, carrying its state
    ...         out, h = rnn(x[:, t : t + 1], h)
    >>> rec.states["gru"].h.shape, [(c.name, c.entry, c.start, c.stop) for c in rec.calls][:2]
    ((2, 6, 4), [('gru', 'gru', 0, 1), ('gru#1', 'gru', 1, 2)])

A call is *chained* to the previous call of the same layer when its initial state is exactly
the state that call ended in (checked, not assumed); chained calls form one entry, named after
the first. Other calls stay separate entries (``name#k``). The model runs as itself inside the
block: its outputs are exactly what it returns without recording; everything installed is
removed when the block ends, also after an error.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import adapters
from ..adapters.base import TraceOptions
from ..core.options import check_fields, check_layers
from ..core.states import States
from ..core.tracing import assemble
from ..errors import OptionError, RnnLensError, UnsupportedModelError
from ..io.stream import StreamSink
from ..io.zarr import open_states
from .tracer import _opened

__all__ = ["Call", "Recording", "record"]


@dataclass(frozen=True)
class Call:
    """One recorded call: its own entry name (``name#k``), the entry of :attr:`Recording.states`
    it is part of, and its steps there (``start:stop``)."""

    name: str
    entry: str
    start: int
    stop: int


class Recording:
    """A recording in progress or finished (see :func:`record`)."""

    def __init__(
        self,
        model: Any,
        layers: str | Iterable[str] | None,
        fields: str | Sequence[str] | None,
        to: str | os.PathLike[str] | None = None,
        flush_every: int = 256,
        chunk_steps: int = 256,
        storage_options: dict[str, Any] | None = None,
    ):
        model = _opened(model)
        adapter = adapters.for_model(model)
        options = TraceOptions(layers=check_layers(layers), fields=check_fields(fields))
        self._impl = adapter.record(model, options)
        self._states: States | None = None
        self._calls: list[Call] = []
        self._active = False
        self._sink: Any = None
        self._paths: dict[str, Any] = {}  # entry -> Location
        self._pending = 0
        if to is not None:
            if not hasattr(self._impl, "drain"):
                raise UnsupportedModelError(
                    f"The {adapter.name} adapter cannot write a recording as it goes; record "
                    "without to= (the states are held in memory)."
                )
            for name, v in (("flush_every", flush_every), ("chunk_steps", chunk_steps)):
                if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                    raise OptionError(f"{name} must be a positive int; received {v!r}")
            self._sink = StreamSink(
                to, chunk_steps=chunk_steps, model_name=type(model).__name__, storage_options=storage_options
            )
            self._flush_every = flush_every
            self._impl.on_call = self._called

    def __enter__(self) -> Recording:
        self._impl.start()
        self._active = True
        return self

    def __exit__(self, *exc: Any) -> None:
        self._impl.stop()
        self._active = False
        if self._sink is not None:
            self._impl.on_call = None
            self._flush()  # also after an error: what was recorded is kept, the stores closed
            self._paths = self._sink.close()

    def _called(self) -> None:
        self._pending += 1
        if self._pending >= self._flush_every:
            self._flush()

    def _flush(self) -> None:
        """Convert the calls since the last flush and append them to their streams' stores."""
        self._pending = 0
        cap, spans = self._impl.drain()
        if cap is None:
            return
        offsets: dict[str, int] = {}
        self._sink.write(assemble(cap.specs, cap.batches, backend=cap.backend), offsets)
        for name, entry, start, stop in spans:
            base = offsets.get(entry, 0)
            self._calls.append(Call(name, entry, base + start, base + stop))

    def run(self, output_names: Sequence[str] | None, input_feed: Any, run_options: Any = None) -> Any:
        """ONNX models: ``InferenceSession.run`` — the recording is a drop-in for the session in
        the user's loop (``rec.run(None, {"x": chunk, "state": state})``)."""
        run = getattr(self._impl, "run", None)
        if run is None:
            raise UnsupportedModelError(
                "rec.run(...) is the ONNX Runtime session of an ONNX recording; "
                "a PyTorch model is called as itself inside the with block."
            )
        return run(output_names, input_feed, run_options)

    @property
    def states(self) -> States:
        """Every recorded call's states, chained calls joined along time (with ``to=``: read
        lazily from the stores, :attr:`stores`)."""
        if self._active:
            raise RnnLensError("The recording is still running: read rec.states after the with block.")
        if self._states is None and self._sink is not None:
            opened = {name: open_states(path) for name, path in self._paths.items()}
            layers = {name: st[name] for name, st in opened.items()}
            backend = next(iter(opened.values())).backend if opened else "torch"
            self._states = States(layers, backend=backend)
        if self._states is None:
            cap, spans = self._impl.joined()  # chained calls joined by the adapter, before converting
            self._states = assemble(cap.specs, cap.batches, backend=cap.backend)
            self._calls = [Call(*span) for span in spans]
        return self._states

    @property
    def stores(self) -> dict[str, Path | str]:
        """With ``to=``: each entry's store (``<to>/<entry>.zarr``: a path, or a URL), once the
        block has ended."""
        return {name: loc.path if loc.local else loc.url for name, loc in self._paths.items()}

    @property
    def calls(self) -> list[Call]:
        """Each recorded call and where its steps are in :attr:`states`."""
        self.states  # noqa: B018  # builds both
        return list(self._calls)


def record(
    model: Any,
    *,
    layers: str | Iterable[str] | None = None,
    fields: str | Sequence[str] | None = None,
    to: str | os.PathLike[str] | None = None,
    flush_every: int = 256,
    chunk_steps: int = 256,
    storage_options: dict[str, Any] | None = None,
) -> Recording:
    """Record every call of ``model``'s recurrent layers inside a ``with`` block (see the module
    docstring); ``layers`` and ``fields`` as for :func:`rnnlens.trace`.

    ``to``: a new directory the recording writes as it goes — every
    ``flush_every`` calls, the calls since the last flush are converted and appended along time
    to their stream's store, ``<to>/<entry>.zarr`` (chunked by ``chunk_steps`` steps), and
    dropped; only the last call (of each module) is kept, to link the next. Memory stays that of
    ``flush_every`` calls however long the stream. The stores are closed when the block ends
    (also after an error); :attr:`Recording.states` then reads them lazily. ``to`` may be an
    fsspec URL (``s3://bucket/rec``), with ``storage_options`` for its filesystem."""
    return Recording(model, layers, fields, to, flush_every, chunk_steps, storage_options)
