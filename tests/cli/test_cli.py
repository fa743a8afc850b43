"""The rnnlens command, run as a user would (in-process through main(), and once as a subprocess)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from rnnlens.cli import main

keras = pytest.importorskip("keras")


@pytest.fixture
def lstm_file(tmp_path):  # type: ignore[no-untyped-def]
    inp = keras.Input((4, 3))
    h = keras.layers.Bidirectional(keras.layers.GRU(5, return_sequences=True), name="bigru")(inp)
    model = keras.Model(inp, keras.layers.LSTM(2, name="lstm")(h))
    path = tmp_path / "model.keras"
    model.save(path)
    return path


def test_inspect_lists_layers(lstm_file, capsys) -> None:  # type: ignore[no-untyped-def]
    assert main(["inspect", str(lstm_file)]) == 0
    out = capsys.readouterr().out
    assert "2 recurrent layer(s)" in out
    assert "bigru" in out and "forward+backward" in out and "h,gates" in out
    assert "lstm" in out and "h,c,gates" in out


def test_inspect_refuses_code_unless_unsafe(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    inp = keras.Input((4, 3))
    h = keras.layers.Lambda(lambda t: t * 2)(inp)
    keras.Model(inp, keras.layers.LSTM(2)(h)).save(tmp_path / "lam.keras")
    assert main(["inspect", str(tmp_path / "lam.keras")]) == 2
    assert "--unsafe" in capsys.readouterr().err
    assert main(["inspect", str(tmp_path / "lam.keras"), "--unsafe"]) == 0


def test_inspect_corrupt_truncated_and_missing(lstm_file, tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    truncated = tmp_path / "cut.keras"
    truncated.write_bytes(lstm_file.read_bytes()[:200])
    garbage = tmp_path / "junk.h5"
    garbage.write_bytes(np.random.default_rng(0).bytes(1000))
    for path in (truncated, garbage):
        assert main(["inspect", str(path)]) == 2
        err = capsys.readouterr().err
        assert "Could not load" in err and "Traceback" not in err
    assert main(["inspect", str(tmp_path / "none.keras")]) == 2
    assert "No model file" in capsys.readouterr().err
    assert main(["inspect", str(tmp_path / "model.txt")]) == 2


def test_help_everywhere() -> None:
    for argv in (["--help"], ["inspect", "--help"], ["demo", "--help"]):
        result = subprocess.run([sys.executable, "-m", "rnnlens.cli", *argv], capture_output=True, text=True)
        assert result.returncode == 0 and "usage: rnnlens" in result.stdout


def test_demo_finds_depth_units_far_above_a_random_unit(capsys, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from rnnlens.cli.demo import run_demo

    result = run_demo(epochs=4, verbose=False, report=tmp_path / "r.html")
    page = (tmp_path / "r.html").read_text(encoding="utf-8")
    # the report holds what the terminal prints: the probe and the ablation, with their numbers
    intact, ablated, _ = result.closing
    for text in (
        "logistic probe for depth on c",
        "selectivity",
        "Ablating them",
        f"{intact:.3f}",
        f"{ablated:.3f}",
    ):
        assert text in page
    best = abs(result.top_units[0][2])
    # Measured on 2 CPU cores: best |r| 0.876 vs a random unit's median |r| 0.331 (4 epochs).
    assert best > 0.7
    assert best > 2 * result.random_baseline
    # The decomposition of the depth units' c at closing brackets, in the report and measured:
    # the best unit's largest write comes from the bracket being closed far more often than from
    # an earlier opening bracket picked at random (measured, 4 epochs: 58 % against 23 %; 61 % of
    # |c| written at opening brackets, which are 25 % of the steps).
    assert "rnnlens.decompose" in page and result.sources
    first = result.sources[0]
    assert first.closers > 1000 and first.from_matching > 1.5 * first.matching_chance
    assert first.opening_share > first.opening_steps


def test_python_dash_m_rnnlens() -> None:
    result = subprocess.run([sys.executable, "-m", "rnnlens", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "usage: rnnlens" in result.stdout
