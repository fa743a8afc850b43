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

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import adapters
from .adapters.base import TraceOptions
from .errors import RnnLensError, UnsupportedModelError
from .options import check_fields, check_layers
from .states import DirectionStates, Gates, LayerStates, States
from .tracing import assemble

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

    def __init__(self, model: Any, layers: str | Iterable[str] | None, fields: str | Sequence[str] | None):
        from .api import _opened

        model = _opened(model)
        adapter = adapters.for_model(model)
        options = TraceOptions(layers=check_layers(layers), fields=check_fields(fields))
        self._impl = adapter.record(model, options)
        self._states: States | None = None
        self._calls: list[Call] = []
        self._active = False

    def __enter__(self) -> Recording:
        self._impl.start()
        self._active = True
        return self

    def __exit__(self, *exc: Any) -> None:
        self._impl.stop()
        self._active = False

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
        """Every recorded call's states, chained calls joined along time."""
        if self._active:
            raise RnnLensError("The recording is still running: read rec.states after the with block.")
        if self._states is None:
            joined = getattr(self._impl, "joined", None)
            if joined is not None:  # the adapter joins chained calls itself (before converting)
                cap, spans = joined()
                self._states = assemble(cap.specs, cap.batches, backend=cap.backend)
                self._calls = [Call(*span) for span in spans]
            else:
                self._states, self._calls = _join(self._impl.captured(), self._impl.links())
        return self._states

    @property
    def calls(self) -> list[Call]:
        """Each recorded call and where its steps are in :attr:`states`."""
        self.states  # noqa: B018  # builds both
        return list(self._calls)


def record(
    model: Any, *, layers: str | Iterable[str] | None = None, fields: str | Sequence[str] | None = None
) -> Recording:
    """Record every call of ``model``'s recurrent layers inside a ``with`` block (see the module
    docstring); ``layers`` and ``fields`` as for :func:`rnnlens.trace`."""
    return Recording(model, layers, fields)


def _join(captured: Any, links: dict[str, str]) -> tuple[States, list[Call]]:
    states = assemble(captured.specs, captured.batches, backend=captured.backend)
    groups: dict[str, list[str]] = {}
    head: dict[str, str] = {}
    for name in states:
        first = head.get(links.get(name, "")) if name in links else None
        first = first or name
        head[name] = first
        groups.setdefault(first, []).append(name)
    layers: dict[str, LayerStates] = {}
    calls: list[Call] = []
    for first, names in groups.items():
        parts = [states[n] for n in names]
        start = 0
        for n, part in zip(names, parts):
            steps = int(part.h.shape[1])
            calls.append(Call(n, first, start, start + steps))
            start += steps
        layers[first] = parts[0] if len(parts) == 1 else _concat(parts)
    return States(layers, backend=states.backend), calls


def _concat(parts: list[LayerStates]) -> LayerStates:
    """Layer states of chained calls joined along time."""

    def cat(arrays: list[np.ndarray | None]) -> np.ndarray | None:
        return None if arrays[0] is None else np.concatenate(arrays, axis=1)  # type: ignore[arg-type]

    first = parts[0]
    directions = {}
    for d, ds in first.directions.items():
        pieces = [p.directions[d] for p in parts]
        gates = None
        if "gates" in ds.fields:
            names = tuple(ds.gates)
            gates = Gates([np.concatenate([p.gates[g] for p in pieces], axis=1) for g in names], names)
        c = cat([p.c if "c" in p.fields else None for p in pieces])
        mask = None if first.mask is None else np.concatenate([p.mask for p in parts], axis=1)  # type: ignore[misc]
        directions[d] = DirectionStates(d, cat([p.h for p in pieces]), c, gates, mask, layer=first.name)
    mask = None if first.mask is None else np.concatenate([p.mask for p in parts], axis=1)  # type: ignore[misc]
    return LayerStates(first.spec, directions, mask)
