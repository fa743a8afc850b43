"""Static discovery of a torch model's recurrent modules, before anything runs.

:class:`_Config` is a recurrent module's configuration (the torch class it behaves as, its
kind, sizes, layers, directions, layout), read from the module itself or, for TorchScript,
from its parameters; :func:`_walk` finds every recurrent module in ``named_modules`` order and
:func:`_static_specs` turns one into its :class:`~rnnlens.core.spec.LayerSpec` entries (one per
layer when ``num_layers > 1``). :func:`describe` is the adapter's ``describe``.
"""

from __future__ import annotations

import functools
import inspect
import os
import re
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ...core.kinds import KINDS
from ...core.spec import FIELDS_BY_KIND, Kind, LayerSpec
from ...errors import UnsupportedModelError
from .quantized import quantized_base

__all__ = ["describe"]

_SEQ_KINDS: dict[str, Kind] = {"LSTM": "lstm", "GRU": "gru", "RNN": "simple"}
_CELL_KINDS: dict[str, Kind] = {"LSTMCell": "lstm", "GRUCell": "gru", "RNNCell": "simple"}
_CLASSES: tuple[tuple[Any, str], ...] = (
    (nn.LSTM, "LSTM"),
    (nn.GRU, "GRU"),
    (nn.RNN, "RNN"),
    (nn.LSTMCell, "LSTMCell"),
    (nn.GRUCell, "GRUCell"),
    (nn.RNNCell, "RNNCell"),
)


@dataclass(frozen=True)
class _Config:
    """A recurrent module's static configuration, read once before the forward pass."""

    base: str  # the torch class it behaves as: LSTM, GRU, RNN, LSTMCell, GRUCell, RNNCell
    kind: Kind
    input_size: int
    hidden_size: int
    proj_size: int = 0
    num_layers: int = 1
    bidirectional: bool = False
    batch_first: bool = False
    bias: bool = True
    nonlinearity: str = "tanh"
    scripted: bool = False
    #: a subclass whose class ``forward`` is its own (it calls ``super().forward`` inside)
    overridden: bool = False
    #: ``quantize_dynamic``'s LSTM / GRU: stepped with its own quantized ops (:mod:`.quantized_rnn`)
    quantized: bool = False
    #: ``Module.__call__`` reaches a forward other than PyTorch's that calls it inside: a
    #: subclass's own, or a wrapper (an instance ``forward`` such as nnsight's, a class-level
    #: patch); the inner call of PyTorch's forward is what is traced (:mod:`.wrapped`)
    wrapped: bool = False

    @property
    def cell(self) -> bool:
        return self.base.endswith("Cell")

    @property
    def units(self) -> int:
        return self.proj_size or self.hidden_size

    @property
    def directions(self) -> tuple[str, ...]:
        return ("forward", "backward") if self.bidirectional else ("forward",)

    @property
    def n_dir(self) -> int:
        return 2 if self.bidirectional else 1

    @property
    def expanded(self) -> bool:
        """One entry per layer (a known multi-layer module)."""
        return not self.cell and KINDS[self.kind].known and self.num_layers > 1


def _config(m: Any) -> _Config | None:
    if isinstance(m, torch.jit.ScriptModule):
        return _script_config(m)
    q = quantized_base(m)
    if q is not None:
        return _Config(
            q,
            _SEQ_KINDS[q],
            int(m.input_size),
            int(m.hidden_size),
            num_layers=int(m.num_layers),
            bidirectional=bool(m.bidirectional),
            batch_first=bool(m.batch_first),
            bias=bool(m.bias),
            quantized=True,
        )
    for cls, base in _CLASSES:
        if isinstance(m, cls):
            wrapper, own = forward_parts(m, cls)
            cell = base.endswith("Cell")
            # a cell subclass's own forward computes something else; a sequence subclass's own
            # forward, and a wrapper, call the original (checked while running: .wrapped)
            known = not (cell and own is not None)
            wrapped = known and (wrapper is not None or own is not None)
            kinds = _CELL_KINDS if cell else _SEQ_KINDS
            kind: Kind = kinds[base] if known else "rnn"
            if cell:
                return _Config(
                    base,
                    kind,
                    int(m.input_size),
                    int(m.hidden_size),
                    bias=bool(m.bias),
                    nonlinearity=str(getattr(m, "nonlinearity", "tanh")),
                    wrapped=wrapped,
                )
            nonlinearity = "relu" if getattr(m, "mode", "") == "RNN_RELU" else "tanh"
            return _Config(
                base,
                kind,
                int(m.input_size),
                int(m.hidden_size),
                int(m.proj_size),
                int(m.num_layers),
                bool(m.bidirectional),
                bool(m.batch_first),
                bool(m.bias),
                nonlinearity,
                overridden=own is not None and wrapper is None,
                wrapped=wrapped,
            )
    return None


