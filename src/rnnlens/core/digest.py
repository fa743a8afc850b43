"""A model's identity for resuming a store: sha256 over its weights and its architecture.

Adapters (:meth:`rnnlens.adapters.Adapter.model_digest`) hand over the weight arrays in a
fixed order and a canonical text of the architecture (graph, layer configurations,
activations); two models that share weights but compute something else differ here.

Example:
    >>> import numpy as np
    >>> a = model_sha256([np.ones(2, "float32")], "LSTM(units=2)")
    >>> b = model_sha256([np.ones(2, "float32")], "LSTM(units=2, activation=relu)")
    >>> len(a), a == b
    (64, False)
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from typing import Any

import numpy as np

__all__ = ["canonical_json", "model_sha256"]


def model_sha256(arrays: Iterable[np.ndarray], architecture: str) -> str:
    """sha256 over each array's dtype, shape and bytes (in order; names are not hashed, as
    Keras renames weights when a model is loaded twice) and the architecture text."""
    h = hashlib.sha256()
    for a in arrays:
        a = np.asarray(a)
        h.update(f"{a.dtype.str}|{a.shape}|".encode())
        h.update(np.ascontiguousarray(a).data.cast("B") if a.size else b"")
    h.update(b"|architecture|")
    h.update(architecture.encode())
    return h.hexdigest()


def canonical_json(obj: Any) -> str:
    """``obj`` as sorted JSON; objects JSON cannot show are named by their class (never by
    ``repr``, which may hold a memory address)."""
    return json.dumps(obj, sort_keys=True, default=lambda o: f"<{type(o).__qualname__}>")
