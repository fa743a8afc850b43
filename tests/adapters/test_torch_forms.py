"""PyTorch models in the forms people run them (issue 31): inference mode, modules that keep state
on themselves, torch.export programs, torch.compile. Oracle: a loop of nn.LSTMCell / nn.GRUCell
with the module's weights copied (float32, tolerance 1e-5), and the model's own outputs (bitwise
where rnnlens runs the model's own kernel)."""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import pytest

import rnnlens

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

TOL = 1e-5


def cell_loop(m: Any, x: Any) -> dict[str, dict[str, np.ndarray]]:
    """Every layer of a batch_first uni-directional nn.LSTM / nn.GRU stepped through an
    nn.LSTMCell / nn.GRUCell holding that layer's weights: h, c and the gates per layer."""
    lstm = isinstance(m, nn.LSTM)
    out: dict[str, dict[str, np.ndarray]] = {}
    seq = x.detach().clone()
    for layer in range(m.num_layers):
        cell = (nn.LSTMCell if lstm else nn.GRUCell)(seq.shape[-1], m.hidden_size)
        with torch.no_grad():
            for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                getattr(cell, n).copy_(getattr(m, f"{n}_l{layer}"))
        b, t = seq.shape[:2]
        h = torch.zeros(b, m.hidden_size)
        c = torch.zeros(b, m.hidden_size)
        hs, cs, gs = [], [], []
        with torch.no_grad():
            for k in range(t):
                xt = seq[:, k]
                if lstm:
                    z = xt @ cell.weight_ih.T + cell.bias_ih + h @ cell.weight_hh.T + cell.bias_hh
                    u = m.hidden_size
                    gs.append(
                        torch.cat(
                            [z[:, : 2 * u].sigmoid(), z[:, 2 * u : 3 * u].tanh(), z[:, 3 * u :].sigmoid()], -1
                        )
                    )
                    h, c = cell(xt, (h, c))
                    cs.append(c)
                else:
                    h = cell(xt, h)
                hs.append(h)
        seq = torch.stack(hs, 1)
        entry = {"h": seq.numpy()}
        if lstm:
            entry["c"] = torch.stack(cs, 1).numpy()
            entry["gates"] = torch.stack(gs, 1).numpy()
        out[f"l{layer}"] = entry
    return out


def check(states: Any, m: Any, x: Any, prefix: str) -> None:
    """Every layer's h (and c and gates) against the cell loop."""
    want = cell_loop(m, x)
    for layer, fields in want.items():
        name = f"{prefix}.{layer}" if m.num_layers > 1 else prefix
        got = states[name]
        np.testing.assert_allclose(got.h, fields["h"], atol=TOL, err_msg=f"{name} h")
        if "c" in fields:
            np.testing.assert_allclose(got.c, fields["c"], atol=TOL, err_msg=f"{name} c")
            g = np.concatenate([got.gates[k] for k in ("i", "f", "g", "o")], -1)
            np.testing.assert_allclose(g, fields["gates"], atol=TOL, err_msg=f"{name} gates")


class Classifier(nn.Module):
    def __init__(self, cls: Any = nn.LSTM, layers: int = 2) -> None:
        super().__init__()
        self.rnn = cls(3, 4, num_layers=layers, batch_first=True)
        self.fc = nn.Linear(4, 2)

    def forward(self, x: Any) -> Any:
        y, _ = self.rnn(x)
        return self.fc(y[:, -1])


class Stateful(nn.Module):
    """An online model: its recurrent state, a call counter, a history list and a BatchNorm in
    train mode live on the module and move with every call."""

    def __init__(self, carry: bool = True) -> None:
        super().__init__()
        self.carry = carry  # False: the stored state is kept but not read (any batch size)
        self.norm = nn.BatchNorm1d(3)
        self.rnn = nn.LSTM(3, 4, num_layers=2, batch_first=True)
        self.register_buffer("hidden", torch.zeros(2, 2, 4))
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))
        self.cell: Any = torch.zeros(2, 2, 4)
        self.calls = 0
        self.history: list[Any] = []

    def forward(self, x: Any) -> Any:
        x = self.norm(x.transpose(1, 2)).transpose(1, 2)
        y, (h, c) = self.rnn(x, (self.hidden, self.cell) if self.carry else None)
        self.hidden.copy_(h[:, :2])  # in place (a buffer)
        self.cell = c[:, :2]  # rebound (a plain attribute)
        self.steps += x.shape[1]
        self.calls += 1
        self.history.append(float(y.sum()))
        self.new_attribute = True
        return y