_TORCH_RNN = os.path.abspath(nn.modules.rnn.__file__)


_OWN: dict[Any, bool] = {}  # code object -> _torch_own (read at every trace call)


def _torch_own(f: Any) -> bool:
    """Whether ``f`` is a ``forward`` PyTorch's own ``torch/nn/modules/rnn.py`` defines (a
    ``functools.wraps`` wrapper copies names, not the code object)."""
    code = getattr(f, "__code__", None)
    if code is None:
        return False
    own = _OWN.get(code)
    if own is None:
        own = _OWN[code] = code.co_name == "forward" and os.path.abspath(code.co_filename) == _TORCH_RNN
    return own


# as PyTorch defined them, before anyone patched the classes after importing rnnlens
_AT_IMPORT = {cls: cls.forward for cls, _ in _CLASSES if _torch_own(cls.forward)}


def genuine_forward(cls: Any) -> Any:
    """PyTorch's own ``forward`` of the torch class ``cls`` (``nn.LSTM``, ...), also when the class
    attribute was patched (found at import, or through the patch's ``__wrapped__``); None if
    it cannot be found.

    >>> genuine_forward(nn.LSTM) is nn.LSTM.forward
    True
    """
    f = cls.forward
    if _torch_own(f):
        return f
    if cls in _AT_IMPORT:
        return _AT_IMPORT[cls]
    try:
        f = inspect.unwrap(f, stop=_torch_own)
    except ValueError:  # a __wrapped__ cycle
        return None
    return f if _torch_own(f) else None


def _body_def(f: Any, m: Any) -> bool:
    """Whether ``f`` is a ``def forward`` in the body of a (user) class of ``m``."""
    code = getattr(f, "__code__", None)
    if code is None or hasattr(f, "__wrapped__") or _torch_own(f):
        return False
    return any(code.co_qualname == f"{c.__qualname__}.forward" for c in type(m).__mro__)


def forward_parts(m: Any, cls: Any) -> tuple[Any, Any]:
    """``(wrapper, own)`` of a recurrent module of torch class ``cls``: ``wrapper`` is what
    ``Module.__call__`` reaches instead of a class's own ``forward`` (an instance attribute
    ``forward``, or a class attribute patched with a function that is not a ``def forward`` of
    the class body), else None; ``own`` is a subclass's own ``def forward`` (behind any
    ``__wrapped__`` chain), else None.

    >>> lstm = nn.LSTM(2, 3)
    >>> forward_parts(lstm, nn.LSTM)
    (None, None)
    >>> lstm.forward = lambda *a, **k: nn.LSTM.forward(lstm, *a, **k)
    >>> forward_parts(lstm, nn.LSTM)[0] is lstm.forward
    True
    """
    wrapper = vars(m).get("forward")
    f = type(m).forward
    if _torch_own(f):
        return wrapper, None
    try:
        inner = inspect.unwrap(f)
    except ValueError:
        inner = f
    own = inner if _body_def(inner, m) else None
    if wrapper is None and not _body_def(f, m):
        wrapper = f  # a class-level patch: it wraps the forward below it
    return wrapper, own


def base_class(cfg: _Config) -> Any:
    """The torch class a recurrent module behaves as (``nn.LSTM`` for an ``nn.LSTM`` subclass)."""
    return next(cls for cls, base in _CLASSES if base == cfg.base)


