"""Edit(target="write"): what a step wrote into an LSTM's c / a GRU's h, changed and carried forward.

Oracle: the float64 NumPy reference cell loop (rnnlens.testing.reference_rnn) with that step's
write replaced (``edit_write``), for PyTorch nn.LSTM / nn.GRU stacks (hypothesis; float32,
``rtol=1e-4, atol=1e-5`` as the state edits' tests), for nn.LSTMCell / nn.GRUCell called per step,
and for rnnlens' NumPy step loop (float64,
``1e-12``). With decompose: a write scaled by k changes the state exactly by (k − 1) × that
write's contribution.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from torch_reference import _ref_weights, _reference_stack

import rnnlens
from rnnlens.core.edits import plan_edits
from rnnlens.core.spec import CellWeights
from rnnlens.core.steploop import run_direction
from rnnlens.errors import FieldNotAvailableError, OptionError
from rnnlens.testing import reference_rnn

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

RTOL, ATOL = 1e-4, 1e-5


@st.composite
def configs(draw):  # type: ignore[no-untyped-def]
    cls = draw(st.sampled_from([nn.LSTM, nn.GRU]))
    layers, hidden = draw(st.integers(1, 2)), draw(st.integers(2, 5))
    bidirectional = draw(st.booleans())
    torch.manual_seed(draw(st.integers(0, 2**16)))
    m = cls(3, hidden, num_layers=layers, bidirectional=bidirectional, batch_first=True).eval()
    n, t = draw(st.integers(1, 3)), draw(st.integers(1, 6))
    base = type(m).__name__.lower()
    names = [f"{base}.l{k}" for k in range(layers)] if layers > 1 else [base]
    field = "c" if cls is nn.LSTM else "h"
    edits = []
    for _ in range(draw(st.integers(1, 3))):
        target = draw(st.sampled_from(["write", "write", "state"]))
        units = draw(
            st.one_of(st.none(), st.lists(st.integers(0, hidden - 1), min_size=1, max_size=3, unique=True))
        )
        mode = draw(st.sampled_from(["set", "add", "scale"]))
        direction = draw(st.sampled_from([None, "forward"] + (["backward"] if bidirectional else [])))
        name, step = draw(st.sampled_from(names)), draw(st.integers(-t, t - 1))
        edits.append(rnnlens.Edit(
            name, step, field=field if target == "write" else "h", units=units, direction=direction,
            target=target, **{mode: draw(st.floats(-2, 2, width=32))},
        ))  # fmt: skip
    x = np.random.default_rng(draw(st.integers(0, 2**16))).normal(size=(n, t, 3)).astype("float32")
    return m, x, edits, names


@given(configs())
def test_torch_write_edits_equal_the_reference(cfg: Any) -> None:
    m, x, edits, names = cfg
    ref = _reference_stack(m, x, edits, names)
    run = rnnlens.intervene(m, torch.from_numpy(x), edits)
    np.testing.assert_allclose(run.outputs[0], ref["output"], rtol=RTOL, atol=ATOL)
    for (name, direction), r in ((k, v) for k, v in ref.items() if isinstance(k, tuple)):
        got = getattr(run.states[name], direction)
        np.testing.assert_allclose(got.h, r["h"], rtol=RTOL, atol=ATOL)
        if "c" in r:
            np.testing.assert_allclose(got.c, r["c"], rtol=RTOL, atol=ATOL)


@given(
    st.sampled_from(["lstm", "gru"]),
    st.booleans(),
    st.integers(0, 2**16),
    st.sampled_from(["set", "add", "scale"]),
)
def test_numpy_step_loop_write_edits(kind: str, reverse: bool, seed: int, mode: str) -> None:
    rng = np.random.default_rng(seed)
    g, u, n, t = (4 if kind == "lstm" else 3), 3, 2, 5
    k, rk, b = rng.normal(size=(2, g * u)), rng.normal(size=(u, g * u)), rng.normal(size=g * u)
    x = rng.normal(size=(n, t, 2))
    mask = np.arange(t)[None] < np.array([[t], [t - 1]])
    step, value = int(rng.integers(0, t - 1)), rng.normal(size=(n, 2))
    spec = rnnlens.LayerSpec("rec", kind, kind.upper(), u, ("forward",), ("h",))  # type: ignore[arg-type]
    field = "c" if kind == "lstm" else "h"
    plan = plan_edits(
        [rnnlens.Edit("rec", step, field=field, units=[0, 2], target="write", **{mode: value})], [spec]
    )
    ops = plan["rec"].steps("forward", "write:" + field, t, n, mask=mask)
    w = CellWeights(kind, k, rk, b, None, np.tanh, lambda z: 1 / (1 + np.exp(-z)))  # type: ignore[arg-type]
    got = run_direction(w, x, np.zeros((n, u)), None, mask, reverse=reverse, edits_w=ops)

    def edit_write(s: int, wr: np.ndarray) -> np.ndarray:
        if s == step:
            part = wr[:, [0, 2]]
            wr[:, [0, 2]] = value if mode == "set" else part + value if mode == "add" else part * value
        return wr

    ref = reference_rnn(kind, x, k, rk, b, mask=mask, reverse=reverse, edit_write=edit_write)
    np.testing.assert_allclose(got.arrays.h, ref["h"], rtol=1e-12, atol=1e-12)
    if kind == "lstm":
        np.testing.assert_allclose(got.arrays.c, ref["c"], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("cls", [nn.LSTM, nn.GRU])
def test_scaling_a_write_moves_the_state_by_its_contribution(cls: Any) -> None:
    """Until the edited state feeds back through the gates (the step itself), the state at the
    edited step moves by exactly (k − 1) × the write's contribution (decompose)."""
    torch.manual_seed(5)
    m = cls(3, 4, batch_first=True).eval()
    x = torch.randn(2, 6, 3)
    name = type(m).__name__.lower()
    field = "c" if cls is nn.LSTM else "h"
    dec = rnnlens.decompose(rnnlens.trace(m, x), name)
    run = rnnlens.intervene(m, x, rnnlens.Edit(name, 3, field=field, target="write", scale=3.0))
    moved = getattr(run.states[name], field)[:, 3] - getattr(rnnlens.trace(m, x)[name], field)[:, 3]
    np.testing.assert_allclose(moved, 2.0 * dec.at(3)[:, 3], rtol=1e-5, atol=1e-6)


