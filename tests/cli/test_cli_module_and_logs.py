"""The CLI opens PyTorch state dicts with --module pkg.module:Class and keeps framework logs quiet."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from rnnlens.cli import main

torch = pytest.importorskip("torch")

MODULE = """
import torch

class Net(torch.nn.Module):
    def __init__(self, hidden=4):
        super().__init__()
        self.rnn = torch.nn.GRU(3, hidden, batch_first=True)

    def forward(self, x):
        return self.rnn(x)[0]
"""


def _setup(tmp_path: Path, monkeypatch: Any) -> Path:
    (tmp_path / "mynet.py").write_text(MODULE)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    import importlib

    net = importlib.import_module("mynet").Net(hidden=5)
    torch.save(net.state_dict(), tmp_path / "net.pt")
    return tmp_path / "net.pt"


def test_inspect_and_ablate_open_a_state_dict_with_module(
    tmp_path: Path, monkeypatch: Any, capsys: Any
) -> None:
    path = _setup(tmp_path, monkeypatch)
    assert main(["inspect", str(path), "--module", "mynet:Net", "--module-kwargs", '{"hidden": 5}']) == 0
    assert "rnn" in capsys.readouterr().out
    np.save(tmp_path / "x.npy", np.zeros((2, 4, 3), "float32"))
    out = tmp_path / "o.npz"
    args = ["ablate", str(path), str(tmp_path / "x.npy"), "--layer", "rnn", "--module", "mynet:Net"]
    assert main([*args, "--module-kwargs", '{"hidden": 5}', "-o", str(out)]) == 0
    assert np.load(out)["ablated"].shape == (2, 4, 5)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--module", "mynet"], "pkg.module:Class"),
        (["--module", "nosuch:Net"], "cannot import"),
        (["--module", "mynet:Nope"], "has no 'Nope'"),
        (["--module", "mynet:Net", "--module-kwargs", "{bad"], "not valid JSON"),
        (["--module", "mynet:Net", "--module-kwargs", '{"size": 3}'], "failed"),
        (["--module", "mynet:Net"], "size mismatch|state dict|does not fit|Error"),  # hidden 4 != 5
    ],
)
def test_module_errors_are_one_line(
    tmp_path: Path, monkeypatch: Any, capsys: Any, extra: list[str], message: str
) -> None:
    path = _setup(tmp_path, monkeypatch)
    assert main(["inspect", str(path), *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    import re

    assert re.search(message, err), err


@pytest.mark.slow
def test_tensorflow_logs_are_quiet_unless_verbose(tmp_path: Path) -> None:
    pytest.importorskip("keras")
    code = (
        "import keras; m = keras.Sequential([keras.Input((None, 2)), keras.layers.LSTM(3)]);"
        f"m.save({str(tmp_path / 'm.keras')!r})"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
    quiet = subprocess.run(
        [sys.executable, "-m", "rnnlens", "inspect", str(tmp_path / "m.keras")],
        capture_output=True,
        text=True,
    )
    assert quiet.returncode == 0 and "lstm" in quiet.stdout
    assert "oneDNN" not in quiet.stderr and "I0000" not in quiet.stderr, quiet.stderr
