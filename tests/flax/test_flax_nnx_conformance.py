"""The adapter conformance suite on flax.nnx modules (nnx.RNN and nnx.Bidirectional)."""

from __future__ import annotations

from functools import cache
from typing import Any

import numpy as np
import pytest

from rnnlens.testing import AdapterTests, Built

pytest.importorskip("flax")
import jax
import jax.numpy as jnp
from test_flax_nnx import CELLS, _reference

from flax import nnx


@cache
def _build(kind: str, bidirectional: bool, features: int, units: int, seed: int) -> Built:
    rngs = nnx.Rngs(seed)
    if not bidirectional:
        rnn = nnx.RNN(CELLS[kind](features, units, rngs=rngs), return_carry=True, rngs=rngs)
        return Built(rnn, "cell", {"forward": _reference(kind, rnn.cell)})
    fwd = nnx.RNN(CELLS[kind](features, units, rngs=rngs), rngs=rngs)
    bwd = nnx.RNN(CELLS[kind](features, units, rngs=rngs), rngs=rngs)
    bi = nnx.Bidirectional(fwd, bwd, return_carry=True)
    ref = {"forward": _reference(kind, fwd.cell), "backward": {**_reference(kind, bwd.cell), "reverse": True}}
    return Built(bi, "Bidirectional", ref)


def _h(carry: Any) -> np.ndarray:
    return np.asarray(carry[1] if isinstance(carry, tuple) else carry)


class TestFlaxNnxAdapter(AdapterTests):
    adapter_name = "flax"

    def build(self, kind: str, *, bidirectional: bool, features: int, units: int, seed: int) -> Built:
        return _build(kind, bidirectional, features, units, seed)

    def native(self, x: np.ndarray) -> Any:
        return jnp.asarray(x) if x.dtype.kind in "biuf" else None

    def own_last(self, model: Any, layer: str, x: np.ndarray) -> np.ndarray:
        state = nnx.state(model)
        carry, _ = model(x)
        nnx.update(model, state)  # the model's own call moves its RNG counters: put them back
        if layer == "Bidirectional":
            return np.concatenate([_h(carry[0]), _h(carry[1])], axis=-1)
        return _h(carry)

    def masked(
        self, model: Any, x: np.ndarray, lengths: np.ndarray
    ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        return (x,), {"seq_lengths": lengths}


def test_tracing_leaves_every_variable_of_the_model_as_it_was() -> None:
    import rnnlens

    model = _build("lstm", True, 3, 4, 7).model
    before = jax.tree_util.tree_map(
        lambda a: np.asarray(jax.random.key_data(a) if jnp.issubdtype(a.dtype, jax.dtypes.prng_key) else a),
        nnx.state(model),
    )
    rnnlens.trace(model, np.ones((2, 4, 3), np.float32))
    after = jax.tree_util.tree_map(
        lambda a: np.asarray(jax.random.key_data(a) if jnp.issubdtype(a.dtype, jax.dtypes.prng_key) else a),
        nnx.state(model),
    )
    jax.tree_util.tree_map(np.testing.assert_array_equal, before, after)
