"""``tf_keras`` (Keras 2) model objects: converted in memory to Keras 3 the way a Keras 2
``.h5`` file is (:mod:`.legacy_h5`: ``hard_sigmoid``, ``CuDNNLSTM``/``CuDNNGRU``, nested
models), so the converted model computes what the Keras 2 model computes. The model is written
to an in-memory HDF5 file (``h5py``'s core driver, nothing on disk) with tf_keras' own ``.h5``
writer and read back (the model's own code is already in the process: no safe mode); the Keras 2
model itself is not changed.

A subclassed tf_keras model (a Python ``call``) has no configuration to convert: refused, with
the way out (rebuild it with ``keras`` 3, or as a Functional/Sequential tf_keras model).

Example:
    >>> from rnnlens.adapters.keras_.keras2_objects import is_keras2_object
    >>> is_keras2_object(object())
    False
"""

from __future__ import annotations

import io
import weakref
from typing import Any

from ...errors import UnsupportedModelError
from . import legacy_h5

__all__ = ["as_keras3", "is_keras2_object"]

# one conversion per Keras 2 model and weights version (a trace, then a record, reuse it)
_CONVERTED: weakref.WeakKeyDictionary[Any, tuple[bytes, Any]] = weakref.WeakKeyDictionary()


def is_keras2_object(model: Any) -> bool:
    """Whether ``model`` is a ``tf_keras`` object (by its classes' modules; imports nothing)."""
    return any(c.__module__.split(".")[0] == "tf_keras" for c in type(model).__mro__)


def as_keras3(model: Any) -> Any:
    """The Keras 3 equivalent of the tf_keras model ``model`` (anything else: ``model``)."""
    if not is_keras2_object(model):
        return model
    import h5py
    import tf_keras

    if not isinstance(model, tf_keras.Model):
        raise UnsupportedModelError(
            f"Got a tf_keras {type(model).__name__}; rnnlens traces a model. Wrap it in a "
            "tf_keras.Sequential with an Input, or save the model and pass rnnlens.load_model('model.h5')."
        )
    functional = getattr(model, "_is_graph_network", False) or isinstance(model, tf_keras.Sequential)
    if not functional:
        raise UnsupportedModelError(
            f"{type(model).__name__} is a subclassed tf_keras (Keras 2) model: its call() is Python code "
            "written for Keras 2, which Keras 3 cannot run. Rebuild the class with `import keras` (Keras 3), "
            "load the weights (model.load_weights) and trace that; or build it as a Functional or "
            "Sequential tf_keras model, which rnnlens converts."
        )
    if not model.built:
        raise UnsupportedModelError(
            f"tf_keras model {model.name!r} has not been built, so it has no trained weights yet. "
            "Call it on data (or give it an Input) first."
        )
    import hashlib

    import numpy as np

    digest = hashlib.sha256()
    for w in model.get_weights():
        digest.update(np.ascontiguousarray(w).tobytes())
    key = digest.digest()
    cached = _CONVERTED.get(model)
    if cached is not None and cached[0] == key:
        return cached[1]
    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as f:
        from tf_keras.src.saving.legacy import hdf5_format

        hdf5_format.save_model_to_hdf5(model, f, include_optimizer=False)
        converted = legacy_h5.model_from_h5(
            f, f"tf_keras model {model.name!r}", safe_mode=False, stacklevel=6
        )
    _CONVERTED[model] = (key, converted)
    return converted
