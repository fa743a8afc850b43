"""The Keras 3 adapter (TensorFlow, JAX and PyTorch backends; Keras 2 ``.h5`` files and tf_keras models).

This module imports no framework: Keras is imported when a Keras model arrives.
``subclassed`` (the dispatch; subclassed models run through their own ``call``), ``trace``
(Functional/Sequential: discovery, inputs, the probe run), ``probe`` (the compiled emitting
walk), ``conv`` (ConvLSTM), ``load`` and ``legacy_h5`` (Keras 2 files), ``keras2_objects``
(tf_keras models), ``opaque`` (TensorFlow graphs refused) do the work.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from ...core.digest import canonical_json, model_sha256
from ...core.spec import LayerSpec
from ...errors import InputError
from ..base import Adapter, Args, Captured, Edits, Inputs, Intervened, Kwargs, TraceOptions, mro_roots
from . import opaque, subclassed
from .load import load
from .recording import KerasRecording

__all__ = ["KerasAdapter"]


class KerasAdapter(Adapter):
    name = "keras"
    accepts = "a built keras.Model (Functional, Sequential or subclassed); .keras/.h5/.hdf5 files"
    suffixes = (".keras", ".h5", ".hdf5")
    strategies = ("auto", "emit", "reconstruct")
    takes_mask = True
    requires = ("keras",)

    def can_trace(self, model: Any) -> bool:
        # TensorFlow's own graph objects too, to refuse them clearly (.opaque)
        return bool(mro_roots(model) & {"keras", "tf_keras", "tensorflow"})

    def can_open(self, path: str | os.PathLike[str]) -> bool:
        return super().can_open(path) or opaque.is_saved_model_dir(path)

    def describe(self, model: Any) -> list[LayerSpec]:
        return subclassed.describe(model)

    def capture(self, model: Any, args: Args, kwargs: Kwargs, options: TraceOptions) -> Captured:
        return subclassed.capture(model, args, kwargs, options)

    def intervene(
        self, model: Any, args: Args, kwargs: Kwargs, edits: Edits, options: TraceOptions
    ) -> Intervened:
        return subclassed.intervene(model, args, kwargs, edits, options)

    def record(self, model: Any, options: TraceOptions) -> Any:
        return KerasRecording(model, options)

    def load(self, path: str | os.PathLike[str], *, unsafe: bool = False, **options: Any) -> Any:
        if options:
            raise InputError(f"Keras model files take no options besides unsafe; received {sorted(options)}.")
        if opaque.is_saved_model_dir(path):
            raise opaque.saved_model_dir_refusal(path)
        return load(Path(path), unsafe=unsafe)

    def model_digest(self, model: Any) -> str:
        arrays = [np.asarray(v.numpy() if hasattr(v, "numpy") else v) for v in model.weights]
        return model_sha256(arrays, canonical_json(_architecture(model)))

    def to_inputs(self, x: Any, *, mask: np.ndarray | None, size: int) -> Inputs:
        return Inputs((x,), options={"mask": mask, "batch_size": size})


def _architecture(model: Any) -> Any:
    """The model's configuration (graph, layers, activations), without weights, and with the
    layers' names replaced by their order of appearance: Keras names layers it builds
    (``lstm_3``) by what the process built before, so a model rebuilt or reloaded elsewhere
    keeps its identity. (The store's layout compares the traced layers' names itself.)"""
    try:
        config: Any = {"class": type(model).__qualname__, "config": model.get_config()}
    except Exception:  # a model without get_config: each layer's own configuration
        layers = []
        for layer in getattr(model, "layers", []):
            try:
                layer_config = layer.get_config()
            except Exception:
                layer_config = None
            layers.append((type(layer).__qualname__, layer_config))
        config = {"class": type(model).__qualname__, "layers": layers}
    try:
        names = {layer.name for layer in model._flatten_layers(include_self=True, recursive=True)}
    except Exception:
        names = {model.name, *(layer.name for layer in getattr(model, "layers", []))}
    # Functional graphs also name their raw ops (``add``, ``add_1``) by what was built before
    ops = getattr(model, "operations", [])
    names |= {op.name for op in ops if isinstance(getattr(op, "name", None), str)}
    order: dict[str, str] = {}

    def anonymous(o: Any) -> Any:
        if isinstance(o, dict):
            return {k: anonymous(o[k]) for k in sorted(o, key=str)}
        if isinstance(o, (list, tuple)):
            return [anonymous(v) for v in o]
        if isinstance(o, str) and o in names:
            return order.setdefault(o, f"<layer {len(order)}>")
        return o

    return anonymous(config)
