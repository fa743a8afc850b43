"""rank_units on a Dask cluster: one task per chunk of a stored layer, the same bits as the
in-process stream (the client adds the chunks' sums in chunk order)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import rnnlens
from rnnlens.errors import OptionError
from rnnlens.testing.stores import write_store

pytestmark = pytest.mark.xdist_group("dask")


def _planted_store(path: Path) -> tuple[Path, np.ndarray]:
    rng = np.random.default_rng(4)
    n, t, units = 37, 16, 6
    depth = rng.integers(0, 4, size=(n, t)).astype(np.float64)
    h = rng.normal(size=(n, t, units))
    h[..., 3] += depth  # unit 3 tracks the feature
    mask = np.ones((n, t), bool)
    mask[::4, 11:] = False
    h[~mask] = 0.0
    return write_store(path, h.astype(np.float32), mask=mask, layer="enc", batch_size=5), depth


def test_dask_ranking_equals_the_in_process_stream_bit_for_bit(client, tmp_path) -> None:  # type: ignore[no-untyped-def]
    path, depth = _planted_store(tmp_path / "s.zarr")
    stored = rnnlens.open_states(path)
    local = rnnlens.rank_units(stored, depth, layer="enc", permutations=30, seed=2, chunk=10)
    spread = rnnlens.rank_units(stored, depth, layer="enc", permutations=30, seed=2, chunk=10, client=client)
    assert spread.top(1) == [3]
    np.testing.assert_array_equal(spread.scores, local.scores)
    np.testing.assert_array_equal(spread.p_values, local.p_values)
    assert spread.n_points == local.n_points == int(stored.mask[...].sum())
    # and the in-memory states give the same ranking (summed in other chunks: rtol)
    memory = rnnlens.rank_units(stored.load(), depth, layer="enc", permutations=30, seed=2)
    np.testing.assert_allclose(spread.scores, memory.scores, rtol=1e-9, atol=1e-12)


def test_dask_ranking_refuses_in_memory_states_and_rank_methods(client, tmp_path) -> None:  # type: ignore[no-untyped-def]
    path, depth = _planted_store(tmp_path / "s.zarr")
    stored = rnnlens.open_states(path)
    with pytest.raises(OptionError, match="stored"):
        rnnlens.rank_units(stored.load(), depth, layer="enc", client=client)
    with pytest.raises(OptionError, match="spearman"):
        rnnlens.rank_units(stored, depth, layer="enc", method="spearman", client=client)
