"""Whether a trace runs PyTorch's own code only, which changes nothing on the model.

The put-back of :mod:`.unchanged` (a snapshot of every module's ``__dict__``, buffers and
parameters, compared and put back after the run) is there for the user's code: a ``forward``
that keeps its state on the module, counts calls, updates buffers. Where the module passed to
:func:`rnnlens.trace` is a bare ``nn.LSTM`` / ``nn.GRU`` / ``nn.RNN`` (exactly that class, no
submodules, no buffers), PyTorch's own class code unpatched, no hook anywhere (the module's or
the global ones), no instance ``forward``, plain ``nn.Parameter`` weights (not inference
tensors) and plain tensor arguments, no ``TorchFunctionMode``/``TorchDispatchMode`` of the
user's active: nothing but PyTorch's own forward runs, and it changes nothing on the module (it
reads the weights and the configuration, and refreshes its list of them where a weight was
swapped past ``__setattr__``). The snapshot is then the module's bindings (the ``training``
flag rnnlens sets) and those lists, without copies of parameters and tensors — a quarter of
the fixed cost of a trace call on a one-layer LSTM of 32 units — and the run needs no watch
for direct ``torch._VF`` calls (:mod:`.direct`): no code of the user's could make one.

Example:
    >>> import torch
    >>> from rnnlens.adapters.torch_.trusted import own_code_only
    >>> lstm, x = torch.nn.LSTM(3, 4), torch.zeros(5, 2, 3)
    >>> own_code_only(lstm, (x,), {})
    True
    >>> _ = lstm.register_forward_hook(lambda *a: None)
    >>> own_code_only(lstm, (x,), {})
    False
"""

from __future__ import annotations

import operator
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torch.nn.modules import module as _module
from torch.nn.modules import rnn as _rnn
from torch.nn.utils.rnn import PackedSequence

__all__ = ["own_code_only"]

_CLASSES = (nn.LSTM, nn.GRU, nn.RNN)
_HOOKS = (
    "_forward_hooks",
    "_forward_pre_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_hooks_always_called",
    "_forward_pre_hooks_with_kwargs",
    "_backward_hooks",
    "_backward_pre_hooks",
)
_GLOBAL_HOOKS = (
    "_global_forward_hooks",
    "_global_forward_pre_hooks",
    "_global_forward_hooks_with_kwargs",
    "_global_forward_hooks_always_called",
    "_global_backward_hooks",
    "_global_backward_pre_hooks",
)
_RNN_FILE = _rnn.__file__
_MODULE_FILE = _module.__file__
_GLOBALS = vars(_module)
#: what ``module(...)`` runs of ``nn.Module`` itself
_CALL = ("__call__", "_wrapped_call_impl", "_call_impl", "__getattr__", "__setattr__")


def _pytorch_own(cls: type, file: str, names: Sequence[str] | None = None) -> bool:
    """Every callable in the class body (or those ``names``) is a function of PyTorch's ``file``
    (none patched in: a wrapper, a ``functools.partial``, a function of the user's)."""
    body = vars(cls)
    for v in body.values() if names is None else (body.get(n) for n in names):
        if not (callable(v) or isinstance(v, (staticmethod, classmethod, property))) or isinstance(v, type):
            continue
        if isinstance(v, property):
            v = v.fget
        elif isinstance(v, (staticmethod, classmethod)):
            v = v.__func__
        code = getattr(v, "__code__", None)
        if code is None or code.co_filename != file or hasattr(v, "__wrapped__"):
            return False
    return True


def _plain(obj: Any) -> bool:
    """Arguments PyTorch's recurrent forward takes: plain tensors (no subclass with its own
    ``__torch_function__``), a ``PackedSequence`` of them, tuples of them, None."""
    if obj is None or type(obj) is torch.Tensor:
        return True
    if type(obj) is PackedSequence:
        return all(_plain(t) for t in obj)
    if type(obj) is tuple or type(obj) is list:
        return all(_plain(o) for o in obj)
    return False


_METHODS: dict[type, frozenset[str]] = {}


def _methods(cls: type) -> frozenset[str]:
    """The names of every callable in ``cls``'s classes (``forward`` and all it calls)."""
    names = _METHODS.get(cls)
    if names is None:
        names = _METHODS[cls] = frozenset(
            k
            for c in cls.__mro__
            for k, v in vars(c).items()
            if callable(v) or isinstance(v, (staticmethod, classmethod, property))
        )
    return names


#: class -> the values of its body, of RNNBase's and of Module's ``_CALL`` when last found
#: PyTorch's own, kept alive: the same objects bound in the same order are the bodies checked then
_SEEN: dict[type, tuple[tuple[Any, ...], ...]] = {}
_BASE_BODY, _MODULE_BODY = vars(_rnn.RNNBase), vars(nn.Module)  # (live views of the class dicts)


def _unpatched(cls: type) -> bool:
    """:func:`_pytorch_own` of ``cls``, ``RNNBase`` and ``Module``'s ``_CALL``, checked again only
    when one of the bodies changed (some binding in it is another object, or it has more or fewer
    entries): one pass of identity comparisons a call."""
    body = vars(cls)
    seen = _SEEN.get(cls)
    if seen is not None:
        own, base, call = seen
        if (
            len(body) == len(own)
            and all(map(operator.is_, body.values(), own))
            and len(_BASE_BODY) == len(base)
            and all(map(operator.is_, _BASE_BODY.values(), base))
            and all(map(operator.is_, map(_MODULE_BODY.get, _CALL), call))
        ):
            return True
    if not (
        _pytorch_own(cls, _RNN_FILE)
        and _pytorch_own(_rnn.RNNBase, _RNN_FILE)
        and _pytorch_own(nn.Module, _MODULE_FILE, _CALL)
    ):
        return False
    _SEEN[cls] = (tuple(body.values()), tuple(_BASE_BODY.values()), tuple(map(_MODULE_BODY.get, _CALL)))
    return True


def own_code_only(model: Any, args: Sequence[Any], kwargs: Mapping[str, Any]) -> bool:
    """Whether ``model(*args, **kwargs)`` runs PyTorch's own code only (see the module docstring)."""
    cls = type(model)
    if cls not in _CLASSES:
        return False
    d = vars(model)
    # (an instance attribute would shadow a method forward calls: self._call_impl, ...)
    if not _methods(cls).isdisjoint(d) or d["_modules"] or d["_buffers"] or any(map(d.get, _HOOKS)):
        return False
    if any(map(_GLOBALS.get, _GLOBAL_HOOKS)):
        return False
    if torch._C._len_torch_function_stack() or torch._C._len_torch_dispatch_stack():
        return False
    for p in d["_parameters"].values():
        if p is not None and (type(p) is not nn.Parameter or p.is_inference()):
            return False
    if not (all(map(_plain, args)) and (not kwargs or all(map(_plain, kwargs.values())))):
        return False
    return _unpatched(cls)
