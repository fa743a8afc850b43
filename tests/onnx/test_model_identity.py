"""A model's identity for resume is its weights *and* its architecture: two models with the same
weights that compute different things (other activations) are never mixed in one store."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import rnnlens
from rnnlens.adapters import model_digest


def test_onnx_graphs_with_the_same_weights_and_other_activations_differ() -> None:
    pytest.importorskip("onnx")
    from onnx_helpers import recurrent_model

    rng = np.random.default_rng(0)
    w = {"W": rng.normal(size=(1, 4, 3)), "R": rng.normal(size=(1, 4, 4))}
    tanh = recurrent_model("RNN", hidden=4, features=3, weights=w)
    relu = recurrent_model("RNN", hidden=4, features=3, weights=w, activations=["Relu"])
    assert model_digest(tanh) == model_digest(recurrent_model("RNN", hidden=4, features=3, weights=w))
    assert model_digest(tanh) != model_digest(relu)


def test_resume_refuses_a_torch_module_with_the_same_weights_and_another_nonlinearity(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    pytest.importorskip("zarr")
    tanh = torch.nn.RNN(3, 4, batch_first=True)
    relu = torch.nn.RNN(3, 4, batch_first=True, nonlinearity="relu")
    relu.load_state_dict(tanh.state_dict())
    x = np.random.default_rng(1).normal(size=(6, 5, 3)).astype(np.float32)
    path = tmp_path / "run.zarr"
    rnnlens.extract_to(path, tanh, x, batch_size=4)
    with pytest.raises(rnnlens.io.errors.StoreMismatchError, match="weights and architecture"):
        rnnlens.extract_to(path, relu, x, batch_size=4)
    assert rnnlens.extract_to(path, tanh, x, batch_size=4).completed_samples == 6


def test_a_keras_graph_rebuilt_in_one_process_keeps_its_identity() -> None:
    """Keras names raw ops by what the process built before (``add``, then ``add_1``)."""
    keras = pytest.importorskip("keras")

    def build():  # type: ignore[no-untyped-def]
        keras.utils.set_random_seed(0)
        a, b = keras.Input((None, 3)), keras.Input((None, 3))
        return keras.Model([a, b], keras.layers.GRU(3)(a + b))

    assert model_digest(build()) == model_digest(build())
