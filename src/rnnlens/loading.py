"""Open a model file safely: the format is chosen by suffix, code inside a file never runs
unless the caller says ``unsafe=True``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .errors import ModelFileError, RnnLensError, UnsupportedModelError

__all__ = ["KERAS_SUFFIXES", "ONNX_SUFFIXES", "TORCH_SUFFIXES", "load_model"]

KERAS_SUFFIXES = (".keras", ".h5", ".hdf5")
TORCH_SUFFIXES = (".pt", ".pth", ".ts", ".torchscript")
ONNX_SUFFIXES = (".onnx",)


def load_model(path: str | os.PathLike[str], *, unsafe: bool = False, module: Any = None) -> Any:
    """Load a model file for :func:`rnnlens.trace`.

    ``.keras`` / ``.h5``: Keras with ``safe_mode=True`` (a ``Lambda`` layer's code is refused)
    unless ``unsafe``. A Keras 2 ``.h5`` file is converted so that it computes what it did in
    Keras 2 (``hard_sigmoid``, ``CuDNNLSTM`` / ``CuDNNGRU``: :mod:`rnnlens.adapters.keras_legacy`).
    ``.pt`` / ``.pth``: a state dict loaded with ``weights_only=True`` into
    ``module`` (your ``nn.Module`` instance), or (``unsafe`` only: it runs code when opened) a
    TorchScript file. ``.onnx``: an
    ``onnx.ModelProto`` (``onnx.load``, validated with ``onnx.checker``; ONNX files hold no code).

    Example:
        >>> import rnnlens
        >>> rnnlens.load_model("missing.keras")
        Traceback (most recent call last):
        ...
        FileNotFoundError: No model file at 'missing.keras'.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"No model file at {str(path)!r}.")
    suffix = p.suffix.lower()
    if suffix in KERAS_SUFFIXES:
        return _load_keras(p, unsafe=unsafe)
    if suffix in TORCH_SUFFIXES:
        from .adapters import torch as tadapter  # type: ignore[attr-defined]

        return tadapter.load_model(p, module, unsafe=unsafe)
    if suffix in ONNX_SUFFIXES:
        from .adapters import onnx as oadapter

        return oadapter.load_model(p)
    raise UnsupportedModelError(
        f"Don't know how to open {p.name!r}. Expected a file ending in "
        f"{', '.join(KERAS_SUFFIXES + TORCH_SUFFIXES + ONNX_SUFFIXES)}."
    )


def _load_keras(p: Path, *, unsafe: bool) -> Any:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras

    from .adapters import keras_legacy

    keras_legacy.register_custom_objects()  # a re-saved Keras 2 model names rnnlens' hard_sigmoid
    try:
        if p.suffix.lower() in (".h5", ".hdf5") and keras_legacy.is_keras2_h5(p):
            return keras_legacy.load_keras2_h5(p, safe_mode=not unsafe)
        return keras.saving.load_model(p, safe_mode=not unsafe, compile=False)
    except RnnLensError:
        raise
    except Exception as e:  # Keras raises many types for a bad file; report them as one
        text = str(e)
        if "safe_mode" in text:  # Keras' refusal to deserialize code
            raise ModelFileError(
                f"{p.name} contains Python code (a Lambda layer) that would run when loaded; "
                "refused in safe mode. If you trust the file, pass unsafe=True "
                "(CLI: --unsafe)."
            ) from None
        raise ModelFileError(
            f"Could not load {p.name} as a Keras model ({type(e).__name__}: {_first_line(text)}). "
            "The file may be truncated or corrupt, or saved by an incompatible Keras version; "
            "re-save it with model.save('model.keras')."
        ) from e


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else "no message"
