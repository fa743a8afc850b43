"""Recurrent modules behind a wrapper: a ``forward`` that calls the one it replaced.

nnsight's ``NNsight(model)``, accelerate's hooks, ``functools.wraps``-style instance attributes
(``m.forward = wrapper``), class-level patches (``nn.LSTM.forward = wrapper``) and a subclass's
own ``forward`` (``super().forward(...)`` inside) put a function of their own where
``Module.__call__`` looks for ``forward``, and call PyTorch's somewhere inside it
(:func:`.discover.forward_parts` finds them). rnnlens runs the wrapper as
it is, under a :class:`~torch.overrides.TorchFunctionMode` that catches the one recurrent op the
original ``forward`` makes with *this module's* weights (``torch._VF.lstm`` / ``gru`` /
``rnn_*``, or ``lstm_cell`` / ``gru_cell`` / ``rnn_*_cell`` for a cell) and runs that call
through the module's recorded stand-in (PyTorch's own ``forward`` on the op's arguments); the
wrapper gets what the op would have returned. So whatever the wrapper does around the call
(change the arguments or the output, keep values) happens as without rnnlens, and the states,
every field, are what the module computed, named as in the unwrapped model. A wrapper that
returns without the original ever running (a replacement) computes something rnnlens cannot
see: an :class:`~rnnlens.errors.UnsupportedLayerError` naming the module and the wrapper.

Example:
    >>> import functools, torch, rnnlens
    >>> lstm = torch.nn.LSTM(3, 4, num_layers=2, batch_first=True)
    >>> original = lstm.forward
    >>> lstm.forward = functools.wraps(original)(lambda *a, **k: original(*a, **k))
    >>> states = rnnlens.trace(lstm, torch.ones(2, 5, 3))
    >>> list(states), list(states["lstm.l0"].gates)
    (['lstm.l0', 'lstm.l1'], ['i', 'f', 'g', 'o'])
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any

from torch import _VF
from torch.overrides import TorchFunctionMode

from ...errors import UnsupportedLayerError
from . import direct
from .discover import _Config

__all__ = ["describe_wrapper", "through"]

_CELL_OPS = frozenset({_VF.lstm_cell, _VF.gru_cell, _VF.rnn_tanh_cell, _VF.rnn_relu_cell})


def describe_wrapper(w: Any) -> str:
    """Where a wrapper is defined: its code's qualified name, file and line (``functools.wraps``
    copies the wrapped function's names, not its code), or its class for a callable object.

    >>> def make():
    ...     def wrapper(*a):
    ...         return a
    ...     return wrapper
    >>> describe_wrapper(make()).split(" (")[0]
    'make.<locals>.wrapper'
    """
    if isinstance(w, functools.partial):
        return f"functools.partial({describe_wrapper(w.func)})"
    f = getattr(w, "__func__", w)
    code = getattr(f, "__code__", None)
    if code is not None:
        return f"{code.co_qualname} ({os.path.basename(code.co_filename)}:{code.co_firstlineno})"
    t = type(w)
    return f"a {t.__module__}.{t.__qualname__} object"


class _OwnOps(TorchFunctionMode):
    """Routes the module's own recurrent op calls through ``route`` (PyTorch leaves the mode
    while ``__torch_function__`` runs: the op ``route`` runs is not caught again); every other
    op runs as called."""

    def __init__(self, mine: Callable[[Any, tuple[Any, ...]], bool], route: Callable[..., Any]) -> None:
        super().__init__()
        self.mine, self.route, self.calls = mine, route, 0

    def __torch_function__(
        self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None
    ) -> Any:
        if kwargs or not self.mine(func, args):
            return func(*args, **(kwargs or {}))
        self.calls += 1
        return self.route(func, args)


def _matcher(m: Any, cfg: _Config) -> Callable[[Any, tuple[Any, ...]], bool]:
    """Whether an op call is this module's: its recurrent op, with its own weight tensors."""
    if cfg.cell:
        return lambda func, args: func in _CELL_OPS and len(args) > 2 and args[2] is m.weight_ih

    def seq(func: Any, args: tuple[Any, ...]) -> bool:
        call = direct.parse(func, args)  # (the weights looked up now: a wrapper may set new ones)
        return call is not None and bool(call.params) and call.params[0] is m._flat_weights[0]

    return seq


def _route(cfg: _Config, inner: Callable[..., Any]) -> Callable[..., Any]:
    """The op call run through ``inner`` (the recorded stand-in), returning what the op returns."""
    if cfg.cell:
        return lambda func, args: inner(args[0], args[1])

    def seq(func: Any, args: tuple[Any, ...]) -> Any:
        call = direct.parse(func, args)
        assert call is not None
        return direct.op_result(call, inner(call.input, direct.user_order(call)))

    return seq


def through(name: str, m: Any, cfg: _Config, wrapper: Any, inner: Callable[..., Any], watch: bool) -> Any:
    """The stand-in for a wrapped module: ``wrapper`` (what ``Module.__call__`` would have
    called) runs as it is; the original ``forward``'s op runs through ``inner``. ``watch``
    False (the module is neither selected nor edited): the wrapper runs alone."""
    if not watch:
        return wrapper
    mine, route = _matcher(m, cfg), _route(cfg, inner)

    def forward(*args: Any, **kwargs: Any) -> Any:
        mode = _OwnOps(mine, route)
        with mode:
            out = wrapper(*args, **kwargs)
        if mode.calls == 0:
            raise UnsupportedLayerError(_never_called(name, m, cfg, wrapper))
        return out

    return forward


def _never_called(name: str, m: Any, cfg: _Config, wrapper: Any) -> str:
    if cfg.overridden:  # a subclass's own forward
        return (
            f"{type(m).__name__} (at {name!r}) overrides forward and this call did not go through "
            f"super().forward(...), so rnnlens sees no {cfg.base} computation to trace. Select other "
            "layers with layers=[...], or call super().forward in the subclass."
        )
    return (
        f"The forward of {name!r} ({type(m).__name__}) is replaced by {describe_wrapper(wrapper)}, "
        f"which returned without calling the {cfg.base} forward it replaced, so rnnlens sees no "
        f"{cfg.base} computation to trace (and returns no partial result). Call the original forward "
        "inside the wrapper, trace the model without the wrapper, or select other layers with "
        "layers=[...]."
    )
