"""The Keras adapter on whichever backend Keras was imported with (``KERAS_BACKEND``: tensorflow,
jax or torch; CI runs tests/keras once per backend, each in its own process).

The rest of tests/keras runs unchanged on every backend; these tests pin what differs: how the
probe is compiled (``tf.function``, ``jax.jit`` of a pure function of the weights, eager torch
under ``inference_mode``) and that a compiled probe never serves stale weights or states.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

import rnnlens
from keras_helpers import canonical_weights
from rnnlens.testing import reference_rnn

keras = pytest.importorskip("keras")
L = keras.layers
BACKEND = keras.backend.backend()

RNG = np.random.default_rng(11)
X = RNG.normal(size=(3, 7, 4)).astype("float32")


def _model():  # type: ignore[no-untyped-def]
    inp = keras.Input((7, 4))
    h = L.Bidirectional(L.LSTM(5, return_sequences=True), name="bi")(inp)
    h = L.GRU(3, return_sequences=True, go_backwards=True, name="gru")(h)
    return keras.Model(inp, L.SimpleRNN(2, name="simple")(h))


def test_backend_is_the_one_asked_for() -> None:
    assert os.environ.get("KERAS_BACKEND", "tensorflow") == BACKEND
    states = rnnlens.trace(_model(), X, layers="gru")
    assert states.backend == f"keras/{BACKEND}"


@pytest.mark.filterwarnings("ignore:Layer 'functional:UserWarning")  # model(x, mask=...) is fine
@pytest.mark.parametrize("strategy", ["emit", "reconstruct"])
def test_h_is_the_kernels_output_and_c_gates_match_the_reference(strategy) -> None:  # type: ignore[no-untyped-def]
    model = _model()
    mask = np.ones((3, 7), bool)
    mask[0, 5:] = False
    mask[2, :3] = False
    states = rnnlens.trace(model, X, mask=mask, strategy=strategy)

    # h of the last layer is what the model itself returns (the same compiled kernel on the
    # reconstruct path; the emitter's own graph may round an ulp differently)
    own = keras.ops.convert_to_numpy(model(X, mask=keras.ops.convert_to_tensor(mask)))
    if strategy == "reconstruct":
        np.testing.assert_array_equal(states["simple"].last(), own)
    else:
        np.testing.assert_allclose(states["simple"].last(), own, rtol=1e-6, atol=1e-7)
    # c and gates against the float64 NumPy reference (README: rtol = atol = 1e-5)
    layer = model.get_layer("bi")
    for direction, sub in (("forward", layer.forward_layer), ("backward", layer.backward_layer)):
        w = canonical_weights(sub.cell)
        ref = reference_rnn(
            "lstm",
            X,
            w["kernel"],
            w["recurrent_kernel"],
            w["bias"],
            mask=mask,
            reverse=direction == "backward",
        )
        got = states["bi"].directions[direction]
        np.testing.assert_allclose(got.h, ref["h"], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(got.c, ref["c"], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(got.gates.array, ref["gates"], rtol=1e-5, atol=1e-5)
    w = canonical_weights(model.get_layer("gru").cell)
    x_gru = np.where(mask[..., None], states["bi"].h, 0.0)  # Bidirectional's output at masked steps
    ref = reference_rnn(
        "gru",
        x_gru,
        w["kernel"],
        w["recurrent_kernel"],
        w["bias"],
        w["recurrent_bias"],
        mask=mask,
        reverse=True,
    )
    np.testing.assert_allclose(states["gru"].h, ref["h"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(states["gru"].gates.array, ref["gates"], rtol=1e-5, atol=1e-5)


def test_compiled_probe_sees_new_weights() -> None:
    """The probe is compiled once per model; weights are arguments (JAX) or captured by
    reference (TensorFlow), never baked in as constants."""
    model = _model()
    first = rnnlens.trace(model, X, layers="bi")
    cell = model.get_layer("bi").forward_layer.cell
    cell.kernel.assign(keras.ops.convert_to_numpy(cell.kernel) * 0.5)

    second = rnnlens.trace(model, X, layers="bi")

    assert not np.allclose(first["bi"].forward.c, second["bi"].forward.c)
    w = canonical_weights(cell)
    ref = reference_rnn("lstm", X, w["kernel"], w["recurrent_kernel"], w["bias"])
    np.testing.assert_allclose(second["bi"].forward.c, ref["c"], rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(second["bi"].backward.h, first["bi"].backward.h)


def test_stateful_state_is_read_at_each_call_and_never_advanced() -> None:
    inp = keras.Input(batch_shape=(3, 7, 4))
    lstm = L.LSTM(4, stateful=True, return_sequences=True, name="lstm")
    model = keras.Model(inp, lstm(inp))
    a = rnnlens.trace(model, X)  # from the zero state
    model(X)  # advances the state (on JAX predict() does not: the states are not model variables)
    state = [keras.ops.convert_to_numpy(s).copy() for s in lstm.states]

    b = rnnlens.trace(model, X)

    assert not np.allclose(a["lstm"].h, b["lstm"].h)
    for s, before in zip(lstm.states, state):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(s), before)
    w = canonical_weights(lstm.cell)
    ref = reference_rnn("lstm", X, w["kernel"], w["recurrent_kernel"], w["bias"], h0=state[0], c0=state[1])
    np.testing.assert_allclose(b["lstm"].c, ref["c"], rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(BACKEND != "jax", reason="jax.jit compilation is JAX-only")
def test_jax_probe_is_jitted_once_per_shape() -> None:
    import jax

    model = _model()
    rnnlens.trace(model, X)
    with jax.log_compiles():  # a second call with the same shapes compiles nothing
        import logging

        records: list[logging.LogRecord] = []
        handler = logging.Handler()
        handler.emit = records.append  # type: ignore[method-assign]
        logger = logging.getLogger("jax")
        logger.addHandler(handler)
        try:
            rnnlens.trace(model, X)
        finally:
            logger.removeHandler(handler)
    assert not [r for r in records if "Compiling" in r.getMessage()]
