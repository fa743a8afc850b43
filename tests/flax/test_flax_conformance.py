"""The adapter conformance suite on Flax linen (models: tests/flax/flax_nets.py)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from rnnlens.testing import AdapterTests, Built

pytest.importorskip("flax")
import jax.numpy as jnp
from flax_nets import build, h_of


class TestFlaxAdapter(AdapterTests):
    adapter_name = "flax"

    def build(self, kind: str, *, bidirectional: bool, features: int, units: int, seed: int) -> Built:
        model, layer, ref = build(kind, bidirectional, features, units, seed)
        return Built(model, layer, ref)

    def native(self, x: np.ndarray) -> Any:
        return jnp.asarray(x) if x.dtype.kind in "biuf" else None

    def own_last(self, model: Any, layer: str, x: np.ndarray) -> np.ndarray:
        carry, _ = model(x)
        if layer == "bi":
            return np.concatenate([h_of(carry[0]), h_of(carry[1])], axis=-1)
        return h_of(carry)

    def masked(
        self, model: Any, x: np.ndarray, lengths: np.ndarray
    ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        return (x,), {"seq_lengths": lengths}
