"""``c`` and gates of a bare ``nn.LSTM`` on a small batch through the express path
(:mod:`rnnlens.adapters.torch_.express`: the kernel under inference mode, then
:mod:`.rebuild_fast`, no recording): the same names, specs and arrays as the general path,
bitwise (it rebuilds from the same kernel's h, as :mod:`.emit` decides for ``strategy="auto"``),
and within 1e-5 (float32; 1e-12 float64) of rnnlens' step loop (``strategy="emit"``)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

torch = pytest.importorskip("torch")

from torch_paths import general_path as _general  # noqa: E402

import rnnlens  # noqa: E402
from rnnlens.adapters.base import TraceOptions  # noqa: E402
from rnnlens.adapters.torch_.emit import REBUILD_MAX_BATCH  # noqa: E402
from rnnlens.adapters.torch_.express import capture_express  # noqa: E402
from rnnlens.errors import ParityError  # noqa: E402


def _compare(a: Any, b: Any, rtol: float = 0.0, atol: float = 0.0) -> None:
    assert list(a) == list(b)
    for name in a:
        assert a[name].spec == b[name].spec and a[name].mask is None and b[name].mask is None
        assert list(a[name].directions) == list(b[name].directions)
        for d in a[name].directions:
            x, y = a[name].directions[d], b[name].directions[d]
            np.testing.assert_allclose(x.h, y.h, rtol=rtol, atol=atol)
            assert x.h.dtype == y.h.dtype
            assert (x._c is None) == (y._c is None) and (x._gates is None) == (y._gates is None)
            if x._c is not None:
                np.testing.assert_allclose(x.c, y.c, rtol=rtol, atol=atol)
            if x._gates is not None:
                for k in x.gates:
                    np.testing.assert_allclose(x.gates[k], y.gates[k], rtol=rtol, atol=atol)


@settings(deadline=None)  # examples: the profile's (tests/conftest.py)
@given(
    bidirectional=st.booleans(),
    num_layers=st.integers(1, 3),
    batch_first=st.booleans(),
    bias=st.booleans(),
    unbatched=st.booleans(),
    with_hx=st.booleans(),
    double=st.booleans(),
    batch=st.integers(1, REBUILD_MAX_BATCH),
    steps=st.integers(1, 7),
    fields=st.sampled_from([None, ("h", "c"), ("gates",), ("c",), ("h", "c", "gates")]),
    subset=st.sets(st.integers(0, 2)),
)
def test_every_field_as_the_general_path_and_the_step_loop_give_it(
    bidirectional: bool,
    num_layers: int,
    batch_first: bool,
    bias: bool,
    unbatched: bool,
    with_hx: bool,
    double: bool,
    batch: int,
    steps: int,
    fields: tuple[str, ...] | None,
    subset: set[int],
) -> None:
    torch.manual_seed(0)
    m = torch.nn.LSTM(
        3, 4, num_layers=num_layers, bidirectional=bidirectional, batch_first=batch_first, bias=bias
    )
    dt = torch.float64 if double else torch.float32
    m = m.to(dt)
    n_dir = 2 if bidirectional else 1
    if unbatched:
        x = torch.randn(steps, 3, dtype=dt)
        hx = (torch.randn(num_layers * n_dir, 4, dtype=dt), torch.randn(num_layers * n_dir, 4, dtype=dt))
    else:
        x = torch.randn(batch, steps, 3, dtype=dt) if batch_first else torch.randn(steps, batch, 3, dtype=dt)
        shape = (num_layers * n_dir, batch, 4)
        hx = (torch.randn(*shape, dtype=dt), torch.randn(*shape, dtype=dt))
    args: tuple[Any, ...] = (x, hx) if with_hx else (x,)
    names = [f"lstm.l{k}" for k in range(num_layers)] if num_layers > 1 else ["lstm"]
    chosen = [names[k] for k in sorted(subset) if k < num_layers] or None
    kw: dict[str, Any] = {"fields": fields, "layers": chosen}
    options = TraceOptions(fields=fields, layers=None if chosen is None else tuple(chosen))
    assert capture_express(m, args, {}, options) is not None
    fast = rnnlens.trace(m, *args, **kw)
    assert m.training and "forward" not in vars(m)
    _compare(fast, _general(m, *args, **kw))
    tol = 1e-12 if double else 1e-5
    _compare(fast, rnnlens.trace(m, *args, strategy="emit", **kw), rtol=tol, atol=tol)


def test_where_the_rebuild_does_not_apply_the_general_path_runs() -> None:
    torch.manual_seed(0)
    lstm, gru = torch.nn.LSTM(3, 4, batch_first=True), torch.nn.GRU(3, 4, batch_first=True)
    big = torch.randn(REBUILD_MAX_BATCH + 1, 5, 3)
    x = torch.randn(2, 5, 3)
    assert capture_express(gru, (x,), {}, TraceOptions()) is None  # a GRU: the step loop
    assert capture_express(lstm, (big,), {}, TraceOptions()) is None  # a large batch: the step loop
    assert capture_express(lstm, (x,), {}, TraceOptions(strategy="emit")) is None
    assert capture_express(lstm, (x,), {}, TraceOptions(strategy="reconstruct")) is None
    proj = torch.nn.LSTM(3, 4, proj_size=2, batch_first=True)
    assert capture_express(proj, (x,), {}, TraceOptions()) is None
    for m, inp in [(gru, x), (lstm, big), (proj, x)]:
        _compare(rnnlens.trace(m, inp), _general(m, inp))


def test_a_failed_parity_is_the_general_path_s_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from rnnlens.adapters.torch_ import rebuild_fast

    def wrong(*a: Any, **k: Any) -> Any:  # o * tanh(c) off: what a wrong equation would give
        c, cand, h = original(*a, **k)
        return c, cand, h + 1

    original = rebuild_fast._lstm
    monkeypatch.setattr(rebuild_fast, "_lstm", wrong)
    lstm = torch.nn.LSTM(3, 4, batch_first=True)
    with pytest.raises(ParityError):
        rnnlens.trace(lstm, torch.randn(2, 5, 3))
