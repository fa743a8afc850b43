"""An ``nn.LSTMCell`` loop traced for its gates: the cell's calls computed op for op
(:mod:`rnnlens.adapters.torch_.cell_emit`) against the cell itself (bitwise), the gates against
the recorded-calls path (:mod:`~rnnlens.adapters.torch_.cell_gates`) and the NumPy reference
(float32 tolerance 1e-5), and the loops that leave it for PyTorch's own cell."""

from __future__ import annotations

from unittest import mock

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import rnnlens
from rnnlens.adapters.torch_ import cell_emit, convert, record
from rnnlens.adapters.torch_.cell_emit import LstmCellGates
from rnnlens.adapters.torch_.cell_gates import lstm_cell_gates
from rnnlens.errors import UnsupportedLayerError


class Loop(torch.nn.Module):
    """A cell loop; ``mode`` varies what it does between calls."""

    def __init__(self, features: int, hidden: int, mode: str = "plain", bias: bool = True):
        super().__init__()
        self.cell = torch.nn.LSTMCell(features, hidden, bias=bias)
        self.other = torch.nn.LSTMCell(hidden, hidden)
        self.mode, self.hidden = mode, hidden

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        state = None
        h2 = None
        out = []
        for t in range(x.shape[1]):
            xt = x[:, t]
            if self.mode == "unbatched" and t == 2:
                h, c = self.cell(xt[0], None if state is None else (state[0][0], state[1][0]))
                state = (h.expand(x.shape[0], -1).clone(), c.expand(x.shape[0], -1).clone())
            else:
                state = self.cell(xt, state)
            if self.mode == "inplace":
                state[0].mul_(0.5)  # the loop changes the state it carries
            if self.mode == "mixed":
                h2 = self.other(state[0], h2)
                out.append(h2[0])
            else:
                out.append(state[0])
        return torch.stack(out, 1)


