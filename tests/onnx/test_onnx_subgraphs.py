"""Recurrent nodes as shipped graphs hold them: two ``If`` levels deep (a streaming model that
switches on its sample rate), inside a model-local function, quantized by ONNX Runtime's
``quantize_dynamic``, and inside a ``Loop`` body (refused, named). Each traced layer is compared
with the NumPy reference run on the node's own weights (rtol 1e-4 / atol 2e-5 float32), and
``h`` with what ONNX Runtime itself returns."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
torch = pytest.importorskip("torch")

from onnx_helpers import canonical_from_onnx, export  # noqa: E402

import rnnlens  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402
from rnnlens.cli.command import main  # noqa: E402
from rnnlens.testing import reference_rnn  # noqa: E402

# ONNX Runtime before 1.32 cannot run an If nested in an If once a branch's value is exposed as an
# output (its shape check refuses a scalar condition declared [1]): rnnlens reports that error
_ORT = tuple(int(p) for p in ort.__version__.split(".")[:2])
nested_if = pytest.mark.skipif(_ORT < (1, 32), reason="nested If subgraphs need onnxruntime >= 1.32")

H, F, T, N = 4, 3, 6, 2
TOL = {"rtol": 1e-4, "atol": 2e-5}


def _weights(seed: int, prefix: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    w = rng.normal(0, 0.5, size=(1, 4 * H, F)).astype(np.float32)
    r = rng.normal(0, 0.5, size=(1, 4 * H, H)).astype(np.float32)
    b = rng.normal(0, 0.1, size=(1, 8 * H)).astype(np.float32)
    return w, r, b


def _lstm_branch(name: str, seed: int, out: str) -> object:
    """A branch graph: an LSTM on the outer ``x`` (its weights are the branch's initializers)."""
    w, r, b = _weights(seed, name)
    inits = [numpy_helper.from_array(a, f"{name}_{k}") for k, a in zip("WRB", (w, r, b))]
    node = helper.make_node(
        "LSTM", ["x", f"{name}_W", f"{name}_R", f"{name}_B"], [out], name=name, hidden_size=H
    )
    y = helper.make_tensor_value_info(f"{out}_y", TensorProto.FLOAT, None)
    return helper.make_graph([node, helper.make_node("Identity", [out], [f"{out}_y"])], name, [], [y], inits)


def _if_model() -> object:
    """``rate_switch`` (on ``cond``) → ``inner_if`` (on ``cond2``) → ``lstm_16k`` / ``lstm_8k``."""
    inner_if = helper.make_node(
        "If", ["cond2"], ["inner_out"], name="inner_if",
        then_branch=_lstm_branch("lstm_16k", 1, "ya"), else_branch=_lstm_branch("lstm_8k", 2, "yb"),
    )  # fmt: skip
    out = helper.make_tensor_value_info("inner_out", TensorProto.FLOAT, None)
    outer_then = helper.make_graph([inner_if], "t", [], [out])
    e = helper.make_tensor_value_info("xe", TensorProto.FLOAT, None)
    outer_else = helper.make_graph([helper.make_node("Identity", ["x"], ["xe"])], "e", [], [e])
    top = helper.make_node(
        "If", ["cond"], ["out"], name="rate_switch", then_branch=outer_then, else_branch=outer_else
    )
    graph = helper.make_graph(
        [top], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["t", "b", F]),
         helper.make_tensor_value_info("cond", TensorProto.BOOL, []),
         helper.make_tensor_value_info("cond2", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)],
    )  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _expected(seed: int, x_tbf: np.ndarray) -> dict[str, np.ndarray]:
    w, r, b = _weights(seed, "")
    return reference_rnn("lstm", x_tbf.transpose(1, 0, 2), **canonical_from_onnx("LSTM", w[0], r[0], b[0]))


def _x() -> np.ndarray:
    return np.random.default_rng(5).normal(size=(T, N, F)).astype(np.float32)


