"""The ONNX adapter: ``onnx.ModelProto`` objects and ``.onnx`` files, run by ONNX Runtime.

This module imports no framework: onnx and onnxruntime are imported when an ONNX model
arrives. ``trace`` (capture), ``graph`` (nodes, incl. activations), ``session`` (the private
copy run by ONNX Runtime, cached), ``feeds`` (inputs) and ``states`` (per-node states) do the work.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

import numpy as np

from ...core.digest import model_sha256
from ...core.spec import LayerSpec
from ...errors import InputError
from ..base import Adapter, Args, Captured, Edits, Inputs, Intervened, Kwargs, TraceOptions, mro_roots
from . import trace
from .recording import OnnxRecording
from .session import _prepare

__all__ = ["OnnxAdapter"]


class OnnxAdapter(Adapter):
    name = "onnx"
    accepts = "an onnx.ModelProto or a .onnx path (the graph's inputs in order or by name)"
    suffixes = (".onnx",)
    requires = ("onnx", "onnxruntime")
    strategies = ("auto", "reconstruct")

    def can_trace(self, model: Any) -> bool:
        if isinstance(model, (str, os.PathLike)):
            return self.can_open(model)
        return "onnx" in mro_roots(model)

    def describe(self, model: Any) -> list[LayerSpec]:
        return trace.describe(model)

    def untraced(self, model: Any) -> list[str]:
        return list(_prepare(model).hidden)

    def capture(self, model: Any, args: Args, kwargs: Kwargs, options: TraceOptions) -> Captured:
        return trace.capture(model, args, kwargs, options)

    def intervene(
        self, model: Any, args: Args, kwargs: Kwargs, edits: Edits, options: TraceOptions
    ) -> Intervened:
        return trace.intervene(model, args, kwargs, edits, options)

    def record(self, model: Any, options: TraceOptions) -> Any:
        return OnnxRecording(model, options)

    def load(self, path: str | os.PathLike[str], *, unsafe: bool = False, **options: Any) -> Any:
        if options:
            raise InputError(f"ONNX files take no options; received {sorted(options)}.")
        return trace.load_model(path)  # ONNX files hold no code: unsafe changes nothing

    def model_digest(self, model: Any) -> str:
        proto = trace._model(model)
        arrays = trace.weight_arrays(proto)
        # every node (attributes, activations, subgraph bodies), the graph's signature, the opsets
        lines = [hashlib.sha256(n.SerializeToString()).hexdigest() for n in proto.graph.node]
        lines += [i.SerializeToString().hex() for i in [*proto.graph.input, *proto.graph.output]]
        lines += [f"{o.domain}:{o.version}" for o in proto.opset_import]
        return model_sha256(arrays, "\n".join(lines))

    def to_inputs(self, x: Any, *, mask: np.ndarray | None, size: int) -> Inputs:
        # NumPy straight to ONNX Runtime; valid steps come from the graph
        return Inputs((x,))
