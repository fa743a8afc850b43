"""Other tools read a store without rnnlens; rnnlens imports its optional packages lazily;
bad data files give clear errors."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest

import rnnlens
from rnnlens.io import DataFileError

keras = pytest.importorskip("keras")


@pytest.fixture(scope="module")
def store(fmodel, fdata, tmp_path_factory):  # type: ignore[no-untyped-def]
    path = tmp_path_factory.mktemp("interop") / "run.zarr"
    rnnlens.extract_to(path, fmodel, fdata, fields=None, batch_size=8)
    return path


def test_xarray_opens_the_store_without_rnnlens(store, fmodel, fdata) -> None:  # type: ignore[no-untyped-def]
    pytest.importorskip("xarray")
    mem = rnnlens.trace(fmodel, fdata, fields=None, batch_size=8)
    np.save(store.parent / "expected_h.npy", mem["bilstm"].backward.h)
    code = textwrap.dedent(
        f"""
        import sys, warnings
        import numpy as np, xarray as xr
        path = {str(store)!r}
        ds = xr.open_zarr(path, group="layers/bilstm/backward", consolidated=False)
        assert ds["h"].dims == ("sample", "time", "unit"), ds["h"].dims
        assert ds["c"].dims == ("sample", "time", "cell_unit")
        assert ds["gates"].dims == ("sample", "time", "gate", "cell_unit")
        assert list(ds["gates"].attrs["gate_names"]) == ["i", "f", "g", "o"]
        assert ds["h"].values.tobytes() == np.load({str(store.parent / "expected_h.npy")!r}).tobytes()
        gru = xr.open_zarr(path, group="layers/gru/forward", consolidated=False)
        assert gru["gates"].dims == ("sample", "time", "gate", "unit")
        root = xr.open_zarr(path, consolidated=False)
        assert root["mask"].dtype == bool and root["mask"].dims == ("sample", "time")
        assert root.attrs["time_order"] == "input" and root.attrs["model_name"] == "float_model"
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no stray files in the hierarchy
            tree = xr.open_datatree(path, engine="zarr", consolidated=False)
        assert tree["layers/bilstm/forward"].dataset["h"].shape == (22, 6, 4)
        assert "rnnlens" not in sys.modules, "rnnlens was imported"
        print("ok")
        """
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr[-3000:]


def test_importing_rnnlens_imports_no_optional_package_and_missing_ones_are_named() -> None:
    code = textwrap.dedent(
        """
        import sys
        import rnnlens
        heavy = [m for m in ("zarr", "xarray", "h5py", "keras", "tensorflow", "torch") if m in sys.modules]
        assert not heavy, heavy
        sys.modules["zarr"] = None  # as if zarr were not installed
        try:
            rnnlens.open_states(".")
        except ImportError as e:
            assert isinstance(e, rnnlens.RnnLensError)
            assert "pip install 'rnnlens[zarr]'" in str(e), str(e)
            print("ok")
        """
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr[-3000:]


def test_corrupt_truncated_and_pickled_npy_files(fmodel, fdata, tmp_path) -> None:  # type: ignore[no-untyped-def]
    good = tmp_path / "x.npy"
    np.save(good, fdata)
    truncated = tmp_path / "cut.npy"
    truncated.write_bytes(good.read_bytes()[:-100])
    garbage = tmp_path / "junk.npy"
    garbage.write_bytes(np.random.default_rng(0).bytes(500))
    pickled = tmp_path / "objects.npy"
    np.save(pickled, np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    for path, words in ((truncated, "truncated"), (garbage, "corrupt"), (pickled, "Python objects")):
        with pytest.raises(DataFileError, match=words) as info:
            rnnlens.extract_to(tmp_path / "out.zarr", fmodel, path, overwrite=True)
        assert path.name in str(info.value)
    with pytest.raises(FileNotFoundError, match="No data file"):
        rnnlens.extract_to(tmp_path / "out.zarr", fmodel, tmp_path / "none.npy", overwrite=True)
    text = tmp_path / "x.csv"
    text.write_text("1,2,3")
    with pytest.raises(DataFileError, match=r"\.npy"):
        rnnlens.extract_to(tmp_path / "out.zarr", fmodel, text, overwrite=True)
    bad_zip = tmp_path / "bad.npz"
    bad_zip.write_bytes(b"PK\x03\x04 not really")
    with pytest.raises(DataFileError, match="npz"):
        rnnlens.extract_to(tmp_path / "out.zarr", fmodel, bad_zip, overwrite=True)


def test_npz_with_lengths(fmodel, fdata, tmp_path) -> None:  # type: ignore[no-untyped-def]
    lengths = np.arange(22) % 6 + 1
    np.savez(tmp_path / "d.npz", x=fdata, lengths=lengths)
    run = rnnlens.extract_to(tmp_path / "out.zarr", fmodel, tmp_path / "d.npz", layers="gru", batch_size=8)
    np.testing.assert_array_equal(run.open().lengths[...], lengths)
