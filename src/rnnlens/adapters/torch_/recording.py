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
    :meth:`captured` and :meth:`links`."""

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

    def captured(self) -> Captured:
        return _captured(self.rec, self.planned)

    def links(self) -> dict[str, str]:
        """``{entry: previous entry}`` for each call that started from the state the previous call
        of the same module ended in (its ``hx`` equals that call's returned final state)."""
        out: dict[str, str] = {}
        last: dict[int, _SeqCall] = {}
        for entry in self.rec.entries:
            if not isinstance(entry, _SeqCall):
                continue
            prev = last.get(id(entry.plan.module))
            last[id(entry.plan.module)] = entry
            if prev is None or prev.final is None or entry.plan.cfg.n_dir != 1:
                continue
            given = entry.hx
            if not given or any(v is None for v in given.values()):
                continue
            if all(_same(given[layer], _layer_of(prev.final, layer, entry)) for layer in given):
                for layer, name in entry.plan.layer_names.items():
                    if layer in given:
                        out[f"{name}#{entry.index}"] = f"{name}#{prev.index}" if prev.index else name
        return out


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
