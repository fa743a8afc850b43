"""ONNX Runtime's ``com.microsoft.DynamicQuantizeLSTM`` (``onnxruntime.quantization.quantize_dynamic``):
h, c and gates against the kernel's own ``Y`` / ``Y_h`` / ``Y_c`` and against a float64 step loop
written here from ONNX Runtime's source (``uni_directional_lstm.cc``, ``rnn_helpers.cc::ComputeGemm``,
``qmath.h::GetQuantizationParameter``, MLAS ``QuantizeLinear``): inputs quantized to uint8 once
per call over every step, ``h_{t-1}`` per step and per block of samples, integer products,
dequantized by ``scale_a * scale_w``.

Measured (onnxruntime 1.32, x86-64 with AVX512-VNNI), over the cases below: rnnlens' c against the
kernel's ``Y_c`` ≤ 4.8e-7, its c and gates against the teacher-forced loop ≤ 1.7e-7, the
free-running loop's h against the kernel's ``Y`` ≤ 3e-7 (asserted within 1e-5: with h of its own a
float32/float64 difference could flip one rounding of the next step's quantization); an edited
run's h and c against the loop with the same edits 1.2e-7, an edit that changes nothing against
the kernel's ``Y`` 1.8e-7; an edited write (``target="write"``) against the loop with it
1.1e-7. The float rebuild with dequantized weights rnnlens did before was off by 3.3e-3 to
6.8e-2 on the same cases.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
quantization = pytest.importorskip("onnxruntime.quantization")

from onnx_helpers import recurrent_model  # noqa: E402

import rnnlens  # noqa: E402
from onnx import numpy_helper  # noqa: E402
from rnnlens.adapters.onnx_.quantized import QuantizedCell, QuantizedWeights, quantized_direction  # noqa: E402

F32 = np.float32


def _quantized(tmp: Path, hidden: int, features: int, direction: str, *, weight_type: str = "QInt8",
               per_channel: bool = False, lens: bool = False, batch: int | None = None,
               peepholes: bool = False, seed: int = 0) -> Path:  # fmt: skip
    rng = np.random.default_rng(seed)
    d = 2 if direction == "bidirectional" else 1
    weights = {
        "W": rng.normal(0, 0.4, (d, 4 * hidden, features)),
        "R": rng.normal(0, 0.4, (d, 4 * hidden, hidden)),
        "B": rng.normal(0, 0.2, (d, 8 * hidden)),
    }
    if peepholes:
        weights["P"] = rng.normal(0, 0.3, (d, 3 * hidden))
    initial = None
    if batch is not None:
        initial = {
            "initial_h": rng.normal(0, 0.5, (d, batch, hidden)),
            "initial_c": rng.normal(0, 1, (d, batch, hidden)),
        }
    model = recurrent_model(
        "LSTM", hidden=hidden, features=features, direction=direction, weights=weights, lens=lens,
        initial=initial, outputs=("Y", "Y_h", "Y_c"),
    )  # fmt: skip
    f, q = tmp / "f.onnx", tmp / "q.onnx"
    onnx.save(model, str(f))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantization.quantize_dynamic(
            str(f), str(q), weight_type=getattr(quantization.QuantType, weight_type), per_channel=per_channel
        )
    assert [n.op_type for n in onnx.load(str(q)).graph.node] == ["DynamicQuantizeLSTM"]
    return q


def _kernel(path: Path, feeds: dict[str, np.ndarray], threads: int = 1) -> list[np.ndarray]:
    """The node's Y, Y_h, Y_c from ONNX Runtime itself."""
    model = onnx.load(str(path))
    node = model.graph.node[0]
    del model.graph.output[:]
    for name in node.output[:3]:
        model.graph.output.append(onnx.ValueInfoProto(name=name))
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return list(session.run(None, feeds))


# --------------------------------------------------------------------------- the float64 oracle


def _params(a: np.ndarray) -> tuple[Any, Any]:
    lo, hi = F32(min(a.min(), 0)), F32(max(a.max(), 0))
    scale = F32(1) if lo == hi else F32((hi - lo) / F32(255))
    return scale, np.round(np.clip(-F32(lo / scale), 0, 255))  # np.round: half to even


def _qmatmul(a: np.ndarray, q: np.ndarray, zero: float, scale: np.ndarray) -> np.ndarray:
    s, z = _params(a)
    aq = np.clip(np.round(a.astype(F32) / s) + z, 0, 255)
    return ((aq - z) @ (q.astype(np.float64) - zero)) * (np.float64(s) * scale)


