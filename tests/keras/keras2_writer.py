"""Writes real Keras 2 (tf_keras) full-model .h5 files for the legacy-file tests.

Run as a script in its own process (``python keras2_writer.py OUTDIR``): tf_keras is Keras 2 and
the tests load its files into Keras 3, as a user with an old file does. For every case it writes
``<case>.h5`` and ``<case>.npz`` holding the input, tf_keras' own outputs of every layer (the
oracle; none for cuDNN layers, which need a GPU to run) and the raw weights as tf_keras holds
them (``<layer>/<weight>``).

Importing this module does nothing (pytest's doctest collection imports it).
"""

from __future__ import annotations

import os
import sys


def _randomize(model, rng, scale=0.6):  # type: ignore[no-untyped-def]
    """Random weights, biases included (zero biases would hide bias bugs); the scale puts
    pre-activations across hard_sigmoid's linear part and both clipped ends."""
    model.set_weights([rng.normal(scale=scale, size=w.shape).astype("float32") for w in model.get_weights()])


def _save(out, name, model, x, *, run=True):  # type: ignore[no-untyped-def]
    import numpy as np
    import tf_keras as k2

    model.save(os.path.join(out, f"{name}.h5"))
    arrays = {"x": x}
    for layer in _all_layers(model):
        for w in layer.weights:
            arrays[f"w/{w.name.removesuffix(':0')}"] = w.numpy()
    for layer in model.layers:  # each top-level layer's own output, as tf_keras computes it
        if run and layer.weights and not isinstance(layer, k2.Model):
            sub = k2.Model(model.inputs, layer.output)
            arrays[f"out/{layer.name}"] = sub(x, training=False).numpy()  # eager: no tracing
    if run:
        arrays["y"] = model(x, training=False).numpy()
    np.savez(os.path.join(out, f"{name}.npz"), **arrays)


def _all_layers(model):  # type: ignore[no-untyped-def]
    import tf_keras as k2

    for layer in model.layers:
        yield layer
        if isinstance(layer, k2.Model):
            yield from _all_layers(layer)


def main(out: str) -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import numpy as np
    import tf_keras as k2
    from tf_keras.src.layers.rnn.cudnn_gru import CuDNNGRU
    from tf_keras.src.layers.rnn.cudnn_lstm import CuDNNLSTM

    L = k2.layers
    rng = np.random.default_rng(2)
    x = rng.normal(size=(4, 6, 3)).astype("float32")
    x[0, 4:] = 0.0  # right padding
    x[1, :2] = 0.0  # left padding

    # Old defaults: hard_sigmoid everywhere, GRU(reset_after=False), masking, both directions.
    k2.utils.set_random_seed(0)
    m = k2.Sequential(
        [
            L.Masking(0.0, input_shape=(6, 3)),
            L.LSTM(4, recurrent_activation="hard_sigmoid", return_sequences=True, name="lstm"),
            L.GRU(
                3,
                recurrent_activation="hard_sigmoid",
                reset_after=False,
                return_sequences=True,
                name="gru_v1",
            ),
            L.Bidirectional(L.SimpleRNN(2, return_sequences=True), merge_mode="ave", name="bi_simple"),
            L.GRU(2, go_backwards=True, name="gru_back"),
            L.Dense(1, activation="hard_sigmoid", name="head"),
        ]
    )
    _randomize(m, rng)
    _save(out, "hard_sigmoid", m, x)

    # Tokens, Embedding(mask_zero), Bidirectional LSTM, default (sigmoid) activations.
    inp = k2.Input((None,), dtype="int32")
    h = L.Embedding(12, 5, mask_zero=True, name="embedding")(inp)
    h = L.Bidirectional(L.LSTM(3, return_sequences=True), name="bilstm")(h)
    h = L.LSTM(2, recurrent_activation="hard_sigmoid", name="top")(h)
    m = k2.Model(inp, L.Dense(1, name="head")(h))
    _randomize(m, rng)
    tokens = np.array([[3, 4, 5, 0, 0], [1, 2, 3, 4, 5], [0, 0, 7, 8, 9]], "int32")
    _save(out, "tokens", m, tokens)

    # A nested Sequential: weights are matched layer by layer inside it too.
    inner = k2.Sequential(
        [
            L.LSTM(3, recurrent_activation="hard_sigmoid", return_sequences=True, name="inner_lstm"),
            L.Dense(2, name="inner_dense"),
        ],
        name="block",
    )
    i2 = k2.Input((6, 2))
    fblock = k2.Model(i2, L.SimpleRNN(2, return_sequences=True, name="inner_simple")(i2), name="fblock")
    inp = k2.Input((6, 3))
    m = k2.Model(inp, L.GRU(2, name="outer_gru")(fblock(inner(inp))))
    _randomize(m, rng)
    _save(out, "nested", m, x)

    # cuDNN layers build and save on a CPU; they only run on a GPU (no tf_keras oracle here).
    inp = k2.Input((6, 3))
    h = CuDNNLSTM(4, return_sequences=True, name="cudnn_lstm")(inp)
    h = L.Bidirectional(CuDNNGRU(3, return_sequences=True), name="bi_cudnn_gru")(h)
    h = CuDNNGRU(2, go_backwards=True, name="cudnn_gru_back")(h)
    m = k2.Model(inp, L.Dense(1, name="head")(h))
    _randomize(m, rng)
    _save(out, "cudnn", m, x, run=False)
    # Keras 2's own answer on a CPU: the same graph with LSTM / GRU(reset_after=True), loading
    # the cuDNN file through Keras 2's own weight conversion.
    inp = k2.Input((6, 3))
    h = L.LSTM(4, return_sequences=True, name="cudnn_lstm")(inp)
    h = L.Bidirectional(L.GRU(3, return_sequences=True), name="bi_cudnn_gru")(h)
    h = L.GRU(2, go_backwards=True, name="cudnn_gru_back")(h)
    twin = k2.Model(inp, L.Dense(1, name="head")(h))
    twin.load_weights(os.path.join(out, "cudnn.h5"))
    _save(out, "cudnn_twin", twin, x)

    # Code in the file: refused unless unsafe.
    inp = k2.Input((6, 3))
    m = k2.Model(inp, L.LSTM(2, name="lstm")(L.Lambda(lambda t: t * 2.0, name="double")(inp)))
    _randomize(m, rng)
    _save(out, "lambda", m, x)

    inp = k2.Input((6, 3))
    m = k2.Model(inp, L.LSTM(2, time_major=True, name="tm")(inp))
    _save(out, "time_major", m, x, run=False)

    m.save_weights(os.path.join(out, "weights_only.h5"))


if __name__ == "__main__":
    main(sys.argv[1])
