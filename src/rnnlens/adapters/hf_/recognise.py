"""Which modules of a transformers model are recurrent mixers, and of which kind — by what the
module is and does, not by its class name alone.

transformers derives many mixers from a few families (``# Copied from`` / modular files): the
same computation under new names (Qwen3.5's and OLMo-Hybrid's gated delta-nets, Bailing's and
GLM-5-Next's Kimi delta attention, ...). A module's kind is found, in order, from

1. its class hierarchy: a class (or base class) named in :data:`.classes.KIND_OF`;
2. the modeling file's helper functions its methods call (the names in their code:
   ``torch_chunk_gated_delta_rule`` → ``gated_deltanet``, ``chunk_kimi_delta_attention`` →
   ``kimi_delta``, ``mamba_selective_scan`` on per-head weights → ``mamba_heads``);
3. its parameters and submodules (``A_log``, ``x_proj``, ``dt_proj`` → ``mamba``; a per-head
   ``A_log`` with ``dt_bias``, ``D`` and groups → ``mamba2``; ``slope_rate`` with ``qkv_proj`` →
   ``lightning``; ``time_decay`` / ``time_first`` → ``rwkv4``; an ``rg_lru`` → ``rglru``; an
   ``mlstm_backend`` → ``mlstm``).

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

from ...errors import UnsupportedLayerError
from .classes import KIND_OF

__all__ = [
    "RECURRENT_SLOTS",
    "code_names",
    "kind_of",
    "mixers",
    "refuse_unknown",
    "unknown",
    "unknown_mixers",
]

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
    if {"time_decay", "time_first", "key", "value", "receptance"} <= params:
        return "rwkv4"
    if "rg_lru" in params:
        return "rglru"
    if "mlstm_backend" in params:
        return "mlstm"
    return None


def unknown(m: Any) -> bool:
    """Whether ``m``'s code keeps a recurrent state (a cache slot) although it is no kind rnnlens
    knows."""
    if any(k.__name__ == "PreTrainedModel" for k in type(m).__mro__):
        return False  # a whole model sets its cache up; its layers keep the states
    return kind_of(m) is None and bool(RECURRENT_SLOTS & code_names(type(m)))


def mixers(model: Any) -> list[tuple[str, Any, str]]:
    """``(path, module, kind)`` of every mixer rnnlens traces, in ``named_modules`` order (the
    kind found by what the module is and does: :mod:`.recognise`)."""
    found = [(path, m, kind_of(m)) for path, m in model.named_modules()]
    return [(path, m, kind) for path, m, kind in found if kind is not None]


def unknown_mixers(model: Any) -> list[tuple[str, Any]]:
    """``(path, module)`` of the modules that keep a recurrent state of no kind rnnlens knows:
    the innermost such modules, none inside or around a known mixer."""
    known = [path for path, _, _ in mixers(model)]
    odd = [(path, m) for path, m in model.named_modules() if unknown(m)]

    def related(a: str, b: str) -> bool:
        return a == b or a.startswith(b + ".") or b.startswith(a + ".") or not a or not b

    return [
        (path, m)
        for path, m in odd
        if not any(related(path, k) for k in known)
        and not any(other.startswith(path + ".") or (not path and other) for other, _ in odd)
    ]


def refuse_unknown(model: Any, layers: Any) -> None:
    """Refuse, by name, a model with a recurrent module rnnlens does not know, unless ``layers``
    picks the others."""
    odd = unknown_mixers(model)
    if not odd or layers is not None:
        return
    path, m = odd[0]
    family = type(m).__module__.rsplit(".", 1)[-1].removeprefix("modeling_")
    more = f" (and {len(odd) - 1} more)" if len(odd) > 1 else ""
    others = [p for p, _, _ in mixers(model)]
    then = (
        f"other layers can be traced with `layers={others}`."
        if others
        else "the model has no other recurrent layer rnnlens traces."
    )
    raise UnsupportedLayerError(
        f"`{type(m).__name__}` at `{path}`{more} keeps a recurrent state rnnlens does not know yet "
        f"(family {family}); {then}"
    )