def _script_config(m: Any) -> _Config | None:
    """A TorchScript submodule's configuration, read from its parameters (describe only)."""
    base = getattr(m, "original_name", None)
    if base not in _SEQ_KINDS and base not in _CELL_KINDS:
        return None
    params = dict(m.named_parameters(recurse=False))
    gates = {"LSTM": 4, "GRU": 3, "RNN": 1}[base.replace("Cell", "")]
    nonlinearity = str(getattr(m, "nonlinearity", "tanh"))
    if base in _CELL_KINDS:
        w = params["weight_ih"]
        return _Config(
            base,
            _CELL_KINDS[base],
            int(w.shape[1]),
            int(w.shape[0]) // gates,
            bias="bias_ih" in params,
            nonlinearity=nonlinearity,
            scripted=True,
        )
    w = params["weight_ih_l0"]
    hr = params.get("weight_hr_l0")
    return _Config(
        base,
        _SEQ_KINDS[base],
        int(w.shape[1]),
        int(w.shape[0]) // gates,
        proj_size=0 if hr is None else int(hr.shape[0]),
        num_layers=sum(1 for k in params if re.fullmatch(r"weight_ih_l\d+", k)),
        bidirectional="weight_ih_l0_reverse" in params,
        batch_first=bool(getattr(m, "batch_first", False)),
        bias="bias_ih_l0" in params,
        nonlinearity=nonlinearity,
        scripted=True,
    )


def _walk(root: Any) -> tuple[list[tuple[str, Any, _Config]], list[str]]:
    """(name, module, config) of every recurrent module in ``named_modules`` order; other paths."""
    recurrent: list[tuple[str, Any, _Config]] = []
    others: list[str] = []
    for path, m in root.named_modules():
        cfg = _config(m)
        if cfg is None:
            if path:
                others.append(path)
        else:
            recurrent.append((path or cfg.base.lower(), m, cfg))
    return recurrent, others


def _static_specs(name: str, cfg: _Config) -> list[LayerSpec]:
    """The entries of recurrent module ``name`` (one per layer when expanded)."""
    return list(_specs_of(name, cfg))


@functools.lru_cache(maxsize=1024)
def _specs_of(name: str, cfg: _Config) -> tuple[LayerSpec, ...]:
    # (a pure function of its arguments, asked several times per trace call)
    return tuple(_make_specs(name, cfg))


def _make_specs(name: str, cfg: _Config) -> list[LayerSpec]:
    fields = FIELDS_BY_KIND[cfg.kind]
    cell_units = cfg.hidden_size if KINDS[cfg.kind].has_c else None
    notes: list[str] = []
    if not KINDS[cfg.kind].known:
        notes.append("forward is overridden: per-step outputs only")
    if cfg.proj_size:
        notes.append(f"proj_size={cfg.proj_size}: h has {cfg.proj_size} units, c {cfg.hidden_size}")
    if cfg.scripted:
        notes.append("TorchScript: traced through its ONNX export")
    if cfg.quantized:
        notes.append("quantize_dynamic: c and gates stepped with the kernel's own quantized linear ops")
    if cfg.cell:
        notes.append("one time step per call; the calls in one forward pass form the time axis")
        return [
            LayerSpec(name, cfg.kind, cfg.base, cfg.units, ("forward",), fields, cell_units, tuple(notes))
        ]
    if not cfg.expanded:
        return [
            LayerSpec(name, cfg.kind, cfg.base, cfg.units, cfg.directions, fields, cell_units, tuple(notes))
        ]
    return [
        LayerSpec(
            f"{name}.l{layer}",
            cfg.kind,
            f"{cfg.base} layer {layer}/{cfg.num_layers}",
            cfg.units,
            cfg.directions,
            fields,
            cell_units,
            tuple(notes),
        )
        for layer in range(cfg.num_layers)
    ]


def _require_module(model: Any) -> None:
    if not isinstance(model, nn.Module):
        raise UnsupportedModelError(
            f"Expected a torch.nn.Module; received {type(model).__module__}.{type(model).__name__}. "
            "Load a model file with rnnlens.load_model first."
        )


def describe(model: Any) -> list[LayerSpec]:
    """Every recurrent submodule of ``model`` (``num_layers`` expanded, cells listed), static.

    Lists what the module *contains*; :func:`trace` returns what ``forward`` *calls*
    (modules called twice get a second entry ``"#1"``; modules never called get none).
    """
    _require_module(model)
    recurrent, _ = _walk(model)
    return [spec for name, _, cfg in recurrent for spec in _static_specs(name, cfg)]
