"""Helpers for the ONNX adapter tests: real exports from PyTorch, hand-built graphs, and weights
converted to rnnlens' canonical order independently of the adapter (by gate name)."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

import onnx
from onnx import TensorProto, helper, numpy_helper
from rnnlens.testing import sigmoid

OPSET = 17


def export(
    module: Any,
    args: tuple[Any, ...],
    path: Path,
    *,
    input_names: Sequence[str] = ("x",),
    dynamo: bool = False,
    dynamic_axes: dict[str, dict[int, str]] | None = None,
) -> Path:
    """``torch.onnx.export`` to ``path`` (TorchScript exporter unless ``dynamo``), quietly."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        kw: dict[str, Any] = {"dynamic_axes": dynamic_axes} if not dynamo else {"verbose": False}
        torch.onnx.export(module.eval(), args, str(path), dynamo=dynamo, input_names=list(input_names), **kw)
    return path


# --------------------------------------------------------------------------- activations

ACTS = {
    "Sigmoid": sigmoid,
    "Tanh": np.tanh,
    "Relu": lambda z: np.maximum(z, 0.0),
    "HardSigmoid": lambda z: np.clip(0.2 * z + 0.5, 0.0, 1.0),
    "Softsign": lambda z: z / (1.0 + np.abs(z)),
}

# ONNX gate letters per op, in the order ONNX stores the blocks, and rnnlens' canonical order
ONNX_GATES = {"LSTM": "iofc", "GRU": "zrh", "RNN": "i"}
CANONICAL = {"LSTM": "ifco", "GRU": "zrh", "RNN": "i"}


def canonical_from_onnx(op: str, w: np.ndarray, r: np.ndarray, b: np.ndarray | None) -> dict[str, Any]:
    """One direction's ONNX ``W`` [G*H, I], ``R`` [G*H, H], ``B`` [2*G*H] as reference weights."""
    letters = ONNX_GATES[op]
    g = len(letters)

    def reorder(a: np.ndarray) -> np.ndarray:
        blocks = dict(zip(letters, np.split(a, g, axis=0)))
        return np.concatenate([blocks[k] for k in CANONICAL[op]], axis=0)

    out: dict[str, Any] = {"kernel": reorder(w).T, "recurrent_kernel": reorder(r).T}
    if b is not None:
        wb, rb = np.split(b, 2)
        out["bias"], out["recurrent_bias"] = reorder(wb), reorder(rb)
    return out


# --------------------------------------------------------------------------- hand-built graphs


def recurrent_model(
    op: str,
    *,
    hidden: int,
    features: int,
    direction: str = "forward",
    layout: int = 0,
    weights: dict[str, np.ndarray],
    lens: bool = False,
    initial: dict[str, np.ndarray] | None = None,
    outputs: Sequence[str] = ("Y",),
    name: str = "rec",
    dtype: Any = np.float32,
    **attrs: Any,
) -> onnx.ModelProto:
    """A one-node graph: input ``x`` (and int32 ``lens`` when ``lens``), weights as initializers,
    ``initial`` states (``initial_h``, ``initial_c``) as initializers, ``outputs`` named as given
    ('' leaves one out); ``Y`` is the graph output."""
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    inits = [numpy_helper.from_array(np.asarray(v, dtype), k) for k, v in weights.items()]
    initial = initial or {}
    inits += [numpy_helper.from_array(np.asarray(v, dtype), k) for k, v in initial.items()]
    inputs = ["x", "W", "R", "B" if "B" in weights else "", "lens" if lens else ""]
    inputs += ["initial_h" if "initial_h" in initial else "", "initial_c" if "initial_c" in initial else ""]
    inputs += ["P" if "P" in weights else ""]
    while inputs and not inputs[-1]:
        inputs.pop()
    node = helper.make_node(
        op, inputs, list(outputs), name=name, hidden_size=hidden, direction=direction, **attrs
    )
    if layout:
        node.attribute.append(helper.make_attribute("layout", layout))
    x_shape = ["batch", "time", features] if layout else ["time", "batch", features]
    graph_inputs = [helper.make_tensor_value_info("x", elem, x_shape)]
    if lens:
        graph_inputs.append(helper.make_tensor_value_info("lens", TensorProto.INT32, ["batch"]))
    graph = helper.make_graph(
        [node], "g", graph_inputs, [helper.make_tensor_value_info(outputs[0], elem, [None] * 4)], inits
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    onnx.checker.check_model(model)
    return model


def run_ort(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    import onnxruntime as ort

    s = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return list(s.run(None, feeds))
