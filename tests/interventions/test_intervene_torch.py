"""rnnlens.intervene on PyTorch modules against the independent NumPy reference with the same edits.

Tolerances
----------
* Real edits against :func:`rnnlens.testing.reference_rnn` (float64, step by step, the edit
  applied after the step): ``rtol=1e-4, atol=1e-5`` for float32 (≤ 6 units, ≤ 7 steps, 2 layers).
* A no-op edit (``add=0``) against the module's own outputs: ``atol=1e-6`` (the edited layer
  runs rnnlens' step loop, which differs from PyTorch's kernels by ~1e-7; see test_torch.py).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from torch_reference import _reference_stack

import rnnlens
from rnnlens.errors import FieldNotAvailableError, LayerNotFoundError, OptionError, OptionTypeError
from rnnlens.testing import reference_rnn

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

RTOL, ATOL = 1e-4, 1e-5
KERNEL_ATOL = 1e-6


@st.composite
def configs(draw):  # type: ignore[no-untyped-def]
    cls = draw(st.sampled_from([nn.LSTM, nn.GRU, nn.RNN]))
    layers = draw(st.integers(1, 2))
    hidden = draw(st.integers(2, 6))
    kw: dict[str, Any] = dict(
        num_layers=layers, bidirectional=draw(st.booleans()), batch_first=True, bias=draw(st.booleans())
    )
    if cls is nn.LSTM and draw(st.booleans()):
        kw["proj_size"] = draw(st.integers(1, hidden - 1))
    if cls is nn.RNN:
        kw["nonlinearity"] = draw(st.sampled_from(["tanh", "relu"]))
    torch.manual_seed(draw(st.integers(0, 2**16)))
    m = cls(3, hidden, **kw).eval()
    n, t = draw(st.integers(1, 3)), draw(st.integers(1, 7))
    base = type(m).__name__.lower()
    names = [f"{base}.l{k}" for k in range(layers)] if layers > 1 else [base]
    units_h = kw.get("proj_size") or hidden
    edits = []
    for _ in range(draw(st.integers(1, 3))):
        field = "c" if cls is nn.LSTM and draw(st.booleans()) else "h"
        width = hidden if field == "c" else units_h
        step = draw(st.one_of(st.integers(-t, t - 1), st.just(slice(1, None, 2)) if t > 1 else st.just(0)))
        units = draw(
            st.one_of(
                st.none(),
                st.integers(0, width - 1),
                st.lists(st.integers(0, width - 1), min_size=1, max_size=3, unique=True),
            )
        )
        mode = draw(st.sampled_from(["set", "add", "scale"]))
        value = draw(st.floats(-2, 2, allow_nan=False, width=32))
        direction = draw(st.sampled_from([None, "forward"] + (["backward"] if kw["bidirectional"] else [])))
        edits.append(
            rnnlens.Edit(
                draw(st.sampled_from(names)),
                step,
                field=field,
                units=units,
                direction=direction,
                **{mode: value},
            )
        )
    x = np.random.default_rng(draw(st.integers(0, 2**16))).normal(size=(n, t, 3)).astype("float32")
    return m, x, edits, names


@settings(max_examples=60, deadline=None)
@given(configs())
def test_edits_equal_the_reference_with_the_same_edits(cfg: Any) -> None:
    m, x, edits, names = cfg
    ref = _reference_stack(m, x, edits, names)
    run = rnnlens.intervene(m, torch.from_numpy(x), edits)
    np.testing.assert_allclose(run.outputs[0], ref["output"], rtol=RTOL, atol=ATOL)
    for (name, direction), r in ((k, v) for k, v in ref.items() if isinstance(k, tuple)):
        got = getattr(run.states[name], direction)
        np.testing.assert_allclose(got.h, r["h"], rtol=RTOL, atol=ATOL, err_msg=f"{name} {direction} h")
        if "c" in r:
            np.testing.assert_allclose(got.c, r["c"], rtol=RTOL, atol=ATOL, err_msg=f"{name} {direction} c")
        if "gates" in r:
            np.testing.assert_allclose(
                np.stack(list(got.gates.values()), axis=2), r["gates"], rtol=RTOL, atol=ATOL
            )


@pytest.mark.parametrize("cls", [nn.LSTM, nn.GRU, nn.RNN])
def test_a_no_op_edit_returns_the_models_own_outputs(cls: Any) -> None:
    torch.manual_seed(0)
    m = cls(4, 8, num_layers=2, bidirectional=True).eval()  # time-major
    x = torch.randn(6, 3, 4)
    with torch.no_grad():
        own = m(x)
    run = rnnlens.intervene(m, x, rnnlens.Edit(f"{cls.__name__.lower()}.l0", 2, add=0.0))
    np.testing.assert_allclose(run.outputs[0], own[0].numpy(), rtol=0, atol=KERNEL_ATOL)
    finals = own[1] if isinstance(own[1], tuple) else (own[1],)
    got = run.outputs[1] if isinstance(run.outputs[1], tuple) else (run.outputs[1],)
    for a, b in zip(got, finals):
        np.testing.assert_allclose(a, b.numpy(), rtol=0, atol=KERNEL_ATOL)


class _Head(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.LSTM(3, 5, batch_first=True)
        self.out = nn.Linear(5, 2)

    def forward(self, x: Any) -> Any:
        seq, _ = self.rnn(x)
        return self.out(seq[:, -1])


def test_outputs_are_the_whole_models_and_the_model_is_untouched() -> None:
    torch.manual_seed(2)
    m = _Head().eval()
    x = torch.randn(4, 6, 3)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    run = rnnlens.intervene(m, x, rnnlens.Edit("rnn", -1, set=0.0))
    np.testing.assert_allclose(run.outputs, np.broadcast_to(m.out.bias.detach().numpy(), (4, 2)), atol=1e-7)
    assert "forward" not in vars(m.rnn) and not m.rnn._forward_hooks
    for k, v in m.state_dict().items():
        assert torch.equal(v, before[k])


def test_patching_from_another_input() -> None:
    """set= another input's state at step t: from there on the run follows the other input."""
    torch.manual_seed(3)
    m = nn.GRU(3, 4, batch_first=True).eval()
    a, b = torch.randn(2, 6, 3), torch.randn(2, 6, 3)
    b[:, 3:] = a[:, 3:]  # same inputs after step 2
    other = rnnlens.trace(m, b)
    run = rnnlens.intervene(m, a, rnnlens.Edit("gru", 2, set=other["gru"].h[:, 2]))
    np.testing.assert_allclose(run.states["gru"].h[:, 2:], other["gru"].h[:, 2:], rtol=0, atol=1e-6)


