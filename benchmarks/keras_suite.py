"""Keras (TensorFlow backend, CPU) cases: the floor, rnnlens, and what users do today."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from collections.abc import Callable
from typing import Any

import numpy as np

from .harness import Case

BATCH, TIME, FEATURES, UNITS = 512, 100, 32, 128


def _quiet_tensorflow() -> None:
    """The scaling sweep builds many models of other shapes: TF's retracing advice is expected."""
    import tensorflow as tf

    tf.get_logger().setLevel("ERROR")


def stacked_lstm(units: int = UNITS, layers: int = 3, time: int = TIME, features: int = FEATURES) -> Any:
    import keras

    _quiet_tensorflow()
    keras.utils.set_random_seed(0)
    inp = keras.Input((time, features))
    h = inp
    for i in range(layers):
        h = keras.layers.LSTM(units, return_sequences=i < layers - 1, name=f"lstm_{i}")(h)
    return keras.Model(inp, keras.layers.Dense(1, name="head")(h), name="stacked_lstm")


def bigru_masked(units: int = UNITS, time: int = TIME, features: int = FEATURES) -> Any:
    import keras

    keras.utils.set_random_seed(0)
    inp = keras.Input((time, features))
    h = keras.layers.Masking(0.0)(inp)
    h = keras.layers.Bidirectional(keras.layers.GRU(units, return_sequences=True), name="bigru")(h)
    return keras.Model(inp, keras.layers.Dense(1, name="head")(h), name="bigru_masked")


def seed_bilstm() -> Any:
    import keras

    keras.utils.set_random_seed(0)
    inp = keras.Input(shape=(None,), dtype="int32")
    e = keras.layers.Embedding(10, 100, mask_zero=True)(inp)
    b1 = keras.layers.Bidirectional(keras.layers.LSTM(10, return_sequences=True), name="bilstm_1")(e)
    b2 = keras.layers.Bidirectional(keras.layers.LSTM(10, return_sequences=True), name="bilstm_2")(b1)
    b3 = keras.layers.Bidirectional(keras.layers.LSTM(2), name="bilstm_3")(b2)
    return keras.Model(inp, keras.layers.Dense(1, activation="sigmoid")(b3), name="seed_bilstm")


