"""TensorFlow graphs without layer objects — SavedModel directories and loaded SavedModels,
``keras.layers.TFSMLayer``, ``tf.function``s — refused with one clear error each: a traced graph
holds the recurrence as fused ops or a ``while`` loop, with no layer whose steps rnnlens could
run, so the way out is the ``.keras`` / ``.h5`` model it was exported from.

Example:
    >>> from rnnlens.adapters.keras_.opaque import is_saved_model_dir
    >>> is_saved_model_dir("model.keras")
    False
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ...errors import UnsupportedModelError

__all__ = ["is_saved_model_dir", "refusal", "saved_model_dir_refusal"]

_WAY_OUT = (
    "rnnlens runs a model's recurrent layers step by step, and a traced graph has no layer objects "
    "left to run (its recurrence is a fused op or a while loop). Trace the Keras model it was exported "
    "from: keras.saving.load_model('model.keras') or the .h5 file (rnnlens.load_model opens both), "
    "or the model object in the process that exported it."
)


def is_saved_model_dir(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a TensorFlow SavedModel directory (``saved_model.pb`` inside)."""
    p = Path(path)
    return p.is_dir() and any((p / name).is_file() for name in ("saved_model.pb", "saved_model.pbtxt"))


def saved_model_dir_refusal(path: str | os.PathLike[str]) -> UnsupportedModelError:
    return UnsupportedModelError(f"{Path(path).name!r} is a TensorFlow SavedModel directory. {_WAY_OUT}")


def refusal(model: Any) -> UnsupportedModelError | None:
    """The refusal for an opaque TensorFlow graph object (or a model holding a ``TFSMLayer``),
    or None for anything else."""
    for layer in getattr(model, "_flatten_layers", lambda **_: [])(include_self=False, recursive=True):
        inner = refusal(layer)
        if inner is not None:
            return UnsupportedModelError(
                f"Model {getattr(model, 'name', '')!r} holds layer {layer.name!r}: {inner}"
            )
    cls = type(model)
    names = {f"{c.__module__}.{c.__qualname__}" for c in cls.__mro__}
    if any(n.endswith(".TFSMLayer") for n in names):
        return UnsupportedModelError(
            f"A keras.layers.TFSMLayer wraps a SavedModel's serving graph. {_WAY_OUT}"
        )
    roots = {c.__module__.split(".")[0] for c in cls.__mro__}
    if "tensorflow" not in roots or roots & {"keras", "tf_keras"}:
        return None
    if any("polymorphic_function" in n or "ConcreteFunction" in n for n in names):
        return UnsupportedModelError(
            f"A tf.function ({cls.__name__}) is a traced TensorFlow graph. {_WAY_OUT}"
        )
    if hasattr(model, "signatures") or "saved_model" in cls.__module__:
        return UnsupportedModelError(
            f"A loaded SavedModel ({cls.__name__}, from tf.saved_model.load) is a traced TensorFlow "
            f"graph. {_WAY_OUT}"
        )
    return UnsupportedModelError(f"A TensorFlow {cls.__name__} is not a Keras model. {_WAY_OUT}")
