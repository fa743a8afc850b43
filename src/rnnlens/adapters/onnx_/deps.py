"""Lazy access to the optional packages behind the ONNX adapter, onnx and onnxruntime.

Neither is imported when rnnlens is: :func:`_onnx` and :func:`_ort` import them the first time an
ONNX model needs them and turn a missing package into a
:class:`~rnnlens.errors.MissingDependencyError` that says how to install it. ``_first_line`` cuts
their (often long) error messages down to the line quoted in rnnlens' own errors.
"""

from __future__ import annotations

from typing import Any

from ...core.optional import require


def _onnx() -> Any:
    return require("onnx", purpose="ONNX models")


def _ort() -> Any:
    return require("onnxruntime", purpose="Tracing an ONNX model")


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else "no message"
