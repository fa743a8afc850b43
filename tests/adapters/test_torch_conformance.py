"""The adapter conformance suite on PyTorch (nets and reference weights: tests/torch_nets.py)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from rnnlens.testing import AdapterTests, Built

torch = pytest.importorskip("torch")
from torch_nets import build_net  # noqa: E402


class TestTorchAdapter(AdapterTests):
    adapter_name = "torch"

    def build(self, kind: str, *, bidirectional: bool, features: int, units: int, seed: int) -> Built:
        return build_net(kind, bidirectional, features, units, seed)

    def inputs(self, model: Any, x: np.ndarray) -> tuple[tuple[Any, ...], dict[str, Any]]:
        return (torch.from_numpy(x),), {}

    def native(self, x: np.ndarray) -> Any:
        return torch.from_numpy(x) if x.dtype.kind in "biufc" else None

    def own_last(self, model: Any, layer: str, x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            _, h_n = model(torch.from_numpy(x))
        return np.concatenate(list(h_n.numpy()), axis=-1)  # (directions, n, u) → (n, u·directions)

    def masked(
        self, model: Any, x: np.ndarray, lengths: np.ndarray
    ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        return (torch.from_numpy(x), torch.from_numpy(lengths)), {}