@nested_if
@pytest.mark.parametrize(("cond2", "node", "seed"), [(True, "lstm_16k", 1), (False, "lstm_8k", 2)])
def test_the_branch_that_runs_is_traced_two_if_levels_deep(cond2: bool, node: str, seed: int) -> None:
    model, x = _if_model(), _x()
    before = model.SerializeToString()
    states = rnnlens.trace(model, x, np.array(True), np.array(cond2))
    name = f"rate_switch/then_branch/inner_if/{'then' if cond2 else 'else'}_branch/{node}"
    assert list(states) == [name]
    ref = _expected(seed, x)
    got = states[name]
    np.testing.assert_allclose(got.h, ref["h"], **TOL)
    np.testing.assert_allclose(got.c, ref["c"], **TOL)
    np.testing.assert_allclose(np.stack(list(got.gates.values()), axis=2), ref["gates"], **TOL)
    own = ort.InferenceSession(before, providers=["CPUExecutionProvider"]).run(
        None, {"x": x, "cond": np.array(True), "cond2": np.array(cond2)}
    )[0]
    np.testing.assert_array_equal(got.h, own[:, 0].transpose(1, 0, 2))  # ONNX Runtime's own Y
    assert model.SerializeToString() == before  # the user's model is untouched


@nested_if
def test_describe_lists_both_branches_and_a_branch_not_taken_is_named() -> None:
    model = _if_model()
    names = rnnlens.describe(model).names
    assert names == [
        "rate_switch/then_branch/inner_if/then_branch/lstm_16k",
        "rate_switch/then_branch/inner_if/else_branch/lstm_8k",
    ]
    # cond False: the outer else branch runs (no LSTM at all) -> an error, not empty states
    with pytest.raises(rnnlens.UnsupportedLayerError, match=r"then_branch of If 'rate_switch'.*did not run"):
        rnnlens.trace(model, _x(), np.array(False), np.array(True))
    # naming a layer whose branch did not run is an error that says so
    with pytest.raises(rnnlens.UnsupportedLayerError, match=r"lstm_8k.*did not run"):
        rnnlens.trace(model, _x(), np.array(True), np.array(True), layers=names[1])
    with pytest.raises(rnnlens.UnsupportedLayerError, match="inside If branches"):
        rnnlens.intervene(
            model, _x(), [rnnlens.Edit(names[0], 0, scale=0)], args=(np.array(True), np.array(True))
        )


def test_an_lstm_in_a_model_local_function() -> None:
    w, r, b = _weights(3, "")
    fn = helper.make_function(
        "local", "encoder", ["x", "W", "R", "B"], ["y"],
        [helper.make_node("LSTM", ["x", "W", "R", "B"], ["y"], name="enc", hidden_size=H)],
        [helper.make_opsetid("", 17)],
    )  # fmt: skip
    graph = helper.make_graph(
        [helper.make_node("encoder", ["x", "W", "R", "B"], ["y"], domain="local", name="call")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["t", "b", F])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(a, k) for k, a in zip("WRB", (w, r, b))],
    )  # fmt: skip
    model = helper.make_model(
        graph, functions=[fn], opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("local", 1)]
    )
    x = _x()
    states = rnnlens.trace(model, x)
    (name,) = list(states)
    assert name.startswith("enc")
    ref = _expected(3, x)
    np.testing.assert_allclose(states[name].h, ref["h"], **TOL)
    np.testing.assert_allclose(states[name].c, ref["c"], **TOL)


def _loop_model(main_lstm: bool) -> object:
    """An LSTM inside a Loop body (runs once per iteration), and maybe one in the main graph."""
    w, r, _ = _weights(4, "")
    body = helper.make_graph(
        [helper.make_node("Identity", ["c_in"], ["c_out"]),
         helper.make_node("LSTM", ["x", "W", "R"], ["y"], name="step_lstm", hidden_size=H)],
        "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("c_in", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("c_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("y", TensorProto.FLOAT, ["t", 1, "b", H])],
    )  # fmt: skip
    nodes = [helper.make_node("Loop", ["n", "c"], ["ys"], body=body, name="frames")]
    outputs = [helper.make_tensor_value_info("ys", TensorProto.FLOAT, ["n", "t", 1, "b", H])]
    if main_lstm:
        nodes.append(helper.make_node("LSTM", ["x", "W", "R"], ["y_main"], name="main_lstm", hidden_size=H))
        outputs.append(helper.make_tensor_value_info("y_main", TensorProto.FLOAT, ["t", 1, "b", H]))
    graph = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["t", "b", F]),
         helper.make_tensor_value_info("n", TensorProto.INT64, []),
         helper.make_tensor_value_info("c", TensorProto.BOOL, [])],
        outputs,
        [numpy_helper.from_array(w, "W"), numpy_helper.from_array(r, "R")],
    )  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


