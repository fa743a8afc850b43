"""The command-line examples of the documentation run, on a model file and data made here."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import numpy as np
import pytest

from keras_helpers import seed_model
from rnnlens.cli import main

keras = pytest.importorskip("keras")
pytest.importorskip("zarr")

README = Path(__file__).resolve().parents[2] / "docs" / "guide" / "cli.md"


def _commands() -> list[list[str]]:
    section = README.read_text()
    block = re.search(r"```bash\n(.*?)```", section, flags=re.S)
    assert block is not None
    out = []
    for line in block.group(1).splitlines():
        argv = shlex.split(line.split("#", 1)[0])
        if (
            argv
            and argv[0] == "rnnlens"
            and argv[1] in ("inspect", "extract", "export", "plot", "verify")  # view serves until stopped
            and "--unsafe" not in argv
        ):
            out.append(argv[1:])
    return out


def test_readme_cli_examples(tmp_path, monkeypatch, capsys) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.chdir(tmp_path)
    model = seed_model()
    model.get_layer("bilstm_2")  # the layer the README extracts
    model.save("model.keras")
    rng = np.random.default_rng(0)
    tokens = rng.integers(1, 10, size=(40, 7)).astype("int32")
    tokens[:, 5:] = 0
    np.save("data.npy", tokens)
    commands = _commands()
    assert [c[0] for c in commands] == ["inspect", "extract", "export", "plot", "verify"]
    for argv in commands:
        assert main(argv) == 0, (argv, capsys.readouterr().err)
    assert Path("run.zarr").is_dir() and Path("states.h5").is_file()
    assert Path("heat.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    import rnnlens

    stored = rnnlens.open_states("run.zarr")
    direct = rnnlens.trace(model, tokens, layers="bilstm_2", fields=("h", "c"), batch_size=256)
    np.testing.assert_array_equal(np.asarray(stored["bilstm_2"].forward.h[:]), direct["bilstm_2"].forward.h)
