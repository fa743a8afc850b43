"""Files that run code when opened are refused unless the caller says unsafe.

The payload is a real TorchScript archive: a submodule's compiled ``__setstate__`` creates a
marker file (``torch.from_file(..., shared=True)`` maps and so creates it) when
``torch.jit.load`` opens the archive. Each refusal is checked against the marker, and the same
file is shown to fire with ``unsafe=True`` / ``--unsafe``, so the test cannot pass vacuously.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import rnnlens
from rnnlens.cli import main
from rnnlens.errors import ModelFileError

torch = pytest.importorskip("torch")


class _Payload(torch.nn.Module):
    def __init__(self, marker: str) -> None:
        super().__init__()
        self.marker = marker

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    @torch.jit.export
    def __getstate__(self) -> tuple[str, bool]:
        return (self.marker, self.training)

    @torch.jit.export
    def __setstate__(self, state: tuple[str, bool]) -> None:
        self.marker = state[0]
        self.training = state[1]
        t = torch.from_file(state[0], shared=True, size=4, dtype=torch.uint8)  # creates the file
        t.fill_(65)
        print("payload ran", t.sum())  # used, so the JIT keeps the side effect


class _Hostile(torch.nn.Module):
    def __init__(self, marker: str) -> None:
        super().__init__()
        self.payload = _Payload(marker)
        self.rnn = torch.nn.GRU(3, 4, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rnn(self.payload(x))[0]


@pytest.fixture
def hostile(tmp_path: Path) -> tuple[Path, Path]:
    marker = tmp_path / "pwned"
    path = tmp_path / "hostile.pt"
    torch.jit.script(_Hostile(str(marker))).save(str(path))
    assert not marker.exists()
    return path, marker


@pytest.mark.filterwarnings("ignore:`torch.jit.*is deprecated:DeprecationWarning")
def test_torchscript_refused_without_unsafe(hostile: tuple[Path, Path]) -> None:
    path, marker = hostile
    with pytest.raises(ModelFileError, match=r"TorchScript.*unsafe=True"):
        rnnlens.load_model(path)
    with pytest.raises(ModelFileError, match="unsafe=True"):
        rnnlens.load_model(path, module=_Hostile("unused"))
    assert not marker.exists()
    # the same file does run its code once the caller says it is trusted
    rnnlens.load_model(path, unsafe=True)
    assert marker.read_bytes() == b"AAAA"


@pytest.mark.filterwarnings("ignore:`torch.jit.*is deprecated:DeprecationWarning")
def test_cli_refuses_torchscript_without_unsafe(
    hostile: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path, marker = hostile
    data = tmp_path / "x.npy"
    np.save(data, np.zeros((2, 3, 3), "float32"))
    assert main(["inspect", str(path)]) == 2
    err = capsys.readouterr().err
    assert "--unsafe" in err and "Traceback" not in err
    assert main(["extract", str(path), str(data), "-o", str(tmp_path / "o.zarr")]) == 2
    assert "--unsafe" in capsys.readouterr().err
    assert not marker.exists() and not (tmp_path / "o.zarr").exists()
    assert main(["inspect", str(path), "--unsafe"]) == 0
    assert marker.exists()