LOOPED = r"frames/body/step_lstm \(LSTM: runs once per iteration"


def test_an_lstm_in_a_loop_body_is_named_in_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = _loop_model(main_lstm=False)
    with pytest.raises(rnnlens.UnsupportedLayerError, match=LOOPED):
        rnnlens.describe(model)
    with pytest.raises(rnnlens.UnsupportedLayerError, match=LOOPED):
        rnnlens.trace(model, _x(), np.array(2), np.array(True))
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    assert main(["inspect", str(path)]) == 2
    err = capsys.readouterr().err
    assert "Loop/Scan" in err and "dynamo" not in err


def test_describe_lists_what_it_cannot_trace_under_the_table(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = _loop_model(main_lstm=True)
    description = rnnlens.describe(model)
    assert description.names == ["main_lstm"]
    assert len(description.untraced) == 1 and "step_lstm" in description.untraced[0]
    assert "not traceable: frames/body/step_lstm" in repr(description)
    states = rnnlens.trace(model, _x(), np.array(2), np.array(True))
    w, r, _ = _weights(4, "")
    ref = reference_rnn("lstm", _x().transpose(1, 0, 2), **canonical_from_onnx("LSTM", w[0], r[0], None))
    np.testing.assert_allclose(states["main_lstm"].c, ref["c"], **TOL)
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    assert main(["inspect", str(path)]) == 0
    assert "not traceable: frames/body/step_lstm" in capsys.readouterr().out


@pytest.fixture(scope="module")
def quantized(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, torch.nn.LSTM]:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    torch.manual_seed(0)
    lstm = torch.nn.LSTM(F, H, bidirectional=True, batch_first=True).eval()
    d = tmp_path_factory.mktemp("q")
    export(lstm, (torch.zeros(N, T, F),), d / "f.onnx", dynamic_axes={"x": {0: "b", 1: "t"}})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantize_dynamic(str(d / "f.onnx"), str(d / "q.onnx"), weight_type=QuantType.QInt8)
    return d / "q.onnx", lstm


def test_a_quantize_dynamic_bilstm(quantized: tuple[Path, torch.nn.LSTM]) -> None:
    path, lstm = quantized
    model = onnx.load(str(path))
    assert any(n.op_type == "DynamicQuantizeLSTM" for n in model.graph.node)
    spec = rnnlens.describe(model)[0]
    assert spec.layer_type == "DynamicQuantizeLSTM" and spec.fields == ("h", "c", "gates")
    x = np.random.default_rng(1).normal(size=(N, T, F)).astype(np.float32)
    states = rnnlens.trace(path, x)
    layer = states[spec.name]
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1  # the kernel's h depends on the thread count; rnnlens runs one
    y, _, c_n = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"]).run(
        None, {"x": x}
    )
    # h is the quantized kernel's own output, bitwise
    own = y.reshape(N, T, 2, H).transpose(2, 0, 1, 3)  # the export's (batch, time, 2 * H) output
    np.testing.assert_array_equal(layer.forward.h, own[0])
    np.testing.assert_array_equal(layer.backward.h, own[1])
    # c and gates are the float LSTM's at the kernel's h: close to the float model's (int8 weights)
    with torch.no_grad():
        _, (_, c_float) = lstm(torch.from_numpy(x))
    np.testing.assert_allclose(layer.forward.c[:, -1], c_float[0].numpy(), atol=3e-2)
    np.testing.assert_allclose(layer.backward.c[:, 0], c_float[1].numpy(), atol=3e-2)
    np.testing.assert_allclose(layer.forward.c[:, -1], c_n[0], atol=1e-6)  # the kernel's own Y_c
    ablated = rnnlens.intervene(path, x, [rnnlens.Edit(spec.name, 2, scale=0, direction="forward")])
    assert (ablated.states[spec.name].forward.h[:, 2] == 0).all()
