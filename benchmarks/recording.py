"""Recording across calls: a decoder called once per token (PyTorch) and a streaming LSTM fed
chunk by chunk with its state carried (ONNX), each against the same loop without recording.
``SUITES`` plugs the cases into ``python -m benchmarks``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from .harness import Case

STEPS, BATCH, FEATURES, UNITS = 200, 32, 16, 64


def torch_cases() -> list[Case]:
    import torch

    import rnnlens

    torch.manual_seed(0)
    rnn = torch.nn.GRU(FEATURES, UNITS, batch_first=True).eval()
    x = torch.randn(BATCH, STEPS, FEATURES)

    def loop() -> Any:
        with torch.inference_mode():
            h = None
            for t in range(STEPS):
                _, h = rnn(x[:, t : t + 1], h)
            return h

    def recorded(states: bool = True) -> Any:
        with torch.inference_mode(), rnnlens.record(rnn) as rec:
            h = None
            for t in range(STEPS):
                _, h = rnn(x[:, t : t + 1], h)
        return rec.states if states else rec

    return [
        Case(f"GRU decoder, {STEPS} calls of 1 step (floor)", loop, f"batch {BATCH}"),
        Case("the same loop inside rnnlens.record", lambda: recorded(False), "the loop only"),
        Case("... and its joined states", recorded, "incl. building the joined states"),
    ]


def onnx_cases() -> list[Case]:
    import onnxruntime as ort

    import rnnlens
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    h_, f_ = UNITS, FEATURES
    inits = [
        numpy_helper.from_array(rng.normal(size=(1, 4 * h_, f_)).astype("float32") * 0.1, "W"),
        numpy_helper.from_array(rng.normal(size=(1, 4 * h_, h_)).astype("float32") * 0.1, "R"),
    ]
    node = helper.make_node(
        "LSTM", ["x", "W", "R", "", "", "h", "c"], ["Y", "h_out", "c_out"], hidden_size=h_
    )
    f = TensorProto.FLOAT
    graph = helper.make_graph(
        [node],
        "stream",
        [
            helper.make_tensor_value_info(n, f, s)
            for n, s in (("x", [None, None, f_]), ("h", [1, None, h_]), ("c", [1, None, h_]))
        ],
        [helper.make_tensor_value_info(n, f, None) for n in ("Y", "h_out", "c_out")],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    chunks = [rng.normal(size=(4, 1, f_)).astype("float32") for _ in range(390)]
    zeros = np.zeros((1, 1, h_), "float32")

    def run_loop(run: Callable[..., Any]) -> Any:
        h = c = zeros
        for chunk in chunks:
            _, h, c = run(None, {"x": chunk, "h": h, "c": c})
        return h

    def recorded(states: bool = True) -> Any:
        with rnnlens.record(model) as rec:
            run_loop(rec.run)
        return rec.states if states else rec

    return [
        Case(
            "ONNX streaming LSTM, 390 chunks (floor)", lambda: run_loop(session.run), "InferenceSession.run"
        ),
        Case("the same loop through rnnlens.record", lambda: recorded(False), "the loop only"),
        Case("... and its joined states", recorded, "incl. building the joined states"),
    ]


SUITES: dict[str, Callable[[], list[Case]]] = {"record-torch": torch_cases, "record-onnx": onnx_cases}
