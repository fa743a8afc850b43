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

from ...core.spec import LayerSpec, call_entry
from ...errors import InputError
from ..base import Captured, TraceOptions
from ..calllog import CallLog
from .deps import _first_line
from .feeds import _signature
from .graph import _C0, _H0, _SEQ_LENS, _X
from .session import _prepare
from .states import _batch_of, _lookup, _needs
from .trace import _selection, main_graph_only

__all__ = ["OnnxRecording"]


class OnnxRecording(CallLog):
    """See the module docstring; ``start``/``stop`` only mark the block (nothing is installed)."""

    def __init__(self, model: Any, options: TraceOptions):
        if options.mask is not None or options.batch_size is not None:
            raise InputError("mask= and batch_size= are not used for ONNX models.")
        self.prep = _prepare(model)
        self.chosen, self.nodes, self.want = _selection(self.prep, options.layers, options.fields)
        main_graph_only(self.chosen, self.nodes, "record")
        self.needs = list(
            dict.fromkeys(n for s in self.chosen for n in _needs(self.nodes[s.name], self.want[s.name]))
        )
        self.session = self.prep.session()
        self.outputs = [o.name for o in self.prep.model.graph.output]
        super().__init__()
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
        feeds = dict(input_feed)  # as the user's own session would take them (it checks them)
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
        if self.on_call is not None:
            self.on_call()
        return results[: len(names)]

    def joined(self) -> tuple[Captured, list[tuple[str, str, int, int]]]:
        """The recorded calls, chained ones joined before conversion (their inputs and outputs
        concatenated along time, the first call's initial state: one rebuild per chain, not one
        per call), and each call's ``(name, entry, start, stop)``."""
        return self._convert(skip_first=False)

    def _convert(self, *, skip_first: bool) -> tuple[Captured, list[tuple[str, str, int, int]]]:
        specs: list[LayerSpec] = []
        batch: dict[str, Any] = {}
        spans: list[tuple[str, str, int, int]] = []
        for s in self.chosen:
            node = self.nodes[s.name]
            for chain in self._chains(node):
                todo = self.stream_of(s.name, chain, skip_first=skip_first)
                if todo is None:
                    continue
                chain, began = todo
                entry = call_entry(s.name, began)
                call = self._merged(node, chain)

                tensor = _lookup(call, {}, self.prep)
                specs.append(
                    LayerSpec(
                        entry, s.kind, s.layer_type, s.units, s.directions, s.fields, s.cell_units, s.notes
                    )
                )
                batch[entry] = _batch_of(node, self.want[s.name], tensor)
                start = 0
                for k in chain:
                    steps = int(self.calls[k][node.outputs[0]].shape[0])
                    spans.append((self.call_name(s.name, k), entry, start, start + steps))
                    start += steps
        return Captured(specs, [batch], backend="onnx"), spans

    def _chains(self, node: Any) -> list[list[int]]:
        """Runs of consecutive calls in which each starts from the state the previous one ended in
        (only nodes without ``sequence_lens`` or sample reordering, one direction, are joined)."""
        joinable = (
            not node.inputs[_SEQ_LENS]
            and not node.batch_gathers
            and len(node.directions) == 1
            and node.layout == 0
        )
        pairs = [(node.inputs[_H0], node.outputs[1])]
        if node.op == "LSTM":
            pairs.append((node.inputs[_C0], node.outputs[2]))
        chains: list[list[int]] = []
        for k in range(len(self.calls)):
            prev = self.calls[k - 1] if k else None
            linked = (
                joinable
                and prev is not None
                and all(_same(self.calls[k].get(i), prev.get(o)) for i, o in pairs)
            )
            if linked:
                chains[-1].append(k)
            else:
                chains.append([k])
        return chains

    def _merged(self, node: Any, chain: list[int]) -> dict[str, np.ndarray]:
        if len(chain) == 1:
            return self.calls[chain[0]]
        first, last = self.calls[chain[0]], self.calls[chain[-1]]
        out = dict(first)
        for name in (node.inputs[_X], node.outputs[0]):  # (time, ...) tensors, layout 0
            if name in first:
                out[name] = np.concatenate([self.calls[k][name] for k in chain], axis=0)
        for name in node.outputs[1:]:
            if name and name in last:
                out[name] = last[name]
        return out


def _same(a: np.ndarray | None, b: np.ndarray | None) -> bool:
    return a is not None and b is not None and a.shape == b.shape and bool(np.array_equal(a, b))
