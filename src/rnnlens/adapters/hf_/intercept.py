"""Run a mixer's own ``forward`` with the modeling file's scan helper seen through rnnlens.

Delta-rule mixers (:mod:`.delta`) and Zamba's multi-head Mamba (:mod:`.heads`) hand their
recurrence to one helper function of their modeling file (``torch_chunk_gated_delta_rule``,
``chunk_kimi_delta_attention``, ``mamba_selective_scan``, ...), whatever their projections look
like. :func:`forward_with` makes a copy of the mixer class's ``forward`` (decorators unwrapped)
whose *own* globals name rnnlens' recorder instead of the helper: the module, its class and the
modeling file are not touched, so nothing is left behind and other threads see the model as it
is. The recorder calls the real helper (its output is the parity reference), runs the
recurrence step by step keeping every state, and gives the mixer back the helper's output (or,
with edits, the output of the edited states).

Example:
    >>> import torch
    >>> lin = torch.nn.Linear(2, 2)
    >>> f = forward_with(lin, {"F": None})  # Linear.forward reads F.linear: now None
    >>> try:
    ...     f(lin, torch.ones(1, 2))
    ... except AttributeError:
    ...     print("the copy sees the replacement; the class does not")
    the copy sees the replacement; the class does not
    >>> lin(torch.ones(1, 2)).shape
    torch.Size([1, 2])
"""

from __future__ import annotations

import inspect
import types
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["HelperRecorder", "forward_with"]


def forward_with(m: Any, replace: Mapping[str, Any]) -> Callable[..., Any]:
    """``type(m).forward`` (unwrapped) as a new function whose globals have ``replace`` over the
    modeling file's; call it as ``f(m, *args, **kwargs)``."""
    raw = inspect.unwrap(type(m).forward)
    env = dict(raw.__globals__)
    env.update(replace)
    f = types.FunctionType(raw.__code__, env, raw.__name__, raw.__defaults__, raw.__closure__)
    f.__kwdefaults__ = raw.__kwdefaults__
    return f


class HelperRecorder:
    """Stands in for the modeling file's module-level ``helper`` (its scan) in one call of one
    mixer, through :func:`forward_with`: ``replacements(forward)`` maps the helper's name to the
    recorder and keeps the real one (``_real``, for the recorder's own checks). ``used`` says
    whether the forward called it; ``states`` / ``parts``: what the recorder kept."""

    helper = ""

    def __init__(self, mixer: Any, name: str, *, gates: bool):
        self.mixer, self.name, self.gates = mixer, name, gates
        self.used = False
        self.states: Any = None
        self.parts: dict[str, Any] = {}

    def replacements(self, forward: Any) -> dict[str, Any]:
        self._real = inspect.unwrap(forward).__globals__[self.helper]
        return {self.helper: self}

    @classmethod
    def available(cls, mixer: Any) -> bool:
        """Whether ``mixer``'s forward hands its scan to ``helper`` (recent transformers)."""
        return cls.helper in inspect.unwrap(type(mixer).forward).__globals__
