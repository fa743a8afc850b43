"""What the express path keeps between calls (:mod:`rnnlens.adapters.torch_.express`: the plan
per configuration and options; :mod:`rnnlens.adapters.torch_.trusted`: the class bodies found
PyTorch's own) is never a stale verdict: a hook added, a weight replaced, a class patched or a
module reconfigured after a first call is seen at the next one."""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import rnnlens  # noqa: E402
from rnnlens.adapters.base import TraceOptions  # noqa: E402
from rnnlens.adapters.torch_.express import capture_express  # noqa: E402
from rnnlens.adapters.torch_.trusted import own_code_only  # noqa: E402

FIELDS = [("h",), None]


def _first(m: Any, x: Any, fields: Any) -> None:
    """A first call, on the express path (its caches filled)."""
    assert capture_express(m, (x,), {}, TraceOptions(fields=fields)) is not None
    rnnlens.trace(m, x, fields=fields)


@pytest.mark.parametrize("fields", FIELDS)
def test_a_hook_added_after_a_first_call_runs(fields: Any) -> None:
    torch.manual_seed(0)
    m, x = torch.nn.LSTM(3, 4, batch_first=True), torch.randn(2, 5, 3)
    _first(m, x, fields)
    calls: list[int] = []
    handle = m.register_forward_hook(lambda *a: calls.append(1))
    try:
        assert capture_express(m, (x,), {}, TraceOptions(fields=fields)) is None
        rnnlens.trace(m, x, fields=fields)
        assert calls  # the general path ran the module with its hook
    finally:
        handle.remove()
    assert capture_express(m, (x,), {}, TraceOptions(fields=fields)) is not None


@pytest.mark.parametrize("fields", FIELDS)
@pytest.mark.parametrize("how", ["setattr", "past setattr", "in place"])
def test_a_weight_replaced_after_a_first_call_is_the_one_used(fields: Any, how: str) -> None:
    torch.manual_seed(0)
    m, x = torch.nn.LSTM(3, 4, batch_first=True), torch.randn(2, 5, 3)
    _first(m, x, fields)
    new = torch.nn.Parameter(m.weight_hh_l0.detach() * 3)
    if how == "setattr":
        m.weight_hh_l0 = new
    elif how == "past setattr":
        m._parameters["weight_hh_l0"] = new
    else:
        with torch.no_grad():
            m.weight_hh_l0.mul_(3)
    got = rnnlens.trace(m, x, fields=fields)["lstm"]
    with torch.no_grad():
        want, _ = m(x)
    np.testing.assert_array_equal(got.h, want.numpy())
    if fields is None:  # c and gates rebuilt from the new weights (checked against the new h)
        assert got.c.shape == (2, 5, 4)


@pytest.mark.parametrize("fields", FIELDS)
@pytest.mark.parametrize("where", ["LSTM.forward", "RNNBase._update_flat_weights", "Module._call_impl"])
def test_a_class_patched_after_a_first_call_is_seen(fields: Any, where: str) -> None:
    torch.manual_seed(0)
    m, x = torch.nn.LSTM(3, 4, batch_first=True), torch.randn(2, 5, 3)
    _first(m, x, fields)
    owner_name, name = where.split(".")
    owner = {"LSTM": torch.nn.LSTM, "RNNBase": torch.nn.RNNBase, "Module": torch.nn.Module}[owner_name]
    original = vars(owner)[name]
    calls: list[int] = []

    @functools.wraps(original)
    def patched(*a: Any, **k: Any) -> Any:
        calls.append(1)
        return original(*a, **k)

    setattr(owner, name, patched)
    try:
        assert not own_code_only(m, (x,), {})
        assert capture_express(m, (x,), {}, TraceOptions(fields=fields)) is None
        rnnlens.trace(m, x, fields=fields)
        assert calls
    finally:
        setattr(owner, name, original)
    assert own_code_only(m, (x,), {})


def test_a_class_attribute_added_or_removed_after_a_first_call_is_seen() -> None:
    m, x = torch.nn.GRU(3, 4), torch.randn(5, 2, 3)
    _first(m, x, ("h",))
    torch.nn.GRU.extra = lambda self: None  # a callable of the user's in PyTorch's class
    try:
        assert not own_code_only(m, (x,), {})
    finally:
        del torch.nn.GRU.extra
    assert own_code_only(m, (x,), {})


@pytest.mark.parametrize("fields", FIELDS)
def test_a_module_reconfigured_after_a_first_call_is_planned_again(fields: Any) -> None:
    torch.manual_seed(0)
    m, x = torch.nn.LSTM(3, 4, batch_first=True), torch.randn(2, 5, 3)
    _first(m, x, fields)
    m.batch_first = False
    got = rnnlens.trace(m, x, fields=fields)["lstm"]
    assert got.h.shape == (5, 2, 4)
    with torch.no_grad():
        np.testing.assert_array_equal(got.h, m(x)[0].numpy().transpose(1, 0, 2))
    if fields is None:
        assert got.c.shape == (5, 2, 4)


def test_the_default_options_kept_per_adapter_are_what_checking_gives() -> None:
    from rnnlens import adapters
    from rnnlens.api.tracer import _default_options
    from rnnlens.errors import FieldNotAvailableError, OptionError

    adapter = adapters.for_model(torch.nn.GRU(3, 4))
    for fields in (None, ("h",), ("gates", "h"), ("h", "h")):
        for _ in range(2):  # (the second from the cache)
            got = _default_options(adapter, None, fields, None, None, "auto", "join")
            assert got == TraceOptions(
                fields=None if fields is None else tuple(f for f in ("h", "c", "gates") if f in fields)
            )
    for args in [("x", None), (None, ["h"]), (None, ("h",))]:
        assert _default_options(adapter, args[0], args[1], None, 2, "auto", "join") is None
    assert _default_options(adapter, None, None, None, None, "emit", "join") is None
    m, x = torch.nn.GRU(3, 4), torch.randn(5, 2, 3)
    for _ in range(2):  # bad options are errors at every call, not kept
        with pytest.raises(FieldNotAvailableError):
            rnnlens.trace(m, x, fields=("hh",))
        with pytest.raises(OptionError):
            rnnlens.trace(m, x, strategy="auto ")
        with pytest.raises(OptionError):
            rnnlens.trace(m, x, calls="joined")
