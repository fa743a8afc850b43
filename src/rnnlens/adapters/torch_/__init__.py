"""The PyTorch adapter: ``nn.Module`` objects (also ``torch.compile``'d), ``torch.export``
programs, and ``.pt``/``.pth``/``.pt2`` files.

This module imports no framework: torch is imported when a torch model arrives. ``trace``
(``capture``: planning, the run, the entries) and ``load`` do the work, with ``discover``
(static configuration, ``describe``), ``weights``, ``calls`` (the recorded data),
``record`` (the recording run), ``emit`` (the emitting step loop) and ``convert`` (recorded
tensors to arrays; error messages).
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

import numpy as np

from ...core.archive import check_archive
from ...core.digest import model_sha256
from ...core.spec import LayerSpec
from ...errors import InputError
from ..base import Adapter, Args, Captured, Edits, Inputs, Intervened, Kwargs, TraceOptions, mro_roots
from .quantized import refuse_autocast, refuse_quantized

__all__ = ["TorchAdapter"]


class TorchAdapter(Adapter):
    name = "torch"
    accepts = (
        "a torch.nn.Module (its forward's arguments as inputs; also torch.compile'd), a torch.export "
        "program; .pt/.pth state dicts with module=, .pt2 programs with unsafe=True"
    )
    suffixes = (".pt", ".pth", ".ts", ".torchscript", ".jit", ".pt2")
    requires = ("torch",)
    strategies = ("auto", "emit", "reconstruct")

    def can_trace(self, model: Any) -> bool:
        return "torch" in mro_roots(model)

    def describe(self, model: Any) -> list[LayerSpec]:
        from . import forms, trace

        model = forms.plain(model)
        refuse_quantized(model)
        forms.check_quantized_script(model)
        if forms.is_exported(model):  # no nn.LSTM module left: the graph's recurrent op nodes
            return forms.describe_exported(model)
        return trace.describe(model)

    def capture(self, model: Any, args: Args, kwargs: Kwargs, options: TraceOptions) -> Captured:
        forms, trace, express = _modules()
        model = forms.plain(model)  # torch.compile's wrapper, torch.export's program: the module
        # NumPy arrays given for tensors are converted (as torch.from_numpy would), not passed on
        if any(type(a) is np.ndarray for a in args):
            args = tuple(_from_numpy(a) for a in args)
        if kwargs:
            kwargs = {k: _from_numpy(v) for k, v in kwargs.items()}
        # a bare nn.LSTM/GRU/RNN running only PyTorch's code (no quantized module, none inside):
        # h is its own output, c and gates of a small LSTM batch rebuilt from it, no recording
        fast = express.capture_express(model, args, kwargs, options)
        if fast is not None:
            return fast
        refuse_quantized(model)
        return trace.capture(model, args, kwargs, options)

    def intervene(
        self, model: Any, args: Args, kwargs: Kwargs, edits: Edits, options: TraceOptions
    ) -> Intervened:
        from . import forms, trace

        model = forms.plain(model)
        args = tuple(_from_numpy(a) for a in args)
        kwargs = {k: _from_numpy(v) for k, v in kwargs.items()}
        refuse_quantized(model)
        refuse_autocast("rnnlens.intervene")
        return trace.intervene(model, args, kwargs, edits, options)

    def record(self, model: Any, options: TraceOptions) -> Any:
        from . import forms
        from .recording import TorchRecording

        forms.check_recordable(model)
        plain = forms.plain(model)
        refuse_quantized(plain)
        # a compiled module: its original is recorded, and runs eagerly while the block is open
        return TorchRecording(plain, options, eager=plain is not model)

    def load(self, path: str | os.PathLike[str], *, unsafe: bool = False, **options: Any) -> Any:
        check_archive(path)  # before torch is even imported
        from .load import load_model

        module = options.pop("module", None)
        if options:
            raise InputError(f"PyTorch model files take module= and unsafe=; received {sorted(options)}.")
        return load_model(path, module, unsafe=unsafe)

    def model_digest(self, model: Any) -> str:
        from . import forms

        model = forms.plain(model)
        arrays = [a for t in model.state_dict().values() for a in _arrays_of(t)]
        return model_sha256(arrays, _architecture(model))

    def to_inputs(self, x: Any, *, mask: np.ndarray | None, size: int) -> Inputs:
        # valid steps come from the PackedSequence the model builds; the store keeps the user's mask
        return Inputs((_to_torch(x),))


_PLAIN = (bool, int, float, str, type(None))
_MODULES: tuple[Any, ...] = ()


def _modules() -> tuple[Any, ...]:
    """The modules ``capture`` runs (imported at the first torch model: they import torch),
    kept here: a function-level ``from . import`` costs a few µs a call."""
    global _MODULES
    if not _MODULES:
        from . import express, forms, trace

        _MODULES = (forms, trace, express)
    return _MODULES


def _hyperparameters(m: Any) -> list[tuple[str, Any]]:
    """A module's plain attributes (``nonlinearity``, ``hidden_size``, ``dropout``, ...), which
    ``repr`` does not always show (``nn.RNN`` hides ``nonlinearity="relu"``)."""
    out = []
    for k, v in sorted(vars(m).items()):
        if k.startswith("_") or k == "training":
            continue
        if isinstance(v, _PLAIN) or (isinstance(v, (tuple, list)) and all(isinstance(e, _PLAIN) for e in v)):
            out.append((k, v))
    return out


def _architecture(model: Any) -> str:
    """The module tree with its hyperparameters (``repr`` and every plain attribute), and per
    module class the source of its ``forward`` where Python has it (what the module computes)."""
    lines = [repr(model)]
    seen: set[type] = set()
    for name, m in model.named_modules():
        cls = type(m)
        lines.append(f"{name}: {cls.__module__}.{cls.__qualname__} {_hyperparameters(m)!r}")
        if cls in seen:
            continue
        seen.add(cls)
        code = getattr(cls.forward, "__code__", None)
        if code is not None:  # the bytecode, not the source: a Dask worker may have no source file
            lines.append(hashlib.sha256(_code_text(code).encode()).hexdigest())
    return "\n".join(lines)


def _code_text(code: Any) -> str:
    """A code object as text that is the same in every process (no addresses, no set order)."""

    def const(c: Any) -> str:
        if hasattr(c, "co_code"):
            return _code_text(c)
        if isinstance(c, frozenset):
            return "frozenset(" + ",".join(sorted(map(const, c))) + ")"
        if isinstance(c, tuple):
            return "(" + ",".join(map(const, c)) + ")"
        return repr(c)

    return "|".join([code.co_code.hex(), ",".join(code.co_names), ",".join(map(const, code.co_consts))])


def _arrays_of(v: Any) -> list[np.ndarray]:
    """A state-dict value as arrays: a tensor (a quantized one as its integers, scales and zero
    points), or the tensors inside a packed-parameter object (``quantize_dynamic``'s modules keep
    their weights in TorchScript objects, whose own bytes are addresses)."""
    import torch

    if isinstance(v, (tuple, list)):
        return [a for e in v for a in _arrays_of(e)]
    if isinstance(v, torch.ScriptObject):
        return _arrays_of(v.__getstate__())  # type: ignore[attr-defined]
    if isinstance(v, torch.Tensor) and v.is_quantized:
        if v.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric):
            params = [v.q_per_channel_scales(), v.q_per_channel_zero_points()]
        else:
            params = [torch.tensor([v.q_scale()]), torch.tensor([v.q_zero_point()])]
        return [_bytes_of(v.int_repr()), *(_bytes_of(p) for p in params)]
    if isinstance(v, (str, bool, int, float)):
        return [np.frombuffer(repr(v).encode(), np.uint8)]
    return [_bytes_of(v)]


def _bytes_of(t: Any) -> np.ndarray:
    if not hasattr(t, "detach"):
        return np.asarray(t)
    t = t.detach().cpu().contiguous()
    try:
        return np.asarray(t.numpy())
    except TypeError:  # bfloat16 and other dtypes NumPy lacks: hash the raw bytes
        import torch

        flat = t.reshape(-1) if t.dim() else t.reshape(1)
        return np.asarray(flat.view(torch.uint8).numpy())


def _from_numpy(a: Any) -> Any:
    if not isinstance(a, np.ndarray):
        return a
    if a.dtype.kind not in "biuf":
        raise InputError(
            f"An input has NumPy dtype {a.dtype}; a torch module takes tensors of numbers. Convert "
            "strings or objects to numbers first (a tokenizer, a vocabulary), then pass the array."
        )
    return _to_torch(a)


def _to_torch(x: Any) -> Any:
    import torch

    def conv(a: np.ndarray) -> Any:
        a = np.asarray(a)
        if not a.flags.writeable or not a.flags.c_contiguous:
            a = np.array(a)
        return torch.from_numpy(a)

    if isinstance(x, dict):
        return {k: conv(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [conv(v) for v in x]
    return conv(x)