def data(batch: int = BATCH, time: int = TIME, features: int = FEATURES, *, pad: bool = False) -> np.ndarray:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(batch, time, features)).astype("float32")
    if pad:  # right padding, random lengths: the mask is real work
        lengths = rng.integers(time // 2, time + 1, size=batch)
        x[np.arange(time)[None, :] >= lengths[:, None]] = 0.0
    return x


def floor_cases(model: Any, x: np.ndarray) -> list[Case]:
    import tensorflow as tf

    call = tf.function(lambda a: model(a, training=False))
    # The true floor is the compiled forward; predict() adds its own per-call overhead.
    return [
        Case("compiled model call (floor)", lambda: call(x).numpy(), "tf.function(model(x, training=False))"),
        Case("model.predict", lambda: model.predict(x, batch_size=len(x), verbose=0)),
    ]


def rnnlens_cases(model: Any, x: Any) -> list[Case]:
    import rnnlens

    return [
        Case("rnnlens h", lambda: rnnlens.trace(model, x, fields=("h",))),
        Case("rnnlens h,c", lambda: rnnlens.trace(model, x, fields=("h", "c"))),
        Case("rnnlens h,c,gates (auto)", lambda: rnnlens.trace(model, x)),
        Case("rnnlens h,c,gates emit", lambda: rnnlens.trace(model, x, strategy="emit")),
        Case("rnnlens h,c,gates reconstruct", lambda: rnnlens.trace(model, x, strategy="reconstruct")),
    ]


# ---------------------------------------------------------------- what users do today


def so_recipe(model: Any, x: np.ndarray) -> Callable[[], Any]:
    """Stack Overflow 46511179 on a fresh copy (it mutates the model it is given): flip
    return_sequences on every recurrent layer, re-call the layers on a new Input, predict.
    Gives h only. Linear stacks only, which the benchmark models are."""
    import keras

    def run() -> Any:
        copy = keras.models.clone_model(model)
        copy.set_weights(model.get_weights())
        inp = keras.Input(batch_shape=model.inputs[0].shape)
        h, outs = inp, []
        for layer in copy.layers[1:]:
            if isinstance(layer, (keras.layers.RNN, keras.layers.Bidirectional)):
                layer.return_sequences = True
                if isinstance(layer, keras.layers.Bidirectional):
                    layer.forward_layer.return_sequences = layer.backward_layer.return_sequences = True
                h = layer(h)
                outs.append(h)
            elif not outs or isinstance(layer, keras.layers.Masking):
                h = layer(h)
        return keras.Model(inp, outs).predict(x, batch_size=len(x), verbose=0)

    return run


def step_loop(model: Any, x: np.ndarray) -> Callable[[], Any]:
    """One time step at a time through return_state=True layers (sharing the trained
    weights), carrying h and c by hand: gives h and c, no gates."""
    import tensorflow as tf

    import keras

    lstms = [layer for layer in model.layers if isinstance(layer, keras.layers.LSTM)]
    steps = []
    for layer in lstms:
        s = keras.layers.LSTM(layer.units, return_state=True)
        s.build((None, 1, layer.input.shape[-1]))
        s.set_weights(layer.get_weights())
        steps.append(s)

    @tf.function
    def one_step(xt: Any, states: Any) -> Any:
        new, h = [], xt
        for s, (h0, c0) in zip(steps, states):
            _, hh, cc = s(h[:, None, :], initial_state=[h0, c0])
            new.append((hh, cc))
            h = hh
        return new

    def run() -> Any:
        states = [(tf.zeros((len(x), s.units)), tf.zeros((len(x), s.units))) for s in steps]
        hs = []
        for t in range(x.shape[1]):
            states = one_step(x[:, t], states)
            hs.append([h.numpy() for h, _ in states])
        return hs

    return run


def cell_loop(model: Any, x: np.ndarray) -> Callable[[], Any]:
    """An eager Python loop over keras.layers.LSTMCell copies: h and c, no gates."""
    import keras

    cells = []
    for layer in model.layers:
        if isinstance(layer, keras.layers.LSTM):
            cell = keras.layers.LSTMCell(layer.units)
            cell.build((None, layer.input.shape[-1]))
            cell.set_weights(layer.cell.get_weights())
            cells.append(cell)

    def run() -> Any:
        states = [[np.zeros((len(x), c.units), "float32")] * 2 for c in cells]
        for t in range(x.shape[1]):
            h = x[:, t]
            for k, cell in enumerate(cells):
                h, states[k] = cell(h, states[k])
        return states

    return run


def keract_case(model: Any, x: np.ndarray) -> Case | str:
    """keract's get_activations, or why it does not run."""
    try:
        import keract  # type: ignore[import-not-found]
    except ImportError as e:
        return f"keract not installed ({e})"
    try:
        keract.get_activations(model, x[:2])
    except Exception as e:  # report, don't crash the benchmark
        return f"keract.get_activations fails on Keras 3: {type(e).__name__}: {str(e).splitlines()[0][:120]}"
    return Case("keract get_activations", lambda: keract.get_activations(model, x), "layer outputs only")


def main_cases(quick: bool = False) -> tuple[list[Case], list[str]]:
    model = stacked_lstm()
    x = data()
    cases = floor_cases(model, x) + rnnlens_cases(model, x)
    notes: list[str] = []
    cases.append(Case("SO 46511179 recipe (fresh copy)", so_recipe(model, x), "h only; clones the model"))
    cases.append(Case("step loop, return_state=True", step_loop(model, x), "h, c; no gates"))
    if not quick:
        cases.append(Case("eager LSTMCell loop", cell_loop(model, x), "h, c; no gates"))
    k = keract_case(model, x)
    if isinstance(k, str):
        notes.append(k)
    else:
        cases.append(k)
    return cases, notes


def bigru_cases() -> list[Case]:
    model = bigru_masked()
    x = data(pad=True)
    return floor_cases(model, x)[:1] + rnnlens_cases(model, x)[:1] + [rnnlens_cases(model, x)[2]]


def seed_cases() -> list[Case]:
    model = seed_bilstm()
    rng = np.random.default_rng(0)
    x = rng.integers(1, 10, size=(512, 20)).astype("int32")
    x[:, 15:] = 0
    return floor_cases(model, x)[:1] + [rnnlens_cases(model, x)[0], rnnlens_cases(model, x)[2]]


SUITES: dict[str, Callable[[], list[Case]]] = {
    "keras-main": lambda: main_cases()[0],
    "keras-bigru": bigru_cases,
    "keras-seed": seed_cases,
}
