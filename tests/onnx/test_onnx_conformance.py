"""The adapter conformance suite on ONNX: PyTorch modules exported with torch.onnx.export and
run by ONNX Runtime; reference weights read from the PyTorch module they came from."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

import rnnlens
from rnnlens.testing import AdapterTests, Built

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from onnx_helpers import export  # noqa: E402

from torch_nets import build_net  # noqa: E402


class TestOnnxAdapter(AdapterTests):
    adapter_name = "onnx"

    @pytest.fixture(autouse=True)
    def _tmp(self, tmp_path: Path) -> None:
        self.tmp = tmp_path
        self.nets: dict[str, Any] = {}

    def build(self, kind: str, *, bidirectional: bool, features: int, units: int, seed: int) -> Built:
        net = build_net(kind, bidirectional, features, units, seed)
        x = torch.zeros(2, 3, features)
        lengths = torch.tensor([3, 2])
        path = self.tmp / f"{kind}-{bidirectional}-{seed}.onnx"
        export(
            net.model,
            (x, lengths),
            path,
            input_names=("x", "lengths"),
            dynamic_axes={"x": {0: "batch", 1: "time"}, "lengths": {0: "batch"}},
        )
        layer = rnnlens.describe(str(path))[0].name
        self.nets[str(path)] = net.model
        return Built(str(path), layer, net.reference)

    def inputs(self, model: Any, x: np.ndarray) -> tuple[tuple[Any, ...], dict[str, Any]]:
        return (x, np.full(x.shape[0], x.shape[1], np.int64)), {}

    def own_last(self, model: Any, layer: str, x: np.ndarray) -> np.ndarray:
        session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
        _, h_n = session.run(None, {"x": x, "lengths": np.full(x.shape[0], x.shape[1], np.int64)})
        return np.concatenate(list(h_n), axis=-1)

    def masked(
        self, model: Any, x: np.ndarray, lengths: np.ndarray
    ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        return (x, lengths.astype(np.int64)), {}

    def store_model(self, model: Any, tmp: Path) -> Any:
        # extract_to feeds the data file as the graph's one input: the same net, exported without lengths
        path = tmp / "x-only.onnx"
        x = torch.zeros(2, 3, self.features)
        export(self.nets[model], (x,), path, dynamic_axes={"x": {0: "b", 1: "t"}})
        return str(path)
