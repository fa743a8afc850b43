"""``rnnlens extract`` / ``rnnlens export`` as a user runs them, and the exported files."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

import rnnlens
from rnnlens.cli import main

keras = pytest.importorskip("keras")


@pytest.fixture(scope="module")
def files(tmodel, tdata, tmp_path_factory):  # type: ignore[no-untyped-def]
    root = tmp_path_factory.mktemp("cli")
    tmodel.save(root / "model.keras")
    np.save(root / "tokens.npy", tdata[0])
    return root


def test_extract_then_export_npz_and_hdf5(files, tmodel, tdata, capsys) -> None:  # type: ignore[no-untyped-def]
    h5py = pytest.importorskip("h5py")
    x, lengths = tdata
    out = files / "run.zarr"
    argv = ["extract", str(files / "model.keras"), str(files / "tokens.npy"), "-o", str(out)]
    assert main([*argv, "--fields", "h,c", "--batch-size", "4"]) == 0
    err = capsys.readouterr().err
    assert "13 samples" in err and "run.zarr" in err and "\r" not in err  # not a TTY: one summary line
    mem = rnnlens.trace(tmodel, x, fields=("h", "c"), batch_size=4)
    stored = rnnlens.open_states(out)
    assert stored["lstm_1"].forward.c[...].tobytes() == mem["lstm_1"].c.tobytes()

    # rerunning resumes (nothing to do); other fields are refused unless --overwrite
    assert main([*argv, "--fields", "h,c", "--batch-size", "4"]) == 0
    capsys.readouterr()
    assert main([*argv, "--fields", "h", "--batch-size", "4"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("rnnlens extract: error:") and "--overwrite" in err and "Traceback" not in err
    assert main([*argv, "--fields", "h,c", "--batch-size", "4", "--no-resume"]) == 2
    capsys.readouterr()

    assert main(["export", str(out), "--to", "npz", "-o", str(files / "states.npz")]) == 0
    with np.load(files / "states.npz", allow_pickle=False) as z:
        assert sorted(z.files) == ["lengths", "lstm_1_forward_c", "lstm_1_forward_h", "mask"]
        np.testing.assert_array_equal(z["lstm_1_forward_h"], mem["lstm_1"].h)
        np.testing.assert_array_equal(z["mask"], mem.mask)
        np.testing.assert_array_equal(z["lengths"], lengths)

    assert main(["export", str(out), "-o", str(files / "states.h5")]) == 0
    valid = mem.mask
    with h5py.File(files / "states.h5", "r") as f:
        assert f["lstm_1_forward_h"].shape == (int(lengths.sum()), 5)
        np.testing.assert_array_equal(f["lstm_1_forward_h"][...], mem["lstm_1"].h[valid])
        np.testing.assert_array_equal(f["lstm_1_forward_c"][...], mem["lstm_1"].c[valid])
        rows, steps = np.nonzero(valid)
        np.testing.assert_array_equal(f["sample_index"][...], rows)
        np.testing.assert_array_equal(f["time_index"][...], steps)
        assert f.attrs["model_name"] == "token_model"
    assert main(["export", str(out), "-o", str(files / "states.txt")]) == 2
    assert "format" in capsys.readouterr().err


def test_export_gates_of_a_bidirectional_layer(fmodel, fdata, tmp_path) -> None:  # type: ignore[no-untyped-def]
    h5py = pytest.importorskip("h5py")
    rnnlens.extract_to(
        tmp_path / "r.zarr", fmodel, fdata, layers="bilstm", fields=("h", "gates"), batch_size=8
    )
    mem = rnnlens.trace(fmodel, fdata, layers="bilstm", fields=("h", "gates"), batch_size=8)
    rnnlens.io.export(tmp_path / "r.zarr", tmp_path / "r.npz")
    with np.load(tmp_path / "r.npz") as z:
        np.testing.assert_array_equal(z["bilstm_backward_gates"], mem["bilstm"].backward.gates.array)
        assert list(z["bilstm_backward_gate_names"]) == ["i", "f", "g", "o"]
    rnnlens.io.export(tmp_path / "r.zarr", tmp_path / "r.hdf5")
    with h5py.File(tmp_path / "r.hdf5", "r") as f:
        np.testing.assert_array_equal(
            f["bilstm_forward_gates_f"][...], mem["bilstm"].forward.gates["f"].reshape(-1, 4)
        )


def test_bad_inputs_exit_2_with_one_line(files, tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    cut = tmp_path / "cut.npy"
    cut.write_bytes((files / "tokens.npy").read_bytes()[:-30])
    argv = ["extract", str(files / "model.keras"), str(cut), "-o", str(tmp_path / "o.zarr")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cut.npy" in err and "truncated" in err
    assert main(["extract", str(tmp_path / "none.keras"), str(cut), "-o", str(tmp_path / "o.zarr")]) == 2
    assert "No model file" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "nothing.zarr"), "-o", str(tmp_path / "x.npz")]) == 2
    assert "No state store" in capsys.readouterr().err


def test_help() -> None:
    for argv in (["extract", "--help"], ["export", "--help"]):
        result = subprocess.run([sys.executable, "-m", "rnnlens.cli", *argv], capture_output=True, text=True)
        assert result.returncode == 0 and "usage: rnnlens" in result.stdout
        assert "--out" in result.stdout
