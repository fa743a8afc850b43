"""A Flax model as Dask ships it to its workers (:meth:`FlaxAdapter.portable`).

Example:
    >>> import pickle, cloudpickle, jax, numpy as np, flax.linen as nn
    >>> rnn = nn.RNN(nn.GRUCell(2))
    >>> model = rnn.bind(rnn.init(jax.random.key(0), np.ones((1, 3, 2), "float32")))
    >>> pickle.loads(cloudpickle.dumps(Portable(model))).scope is not None  # bound again
    True
"""

from __future__ import annotations

from typing import Any

from .nnx import is_nnx
from .run import split_model

__all__ = ["Portable"]


class Portable:
    """A Flax model as Dask ships it: pickles as the unbound linen module and its variables
    (a bound module holds its scope by weak references, which do not pickle) and unpickles as
    the bound module; an nnx module as itself. Functions that can be imported by their name
    (a cell's ``jax.nn.sigmoid``, ``jnp.tanh``: jitted functions cloudpickle would copy by value,
    changing their identity and the model's digest) are pickled by reference."""

    def __init__(self, model: Any):
        self.model = model

    def __reduce__(self) -> Any:
        import io

        import cloudpickle

        class Pickler(cloudpickle.CloudPickler):
            def reducer_override(self, obj: Any) -> Any:
                name = _importable(obj)
                return (_imported, name) if name else super().reducer_override(obj)

        buf = io.BytesIO()
        Pickler(buf).dump(self.model if is_nnx(self.model) else split_model(self.model))
        return _loads, (buf.getvalue(),)


def _importable(obj: Any) -> tuple[str, str] | None:
    """``(module, name)`` of a callable object (not a plain function or class: pickle names those
    itself) found under that name, else None."""
    import importlib
    import sys
    import types

    if isinstance(obj, (type, types.FunctionType, types.BuiltinFunctionType)) or not callable(obj):
        return None
    module, name = getattr(obj, "__module__", None), getattr(obj, "__qualname__", None)
    if not isinstance(module, str) or not isinstance(name, str) or "<" in name or module not in sys.modules:
        return None
    found: Any = importlib.import_module(module)
    for part in name.split("."):
        found = getattr(found, part, None)
    return (module, name) if found is obj else None


def _imported(module: str, name: str) -> Any:
    import importlib

    found: Any = importlib.import_module(module)
    for part in name.split("."):
        found = getattr(found, part)
    return found


def _loads(data: bytes) -> Any:
    import pickle

    loaded = pickle.loads(data)  # the client's own model (trusted), as Dask's payload is
    if isinstance(loaded, tuple):  # a linen module and its variables
        module, variables = loaded
        return module.bind(variables)
    return loaded
