"""PyTorch ``quantize_dynamic`` LSTM / GRU layers, traced: against the module's own outputs (every
layer's h, h_n, c_n) and an independent float64 loop that emulates fbgemm's dynamic quantized
linear (ChooseQuantizationParams with reduce_range, fma quantization, int32 products, fma
dequantization with the bias) step by step, fed the module's own h.

Measured (x86 engine = fbgemm on this CPU): the emulated linear is bitwise the kernel's
``linear_dynamic``; rnnlens' h is bitwise the module's; its c and gates against the float64
emulation ≤ 2.4e-7 (LSTM c), ≤ 1.2e-7 (gates); the loop's h against the kernel's: 0 (bitwise).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from functools import cache

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

torch = pytest.importorskip("torch")

import rnnlens  # noqa: E402
from rnnlens.cli.command import main  # noqa: E402

F32 = np.float32


@pytest.fixture(autouse=True)
def _x86_engine() -> Iterator[None]:
    before = torch.backends.quantized.engine
    if "x86" in torch.backends.quantized.supported_engines:
        torch.backends.quantized.engine = "x86"
    yield
    torch.backends.quantized.engine = before


def _quantize(model: torch.nn.Module, spec: object = None, dtype: object = None) -> torch.nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.ao.quantization.quantize_dynamic(
            model.eval(), spec or {torch.nn.LSTM, torch.nn.GRU}, dtype=dtype or torch.qint8
        )


# ---------------------------------------------------------------- the independent float64 emulation


def _qparams(a: np.ndarray, reduce_range: bool) -> tuple[np.float32, int]:
    """fbgemm / ATen ``ChooseQuantizationParams`` for uint8 (``reduce_range``: 0..127)."""
    qmin, qmax = 0, 127 if reduce_range else 255
    lo, hi = min(float(a.min()), 0.0), max(float(a.max()), 0.0)
    scale = (hi - lo) / (qmax - qmin)
    if F32(scale) == 0 or np.isinf(F32(1) / F32(scale)):
        scale = 0.1
    assert scale >= 6.1e-5  # (the small-scale cut-off branch is not exercised here)
    z_min, z_max = qmin - lo / scale, qmax - hi / scale
    z = z_min if abs(qmin) - abs(lo / scale) < abs(qmax) - abs(hi / scale) else z_max
    return F32(scale), int(min(max(np.rint(z), qmin), qmax))


def _linear(a: np.ndarray, packed: object, reduce_range: bool) -> np.ndarray:
    """fbgemm's dynamic linear: ``a`` quantized with its own parameters, exact integer product
    with the int8 weights, dequantized (``fma(acc, scale_a * scale_w, bias)``) to float32."""
    w, b = packed.__getstate__()[0]  # type: ignore[attr-defined]
    a = np.asarray(a, F32).reshape(-1, a.shape[-1])
    scale, zero = _qparams(a, reduce_range)
    t = (a.astype(np.float64) * np.float64(F32(1) / scale) + zero).astype(F32)  # fma, then round
    q = np.clip(np.rint(t), 0, 255) - zero
    if w.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric):
        w_scale = w.q_per_channel_scales().numpy().astype(F32)
        w_zero = w.q_per_channel_zero_points().numpy()[:, None]
    else:
        w_scale, w_zero = F32(w.q_scale()), w.q_zero_point()
    acc = q @ (w.int_repr().numpy().astype(np.float64) - w_zero).T  # exact: small integers
    m = (scale * w_scale).astype(F32)
    return (acc * m.astype(np.float64) + b.detach().numpy().astype(np.float64)).astype(F32)


def _sig(v: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-v))


def _emulate(module: object, layer: int, d: int, x: np.ndarray, h_seq: np.ndarray, h0: np.ndarray,
             edit_write: object = None) -> dict:  # fmt: skip
    """One direction of one layer, (time, sample, ...) ``x``, fed the kernel's ``h_seq``: the
    float64 cell on the emulated quantized linears. Returns h, c and the gates (canonical order).
    ``edit_write(s, w) -> w`` replaces what step ``s`` writes (LSTM ``i * g``, GRU ``(1 − z) n``)."""
    state = module._all_weight_values[layer * (2 if module.bidirectional else 1) + d].param.__getstate__()[0]  # type: ignore[attr-defined]
    reduce_range = bool(state[3][0])
    w_ih, w_hh = state[4]
    t_len, n = x.shape[:2]
    hid = module.hidden_size  # type: ignore[attr-defined]
    x_proj = _linear(x, w_ih, reduce_range).reshape(t_len, n, -1).astype(np.float64)
    lstm = type(module).__name__ == "LSTM"
    out = {
        "h": np.zeros((t_len, n, hid)),
        "c": np.zeros((t_len, n, hid)),
        "gates": np.zeros((4 if lstm else 3, t_len, n, hid)),
    }
    c = np.zeros((n, hid))
    order = range(t_len - 1, -1, -1) if d else range(t_len)
    prev = h0
    for s in order:
        hg = _linear(prev, w_hh, reduce_range).astype(np.float64)
        if lstm:
            pre = hg + x_proj[s]
            i, f, g, o = (
                _sig(pre[:, :hid]),
                _sig(pre[:, hid : 2 * hid]),
                np.tanh(pre[:, 2 * hid : 3 * hid]),
                _sig(pre[:, 3 * hid :]),
            )
            w = i * g if edit_write is None else edit_write(s, i * g)  # type: ignore[operator]
            c = f * c + w
            h = o * np.tanh(c)
            gates = (i, f, g, o)
            out["c"][s] = c
        else:
            r = _sig(x_proj[s][:, :hid] + hg[:, :hid])
            z = _sig(x_proj[s][:, hid : 2 * hid] + hg[:, hid : 2 * hid])
            nn_ = np.tanh(x_proj[s][:, 2 * hid :] + r * hg[:, 2 * hid :])
            w = (1 - z) * nn_ if edit_write is None else edit_write(s, (1 - z) * nn_)  # type: ignore[operator]
            h = w + z * prev
            gates = (z, r, nn_)
        out["h"][s] = h
        for k, g_ in enumerate(gates):
            out["gates"][k, s] = g_
        prev = h_seq[s]  # the kernel's own h feeds the next step
    return out


def test_emulated_linear_is_the_kernels() -> None:
    """The float64 emulation of fbgemm's dynamic linear is bitwise ``quantized::linear_dynamic``
    (so the oracle below is the kernel's arithmetic), per tensor and per channel, over input
    ranges from 1e-3 to 1e2."""
    if torch.backends.quantized.engine not in ("x86", "fbgemm"):
        pytest.skip("the emulation is fbgemm's")
    rng = np.random.default_rng(0)
    for spec in ({torch.nn.LSTM}, {torch.nn.LSTM: torch.ao.quantization.per_channel_dynamic_qconfig}):
        for trial in range(6):
            torch.manual_seed(trial)
            module = _quantize(torch.nn.Sequential(torch.nn.LSTM(7, 12)), spec)[0]
            state = module._all_weight_values[0].param.__getstate__()[0]
            x = torch.from_numpy(
                (rng.standard_normal((5, 7)) * 10 ** rng.uniform(-3, 2) + rng.uniform(-1, 1)).astype(F32)
            )
            for packed in state[4]:
                a = x if packed is state[4][0] else x[:, :1].expand(5, 12).contiguous() * 0.7
                own = torch.ops.quantized.linear_dynamic(a, packed, True).numpy()
                np.testing.assert_array_equal(_linear(a.numpy(), packed, True), own)


class Stack(torch.nn.Module):
    """A word-language-model's recurrent part: a stacked BiLSTM then a GRU, batch-first."""

    def __init__(self, bidirectional: bool = True) -> None:
        super().__init__()
        self.lstm = torch.nn.LSTM(5, 12, num_layers=2, bidirectional=bidirectional, batch_first=True)
        self.gru = torch.nn.GRU(12 * (2 if bidirectional else 1), 7, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y, _ = self.lstm(x)
        return self.gru(y)[0]


@pytest.mark.parametrize("bidirectional", [True, False])
@pytest.mark.parametrize("scale", [0.05, 3.0])
def test_every_field_against_the_module_and_the_emulation(bidirectional: bool, scale: float) -> None:
    torch.manual_seed(0)
    model = _quantize(Stack(bidirectional))
    # per-step ranges that vary a lot: a few steps 50x the rest
    x = torch.randn(3, 9, 5) * scale
    x[:, 2] *= 50
    before = {k: v for k, v in model.state_dict().items()}
    states = rnnlens.trace(model, x)
    assert "forward" not in vars(model.lstm) and model.state_dict().keys() == before.keys()
    with torch.no_grad():
        y, (h_n, c_n) = model.lstm(x)
        g = model.gru(y)[0]
    np.testing.assert_array_equal(states["lstm.l1"].h, y.numpy())
    np.testing.assert_array_equal(states["gru"].h, g.numpy())
    n_dir = 2 if bidirectional else 1
    for layer in range(2):
        st = states[f"lstm.l{layer}"]
        for d in range(n_dir):
            last = -1 if d == 0 else 0
            sl = slice(d * 12, (d + 1) * 12)
            np.testing.assert_array_equal(st.h[:, last, sl], h_n[layer * n_dir + d].numpy())
            np.testing.assert_array_equal(st.c[:, last, sl], c_n[layer * n_dir + d].numpy())
    # the float64 emulation, layer by layer, fed the traced (= kernel) h
    inp = x.numpy().transpose(1, 0, 2)
    for layer in range(2):
        st = states[f"lstm.l{layer}"]
        for d in range(n_dir):
            sl = slice(d * 12, (d + 1) * 12)
            h_seq = st.h[:, :, sl].transpose(1, 0, 2)
            ref = _emulate(model.lstm, layer, d, inp, h_seq, np.zeros((3, 12), F32))
            np.testing.assert_allclose(ref["h"], h_seq, rtol=0, atol=1e-6)
            np.testing.assert_allclose(st.c[:, :, sl], ref["c"].transpose(1, 0, 2), rtol=1e-6, atol=1e-6)
            for k, name in enumerate("ifgo"):
                np.testing.assert_allclose(
                    st.gates[name][:, :, sl], ref["gates"][k].transpose(1, 0, 2), rtol=0, atol=1e-6
                )
        inp = st.h.transpose(1, 0, 2)
    gst = states["gru"]
    ref = _emulate(model.gru, 0, 0, inp, gst.h.transpose(1, 0, 2), np.zeros((3, 7), F32))
    np.testing.assert_allclose(ref["h"], gst.h.transpose(1, 0, 2), rtol=0, atol=1e-6)
    for k, name in enumerate("zrn"):
        np.testing.assert_allclose(gst.gates[name], ref["gates"][k].transpose(1, 0, 2), rtol=0, atol=1e-6)


def test_given_state_and_layers() -> None:
    torch.manual_seed(1)
    model = _quantize(torch.nn.Sequential(torch.nn.LSTM(4, 6, num_layers=2)))
    x = torch.randn(8, 2, 4)
    hx = (torch.randn(2, 2, 6), torch.randn(2, 2, 6))

    class Call(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.rnn = model[0]

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.rnn(x, hx)[0]

    wrapper = Call()
    states = rnnlens.trace(wrapper, x, layers="rnn.l0")
    with torch.no_grad():
        own = torch.quantized_lstm(
            x,
            (hx[0][:1], hx[1][:1]),
            [p.param for p in model[0]._all_weight_values][:1],
            True,
            1,
            0.0,
            False,
            False,
            False,
            dtype=torch.qint8,
            use_dynamic=True,
        )
    np.testing.assert_array_equal(states["rnn.l0"].h, own[0].numpy().transpose(1, 0, 2))
    np.testing.assert_array_equal(states["rnn.l0"].c[:, -1], own[2][0].numpy())


def test_edits() -> None:
    """A no-op edit: the edited run (rnnlens' loop on its own states) is bitwise the module's own
    run. An edit at step 3: steps 0-2 unchanged, and steps 4.. are the emulated kernel's from the
    edited state (float64 emulation fed the edited run's h; within 1e-6)."""
    torch.manual_seed(2)
    for cls in (torch.nn.LSTM, torch.nn.GRU):
        model = _quantize(torch.nn.Sequential(cls(4, 6)))
        x = torch.randn(9, 2, 4)
        with torch.no_grad():
            own = model(x)[0].numpy()
        same = rnnlens.intervene(model, x, [rnnlens.Edit("0", 3, scale=1.0)])
        np.testing.assert_array_equal(np.asarray(same.outputs[0]), own)
        np.testing.assert_array_equal(same.states["0"].h, own.transpose(1, 0, 2))
        result = rnnlens.intervene(model, x, [rnnlens.Edit("0", 3, scale=0.0, units=[1, 4])])
        edited = result.states["0"]
        np.testing.assert_array_equal(edited.h[:, :3], own.transpose(1, 0, 2)[:, :3])
        assert (edited.h[:, 3][:, [1, 4]] == 0).all() and (
            edited.h[:, 4:] != own.transpose(1, 0, 2)[:, 4:]
        ).any()
        np.testing.assert_array_equal(np.asarray(result.outputs[0]), edited.h.transpose(1, 0, 2))
        ref = _emulate(model[0], 0, 0, x.numpy(), edited.h.transpose(1, 0, 2), np.zeros((2, 6), F32))
        np.testing.assert_allclose(ref["h"][4:], edited.h.transpose(1, 0, 2)[4:], rtol=0, atol=1e-6)
        if cls is torch.nn.LSTM:
            np.testing.assert_allclose(ref["c"], edited.c.transpose(1, 0, 2), rtol=0, atol=1e-6)


@given(st.sampled_from(["LSTM", "GRU"]), st.integers(0, 6), st.sampled_from(["set", "add", "scale"]),
       st.floats(-2, 2, width=32), st.lists(st.integers(0, 5), min_size=1, max_size=3, unique=True),
       st.integers(0, 2**16))  # fmt: skip
def test_write_edits(cls: str, step: int, mode: str, value: float, units: list[int], seed: int) -> None:
    """Edit(target="write"): the float64 emulation with that step's write edited, fed the edited
    run's h (within 1e-6, as the state edits; measured ≤ 8e-8); steps before it bitwise the
    module's; the model's outputs are the edited run's."""
    model = _model(cls)
    x = torch.from_numpy(np.random.default_rng(seed).normal(size=(7, 2, 4)).astype(F32))
    with torch.no_grad():
        own = model(x)[0].numpy().transpose(1, 0, 2)
    field = "c" if cls == "LSTM" else "h"
    run = rnnlens.intervene(model, x, [rnnlens.Edit("0", step, field=field, units=units, target="write",
                                                    **{mode: value})])  # fmt: skip
    edited = run.states["0"]
    np.testing.assert_array_equal(edited.h[:, :step], own[:, :step])
    np.testing.assert_array_equal(np.asarray(run.outputs[0]), edited.h.transpose(1, 0, 2))

    def edit_write(s: int, w: np.ndarray) -> np.ndarray:
        if s == step:
            w = w.copy()
            part = w[:, units]
            w[:, units] = value if mode == "set" else part + value if mode == "add" else part * value
        return w

    ref = _emulate(model[0], 0, 0, x.numpy(), edited.h.transpose(1, 0, 2), np.zeros((2, 6), F32), edit_write)
    np.testing.assert_allclose(ref["h"], edited.h.transpose(1, 0, 2), rtol=0, atol=1e-6)
    if cls == "LSTM":
        np.testing.assert_allclose(ref["c"], edited.c.transpose(1, 0, 2), rtol=0, atol=1e-6)


@cache
def _model(cls: str) -> torch.nn.Module:
    torch.manual_seed(3)
    return _quantize(torch.nn.Sequential(getattr(torch.nn, cls)(4, 6)))


def test_float16_weights_and_other_engines() -> None:
    """``dtype=torch.float16`` (fp16 packed weights) and the QNNPACK / oneDNN engines: the loop
    runs the module's own ops, so the parity check holds whatever the engine."""
    torch.manual_seed(3)
    x = torch.randn(6, 2, 4) * 2
    engines = [e for e in ("qnnpack", "onednn") if e in torch.backends.quantized.supported_engines]
    cases = [(None, torch.float16)] + [(e, torch.qint8) for e in engines]
    for engine, dtype in cases:
        if engine is not None:
            torch.backends.quantized.engine = engine
        model = _quantize(
            torch.nn.Sequential(torch.nn.LSTM(4, 5, num_layers=2, bidirectional=True)), dtype=dtype
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # QNNPACK warns that it ignores reduce_range
            states = rnnlens.trace(model, x)
            with torch.no_grad():
                own = model(x)[0]
        np.testing.assert_array_equal(states["0.l1"].h, own.numpy().transpose(1, 0, 2))
        assert np.isfinite(states["0.l0"].c).all()


def test_packed_input_h_only() -> None:
    from torch.nn.utils.rnn import pack_padded_sequence

    torch.manual_seed(4)
    model = _quantize(torch.nn.Sequential(torch.nn.LSTM(3, 4, num_layers=2)))
    packed = pack_padded_sequence(torch.randn(5, 3, 3), [5, 4, 2])
    states = rnnlens.trace(model, packed, fields=("h",))
    assert states["0.l0"].h.shape == (3, 5, 4) and states.mask is not None
    with pytest.raises(rnnlens.UnsupportedLayerError, match=r"PackedSequence.*fields=\('h',\)"):
        rnnlens.trace(model, packed)


def test_describe_and_digest() -> None:
    torch.manual_seed(5)
    model = _quantize(Stack())
    specs = rnnlens.describe(model)
    assert [s.name for s in specs] == ["lstm.l0", "lstm.l1", "gru"]
    assert all("quantize_dynamic" in " ".join(s.notes) for s in specs)
    from rnnlens.adapters.torch_ import TorchAdapter

    digest = TorchAdapter().model_digest(model)
    torch.manual_seed(5)
    assert TorchAdapter().model_digest(_quantize(Stack())) == digest  # from the weights, not addresses
    torch.manual_seed(6)
    assert TorchAdapter().model_digest(_quantize(Stack())) != digest


class Loop(torch.nn.Module):
    """A hand-written loop over an LSTMCell."""

    def __init__(self) -> None:
        super().__init__()
        self.cell = torch.nn.LSTMCell(3, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = c = torch.zeros(x.shape[1], 4)
        for t in range(x.shape[0]):
            h, c = self.cell(x[t], (h, c))
        return h


def test_quantized_cells_still_refused(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    """quantize_dynamic's cells are not stepped by rnnlens: refused by name, CLI too."""
    model = _quantize(Loop(), {torch.nn.LSTMCell})
    with pytest.raises(rnnlens.UnsupportedLayerError, match=r"'cell' \(torch.ao.nn.quantized.dynamic"):
        rnnlens.trace(model, torch.randn(4, 2, 3))
    path = tmp_path / "q.pt"
    torch.save(model, path)
    assert main(["inspect", str(path), "--unsafe"]) != 0
    err = capsys.readouterr().err
    assert "quantized recurrent module" in err and "Traceback" not in err


def test_record_a_stream() -> None:
    """rnnlens.record on a quantized module called step by step: the calls joined, h the module's."""
    torch.manual_seed(7)
    model = _quantize(torch.nn.Sequential(torch.nn.LSTM(3, 4, num_layers=2)))
    x = torch.randn(6, 2, 3)
    with rnnlens.record(model) as rec, torch.no_grad():
        first = model[0](x[:3])
        second = model[0](x[3:], first[1])
    states = rec.states
    assert states["0.l0"].c.shape == (2, 6, 4)
    np.testing.assert_array_equal(states["0.l1"].h[:, 3:], second[0].numpy().transpose(1, 0, 2))