def attributes(m: Any) -> dict[str, Any]:
    """Every module's __dict__ as comparable values (tensors copied)."""
    out = {}
    for path, mod in m.named_modules():
        for k, v in vars(mod).items():
            if isinstance(v, torch.Tensor):
                v = v.detach().clone()
            elif isinstance(v, dict):
                v = {kk: vv.detach().clone() if isinstance(vv, torch.Tensor) else vv for kk, vv in v.items()}
            elif isinstance(v, list):
                v = list(v)
            out[f"{path}:{k}"] = v
    return out


def same(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert a.keys() == b.keys(), set(a) ^ set(b)
    for k in a:
        x, y = a[k], b[k]
        if isinstance(x, torch.Tensor):
            assert torch.equal(x, y), k
        elif isinstance(x, dict):
            assert x.keys() == y.keys(), k
            for kk in x:
                if isinstance(x[kk], torch.Tensor):
                    assert torch.equal(x[kk], y[kk]), (k, kk)
                else:
                    assert x[kk] is y[kk] or x[kk] == y[kk], (k, kk)
        else:
            assert x is y or x == y, k


def _x(seed: int = 0, batch: int = 2) -> Any:
    return torch.from_numpy(np.random.default_rng(seed).normal(size=(batch, 5, 3)).astype("float32"))


# ------------------------------------------------------------------------- inference mode


def test_inference_tensors_and_calls_inside_inference_mode() -> None:
    torch.manual_seed(0)
    m = Classifier()
    x = _x()
    with torch.inference_mode():
        xi = x.clone()
    check(rnnlens.trace(m, xi, fields=None), m.rnn, x, "rnn")
    with torch.inference_mode():
        states = rnnlens.trace(m, x, fields=None)
        inside_i = rnnlens.trace(m, xi, fields=None)
    check(states, m.rnn, x, "rnn")
    check(inside_i, m.rnn, x, "rnn")


def test_inference_mode_intervene_record_ablation_extract(tmp_path: Any) -> None:
    torch.manual_seed(1)
    m = Classifier()
    x = _x(1)
    with torch.inference_mode():
        xi = x.clone()
    edit = rnnlens.Edit("rnn.l0", 2, units=[1], set=0.0)
    plain = rnnlens.intervene(m, x, edit)
    with torch.inference_mode():
        inside = rnnlens.intervene(m, xi, edit)
    np.testing.assert_array_equal(inside.outputs, plain.outputs)
    np.testing.assert_array_equal(rnnlens.intervene(m, xi, edit).outputs, plain.outputs)
    for name in ("rnn.l0", "rnn.l1"):
        np.testing.assert_array_equal(inside.states[name].h, plain.states[name].h)

    with torch.inference_mode(), rnnlens.record(m) as rec:
        m(xi)
    np.testing.assert_allclose(rec.states["rnn.l1"].h, rnnlens.trace(m, x)["rnn.l1"].h, atol=TOL)

    metric = lambda out: float(np.asarray(out).sum())  # noqa: E731
    with torch.inference_mode():
        scan = rnnlens.ablation_scan(m, xi, "rnn.l0", metric)
    ref = rnnlens.ablation_scan(m, x, "rnn.l0", metric)
    np.testing.assert_array_equal(scan.effect, ref.effect)

    with torch.inference_mode():
        rnnlens.extract_to(tmp_path / "s", m, xi.numpy(), fields=None, batch_size=2)
    stored = rnnlens.open_states(tmp_path / "s")
    check(stored, m.rnn, x, "rnn")


def test_rnnlens_own_failures_are_not_blamed_on_the_arguments(monkeypatch: Any) -> None:
    from rnnlens.adapters.torch_ import record

    def broken(self: Any, obj: Any) -> Any:
        return record._hx_slice(obj, "x", 1)  # a TypeError raised in rnnlens' own code

    monkeypatch.setattr(record._Recorder, "keep", broken)
    with pytest.raises(rnnlens.errors.RnnLensError) as info:
        rnnlens.trace(Classifier(), _x())
    assert not isinstance(info.value, rnnlens.errors.InputError)
    assert "defect in rnnlens" in str(info.value)


# ------------------------------------------------------------------------- the model is never changed


@pytest.mark.parametrize("call", ["trace", "intervene", "ablation_scan", "extract_to", "error"])
def test_state_kept_on_the_module_is_put_back(call: str, tmp_path: Any) -> None:
    torch.manual_seed(2)
    m = Stateful(carry=call != "ablation_scan").train()
    x = _x(2)
    with torch.no_grad():
        m(x)  # it has moved once already
        want = copy.deepcopy(m)(x)
    before = attributes(m)
    if call == "trace":
        states = rnnlens.trace(m, x, fields=None)
        assert set(states) == {"rnn.l0", "rnn.l1"}
    elif call == "intervene":
        rnnlens.intervene(m, x, rnnlens.Edit("rnn.l1", 1, set=0.0))
    elif call == "ablation_scan":
        rnnlens.ablation_scan(m, x.numpy(), "rnn.l0", lambda out: float(np.asarray(out).sum()))
    elif call == "extract_to":
        rnnlens.extract_to(tmp_path / "s", m, x.numpy(), batch_size=2)
    else:
        with pytest.raises(rnnlens.errors.RnnLensError):
            rnnlens.trace(m, x[:1])  # the stored state has batch 2: the forward fails midway
    same(attributes(m), before)
    assert m.training and m.norm.training
    with torch.no_grad():
        assert torch.equal(m(x), want)  # its next prediction is the one it would have made


@pytest.mark.parametrize("weights", ["copied", "over the limit"])
def test_an_in_place_change_to_a_parameter_is_put_back_or_an_error(weights: str, monkeypatch: Any) -> None:
    from rnnlens.adapters.torch_ import unchanged

    class Drifting(Classifier):
        def forward(self, x: Any) -> Any:
            self.fc.bias.add_(1.0)
            self.rnn.weight_hh_l0.mul_(0.5)  # the recurrence itself moves as it runs
            return super().forward(x)

    torch.manual_seed(4)
    m, x = Drifting(), _x()
    params = {k: v.detach().clone() for k, v in m.named_parameters()}
    if weights == "over the limit":  # weights too large to copy: found after the run, an error
        monkeypatch.setattr(unchanged, "PARAM_COPY_LIMIT", 0)
        with pytest.raises(rnnlens.errors.UnsupportedModelError, match=r"fc\.bias.*rnn\.weight_hh_l0|0 MiB"):
            rnnlens.trace(m, x)
        return
    for run in (
        lambda: rnnlens.trace(m, x),
        lambda: rnnlens.intervene(m, x, rnnlens.Edit("rnn.l0", 1, set=0.0)),
    ):
        run()
        for k, v in m.named_parameters():
            assert torch.equal(v, params[k]), k  # bitwise as before
    # the states are those of the run the model made (its recurrence halved first)
    drifted = copy.deepcopy(m)
    with torch.no_grad():
        drifted.rnn.weight_hh_l0.mul_(0.5)
        want, _ = drifted.rnn(x)
    np.testing.assert_allclose(
        rnnlens.trace(m, x, fields=("h",))["rnn.l1"].h, want.numpy(), rtol=1e-5, atol=1e-6
    )


# ------------------------------------------------------------------------- torch.export


class Stack(nn.Module):
    """An LSTM (2 layers), a GRU fed by it and an RNN inside a submodule: every recurrent op."""

    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(3, 4, num_layers=2, batch_first=True)
        self.head = nn.ModuleDict(
            {"gru": nn.GRU(4, 3, batch_first=True), "rnn": nn.RNN(3, 2, batch_first=True)}
        )

    def forward(self, x: Any) -> Any:
        y, _ = self.lstm(x)
        z, _ = self.head["gru"](y)
        w, _ = self.head["rnn"](z)
        return w


def _export(m: Any, x: Any) -> Any:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.export's note on nn.LSTM's _flat_weights
        return torch.export.export(m, (x,))


def _check_stack(states: Any, m: Stack, x: Any) -> None:
    assert list(states) == ["lstm.l0", "lstm.l1", "head.gru", "head.rnn"]
    check(states, m.lstm, x, "lstm")
    check(states, m.head["gru"], torch.from_numpy(np.asarray(states["lstm.l1"].h)), "head.gru")
    with torch.no_grad():
        want = m(x).numpy()
    np.testing.assert_allclose(states["head.rnn"].h, want, atol=TOL)


@pytest.mark.parametrize("form", ["program", "module", "file"])
def test_an_exported_program_is_traced_node_by_node(form: str, tmp_path: Any) -> None:
    torch.manual_seed(3)
    m = Stack().eval()
    x = _x(3)
    ep = _export(m, x)
    if form == "module":
        model: Any = ep.module()
    elif form == "file":
        torch.export.save(ep, tmp_path / "m.pt2")
        with pytest.raises(rnnlens.errors.ModelFileError, match="unsafe=True"):
            rnnlens.load_model(tmp_path / "m.pt2")
        model = rnnlens.load_model(tmp_path / "m.pt2", unsafe=True)
    else:
        model = ep
    before = attributes(model.module() if form != "module" else model)
    states = rnnlens.trace(model, x, fields=None)
    _check_stack(states, m, x)
    if form == "module":
        same(attributes(model), before)
        assert model.training  # an exported module refuses eval(); its flag is left as it was
    assert [s.name for s in rnnlens.describe(model)] == list(states)
    assert [(s.kind, s.units, s.directions) for s in rnnlens.describe(model)] == [
        (s.kind, s.units, s.directions) for s in rnnlens.describe(m)
    ]
    some = rnnlens.trace(model, x, layers=["lstm.l0", "head.gru"], fields=("h", "gates"))
    assert list(some) == ["lstm.l0", "head.gru"]
    np.testing.assert_array_equal(some["lstm.l0"].gates.array, states["lstm.l0"].gates.array)
    np.testing.assert_allclose(some["head.gru"].h, states["head.gru"].h, atol=TOL)  # oneDNN vs emit below
    with pytest.raises(rnnlens.errors.LayerNotFoundError, match=r"head\.gru"):
        rnnlens.trace(model, x, layers="head.gr")
    if form == "file":
        with pytest.raises(rnnlens.errors.ModelFileError, match="unsafe=True"):
            rnnlens.trace(tmp_path / "m.pt2", x)  # a path is opened in safe mode
        from rnnlens.cli import main

        assert main(["inspect", str(tmp_path / "m.pt2")]) == 2
        assert main(["inspect", str(tmp_path / "m.pt2"), "--unsafe"]) == 0


def test_an_exported_bidirectional_stack_and_a_bare_module() -> None:
    torch.manual_seed(4)
    lstm = nn.LSTM(3, 4, num_layers=2, bidirectional=True)
    x = torch.randn(5, 2, 3)
    states = rnnlens.trace(_export(lstm, x), x, fields=None)
    want = rnnlens.trace(lstm, x, fields=None)
    assert list(states) == list(want) == ["lstm.l0", "lstm.l1"]
    for name in want:
        for f in ("h", "c"):
            np.testing.assert_array_equal(getattr(states[name], f), getattr(want[name], f))
        np.testing.assert_array_equal(states[name].gates.array, want[name].gates.array)


def test_an_unrolled_program_is_refused_saying_how_to_export_it() -> None:
    m = Classifier()
    ep = _export(m, _x()).run_decompositions()
    with pytest.raises(rnnlens.errors.UnsupportedLayerError, match="run_decompositions"):
        rnnlens.trace(ep, _x())


def test_interventions_on_an_exported_program() -> None:
    """Edits on the program's op nodes give what the same edits give on the module exported."""
    torch.manual_seed(6)
    m = Stack().eval()
    x = _x(6)
    ep = _export(m, x)
    edits = [rnnlens.Edit("lstm.l0", 2, units=[1], set=0.0), rnnlens.Edit("head.gru", slice(1, 4), scale=0.5)]
    got = rnnlens.intervene(ep, x, edits)
    want = rnnlens.intervene(m, x, edits)
    np.testing.assert_allclose(got.outputs, want.outputs, atol=TOL)
    assert list(got.states) == list(want.states)
    for name in want.states:
        np.testing.assert_allclose(got.states[name].h, want.states[name].h, atol=TOL)
    with torch.no_grad():
        assert np.abs(got.outputs - m(x).numpy()).max() > 1e-3  # the edits took


# ------------------------------------------------------------------------- torch.compile


def test_a_compiled_module_is_traced_through_the_module_it_wraps() -> None:
    import time

    torch.manual_seed(5)
    m = Classifier(nn.GRU)
    compiled = torch.compile(m)
    x = _x(5)
    start = time.perf_counter()
    states = rnnlens.trace(compiled, x, fields=None)
    seconds = time.perf_counter() - start
    assert list(states) == ["rnn.l0", "rnn.l1"]  # no "_orig_mod." prefix
    check(states, m.rnn, x, "rnn")
    assert seconds < 5  # Dynamo compiles nothing (measured 35-75 s when it compiled the step loop)
    assert rnnlens.describe(compiled) == rnnlens.describe(m)
    edited = rnnlens.intervene(compiled, x, rnnlens.Edit("rnn.l1", 2, set=0.0))
    np.testing.assert_array_equal(
        edited.outputs, rnnlens.intervene(m, x, rnnlens.Edit("rnn.l1", 2, set=0.0)).outputs
    )
    from rnnlens.adapters.torch_ import TorchAdapter

    assert TorchAdapter().model_digest(compiled) == TorchAdapter().model_digest(m)


# ------------------------------------------------------------------------- what was found


class Scriptable(Classifier):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y, _ = self.rnn(x)
        return self.fc(y[:, -1])


@pytest.mark.parametrize("how", ["script", "trace"])
def test_a_quantized_torchscript_is_refused_naming_what_is_quantized(how: str, tmp_path: Any) -> None:
    import warnings

    m = Scriptable(layers=1).eval()
    x = _x()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q = torch.ao.quantization.quantize_dynamic(m, {nn.LSTM, nn.Linear}, dtype=torch.qint8)
        scripted = torch.jit.script(q) if how == "script" else torch.jit.trace(q, (x,))
    torch.jit.save(scripted, tmp_path / "q.pt")
    loaded = rnnlens.load_model(tmp_path / "q.pt", unsafe=True)
    for model in (scripted, loaded):
        with pytest.raises(rnnlens.errors.UnsupportedModelError) as info:
            rnnlens.trace(model, x)
        message = str(info.value)
        assert "quantized" in message and "rnn (LSTM)" in message and "fc (Linear)" in message
        assert "aten::quantized_lstm" in message
        assert "float model from before quantization" in message
        with pytest.raises(rnnlens.errors.UnsupportedModelError, match="before quantization"):
            rnnlens.intervene(model, x, rnnlens.Edit("rnn", 0, set=0.0))


def test_recording_a_compiled_module_and_refusing_to_record_a_program() -> None:
    import time

    torch.manual_seed(7)
    m = Classifier()
    compiled = torch.compile(m)
    x = _x(7)
    start = time.perf_counter()
    with rnnlens.record(compiled) as rec:
        out = compiled(x)
    assert time.perf_counter() - start < 5  # nothing compiled while recording
    with torch.no_grad():
        assert torch.equal(out, m(x))
    assert list(rec.states) == ["rnn.l0", "rnn.l1"]
    for name in rec.states:
        np.testing.assert_allclose(rec.states[name].h, rnnlens.trace(m, x)[name].h, atol=TOL)
    program = _export(m, x)
    with (
        pytest.raises(rnnlens.errors.UnsupportedModelError, match="Trace each call"),
        rnnlens.record(program),
    ):
        pass


def test_state_made_under_inference_mode_is_put_back() -> None:
    m = Stateful().eval()
    x = _x(8)
    with torch.inference_mode():
        m(x)  # self.cell is now an inference tensor
        before = attributes(m)
        rnnlens.trace(m, x)
        same(attributes(m), before)
    same(attributes(m), before)


def test_an_exported_program_extracted_resumed_and_scanned(tmp_path: Any) -> None:
    torch.manual_seed(9)
    m = Stack().eval()
    x = _x(9)
    ep = _export(m, x)
    for _ in range(2):  # the second run resumes: the program's digest is the same
        rnnlens.extract_to(tmp_path / "s", ep, x.numpy(), fields=None, batch_size=2)
    _check_stack(rnnlens.open_states(tmp_path / "s"), m, x)
    metric = lambda out: float(np.asarray(out).sum())  # noqa: E731
    scan = rnnlens.ablation_scan(ep, x.numpy(), "lstm.l1", metric, group=1)  # the exported batch
    np.testing.assert_allclose(
        scan.effect, rnnlens.ablation_scan(m, x.numpy(), "lstm.l1", metric).effect, atol=TOL
    )
    with pytest.raises(rnnlens.errors.InputError, match="dynamic_shapes"):
        rnnlens.trace(ep, x[:1])  # exported for a batch of 2
