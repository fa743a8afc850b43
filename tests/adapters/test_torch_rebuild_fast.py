"""Small LSTM batches under ``strategy="auto"`` (:mod:`rnnlens.adapters.torch_.rebuild_fast`):
PyTorch's kernel runs and c and the gates are rebuilt from its h during the recording. h is
bitwise the module's own output; h, c and the gates against the step loop (``strategy="emit"``)
within 1e-6 (float32; measured ≤ 1.2e-7) and 1e-12 (float64); larger batches and GRUs keep the
loop."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import rnnlens
from rnnlens.adapters.torch_ import emit


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many layers went through the rebuild (a spy on :func:`.emit.rebuild_layer`)."""
    seen: list[int] = []
    real = emit.rebuild_layer

    def spy(*args: Any) -> Any:
        out = real(*args)
        seen.append(out is not None)
        return out

    monkeypatch.setattr(emit, "rebuild_layer", spy)
    return seen


def _compare(m: nn.Module, x: torch.Tensor, hx: Any, atol: float) -> None:
    auto = rnnlens.trace(m, x, hx)
    loop = rnnlens.trace(m, x, hx, strategy="emit")
    with torch.no_grad():
        own = m(x, hx)[0]
    names = list(auto)
    top = auto[names[-1]].h
    want = own.numpy() if x.dim() == 3 else own.numpy()[None]
    if x.dim() == 3 and not getattr(m, "batch_first", False):
        want = want.transpose(1, 0, 2)
    np.testing.assert_array_equal(top, want)  # the kernel's own output
    for name in names:
        a, b = auto[name], loop[name]
        np.testing.assert_allclose(a.h, b.h, rtol=0, atol=atol)
        if isinstance(m, nn.LSTM):
            np.testing.assert_allclose(a.c, b.c, rtol=0, atol=atol, err_msg=f"{name} c")
        assert list(a.gates) == list(b.gates)
        for gate in a.gates:
            np.testing.assert_allclose(
                a.gates[gate], b.gates[gate], rtol=0, atol=atol, err_msg=f"{name} {gate}"
            )


@settings(deadline=None)  # examples: the profile's (tests/conftest.py)
@given(
    bidirectional=st.booleans(),
    layers=st.integers(1, 2),
    batch_first=st.booleans(),
    bias=st.booleans(),
    batch=st.sampled_from([0, 1, 3]),  # 0: unbatched
    steps=st.integers(1, 6),
    given_hx=st.booleans(),
    double=st.booleans(),
)
def test_small_lstm_batches_rebuild_from_the_kernel(
    bidirectional: bool, layers: int, batch_first: bool, bias: bool, batch: int, steps: int,
    given_hx: bool, double: bool,
) -> None:  # fmt: skip
    torch.manual_seed(steps + 7 * batch)
    dtype = torch.float64 if double else torch.float32
    options = {"bidirectional": bidirectional, "batch_first": batch_first, "bias": bias}
    m = nn.LSTM(3, 4, num_layers=layers, **options).eval().to(dtype)
    shape = (steps, 3) if batch == 0 else ((batch, steps, 3) if batch_first else (steps, batch, 3))
    x = torch.randn(*shape, dtype=dtype)
    hx = None
    if given_hx:
        rows = (layers * (2 if bidirectional else 1),) + (() if batch == 0 else (batch,))
        h0 = torch.randn(*rows, 4, dtype=dtype)
        hx = (h0, torch.randn(*rows, 4, dtype=dtype))
    seen: list[bool] = []
    real = emit.rebuild_layer

    def spy(*args: Any) -> Any:
        out = real(*args)
        seen.append(out is not None)
        return out

    emit.rebuild_layer = spy  # (hypothesis runs many examples per test: no fixture)
    # a no-op hook: the general path (a bare module's rebuild runs through .express, whose
    # results are the general path's bitwise: tests/adapters/test_torch_express_full.py)
    handle = m.register_forward_hook(lambda *a: None)
    try:
        _compare(m, x, hx, 1e-12 if double else 1e-6)
    finally:
        emit.rebuild_layer = real
        handle.remove()
    assert seen and all(seen)


def test_large_batches_and_grus_keep_the_step_loop(calls: list[int]) -> None:
    rnnlens.trace(nn.LSTM(32, 16, batch_first=True).eval(), torch.randn(13, 3, 32))
    rnnlens.trace(nn.GRU(3, 4).eval(), torch.randn(5, 1, 3))
    assert calls == []
    small = nn.LSTM(32, 32, batch_first=True).eval()
    small.register_forward_hook(lambda *a: None)  # the general path (bare: through .express)
    rnnlens.trace(small, torch.randn(1, 3, 32))
    assert calls == [True]


def test_edits_and_emit_keep_the_step_loop(calls: list[int]) -> None:
    m = nn.LSTM(3, 4, batch_first=True).eval()
    x = torch.randn(2, 5, 3)
    rnnlens.trace(m, x, strategy="emit")
    rnnlens.intervene(m, x, [rnnlens.Edit("lstm", 2, scale=0.5)])
    assert calls == []


class _Shifted(nn.LSTM):
    """An LSTM whose forward changes its own bias before calling the kernel: the rebuild reads
    the weights as the kernel saw them (the bias is put back after the trace)."""

    def forward(self, x: Any, hx: Any = None) -> Any:
        with torch.no_grad():
            self.bias_hh_l0.add_(0.5)
        return super().forward(x, hx)


def test_weights_changed_by_forward_are_the_kernels(calls: list[int]) -> None:
    torch.manual_seed(2)
    m = _Shifted(3, 4, batch_first=True).eval()
    before = m.bias_hh_l0.detach().clone()
    states = rnnlens.trace(m, torch.randn(2, 5, 3))
    assert calls == [True]
    assert torch.equal(m.bias_hh_l0, before)
    assert states[next(iter(states))].c is not None