def test_write_edit_refusals() -> None:
    lstm = nn.LSTM(3, 4, batch_first=True)
    x = torch.randn(1, 3, 3)
    with pytest.raises(FieldNotAvailableError, match="field='c'"):
        rnnlens.intervene(lstm, x, rnnlens.Edit("lstm", 1, field="h", target="write", scale=0))
    with pytest.raises(FieldNotAvailableError, match="LSTM"):
        rnnlens.intervene(nn.RNN(3, 4, batch_first=True), x, rnnlens.Edit("rnn", 1, target="write", scale=0))
    with pytest.raises(OptionError, match="target"):
        rnnlens.intervene(lstm, x, rnnlens.Edit("lstm", 1, field="c", target="writes", scale=0))

    # an adapter path that never asks for a layer's write edits leaves them unapplied: refused
    plan = plan_edits([rnnlens.Edit("lstm", 1, field="c", target="write", scale=0)], rnnlens.describe(lstm))
    assert len(plan["lstm"].unapplied_writes()) == 1
    plan["lstm"].steps("forward", "write:c", 3, 1)
    assert plan["lstm"].unapplied_writes() == []


class _Loop(nn.Module):
    """A cell the user calls once per step (its calls count the steps)."""

    def __init__(self, cls: Any, units: int, unbatched: bool) -> None:
        super().__init__()
        self.cell, self.units, self.unbatched = cls(3, units), units, unbatched

    def forward(self, x: Any) -> Any:
        lstm = isinstance(self.cell, nn.LSTMCell)
        state: Any = None
        outs = []
        for t in range(x.shape[1]):
            xt = x[0, t] if self.unbatched else x[:, t]
            state = self.cell(xt, state)
            outs.append(state[0] if lstm else state)
        return torch.stack(outs, -2)


def _cell_weights(cell: Any) -> dict[str, Any]:
    get = lambda n: getattr(cell, n).detach().double().numpy()  # noqa: E731
    w_ih, w_hh, b_ih, b_hh = get("weight_ih"), get("weight_hh"), get("bias_ih"), get("bias_hh")
    if isinstance(cell, nn.GRUCell):  # PyTorch r, z, n -> canonical z, r, n
        h = cell.hidden_size
        order = np.r_[h : 2 * h, 0:h, 2 * h : 3 * h]
        w_ih, w_hh, b_ih, b_hh = w_ih[order], w_hh[order], b_ih[order], b_hh[order]
    return dict(kernel=w_ih.T, recurrent_kernel=w_hh.T, bias=b_ih, recurrent_bias=b_hh)


