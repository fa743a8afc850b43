"""The TFLite / LiteRT adapter: ``.tflite`` files and ``tf.lite.Interpreter`` objects.

This module imports no framework: TensorFlow is imported when a TFLite model arrives. A ``.tflite``
file is a flatbuffer, read without running anything (:mod:`.model`, :mod:`.graph`); tracing runs
it with rnnlens' own interpreter (:mod:`.runtime`) and reads the fused recurrent ops' tensors
(:mod:`.trace`, :mod:`.states`).

Example:
    >>> adapter = TFLiteAdapter()
    >>> adapter.can_trace("model.tflite"), adapter.can_trace("model.onnx")
    (True, False)
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from ...core.spec import LayerSpec
from ...errors import InputError, UnsupportedModelError
from ..base import Adapter, Args, Captured, Edits, Inputs, Intervened, Kwargs, TraceOptions, mro_roots
from . import trace
from .model import TFLiteModel, load_model
from .runtime import prepare

__all__ = ["TFLiteAdapter", "TFLiteModel"]


class TFLiteAdapter(Adapter):
    name = "tflite"
    accepts = "a .tflite path, a model rnnlens.load_model opened, or a tf.lite.Interpreter (model_content=)"
    suffixes = (".tflite",)
    requires = ("tensorflow",)

    def can_trace(self, model: Any) -> bool:
        if isinstance(model, (str, os.PathLike)):
            return self.can_open(model)
        if isinstance(model, TFLiteModel):
            return True
        roots = mro_roots(model)
        return type(model).__name__ == "Interpreter" and bool(
            roots & {"tensorflow", "ai_edge_litert", "tflite_runtime"}
        )

    def describe(self, model: Any) -> list[LayerSpec]:
        return trace.describe(model)

    def untraced(self, model: Any) -> list[str]:
        return trace.untraced(model)

    def capture(self, model: Any, args: Args, kwargs: Kwargs, options: TraceOptions) -> Captured:
        return trace.capture(model, args, kwargs, options)

    def intervene(
        self, model: Any, args: Args, kwargs: Kwargs, edits: Edits, options: TraceOptions
    ) -> Intervened:
        raise UnsupportedModelError(
            "rnnlens cannot edit the states of a TFLite model: the interpreter runs each fused recurrent op "
            "over the whole sequence in one kernel call, with no step at which a state could be changed. "
            "Intervene on the Keras model it was converted from (rnnlens.intervene on the .keras/.h5 model)."
        )

    def record(self, model: Any, options: TraceOptions) -> Any:
        raise UnsupportedModelError(
            "rnnlens.record does not take TFLite models: trace each run with rnnlens.trace(model, x)."
        )

    def load(self, path: str | os.PathLike[str], *, unsafe: bool = False, **options: Any) -> Any:
        if options:
            raise InputError(f"TFLite files take no options; received {sorted(options)}.")
        return load_model(path)  # a flatbuffer holds no code: unsafe changes nothing

    def model_digest(self, model: Any) -> str:
        return prepare(model).key  # sha256 of the flatbuffer: every op, option and weight

    def to_inputs(self, x: Any, *, mask: np.ndarray | None, size: int) -> Inputs:
        return Inputs((x,))
