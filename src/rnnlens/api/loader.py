"""Open a model file safely: the adapter is chosen by suffix, code inside a file never runs
unless the caller says ``unsafe=True``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .. import adapters

__all__ = ["load_model"]


def load_model(path: str | os.PathLike[str], *, unsafe: bool = False, **options: Any) -> Any:
    """Load a model file for :func:`rnnlens.trace`.

    ``.keras`` / ``.h5``: Keras with ``safe_mode=True`` (a ``Lambda`` layer's code is refused)
    unless ``unsafe``. A Keras 2 ``.h5`` file is converted so that it computes what it did in
    Keras 2 (``hard_sigmoid``, ``CuDNNLSTM`` / ``CuDNNGRU``: :mod:`rnnlens.adapters.keras_.legacy_h5`).
    ``.pt`` / ``.pth``: a state dict loaded with ``weights_only=True`` into
    ``module=`` (your ``nn.Module`` instance), or (``unsafe`` only: it runs code when opened) a
    TorchScript file. ``.onnx``: an ``onnx.ModelProto`` (``onnx.load``, validated with
    ``onnx.checker``; ONNX files hold no code). Other suffixes: the installed adapters'.

    Example:
        >>> import rnnlens
        >>> rnnlens.load_model("missing.keras")
        Traceback (most recent call last):
        ...
        FileNotFoundError: No model file at 'missing.keras'.
    """
    p = Path(path)
    if not (p.is_file() or p.is_dir()):  # a directory: a format some adapter names (SavedModel)
        raise FileNotFoundError(f"No model file at {str(path)!r}.")
    return adapters.for_file(p).load(p, unsafe=unsafe, **options)