@given(
    st.sampled_from([nn.LSTMCell, nn.GRUCell]), st.integers(0, 4), st.sampled_from(["set", "add", "scale"]),
    st.floats(-2, 2, width=32), st.one_of(st.none(), st.lists(st.integers(0, 3), min_size=1, max_size=3,
                                                              unique=True)),
    st.booleans(), st.booleans(), st.integers(0, 2**16),
)  # fmt: skip
def test_write_edits_on_cells_called_per_step(
    cls: Any, step: int, mode: str, value: float, units: Any, unbatched: bool, with_state: bool, seed: int
) -> None:
    """nn.LSTMCell / nn.GRUCell in the user's loop: the float64 reference loop with that step's
    write edited (and an h edit at the same step after it), ``rtol=1e-4, atol=1e-5`` (measured
    ≤ 2e-7); the steps before it are the cell's own; the model is unchanged."""
    torch.manual_seed(seed % 7)
    m = _Loop(cls, 4, unbatched).eval()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    n = 1 if unbatched else 2
    x = np.random.default_rng(seed).normal(size=(n, 5, 3)).astype("float32")
    field = "c" if cls is nn.LSTMCell else "h"
    edits = [rnnlens.Edit("cell", step, field=field, units=units, target="write", **{mode: value})]
    if with_state:
        edits.append(rnnlens.Edit("cell", step, units=[1], add=0.5))
    run = rnnlens.intervene(m, torch.from_numpy(x), edits)
    assert all(torch.equal(v, m.state_dict()[k]) for k, v in before.items())
    assert "forward" not in vars(m.cell)
    sel = slice(None) if units is None else units

    def edit_write(s: int, w: np.ndarray) -> np.ndarray:
        if s == step:
            part = w[:, sel]
            w[:, sel] = value if mode == "set" else part + value if mode == "add" else part * value
        return w

    def edit(s: int, h: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if with_state and s == step:
            h[:, 1] += 0.5
        return h, c

    kind = "lstm" if cls is nn.LSTMCell else "gru"
    ref = reference_rnn(kind, x, **_cell_weights(m.cell), edit_write=edit_write, edit=edit)
    np.testing.assert_allclose(run.states["cell"].h, ref["h"], rtol=RTOL, atol=ATOL)
    if kind == "lstm":
        np.testing.assert_allclose(run.states["cell"].c, ref["c"], rtol=RTOL, atol=ATOL)
    out = np.asarray(run.outputs).reshape(n, 5, 4)
    np.testing.assert_allclose(out, ref["h"], rtol=RTOL, atol=ATOL)
    plain = rnnlens.trace(m, torch.from_numpy(x))["cell"].h
    np.testing.assert_array_equal(run.states["cell"].h[:, :step], plain[:, :step])


def test_reference_weights_helper_is_shared() -> None:
    assert _ref_weights(nn.GRU(2, 3), 0, False)["kind"] == "gru"


def test_an_edited_bare_lstm_on_a_packed_input_returns_a_packed_output() -> None:
    """The model's own PackedSequence comes back, its fields as NumPy arrays, each sample edited
    as when it is run alone."""
    from torch.nn.utils.rnn import pack_padded_sequence

    torch.manual_seed(0)
    lstm = torch.nn.LSTM(3, 4, batch_first=True)
    x = torch.randn(2, 5, 3)
    packed = pack_padded_sequence(x, [5, 3], batch_first=True)
    edit = rnnlens.Edit("lstm", 1, field="c", target="write", scale=0.0)
    out = rnnlens.intervene(lstm, packed, edit).outputs[0]
    assert isinstance(out, torch.nn.utils.rnn.PackedSequence) and isinstance(out.data, np.ndarray)
    data = torch.from_numpy(out.data)
    sizes = torch.from_numpy(np.asarray(out.batch_sizes))
    padded, lengths = torch.nn.utils.rnn.pad_packed_sequence(
        torch.nn.utils.rnn.PackedSequence(data, sizes), batch_first=True
    )
    for i, n in enumerate(lengths.tolist()):
        alone = rnnlens.intervene(lstm, x[i : i + 1, :n], edit).outputs[0]
        np.testing.assert_allclose(padded[i, :n].numpy(), alone[0], rtol=1e-6, atol=1e-7)
