"""Flax checkpoints: a msgpack file (:func:`flax.serialization.to_bytes` of the variables) and
the module it belongs to, given by the caller (``module=``). msgpack holds data only, no code.

Example:
    >>> load("weights.msgpack")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    rnnlens.errors.InputError: A Flax checkpoint holds variables only: pass the module they ...
"""

from __future__ import annotations

import os
from typing import Any

from ...errors import InputError, ModelFileError

__all__ = ["load"]


def load(path: str | os.PathLike[str], *, module: Any = None, **options: Any) -> Any:
    """``module`` bound to the variables stored in ``path`` (a msgpack checkpoint)."""
    name = os.path.basename(os.fspath(path))
    if options:
        raise InputError(f"Flax checkpoints take module= only; received {sorted(options)}.")
    if module is None:
        raise InputError(
            "A Flax checkpoint holds variables only: pass the module they belong to, "
            f"rnnlens.load_model({name!r}, module=MyModule(...))."
        )
    import flax.linen as nn

    from flax import serialization

    if not isinstance(module, nn.Module):
        raise InputError(f"module= must be a flax.linen Module; received {type(module).__name__}.")
    try:
        with open(path, "rb") as f:
            variables = serialization.msgpack_restore(f.read())
    except OSError as e:
        raise ModelFileError(f"Cannot read {name!r}: {e}") from None
    except Exception as e:  # not msgpack, or not flax's
        raise ModelFileError(f"{name!r} is not a Flax msgpack checkpoint: {type(e).__name__}: {e}") from None
    if not isinstance(variables, dict) or "params" not in variables:
        raise ModelFileError(f"{name!r} holds no 'params' collection: not the variables of a linen module.")
    return module.bind(variables)
