"""The seed question's model (Stack Overflow 46511179), traced as the README shows."""

from __future__ import annotations

import numpy as np
import pytest

import rnnlens
from keras_helpers import canonical_weights, seed_model
from rnnlens.testing import reference_rnn

keras = pytest.importorskip("keras")


def test_seed_model_all_layers_all_steps() -> None:
    model = seed_model()
    x = np.array([[1, 3, 2, 0, 0]])
    states = rnnlens.trace(model, x)

    assert list(states) == ["bilstm_1", "bilstm_2", "bilstm_3"]
    np.testing.assert_array_equal(states.mask, [[True, True, True, False, False]])
    for name, units in (("bilstm_1", 10), ("bilstm_2", 10), ("bilstm_3", 2)):
        ls = states[name]
        assert ls.h.shape == (1, 5, 2 * units) and ls.c.shape == (1, 5, 2 * units)
        assert list(ls.gates) == ["i", "f", "g", "o"]
        fwd, bwd = ls.forward, ls.backward
        # forward half carries the last valid state over the padding
        np.testing.assert_array_equal(fwd.h[0, 3], fwd.h[0, 2])
        np.testing.assert_array_equal(fwd.h[0, 4], fwd.h[0, 2])
        np.testing.assert_array_equal(fwd.c[0, 4], fwd.c[0, 2])
        # backward half has not started yet there: the initial (zero) state
        np.testing.assert_array_equal(bwd.h[0, 3:], 0.0)
        np.testing.assert_array_equal(bwd.c[0, 3:], 0.0)
        assert np.isnan(ls.gates["f"][0, 3:]).all() and not np.isnan(ls.gates["f"][0, :3]).any()

    # Every layer against the NumPy reference, fed the previous layer's traced output.
    emb = model.get_layer("embedding").embeddings.numpy()[x]
    layer_in = emb
    mask = x != 0
    for name in ("bilstm_1", "bilstm_2", "bilstm_3"):
        layer = model.get_layer(name)
        for direction, sub in (("forward", layer.forward_layer), ("backward", layer.backward_layer)):
            w = canonical_weights(sub.cell)
            ref = reference_rnn(
                "lstm",
                layer_in,
                w["kernel"],
                w["recurrent_kernel"],
                w["bias"],
                mask=mask,
                reverse=direction == "backward",
            )
            got = states[name].directions[direction]
            np.testing.assert_allclose(got.h, ref["h"], rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(got.c, ref["c"], rtol=1e-5, atol=1e-6)
        # the next layer reads Bidirectional(return_sequences=True)'s output: zeros at masked steps
        layer_in = np.where(mask[..., None], states[name].h, 0.0)

    # The last layer's own output (return_sequences=False) is its final state: bitwise when h
    # comes from the framework's kernel, to float32 rounding from the emitting probe.
    sub_model = keras.Model(model.inputs, model.get_layer("bilstm_3").output)
    own = sub_model.predict(x, verbose=0)
    np.testing.assert_array_equal(own, rnnlens.trace(model, x, strategy="reconstruct")["bilstm_3"].last())
    np.testing.assert_allclose(own, states["bilstm_3"].last(), rtol=1e-6, atol=1e-7)
