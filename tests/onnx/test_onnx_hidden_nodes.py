"""Recurrent nodes rnnlens cannot run yet (inside If branches, quantized ops) are named in a
clear error, never "No recurrent layers." with exit status 0."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")

import rnnlens  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402
from rnnlens.cli import main  # noqa: E402

H, F = 4, 3


def _lstm_node(name: str, out: str) -> tuple[object, list[object]]:
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.normal(size=(1, 4 * H, F)).astype(np.float32), f"{name}_W")
    r = numpy_helper.from_array(rng.normal(size=(1, 4 * H, H)).astype(np.float32), f"{name}_R")
    node = helper.make_node("LSTM", ["x", f"{name}_W", f"{name}_R"], [out], name=name, hidden_size=H)
    return node, [w, r]


def _if_model() -> object:
    """An LSTM two If levels deep, as a streaming model that switches on its sample rate."""
    inner_then, inits_a = _lstm_node("lstm_16k", "ya")
    inner_else, inits_b = _lstm_node("lstm_8k", "yb")
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [None] * 4)
    branch = lambda node, inits, out: helper.make_graph(  # noqa: E731
        [node, helper.make_node("Identity", [out], ["y"])], "b", [], [y], inits
    )
    inner_if = helper.make_node(
        "If", ["cond"], ["y"], name="inner_if",
        then_branch=branch(inner_then, inits_a, "ya"), else_branch=branch(inner_else, inits_b, "yb"),
    )  # fmt: skip
    outer_then = helper.make_graph([inner_if], "t", [], [y])
    outer_else = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "e", [], [y])
    top = helper.make_node(
        "If", ["cond"], ["out"], name="rate_switch", then_branch=outer_then, else_branch=outer_else
    )
    graph = helper.make_graph(
        [top],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["t", "b", F]),
         helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [None] * 4)],
    )  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _quantized_model() -> object:
    node = helper.make_node(
        "DynamicQuantizeLSTM", ["x", "W", "R"], ["y"], name="qlstm", domain="com.microsoft", hidden_size=H
    )
    graph = helper.make_graph(
        [node], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["t", "b", F])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None] * 4)],
        [numpy_helper.from_array(np.zeros((1, F, 4 * H), np.int8), "W"),
         numpy_helper.from_array(np.zeros((1, H, 4 * H), np.int8), "R")],
    )  # fmt: skip
    return helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    )


@pytest.mark.parametrize(
    ("build", "where"),
    [
        (_if_model, r"rate_switch/then_branch/inner_if/then_branch/lstm_16k \(LSTM\)"),
        (_quantized_model, r"qlstm \(com\.microsoft\.DynamicQuantizeLSTM\)"),
    ],
)
def test_hidden_recurrent_nodes_are_named(build, where, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    model = build()
    with pytest.raises(rnnlens.UnsupportedLayerError, match=where):
        rnnlens.describe(model)
    with pytest.raises(rnnlens.UnsupportedLayerError, match=where):
        rnnlens.trace(model, np.zeros((2, 1, F), np.float32))
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    assert main(["inspect", str(path)]) == 2
    err = capsys.readouterr().err
    assert "cannot run them yet" in err and "dynamo" not in err
