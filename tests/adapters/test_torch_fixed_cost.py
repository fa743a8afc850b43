"""The fixed-cost paths of a torch trace: the parameter copies the put-back takes (one flat copy,
or one per parameter where dtypes differ), the cell loop's per-step recording."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import rnnlens  # noqa: E402
from rnnlens.adapters.torch_.unchanged import unchanged  # noqa: E402


class Mixed(torch.nn.Module):
    """Parameters of two dtypes (no one flat copy) or of one; forward changes them in place."""

    def __init__(self, dtype: Any) -> None:
        super().__init__()
        self.rnn = torch.nn.LSTM(3, 4, batch_first=True)
        self.scale = torch.nn.Parameter(torch.ones(4, dtype=dtype))

    def forward(self, x: Any) -> Any:
        with torch.no_grad():
            self.scale.mul_(2.0)
            self.rnn.bias_hh_l0.add_(1.0)
        return self.rnn(x)[0] * self.scale.to(x.dtype)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_parameters_changed_in_place_are_put_back_bitwise(dtype: str) -> None:
    torch.manual_seed(0)
    m = Mixed(getattr(torch, dtype))
    before = {k: v.detach().clone() for k, v in m.named_parameters()}
    states = rnnlens.trace(m, torch.randn(2, 5, 3))
    for k, v in m.named_parameters():
        assert torch.equal(v, before[k]) and v.dtype == before[k].dtype, k
    assert states["rnn"].h.shape == (2, 5, 4)


def test_inference_parameters_are_compared_and_put_back() -> None:
    with torch.inference_mode():  # parameters with no version counter: compared with their copy
        lin = torch.nn.Linear(3, 3)
    want = lin.weight.clone()
    with unchanged(lin), torch.inference_mode():
        lin.weight.add_(1.0)
    assert torch.equal(lin.weight, want)


class Loop(torch.nn.Module):
    def __init__(self, hx: str) -> None:
        super().__init__()
        self.cell = torch.nn.LSTMCell(3, 4)
        self.hx = hx

    def forward(self, x: Any) -> Any:
        state: Any = None if self.hx == "none" else (x.new_zeros(x.shape[0], 4),) * 2
        outs = []
        for t in range(x.shape[1]):
            if self.hx == "list" and state is not None:
                state = list(state)
            state = self.cell(x[:, t], state)
            outs.append(state[0])
            if self.hx == "inplace":
                state[1].mul_(0.5)  # changes what the cell returned: recorded again, with copies
        return torch.stack(outs, 1)


@pytest.mark.parametrize("hx", ["none", "tuple", "list", "inplace"])
def test_cell_loop_states_are_the_cells_own(hx: str) -> None:
    torch.manual_seed(1)
    m, x = Loop(hx), torch.randn(2, 6, 3)
    with torch.no_grad():
        want = m(x)
    s = rnnlens.trace(m, x)["cell"]
    np.testing.assert_array_equal(s.h, want.numpy())  # bitwise: the cell's own outputs
    assert s.c is not None and set(s.gates) == {"i", "f", "g", "o"}
    with torch.inference_mode():  # inference tensors: copied, not watched
        xi = x.clone()
    np.testing.assert_array_equal(rnnlens.trace(m, xi, fields=("h",))["cell"].h, want.numpy())


class Filling(torch.nn.Module):
    """forward fills containers that were empty (a hook dict, a list, a set) and one that was not."""

    def __init__(self) -> None:
        super().__init__()
        self.rnn = torch.nn.GRU(3, 4, batch_first=True)
        self.seen: list[Any] = []
        self.tags: set[str] = set()
        self.counts = {"calls": 0}

    def forward(self, x: Any) -> Any:
        self.rnn.register_forward_hook(lambda *a: None)
        self.seen.append(x.shape)
        self.tags.add("ran")
        self.counts["calls"] += 1
        self.counts["extra"] = 1
        return self.rnn(x)[0]


def test_containers_filled_by_forward_are_put_back() -> None:
    m = Filling()
    rnnlens.trace(m, torch.randn(2, 5, 3))
    assert not m.rnn._forward_hooks and m.seen == [] and m.tags == set()
    assert m.counts == {"calls": 0}
