"""The adapter registry: which framework adapter handles a model or a model file.

Built-in adapters are named by dotted path and imported on first use (their modules import
no framework until a model arrives); third-party adapters come from the ``rnnlens.adapters``
entry-point group (as xarray's ``xarray.backends``) or :func:`register`.

Example:
    >>> import rnnlens.adapters as adapters
    >>> adapters.for_model(object())  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    rnnlens.errors.UnsupportedModelError: rnnlens cannot trace a builtins.object. Installed adapters: ...
"""

from __future__ import annotations

import importlib
import os
import threading
from typing import Any

from ..errors import UnsupportedModelError
from .base import Adapter, Captured, Inputs, LayerBatch, TraceOptions


def entry_points(*, group: str) -> Any:
    """Installed packages' entry points of ``group``. importlib.metadata (with email, zipfile,
    ...) costs ~0.1 s to import, paid only when the registry is first read, not by every
    ``import rnnlens`` (the CLI's fixed cost)."""
    import importlib.metadata

    return importlib.metadata.entry_points(group=group)


__all__ = [
    "Adapter",
    "Captured",
    "Inputs",
    "LayerBatch",
    "TraceOptions",
    "for_file",
    "for_model",
    "model_digest",
    "register",
    "registered",
]

ENTRY_POINT_GROUP = "rnnlens.adapters"

#: Built-ins, tried in this order (a path is asked of every adapter's ``can_open``).
BUILTINS: dict[str, str] = {
    # before keras: a tf.lite.Interpreter's class is TensorFlow's too; it claims only interpreters
    "tflite": "rnnlens.adapters.tflite_:TFLiteAdapter",
    "keras": "rnnlens.adapters.keras_:KerasAdapter",
    # before torch: a transformers model is an nn.Module too; it claims only models with its mixers
    "transformers": "rnnlens.adapters.hf_:TransformersAdapter",
    "torch": "rnnlens.adapters.torch_:TorchAdapter",
    "onnx": "rnnlens.adapters.onnx_:OnnxAdapter",
    "flax": "rnnlens.adapters.flax_:FlaxAdapter",
}

_lock = threading.Lock()
_adapters: dict[str, Adapter] | None = None


def _instantiate(target: Any, where: str) -> Adapter:
    obj = target() if isinstance(target, type) else target
    if not isinstance(obj, Adapter):
        raise UnsupportedModelError(
            f"{where} is not an rnnlens adapter (a subclass of rnnlens.adapters.Adapter); "
            f"received {type(obj).__name__}."
        )
    return obj


def _import(path: str) -> Any:
    module, _, attr = path.partition(":")
    return getattr(importlib.import_module(module), attr)


def registered() -> dict[str, Adapter]:
    """Every adapter by name: the built-ins, then those of installed packages' entry points."""
    global _adapters
    if _adapters is not None:  # (read without the lock once made: every trace call asks)
        return _adapters
    with _lock:
        if _adapters is None:
            found = {name: _instantiate(_import(path), path) for name, path in BUILTINS.items()}
            for ep in entry_points(group=ENTRY_POINT_GROUP):
                if ep.name not in found:  # a built-in is never replaced by a plug-in
                    found[ep.name] = _instantiate(ep.load(), f"entry point {ep.value!r}")
            _adapters = found
        return _adapters


def register(adapter: Adapter | type[Adapter]) -> Adapter:
    """Add (or replace, by name) an adapter at run time; return the registered instance."""
    obj = _instantiate(adapter, repr(adapter))
    registered()[obj.name] = obj
    return obj


def unregister(name: str) -> None:
    """Remove a run-time registered adapter (built-ins stay)."""
    if name in BUILTINS:
        raise ValueError(f"{name!r} is a built-in adapter.")
    registered().pop(name, None)


def _listing() -> str:
    return "; ".join(f"{a.name}: {a.accepts}" for a in registered().values())


def for_model(model: Any) -> Adapter:
    """The adapter that traces ``model`` (a model object, or a file path an adapter traces
    directly, such as ``.onnx``)."""
    for adapter in registered().values():
        if adapter.can_trace(model):
            return adapter
    what = (
        repr(os.fspath(model))
        if isinstance(model, (str, os.PathLike))
        else f"{type(model).__module__}.{type(model).__name__}"
    )
    inner = getattr(model, "_module", None)  # a wrapper object around a model (nnsight's NNsight)
    if inner is not None and any(a.can_trace(inner) for a in registered().values()):
        raise UnsupportedModelError(
            f"rnnlens cannot trace a {what}, a wrapper object; it holds a model rnnlens traces: pass "
            f"that model (its ._module, a {type(inner).__module__}.{type(inner).__name__}), wrappers "
            "of its modules' forward included."
        )
    raise UnsupportedModelError(
        f"rnnlens cannot trace a {what}. Installed adapters: {_listing()}. Load a model file first "
        "(rnnlens.load_model) and pass the model."
    )


def model_digest(model: Any) -> str:
    """The model's identity (weights and architecture, sha256 hex) from its adapter."""
    return for_model(model).model_digest(model)


def for_file(path: str | os.PathLike[str]) -> Adapter:
    """The adapter that opens the model file ``path`` (by suffix)."""
    for adapter in registered().values():
        if adapter.can_open(path):
            adapter.check_installed(f"Opening {os.path.basename(os.fspath(path))!r}")
            return adapter
    suffixes = [s for a in registered().values() for s in a.suffixes]
    raise UnsupportedModelError(
        f"Don't know how to open {os.path.basename(os.fspath(path))!r}. Expected a file ending in "
        f"{', '.join(suffixes)}."
    )
