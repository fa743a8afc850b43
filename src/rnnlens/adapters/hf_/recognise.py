"""Which modules of a transformers model are recurrent mixers, and of which kind — by what the
module is and does, not by its class name alone.

transformers derives many mixers from a few families (``# Copied from`` / modular files): the
same computation under new names (Qwen3.5's and OLMo-Hybrid's gated delta-nets, Bailing's and
GLM-5-Next's Kimi delta attention, ...). A module's kind is found, in order, from

1. its class hierarchy: a class (or base class) named in :data:`.classes.KIND_OF`;
2. the modeling file's helper functions its methods call (the names in their code:
   ``torch_chunk_gated_delta_rule`` → ``gated_deltanet``, ``chunk_kimi_delta_attention`` →
   ``kimi_delta``, ``mamba_selective_scan`` on per-head weights → ``mamba_heads``);
3. its parameters (``A_log``, ``x_proj``, ``dt_proj`` → ``mamba``; a per-head ``A_log`` with
   ``dt_bias`` and ``D`` → ``mamba2``; ``slope_rate`` with ``qkv_proj`` → ``lightning``).

A module whose code reads or writes a recurrent cache slot (``get_recurrent_state``,
``update_recurrent_state``, ``set_linear_cache``, ...) but has none of these is *unknown*: it is
refused by name (:func:`unknown`), not left to the PyTorch adapter. Short-convolution caches
(``update_conv_state``: LFM2 and similar) keep a window of inputs, not a recurrent state.

Example:
    >>> import torch
    >>> kind_of(torch.nn.Linear(2, 2)) is None
    True
"""

from __future__ import annotations

import inspect
from typing import Any

from .classes import KIND_OF

__all__ = ["RECURRENT_SLOTS", "code_names", "kind_of", "unknown"]

#: names whose use in a module's code means it keeps a recurrent state in the cache (or on itself)
RECURRENT_SLOTS = frozenset(
    {
        "get_recurrent_state", "update_recurrent_state", "get_linear_cache", "set_linear_cache",
        "recurrent_states", "ssm_states", "rnn_state",
    }
)  # fmt: skip

#: helper function (of the modeling file) -> the kind of the mixer that calls it
_HELPERS = {
    "torch_chunk_gated_delta_rule": "gated_deltanet",
    "torch_recurrent_gated_delta_rule": "gated_deltanet",
    "chunk_kimi_delta_attention": "kimi_delta",
    "recurrent_kimi_delta_attention": "kimi_delta",
}


def _names(code: Any) -> set[str]:
    out = set(code.co_names)
    for const in code.co_consts:
        if inspect.iscode(const):  # nested functions and comprehensions
            out |= _names(const)
    return out


_SEEN: dict[type, frozenset[str]] = {}


def code_names(cls: type) -> frozenset[str]:
    """The global and attribute names the methods of ``cls`` (and its bases, up to ``nn.Module``)
    use, decorators unwrapped (kept per class)."""
    if cls not in _SEEN:
        _SEEN[cls] = _code_names(cls)
    return _SEEN[cls]


def _code_names(cls: type) -> frozenset[str]:
    out: set[str] = set()
    for klass in cls.__mro__:
        if klass.__module__.startswith("torch."):
            break
        if klass.__module__.startswith("transformers.") and ".models." not in klass.__module__:
            continue  # transformers' own bases (PreTrainedModel, GenerationMixin, layers)
        for value in vars(klass).values():
            fn = inspect.unwrap(value) if callable(value) else None
            if inspect.isfunction(fn):
                out |= _names(fn.__code__)
    return frozenset(out)


def _params(m: Any) -> set[str]:
    return {name for name, _ in m.named_parameters(recurse=False)} | set(getattr(m, "_modules", {}))


def kind_of(m: Any) -> str | None:
    """The kind of mixer ``m`` is, or None (not a mixer rnnlens traces)."""
    for klass in type(m).__mro__:
        if klass.__name__ in KIND_OF:
            return KIND_OF[klass.__name__]
    names = code_names(type(m))
    for helper, kind in _HELPERS.items():
        if helper in names:
            return kind
    params = _params(m)
    if "mamba_selective_scan" in names and {"x_proj_weight", "dt_proj_weight", "A_log"} <= params:
        return "mamba_heads"
    if {"A_log", "D", "in_proj", "x_proj", "dt_proj", "conv1d"} <= params:
        return "mamba"
    if {"A_log", "D", "dt_bias", "in_proj", "conv1d", "out_proj"} <= params and hasattr(m, "n_groups"):
        return "mamba2"
    if {"qkv_proj", "output_gate", "out_proj"} <= params and hasattr(m, "slope_rate"):
        return "lightning"
    return None


def unknown(m: Any) -> bool:
    """Whether ``m``'s code keeps a recurrent state (a cache slot) although it is no kind rnnlens
    knows."""
    if any(k.__name__ == "PreTrainedModel" for k in type(m).__mro__):
        return False  # a whole model sets its cache up; its layers keep the states
    return kind_of(m) is None and bool(RECURRENT_SLOTS & code_names(type(m)))
