"""Recording a PyTorch model across calls: the stand-ins of a trace stay installed for a ``with``
block, so every call of each recurrent module in the user's own loop is recorded.

Recorded modules run as themselves (their own kernel, layer by layer where inner layers are
needed: bitwise what the module returns) and ``c``/gates are rebuilt afterwards from what was
recorded (``strategy="reconstruct"``), so the model's outputs in the loop are exactly what it
returns without recording. Tensors are copied as they are recorded (the loop may change them
in place later).
"""

from __future__ import annotations

from typing import Any

import torch

from ...core.spec import call_entry
from ...errors import UnsupportedModelError
from ..base import Captured, TraceOptions
from .calls import _CellCalls, _SeqCall
from .chains import chain_calls, merge, steps_of
from .discover import _require_module
from .record import _install, _Recorder, _uninstall
from .trace import _captured, _plans

__all__ = ["TorchRecording"]


class TorchRecording:
    """One recording of one module: :meth:`start`, the user's loop, :meth:`stop`, then
    :meth:`joined`."""

    def __init__(self, model: Any, options: TraceOptions, *, eager: bool = False):
        _require_module(model)
        if isinstance(model, torch.jit.ScriptModule):
            raise UnsupportedModelError("A TorchScript module runs compiled code: it cannot be recorded.")
        self.planned = _plans(model, options.layers, options.fields, "reconstruct", {})
        self.rec = _Recorder(self.planned.plans, clone=True)
        self._installed: list[tuple[Any, Any]] | None = None
        self._carried: set[int] = set()  # calls already written, kept to link the next one
        self._stream: dict[int, int] = {}  # module -> index of the call its open stream began with
        # torch.compile'd: compiled code runs eagerly while recording (else Dynamo compiles the
        # stand-ins, ~45 s, and calls them from compiled code rnnlens cannot follow)
        self._eager: Any = _force_eager() if eager else None

    def start(self) -> None:
        if self._eager is not None:
            self._eager.__enter__()
        self._installed = _install(self.rec, self.planned.plans, watched=False)

    def stop(self) -> None:
        if self._installed is not None:
            _uninstall(self._installed)
            self._installed = None
            if self._eager is not None:
                self._eager.__exit__(None, None, None)

    @property
    def on_call(self) -> Any:
        return self.rec.on_call

    @on_call.setter
    def on_call(self, hook: Any) -> None:
        self.rec.on_call = hook

    def drain(self) -> tuple[Captured | None, list[tuple[str, str, int, int]]]:
        """The calls recorded since the last drain, converted, and their spans (steps counted
        from this drain); then only what links the next call is kept: the last call of each
        module (a call that continues it extends the same entry) and each cell's entry. Memory
        stays that of ``flush_every`` calls however long the stream."""
        merged: list[Any] = []
        spans: list[tuple[str, str, int, int]] = []
        last: dict[int, _SeqCall] = {}
        for chain in chain_calls(self.rec.entries):
            first = chain[0]
            if not isinstance(first, _SeqCall):  # a cell: its calls are the steps of one entry
                if first.xs:
                    merged.append(_CellCalls(first.plan, list(first.xs), list(first.hxs), list(first.outs)))
                    name = first.plan.name
                    spans += [(name, name, k, k + 1) for k in range(len(first.xs))]
                    first.xs.clear(), first.hxs.clear(), first.outs.clear()
                continue
            module = id(first.plan.module)
            last[module] = chain[-1]
            new = chain[1:] if id(first) in self._carried else chain
            if not new:
                continue
            if new is chain:  # a stream begins here
                self._stream[module] = first.index
            index = self._stream[module]
            spans += _spans(first, new, index)
            piece = merge(new)  # a new call object: the kept ones keep their own index
            piece.index = index
            merged.append(piece)
        cells = [e for e in self.rec.entries if not isinstance(e, _SeqCall)]
        self.rec.entries = [*last.values(), *cells]
        self._carried = {id(c) for c in last.values()}
        if not merged:
            return None, []
        return self._convert(merged, spans)

    def joined(self) -> tuple[Captured, list[tuple[str, str, int, int]]]:
        """Chained calls merged before conversion (inputs and outputs concatenated along time, the
        first call's ``hx``: one rebuild per chain instead of one per call) and each call's
        ``(name, entry, start, stop)``."""
        chains = chain_calls(self.rec.entries)
        merged: list[Any] = []
        spans: list[tuple[str, str, int, int]] = []
        for chain in chains:
            first = chain[0]
            if not isinstance(first, _SeqCall):  # a cell: its calls are the steps of one entry
                merged.append(first)
                name = first.plan.name
                spans += [(name, name, k, k + 1) for k in range(len(getattr(first, "xs", ())))]
                continue
            merged.append(merge(chain) if len(chain) > 1 else first)
            spans += _spans(first, chain, first.index)
        return self._convert(merged, spans)

    def _convert(
        self, merged: list[Any], spans: list[tuple[str, str, int, int]]
    ) -> tuple[Captured, list[tuple[str, str, int, int]]]:
        """``merged`` (calls standing for chains) converted, and the spans of the entries kept."""
        original = self.rec.entries
        self.rec.entries = merged
        try:
            captured = _captured(self.rec, self.planned)
        finally:
            self.rec.entries = original
        kept = {s.name for s in captured.specs}
        return captured, [span for span in spans if span[1] in kept]


def _spans(first: _SeqCall, calls: list[_SeqCall], index: int) -> list[tuple[str, str, int, int]]:
    """Each call's ``(name, entry, start, stop)`` in the entry ``calls`` form, which is named
    after the call numbered ``index``; every layer of the module is one entry."""
    out = []
    for name in first.plan.layer_names.values():
        entry = call_entry(name, index)
        start = 0
        for call in calls:
            steps = steps_of(call)
            out.append((call_entry(name, call.index), entry, start, start + steps))
            start += steps
    return out


def _force_eager() -> Any:
    """``torch.compiler.set_stance("force_eager")`` (torch ≥ 2.6), as a context manager."""
    set_stance = getattr(torch.compiler, "set_stance", None)
    if set_stance is None:
        raise UnsupportedModelError(
            "Recording a torch.compile'd module needs torch >= 2.6 (torch.compiler.set_stance); "
            "record the module you compiled instead: rnnlens.record(model) around calls of model."
        )
    return set_stance("force_eager")
