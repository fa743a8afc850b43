"""Keras 2 full-model .h5 files, written by tf_keras (Keras 2) in another process, loaded with
rnnlens.load_model into Keras 3 and traced.

Oracles: tf_keras' own predictions and per-layer outputs on the same input (saved by the
writer), and the float64 NumPy reference on the raw weights as tf_keras held them. cuDNN layers
only run on a GPU, so for them the oracles are Keras 2's own CuDNN→LSTM/GRU weight conversion
(a twin model run by tf_keras on the CPU) and the cuDNN formulas applied to the raw cuDNN
weights here.

Tolerances: predictions rtol 1e-5, atol 1e-6 (float32, same operations; measured equal on
TensorFlow); states against the reference rtol = atol = 1e-5 (README).
"""

from __future__ import annotations

import fcntl
import importlib.util
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

import rnnlens
from rnnlens.testing import hard_sigmoid, reference_rnn

keras = pytest.importorskip("keras")

WRITER = Path(__file__).with_name("keras2_writer.py")
RTOL = ATOL = 1e-5


def keras2_hard_sigmoid(z):  # type: ignore[no-untyped-def]
    """Keras 2's formula, written independently of rnnlens'."""
    return np.clip(0.2 * z + 0.5, 0.0, 1.0)


@pytest.fixture(scope="session")
def k2(tmp_path_factory) -> Path:  # type: ignore[no-untyped-def]
    if importlib.util.find_spec("tf_keras") is None:
        pytest.skip("tf_keras (Keras 2) is not installed; it writes the legacy files")
    # Written once per test session: under pytest-xdist the workers share the session's
    # base directory, and the first worker to take the lock writes for all of them.
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent
    out = base / "keras2_files"
    with open(base / "keras2_files.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (out / "done").exists():
            out.mkdir(exist_ok=True)
            env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
            env.pop("KERAS_BACKEND", None)
            run = subprocess.run(
                [sys.executable, str(WRITER), str(out)], env=env, capture_output=True, text=True, timeout=600
            )
            if run.returncode:
                raise RuntimeError(f"keras2_writer.py failed:\n{run.stderr[-4000:]}")
            (out / "done").touch()
    return out


def _load(path: Path, **kw):  # type: ignore[no-untyped-def]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rnnlens.RnnLensWarning)
        return rnnlens.load_model(path, **kw)


def _w(o, layer: str, direction: str | None = None):  # type: ignore[no-untyped-def]
    """(kernel, recurrent_kernel, bias) of one layer as tf_keras saved them."""
    keys = [
        k for k in o.files if k.startswith(f"w/{layer}/") and (direction is None or f"/{direction}_" in k)
    ]
    pick = {k.rsplit("/", 1)[1]: o[k] for k in keys}
    return pick["kernel"], pick["recurrent_kernel"], pick.get("bias")


def _gru_bias(b):  # type: ignore[no-untyped-def]
    return (b[0], b[1]) if b is not None and b.ndim == 2 else (b, None)


def test_hard_sigmoid_is_mapped_to_keras2s_formula(k2) -> None:  # type: ignore[no-untyped-def]
    with pytest.warns(rnnlens.RnnLensWarning, match=r"\['lstm', 'gru_v1', 'head'\].*Keras 2's hard_sigmoid"):
        model = rnnlens.load_model(k2 / "hard_sigmoid.h5")
    o = np.load(k2 / "hard_sigmoid.npz")
    np.testing.assert_allclose(model.predict(o["x"], verbose=0), o["y"], rtol=1e-5, atol=1e-6)

    x, mask = o["x"], (o["x"] != 0).any(-1)
    states = rnnlens.trace(model, x)
    np.testing.assert_array_equal(states.mask, mask)
    # Each layer against the reference with Keras 2's hard_sigmoid, fed tf_keras' own outputs
    ref = reference_rnn("lstm", x, *_w(o, "lstm"), mask=mask, recurrent_activation=keras2_hard_sigmoid)
    for field in ("h", "c"):
        np.testing.assert_allclose(getattr(states["lstm"], field), ref[field], rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(states["lstm"].gates.array, ref["gates"], rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(states["lstm"].h, o["out/lstm"], rtol=RTOL, atol=ATOL)
    # ... and the reference with Keras 3's hard_sigmoid is far off: the mapping matters
    wrong = reference_rnn("lstm", x, *_w(o, "lstm"), mask=mask, recurrent_activation=hard_sigmoid)
    assert np.abs(wrong["h"] - o["out/lstm"]).max() > 1e-3

    k, r, b = _w(o, "gru_v1")
    ref = reference_rnn(
        "gru", o["out/lstm"], k, r, b, mask=mask, reset_after=False, recurrent_activation=keras2_hard_sigmoid
    )
    np.testing.assert_allclose(states["gru_v1"].h, ref["h"], rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(states["gru_v1"].gates.array, ref["gates"], rtol=RTOL, atol=ATOL)

    for direction in ("forward", "backward"):
        ref = reference_rnn(
            "simple",
            o["out/gru_v1"],
            *_w(o, "bi_simple", direction),
            mask=mask,
            reverse=direction == "backward",
        )
        np.testing.assert_allclose(
            states["bi_simple"].directions[direction].h, ref["h"], rtol=RTOL, atol=ATOL
        )

    k, r, b = _w(o, "gru_back")
    ref = reference_rnn("gru", o["out/bi_simple"], k, r, *_gru_bias(b), mask=mask, reverse=True)
    np.testing.assert_allclose(states["gru_back"].h, ref["h"], rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(states["gru_back"].last(), o["out/gru_back"], rtol=RTOL, atol=ATOL)


def test_tokens_embedding_mask_and_bidirectional(k2) -> None:  # type: ignore[no-untyped-def]
    with pytest.warns(rnnlens.RnnLensWarning, match=r"\['top'\]"):
        model = rnnlens.load_model(k2 / "tokens.h5")
    o = np.load(k2 / "tokens.npz")
    x = o["x"]
    np.testing.assert_allclose(model.predict(x, verbose=0), o["y"], rtol=1e-5, atol=1e-6)
    states = rnnlens.trace(model, x)
    mask = x != 0
    np.testing.assert_array_equal(states.mask, mask)
    emb = o["w/embedding/embeddings"][x]
    for direction in ("forward", "backward"):
        ref = reference_rnn(
            "lstm", emb, *_w(o, "bilstm", direction), mask=mask, reverse=direction == "backward"
        )
        got = states["bilstm"].directions[direction]
        np.testing.assert_allclose(got.c, ref["c"], rtol=RTOL, atol=ATOL)
        np.testing.assert_allclose(got.gates.array, ref["gates"], rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(states["top"].last(), o["out/top"], rtol=RTOL, atol=ATOL)


def test_nested_sequential_and_functional(k2) -> None:  # type: ignore[no-untyped-def]
    model = _load(k2 / "nested.h5")
    o = np.load(k2 / "nested.npz")
    np.testing.assert_allclose(model.predict(o["x"], verbose=0), o["y"], rtol=1e-5, atol=1e-6)
    states = rnnlens.trace(model, o["x"])
    assert list(states) == ["inner_lstm", "inner_simple", "outer_gru"]
    ref = reference_rnn("lstm", o["x"], *_w(o, "inner_lstm"), recurrent_activation=keras2_hard_sigmoid)
    np.testing.assert_allclose(states["inner_lstm"].c, ref["c"], rtol=RTOL, atol=ATOL)


def _cudnn_oracle(kind: str, x, raw_kernel, raw_recurrent, raw_bias, **kw):  # type: ignore[no-untyped-def]
    """The cuDNN formulas on a Keras 2 cuDNN layer's raw weights: cuDNN reads each gate's slice
    of the kernel variable as a flat buffer holding a row-major (unit, input) matrix W and
    computes W x + b_W + R h + b_R (GRU: n = tanh(W_n x + b_Wn + r * (R_n h + b_Rn)))."""
    n = 4 if kind == "lstm" else 3
    u = raw_recurrent.shape[0]

    def keras_layout(raw):  # type: ignore[no-untyped-def]
        gates = [raw[:, g * u : (g + 1) * u].reshape(-1).reshape(u, raw.shape[0]) for g in range(n)]
        return np.concatenate([w.T for w in gates], axis=1)  # x @ W.T == W x

    b_w, b_r = raw_bias[: n * u], raw_bias[n * u :]
    if kind == "lstm":
        return reference_rnn(
            "lstm", x, keras_layout(raw_kernel), keras_layout(raw_recurrent), b_w + b_r, **kw
        )
    return reference_rnn("gru", x, keras_layout(raw_kernel), keras_layout(raw_recurrent), b_w, b_r, **kw)


def test_cudnn_layers_become_lstm_and_gru_with_converted_weights(k2) -> None:  # type: ignore[no-untyped-def]
    with warnings.catch_warnings():
        warnings.simplefilter("error", rnnlens.RnnLensWarning)  # nothing is approximated
        model = rnnlens.load_model(k2 / "cudnn.h5")
    lstm, bigru, gru = (model.get_layer(n) for n in ("cudnn_lstm", "bi_cudnn_gru", "cudnn_gru_back"))
    assert isinstance(lstm, keras.layers.LSTM) and isinstance(gru, keras.layers.GRU)
    assert gru.go_backwards and gru.cell.reset_after and bigru.forward_layer.cell.reset_after
    assert lstm.cell.recurrent_activation is keras.activations.sigmoid

    # Keras 2 itself (its CuDNN -> LSTM/GRU conversion, run on the CPU) computes the same
    twin = np.load(k2 / "cudnn_twin.npz")
    o = np.load(k2 / "cudnn.npz")
    x = o["x"]
    np.testing.assert_allclose(model.predict(x, verbose=0), twin["y"], rtol=1e-5, atol=1e-6)

    # and so do the cuDNN formulas on the raw weights, layer by layer
    states = rnnlens.trace(model, x)
    ref = _cudnn_oracle("lstm", x, *_w(o, "cudnn_lstm"))
    for field in ("h", "c"):
        np.testing.assert_allclose(getattr(states["cudnn_lstm"], field), ref[field], rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(states["cudnn_lstm"].gates.array, ref["gates"], rtol=RTOL, atol=ATOL)
    for direction in ("forward", "backward"):
        ref = _cudnn_oracle(
            "gru", twin["out/cudnn_lstm"], *_w(o, "bi_cudnn_gru", direction), reverse=direction == "backward"
        )
        got = states["bi_cudnn_gru"].directions[direction]
        np.testing.assert_allclose(got.h, ref["h"], rtol=RTOL, atol=ATOL)
        np.testing.assert_allclose(got.gates.array, ref["gates"], rtol=RTOL, atol=ATOL)
    ref = _cudnn_oracle("gru", twin["out/bi_cudnn_gru"], *_w(o, "cudnn_gru_back"), reverse=True)
    np.testing.assert_allclose(states["cudnn_gru_back"].gates.array, ref["gates"], rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(
        states["cudnn_gru_back"].last(), twin["out/cudnn_gru_back"], rtol=RTOL, atol=ATOL
    )


def test_lambda_layer_refused_unless_unsafe(k2) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(rnnlens.ModelFileError, match=r"Lambda.*unsafe=True"):
        rnnlens.load_model(k2 / "lambda.h5")
    model = rnnlens.load_model(k2 / "lambda.h5", unsafe=True)
    o = np.load(k2 / "lambda.npz")
    np.testing.assert_allclose(model.predict(o["x"], verbose=0), o["y"], rtol=1e-5, atol=1e-6)


def test_files_rnnlens_cannot_load_say_why(k2, tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(rnnlens.UnsupportedModelError, match=r"'tm'.*time_major=True"):
        rnnlens.load_model(k2 / "time_major.h5")
    with pytest.raises(rnnlens.ModelFileError, match=r"weights only.*load_weights"):
        rnnlens.load_model(k2 / "weights_only.h5")
    data = (k2 / "hard_sigmoid.h5").read_bytes()
    (tmp_path / "cut.h5").write_bytes(data[: len(data) // 2])
    (tmp_path / "noise.hdf5").write_bytes(np.random.default_rng(0).bytes(4096))
    for name in ("cut.h5", "noise.hdf5"):
        with pytest.raises(rnnlens.ModelFileError, match="truncated or corrupt"):
            rnnlens.load_model(tmp_path / name)


def test_resaved_as_keras3_file_keeps_keras2s_hard_sigmoid(k2, tmp_path) -> None:  # type: ignore[no-untyped-def]
    model = _load(k2 / "hard_sigmoid.h5")
    model.save(tmp_path / "m.keras")
    reloaded = rnnlens.load_model(tmp_path / "m.keras")
    o = np.load(k2 / "hard_sigmoid.npz")
    np.testing.assert_allclose(reloaded.predict(o["x"], verbose=0), o["y"], rtol=1e-5, atol=1e-6)


def test_keras3_h5_file_takes_keras_own_path(tmp_path) -> None:  # type: ignore[no-untyped-def]
    inp = keras.Input((4, 2))
    model = keras.Model(inp, keras.layers.LSTM(3, recurrent_activation="hard_sigmoid", name="l")(inp))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Keras' own note that .h5 is a legacy format
        model.save(tmp_path / "k3.h5")
    with warnings.catch_warnings():
        warnings.simplefilter("error", rnnlens.RnnLensWarning)  # Keras 3's hard_sigmoid stays
        loaded = rnnlens.load_model(tmp_path / "k3.h5")
    x = np.random.default_rng(1).normal(size=(2, 4, 2)).astype("float32")
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))
