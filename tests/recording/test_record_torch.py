"""rnnlens.record on PyTorch loops: the model runs as itself, chained calls are joined and equal
one trace of the whole sequence, other calls stay apart, nothing is left installed."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import rnnlens
from rnnlens.errors import RnnLensError

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

ATOL = 1e-5  # per-call reconstruction against one trace of the whole sequence (float32)


@pytest.mark.parametrize("cls", [nn.LSTM, nn.GRU])
def test_a_per_step_loop_is_one_entry_equal_to_one_trace(cls: Any) -> None:
    torch.manual_seed(0)
    m = cls(3, 5, num_layers=2, batch_first=True).eval()
    x = torch.randn(4, 7, 3)
    plain, recorded = [], []
    with torch.no_grad():
        hx = None
        for t in range(7):
            out, hx = m(x[:, t : t + 1], hx)
            plain.append(out)
        with rnnlens.record(m) as rec:
            hx = None
            for t in range(7):
                out, hx = m(x[:, t : t + 1], hx)
                recorded.append(out)
    for a, b in zip(plain, recorded):
        assert torch.equal(a, b)  # the model ran as itself
    assert "forward" not in vars(m)
    whole = rnnlens.trace(m, x)
    base = cls.__name__.lower()
    assert list(rec.states) == [f"{base}.l0", f"{base}.l1"]
    for name in rec.states:
        np.testing.assert_allclose(rec.states[name].h, whole[name].h, rtol=0, atol=ATOL)
        if cls is nn.LSTM:
            np.testing.assert_allclose(rec.states[name].c, whole[name].c, rtol=0, atol=ATOL)
        for g in whole[name].gates:
            np.testing.assert_allclose(rec.states[name].gates[g], whole[name].gates[g], rtol=0, atol=ATOL)
    calls = [c for c in rec.calls if c.entry == f"{base}.l1"]
    assert [(c.start, c.stop) for c in calls] == [(t, t + 1) for t in range(7)]
    assert calls[3].name == f"{base}.l1#3"


def test_calls_that_do_not_continue_the_state_stay_apart() -> None:
    torch.manual_seed(1)
    m = nn.GRU(3, 4).eval()
    a, b = torch.randn(5, 2, 3), torch.randn(6, 2, 3)
    with rnnlens.record(m) as rec:
        m(a)
        m(b)  # from zeros again: not chained
        m(b, torch.ones(1, 2, 4))  # another state: not chained
    assert list(rec.states) == ["gru", "gru#1", "gru#2"]
    np.testing.assert_allclose(rec.states["gru#1"].h, rnnlens.trace(m, b)["gru"].h, rtol=0, atol=ATOL)


def test_chunked_streaming_with_a_carried_state_is_joined() -> None:
    torch.manual_seed(2)
    m = nn.LSTM(3, 4, batch_first=True).eval()
    x = torch.randn(2, 12, 3)
    with rnnlens.record(m, fields=("h", "c")) as rec:
        state = None
        for chunk in x.split(5, dim=1):  # chunks of 5, 5, 2 steps
            _, state = m(chunk, state)
    assert [(c.start, c.stop) for c in rec.calls] == [(0, 5), (5, 10), (10, 12)]
    np.testing.assert_allclose(rec.states["lstm"].c, rnnlens.trace(m, x)["lstm"].c, rtol=0, atol=ATOL)


def test_everything_is_removed_after_an_error_and_states_wait_for_the_end() -> None:
    m = nn.LSTM(3, 4).eval()
    with pytest.raises(ZeroDivisionError), rnnlens.record(m) as rec:
        m(torch.randn(2, 1, 3))
        with pytest.raises(RnnLensError, match="still running"):
            rec.states  # noqa: B018
        1 / 0  # noqa: B018
    assert "forward" not in vars(m)
    assert rec.states["lstm"].h.shape == (1, 2, 4)


def test_a_cell_loop_is_one_entry_with_a_step_per_call() -> None:
    torch.manual_seed(3)
    cell = nn.LSTMCell(3, 4)
    x = torch.randn(2, 5, 3)
    with rnnlens.record(cell) as rec:
        h = c = torch.zeros(2, 4)
        for t in range(5):
            h, c = cell(x[:, t], (h, c))
    assert rec.states["lstmcell"].h.shape == (2, 5, 4)
    assert [(k.start, k.stop) for k in rec.calls] == [(t, t + 1) for t in range(5)]
