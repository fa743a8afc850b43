"""The TFLite adapter on hand-written flatbuffers (tflite_builder): every option of the fused ops,
against a NumPy loop of TFLite's equations (float64) and the interpreter's own outputs.

Tolerances: h, c and gates within ``atol = rtol = 1e-5`` of the float64 oracle (measured: ~1.3e-7);
h equal to the interpreter's own output tensor (bitwise: it is that tensor)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

import rnnlens
from rnnlens.cli import main

tf = pytest.importorskip("tensorflow")
from tflite_builder import lstm_file, lstm_oracle, rnn_file, rnn_oracle  # noqa: E402

TOL = {"rtol": 1e-5, "atol": 1e-5}


def _x(n: int = 5, t: int = 6, f: int = 3, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, t, f)).astype(np.float32)


def _interpreter_outputs(path: Path, x: np.ndarray) -> list[np.ndarray]:
    it = tf.lite.Interpreter(model_path=str(path))
    it.allocate_tensors()
    it.set_tensor(it.get_input_details()[0]["index"], x)
    it.invoke()
    return [it.get_tensor(d["index"]) for d in it.get_output_details()]


CASES: dict[str, dict[str, Any]] = {
    "plain": {},
    "peepholes": {"peepholes": True},
    "projection": {"projection": 3},
    "cell_clip": {"cell_clip": 0.3},
    "peepholes_clip": {"peepholes": True, "cell_clip": 0.2},
    "time_major": {"time_major": True},
    "bidirectional_op": {"bidirectional_op": True},
    "bidirectional_op_merged_time_major": {"bidirectional_op": True, "merge": True, "time_major": True},
}


@pytest.mark.parametrize("case", list(CASES))
def test_h_c_gates_match_the_numpy_loop_of_tflites_equations(tmp_path: Path, case: str) -> None:
    options = CASES[case]
    path, refs = lstm_file(tmp_path / f"{case}.tflite", **options)
    x = _x()  # 5 samples through a batch-2 model: three chunks, the last padded
    given = np.swapaxes(x, 0, 1) if options.get("time_major") else x
    states = rnnlens.trace(str(path), given)
    (name,) = list(states)
    ls = states[name]
    assert list(ls.directions) == (
        ["forward", "backward"] if options.get("bidirectional_op") else ["forward"]
    )
    for (dname, d), ref in zip(ls.directions.items(), refs):
        want = lstm_oracle(x, ref, cell_clip=options.get("cell_clip", 0.0), reverse=dname == "backward")
        np.testing.assert_allclose(d.h, want["h"], **TOL)
        np.testing.assert_allclose(d.c, want["c"], **TOL)
        np.testing.assert_allclose(d.gates.array, want["gates"], **TOL)


def test_h_is_the_interpreters_own_output(tmp_path: Path) -> None:
    path, _ = lstm_file(tmp_path / "m.tflite", batch=5)
    x = _x()
    (own,) = _interpreter_outputs(path, x)
    np.testing.assert_array_equal(rnnlens.trace(str(path), x)["encoder/lstm"].h, own)


@pytest.mark.parametrize("option", ["layer_norm", "cifg"])
def test_what_rnnlens_cannot_rebuild_gives_h_only_and_says_so(tmp_path: Path, option: str) -> None:
    path, refs = lstm_file(tmp_path / f"{option}.tflite", batch=5, **{option: True})
    x = _x()
    (spec,) = rnnlens.describe(str(path))
    assert spec.fields == ("h",) and spec.notes
    for fields in (None, ("h", "c"), "gates"):
        with pytest.raises(rnnlens.UnsupportedLayerError, match=r"fields=\('h',\)"):
            rnnlens.trace(str(path), x, fields=fields)
    h = rnnlens.trace(str(path), x, fields=("h",))["encoder/lstm"].h
    np.testing.assert_array_equal(h, _interpreter_outputs(path, x)[0])
    np.testing.assert_allclose(h, lstm_oracle(x, refs[0])["h"], **TOL)


@pytest.mark.parametrize("asymmetric", [False, True])
def test_hybrid_int8_ops_are_rebuilt_with_the_kernels_arithmetic(tmp_path: Path, asymmetric: bool) -> None:
    """Dynamic-range quantized weights: c and gates from the hybrid kernel's arithmetic (x and h
    quantized per sample and step), checked inside against the kernel's h at float32 tolerance and
    the op's final cell_state; a float rebuild from the dequantized weights is ~1e-2 off."""
    path, refs = lstm_file(tmp_path / "hybrid.tflite", batch=5, int8=True, asymmetric=asymmetric, units=8)
    x = _x()
    (spec,) = rnnlens.describe(str(path))
    assert spec.fields == ("h", "c", "gates")
    d = rnnlens.trace(str(path), x)["encoder/lstm"].forward
    np.testing.assert_array_equal(d.h, _interpreter_outputs(path, x)[0])
    i, f, g, o = (d.gates[k] for k in "ifgo")
    c_prev = np.concatenate([np.zeros_like(d.c[:, :1]), d.c[:, :-1]], axis=1)
    np.testing.assert_allclose(d.c, f * c_prev + i * g, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(d.h, o * np.tanh(d.c), rtol=1e-4, atol=2e-5)
    float_rebuild = lstm_oracle(x, refs[0])["h"]  # the dequantized weights in float: not the kernel
    assert np.abs(float_rebuild - d.h).max() > 1e-4


def test_inputs_by_name_and_other_numbers_of_steps(tmp_path: Path) -> None:
    path, refs = lstm_file(tmp_path / "m.tflite")  # 6 steps in the file
    for x in (_x(1, 4), _x(3, 9)):  # the input is resized: the op's states do not depend on time
        for given in (x, {"x": x}, [x]):
            c = rnnlens.trace(str(path), given)["encoder/lstm"].c
            np.testing.assert_allclose(c, lstm_oracle(x, refs[0])["c"], **TOL)


def test_simple_rnn_op(tmp_path: Path) -> None:
    path, ref = rnn_file(tmp_path / "rnn.tflite")
    x = _x()
    (spec,) = rnnlens.describe(str(path))
    assert (spec.kind, spec.fields) == ("simple", ("h",))
    np.testing.assert_allclose(rnnlens.trace(str(path), x)["rnn/out"].h, rnn_oracle(x, ref), **TOL)


def test_model_forms_load_model_and_interpreters(tmp_path: Path) -> None:
    path, _ = lstm_file(tmp_path / "m.tflite")
    x = _x()
    want = rnnlens.trace(str(path), x)["encoder/lstm"].c
    loaded = rnnlens.load_model(path)
    assert type(loaded).__name__ == "TFLiteModel"
    np.testing.assert_array_equal(rnnlens.trace(loaded, x)["encoder/lstm"].c, want)
    it = tf.lite.Interpreter(model_content=path.read_bytes())
    np.testing.assert_array_equal(rnnlens.trace(it, x)["encoder/lstm"].c, want)
    with pytest.raises(rnnlens.UnsupportedModelError, match="model_path"):
        rnnlens.trace(tf.lite.Interpreter(model_path=str(path)), x)
    before = path.read_bytes()
    rnnlens.trace(str(path), x)
    assert path.read_bytes() == before


def test_bad_files_inputs_and_options_are_rnnlens_errors(tmp_path: Path) -> None:
    path, _ = lstm_file(tmp_path / "m.tflite")
    bad = tmp_path / "bad.tflite"
    bad.write_bytes(b"not a flatbuffer at all")
    with pytest.raises(rnnlens.ModelFileError):
        rnnlens.load_model(bad)
    x = _x()
    with pytest.raises(rnnlens.InputError, match="mask"):
        rnnlens.trace(str(path), x, mask=np.ones((5, 6), bool))
    with pytest.raises(rnnlens.InputError):
        rnnlens.trace(str(path), x[..., :2])
    with pytest.raises(rnnlens.InputError, match="no input"):
        rnnlens.trace(str(path), x, nope=x)
    with pytest.raises(rnnlens.UnsupportedModelError, match="Keras model"):
        rnnlens.intervene(str(path), x, rnnlens.Edit("encoder/lstm", 2, units=[0], scale=0))


def test_cli_inspect_and_trace(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path, _ = lstm_file(tmp_path / "m.tflite")
    assert main(["inspect", str(path)]) == 0
    assert "encoder/lstm" in capsys.readouterr().out
