"""Full-model .h5 files of Keras 2.0-2.2 (2017-2018): the stored configs of those versions
(a Sequential config as a bare list of layers; the first layer's ``batch_input_shape``; GRU
without ``reset_after``; ``implementation=0``; initializers as ``VarianceScaling``), written here
with the weights of a tf_keras model of the same architecture (the weight groups' layout has not
changed since Keras 2.0).

Oracle: that tf_keras model, which computes Keras 2's equations (GRU ``reset_after=False``,
Keras 2's ``hard_sigmoid``); tf_keras' own loader cannot read these files (it takes a GRU without
``reset_after`` for its own default, True). Tolerance: ``atol=1e-6`` (float32, another kernel)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import rnnlens

keras = pytest.importorskip("keras")
h5py = pytest.importorskip("h5py")
tf_keras = pytest.importorskip("tf_keras")

GLOROT = {
    "class_name": "VarianceScaling",
    "config": {"scale": 1.0, "mode": "fan_avg", "distribution": "uniform", "seed": None},
}
ORTHO = {"class_name": "Orthogonal", "config": {"gain": 1.0, "seed": None}}
ZEROS = {"class_name": "Zeros", "config": {}}


def _rnn(cls: str, name: str, units: int, **extra):  # type: ignore[no-untyped-def]
    """A recurrent layer's config as Keras 2.0-2.2 stored it."""
    config = {
        "name": name, "trainable": True, "return_sequences": False, "return_state": False,
        "go_backwards": False, "stateful": False, "unroll": False, "units": units,
        "activation": "tanh", "recurrent_activation": "hard_sigmoid", "use_bias": True,
        "kernel_initializer": GLOROT, "recurrent_initializer": ORTHO, "bias_initializer": ZEROS,
        "kernel_regularizer": None, "recurrent_regularizer": None, "bias_regularizer": None,
        "activity_regularizer": None, "kernel_constraint": None, "recurrent_constraint": None,
        "bias_constraint": None, "dropout": 0.0, "recurrent_dropout": 0.0, "implementation": 1,
    }  # fmt: skip
    if cls == "LSTM":
        config["unit_forget_bias"] = True
    config.update(extra)
    return {"class_name": cls, "config": config}


def _dense(name: str, units: int):  # type: ignore[no-untyped-def]
    return {
        "class_name": "Dense",
        "config": {
            "name": name, "trainable": True, "units": units, "activation": "linear", "use_bias": True,
            "kernel_initializer": GLOROT, "bias_initializer": ZEROS, "kernel_regularizer": None,
            "bias_regularizer": None, "activity_regularizer": None, "kernel_constraint": None,
            "bias_constraint": None,
        },
    }  # fmt: skip


def _write(path: Path, twin, config: dict, version: str) -> Path:  # type: ignore[no-untyped-def]
    """``twin``'s weights under the old ``config`` (its layers carry the same names)."""
    twin.save(path)
    with h5py.File(path, "r+") as f:
        f.attrs["model_config"] = json.dumps(config)
        f.attrs["keras_version"] = version
        f["model_weights"].attrs["keras_version"] = version
    return path


def _randomize(model, seed: int) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(seed)
    model.set_weights([rng.normal(scale=0.6, size=w.shape).astype("float32") for w in model.get_weights()])


X = np.random.default_rng(3).normal(size=(3, 6, 3)).astype("float32")


@pytest.mark.filterwarnings("ignore:.*hard_sigmoid")
@pytest.mark.parametrize("version", ["2.0.8", "2.1.6"])
def test_list_form_sequential_with_old_gru_and_lstm(tmp_path: Path, version: str) -> None:
    K = tf_keras.layers
    twin = tf_keras.Sequential(
        [
            K.LSTM(
                4,
                recurrent_activation="hard_sigmoid",
                return_sequences=True,
                input_shape=(6, 3),
                name="lstm_1",
            ),
            K.GRU(
                3, recurrent_activation="hard_sigmoid", reset_after=False, return_sequences=True, name="gru_1"
            ),
            K.Dense(1, name="dense_1"),
        ]
    )
    _randomize(twin, 0)
    lstm = _rnn("LSTM", "lstm_1", 4, return_sequences=True, batch_input_shape=[None, 6, 3], dtype="float32")
    if version.startswith("2.0"):
        lstm["config"]["implementation"] = 0
    config = {
        "class_name": "Sequential",
        "config": [lstm, _rnn("GRU", "gru_1", 3, return_sequences=True), _dense("dense_1", 1)],
    }
    path = _write(tmp_path / "old.h5", twin, config, version)
    model = rnnlens.load_model(path)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(model(X)), twin(X).numpy(), rtol=0, atol=1e-6)
    states = rnnlens.trace(model, X)
    for name in ("lstm_1", "gru_1"):
        own = tf_keras.Model(twin.inputs, twin.get_layer(name).output)(X).numpy()
        np.testing.assert_allclose(states[name].h, own, rtol=0, atol=1e-6)


@pytest.mark.filterwarnings("ignore:.*hard_sigmoid")
def test_keras22_sequential_with_batch_input_shape_and_bidirectional(tmp_path: Path) -> None:
    K = tf_keras.layers
    twin = tf_keras.Sequential(
        [
            K.Bidirectional(
                K.LSTM(3, recurrent_activation="hard_sigmoid", return_sequences=True),
                input_shape=(6, 3),
                name="bidirectional_1",
            ),
            K.GRU(2, recurrent_activation="hard_sigmoid", reset_after=False, name="gru_1"),
        ]
    )  # fmt: skip
    _randomize(twin, 1)
    bi = {
        "class_name": "Bidirectional",
        "config": {
            "name": "bidirectional_1", "trainable": True, "batch_input_shape": [None, 6, 3],
            "dtype": "float32",
            "layer": _rnn("LSTM", "lstm_1", 3, return_sequences=True), "merge_mode": "concat",
        },
    }  # fmt: skip
    config = {
        "class_name": "Sequential",
        "config": {"name": "sequential_1", "layers": [bi, _rnn("GRU", "gru_1", 2)]},
    }
    model = rnnlens.load_model(_write(tmp_path / "k22.h5", twin, config, "2.2.4"))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(model(X)), twin(X).numpy(), rtol=0, atol=1e-6)
    states = rnnlens.trace(model, X)
    own = tf_keras.Model(twin.inputs, twin.get_layer("bidirectional_1").output)(X).numpy()
    got = np.concatenate([states["bidirectional_1"].forward.h, states["bidirectional_1"].backward.h], axis=-1)
    np.testing.assert_allclose(got, own, rtol=0, atol=1e-6)
