"""The put-back is skipped only where PyTorch's own code alone runs (a bare nn.LSTM/GRU/RNN,
:mod:`rnnlens.adapters.torch_.trusted`); everything a model's own code, a hook or a patch could
change on the model is still put back — in place and by reassignment, under inference_mode."""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import rnnlens  # noqa: E402
from rnnlens.adapters.torch_.trusted import own_code_only  # noqa: E402


def _state(m: Any) -> dict[str, Any]:
    """Every binding of every module's __dict__, and every parameter's and buffer's values."""
    out: dict[str, Any] = {}
    for path, mod in m.named_modules():
        for k, v in vars(mod).items():
            out[f"{path}:{k}"] = v.copy() if isinstance(v, (dict, list, set)) else v
    for k, t in [*m.named_parameters(), *m.named_buffers()]:
        out[f"values:{k}"] = t.detach().clone()
    return out


def _same(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        if k.startswith("values:"):
            assert torch.equal(a[k], b[k]), k
        elif isinstance(a[k], (dict, list, set)):
            assert type(a[k]) is type(b[k]) and len(a[k]) == len(b[k]), k
        else:
            assert a[k] is b[k] or a[k] == b[k], k


@pytest.mark.parametrize("cls", ["LSTM", "GRU", "RNN"])
def test_a_bare_module_runs_its_own_code_only_and_is_left_as_it_was(cls: str) -> None:
    torch.manual_seed(0)
    m = getattr(torch.nn, cls)(3, 4, num_layers=2, batch_first=True)  # in training mode
    x = torch.randn(2, 5, 3)
    assert own_code_only(m, (x,), {})
    before = _state(m)
    states = rnnlens.trace(m, x, fields=("h",))
    _same(before, _state(m))
    assert m.training
    with torch.no_grad():
        want = m.eval()(x)[0]
    np.testing.assert_array_equal(states[f"{cls.lower()}.l1"].h, want.numpy())


def test_a_bare_module_s_refreshed_weight_list_is_put_back() -> None:
    m, x = torch.nn.GRU(3, 4), torch.randn(5, 2, 3)
    flat = list(m._flat_weights)
    m._parameters["weight_hh_l0"] = torch.nn.Parameter(m.weight_hh_l0.detach() * 2)  # past __setattr__
    rnnlens.trace(m, x, fields=("h",))  # GRU.forward refreshes _flat_weights: put back
    assert all(a is b for a, b in zip(m._flat_weights, flat)) and len(m._flat_weights) == len(flat)


class _Mode(torch.overrides.TorchFunctionMode):
    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        return func(*args, **(kwargs or {}))


class _Sub(torch.Tensor):
    pass


def test_anything_but_pytorch_s_own_code_takes_the_full_put_back() -> None:
    x = torch.zeros(2, 5, 3)
    m = torch.nn.LSTM(3, 4)
    assert not own_code_only(type("Mine", (torch.nn.LSTM,), {})(3, 4), (x,), {})  # a subclass
    assert not own_code_only(m, (x.as_subclass(_Sub),), {})  # a tensor subclass argument
    assert not own_code_only(m, (x, "state"), {})
    with _Mode():
        assert not own_code_only(m, (x,), {})
    handle = m.register_forward_pre_hook(lambda *a: None)
    assert not own_code_only(m, (x,), {})
    handle.remove()
    handle = torch.nn.modules.module.register_module_forward_hook(lambda *a: None)
    try:
        assert not own_code_only(m, (x,), {})
    finally:
        handle.remove()
    for name in ("forward", "_call_impl", "_update_flat_weights", "check_forward_args"):
        vars(m)[name] = getattr(m, name)  # an instance attribute shadowing a method
        assert not own_code_only(m, (x,), {}), name
        del vars(m)[name]
    original = torch.nn.LSTM.forward
    torch.nn.LSTM.forward = functools.wraps(original)(lambda self, *a, **k: original(self, *a, **k))
    try:
        assert not own_code_only(m, (x,), {})
    finally:
        torch.nn.LSTM.forward = original
    with torch.inference_mode():
        inference = torch.nn.GRU(3, 4)  # parameters with no version counter
    assert not own_code_only(inference, (x,), {})
    assert own_code_only(m, (x,), {})


def test_a_hook_that_changes_a_bare_module_is_put_back() -> None:
    torch.manual_seed(0)
    m, x = torch.nn.LSTM(3, 4, batch_first=True), torch.randn(2, 5, 3)

    def hook(mod: Any, args: Any, out: Any) -> None:
        with torch.no_grad():
            mod.bias_hh_l0.add_(1.0)  # in place
        mod.calls = getattr(mod, "calls", 0) + 1  # a new attribute

    m.register_forward_hook(hook)
    before = _state(m)
    rnnlens.trace(m, x)
    _same(before, _state(m))


class Changes(torch.nn.Module):
    """forward changes a parameter, a buffer and attributes, in place or by reassignment."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.rnn = torch.nn.GRU(3, 4, batch_first=True)
        self.register_buffer("seen", torch.zeros(4))
        self.how, self.count = how, 0

    def forward(self, x: Any) -> Any:
        y = self.rnn(x)[0]
        with torch.no_grad():
            if self.how == "param in place":
                self.rnn.weight_hh_l0.mul_(2.0)
            elif self.how == "param reassigned":
                self.rnn.weight_hh_l0 = torch.nn.Parameter(self.rnn.weight_hh_l0 * 2.0)
            elif self.how == "buffer in place":
                self.seen.add_(y[0, -1])
            elif self.how == "buffer reassigned":
                self.seen = y[0, -1].clone()
            elif self.how == "attribute":
                self.count += 1
                self.last = y
        return y


@pytest.mark.parametrize(
    "how", ["param in place", "param reassigned", "buffer in place", "buffer reassigned", "attribute"]
)
@pytest.mark.parametrize("inference", [False, True])
def test_what_the_model_s_own_forward_changes_is_put_back(how: str, inference: bool) -> None:
    torch.manual_seed(0)
    m, x = Changes(how), torch.randn(2, 5, 3)
    before = _state(m)
    if inference:
        with torch.inference_mode():
            rnnlens.trace(m, x.clone())
    else:
        rnnlens.trace(m, x)
    _same(before, _state(m))
