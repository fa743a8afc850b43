"""The model's own return value, every tensor as a NumPy array (what :func:`rnnlens.intervene`
returns as the edited model's outputs).

Example:
    >>> import torch
    >>> from rnnlens.adapters.torch_.outputs import _outputs
    >>> y = _outputs((torch.ones(2), {"n": 3}))
    >>> type(y[0]).__name__, y[1]
    ('ndarray', {'n': 3})
"""

from __future__ import annotations

from typing import Any

import torch
from torch.nn.utils.rnn import PackedSequence

from .weights import _np

__all__ = ["_outputs"]


def _outputs(obj: Any, copy: bool = True) -> Any:
    """The model's return value with every tensor as a NumPy array, structure kept (a copy
    unless ``copy=False``: the states may view the same tensors). Copied by PyTorch's
    allocator: a large NumPy copy asks for transparent huge pages, whose faults stall on this
    kind of VM (see rnnlens.core.buffers)."""
    if isinstance(obj, torch.Tensor):
        t = obj.detach()
        return _np(t.clone() if copy and t.device.type == "cpu" else t)
    if isinstance(obj, PackedSequence):
        # its fields as NumPy arrays, past PackedSequence.__new__ (which wants tensors)
        return tuple.__new__(PackedSequence, (_outputs(getattr(obj, f), copy) for f in obj._fields))
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):  # a named tuple
        return type(obj)(*(_outputs(o, copy) for o in obj))
    if isinstance(obj, (tuple, list)):
        return type(obj)(_outputs(o, copy) for o in obj)
    if isinstance(obj, dict):
        return {k: _outputs(v, copy) for k, v in obj.items()}
    return obj