def test_cell_loops_are_edited_per_call() -> None:
    torch.manual_seed(4)

    class Loop(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.cell = nn.LSTMCell(3, 4)

        def forward(self, x: Any) -> Any:
            h = c = torch.zeros(x.shape[0], 4)
            hs = []
            for t in range(x.shape[1]):
                h, c = self.cell(x[:, t], (h, c))
                hs.append(h)
            return torch.stack(hs, 1)

    m = Loop().eval()
    x = torch.randn(2, 5, 3)
    run = rnnlens.intervene(m, x, rnnlens.Edit("cell", 1, field="c", units=0, set=3.0))
    assert np.all(run.states["cell"].c[:, 1, 0] == 3.0)
    k = {
        n: getattr(m.cell, n).detach().double().numpy()
        for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
    }

    def edit(t, h, c):  # type: ignore[no-untyped-def]
        if t == 1:
            c[:, 0] = 3.0
        return h, c

    ref = reference_rnn(
        "lstm", x.numpy(), k["weight_ih"].T, k["weight_hh"].T, k["bias_ih"], k["bias_hh"], edit=edit
    )
    np.testing.assert_allclose(run.outputs, ref["h"], rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(run.states["cell"].c, ref["c"], rtol=RTOL, atol=ATOL)


def test_bad_edits_are_clear_errors_before_anything_runs() -> None:
    m = nn.GRU(3, 4, num_layers=2, batch_first=True).eval()
    x = torch.randn(2, 5, 3)
    with pytest.raises(LayerNotFoundError, match=r"gru\.l0"):
        rnnlens.intervene(m, x, rnnlens.Edit("gru.10", 1, set=0))
    with pytest.raises(FieldNotAvailableError, match="no cell state"):
        rnnlens.intervene(m, x, rnnlens.Edit("gru.l0", 1, field="c", set=0))
    with pytest.raises(OptionError, match="out of range"):
        rnnlens.intervene(m, x, rnnlens.Edit("gru.l0", 1, units=[9], set=0))
    with pytest.raises(OptionError, match="step 7 is out of range"):
        rnnlens.intervene(m, x, rnnlens.Edit("gru.l0", 7, set=0))
    with pytest.raises(OptionError, match="changes nothing"):
        rnnlens.intervene(m, x, rnnlens.Edit("gru.l0", 1))
    with pytest.raises(OptionError, match="broadcastable"):
        rnnlens.intervene(m, x, rnnlens.Edit("gru.l0", 1, set=np.zeros((3, 4))))
    with pytest.raises(OptionError, match="directions"):
        rnnlens.intervene(m, x, rnnlens.Edit("gru.l0", 1, direction="backward", set=0))
    with pytest.raises(OptionTypeError):
        rnnlens.intervene(m, x, ["gru.l0"])  # type: ignore[list-item]
    with pytest.raises(OptionError, match="empty"):
        rnnlens.intervene(m, x, [])


class _Packed(nn.Module):
    """Packs its padded batch (unsorted lengths) for the recurrent layers, as real code does."""

    def __init__(self, rnn: Any) -> None:
        super().__init__()
        self.rnn = rnn

    def forward(self, x: Any, lengths: Any) -> Any:
        from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

        packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        out, hidden = self.rnn(packed)
        return pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])[0], hidden


