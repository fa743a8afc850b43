"""Every public name stays importable from where the documentation shows it."""

from __future__ import annotations

import importlib

import pytest

import rnnlens

PUBLIC = {
    "rnnlens": rnnlens.__all__,
    "rnnlens.errors": [
        "RnnLensError",
        "RnnLensWarning",
        "InputError",
        "OptionError",
        "OptionTypeError",
        "LayerNotFoundError",
        "FieldNotAvailableError",
        "DirectionNotAvailableError",
        "ParityError",
        "UnsupportedLayerError",
        "UnsupportedModelError",
        "ModelFileError",
        "MissingDependencyError",
        "StoreError",
        "StoreExistsError",
        "StoreMismatchError",
        "DataFileError",
        "SchedulerError",
    ],
    "rnnlens.adapters": [
        "Adapter",
        "Captured",
        "Inputs",
        "TraceOptions",
        "for_file",
        "for_model",
        "model_digest",
        "register",
        "registered",
    ],
    "rnnlens.distributed": ["connect"],
    "rnnlens.testing": ["AdapterTests"],
    "rnnlens.io.zarr": ["open_states"],
    "rnnlens.cli": ["main", "build_parser"],
    "rnnlens.viz": ["html_report"],
    "rnnlens.viewer": ["serve"],
}


@pytest.mark.parametrize("module", sorted(PUBLIC))
def test_public_names_import(module: str) -> None:
    mod = importlib.import_module(module)
    missing = [name for name in PUBLIC[module] if not hasattr(mod, name)]
    assert not missing, f"{module} lacks {missing}"


def test_the_version_has_one_source() -> None:
    from rnnlens.core.version import __version__

    assert rnnlens.__version__ == __version__


def test_gates_looked_up_by_position_say_how_to_index_them() -> None:
    import numpy as np

    from rnnlens.core.states import Gates
    from rnnlens.errors import InputError

    gates = Gates([np.zeros((1, 2, 3)), np.ones((1, 2, 3))], ("r", "z"))
    assert gates["z"].sum() == 6 and gates.array.shape == (1, 2, 2, 3)
    with pytest.raises(InputError, match=r"by name, one of \['r', 'z'\].*gates.array"):
        gates[0]  # type: ignore[index]
