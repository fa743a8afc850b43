"""The model as rnnlens holds it: the flatbuffer's bytes, from a path, a loaded model or an interpreter.

:func:`load_model` reads a ``.tflite`` file into a :class:`TFLiteModel` (bytes only: a flatbuffer
holds no code, and nothing is run to open it). :func:`content` gives the bytes of any form rnnlens
takes: a path, a :class:`TFLiteModel`, or a ``tf.lite.Interpreter`` / ``ai_edge_litert``
interpreter built from ``model_content=`` (one built from ``model_path=`` does not keep its
bytes: pass the path instead).

Example:
    >>> TFLiteModel(bytes(4) + b"TFL3", "tiny.tflite")
    <TFLiteModel 'tiny.tflite', 8 bytes>
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ...errors import ModelFileError, UnsupportedModelError

__all__ = ["TFLiteModel", "content", "load_model"]


class TFLiteModel:
    """A ``.tflite`` model opened by :func:`rnnlens.load_model`: its flatbuffer bytes and name."""

    def __init__(self, data: bytes, name: str = "model.tflite") -> None:
        self.content = bytes(data)
        self.name = name

    def __repr__(self) -> str:
        return f"<TFLiteModel {self.name!r}, {len(self.content)} bytes>"


def load_model(path: str | os.PathLike[str]) -> TFLiteModel:
    """Read ``path`` (a ``.tflite`` flatbuffer); an unreadable file is a :class:`ModelFileError`."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"No model file at {str(path)!r}.")
    data = p.read_bytes()
    # the file identifier "TFL3" sits at bytes 4-8 of every TFLite flatbuffer
    if len(data) < 8 or data[4:8] != b"TFL3":
        raise ModelFileError(
            f"{p.name} is not a TFLite flatbuffer (no 'TFL3' identifier). The file may be truncated or "
            "corrupt; convert the model again (tf.lite.TFLiteConverter)."
        )
    return TFLiteModel(data, p.name)


def content(model: Any) -> bytes:
    """The flatbuffer bytes of ``model`` (a path, a :class:`TFLiteModel` or an interpreter)."""
    if isinstance(model, (str, os.PathLike)):
        return load_model(model).content
    if isinstance(model, TFLiteModel):
        return model.content
    data = getattr(model, "_model_content", None)
    if type(model).__name__ == "Interpreter" and data is None:
        raise UnsupportedModelError(
            "This TFLite Interpreter was built from model_path=, and an interpreter does not keep the "
            "file it read, so rnnlens cannot see its ops. Pass the path instead (rnnlens.trace("
            "'model.tflite', x)), or build the interpreter with model_content=open(path, 'rb').read()."
        )
    if data is None:
        raise UnsupportedModelError(
            f"Expected a .tflite path, an rnnlens TFLiteModel or a tf.lite.Interpreter; received "
            f"{type(model).__module__}.{type(model).__name__}."
        )
    return bytes(data)
