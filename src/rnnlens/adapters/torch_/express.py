"""A bare ``nn.LSTM`` / ``nn.GRU`` / ``nn.RNN`` without the recording: ``h`` is the module's own
output, and a small LSTM batch's ``c`` and gates are rebuilt from it.

Where :func:`rnnlens.trace` is given a bare recurrent module that runs PyTorch's own code only
(:func:`.trusted.own_code_only`) and only ``h`` is asked for, the forward pass's output sequence
*is* ``h`` (of the top layer; inner layers asked for: each layer through PyTorch's own forward
on a one-layer view sharing its parameters, as the general path runs them). The module runs
once, as it is (``module(*args, **kwargs)`` under ``torch.inference_mode()``, in eval mode, its
bindings put back after), and its output is split into directions without copying. What a
call asks for (the entries, their fields, the layers rebuilt) is planned once per configuration
and options (:class:`_Plan`); whether the module runs PyTorch's own code only is checked at every
call (a hook, a patch, a weight replaced after a first call is seen at the next). Nothing
else is needed — no plans, no recording stand-ins, no conversion of a recorded call — which is
most of a trace call's fixed cost on a small model (an ``nn.LSTM(32, 32)``, batch 1, 20 steps:
about a third).

``c`` or gates asked for, of a plain LSTM on a batch that ``strategy="auto"`` rebuilds
(:func:`.emit._small`: up to :data:`.emit.REBUILD_MAX_BATCH` samples, no ``proj_size``): the
layers run one by one as the general path runs them when it records, and the layers whose ``c``
or gates are asked for are rebuilt from their kernel output as the general path rebuilds them
(:func:`.rebuild_fast.rebuild_arrays`, ``h`` checked against ``o * tanh(c)``; a failed check: the
general path runs and raises it), straight into the arrays returned (zero-copy views).

The same arrays, names and specs as the general path (:mod:`.trace`), bitwise (the same kernel
calls and rebuild on the same arguments). Anything else (a ``PackedSequence``, a GRU's gates,
a large batch's, ``strategy`` other than ``"auto"`` with c or gates, ``layers=`` naming
something else, arguments past ``input, hx``, an input the module refuses) returns None: the
general path runs and says why.

Example:
    >>> import torch
    >>> from rnnlens.adapters.base import TraceOptions
    >>> from rnnlens.adapters.torch_.express import capture_express
    >>> gru, x = torch.nn.GRU(3, 4, batch_first=True), torch.zeros(2, 5, 3)
    >>> captured = capture_express(gru, (x,), {}, TraceOptions(fields=("h",)))
    >>> [s.name for s in captured.specs], captured.batches[0]["gru"][0]["forward"].h.shape
    (['gru'], (2, 5, 4))
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from ...core.cells import DirectionArrays
from ...core.tracing import resolve_fields
from ..base import Captured, TraceOptions
from .discover import _config, _static_specs
from .emit import _small
from .rebuild_fast import plain_weights, rebuild_arrays
from .record import _hx_slice, _layer_view
from .trusted import own_code_only
from .unchanged import _Flags

__all__ = ["capture_express"]

_DTYPES = (torch.float32, torch.float64)
#: inference mode's C++ guard, entered without ``torch.inference_mode``'s Python wrapper (a
#: twentieth of a small LSTM's fixed cost); the wrapper where a PyTorch lacks it
_INFERENCE: Any = getattr(torch._C, "_InferenceMode", None) or torch.inference_mode


def capture_express(
    model: Any, args: Sequence[Any], kwargs: Mapping[str, Any], options: TraceOptions
) -> Captured | None:
    """The module's own output as ``h``, with ``c`` and the gates of a small LSTM batch rebuilt
    from it (see the module docstring), or None where the general path is needed."""
    if options.mask is not None or options.batch_size is not None or not args:
        return None
    x = args[0]
    if type(x) is not torch.Tensor or not x.is_cpu or x.dim() not in (2, 3) or x.dtype not in _DTYPES:
        return None
    if not own_code_only(model, args, kwargs):
        return None
    plan = _plan(model, options.layers, options.fields)
    if plan is None:
        return None
    cfg, full = plan.cfg, plan.full
    if full and (options.strategy != "auto" or not _rebuilds(model, cfg, x, full)):
        return None
    # every layer's sequence where an inner one (or c, gates) is asked for: layer by layer, on
    # the views the general path runs
    if plan.inner and (len(args) > 2 or set(kwargs) - {"hx"} or len(args) + len(kwargs) > 2):
        return None  # (input and hx are what the layer-by-layer run passes on)
    flags = _Flags(model)  # its bindings and weight lists, put back (own_code_only: no submodules)
    try:
        if model.training:
            model.training = False
        # (inference mode: PyTorch's code alone runs, and its output is only read; under
        # no_grad every op of a kernel's step loop also passes autograd's dispatch layer,
        # 8-14% of a GRU(64)'s forward at batch 16, 100 steps)
        with _INFERENCE(True):
            if plan.inner:
                seqs, parts = _layers(model, cfg, args, kwargs, full)
            else:
                seqs, parts = {plan.top: model(*args, **kwargs)[0]}, {}
    except Exception:  # the general path runs it again and says what is wrong (a failed parity too)
        return None
    finally:
        flags.restore()
    return Captured(plan.chosen, [_batch(plan, seqs, parts, x.dim() == 2)], backend="torch")


def _batch(
    plan: _Plan, seqs: Mapping[int, torch.Tensor], parts: Mapping[int, Any], unbatched: bool
) -> dict[str, Any]:
    """The arrays of each chosen layer: zero-copy views of the kernel's output (inference
    tensors: no autograd to detach from) and of the rebuilt parts."""
    u, directions = plan.units, plan.directions
    one = len(directions) == 1
    batch: dict[str, Any] = {}
    for spec, layer in zip(plan.chosen, plan.layers):
        seq = seqs[layer].numpy()
        if unbatched:
            seq = seq[None]
        elif not plan.batch_first:
            seq = seq.transpose(1, 0, 2)
        want = plan.fields[spec.name]
        arrays = {}
        for d, direction in enumerate(directions):
            arrays[direction] = arr = DirectionArrays(h=seq if one else seq[:, :, d * u : (d + 1) * u])
            if layer in parts:  # (sample, time, unit) views of the rebuilt arrays
                c, *gates = parts[layer][d]
                if "c" in want:
                    arr.c = c
                if "gates" in want:
                    arr.gates = tuple(gates)
        batch[spec.name] = (arrays, None)
    return batch


class _Plan:
    """What a trace of one configuration asks for (the same for every call with those options):
    the chosen entries, their fields and layers, the layers whose c or gates are rebuilt."""

    __slots__ = (
        "batch_first", "cfg", "chosen", "directions", "fields", "full", "inner", "layers", "top", "units",
    )  # fmt: skip

    def __init__(self, cfg: Any, layers: tuple[str, ...] | None, fields: tuple[str, ...] | None) -> None:
        specs = _static_specs(cfg.base.lower(), cfg)
        self.cfg, self.top = cfg, cfg.num_layers - 1
        self.units, self.directions, self.batch_first = cfg.units, cfg.directions, cfg.batch_first
        self.chosen = [s for s in specs if layers is None or s.name in layers]
        self.fields = resolve_fields(self.chosen, fields)
        self.layers = [int(s.name.rsplit(".l", 1)[1]) if cfg.expanded else self.top for s in self.chosen]
        # c or gates: a plain LSTM on a small batch, rebuilt from the kernel's h (:mod:`.rebuild_fast`)
        asked = zip(self.chosen, self.layers)
        self.full = {layer: self.fields[s.name] for s, layer in asked if self.fields[s.name] != ("h",)}
        self.inner = bool(self.full) or any(s.name != specs[self.top].name for s in self.chosen)


#: the plan per class, configuration attributes (all _config reads of a module that runs
#: PyTorch's own code only: no wrapper, no patch, no subclass) and options; None: the general
#: path (a wrapped or overridden module, layers= naming other entries)
_PLANS: dict[tuple[Any, ...], _Plan | None] = {}
_KEY = (
    "input_size",
    "hidden_size",
    "proj_size",
    "num_layers",
    "bidirectional",
    "batch_first",
    "bias",
    "mode",
)


def _plan(model: Any, layers: tuple[str, ...] | None, fields: tuple[str, ...] | None) -> _Plan | None:
    d = vars(model)
    key = (type(model), layers, fields, *map(d.get, _KEY))
    try:
        plan = _PLANS[key]
    except KeyError:
        pass
    except TypeError:  # an unhashable attribute: read it as it is
        return _new_plan(model, layers, fields)
    else:
        return plan
    plan = _new_plan(model, layers, fields)  # (an error, such as c asked of a GRU: not kept)
    if len(_PLANS) < 1024:
        _PLANS[key] = plan
    return plan


def _new_plan(model: Any, layers: tuple[str, ...] | None, fields: tuple[str, ...] | None) -> _Plan | None:
    cfg = _config(model)
    if cfg is None or cfg.wrapped or cfg.overridden:
        return None
    if layers is not None and not set(layers) <= {s.name for s in _static_specs(cfg.base.lower(), cfg)}:
        return None
    return _Plan(cfg, layers, fields)


def _rebuilds(model: Any, cfg: Any, x: torch.Tensor, full: Mapping[int, Any]) -> bool:
    """Whether every layer in ``full`` is rebuilt from the kernel's h on the general path too
    (:func:`.emit._small`, the weights plain tensors of ``x``'s dtype: :func:`.rebuild_fast.fits`);
    the shapes of a layer's input past the first do not enter the decision."""
    return _small(x, cfg) and all(plain_weights(model, cfg, layer, x.dtype) for layer in full)


def _layers(
    model: Any, cfg: Any, args: Sequence[Any], kwargs: Mapping[str, Any], full: Mapping[int, Any]
) -> tuple[dict[int, torch.Tensor], dict[int, list[tuple[np.ndarray, ...]]]]:
    """Every layer's output sequence: PyTorch's own forward on a one-layer view of each layer
    (:func:`.record._layer_view`, sharing the parameters; the module itself where it has one
    layer), as the general path runs them; and per layer in ``full`` its ``(c, i, f, g, o)`` per
    direction rebuilt from that output (:func:`.rebuild_fast.rebuild_arrays`, parity-checked)."""
    x = args[0]
    hx = args[1] if len(args) > 1 else kwargs.get("hx")
    forward = type(model).forward
    out, parts = {}, {}
    for layer in range(cfg.num_layers):
        view = model if cfg.num_layers == 1 else _layer_view(model, cfg, layer)
        hx_l = _hx_slice(hx, layer, cfg.n_dir)
        y = forward(view, x, hx_l)[0]
        if layer in full:
            name = f"{cfg.base} layer {layer}"
            parts[layer] = rebuild_arrays(view, cfg, layer, x, y, hx_l, cfg.batch_first, name)
        out[layer] = x = y
    return out, parts
