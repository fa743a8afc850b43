"""rnnlens.record on an ONNX streaming loop: a drop-in for the InferenceSession, the same outputs,
chained chunks joined and equal to one trace of the whole stream."""

from __future__ import annotations

import numpy as np
import pytest

import rnnlens

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

H, F = 4, 3


def _streaming_lstm() -> onnx.ModelProto:
    """x (time, batch, F) and the carried state (h, c) in; Y and the new state out."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.normal(size=(1, 4 * H, F)).astype("float32"), "W"),
        numpy_helper.from_array(rng.normal(size=(1, 4 * H, H)).astype("float32"), "R"),
        numpy_helper.from_array(rng.normal(size=(1, 8 * H)).astype("float32"), "B"),
    ]
    node = helper.make_node(
        "LSTM", ["x", "W", "R", "B", "", "h", "c"], ["Y", "h_out", "c_out"], hidden_size=H, name="vad"
    )
    f = TensorProto.FLOAT
    graph = helper.make_graph(
        [node],
        "stream",
        [helper.make_tensor_value_info("x", f, [None, None, F]),
         helper.make_tensor_value_info("h", f, [1, None, H]),
         helper.make_tensor_value_info("c", f, [1, None, H])],
        [helper.make_tensor_value_info(n, f, None) for n in ("Y", "h_out", "c_out")],
        inits,
    )  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_a_streaming_loop_through_the_recording_is_the_plain_loop_and_one_trace() -> None:
    model = _streaming_lstm()
    x = np.random.default_rng(1).normal(size=(12, 2, F)).astype("float32")
    plain = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    zeros = np.zeros((1, 2, H), "float32")
    expected, got = [], []
    h = c = zeros
    for chunk in np.split(x, [5, 10]):
        y, h, c = plain.run(None, {"x": chunk, "h": h, "c": c})
        expected.append(y)
    with rnnlens.record(model) as rec:
        h = c = zeros
        for chunk in np.split(x, [5, 10]):
            y, h, c = rec.run(None, {"x": chunk, "h": h, "c": c})
            got.append(y)
    for a, b in zip(expected, got):
        np.testing.assert_array_equal(a, b)
    assert list(rec.states) == ["vad"]
    assert [(k.name, k.start, k.stop) for k in rec.calls] == [
        ("vad", 0, 5),
        ("vad#1", 5, 10),
        ("vad#2", 10, 12),
    ]
    whole = rnnlens.trace(model, x, h=zeros, c=zeros)["vad"]
    np.testing.assert_allclose(rec.states["vad"].h, whole.h, rtol=0, atol=1e-6)
    np.testing.assert_allclose(rec.states["vad"].c, whole.c, rtol=0, atol=1e-5)


def test_a_call_from_another_state_is_a_separate_entry() -> None:
    model = _streaming_lstm()
    x = np.random.default_rng(2).normal(size=(4, 2, F)).astype("float32")
    zeros = np.zeros((1, 2, H), "float32")
    with rnnlens.record(model) as rec:
        rec.run(["Y"], {"x": x, "h": zeros, "c": zeros})
        rec.run(["Y"], {"x": x, "h": zeros, "c": zeros})  # restarted from zeros: not chained
    assert list(rec.states) == ["vad", "vad#1"]
