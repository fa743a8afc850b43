"""Public entry points: options are checked here once, then the model's adapter
(:mod:`rnnlens.adapters`) captures and the core assembles. No framework is imported until a
model of that framework arrives."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from typing import Any, Literal

from .. import adapters
from ..adapters.base import TraceOptions
from ..core.options import (
    check_batch_size,
    check_choice,
    check_fields,
    check_layers,
    check_mask,
    check_strategy,
)
from ..core.spec import LayerSpec
from ..core.states import States
from ..core.table import format_table
from ..core.tracing import assemble
from .loader import load_model

__all__ = ["Description", "describe", "trace"]


class Description(tuple[LayerSpec, ...]):
    """The recurrent layers of a model (a tuple of :class:`~rnnlens.LayerSpec`), shown as a table."""

    #: recurrent parts rnnlens found but cannot trace, each ``"where (what): why"``
    untraced: tuple[str, ...] = ()

    def __new__(cls, specs: Iterable[LayerSpec] = (), untraced: Iterable[str] = ()) -> Description:
        self = super().__new__(cls, specs)
        self.untraced = tuple(untraced)
        return self

    def __repr__(self) -> str:
        notes = "".join(f"\nnot traceable: {u}" for u in self.untraced)
        if not self:
            return ("No traceable recurrent layers." + notes) if self.untraced else "No recurrent layers."
        return self._table() + notes

    __str__ = __repr__

    def _table(self) -> str:
        return format_table(
            ("layer", "type", "kind", "units", "directions", "fields"),
            [
                (s.name, s.layer_type, s.kind, str(s.units), "+".join(s.directions), ",".join(s.fields))
                for s in self
            ],
        )

    @property
    def names(self) -> list[str]:
        return [s.name for s in self]


def describe(model: Any) -> Description:
    """The recurrent layers of ``model``: name, kind, units, directions and extractable fields.

    Example:
        >>> import keras, rnnlens
        >>> model = keras.Sequential([keras.Input((None, 3)), keras.layers.LSTM(4, name="enc")])
        >>> rnnlens.describe(model)
        layer  type  kind  units  directions  fields
        -----  ----  ----  -----  ----------  ---------
        enc    LSTM  lstm  4      forward     h,c,gates
    """
    model = _opened(model)
    adapter = adapters.for_model(model)
    return Description(adapter.describe(model), adapter.untraced(model))


def trace(
    model: Any,
    x: Any,
    *args: Any,
    layers: str | Iterable[str] | None = None,
    fields: str | Sequence[str] | None = None,
    mask: Any = None,
    batch_size: int | None = None,
    strategy: Literal["auto", "emit", "reconstruct"] = "auto",
    calls: Literal["join", "each"] = "join",
    **kwargs: Any,
) -> States:
    """Hidden state (and for LSTM cell state and gates) of every recurrent layer at every step.

    Args:
        model: a built Keras 3 ``Model`` (Functional or Sequential), a ``torch.nn.Module``, an
            ONNX model (``onnx.ModelProto``), or a model file path (opened with
            :func:`rnnlens.load_model` in safe mode). It is not modified.
        x: the input as the model takes it: an array, or a list/dict for several inputs.
            PyTorch: the positional arguments of ``forward`` (``*args``, ``**kwargs`` follow).
            ONNX: the graph's inputs in order (``*args`` continue), or by name (``**kwargs``).
        layers: a layer name, a list of names, or None for every recurrent layer.
        fields: a subset of ``("h", "c", "gates")``; None (default) gives every field each
            layer has (LSTM: h, c, gates; GRU: h, gates; others: h). ``h`` always comes.
        mask: optional (sample, time) boolean mask of valid steps (Keras), applied to the
            model's input like a ``Masking`` layer would.
        batch_size: samples per pass; None runs up to 1024 samples in one pass.
        strategy: how c and gates are obtained (both exact): ``"emit"`` runs the recurrence
            once with a probe cell that emits them (fastest where the framework runs a
            generic loop anyway, as on CPU); ``"reconstruct"`` takes h from the framework's
            fused kernel and rebuilds gates in one batched matmul and c by a scan, checked
            against h (fastest with cuDNN). ``"auto"`` picks per layer and device.
        calls: a module that ``forward`` calls several times (PyTorch): ``"join"`` (default)
            makes calls that each start from the state the previous call returned (a decoder
            fed one token at a time) one entry along time, named after the first call;
            ``"each"`` gives every call its own entry (``"decoder.rnn"``, ``"decoder.rnn#1"``,
            ...). Calls that do not chain are separate entries either way.

    Returns:
        :class:`~rnnlens.States`, keyed by layer name in model order.

    Example:
        >>> import keras, numpy as np, rnnlens
        >>> model = keras.Sequential([keras.Input((None, 3)), keras.layers.LSTM(4, name="enc")])
        >>> states = rnnlens.trace(model, np.ones((2, 5, 3), "float32"))
        >>> states["enc"].h.shape, states["enc"].c.shape, list(states["enc"].gates)
        ((2, 5, 4), (2, 5, 4), ['i', 'f', 'g', 'o'])
        >>> bool(np.allclose(states["enc"].last(), model.predict(np.ones((2, 5, 3)), verbose=0), atol=1e-6))
        True
    """
    model = _opened(model)
    adapter = adapters.for_model(model)
    options = _default_options(adapter, layers, fields, mask, batch_size, strategy, calls)
    if options is None:
        options = TraceOptions(
            layers=check_layers(layers),
            fields=check_fields(fields),
            # an adapter that takes mask= as valid steps gets it checked; others see it as given
            mask=check_mask(mask) if adapter.takes_mask else mask,
            batch_size=check_batch_size(batch_size),
            strategy=check_strategy(strategy, adapter.strategies, adapter.name),
            calls=check_choice("calls", calls, ("join", "each")),
        )
    captured = adapter.capture(model, (x, *args), kwargs, options)
    return assemble(captured.specs, captured.batches, backend=captured.backend)


#: the checked options of a call with every option but ``fields`` at its default, per adapter,
#: its strategies and ``fields`` (None or a tuple of str): the same checks give the same options
_DEFAULTS: dict[tuple[Any, ...], TraceOptions] = {}


def _default_options(
    adapter: Any, layers: Any, fields: Any, mask: Any, batch_size: Any, strategy: Any, calls: Any
) -> TraceOptions | None:
    """The options of a call with the defaults (``fields`` aside), checked once; None otherwise
    (every option then checked as given)."""
    if (
        layers is not None
        or mask is not None
        or batch_size is not None
        or type(strategy) is not str
        or strategy != "auto"
        or type(calls) is not str
        or calls != "join"
    ):
        return None
    if fields is not None and (type(fields) is not tuple or any(type(f) is not str for f in fields)):
        return None
    key = (adapter, adapter.strategies, adapter.takes_mask, fields)
    try:
        options = _DEFAULTS.get(key)
    except TypeError:  # an adapter (or its strategies) unhashable: checked as given
        return None
    if options is None:
        options = TraceOptions(
            fields=check_fields(fields), strategy=check_strategy("auto", adapter.strategies, adapter.name)
        )
        if len(_DEFAULTS) < 256:
            _DEFAULTS[key] = options
    return options


def _opened(model: Any) -> Any:
    """A model file path that no adapter traces as a path is opened with
    :func:`rnnlens.load_model` (safe mode: a file that would run code is refused)."""
    if isinstance(model, (str, os.PathLike)) and not any(
        a.can_trace(model) for a in adapters.registered().values()
    ):
        return load_model(model)
    return model
