"""What a missing optional library says, in Python and on the command line (simulated here by
blocking the import; .ci/core-only checks the same in a venv that lacks them)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import tomllib

import rnnlens
from rnnlens import cli
from rnnlens.cli import command
from rnnlens.core.optional import OPTIONAL, install_hint, require
from rnnlens.errors import MissingDependencyError


def test_every_extra_named_exists() -> None:
    extras = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    assert {extra for extra, _ in OPTIONAL.values() if extra} <= set(extras)


def test_pyproject_pins_nothing() -> None:
    project = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]
    specs = project["dependencies"] + [s for v in project["optional-dependencies"].values() for s in v]
    assert not [s for s in specs if "==" in s], specs
    assert not [s for s in specs if s.startswith("tensorflow")], specs


@pytest.mark.parametrize(
    ("module", "hint"),
    [
        ("keras", "pip install 'rnnlens[keras]' tensorflow (or jax, or torch, as the Keras backend)"),
        ("sklearn.linear_model", "pip install 'rnnlens[probe]'"),
        ("xarray", "pip install 'rnnlens[zarr]'"),
        ("tensorflow", "pip install tensorflow"),
    ],
)
def test_install_hint(module: str, hint: str) -> None:
    assert install_hint(module) == hint


def test_torch_hint_points_to_gpu_builds() -> None:
    assert install_hint("torch").startswith("pip install 'rnnlens[torch]' (for a GPU build")


def test_require_names_purpose_and_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "sklearn", None)
    with pytest.raises(MissingDependencyError, match=r"Probes needs .*'sklearn'.*rnnlens\[probe\]"):
        require("sklearn", purpose="Probes")


def test_load_model_without_keras(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    path = tmp_path / "m.keras"
    path.write_bytes(b"PK\x05\x06" + b"\0" * 18)
    monkeypatch.setitem(sys.modules, "keras", None)
    with pytest.raises(MissingDependencyError, match=r"rnnlens\[keras\]' tensorflow"):
        rnnlens.load_model(path)


def test_cli_inspect_without_keras(monkeypatch: pytest.MonkeyPatch, capsys, tmp_path) -> None:
    path = tmp_path / "m.keras"
    path.write_bytes(b"PK\x05\x06" + b"\0" * 18)
    monkeypatch.setitem(sys.modules, "keras", None)
    assert cli.main(["inspect", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pip install 'rnnlens[keras]' tensorflow" in err[0], err
    assert "unexpected" not in err[0]


def test_cli_unguarded_import_of_an_optional_library(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    """An import no require() guards still ends in one line naming the install, exit 2."""

    def needs_zarr(args: object) -> int:
        import zarr  # noqa: F401

        return 0

    parser = cli.build_parser()
    args = parser.parse_args(["inspect", "x.keras"])
    args.func = needs_zarr
    monkeypatch.setitem(sys.modules, "zarr", None)
    assert command._dispatch(args) == 2
    err = capsys.readouterr().err
    assert "pip install 'rnnlens[zarr]'" in err and len(err.strip().splitlines()) == 1


def test_plots_without_matplotlib(monkeypatch: pytest.MonkeyPatch) -> None:
    from rnnlens.viz import plots

    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(MissingDependencyError, match=r"rnnlens\[viz\]"):
        plots.heatmap(np.zeros((3, 2)))
