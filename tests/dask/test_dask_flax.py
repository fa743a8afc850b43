"""A Flax linen model (bound to its variables, which do not pickle as they are) and an nnx model
extracted on the LocalCluster write the same store, bit for bit, as one process."""

from __future__ import annotations

import numpy as np
import pytest
from dask_helpers import assert_same_store, data

import rnnlens

pytest.importorskip("flax")
pytestmark = pytest.mark.xdist_group("dask")


@pytest.mark.parametrize("flavour", ["linen", "nnx"])
def test_flax_models_equal_single_process(client, tmp_path, flavour: str) -> None:  # type: ignore[no-untyped-def]
    import flax.linen as nn
    import jax

    from flax import nnx

    x = data(11)
    if flavour == "linen":
        rnn = nn.RNN(nn.OptimizedLSTMCell(4))
        model = rnn.bind(rnn.init(jax.random.key(0), x))
    else:
        model = nnx.RNN(nnx.GRUCell(3, 4, rngs=nnx.Rngs(0)))
    rnnlens.extract_to(tmp_path / "ref.zarr", model, x, fields=None, batch_size=4)
    run = rnnlens.extract_to(tmp_path / "dask.zarr", model, x, fields=None, batch_size=4, client=client)
    assert run.n_samples == 11
    assert_same_store(tmp_path / "ref.zarr", tmp_path / "dask.zarr")
    np.testing.assert_array_equal(
        rnnlens.open_states(tmp_path / "dask.zarr")["cell"].h, rnnlens.trace(model, x)["cell"].h
    )
