"""Keras mixed precision (``mixed_float16`` / ``mixed_bfloat16``: float32 weights, half-precision
maths) on a Functional LSTM / GRU: every field, h the model's own layer output, c and gates
against a float64 reference run on the half-precision-rounded weights and input.

The probe's step runs the cell's own operations under the layer's autocast scope (its weights
read in the compute dtype, the input cast to it), so h is the one the model computes:
bitwise on TensorFlow. Against the float64 reference the difference is the half-precision
rounding of every operation, accumulated over the steps (7 steps, 6 units): measured h / c /
gates ≤ 4.7e-4 / 6.3e-4 / 6.9e-4 (float16 LSTM; GRU 4.3e-4 / - / 5.9e-4) and ≤ 3.9e-3 / 6.1e-3 /
4.6e-3 (bfloat16 LSTM, 8 bits of mantissa; GRU 5.0e-3 / - / 4.5e-3); asserted within 2e-3 and
1.5e-2 (about 4 units in the last place of a value near 1).
"""

from __future__ import annotations

import numpy as np
import pytest

keras = pytest.importorskip("keras")

import rnnlens  # noqa: E402
from rnnlens.testing import reference_rnn  # noqa: E402

BOUND = {"mixed_float16": 2e-3, "mixed_bfloat16": 1.5e-2}


def _rounded(a: np.ndarray, policy: str) -> np.ndarray:
    """``a`` rounded to the policy's compute dtype, back in float64."""
    if policy == "mixed_float16":
        return np.asarray(a, np.float32).astype(np.float16).astype(np.float64)
    import ml_dtypes

    return np.asarray(a, np.float32).astype(ml_dtypes.bfloat16).astype(np.float64)


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_mixed_precision_every_field(policy: str, kind: str) -> None:
    keras.utils.set_random_seed(0)
    layer_cls = keras.layers.LSTM if kind == "lstm" else keras.layers.GRU
    inp = keras.Input((7, 3))
    rec = layer_cls(6, return_sequences=True, dtype=policy, name="rec")(inp)
    model = keras.Model(inp, keras.layers.Dense(2, dtype=policy)(rec))
    x = np.random.default_rng(1).normal(size=(4, 7, 3)).astype(np.float32)
    states = rnnlens.trace(model, x)
    layer = states["rec"]
    assert layer.spec.fields == (("h", "c", "gates") if kind == "lstm" else ("h", "gates"))
    own = np.asarray(keras.Model(inp, rec).predict(x, verbose=0))
    assert own.dtype == np.dtype(policy.split("_")[1])
    if keras.backend.backend() == "torch":  # its LSTM kernel rounds differently from the step: 1 ulp
        eps = float(np.finfo(own.dtype).eps) if own.dtype == np.float16 else 2.0**-7
        got, want = np.asarray(layer.h, np.float32), own.astype(np.float32)
        np.testing.assert_allclose(got, want, rtol=eps, atol=eps / 8)
    else:
        np.testing.assert_array_equal(np.asarray(layer.h, own.dtype), own)  # the model's own h
    cell = model.get_layer("rec").cell
    weights = {
        "kernel": _rounded(cell.kernel.numpy(), policy),
        "recurrent_kernel": _rounded(cell.recurrent_kernel.numpy(), policy),
    }
    bias = cell.bias.numpy()
    if kind == "gru":
        weights["bias"], weights["recurrent_bias"] = _rounded(bias[0], policy), _rounded(bias[1], policy)
    else:
        weights["bias"] = _rounded(bias, policy)
    ref = reference_rnn(kind, _rounded(x, policy), **weights)
    bound = BOUND[policy]
    np.testing.assert_allclose(np.asarray(layer.h, np.float64), ref["h"], rtol=0, atol=bound)
    if kind == "lstm":
        np.testing.assert_allclose(np.asarray(layer.c, np.float64), ref["c"], rtol=0, atol=bound)
    np.testing.assert_allclose(np.asarray(layer.gates.array, np.float64), ref["gates"], rtol=0, atol=bound)
    run = rnnlens.intervene(model, x, [rnnlens.Edit("rec", 2, units=[0, 1], scale=0.0)])
    assert (np.asarray(run.states["rec"].h[:, 2, :2], np.float64) == 0).all()
    assert not np.allclose(
        np.asarray(run.outputs, np.float64), np.asarray(model.predict(x, verbose=0), np.float64)
    )
