"""Recurrent kernels a model calls itself: ``torch._VF.lstm`` / ``gru`` / ``rnn_tanh`` / ``rnn_relu``.

Some modules hold their own weights and call PyTorch's fused op directly (a hand-rolled
``nn.LSTM`` replacement, weight-dropped LSTMs, ``torch.lstm(...)``): no ``nn.LSTM`` module is
there to observe. During the one forward pass a :class:`~torch.overrides.TorchFunctionMode`
(:class:`_DirectCalls`) sees every such call that no recorded module makes (PyTorch dispatches
these ops through ``__torch_function__``). Each is run instead through an ``nn.LSTM`` / ``GRU`` /
``RNN`` built on the ``meta`` device around *the very tensors the call passed* (nothing is
copied, nothing of the model is changed) and recorded like any other module, so every layer and
direction, ``c`` and gates come with the same exactness; the model receives the triple (or pair)
the op itself returns.

Names: the path of the module whose ``forward`` made the call (found on the call stack), like
a module's; a second weight set called from the same module is ``"<path>.vf1"``, ... A call in
training mode with dropout between layers cannot be reproduced and is an error.

Example:
    >>> import torch
    >>> from rnnlens.adapters.torch_.direct import parse
    >>> lstm = torch.nn.LSTM(3, 4)
    >>> x, h = torch.zeros(5, 2, 3), (torch.zeros(1, 2, 4), torch.zeros(1, 2, 4))
    >>> parse(torch._VF.lstm, (x, h, lstm._flat_weights, True, 1, 0.0, False, False, False)).base
    'LSTM'
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import _VF, nn
from torch._C import (
    _get_function_stack_at,
    _len_torch_function_stack,
    _pop_torch_function_stack,
    _push_on_torch_function_stack,
)
from torch.nn.utils.rnn import PackedSequence
from torch.overrides import TorchFunctionMode

from ...errors import UnsupportedLayerError
from ..base import Args

__all__ = [
    "DirectCall",
    "DirectCalls",
    "caller",
    "module_for",
    "op_result",
    "parse",
    "unwatched",
    "user_order",
]

_OPS: dict[Any, tuple[str, int, str]] = {
    _VF.lstm: ("LSTM", 4, "tanh"),
    _VF.gru: ("GRU", 3, "tanh"),
    _VF.rnn_tanh: ("RNN", 1, "tanh"),
    _VF.rnn_relu: ("RNN", 1, "relu"),
}
# the same ops as a torch.export program's graph module calls them (:mod:`.forms`)
_ATEN = {"lstm": _VF.lstm, "gru": _VF.gru, "rnn_tanh": _VF.rnn_tanh, "rnn_relu": _VF.rnn_relu}
for _name, _vf in _ATEN.items():
    for _overload in ("input", "data"):
        _OPS[getattr(getattr(torch.ops.aten, _name), _overload)] = _OPS[_vf]


@dataclass
class DirectCall:
    """One direct call, read from its arguments (both of the op's overloads)."""

    base: str  # LSTM, GRU, RNN
    nonlinearity: str
    input: Any  # a tensor, or a PackedSequence rebuilt from (data, batch_sizes)
    hx: Any
    params: list[torch.Tensor]
    has_biases: bool
    num_layers: int
    dropout: float
    train: bool
    bidirectional: bool
    batch_first: bool
    packed: bool

    def key(self) -> tuple[Any, ...]:
        return (self.base, self.nonlinearity, self.has_biases, self.num_layers, self.bidirectional,
                self.batch_first, *(id(p) for p in self.params))  # fmt: skip


def parse(func: Any, args: Args) -> DirectCall | None:
    """The call, or None when ``func`` is not a recurrent op (or the arguments are not its)."""
    op = _OPS.get(func)
    if op is None:
        return None
    base, _, nonlinearity = op
    a = list(args)
    # (input, hx, params, has_biases, num_layers, dropout, train, bidirectional, batch_first)
    # (data, batch_sizes, hx, params, has_biases, num_layers, dropout, train, bidirectional)
    packed = isinstance(a[1], torch.Tensor) and (base == "LSTM" or isinstance(a[2], torch.Tensor))
    if packed and len(a) >= 9:
        data, sizes, hx, params, bias, layers, dropout, train, bidir = a[:9]
        return DirectCall(base, nonlinearity, _packed(data, sizes), hx, list(params), bool(bias),
                          int(layers), float(dropout), bool(train), bool(bidir), False, True)  # fmt: skip
    if not packed and len(a) >= 9:
        x, hx, params, bias, layers, dropout, train, bidir, batch_first = a[:9]
        return DirectCall(base, nonlinearity, x, hx, list(params), bool(bias), int(layers),
                          float(dropout), bool(train), bool(bidir), bool(batch_first), False)  # fmt: skip
    return None


def _packed(data: torch.Tensor, sizes: torch.Tensor) -> PackedSequence:
    """The ``PackedSequence`` the model packed ``data`` in, found on the call stack: its sample
    order (``sorted_indices``) is not among the op's arguments, and without it the states would
    silently be in length order."""
    frame = inspect.currentframe()
    while frame is not None:
        for v in list(frame.f_locals.values()):
            if isinstance(v, PackedSequence) and v.data is data:
                return PackedSequence(data, sizes, v.sorted_indices, v.unsorted_indices)
        frame = frame.f_back
    if len(sizes) and int(sizes[-1]) != int(sizes[0]):
        raise UnsupportedLayerError(
            "A direct packed recurrent op call (torch._VF.lstm/gru/rnn_* on data and batch_sizes) was "
            "made with no PackedSequence of that data in view, so rnnlens cannot tell which input "
            "sample each row is. Keep the PackedSequence in a local variable of the calling code "
            "(packed = pack_padded_sequence(...)), or call an nn.LSTM/GRU/RNN module with it."
        )
    return PackedSequence(data, sizes)  # every sequence has the full length: no reordering


def user_order(call: DirectCall) -> Any:
    """The call's ``hx`` in the input's sample order: the op gets it in the packed (length)
    order, and ``nn.LSTM.forward`` reorders what it is given by ``sorted_indices``."""
    order = call.input.unsorted_indices if call.packed else None
    if order is None or call.hx is None:
        return call.hx
    if isinstance(call.hx, (tuple, list)):
        return tuple(h.index_select(1, order) for h in call.hx)
    return call.hx.index_select(1, order)


def module_for(call: DirectCall) -> Any:
    """An ``nn.LSTM``/``GRU``/``RNN`` whose parameters *are* the call's tensors (no copy)."""
    n_dir = 2 if call.bidirectional else 1
    per = len(call.params) // (call.num_layers * n_dir)
    proj = per in (3, 5)  # w_ih, w_hh, [b_ih, b_hh], [w_hr]
    gates = {"LSTM": 4, "GRU": 3, "RNN": 1}[call.base]
    w_ih = call.params[0]
    hidden = int(w_ih.shape[0]) // gates
    kwargs: dict[str, Any] = dict(
        num_layers=call.num_layers, bias=call.has_biases, batch_first=call.batch_first,
        bidirectional=call.bidirectional, device="meta",
    )  # fmt: skip
    if call.base == "LSTM":
        kwargs["proj_size"] = int(call.params[per - 1].shape[0]) if proj else 0
    if call.base == "RNN":
        kwargs["nonlinearity"] = call.nonlinearity
    m = getattr(nn, call.base)(int(w_ih.shape[1]), hidden, **kwargs)
    if len(m._flat_weights_names) != len(call.params):
        raise UnsupportedLayerError(
            f"A direct torch._VF.{call.base.lower()} call passed {len(call.params)} weight tensors, which "
            f"does not match {call.num_layers} layer(s) of that op; rnnlens cannot tell which is which."
        )
    for name, t in zip(m._flat_weights_names, call.params):
        m._parameters[name] = t
    m._init_flat_weights()
    return m.eval()


def caller(modules: Mapping[int, str]) -> str | None:
    """The path of the innermost module of the model whose code is on the call stack."""
    frame = inspect.currentframe()
    while frame is not None:
        owner = frame.f_locals.get("self")
        if owner is not None and id(owner) in modules:
            return modules[id(owner)]
        frame = frame.f_back
    return None


class DirectCalls(TorchFunctionMode):
    """Route direct recurrent op calls, made outside any recorded module, through ``route``
    (PyTorch leaves the mode while ``__torch_function__`` runs: the ops ``route`` calls are not
    seen again)."""

    def __init__(
        self, busy: Callable[[], bool], route: Callable[[DirectCall, Any, tuple[Any, ...]], Any]
    ) -> None:
        super().__init__()
        self.busy, self.route = busy, route

    def __torch_function__(
        self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None
    ) -> Any:
        # (runs for every op of the model's own code: the common case first, with no extra call)
        if func not in _OPS or kwargs:
            return func(*args, **kwargs) if kwargs else func(*args)
        call = None if self.busy() else parse(func, args)
        if call is None:
            return func(*args)
        return self.route(call, func, args)


def _current_mode() -> Any:
    return _get_function_stack_at(_len_torch_function_stack() - 1)


def unwatched(stand_in: Callable[..., Any]) -> Callable[..., Any]:
    """``stand_in`` run outside the :class:`DirectCalls` mode: the mode would otherwise see
    every op of rnnlens' own step loop (measured 23% slower on a 2-layer LSTM, 300 steps)."""

    def run(*args: Any, **kwargs: Any) -> Any:
        # (a cell loop calls this per step: the stack calls direct, not _pop_mode_temporarily's
        # context manager, which cost a tenth of the recording's own per-step work)
        if not _len_torch_function_stack() or not isinstance(_current_mode(), DirectCalls):
            return stand_in(*args, **kwargs)
        mode = _pop_torch_function_stack()
        try:
            return stand_in(*args, **kwargs)
        finally:
            _push_on_torch_function_stack(mode)

    return run


def op_result(call: DirectCall, out: Any) -> Any:
    """What the op returns, from what the module returned: ``(output, h_n[, c_n])``."""
    y, hidden = out
    if call.packed:
        y = y.data
        order = call.input.sorted_indices  # the module gave h_n in input order; the op, packed
        if order is not None:
            hidden = (
                tuple(h.index_select(1, order) for h in hidden)
                if call.base == "LSTM"
                else hidden.index_select(1, order)
            )
    if call.base == "LSTM":
        return y, hidden[0], hidden[1]
    return y, hidden