def _cell_calls(loop: Loop, x: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The outputs of every call of ``loop.cell`` in a plain run (forward hook)."""
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    handle = loop.cell.register_forward_hook(lambda m, i, o: seen.append((o[0].clone(), o[1].clone())))
    try:
        with torch.no_grad():
            loop(x)
    finally:
        handle.remove()
    return seen


def _old_gates(loop: Loop, x: torch.Tensor) -> tuple[np.ndarray, ...]:
    """The recorded-calls path: every call's input, state and output, then the bulk rebuild."""
    xs, hxs, outs = [], [], []

    def hook(m: object, args: tuple[torch.Tensor, ...], out: tuple[torch.Tensor, torch.Tensor]) -> None:
        xs.append(args[0].clone())
        hxs.append(None if len(args) < 2 or args[1] is None else tuple(t.clone() for t in args[1]))
        outs.append(tuple(t.clone() for t in out))

    handle = loop.cell.register_forward_hook(hook)
    try:
        with torch.no_grad():
            loop(x)
    finally:
        handle.remove()
    gates = lstm_cell_gates(loop.cell, xs, hxs, outs)
    if gates is not None:
        return gates
    # (the bulk rebuild declines some tiny shapes): an independent float64 reference
    cell = loop.cell
    w_ih, w_hh = cell.weight_ih.detach().double(), cell.weight_hh.detach().double()
    b = (cell.bias_ih + cell.bias_hh).detach().double()
    ref = []
    for x_t, hx in zip(xs, hxs):
        h = torch.zeros(x_t.shape[0], cell.hidden_size, dtype=torch.float64) if hx is None else hx[0].double()
        z = x_t.double() @ w_ih.T + h @ w_hh.T + b
        i, f, g, o = z.chunk(4, 1)
        ref.append(torch.stack([i.sigmoid(), f.sigmoid(), g.tanh(), o.sigmoid()]))
    arr = torch.stack(ref, 2).numpy()  # (gate, sample, time, unit)
    return tuple(arr[k] for k in range(4))


def _not_called(*args: object) -> None:
    raise AssertionError("the recorded-calls rebuild ran")


#: the loops' sizes, precision and seed drawn by both cells' hypothesis tests
_SHAPES = dict(
    features=st.integers(1, 9),
    hidden=st.integers(1, 21),
    batch=st.integers(1, 7),
    steps=st.integers(1, 9),
    double=st.booleans(),
    seed=st.integers(0, 2**16),
)


def _ifgo(gates: object) -> list[np.ndarray]:
    return [np.asarray(gates[k]) for k in "ifgo"]  # type: ignore[index]


@settings(max_examples=15, deadline=None)
@given(**_SHAPES)
def test_gates_in_the_call_match_the_cell_and_the_old_path(
    features: int, hidden: int, batch: int, steps: int, double: bool, seed: int
) -> None:
    torch.manual_seed(seed)
    loop = Loop(features, hidden).eval()
    x = torch.randn(batch, steps, features)
    if double:
        loop, x = loop.double(), x.double()
    with torch.no_grad():
        own = loop(x)
    with mock.patch.object(convert, "lstm_cell_gates", _not_called):  # the gates come from the calls
        t = rnnlens.trace(loop, x, layers=["cell"])
    calls = _cell_calls(loop, x)
    # h and c: bitwise what the cell returns, and the model's output unchanged
    np.testing.assert_array_equal(t["cell"].h, torch.stack([h for h, _ in calls], 1).numpy())
    np.testing.assert_array_equal(t["cell"].c, torch.stack([c for _, c in calls], 1).numpy())
    tol = 1e-12 if double else 2e-5
    for ours, old in zip(_ifgo(t["cell"].gates), _old_gates(loop, x)):
        np.testing.assert_allclose(ours, old, rtol=tol, atol=tol)
    with torch.no_grad():
        assert torch.equal(loop(x), own)


def test_the_stand_in_is_bitwise_the_cell() -> None:
    torch.manual_seed(0)
    cell = torch.nn.LSTMCell(5, 13)
    emit = LstmCellGates(cell)
    x, state = torch.randn(6, 4, 5), None
    with torch.no_grad():
        for t in range(6):
            ours = emit(x[t], state, torch.nn.LSTMCell.forward)
            theirs = cell(x[t], state)
            assert all(torch.equal(a, b) for a, b in zip(ours, theirs))
            state = ours
    assert emit.on and emit.steps == 6


def test_a_first_call_that_differs_hands_back_to_the_cell(monkeypatch: pytest.MonkeyPatch) -> None:
    cell = torch.nn.LSTMCell(3, 4)
    emit = LstmCellGates(cell)
    x = torch.randn(2, 3)

    def own(m: torch.nn.LSTMCell, x: torch.Tensor, hx: object) -> tuple[torch.Tensor, torch.Tensor]:
        h, c = torch.nn.LSTMCell.forward(m, x, hx)
        return h + 1e-3, c  # not what cell_emit computes: it must return this and turn off

    with torch.no_grad():
        out = emit(x, None, own)
        ref = torch.nn.LSTMCell.forward(cell, x, None)
    assert torch.equal(out[0], ref[0] + 1e-3)
    assert not emit.on and emit.gates() is None
    assert emit(x, None, own) is None


@pytest.mark.parametrize("mode", ["inplace", "mixed", "unbatched"])
def test_loops_that_change_state_mix_cells_or_change_shape(mode: str) -> None:
    torch.manual_seed(1)
    loop = Loop(3, 5, mode).eval()
    x = torch.randn(4, 6, 3)
    with torch.no_grad():
        own = loop(x)
    if mode == "unbatched":  # one unbatched call among batched ones: the cell's own path says why
        with pytest.raises(UnsupportedLayerError):
            rnnlens.trace(loop, x, layers=["cell"])
        return
    t = rnnlens.trace(loop, x)
    calls = _cell_calls(loop, x)
    np.testing.assert_array_equal(t["cell"].h, torch.stack([h for h, _ in calls], 1).numpy())
    np.testing.assert_array_equal(t["cell"].c, torch.stack([c for _, c in calls], 1).numpy())
    for ours, old in zip(_ifgo(t["cell"].gates), _old_gates(loop, x)):
        np.testing.assert_allclose(ours, old, rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        assert torch.equal(loop(x), own)


def test_varying_batch_falls_back() -> None:
    cell = torch.nn.LSTMCell(3, 4)
    emit = LstmCellGates(cell)
    with torch.no_grad():
        emit(torch.randn(2, 3), None, torch.nn.LSTMCell.forward)
        assert emit(torch.randn(3, 3), None, torch.nn.LSTMCell.forward) is None
    assert emit.gates() is None


def test_no_bias_and_the_buffer_growing() -> None:
    torch.manual_seed(2)
    loop = Loop(3, 4, bias=False).eval()
    x = torch.randn(2, 5, 3)
    t = rnnlens.trace(loop, x, layers=["cell"])  # no bias: the recorded-calls path
    assert len(_ifgo(t["cell"].gates)) == 4
    loop = Loop(3, 4).eval()
    cell_emit._HINT[loop.cell] = 2  # the buffer grows from 2 steps to 4 to 8
    x = torch.randn(2, 7, 3)
    t = rnnlens.trace(loop, x, layers=["cell"])
    for ours, old in zip(_ifgo(t["cell"].gates), _old_gates(loop, x)):
        np.testing.assert_allclose(ours, old, rtol=1e-5, atol=1e-5)
    assert cell_emit._HINT[loop.cell] == 7


class _Never(LstmCellGates):
    """A stand-in that always hands the cell back (the recorded-calls path)."""

    def __call__(self, x: object, hx: object, own: object) -> None:
        return None


class GruLoop(torch.nn.Module):
    def __init__(self, features: int, hidden: int):
        super().__init__()
        self.cell = torch.nn.GRUCell(features, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, out = None, []
        for t in range(x.shape[1]):
            h = self.cell(x[:, t], h)
            out.append(h)
        return torch.stack(out, 1)


@settings(max_examples=10, deadline=None)
@given(**_SHAPES)
def test_gru_cell_gates_in_the_call_match_the_old_path(
    features: int, hidden: int, batch: int, steps: int, double: bool, seed: int
) -> None:
    torch.manual_seed(seed)
    loop = GruLoop(features, hidden).eval()
    x = torch.randn(batch, steps, features)
    if double:
        loop, x = loop.double(), x.double()
    with torch.no_grad():
        own = loop(x)
    with mock.patch.object(convert, "gru_gates", _not_called):  # the gates come from the calls
        new = rnnlens.trace(loop, x)
    with mock.patch.object(record, "GruCellGates", _Never):
        old = rnnlens.trace(loop, x)
    np.testing.assert_array_equal(new["cell"].h, own.numpy())
    np.testing.assert_array_equal(old["cell"].h, own.numpy())
    tol = 1e-12 if double else 2e-5
    for k in ("z", "r", "n"):
        np.testing.assert_allclose(
            np.asarray(new["cell"].gates[k]), np.asarray(old["cell"].gates[k]), rtol=tol, atol=tol
        )
    with torch.no_grad():
        assert torch.equal(loop(x), own)


def test_the_rebuild_of_one_step_of_one_sample() -> None:
    """(Its g chunk counts as contiguous there: it was activated twice, and the rebuild declined.)"""
    torch.manual_seed(0)
    cell = torch.nn.LSTMCell(2, 3)
    x = torch.randn(1, 2)
    with torch.no_grad():
        out = cell(x)
    gates = lstm_cell_gates(cell, [x], [None], [out])
    assert gates is not None
    z = (x @ cell.weight_ih.T + cell.bias_ih + cell.bias_hh).detach()
    np.testing.assert_allclose(gates[2][:, 0], z[:, 6:9].tanh().numpy(), rtol=1e-6, atol=1e-6)
