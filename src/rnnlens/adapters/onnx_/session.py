"""The model as rnnlens holds it: a private copy of the user's ``ModelProto`` and its ONNX Runtime session.

:func:`load_model` opens and checks a ``.onnx`` file, :func:`_model` takes a path or a
``ModelProto``, and :func:`_prepare` parses a private copy from the model's serialized bytes and
analyses it, cached by their sha256 in ``_CACHE`` (the last few models), so that tracing the same
model batch after batch reads it once. :mod:`.runtime` builds the
``CPUExecutionProvider`` session of a copy in which every tensor rnnlens may need is a graph output.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

from ...errors import ModelFileError, UnsupportedModelError
from .deps import _first_line, _onnx
from .graph import _analyse, _Prepared

_CACHE_SIZE = 4


_CACHE: OrderedDict[str, _Prepared] = OrderedDict()
_CACHE_LOCK = threading.Lock()


def load_model(path: str | os.PathLike[str]) -> Any:
    """Open a ``.onnx`` file with ``onnx.load`` and validate it with ``onnx.checker``.

    Raises :class:`~rnnlens.errors.ModelFileError` for a file that is not a valid ONNX model.
    """
    onnx = _onnx()
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"No model file at {str(path)!r}.")
    try:
        model = onnx.load(str(p))
    except Exception as e:  # protobuf's DecodeError, or a missing external-data file
        raise ModelFileError(
            f"Could not read {p.name} as an ONNX model ({type(e).__name__}: {_first_line(str(e))}). "
            "The file may be truncated or corrupt; export it again (torch.onnx.export, tf2onnx)."
        ) from e
    try:
        # The path form also checks models whose weights live in external data files.
        onnx.checker.check_model(str(p))
    except Exception as e:
        raise ModelFileError(
            f"{p.name} is not a valid ONNX model: onnx.checker says {type(e).__name__}: "
            f"{_first_line(str(e))}. The file may be truncated or corrupt; export it again."
        ) from e
    return model


def _model(model: Any) -> Any:
    """The ``ModelProto`` of ``model`` (a path is opened with :func:`rnnlens.load_model`)."""
    if isinstance(model, (str, os.PathLike)):
        return load_model(model)
    onnx = _onnx()
    if not isinstance(model, onnx.ModelProto):
        raise UnsupportedModelError(
            f"Expected an onnx.ModelProto or a path to a .onnx file; received "
            f"{type(model).__module__}.{type(model).__name__}. Load the model with onnx.load(path) "
            "or pass the path."
        )
    return model


def _prepare(model: Any) -> _Prepared:
    proto = _model(model)
    try:
        data = proto.SerializeToString()
    except Exception as e:  # protobuf refuses messages over 2 GiB
        raise UnsupportedModelError(
            f"Could not serialize the ONNX model ({type(e).__name__}: {_first_line(str(e))}); models "
            "over 2 GiB must keep their weights as external data, which rnnlens does not support yet."
        ) from e
    key = hashlib.sha256(data).hexdigest()
    with _CACHE_LOCK:
        if key in _CACHE:
            _CACHE.move_to_end(key)
            return _CACHE[key]
    own = _onnx().ModelProto()
    own.ParseFromString(data)
    prep = _analyse(own)
    with _CACHE_LOCK:
        _CACHE[key] = prep
        while len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)
    return prep
