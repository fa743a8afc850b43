"""TFLite files as people make them: Keras 2 (tf_keras) models converted with
tf.lite.TFLiteConverter.from_keras_model (a fixed batch size gives fused UNIDIRECTIONAL_SEQUENCE_LSTM
ops; a Bidirectional LSTM becomes two of them around REVERSE_V2; GRU becomes a WHILE loop), and a
Keras 3 LSTM (a WHILE loop: refused). Oracles: the tf_keras model's own layer outputs (h) and a NumPy
loop with the Keras layer's weights (rnnlens.testing.reference_rnn: h, c, gates), atol = rtol = 1e-5."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

import rnnlens
from rnnlens.testing import reference_rnn

tf = pytest.importorskip("tensorflow")
k2 = pytest.importorskip("tf_keras")

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
TOL = {"rtol": 1e-5, "atol": 1e-5}
BATCH, STEPS, FEATURES = 2, 6, 3


def _convert(model: Any, path: Path) -> Path:
    path.write_bytes(tf.lite.TFLiteConverter.from_keras_model(model).convert())
    return path


@pytest.fixture(scope="session")
def single(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Path]:
    """One LSTM (every step) → Dense, batch 2: the quick conversion (~10 s; a Bidirectional takes ~60 s)."""
    k2.utils.set_random_seed(1)
    inp = k2.Input((STEPS, FEATURES), batch_size=BATCH)
    model = k2.Model(inp, k2.layers.Dense(2)(k2.layers.LSTM(4, return_sequences=True, name="enc")(inp)))
    return model, _convert(model, tmp_path_factory.mktemp("tflite") / "single.tflite")


def test_a_converted_keras2_lstm_against_keras(single: tuple[Any, Path]) -> None:
    model, path = single
    x = np.random.default_rng(2).normal(size=(5, STEPS, FEATURES)).astype(np.float32)
    (spec,) = rnnlens.describe(str(path))
    assert (spec.name, spec.kind, spec.fields) == ("lstm_0", "lstm", ("h", "c", "gates"))
    d = rnnlens.trace(str(path), x)["lstm_0"].forward
    own = k2.Model(model.input, model.get_layer("enc").output).predict(x, batch_size=BATCH, verbose=0)
    np.testing.assert_allclose(d.h, own, **TOL)
    want = reference_rnn("lstm", x, **_keras_weights(model.get_layer("enc")))
    np.testing.assert_allclose(d.c, want["c"], **TOL)
    np.testing.assert_allclose(d.gates.array, want["gates"], **TOL)


@pytest.fixture(scope="session")
def stacked(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Path]:
    """LSTM (sequences) → Bidirectional(LSTM) → LSTM (last step only) → Dense, batch 2."""
    k2.utils.set_random_seed(0)
    inp = k2.Input((STEPS, FEATURES), batch_size=BATCH)
    a = k2.layers.LSTM(4, return_sequences=True, name="enc")(inp)
    b = k2.layers.Bidirectional(k2.layers.LSTM(3, return_sequences=True), name="bi")(a)
    d = k2.layers.LSTM(5, name="last")(b)
    model = k2.Model(inp, k2.layers.Dense(2)(d))
    return model, _convert(model, tmp_path_factory.mktemp("tflite") / "stacked.tflite")


def _keras_weights(layer: Any, reverse: bool = False) -> dict[str, Any]:
    kernel, recurrent, bias = layer.get_weights()
    return {"kernel": kernel, "recurrent_kernel": recurrent, "bias": bias, "reverse": reverse}


@pytest.mark.slow
def test_converted_keras2_stack_against_keras(stacked: tuple[Any, Path]) -> None:
    model, path = stacked
    x = np.random.default_rng(3).normal(size=(5, STEPS, FEATURES)).astype(np.float32)
    desc = rnnlens.describe(str(path))
    names = [s.name for s in desc]
    assert names[0] == "lstm_0" and "bi" in names[1] and names[2] == "lstm_1", names
    assert desc[1].directions == ("forward", "backward")
    states = rnnlens.trace(str(path), x)
    own = k2.Model(model.input, [model.get_layer(n).output for n in ("enc", "bi", "last")])
    enc_h, bi_h, last_h = (np.asarray(v) for v in own.predict(x, batch_size=BATCH, verbose=0))
    np.testing.assert_allclose(states[names[0]].h, enc_h, **TOL)
    np.testing.assert_allclose(states[names[1]].h, bi_h, **TOL)
    np.testing.assert_allclose(states[names[2]].h[:, -1], last_h, **TOL)
    checks = [
        (states[names[0]].forward, model.get_layer("enc"), x, False),
        (states[names[1]].directions["forward"], model.get_layer("bi").forward_layer, enc_h, False),
        (states[names[1]].directions["backward"], model.get_layer("bi").backward_layer, enc_h, True),
    ]
    for d, layer, inputs, reverse in checks:
        want = reference_rnn("lstm", inputs, **_keras_weights(layer, reverse))
        np.testing.assert_allclose(d.h, want["h"], **TOL)
        np.testing.assert_allclose(d.c, want["c"], **TOL)
        np.testing.assert_allclose(d.gates.array, want["gates"], **TOL)


def test_cli_inspect_and_extract_of_a_converted_model(single: tuple[Any, Path], tmp_path: Path) -> None:
    pytest.importorskip("zarr")
    from rnnlens.cli import main

    _, path = single
    x = np.random.default_rng(0).normal(size=(3, STEPS, FEATURES)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    assert main(["inspect", str(path)]) == 0
    assert main(["extract", str(path), str(tmp_path / "x.npy"), "--out", str(tmp_path / "run.zarr")]) == 0
    stored = rnnlens.open_states(str(tmp_path / "run.zarr"))
    direct = rnnlens.trace(str(path), x)
    for name in direct:
        np.testing.assert_array_equal(stored[name].h[:], direct[name].h)
        np.testing.assert_array_equal(stored[name].c[:], direct[name].c)


@pytest.mark.slow
def test_a_keras2_gru_is_a_while_loop_listed_as_untraced(tmp_path: Path) -> None:
    inp = k2.Input((STEPS, FEATURES), batch_size=BATCH)
    out = k2.layers.GRU(3, name="gru")(k2.layers.LSTM(4, return_sequences=True)(inp))
    path = _convert(k2.Model(inp, out), tmp_path / "gru.tflite")
    assert [s.name for s in rnnlens.describe(str(path))] == ["lstm_0"]
    (loop,) = rnnlens.adapters.registered()["tflite"].untraced(str(path))
    assert "WHILE" in loop and "gru" in loop, loop
    assert rnnlens.trace(str(path), np.zeros((3, STEPS, FEATURES), "f4"))["lstm_0"].c.shape == (3, STEPS, 4)


def test_a_keras3_lstm_is_a_while_loop_and_refused(tmp_path: Path) -> None:
    import keras

    model = keras.Sequential([keras.Input((STEPS, FEATURES), batch_size=BATCH), keras.layers.LSTM(4)])
    path = _convert(model, tmp_path / "k3.tflite")
    for call in (
        lambda: rnnlens.describe(str(path)),
        lambda: rnnlens.trace(str(path), np.zeros((2, 6, 3), "f4")),
    ):
        with pytest.raises(rnnlens.UnsupportedLayerError, match=r"WHILE .*tf_keras") as e:
            call()
        assert "lstm" in str(e.value)


@pytest.mark.slow
def test_a_dynamic_range_quantized_lstm_is_rebuilt_with_the_hybrid_arithmetic(tmp_path: Path) -> None:
    """Optimize.DEFAULT on an LSTM with weights of >= 1024 values: int8 weights, asymmetric input
    quantization (what the converter writes); c and gates checked against the kernel's h inside."""
    inp = k2.Input((STEPS, 40), batch_size=BATCH)
    model = k2.Model(inp, k2.layers.LSTM(32, return_sequences=True)(inp))
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    path = tmp_path / "hybrid.tflite"
    path.write_bytes(converter.convert())
    x = np.random.default_rng(0).normal(size=(3, STEPS, 40)).astype(np.float32)
    d = rnnlens.trace(str(path), x)["lstm_0"].forward
    assert d.c.shape == (3, STEPS, 32) and d.gates.array.shape == (3, STEPS, 4, 32)
    it = tf.lite.Interpreter(model_content=path.read_bytes())
    it.allocate_tensors()
    it.set_tensor(it.get_input_details()[0]["index"], x[:2])
    it.invoke()
    np.testing.assert_array_equal(d.h[:2], it.get_tensor(it.get_output_details()[0]["index"]))
