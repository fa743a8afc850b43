"""``h`` alone of a bare one-layer ``nn.LSTM`` / ``nn.GRU`` / ``nn.RNN``: the module's own output.

Where :func:`rnnlens.trace` is given a bare recurrent module (one layer) that runs PyTorch's own
code only (:func:`.trusted.own_code_only`) and only ``h`` is asked for, the forward pass's output
sequence *is* ``h``: the module runs once, as it is (``module(*args, **kwargs)`` under
``torch.inference_mode()``, in eval mode, its bindings put back after), and its output is split
into directions without copying. Nothing else is needed — no plans, no recording stand-ins, no
conversion of a recorded call — which is most of a trace call's fixed cost on a small model
(an ``nn.LSTM(32, 32)``, batch 1, 20 steps: about a third). The same arrays, names and specs as
the general path (:mod:`.trace`), bitwise (the same kernel call on the same arguments).
Anything else (a ``PackedSequence``, several layers, ``c`` or gates, ``layers=`` naming
something else, an input the module refuses) returns None: the general path runs and says why.

Example:
    >>> import torch
    >>> from rnnlens.adapters.base import TraceOptions
    >>> from rnnlens.adapters.torch_.express import capture_h
    >>> gru, x = torch.nn.GRU(3, 4, batch_first=True), torch.zeros(2, 5, 3)
    >>> captured = capture_h(gru, (x,), {}, TraceOptions(fields=("h",)))
    >>> [s.name for s in captured.specs], captured.batches[0]["gru"][0]["forward"].h.shape
    (['gru'], (2, 5, 4))
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from ...core.cells import DirectionArrays
from ...core.tracing import resolve_fields
from ..base import Captured, TraceOptions
from .discover import _config, _static_specs
from .trusted import own_code_only
from .unchanged import unchanged
from .weights import _np

__all__ = ["capture_h"]

_DTYPES = (torch.float32, torch.float64)


def capture_h(
    model: Any, args: Sequence[Any], kwargs: Mapping[str, Any], options: TraceOptions
) -> Captured | None:
    """The module's own output as ``h`` (see the module docstring), or None where the general
    path is needed."""
    if options.mask is not None or options.batch_size is not None or not args:
        return None
    x = args[0]
    if (
        type(x) is not torch.Tensor
        or x.dim() not in (2, 3)
        or x.dtype not in _DTYPES
        or x.device.type != "cpu"
    ):
        return None
    if not own_code_only(model, args, kwargs):
        return None
    cfg = _config(model)
    if cfg is None or cfg.num_layers != 1 or cfg.wrapped or cfg.overridden:
        return None
    (spec,) = _static_specs(cfg.base.lower(), cfg)
    if options.layers is not None and list(options.layers) != [spec.name]:
        return None
    if resolve_fields([spec], options.fields)[spec.name] != ("h",):
        return None
    with unchanged(model, own_code_only=True):
        if model.training:
            model.training = False
        try:
            # (inference mode: PyTorch's code alone runs, and its output is only read; under
            # no_grad every op of a kernel's step loop also passes autograd's dispatch layer,
            # 8-14% of a GRU(64)'s forward at batch 16, 100 steps)
            with torch.inference_mode():
                out = model(*args, **kwargs)
        except Exception:  # the general path runs it again and says what is wrong
            return None
    seq = _np(out[0])
    if x.dim() == 2:
        seq = seq[None]
    elif not cfg.batch_first:
        seq = seq.transpose(1, 0, 2)
    u = cfg.units
    arrays = {
        direction: DirectionArrays(h=seq[:, :, d * u : (d + 1) * u])
        for d, direction in enumerate(cfg.directions)
    }
    return Captured([spec], [{spec.name: (arrays, None)}], backend="torch")