def _oracle(path: Path, x: np.ndarray, lens: np.ndarray | None, y: np.ndarray | None,
            h0: np.ndarray | None = None, c0: np.ndarray | None = None,
            threads: int = 1, edits: dict[tuple[int, int, str], tuple[Any, ...]] | None = None,
            ) -> list[dict[str, np.ndarray]]:  # fmt: skip
    """Per direction: h, c and the gates i, f, g, o (kernel processing order, (time, batch, unit)),
    float64. ``y`` given: fed the kernel's h (teacher-forced), else its own; ``edits``
    ``{(direction, input step, field): (units, factor)}`` scale a state after its step (field
    ``"w"``: the write ``i * g`` before c is formed; ``(units, mode, value)``: set / add / scale)."""
    inits = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer}
    node = onnx.load(str(path)).graph.node[0]
    w, r, b = (inits[n] for n in node.input[1:4])
    ws, wz, rs, rz = (inits[n] for n in node.input[8:12])
    p = inits.get(node.input[7]) if len(node.input) > 7 else None
    direction = next((a.s.decode() for a in node.attribute if a.name == "direction"), "forward")
    t, n, _ = x.shape
    hid = r.shape[1]
    lens = np.full(n, t) if lens is None else lens
    out = []
    for d in range(w.shape[0]):

        def order(a: np.ndarray, d: int = d) -> np.ndarray:  # ReverseSequence, reverse direction
            a = np.array(a)
            if d == 1 or direction == "reverse":
                for i, m in enumerate(lens):
                    a[:m, i] = a[:m, i][::-1]
            return a

        steps = int(lens.max())
        xs = order(x)[:steps]
        scale_w = np.asarray(ws, np.float64).reshape(w.shape[0], -1)[d]
        zero_w = float(np.asarray(wz).reshape(w.shape[0], -1)[d, 0])
        scale_r = np.asarray(rs, np.float64).reshape(w.shape[0], -1)[d]
        zero_r = float(np.asarray(rz).reshape(w.shape[0], -1)[d, 0])
        pre_x = _qmatmul(xs.reshape(-1, xs.shape[2]), w[d], zero_w, scale_w).reshape(steps, n, -1)
        h = np.zeros((n, hid), F32) if h0 is None else h0[d].astype(F32)
        c = np.zeros((n, hid)) if c0 is None else c0[d].astype(np.float64)
        ys = None if y is None else order(y[:, d])
        block = -(-n // threads) if n > 4 or (n >= 2 and hid <= 256) else n
        rec: dict[str, list[np.ndarray]] = {k: [] for k in "hcifgo"}
        for j in range(steps):
            z = pre_x[j] + np.concatenate(
                [_qmatmul(h[s : s + block], r[d], zero_r, scale_r) for s in range(0, n, block)]
            )
            z = z + b[d, : 4 * hid] + b[d, 4 * hid :]
            zi, zo, zf, zg = np.split(z, 4, axis=1)
            if p is not None:
                zi, zf = zi + p[d, :hid] * c, zf + p[d, 2 * hid :] * c
            i, f, g = 1 / (1 + np.exp(-zi)), 1 / (1 + np.exp(-zf)), np.tanh(zg)
            live = (j < lens)[:, None]
            backward = d == 1 or direction == "reverse"
            here = {f: e for (ed, step, f), e in (edits or {}).items()
                    if ed == d and step == (t - 1 - j if backward else j)}  # fmt: skip
            w_new = i * g
            if "w" in here:
                _op(w_new, *here["w"])
            c_new = f * c + w_new
            o = 1 / (1 + np.exp(-(zo + (0 if p is None else p[d, hid : 2 * hid] * c_new))))
            h_new = o * np.tanh(c_new)
            for field, e in here.items():
                if field != "w":
                    _op(h_new if field == "h" else c_new, *e)
            c = np.where(live, c_new, c)
            for k, v in zip("hcifgo", (h_new, c, i, f, g, o)):
                rec[k].append(np.where(live, v, np.nan) if k in "ifgo" else v)
            h = ys[j] if ys is not None else np.where(live, h_new, 0).astype(F32)
        out.append({k: np.stack(v) for k, v in rec.items()})
    return out


def _op(a: np.ndarray, units: Any, *edit: Any) -> None:
    """``a[:, units]`` scaled by ``edit = (factor,)``, or ``edit = (mode, value)`` applied, in place."""
    mode, value = edit if len(edit) == 2 else ("scale", edit[0])
    a[:, units] = value if mode == "set" else a[:, units] + value if mode == "add" else a[:, units] * value


def _input_order(a: np.ndarray, lens: np.ndarray, reverse: bool) -> np.ndarray:
    """(time, batch, unit) processing order → (batch, time, unit) input order, valid steps only."""
    out = np.full((a.shape[1], a.shape[0], a.shape[2]), np.nan)
    for i, m in enumerate(lens):
        out[i, :m] = a[:m, i][::-1] if reverse else a[:m, i]
    return out


# hidden, features, direction, weight type, per channel, input scale, lengths, initial states, peepholes
CASES = [
    (8, 5, "forward", "QInt8", False, 1.0, False, False, False),
    (16, 7, "bidirectional", "QInt8", False, 3.0, False, False, False),
    (32, 4, "bidirectional", "QUInt8", False, 0.3, True, False, False),
    (24, 6, "reverse", "QInt8", True, 2.0, True, True, False),
    (64, 12, "bidirectional", "QInt8", True, "varying", True, True, False),
    (12, 3, "forward", "QInt8", False, "varying", False, True, True),
]


@pytest.mark.parametrize(
    ("hidden", "features", "direction", "wtype", "per_channel", "scale", "lens", "init", "peep"), CASES
)
def test_quantized_lstm_exact(
    tmp_path: Path, hidden: int, features: int, direction: str, wtype: str,
    per_channel: bool, scale: Any, lens: bool, init: bool, peep: bool,
) -> None:  # fmt: skip
    t, n = 9, 6
    rng = np.random.default_rng(hidden)
    path = _quantized(tmp_path, hidden, features, direction, weight_type=wtype, per_channel=per_channel,
                      lens=lens, batch=n if init else None, peepholes=peep)  # fmt: skip
    step_scale = np.geomspace(0.01, 10, t)[:, None, None] if scale == "varying" else scale
    x = (rng.normal(size=(t, n, features)) * step_scale).astype(F32)
    lengths = np.array([9, 4, 1, 9, 7, 6], np.int32) if lens else None
    feeds = {"x": x, **({"lens": lengths} if lens else {})}
    y, y_h, y_c = _kernel(path, feeds)
    states = rnnlens.trace(path, *feeds.values())
    layer = states[rnnlens.describe(path)[0].name]
    every = np.full(n, t) if lengths is None else lengths
    inits = {k.name: numpy_helper.to_array(k) for k in onnx.load(str(path)).graph.initializer}
    h0, c0 = inits.get("initial_h"), inits.get("initial_c")
    teacher = _oracle(path, x, lengths, y, h0, c0)
    free = _oracle(path, x, lengths, None, h0, c0)
    for d, name in enumerate(layer.directions):
        got = getattr(layer, name)
        reverse = name == "backward"
        valid = np.arange(t)[None, :] < every[:, None]
        np.testing.assert_array_equal(got.h[valid], y[:, d].transpose(1, 0, 2)[valid])  # the kernel's own
        last = np.where(reverse, 0, every - 1)
        np.testing.assert_allclose(got.c[np.arange(n), last], y_c[d], rtol=0, atol=1e-6)
        np.testing.assert_array_equal(got.h[np.arange(n), last], y_h[d])
        ref = teacher[d]
        np.testing.assert_allclose(
            got.c[valid], _input_order(ref["c"], every, reverse)[valid], rtol=0, atol=1e-6
        )
        for k, g in zip("ifgo", got.gates.parts):
            np.testing.assert_allclose(
                g[valid], _input_order(ref[k], every, reverse)[valid], rtol=0, atol=1e-6
            )
            assert np.isnan(g[~valid]).all()
        # the loop on its own h reproduces the kernel's Y
        own = _input_order(free[d]["h"], every, reverse)[valid]
        np.testing.assert_allclose(own, y[:, d].transpose(1, 0, 2)[valid], rtol=0, atol=1e-5)


def test_block_per_thread(tmp_path: Path) -> None:
    """With several intra-op threads the kernel quantizes h per block of ceil(batch / threads)
    samples: the emulation follows (rnnlens runs one thread, one block)."""
    path = _quantized(tmp_path, 16, 5, "forward")
    x = np.random.default_rng(3).normal(size=(7, 6, 5)).astype(F32)
    inits = {k.name: numpy_helper.to_array(k) for k in onnx.load(str(path)).graph.initializer}
    node = onnx.load(str(path)).graph.node[0]
    w, r, b = (inits[k] for k in node.input[1:4])
    ws, wz, rs, rz = (inits[k] for k in node.input[8:12])
    sig = lambda z: 1 / (1 + np.exp(-z))  # noqa: E731
    results = {}
    for threads in (1, 2, 3):
        y, _, y_c = _kernel(path, {"x": x}, threads)
        for model_threads in (1, 2, 3):
            try:
                cell = QuantizedCell(
                    QuantizedWeights(w[0], ws, wz), QuantizedWeights(r[0], rs, rz), b[0], None,
                    (sig, np.tanh, np.tanh), threads=model_threads,
                )  # fmt: skip
                h0 = np.zeros((6, 16), F32)
                arrays = quantized_direction(
                    cell, x.transpose(1, 0, 2), y[:, 0].transpose(1, 0, 2), h0, None, None,
                    reverse=False, layer="lstm",
                )  # fmt: skip
            except rnnlens.ParityError:
                results[threads, model_threads] = False
            else:
                assert arrays.c is not None
                np.testing.assert_allclose(arrays.c[:, -1], y_c[0], rtol=0, atol=1e-6)
                results[threads, model_threads] = True
    assert results == {(a, b): a == b for a in (1, 2, 3) for b in (1, 2, 3)}


def test_wrong_arithmetic_is_caught(tmp_path: Path) -> None:
    """The check is tight: the float rebuild with the dequantized weights (what rnnlens did before)
    is refused by it."""
    path = _quantized(tmp_path, 16, 5, "forward")
    x = (np.random.default_rng(4).normal(size=(8, 3, 5)) * 3).astype(F32)
    y, *_ = _kernel(path, {"x": x})
    inits = {k.name: numpy_helper.to_array(k) for k in onnx.load(str(path)).graph.initializer}
    node = onnx.load(str(path)).graph.node[0]
    w, r, b = (inits[k] for k in node.input[1:4])
    ws, wz, rs, rz = (inits[k] for k in node.input[8:12])
    sig = lambda z: 1 / (1 + np.exp(-z))  # noqa: E731
    with pytest.raises(rnnlens.ParityError, match=r"quantized kernel.*MLAS.*fields=\('h',\)"):
        cell = QuantizedCell(  # R's scale off by one part in 100
            QuantizedWeights(w[0], ws, wz),
            QuantizedWeights(r[0], rs * 1.01, rz),
            b[0],
            None,
            (sig, np.tanh, np.tanh),
        )
        quantized_direction(
            cell, x.transpose(1, 0, 2), y[:, 0].transpose(1, 0, 2), np.zeros((3, 16), F32), None, None,
            reverse=False, layer="lstm",
        )  # fmt: skip


def test_spec_and_bad_input(tmp_path: Path) -> None:
    path = _quantized(tmp_path, 8, 3, "bidirectional")
    spec = rnnlens.describe(path)[0]
    assert spec.layer_type == "DynamicQuantizeLSTM" and spec.fields == ("h", "c", "gates")
    assert any("kernel's arithmetic" in note for note in spec.notes)
    x = np.random.default_rng(5).normal(size=(4, 2, 3)).astype(F32)
    with pytest.raises(rnnlens.InputError if hasattr(rnnlens, "InputError") else Exception):
        rnnlens.intervene(path, x[:, :, :2], [rnnlens.Edit(spec.name, 0, scale=0)])


def test_interventions_with_the_kernels_arithmetic(tmp_path: Path) -> None:
    """An edited quantized node runs on its own h as the kernel would: an edit that changes
    nothing gives the kernel's Y; edits give what the float64 loop gives with the same edits."""
    path = _quantized(tmp_path, 16, 5, "bidirectional", per_channel=True)
    name = rnnlens.describe(path)[0].name
    t, n = 8, 3
    x = (np.random.default_rng(6).normal(size=(t, n, 5)) * np.geomspace(0.1, 4, t)[:, None, None]).astype(F32)
    y, *_ = _kernel(path, {"x": x})
    same = rnnlens.intervene(path, x, [rnnlens.Edit(name, 0, scale=1.0)])
    np.testing.assert_allclose(same.outputs[0], y, rtol=0, atol=1e-6)
    traced = rnnlens.trace(path, x)[name]
    np.testing.assert_allclose(same.states[name].c, traced.c, rtol=0, atol=1e-6)
    edits = [
        rnnlens.Edit(name, 3, units=[0, 1], scale=0.0, direction="forward"),
        rnnlens.Edit(name, 5, field="c", scale=0.5, direction="backward"),
    ]
    run = rnnlens.intervene(path, x, edits)
    ref = _oracle(
        path, x, None, None, edits={(0, 3, "h"): ([0, 1], 0.0), (1, 5, "c"): (list(range(16)), 0.5)}
    )
    every = np.full(n, t)
    layer = run.states[name]
    for d, direction in enumerate(("forward", "backward")):
        got = getattr(layer, direction)
        backward = direction == "backward"
        np.testing.assert_allclose(got.h, _input_order(ref[d]["h"], every, backward), rtol=0, atol=1e-5)
        np.testing.assert_allclose(got.c, _input_order(ref[d]["c"], every, backward), rtol=0, atol=1e-5)
        np.testing.assert_allclose(run.outputs[0][:, d], got.h.transpose(1, 0, 2), rtol=0, atol=0)
    assert (layer.forward.h[:, 3, :2] == 0).all()
    assert np.abs(run.outputs[0] - y).max() > 1e-2  # the edits changed the run


def test_two_quantized_layers_one_edited(tmp_path: Path) -> None:
    """A two-layer LSTM quantized: the first edited (rnnlens' quantized loop), the second run by
    ONNX Runtime on what it returns (one thread, as traced) and its c rebuilt with the kernel's
    arithmetic: the batch of 6 is above the size where the kernel splits it per thread."""
    import torch
    from onnx_helpers import export

    torch.manual_seed(0)
    lstm = torch.nn.LSTM(5, 12, num_layers=2).eval()
    export(lstm, (torch.zeros(8, 6, 5),), tmp_path / "f.onnx", dynamic_axes={"x": {0: "t", 1: "b"}})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantization.quantize_dynamic(str(tmp_path / "f.onnx"), str(tmp_path / "q.onnx"))
    path = tmp_path / "q.onnx"
    names = rnnlens.describe(path).names
    assert len(names) == 2
    x = (np.random.default_rng(7).normal(size=(8, 6, 5)) * 2).astype(F32)
    run = rnnlens.intervene(path, x, [rnnlens.Edit(names[0], 2, scale=0.5)])
    second = run.states[names[1]]
    assert second.c.shape == (6, 8, 12)
    plain = rnnlens.trace(path, x)
    assert not np.allclose(second.c, plain[names[1]].c)


@pytest.fixture(scope="module")
def bidirectional_q(tmp_path_factory: Any) -> Path:
    return _quantized(tmp_path_factory.mktemp("q"), 8, 5, "bidirectional", per_channel=True, peepholes=True)


@given(
    st.integers(0, 5), st.sampled_from([0, 1]),
    st.lists(st.integers(0, 7), min_size=1, max_size=3, unique=True),
    st.sampled_from(["set", "add", "scale"]), st.floats(-2, 2, width=32), st.integers(0, 2**16),
    st.booleans(),
)  # fmt: skip
def test_write_edits_with_the_kernels_arithmetic(
    bidirectional_q: Path, step: int, d: int, units: list[int], mode: str, value: float, seed: int, also: bool
) -> None:
    """Edit(target="write") on a quantized LSTM (peepholes: o reads the edited c): what the float64
    loop gives with the same write edited (and a state edit at the same step: after it),
    ``atol = 1e-5`` (measured ≤ 2e-7); the other direction is untouched."""
    path, t, n = bidirectional_q, 6, 3
    name = rnnlens.describe(path)[0].name
    x = np.random.default_rng(seed).normal(size=(t, n, 5)).astype(F32)
    direction = ("forward", "backward")[d]
    edits = [rnnlens.Edit(name, step, field="c", units=units, direction=direction, target="write",
                          **{mode: value})]  # fmt: skip
    want = {(d, step, "w"): (units, mode, value)}
    if also:
        edits.append(rnnlens.Edit(name, step, field="c", units=[1], direction=direction, scale=-1.0))
        want[(d, step, "c")] = ([1], "scale", -1.0)
    run = rnnlens.intervene(path, x, edits)
    ref = _oracle(path, x, None, None, edits=want)
    every = np.full(n, t)
    got = getattr(run.states[name], direction)
    np.testing.assert_allclose(got.h, _input_order(ref[d]["h"], every, d == 1), rtol=0, atol=1e-5)
    np.testing.assert_allclose(got.c, _input_order(ref[d]["c"], every, d == 1), rtol=0, atol=1e-5)
    np.testing.assert_allclose(run.outputs[0][:, d], got.h.transpose(1, 0, 2), rtol=0, atol=0)
    other = getattr(rnnlens.trace(path, x)[name], ("forward", "backward")[1 - d])
    np.testing.assert_allclose(getattr(run.states[name], ("forward", "backward")[1 - d]).h, other.h,
                               rtol=0, atol=1e-6)  # fmt: skip
