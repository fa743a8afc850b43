"""States.to_datatree() has the structure xarray.open_datatree gives for the store of the same
states (groups, variables, dims, layer attributes, values); LayerStates.to_xarray() names dims."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import rnnlens

xr = pytest.importorskip("xarray")
torch = pytest.importorskip("torch")


def test_to_datatree_matches_the_store(tmp_path: Path) -> None:
    torch.manual_seed(0)
    m = torch.nn.LSTM(3, 4, num_layers=2, batch_first=True, bidirectional=True).eval()
    x = np.random.default_rng(0).normal(size=(5, 6, 3)).astype("float32")
    rnnlens.extract_to(tmp_path / "s.zarr", m, x, fields=None, batch_size=2)
    stored = xr.open_datatree(tmp_path / "s.zarr", engine="zarr", consolidated=False)
    mine = rnnlens.trace(m, x).to_datatree()
    for layer in ("lstm.l0", "lstm.l1"):
        group = f"layers/{layer}"
        for key in ("name", "kind", "units", "cell_units", "directions", "fields", "gate_names"):
            assert mine[group].attrs[key] == stored[group].attrs[key], key
        for d in ("forward", "backward"):
            a, b = mine[f"{group}/{d}"].to_dataset(), stored[f"{group}/{d}"].to_dataset()
            assert set(a.data_vars) == set(b.data_vars) == {"h", "c", "gates"}
            for v in a.data_vars:
                assert a[v].dims == b[v].dims
                # the store was traced in batches of 2: the step loop's GEMMs round by ~1e-7 otherwise
                np.testing.assert_allclose(a[v].values, b[v].values, rtol=0, atol=1e-6)
            assert a.attrs == b.attrs


def test_layer_to_xarray_has_named_dims_coordinates_and_tokens() -> None:
    torch.manual_seed(1)
    m = torch.nn.GRU(3, 4, batch_first=True, bidirectional=True).eval()
    x = np.random.default_rng(1).normal(size=(2, 5, 3)).astype("float32")
    ls = rnnlens.trace(m, x)["gru"]
    tokens = np.array([list("abcde"), list("vwxyz")])
    ds = ls.to_xarray(tokens=tokens)
    assert ds["h"].dims == ("direction", "sample", "time", "unit")
    assert list(ds["direction"].values) == ["forward", "backward"]
    assert list(ds["gate"].values) == ["z", "r", "n"]
    np.testing.assert_array_equal(ds["h"].sel(direction="backward").values, ls.backward.h)
    assert ds["token"].values[1, 2] == "x" and ds.attrs["kind"] == "gru"
