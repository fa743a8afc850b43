"""Recording an ONNX model across calls: a drop-in for ``onnxruntime.InferenceSession`` in the
user's loop (``rec.run(output_names, feeds)``), recording every call of every recurrent node.

Each ``run`` is one ONNX Runtime run of rnnlens' private copy of the graph (created once),
asked for the user's outputs and for what the trace of the selected nodes reads; it returns the
user's outputs exactly as the plain session would (the same graph, the same kernels). The
states are converted once the recording ends. A call is chained to the previous one when each
selected node's ``initial_h`` (and ``initial_c``) is exactly the previous call's ``Y_h``
(``Y_c``): what a streaming model does when its state outputs are fed back as inputs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ...errors import InputError
from ...spec import LayerSpec
from ...tracing import resolve_fields, select_layers
from ..base import Captured, TraceOptions
from .deps import _first_line
from .feeds import _feeds, _signature
from .graph import _C0, _H0
from .session import _prepare
from .states import _batch_of, _check_fields, _needs

__all__ = ["OnnxRecording"]


class OnnxRecording:
    """See the module docstring; ``start``/``stop`` only mark the block (nothing is installed)."""

    def __init__(self, model: Any, options: TraceOptions):
        if options.mask is not None or options.batch_size is not None:
            raise InputError("mask= and batch_size= are not used for ONNX models.")
        self.prep = _prepare(model)
        specs = {n.name: n.spec for n in self.prep.nodes}
        self.chosen: list[LayerSpec] = select_layers(
            list(specs.values()), options.layers, other_layers=self.prep.others
        )
        self.nodes = {n.name: n for n in self.prep.nodes}
        _check_fields([self.nodes[s.name] for s in self.chosen], options.fields)
        self.want = resolve_fields(self.chosen, options.fields)
        self.needs = list(
            dict.fromkeys(n for s in self.chosen for n in _needs(self.nodes[s.name], self.want[s.name]))
        )
        self.session = self.prep.session()
        self.outputs = [o.name for o in self.prep.model.graph.output]
        self.calls: list[dict[str, np.ndarray]] = []

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def run(
        self, output_names: Sequence[str] | None, input_feed: Mapping[str, Any], run_options: Any = None
    ) -> list[Any]:
        """``InferenceSession.run``: the outputs named (all when None), in that order."""
        names = list(self.outputs if output_names is None else output_names)
        feeds = _feeds(self.prep, None, (), dict(input_feed))
        extra = [n for n in self.needs if n not in feeds and n not in self.prep.static and n not in names]
        try:
            results = self.session.run(names + extra, feeds, run_options)
        except Exception as e:
            raise InputError(
                f"ONNX Runtime could not run the model on these inputs ({type(e).__name__}: "
                f"{_first_line(str(e))}). The model's inputs are: {_signature(self.prep)}."
            ) from e
        got = dict(zip(names + extra, results))
        self.calls.append({n: got[n] if n in got else feeds[n] for n in self.needs if n in got or n in feeds})
        return results[: len(names)]

    def captured(self) -> Captured:
        specs: list[LayerSpec] = []
        batches: list[dict[str, Any]] = [{}]
        for k, call in enumerate(self.calls):

            def tensor(name: str, call: dict[str, np.ndarray] = call) -> np.ndarray | None:
                if not name:
                    return None
                return call[name] if name in call else self.prep.value(name)

            for s in self.chosen:
                name = s.name if k == 0 else f"{s.name}#{k}"
                specs.append(
                    LayerSpec(
                        name, s.kind, s.layer_type, s.units, s.directions, s.fields, s.cell_units, s.notes
                    )
                )
                batches[0][name] = _batch_of(self.nodes[s.name], self.want[s.name], tensor)
        return Captured(specs, batches, backend="onnx")

    def links(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for k in range(1, len(self.calls)):
            prev, cur = self.calls[k - 1], self.calls[k]
            for s in self.chosen:
                node = self.nodes[s.name]
                pairs = [(node.inputs[_H0], node.outputs[1])]
                if node.op == "LSTM":
                    pairs.append((node.inputs[_C0], node.outputs[2]))
                if all(_same(cur.get(i), prev.get(o)) for i, o in pairs):
                    out[f"{s.name}#{k}"] = s.name if k == 1 else f"{s.name}#{k - 1}"
        return out


def _same(a: np.ndarray | None, b: np.ndarray | None) -> bool:
    return a is not None and b is not None and a.shape == b.shape and bool(np.array_equal(a, b))
