"""The step loop's plain case (:mod:`rnnlens.adapters.torch_.emit_fast`) against the general loop
it replaces for unedited, unpacked layers: bitwise the same h, c and gates. The general loop
runs when a layer is edited; an edit that multiplies the last step by 1 changes no bit."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import rnnlens
from rnnlens.adapters.torch_.emit_fast import onednn_weight

CONFIGS = [
    (nn.LSTM, {}),
    (nn.LSTM, {"bidirectional": True, "num_layers": 2}),
    (nn.LSTM, {"proj_size": 3, "bias": False}),
    (nn.GRU, {}),
    (nn.GRU, {"bidirectional": True, "num_layers": 2, "batch_first": False}),
    (nn.GRU, {"bias": False}),
]


@pytest.mark.parametrize(("cls", "options"), CONFIGS)
def test_plain_loop_is_bitwise_the_general_loop(cls: Any, options: dict[str, Any]) -> None:
    torch.manual_seed(3)
    options = {"batch_first": True, **options}
    m = cls(5, 6, **options).eval()
    x = torch.randn(4, 9, 5) if options["batch_first"] else torch.randn(9, 4, 5)
    plain = rnnlens.trace(m, x, strategy="emit")
    names = list(plain)
    # an edit on every layer: all of them run the general loop (edits work per layer and step)
    edits = [rnnlens.Edit(name, -1, scale=1.0) for name in names]
    general = rnnlens.intervene(m, x, edits).states
    for name in names:
        a, b = plain[name], general[name]
        np.testing.assert_array_equal(a.h, b.h)
        if cls is nn.LSTM:
            np.testing.assert_array_equal(a.c, b.c)
        assert list(a.gates) == list(b.gates)
        for gate in a.gates:
            np.testing.assert_array_equal(a.gates[gate], b.gates[gate], err_msg=f"{name} {gate}")


class _CellLoop(nn.Module):
    def __init__(self, bias: bool) -> None:
        super().__init__()
        self.cell = nn.LSTMCell(3, 5, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        state = None  # the first call without a state: zeros
        for t in range(x.shape[-2]):
            state = self.cell(x[..., t, :], state)
        assert state is not None
        return state[0]


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("batched", [True, False])  # unbatched calls take the NumPy path
def test_cell_loop_gates_match_a_float64_reference(bias: bool, batched: bool) -> None:
    """The bulk gates of a cell loop (:mod:`rnnlens.adapters.torch_.cell_gates`) against the
    equations in float64 from the cell's weights and the states it was called with."""
    torch.manual_seed(4)
    m = _CellLoop(bias).eval()
    x = torch.randn(2, 7, 3) if batched else torch.randn(7, 3)
    s = rnnlens.trace(m, x)["cell"]
    cell = m.cell.double()
    xb = x.double() if batched else x.double()[None]
    h = torch.zeros(xb.shape[0], 5, dtype=torch.float64)
    c = torch.zeros_like(h)
    with torch.no_grad():
        for t in range(xb.shape[1]):
            z = xb[:, t] @ cell.weight_ih.T + h @ cell.weight_hh.T
            if bias:
                z = z + cell.bias_ih + cell.bias_hh
            i, f, g, o = z.sigmoid().chunk(4, 1)
            g = z[:, 10:15].tanh()
            for name, want in zip("ifgo", (i, f, g, o)):
                np.testing.assert_allclose(s.gates[name][:, t], want.numpy(), rtol=0, atol=1e-6)
            c = f * c + i * g
            h = o * c.tanh()
    np.testing.assert_allclose(s.c[:, -1], c.numpy(), rtol=0, atol=1e-6)


@pytest.mark.parametrize("cls", [nn.LSTM, nn.GRU])
def test_onednn_gemm_loop_is_exact(monkeypatch: pytest.MonkeyPatch, cls: Any) -> None:
    """From hidden 256 a step's ``h @ W_hh.T`` runs on oneDNN's matmul (where this PyTorch has
    it): the plain loop bitwise the general (edited) loop, h within 1e-6 of the module's own
    output; an LSTM's c_n and gates within 1e-6 of the equations in float64 fed the loop's h."""
    from rnnlens.adapters.torch_ import emit_loop

    packed = []

    def counting(w: torch.Tensor, n: int, steps: int) -> Any:
        got = onednn_weight(w, n, steps)
        packed.append(got is not None)
        return got

    monkeypatch.setattr(emit_loop, "onednn_weight", counting)
    torch.manual_seed(5)
    m = cls(5, 256, num_layers=2, bidirectional=True, batch_first=True).eval()
    x = torch.randn(16, 64, 5)  # 16 × 64 rows: enough for the packed weight
    with torch.no_grad():
        y, final = m(x)
    plain = rnnlens.trace(m, x, strategy="emit")
    with torch.no_grad():
        available = onednn_weight(m.weight_hh_l0, 16, 64) is not None
    assert packed and all(packed) == available  # every direction of every layer, where available
    general = rnnlens.intervene(m, x, [rnnlens.Edit(name, -1, scale=1.0) for name in plain]).states
    for name in plain:
        a, b = plain[name], general[name]
        np.testing.assert_array_equal(a.h, b.h)
        if cls is nn.LSTM:
            np.testing.assert_array_equal(a.c, b.c)
        for gate in a.gates:
            np.testing.assert_array_equal(a.gates[gate], b.gates[gate], err_msg=f"{name} {gate}")
    top = plain[list(plain)[-1]]
    np.testing.assert_allclose(top.h, y.numpy(), rtol=0, atol=1e-6)
    if cls is nn.GRU:
        return
    c_n = final[1]
    np.testing.assert_allclose(top.c[:, -1, :256], c_n[2].numpy(), rtol=0, atol=1e-6)
    np.testing.assert_allclose(top.c[:, 0, 256:], c_n[3].numpy(), rtol=0, atol=1e-6)
    # forward direction of layer 0 against float64 equations fed the loop's own h
    s, w = plain["lstm.l0"], m.double()
    h = torch.zeros(16, 256, dtype=torch.float64)
    with torch.no_grad():
        for t in range(6):  # the first steps
            z = x[:, t].double() @ w.weight_ih_l0.T + h @ w.weight_hh_l0.T + w.bias_ih_l0 + w.bias_hh_l0
            i, f, g, o = z.chunk(4, 1)
            for gate, want in zip("ifgo", (i.sigmoid(), f.sigmoid(), g.tanh(), o.sigmoid())):
                np.testing.assert_allclose(s.gates[gate][:, t, :256], want.numpy(), rtol=0, atol=1e-6)
            h = torch.from_numpy(s.h[:, t, :256]).double()