@pytest.mark.parametrize("cls", [nn.LSTM, nn.GRU, nn.RNN])
def test_edits_on_a_packed_batch_equal_each_sample_run_alone(cls: Any) -> None:
    """The packed loop runs each step on the samples still in the batch (sorted by length);
    each sample's states and final state equal that sample intervened alone, unpadded (the
    padded path, itself checked against the NumPy reference above); per-sample values follow
    their samples through the sort."""
    torch.manual_seed(3)
    rnn = cls(3, 5, num_layers=2, bidirectional=True, batch_first=True).eval()
    model = _Packed(rnn).eval()
    lengths = torch.tensor([4, 7, 3, 7, 5])
    x = torch.randn(5, 7, 3)
    base = cls.__name__.lower()  # the module alone names its layers so; inside the model: rnn.*
    name = "rnn.l0"
    per_sample = np.linspace(-1, 1, 5)[:, None]
    edits = [
        rnnlens.Edit(name, 1, units=[0, 2], set=per_sample),
        rnnlens.Edit("rnn.l1", 2, direction="backward", scale=0.0),
    ]
    if cls is nn.LSTM:
        edits.append(rnnlens.Edit(name, 0, field="c", add=0.5))
    run = rnnlens.intervene(model, x, edits, args=(lengths,))
    for i, n_i in enumerate(lengths.tolist()):
        mine = [
            rnnlens.Edit(e.layer.replace("rnn.", f"{base}."), e.step, field=e.field, units=e.units,
                         direction=e.direction, add=e.add, scale=e.scale,
                         set=None if e.set is None else np.asarray(e.set)[i : i + 1])
            for e in edits
        ]  # fmt: skip
        alone = rnnlens.intervene(rnn, x[i : i + 1, :n_i], mine)
        np.testing.assert_allclose(run.outputs[0][i, :n_i], alone.outputs[0][0], rtol=0, atol=KERNEL_ATOL)
        finals = run.outputs[1] if isinstance(run.outputs[1], tuple) else (run.outputs[1],)
        own = alone.outputs[1] if isinstance(alone.outputs[1], tuple) else (alone.outputs[1],)
        for a, b in zip(finals, own):
            np.testing.assert_allclose(a[:, i], b[:, 0], rtol=0, atol=KERNEL_ATOL)
        for layer in run.states:
            for d in run.states[layer].directions:
                alone_layer = alone.states[layer.replace("rnn.", f"{base}.")]
                got, want = getattr(run.states[layer], d), getattr(alone_layer, d)
                for f in got.fields:
                    if f == "gates":
                        a, b = got.gates.array[i, :n_i], want.gates.array[0]
                    else:
                        a, b = getattr(got, f)[i, :n_i], getattr(want, f)[0]
                    np.testing.assert_allclose(a, b, rtol=0, atol=KERNEL_ATOL, err_msg=f"{layer} {d} {f}")
                if cls is not nn.RNN and n_i < 7:
                    assert np.isnan(got.gates.array[i, n_i:]).all()  # steps the sample does not have
    # a no-op edit gives the model's own outputs; an edit at a step some sample lacks is refused
    with torch.no_grad():
        own_out = model(x, lengths)
    noop = rnnlens.intervene(model, x, rnnlens.Edit(name, 2, add=0.0), args=(lengths,))
    np.testing.assert_allclose(noop.outputs[0], own_out[0].numpy(), rtol=0, atol=KERNEL_ATOL)
    with pytest.raises(rnnlens.RnnLensError, match="masked for sample"):
        rnnlens.intervene(model, x, rnnlens.Edit(name, 5, set=0.0), args=(lengths,))
