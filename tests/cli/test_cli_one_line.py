"""Every CLI path ends in one line on stderr and a non-zero status, never a traceback: the
reproducers of bad input, bad options and damaged files, each run as a user would."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import rnnlens
from rnnlens.cli import main

keras = pytest.importorskip("keras")
pytest.importorskip("zarr")


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("cli")
    model = keras.Sequential(
        [keras.Input((None, 3)), keras.layers.LSTM(4, return_sequences=True, name="lstm")]
    )
    model.save(tmp / "m.keras")
    x = np.random.default_rng(0).normal(size=(10, 5, 3)).astype("float32")
    np.save(tmp / "x.npy", x)
    np.save(tmp / "empty_time.npy", np.zeros((4, 0, 3), "float32"))
    rnnlens.extract_to(tmp / "run.zarr", model, x, batch_size=4)
    (tmp / "afile").write_text("not a directory")
    (tmp / "tokens_dir").mkdir()
    (tmp / "zip.pt").write_bytes(b"PK\x05\x06" + b"\x00" * 18)  # an empty zip: no 'version' record
    return {
        "model": tmp / "m.keras",
        "x": tmp / "x.npy",
        "empty_time": tmp / "empty_time.npy",
        "store": tmp / "run.zarr",
        "tmp": tmp,
    }


def _one_line(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    code = main(argv)
    err = capsys.readouterr().err
    assert code != 0, argv
    assert "Traceback" not in err and err.strip().count("\n") == 0, err
    assert err.startswith("rnnlens ") and "unexpected error" not in err, err
    return err


def test_bad_extract_inputs(
    files: dict[str, Path], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    m, x = str(files["model"]), str(files["x"])
    out = str(tmp_path / "o.zarr")
    assert "time" in _one_line(["extract", m, str(files["empty_time"]), "-o", out], capsys)
    assert "directory" in _one_line(["extract", m, x, "-o", str(files["tmp"] / "afile" / "sub.zarr")], capsys)
    _one_line(["inspect", str(files["tmp"] / "zip.pt")], capsys)
    _one_line(["extract", m, x, "-o", out, "--max-time", "1000000000"], capsys)
    _one_line(["extract", m, x, "-o", out, "--batch-size", "0"], capsys)


def test_huge_batch_size_is_sized_by_the_data(files: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "big.zarr"
    assert (
        main(["extract", str(files["model"]), str(files["x"]), "-o", str(out), "--batch-size", "1000000000"])
        == 0
    )
    assert rnnlens.open_states(out)["lstm"].forward.h.shape == (10, 5, 4)


def test_bad_plot_and_view_options(
    files: dict[str, Path], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    s = str(files["store"])
    _one_line(["plot", s, "--layer", "lstm", "--units", "99", "-o", str(tmp_path / "p.png")], capsys)
    _one_line(["plot", s, "--layer", "lstm", "-o", str(tmp_path / "p.xyz")], capsys)
    _one_line(["view", s, "--port", "99999"], capsys)
    _one_line(["view", s, "--tokens", str(files["tmp"] / "tokens_dir")], capsys)


def test_damaged_store_metadata(
    files: dict[str, Path], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    import shutil

    damaged = tmp_path / "d.zarr"
    shutil.copytree(files["store"], damaged)
    meta = damaged / "layers" / "lstm" / "forward" / "h" / "zarr.json"
    meta.write_text(meta.read_text()[:40])  # truncated JSON
    _one_line(["export", str(damaged), "-o", str(tmp_path / "o.npz")], capsys)
    huge = tmp_path / "huge.zarr"
    shutil.copytree(files["store"], huge)
    meta = huge / "mask" / "zarr.json"
    doc = json.loads(meta.read_text())
    doc["shape"] = [10**12, doc["shape"][1]]
    meta.write_text(json.dumps(doc))
    _one_line(["export", str(huge), "-o", str(tmp_path / "o2.npz")], capsys)
