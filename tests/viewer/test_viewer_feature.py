"""The viewer's correlation panel: a feature loaded with ``--feature`` gives every unit's Pearson
r over the valid steps, equal to ``rank_units`` on the same store; bad features are refused
before the server starts; without a feature the endpoint is a 404."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from test_viewer_api import H, api, request
from viewer_helpers import MAX_TIME, N_SAMPLES, UNITS, start

import rnnlens
from rnnlens.cli import main
from rnnlens.errors import InputError
from rnnlens.testing.stores import DECOYS, LONG, PLANTED


def planted_feature() -> np.ndarray:
    """1 where unit 3 is high by construction, 0 elsewhere."""
    f = np.zeros((N_SAMPLES, MAX_TIME))
    for s, a, b in [*PLANTED, *DECOYS, LONG]:
        f[s, a:b] = 1.0
    return f


@pytest.fixture
def feature_server(planted, tmp_path):  # type: ignore[no-untyped-def]
    np.save(tmp_path / "depth.npy", planted_feature())
    srv = start(planted, feature=tmp_path / "depth.npy")
    yield srv
    srv.shutdown()
    srv.server_close()


def test_correlation_finds_the_planted_unit_and_equals_rank_units(feature_server, planted) -> None:  # type: ignore[no-untyped-def]
    assert api(feature_server, "/api/meta")["feature"] == "depth.npy"
    c = api(feature_server, f"/api/correlation?{H}")
    assert c["top"][0] == 3 and len(c["r"]) == UNITS and c["feature"] == "depth.npy"
    want = rnnlens.rank_units(rnnlens.open_states(planted), planted_feature(), layer="lstm", permutations=0)
    np.testing.assert_allclose(c["r"], want.scores, rtol=1e-12, atol=1e-12)
    assert c["n_points"] == want.n_points
    assert api(feature_server, f"/api/correlation?{H}") == c  # cached
    status, _, body = request(feature_server, "/api/correlation?layer=lstm&field=q&direction=forward")
    assert status == 400 and "field" in body["error"]


def test_without_a_feature_the_endpoint_is_a_404(server) -> None:  # type: ignore[no-untyped-def]
    assert api(server, "/api/meta")["feature"] is None
    status, _, body = request(server, f"/api/correlation?{H}")
    assert status == 404 and "--feature" in body["error"]


def test_a_per_sample_feature_and_bad_features(planted, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    per_sample = np.arange(N_SAMPLES, dtype=float)
    srv = start(planted, feature=per_sample)
    try:
        c = api(srv, f"/api/correlation?{H}")
        want = rnnlens.rank_units(rnnlens.open_states(planted), per_sample, layer="lstm", permutations=0)
        np.testing.assert_allclose(c["r"], want.scores, rtol=1e-12, atol=1e-12)
    finally:
        srv.shutdown()
        srv.server_close()
    with pytest.raises(InputError, match="per \\(sample, time\\)"):
        start(planted, feature=np.zeros((3, 4)))
    bad = planted_feature()
    bad[0, 0] = np.nan
    with pytest.raises(InputError, match="NaN"):
        start(planted, feature=bad)
    np.save(tmp_path / "wrong.npy", np.zeros(5))
    assert main(["view", str(planted), "--no-browser", "--feature", str(tmp_path / "wrong.npy")]) == 2
    err = capsys.readouterr().err
    assert "--feature" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
