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

from ...errors import UnsupportedModelError
from ..base import Captured, TraceOptions
from .calls import _SeqCall
from .discover import _require_module
from .record import _install, _Recorder, _uninstall
from .trace import _captured, _plans

__all__ = ["TorchRecording"]


class TorchRecording:
    """One recording of one module: :meth:`start`, the user's loop, :meth:`stop`, then
    :meth:`joined`."""

    def __init__(self, model: Any, options: TraceOptions):
        _require_module(model)
        if isinstance(model, torch.jit.ScriptModule):
            raise UnsupportedModelError("A TorchScript module runs compiled code: it cannot be recorded.")
        self.planned = _plans(model, options.layers, options.fields, "reconstruct", {})
        self.rec = _Recorder(self.planned.plans, clone=True)
        self._installed: list[tuple[Any, Any]] | None = None

    def start(self) -> None:
        self._installed = _install(self.rec, self.planned.plans)

    def stop(self) -> None:
        if self._installed is not None:
            _uninstall(self._installed)
            self._installed = None

    def joined(self) -> tuple[Captured, list[tuple[str, str, int, int]]]:
        """Chained calls merged before conversion (inputs and outputs concatenated along time, the
        first call's ``hx``: one rebuild per chain instead of one per call) and each call's
        ``(name, entry, start, stop)``."""
        chains = self._chains()
        merged: list[Any] = []
        spans: list[tuple[str, str, int, int]] = []
        for chain in chains:
            first = chain[0]
            if not isinstance(first, _SeqCall):  # a cell: its calls are the steps of one entry
                merged.append(first)
                name = first.plan.name
                spans += [(name, name, k, k + 1) for k in range(len(getattr(first, "xs", ())))]
                continue
            merged.append(_merge(chain) if len(chain) > 1 else first)
            for name in first.plan.layer_names.values():
                entry = f"{name}#{first.index}" if first.index else name
                start = 0
                for call in chain:
                    steps = _steps(call)
                    spans.append(
                        (f"{name}#{call.index}" if call.index else name, entry, start, start + steps)
                    )
                    start += steps
        original = self.rec.entries
        self.rec.entries = merged
        try:
            captured = _captured(self.rec, self.planned)
        finally:
            self.rec.entries = original
        kept = {s.name for s in captured.specs}
        return captured, [span for span in spans if span[1] in kept]

    def _chains(self) -> list[list[Any]]:
        chains: list[list[Any]] = []
        last: dict[int, list[Any]] = {}
        for entry in self.rec.entries:
            if isinstance(entry, _SeqCall):
                chain = last.get(id(entry.plan.module))
                if chain is not None and _continues(chain[-1], entry):
                    chain.append(entry)
                    continue
                chains.append([entry])
                last[id(entry.plan.module)] = chains[-1]
            else:
                chains.append([entry])
        return chains


def _layer_of(final: Any, layer: int, call: _SeqCall) -> Any:
    """Layer ``layer``'s rows of a returned final state (one direction: one row per layer)."""
    rows = slice(layer, layer + 1)
    if isinstance(final, (tuple, list)):
        return tuple(f[rows] for f in final)
    return final[rows]


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return (
        isinstance(a, torch.Tensor)
        and isinstance(b, torch.Tensor)
        and a.shape == b.shape
        and torch.equal(a, b)
    )


def _continues(prev: _SeqCall, call: _SeqCall) -> bool:
    """``call`` starts from exactly the state ``prev`` returned (one direction, tensors, not packed)."""
    if prev.final is None or call.plan.cfg.n_dir != 1 or call.packed or prev.packed:
        return False
    if call.unbatched != prev.unbatched or not call.hx or any(v is None for v in call.hx.values()):
        return False
    return all(_same(call.hx[layer], _layer_of(prev.final, layer, call)) for layer in call.hx)


def _time_axis(call: _SeqCall) -> int:
    return 0 if call.unbatched or not call.plan.cfg.batch_first else 1


def _steps(call: _SeqCall) -> int:
    top = max(call.outputs)
    return int(call.outputs[top].shape[_time_axis(call)])


def _merge(chain: list[_SeqCall]) -> _SeqCall:
    """One call standing for a chain: inputs and outputs of every layer joined along time, the
    first call's initial state and the last call's final state."""
    first = chain[0]
    axis = _time_axis(first)
    out = _SeqCall(first.plan, first.index, first.packed, first.unbatched)
    out.hx = dict(first.hx)
    out.final = chain[-1].final
    for layer in first.inputs:
        out.inputs[layer] = torch.cat([c.inputs[layer] for c in chain], dim=axis)
    for layer in first.outputs:
        out.outputs[layer] = torch.cat([c.outputs[layer] for c in chain], dim=axis)
    return out
