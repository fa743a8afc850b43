"""Optional libraries and frameworks, imported on first use.

Importing rnnlens imports none of them. Every place that needs one calls :func:`require`, which
imports it or raises :class:`~rnnlens.errors.MissingDependencyError` naming the extra that
provides it *and*, for a deep-learning framework, the framework itself: rnnlens' extras never
install a framework build for you (Keras needs a backend of your choice; torch, TensorFlow and JAX
have CPU and GPU builds only you can choose between).

Example:
    >>> from rnnlens.core.optional import install_hint, require
    >>> install_hint("keras")
    "pip install 'rnnlens[keras]' tensorflow (or jax, or torch, as the Keras backend)"
    >>> require("no_such_module", purpose="This example")
    Traceback (most recent call last):
    ...
    rnnlens.errors.MissingDependencyError: This example needs the optional package 'no_such_module', ...
"""

from __future__ import annotations

import importlib
from typing import Any

from ..errors import MissingDependencyError

__all__ = ["OPTIONAL", "install_hint", "is_optional", "missing_message", "require"]

#: top-level module -> (the rnnlens extra that brings it, or None; what to install beside it)
OPTIONAL: dict[str, tuple[str | None, str]] = {
    "keras": ("keras", "tensorflow (or jax, or torch, as the Keras backend)"),
    "tensorflow": (None, "tensorflow"),
    "tf_keras": (None, "tf_keras"),
    "torch": ("torch", ""),
    "jax": ("jax", ""),
    "jaxlib": ("jax", ""),
    "flax": ("flax", ""),
    "onnx": ("onnx", ""),
    "onnxruntime": ("onnx", ""),
    "onnxscript": (None, "onnxscript"),
    "transformers": ("transformers", ""),
    "zarr": ("zarr", ""),
    "xarray": ("zarr", ""),
    "h5py": ("zarr", ""),
    "numcodecs": ("zarr", ""),
    "fsspec": ("cloud", ""),
    "s3fs": ("cloud", ""),
    "sklearn": ("probe", ""),
    "matplotlib": ("viz", ""),
    "dask": ("dask", ""),
    "distributed": ("dask", ""),
}
#: frameworks with CPU and GPU builds: the user picks the build, rnnlens' extra only a range
_GPU_NOTE = {"torch": "pytorch.org", "jax": "JAX's installation guide", "jaxlib": "JAX's installation guide"}


def is_optional(module: str | None) -> bool:
    """Whether ``module`` (any dotted name) belongs to an optional library rnnlens knows."""
    return bool(module) and str(module).split(".")[0] in OPTIONAL


def install_hint(module: str) -> str:
    """The one pip command that brings ``module`` (a dotted name; its top level decides)."""
    root = module.split(".")[0]
    extra, beside = OPTIONAL.get(root, (None, root))
    words = ["pip install"]
    if extra is not None:
        words.append(f"'rnnlens[{extra}]'")
    if beside:
        words.append(beside)
    hint = " ".join(words)
    if root in _GPU_NOTE:
        hint += f" (for a GPU build, install {root} first as {_GPU_NOTE[root]} says)"
    return hint


def missing_message(module: str, purpose: str, error: BaseException | None = None) -> str:
    """The message of a :class:`MissingDependencyError` for ``module``."""
    why = f" ({type(error).__name__}: {error})" if error is not None else ""
    return (
        f"{purpose} needs the optional package {module.split('.')[0]!r}, which is not installed{why}. "
        f"Install it with: {install_hint(module)}"
    )


def require(module: str, *, purpose: str) -> Any:
    """Import ``module`` or raise :class:`MissingDependencyError` saying what to install."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise MissingDependencyError(missing_message(module, purpose, e)) from None
