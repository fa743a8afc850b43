"""The graph's inputs from ``trace``'s arguments: ``{input name: array}`` checked against the graph.

:func:`_feeds` maps ``x``, further positional arguments and keyword arguments to the graph
inputs that are not initializers (in graph order or by name), and :func:`_convert` turns each
value (a NumPy array or a CPU tensor of any framework) into a contiguous array of the input's
dtype, refusing other kinds of dtype and shapes that do not fit; :func:`_signature` describes the
inputs for error messages.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ...errors import InputError, suggest
from ..base import Kwargs
from .graph import _Input, _Prepared


def _signature(prep: _Prepared) -> str:
    return "; ".join(i.show() for i in prep.inputs) or "none"


def _array(v: Any) -> np.ndarray:
    if hasattr(v, "detach"):  # torch
        v = v.detach().cpu().numpy()
    elif hasattr(v, "numpy") and not isinstance(v, np.ndarray):  # TensorFlow, JAX
        v = v.numpy()
    return np.asarray(v)


def _feeds(prep: _Prepared, x: Any, args: Sequence[Any], kwargs: Kwargs) -> dict[str, np.ndarray]:
    """``{input name: array}`` from ``x``, ``*args`` and ``**kwargs``, checked against the graph."""
    names = [i.name for i in prep.inputs]
    given: dict[str, Any] = {}
    if isinstance(x, Mapping):
        if args:
            raise InputError(
                "Pass the model's inputs either as one dict {name: array} or positionally, not both; "
                f"received a dict and {len(args)} more positional argument(s)."
            )
        given.update(x)
    else:
        positional = [*(x if isinstance(x, (list, tuple)) else [] if x is None else [x]), *args]
        if len(positional) > len(names):
            raise InputError(
                f"Received {len(positional)} positional input(s); the model has {len(names)}: "
                f"{_signature(prep)}. A list or tuple x means several inputs; pass one array for one input."
            )
        given.update(zip(names, positional))
    for k, v in kwargs.items():
        if k in given:
            raise InputError(f"Input {k!r} is given twice (positionally and by name). Pass it once.")
        given[k] = v
    for k in given:
        if k not in names:
            hint = suggest(str(k), names)
            raise InputError(
                f"The model has no input named {k!r}. Expected inputs: {_signature(prep)}."
                + (f" Did you mean {hint!r}?" if hint else "")
            )
    missing = [n for n in names if n not in given]
    if missing:
        raise InputError(
            f"Missing model input(s) {missing}. The model's inputs are: {_signature(prep)}; pass them "
            "positionally in this order, by name (trace(model, x, name=array)) or as a dict."
        )
    return {i.name: _convert(i, given[i.name]) for i in prep.inputs}


def _convert(spec: _Input, value: Any) -> np.ndarray:
    a = _array(value)
    want = spec.dtype
    if a.dtype != want and want != np.dtype("O"):
        same_kind = (a.dtype.kind == "f" and want.kind == "f") or (
            a.dtype.kind in "iub" and want.kind in "iu"
        )
        if not same_kind:
            raise InputError(
                f"Input {spec.name!r} has dtype {a.dtype}; the model expects {want} "
                f"({spec.show()}). Convert it, e.g. x.astype({str(want)!r})."
            )
        a = a.astype(want)
    if spec.shape is not None:
        bad = a.ndim != len(spec.shape) or any(
            isinstance(d, int) and d > 0 and d != s for d, s in zip(spec.shape, a.shape)
        )
        if bad:
            raise InputError(
                f"Input {spec.name!r} has shape {a.shape}; the model expects {spec.show()} "
                "(? and names are free). Check the axis order: an exported PyTorch model without "
                "batch_first takes (time, batch, feature)."
            )
    return np.ascontiguousarray(a)
