"""trace() must leave the model exactly as it was."""

from __future__ import annotations

import json

import numpy as np
import pytest

import rnnlens
from keras_helpers import seed_model

keras = pytest.importorskip("keras")


def _snapshot(model):  # type: ignore[no-untyped-def]
    layers = []
    for layer in model.layers:
        layers.append(
            (
                layer.name,
                json.dumps(layer.get_config(), sort_keys=True, default=str),
                len(layer._inbound_nodes),
                len(layer._outbound_nodes),
                [w.numpy().tobytes() for w in layer.weights],
            )
        )
    return layers


def test_trace_leaves_model_bitwise_unchanged(tmp_path) -> None:  # type: ignore[no-untyped-def]
    model = seed_model()
    x = np.array([[1, 3, 2, 0, 0], [4, 5, 6, 7, 8]])
    before_pred = model.predict(x, verbose=0)
    before = _snapshot(model)
    model.save(tmp_path / "before.keras")

    rnnlens.trace(model, x)
    rnnlens.trace(model, x, layers="bilstm_2", fields=("h",))

    np.testing.assert_array_equal(model.predict(x, verbose=0), before_pred)
    assert _snapshot(model) == before
    model.save(tmp_path / "after.keras")
    reloaded = keras.saving.load_model(tmp_path / "after.keras")
    np.testing.assert_array_equal(reloaded.predict(x, verbose=0), before_pred)
    # return_sequences stays as the user built it (the Stack Overflow recipe flips it)
    assert model.get_layer("bilstm_3").return_sequences is False
    assert model.get_layer("bilstm_3").forward_layer.return_sequences is False


def test_stateful_layer_starts_from_its_state_and_is_not_advanced() -> None:
    inp = keras.Input(batch_shape=(2, 4, 3))
    lstm = keras.layers.LSTM(5, stateful=True, return_sequences=True, name="lstm")
    model = keras.Model(inp, lstm(inp))
    rng = np.random.default_rng(0)
    warm = rng.normal(size=(2, 4, 3)).astype("float32")
    x = rng.normal(size=(2, 4, 3)).astype("float32")
    model.predict(warm, verbose=0)  # advances the state
    state_before = [s.numpy().copy() for s in lstm.states]

    states = rnnlens.trace(model, x)

    for s, b in zip(lstm.states, state_before):
        np.testing.assert_array_equal(s.numpy(), b)
    # predict() continues from the same state: the trace saw exactly what the model computes next
    np.testing.assert_allclose(model.predict(x, verbose=0), states["lstm"].h, rtol=1e-6, atol=1e-7)
