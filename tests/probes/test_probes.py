"""rank_units, probe and confirm on planted answers: units and directions that encode a feature
by construction, in memory and in a store read chunk by chunk."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

import rnnlens
from rnnlens.core.spec import LayerSpec
from rnnlens.core.states import DirectionStates, LayerStates, States

pytest.importorskip("sklearn")


def _planted(
    n: int = 40, t: int = 25, units: int = 8, seed: int = 0
) -> tuple[States, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    depth = rng.integers(0, 4, size=(n, t)).astype(np.float64)
    h = rng.normal(size=(n, t, units))
    h[..., 5] += 1.5 * depth  # unit 5 tracks depth
    h[..., 1] -= 0.7 * depth  # unit 1 tracks it negatively, less
    mask = np.ones((n, t), bool)
    mask[::3, 20:] = False
    h[~mask] = np.nan  # padding: never used
    spec = LayerSpec("enc", "lstm", "LSTM", units, ("forward",), ("h",), None, ())
    ls = LayerStates(spec, {"forward": DirectionStates("forward", h.astype(np.float32), mask=mask)}, mask)
    return States({"enc": ls}), depth, mask


def test_pearson_ranking_finds_the_planted_units_and_equals_numpy() -> None:
    states, depth, mask = _planted()
    ranking = rnnlens.rank_units(states, depth, layer="enc", permutations=199)
    assert ranking.top(2) == [5, 1]
    h = states["enc"].h[mask].astype(np.float64)
    want = [np.corrcoef(h[:, u], depth[mask])[0, 1] for u in range(8)]
    np.testing.assert_allclose(ranking.scores, want, rtol=1e-9, atol=1e-12)
    assert ranking.p_values[5] == pytest.approx(1 / 200) and ranking.p_values[[0, 2, 3]].min() > 0.01
    assert ranking.n_points == int(mask.sum())
    assert "unit" in repr(ranking)


def test_streamed_ranking_of_a_store_equals_the_in_memory_one(tmp_path: Path) -> None:
    from rnnlens.testing.stores import write_store

    states, depth, mask = _planted()
    path = write_store(
        tmp_path / "s.zarr", np.nan_to_num(states["enc"].h), mask=mask, layer="enc", batch_size=7
    )
    stored = rnnlens.open_states(path)
    a = rnnlens.rank_units(states, depth, layer="enc", permutations=50, seed=3)
    b = rnnlens.rank_units(stored, depth, layer="enc", permutations=50, seed=3, chunk=6)
    np.testing.assert_allclose(a.scores, b.scores, rtol=1e-6)
    np.testing.assert_array_equal(a.p_values, b.p_values)


@pytest.mark.parametrize("method", ["spearman", "mutual_info"])
def test_other_methods_rank_the_planted_unit_first(method: str) -> None:
    states, depth, _ = _planted()
    ranking = rnnlens.rank_units(states, depth, layer="enc", method=method, permutations=0)
    assert ranking.top(1) == [5] and ranking.p_values is None


def test_probe_selectivity_against_a_control_task() -> None:
    rng = np.random.default_rng(1)
    n, t, units = 60, 20, 10
    types = rng.integers(0, 30, size=(n, t))  # token ids
    labels = (types % 3 == 0).astype(int)  # a property of the token...
    h = rng.normal(size=(n, t, units))
    h[..., 4] += 3.0 * labels  # ...that unit 4 encodes
    spec = LayerSpec("enc", "gru", "GRU", units, ("forward",), ("h",), None, ())
    states = States({"enc": LayerStates(spec, {"forward": DirectionStates("forward", h)}, None)})
    result = rnnlens.probe(states, labels, layer="enc", types=types)
    assert result.score > 0.9 and result.top(1) == [4]
    # the control task: each token type gets a random label; a probe on pure noise cannot learn it
    assert result.control_score is not None and result.control_score < result.score
    assert result.selectivity == pytest.approx(result.score - result.control_score)
    noise = States(
        {
            "enc": LayerStates(
                spec, {"forward": DirectionStates("forward", rng.normal(size=(n, t, units)))}, None
            )
        }
    )
    chance = rnnlens.probe(noise, labels, layer="enc", types=types)
    assert chance.selectivity is not None and abs(chance.selectivity) < 0.15
    ridge = rnnlens.probe(states, labels.astype(float), layer="enc", kind="ridge", control=False)
    assert ridge.score > 0.5 and ridge.control_score is None  # R² of a 2:1 signal to noise: 2/3


def test_confirm_ablates_the_top_units_in_the_model() -> None:
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    m = torch.nn.LSTM(3, 6, batch_first=True).eval()
    x = np.random.default_rng(2).normal(size=(8, 10, 3)).astype("float32")

    def metric(out: Any) -> float:
        return float(np.abs(out[0][:, -1, 2]).mean())  # depends on unit 2 of the last step

    found = rnnlens.confirm(m, x, [2], layer="lstm", metric=metric, draws=4)
    assert found.ablated == pytest.approx(0.0, abs=1e-7) and found.effect < 0
    assert len(found.random) == 4 and all(
        abs(r - found.baseline) < abs(found.effect) + 1e-9 for r in found.random
    )
    assert "random units" in repr(found)


def test_cli_probe_on_a_store(tmp_path: Path, capsys: Any) -> None:
    from rnnlens.cli import main
    from rnnlens.testing.stores import write_store

    states, depth, mask = _planted()
    path = write_store(
        tmp_path / "s.zarr", np.nan_to_num(states["enc"].h), mask=mask, layer="enc", batch_size=8
    )
    np.save(tmp_path / "labels.npy", (depth > 1).astype(int))
    args = ["probe", str(path), "--labels", str(tmp_path / "labels.npy"), "--layer", "enc"]
    assert main([*args, "--plot", str(tmp_path / "rank.png")]) == 0
    out = capsys.readouterr().out
    assert "UnitRanking of enc.h" in out and "selectivity" in out
    assert (tmp_path / "rank.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["probe", str(path), "--labels", str(tmp_path / "nope.npy"), "--layer", "enc"]) == 2


def test_incremental_probes_on_a_store_read_chunk_by_chunk(tmp_path: Path) -> None:
    """incremental=True reads the store a chunk of samples at a time: ridge is the exact ridge
    solution (equal to the in-memory probe), logistic an SGD fit that finds the same unit."""
    from rnnlens.testing.stores import write_store

    states, depth, mask = _planted(n=60)
    path = write_store(
        tmp_path / "s.zarr", np.nan_to_num(states["enc"].h), mask=mask, layer="enc", batch_size=7
    )
    stored = rnnlens.open_states(path)
    whole = rnnlens.probe(states, depth, layer="enc", kind="ridge", control=False)
    streamed = rnnlens.probe(
        stored, depth, layer="enc", kind="ridge", control=False, incremental=True, chunk=6
    )
    assert streamed.score == pytest.approx(whole.score, rel=1e-6, abs=1e-9)
    np.testing.assert_allclose(streamed.weights.reshape(-1), whole.weights.reshape(-1), rtol=1e-5, atol=1e-8)
    assert (streamed.n_train, streamed.n_test) == (whole.n_train, whole.n_test)
    labels = (depth >= 2).astype(int)
    exact = rnnlens.probe(states, labels, layer="enc")
    sgd = rnnlens.probe(stored, labels, layer="enc", incremental=True, chunk=6)
    assert sgd.top(1) == exact.top(1) == [5]
    assert abs(sgd.score - exact.score) < 0.05 and sgd.selectivity is not None and sgd.selectivity > 0.2
