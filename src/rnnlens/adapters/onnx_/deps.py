"""Lazy access to the optional packages behind the ONNX adapter, onnx and onnxruntime.

Neither is imported when rnnlens is: :func:`_onnx` and :func:`_ort` import them the first time an
ONNX model needs them and turn a missing package into a
:class:`~rnnlens.errors.MissingDependencyError` that says how to install it. ``_first_line`` cuts
their (often long) error messages down to the line quoted in rnnlens' own errors.
"""

from __future__ import annotations

from typing import Any


def _onnx() -> Any:
    try:
        import onnx
    except ImportError as e:
        from ...errors import MissingDependencyError

        raise MissingDependencyError(
            f"ONNX models need the optional package 'onnx', which is not installed ({e}). "
            "Install it with: pip install 'rnnlens[onnx]'"
        ) from None
    return onnx


def _ort() -> Any:
    try:
        import onnxruntime
    except ImportError as e:
        from ...errors import MissingDependencyError

        raise MissingDependencyError(
            f"Tracing an ONNX model needs the optional package 'onnxruntime', which is not installed "
            f"({e}). Install it with: pip install 'rnnlens[onnx]'"
        ) from None
    return onnxruntime


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else "no message"
