"""PyTorch's quantized recurrent modules and autocast: what rnnlens traces, and what it refuses by name.

``torch.ao.quantization.quantize_dynamic(model, {nn.LSTM, nn.GRU})`` swaps each layer for
``torch.ao.nn.quantized.dynamic.LSTM`` / ``GRU``: :func:`quantized_base` recognises those (traced
with the kernel's own quantized ops, :mod:`.quantized_rnn`). The other quantized recurrent modules
— the dynamically quantized cells (``LSTMCell``, ``GRUCell``, ``RNNCell``), the statically
quantized ``torch.ao.nn.quantized.LSTM`` and its ``quantizable`` form, a quantized layer whose
``forward`` was replaced — run int8 kernels rnnlens does not step through, and are not
``nn.LSTM`` / ``nn.GRU``: without this check they would be skipped silently ("no recurrent
layers"), or a model with float layers too would be traced with them missing.
:func:`refuse_quantized` names each one and says what to do instead; it imports nothing (it
reads class names).

Under ``torch.autocast`` the recurrent kernel computes in autocast's dtype, not the module's:
rnnlens' own step loop would compute something else (:func:`autocast_dtype` tells the emitting
loop to stand aside, so h is the kernel's own; c and gates are refused or rebuilt at that dtype's
tolerance), and an edited run (which needs that loop) is refused (:func:`refuse_autocast`).

>>> class LSTM:  # what quantize_dynamic puts in place of nn.LSTM, by its module path
...     pass
>>> class LSTMCell:  # ... and of nn.LSTMCell
...     pass
>>> LSTM.__module__ = LSTMCell.__module__ = "torch.ao.nn.quantized.dynamic.modules.rnn"
>>> class Model:
...     def named_modules(self):
...         return iter([("", self), ("encoder.rnn", LSTM()), ("decoder.cell", LSTMCell())])
>>> quantized_base(LSTM()), quantized_recurrent(Model())
('LSTM', [('decoder.cell', 'torch.ao.nn.quantized.dynamic.modules.rnn.LSTMCell')])
"""

from __future__ import annotations

import functools
from typing import Any

from ...errors import UnsupportedLayerError

__all__ = ["autocast_dtype", "quantized_base", "quantized_recurrent", "refuse_autocast", "refuse_quantized"]

#: module paths of PyTorch's quantized modules (``torch.nn.quantized`` is the older alias)
_QUANTIZED = (
    "torch.ao.nn.quantized",
    "torch.nn.quantized",
    "torch.ao.nn.quantizable",
    "torch.nn.quantizable",
)
_RECURRENT = {"LSTM", "GRU", "RNN", "RNNBase", "LSTMCell", "GRUCell", "RNNCell", "RNNCellBase"}


#: dynamically quantized sequence modules rnnlens traces (:mod:`.quantized_rnn`)
_DYNAMIC = ("torch.ao.nn.quantized.dynamic", "torch.nn.quantized.dynamic")


@functools.lru_cache(maxsize=512)
def _dynamic_class(kind: type) -> type | None:
    """The dynamically quantized ``LSTM`` / ``GRU`` class in ``kind``'s hierarchy, else None
    (per class: it is asked of every module at every trace call)."""
    for cls in kind.__mro__:
        if cls.__name__ in ("LSTM", "GRU") and cls.__module__.startswith(_DYNAMIC):
            return cls
    return None


@functools.lru_cache(maxsize=512)
def _quantized_class(kind: type) -> bool:
    """Whether ``kind`` is a quantized recurrent class (by its hierarchy's module paths)."""
    return any(cls.__module__.startswith(_QUANTIZED) and cls.__name__ in _RECURRENT for cls in kind.__mro__)


def quantized_base(m: Any) -> str | None:
    """``"LSTM"`` / ``"GRU"`` for a dynamically quantized ``LSTM`` / ``GRU`` that rnnlens traces
    (by its class's module path; a subclass only when it keeps the class ``forward``), else None."""
    kind: Any = type(m)  # (Any: a class is hashable, whatever mypy says of type[Any])
    cls = _dynamic_class(kind)
    if cls is None:
        return None
    same = getattr(type(m), "forward", None) is getattr(cls, "forward", None)
    return cls.__name__ if same and "forward" not in vars(m) else None


def quantized_recurrent(model: Any) -> list[tuple[str, str]]:
    """``(path, class)`` of every quantized recurrent module in ``model`` (``"<model>"`` for the
    model itself) that rnnlens does not trace (all but :func:`quantized_base`'s)."""
    modules = getattr(model, "named_modules", None)
    if modules is None:
        return []
    found = []
    for name, module in modules():
        kind: Any = type(module)
        if _quantized_class(kind) and quantized_base(module) is None:
            found.append((name or "<model>", f"{kind.__module__}.{kind.__qualname__}"))
    return found


def refuse_quantized(model: Any) -> None:
    """Raise :class:`~rnnlens.errors.UnsupportedLayerError` naming the quantized recurrent
    modules of ``model``, if it has any."""
    found = quantized_recurrent(model)
    if not found:
        return
    named = ", ".join(f"{path!r} ({cls})" for path, cls in found)
    raise UnsupportedLayerError(
        f"{named} {'is a' if len(found) == 1 else 'are'} quantized recurrent "
        f"module{'' if len(found) == 1 else 's'} (torch.ao.quantization): the fbgemm/qnnpack kernel "
        "quantizes x and h to 8 bits at every step, which rnnlens does not reproduce for this module "
        "(it traces quantize_dynamic's LSTM and GRU layers, not its cells, static quantization or a "
        "replaced forward), so it returns no numbers for the model rather than approximate ones (or a "
        "trace with these layers missing). Trace the float model (before quantize_dynamic), quantize "
        "nn.LSTM / nn.GRU layers (not cells), or export it with torch.onnx.export and quantize the "
        "ONNX file with onnxruntime.quantization.quantize_dynamic: rnnlens traces ONNX Runtime's "
        "DynamicQuantizeLSTM with its kernel's own arithmetic."
    )


def autocast_dtype(device_type: str) -> Any:
    """The dtype ``torch.autocast`` computes in on ``device_type`` now, or None outside autocast."""
    import torch

    try:
        if not torch.is_autocast_enabled(device_type):
            return None
        return torch.get_autocast_dtype(device_type)
    except (TypeError, RuntimeError, AttributeError):  # a device type autocast does not know
        return None


def refuse_autocast(what: str) -> None:
    """Raise :class:`~rnnlens.errors.UnsupportedLayerError` when ``what`` (an edited run) is asked
    for under ``torch.autocast``: rnnlens' step loop would not compute what the kernel does there."""
    for device in ("cpu", "cuda"):
        dtype = autocast_dtype(device)
        if dtype is not None:
            raise UnsupportedLayerError(
                f"{what} under torch.autocast({device!r}, dtype={dtype}): the recurrent kernel computes "
                "in that dtype and rnnlens' step loop (which applies the edits) would not compute the "
                "same numbers. Run it outside autocast."
            )
