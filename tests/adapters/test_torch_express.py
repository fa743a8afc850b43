"""``h`` alone of a bare one-layer module (:mod:`rnnlens.adapters.torch_.express`): the same
names, specs and arrays as the general path, bitwise, and the general path wherever it does not
apply (the oracle: the same module with a no-op forward hook, which takes the general path)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from torch_paths import general_path as _general  # noqa: E402

import rnnlens  # noqa: E402
from rnnlens.adapters.base import TraceOptions  # noqa: E402
from rnnlens.adapters.torch_.express import capture_express  # noqa: E402
from rnnlens.errors import InputError, LayerNotFoundError  # noqa: E402


def _same(a: Any, b: Any) -> None:
    assert list(a) == list(b)
    for name in a:
        assert a[name].spec == b[name].spec
        assert a[name].mask is None and b[name].mask is None
        assert list(a[name].directions) == list(b[name].directions)
        for d in a[name].directions:
            np.testing.assert_array_equal(a[name].directions[d].h, b[name].directions[d].h)
            for x, y in [(a[name].directions[d], b[name].directions[d])]:
                assert x._c is None and x._gates is None and y._c is None and y._gates is None


CASES = [
    ("LSTM", {}),
    ("LSTM", {"bidirectional": True, "batch_first": False}),
    ("LSTM", {"proj_size": 2, "bidirectional": True}),
    ("GRU", {"batch_first": False}),
    ("GRU", {"bidirectional": True, "bias": False}),
    ("RNN", {"nonlinearity": "relu", "bidirectional": True}),
    ("RNN", {}),
    ("LSTM", {"num_layers": 3, "bidirectional": True}),
    ("GRU", {"num_layers": 2, "batch_first": False}),
    ("RNN", {"num_layers": 2, "nonlinearity": "relu"}),
]


@pytest.mark.parametrize(("cls", "kw"), CASES)
@pytest.mark.parametrize("form", ["batched", "unbatched", "hx", "float64"])
def test_the_module_s_own_output_as_the_general_path_gives_it(
    cls: str, kw: dict[str, Any], form: str
) -> None:
    torch.manual_seed(0)
    m = getattr(torch.nn, cls)(3, 4, **kw)  # in training mode: put back after
    batch_first = kw.get("batch_first", False)
    x = torch.randn(2, 5, 3) if batch_first else torch.randn(5, 2, 3)
    args: tuple[Any, ...] = (x,)
    if form == "unbatched":
        args = (torch.randn(5, 3),)
    elif form == "float64":
        m, args = m.double(), (x.double(),)
    elif form == "hx":
        n = (2 if kw.get("bidirectional") else 1) * kw.get("num_layers", 1)
        units = kw.get("proj_size") or 4
        h0 = torch.randn(n, 2, units)
        args = (x, (h0, torch.randn(n, 2, 4)) if cls == "LSTM" else h0)
    fields = None if cls == "RNN" else ("h",)  # an RNN has h only: every field is h alone
    assert capture_express(m, args, {}, TraceOptions(fields=fields)) is not None
    fast = rnnlens.trace(m, *args, fields=fields)
    assert m.training and "forward" not in vars(m)
    _same(fast, _general(m, *args, fields=fields))
    with torch.no_grad():
        want = m.eval()(*args)[0]
    top = f"{cls.lower()}.l{kw['num_layers'] - 1}" if "num_layers" in kw else cls.lower()
    got = np.concatenate([d.h for d in fast[top].directions.values()], -1)
    if form != "unbatched" and not batch_first:
        want = want.transpose(0, 1)
    np.testing.assert_array_equal(got[0] if form == "unbatched" else got, want.numpy())


def test_where_it_does_not_apply_the_general_path_runs() -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 5, 3)
    two = torch.nn.LSTM(3, 4, num_layers=2, batch_first=True)
    one = torch.nn.LSTM(3, 4, batch_first=True)
    packed = torch.nn.utils.rnn.pack_padded_sequence(x, [5, 3], batch_first=True)
    for m, args, fields in [
        (torch.nn.GRU(3, 4, batch_first=True), (x,), ("h", "gates")),  # (LSTM: express_full)
        (one, (packed,), ("h",)),
        (one, (x.half(),), ("h",)),
    ]:
        assert capture_express(m, args, {}, TraceOptions(fields=fields)) is None
    assert capture_express(one, (x,), {}, TraceOptions(fields=("h",), layers=("other",))) is None
    assert capture_express(two, (x,), {}, TraceOptions(fields=("h",), layers=("lstm.l0", "x"))) is None
    with pytest.raises(LayerNotFoundError):
        rnnlens.trace(one, x, fields=("h",), layers="other")
    for layers in (None, "lstm.l0", "lstm.l1", ["lstm.l1", "lstm.l0"]):
        names = (layers,) if isinstance(layers, str) else None if layers is None else tuple(layers)
        assert capture_express(two, (x,), {}, TraceOptions(fields=("h",), layers=names)) is not None
        _same(
            rnnlens.trace(two, x, fields=("h",), layers=layers),
            _general(two, x, fields=("h",), layers=layers),
        )
    with torch.no_grad():  # (with autograd on, PyTorch picks another kernel: 1e-8 apart)
        want = two.eval()(x)[0]
    np.testing.assert_array_equal(rnnlens.trace(two, x, fields=("h",))["lstm.l1"].h, want.numpy())


def test_an_input_the_module_refuses_is_the_general_path_s_error() -> None:
    m = torch.nn.GRU(3, 4, batch_first=True)
    assert capture_express(m, (torch.randn(2, 5, 7),), {}, TraceOptions(fields=("h",))) is None
    with pytest.raises(InputError, match="could not run on what the model passed"):
        rnnlens.trace(m, torch.randn(2, 5, 7), fields=("h",))


def test_a_module_reconfigured_between_calls_is_read_again() -> None:
    torch.manual_seed(0)
    m, x = torch.nn.GRU(3, 4, batch_first=True), torch.randn(2, 5, 3)
    _same(rnnlens.trace(m, x, fields=("h",)), _general(m, x, fields=("h",)))
    m.batch_first = False  # the same module, another layout: its configuration is read again
    _same(rnnlens.trace(m, x, fields=("h",)), _general(m, x, fields=("h",)))
    assert rnnlens.trace(m, x, fields=("h",))["gru"].h.shape == (5, 2, 4)
