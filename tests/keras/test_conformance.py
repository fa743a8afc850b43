"""The adapter conformance suite on Keras (run on every backend: the Makefile runs tests/keras
on TensorFlow, JAX and PyTorch). Weights are read from the layers here, independently of the
adapter's own conversion."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from rnnlens.testing import AdapterTests, Built

keras = pytest.importorskip("keras")
L = keras.layers

_LAYERS = {"lstm": L.LSTM, "gru": L.GRU, "simple": L.SimpleRNN}


def _reference_kwargs(layer: Any, kind: str, reverse: bool) -> dict[str, Any]:
    w = [np.asarray(v) for v in layer.get_weights()]
    out: dict[str, Any] = {"kernel": w[0], "recurrent_kernel": w[1], "reverse": reverse}
    if kind == "gru":  # reset_after: bias rows are (input, recurrent)
        out["bias"], out["recurrent_bias"] = w[2][0], w[2][1]
    else:
        out["bias"] = w[2]
    return out


class TestKerasAdapter(AdapterTests):
    adapter_name = "keras"

    def native(self, x: np.ndarray) -> Any:  # the backend's own tensor (tf, jax or torch)
        return keras.ops.convert_to_tensor(x) if x.dtype.kind in "biuf" else None

    def build(self, kind: str, *, bidirectional: bool, features: int, units: int, seed: int) -> Built:
        keras.utils.set_random_seed(seed)
        rnn = _LAYERS[kind](units, return_sequences=True, name="core")
        layer = L.Bidirectional(rnn, name="core") if bidirectional else rnn
        model = keras.Sequential([keras.Input((None, features)), layer])
        if bidirectional:
            ref = {
                "forward": _reference_kwargs(layer.forward_layer, kind, False),
                "backward": _reference_kwargs(layer.backward_layer, kind, True),
            }
        else:
            ref = {"forward": _reference_kwargs(rnn, kind, False)}
        return Built(model, "core", ref)

    def own_last(self, model: Any, layer: str, x: np.ndarray) -> np.ndarray:
        out = np.asarray(model.predict(x, verbose=0))
        if out.shape[-1] == self.units:  # forward only: the last step
            return out[:, -1]
        u = self.units  # bidirectional concat: forward's last step, backward's first
        return np.concatenate([out[:, -1, :u], out[:, 0, u:]], axis=-1)

    def masked(
        self, model: Any, x: np.ndarray, lengths: np.ndarray
    ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        mask = np.arange(x.shape[1])[None, :] < lengths[:, None]
        return (x,), {"mask": mask}

    def store_model(self, model: Any, tmp: Path) -> Any:
        path = tmp / "model.keras"
        model.save(path)
        return str(path)
