"""Orbax checkpoints loaded with the module given: a checkpointer's item directory, a
CheckpointManager's step and root directories (its latest step), a train state's params; an nnx
module's state restored into a copy; the states equal those of the model that was saved."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import rnnlens

pytest.importorskip("flax")
import flax.linen as nn
import jax
import orbax.checkpoint as ocp  # flax depends on it

from flax import nnx

F, U = 3, 4


def _x() -> np.ndarray:
    return np.random.default_rng(0).normal(size=(2, 5, F)).astype(np.float32)


def test_linen_variables_from_a_checkpointer_and_a_manager(tmp_path: Any) -> None:
    rnn = nn.RNN(nn.LSTMCell(U))
    x = _x()
    variables = rnn.init(jax.random.key(0), x)
    model = rnn.bind(variables)
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save((tmp_path / "item").resolve(), variables)
    with ocp.CheckpointManager((tmp_path / "mgr").resolve()) as mgr:
        old = jax.tree_util.tree_map(lambda a: a * 0, variables)
        mgr.save(1, args=ocp.args.StandardSave({"params": old["params"], "step": 1}))
        mgr.save(7, args=ocp.args.StandardSave({"params": variables["params"], "step": 7}))
        mgr.wait_until_finished()
    want = rnnlens.trace(model, x)["cell"]
    for path in (tmp_path / "item", tmp_path / "mgr" / "7", tmp_path / "mgr"):
        loaded = rnnlens.load_model(path, module=rnn)
        assert rnnlens.adapters.model_digest(loaded) == rnnlens.adapters.model_digest(model), path
        np.testing.assert_array_equal(rnnlens.trace(loaded, x)["cell"].h, want.h)
    with pytest.raises(rnnlens.RnnLensError, match="module="):
        rnnlens.load_model(tmp_path / "item")
    with pytest.raises(rnnlens.ModelFileError, match="Orbax"):
        rnnlens.load_model(tmp_path / "item", module=nnx.RNN(nnx.GRUCell(F, U, rngs=nnx.Rngs(0))))


def test_an_nnx_state_restored_into_a_copy(tmp_path: Any) -> None:
    model = nnx.RNN(nnx.GRUCell(F, U, rngs=nnx.Rngs(0)))
    _, state = nnx.split(model)
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save((tmp_path / "state").resolve(), state)
    fresh = nnx.RNN(nnx.GRUCell(F, U, rngs=nnx.Rngs(1)))
    before = rnnlens.adapters.model_digest(fresh)
    loaded = rnnlens.load_model(tmp_path / "state", module=fresh)
    x = _x()
    np.testing.assert_array_equal(rnnlens.trace(loaded, x)["cell"].h, rnnlens.trace(model, x)["cell"].h)
    assert rnnlens.adapters.model_digest(fresh) == before  # the module given is not changed
