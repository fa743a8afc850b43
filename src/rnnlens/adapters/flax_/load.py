"""Flax checkpoints, with the module they belong to given by the caller (``module=``): a msgpack
file (:func:`flax.serialization.to_bytes` of the variables) or an Orbax checkpoint directory.
Neither holds code: msgpack is data, Orbax writes JSON metadata and TensorStore arrays.

An Orbax checkpoint is accepted as the item directory a checkpointer wrote (it holds
``_METADATA``), a ``CheckpointManager`` step directory holding one item, or the manager's
directory (its latest step). A linen module gets the restored variables (a train state's
``params`` and ``batch_stats``; its optimizer state and step are left out); an nnx module's
state is restored into a copy of it (the module given is not changed).

Example:
    >>> load("weights.msgpack")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    rnnlens.errors.InputError: A Flax checkpoint holds variables only: pass the module they ...
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ...errors import InputError, ModelFileError
from .nnx import is_nnx

__all__ = ["is_orbax", "load", "orbax_item"]


def is_orbax(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a directory Orbax wrote (looks at file names only)."""
    p = Path(path)
    if not p.is_dir():
        return False
    return any((p / n).is_file() for n in ("_METADATA", "_CHECKPOINT_METADATA")) or bool(_steps(p))


def _steps(p: Path) -> list[Path]:
    return sorted(
        (d for d in p.iterdir() if d.name.isdigit() and (d / "_CHECKPOINT_METADATA").is_file()),
        key=lambda d: int(d.name),
    )


def orbax_item(path: str | os.PathLike[str]) -> Path:
    """The item directory of an Orbax checkpoint (see the module docstring)."""
    p = Path(path)
    if (p / "_METADATA").is_file():
        return p
    steps = _steps(p)
    if steps and not (p / "_CHECKPOINT_METADATA").is_file():
        p = steps[-1]
    items = sorted(d for d in p.iterdir() if d.is_dir() and (d / "_METADATA").is_file())
    if len(items) != 1:
        raise ModelFileError(
            f"{p.name!r} holds {len(items)} Orbax items ({', '.join(d.name for d in items) or 'none'}); "
            "pass the directory of the one that holds the variables."
        )
    return items[0]


def load(path: str | os.PathLike[str], *, module: Any = None, **options: Any) -> Any:
    """``module`` with the variables stored in ``path``: a linen module bound to them, or a copy
    of an nnx module with its state restored."""
    name = os.path.basename(os.fspath(path).rstrip("/\\"))
    if options:
        raise InputError(f"Flax checkpoints take module= only; received {sorted(options)}.")
    if module is None:
        raise InputError(
            "A Flax checkpoint holds variables only: pass the module they belong to, "
            f"rnnlens.load_model({name!r}, module=MyModule(...))."
        )
    import flax.linen as nn

    if not isinstance(module, nn.Module) and not is_nnx(module):
        raise InputError(f"module= must be a flax.linen or nnx Module; received {type(module).__name__}.")
    if is_orbax(path):
        return _orbax(orbax_item(path), module, name)
    if is_nnx(module):
        raise InputError(f"{name!r}: an nnx module's state is loaded from an Orbax checkpoint directory.")
    from flax import serialization

    try:
        with open(path, "rb") as f:
            variables = serialization.msgpack_restore(f.read())
    except OSError as e:
        raise ModelFileError(f"Cannot read {name!r}: {e}") from None
    except Exception as e:  # not msgpack, or not flax's
        raise ModelFileError(f"{name!r} is not a Flax msgpack checkpoint: {type(e).__name__}: {e}") from None
    return module.bind(_variables(variables, name))


def _variables(tree: Any, name: str) -> Any:
    if not isinstance(tree, dict) or "params" not in tree:
        raise ModelFileError(f"{name!r} holds no 'params' collection: not the variables of a linen module.")
    return {k: tree[k] for k in ("params", "batch_stats") if k in tree}


def _orbax(item: Path, module: Any, name: str) -> Any:
    import jax
    import orbax.checkpoint as ocp

    try:
        if is_nnx(module):
            from flax import nnx

            graphdef, state = nnx.split(module)
            abstract = jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), state)
            return nnx.merge(graphdef, ocp.StandardCheckpointer().restore(item.resolve(), abstract))
        tree = ocp.StandardCheckpointer().restore(item.resolve())
    except Exception as e:  # another tree, or not readable
        why = f"{type(e).__name__}: {e}"
        raise ModelFileError(f"Cannot restore the Orbax checkpoint {name!r}: {why}") from None
    return module.bind(_variables(tree, name))
