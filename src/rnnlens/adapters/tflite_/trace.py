"""TFLite adapter: run the model once with rnnlens' own interpreter and read every fused recurrent op.

What is traced
--------------
The main subgraph's ``UNIDIRECTIONAL_SEQUENCE_LSTM``, ``BIDIRECTIONAL_SEQUENCE_LSTM`` and
``UNIDIRECTIONAL_SEQUENCE_RNN`` ops (:mod:`.graph`); the two ``UNIDIRECTIONAL_SEQUENCE_LSTM`` ops of a
converted Keras ``Bidirectional`` layer are one layer with a forward and a backward direction.
``h`` of every step is the op's own output (:mod:`.runtime`); ``c`` and the gates are rebuilt
from its weights and checked against it (:mod:`.states`). A layer whose equations rnnlens does
not cover (quantized weights, layer normalisation, CIFG, clipping) gives ``h`` only: asking for
more, or for every field (``fields=None``), is an :class:`~rnnlens.errors.UnsupportedLayerError`
that says to ask for ``fields=('h',)``. A model whose recurrence was converted to ``WHILE`` loops
(Keras 3 layers, GRU, SimpleRNN) is refused, naming the loops.

Inputs
------
``trace(model, x, *more)`` feeds the main subgraph's inputs in order (``x`` may also be a list of
arrays, or a dict by tensor or signature input name; keyword arguments are inputs by name).
Arrays are cast to the input's type. TFLite models have a fixed batch size: the inputs are run
in chunks of it (any number of samples works); a different number of steps is given to the
interpreter as a resized input where the model allows it. ``mask=`` and ``batch_size=`` are refused
(the fused ops have no valid-step input).

Names
-----
A layer is named after its op's output tensor where the converter kept a name (a Keras
``Bidirectional``: its concatenation's scope, ``"sequential/bidirectional"``), else
``lstm_<k>`` / ``rnn_<k>`` in graph order.

Example:
    >>> "tf_keras" in _HOW and "batch_size=1" in _HOW  # the way out named in WHILE-loop refusals
    True
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from ...core.tracing import resolve_fields, select_layers
from ...errors import InputError, UnsupportedLayerError, UnsupportedModelError
from ..base import Args, Captured, Kwargs, LayerBatch, TraceOptions
from .runtime import Prepared, prepare
from .states import layer_arrays, needs

__all__ = ["capture", "describe", "untraced"]

_FUSED = "UNIDIRECTIONAL_SEQUENCE_LSTM, BIDIRECTIONAL_SEQUENCE_LSTM or UNIDIRECTIONAL_SEQUENCE_RNN"
_HOW = (
    "Convert a Keras 2 (tf_keras) LSTM with a fixed batch size — tf_keras.Input(shape, batch_size=1) "
    "and tf.lite.TFLiteConverter.from_keras_model(model) — which gives one fused "
    "UNIDIRECTIONAL_SEQUENCE_LSTM op per LSTM, or trace the Keras model itself (rnnlens.trace on the "
    ".keras/.h5 model: every layer kind, every backend)."
)


def describe(model: Any) -> list[Any]:
    """The fused recurrent ops of ``model`` as :class:`~rnnlens.core.spec.LayerSpec` s."""
    prep = prepare(model)
    _require_layers(prep)
    return [lay.spec for lay in prep.graph.layers]


def untraced(model: Any) -> list[str]:
    """The ``WHILE`` loops rnnlens cannot see into, each ``"where: why"``."""
    return [
        f"{loop}: a loop of per-step ops, not a fused recurrent op" for loop in prepare(model).graph.loops
    ]


def _require_layers(prep: Prepared) -> None:
    if prep.graph.layers:
        return
    loops = prep.graph.loops
    if loops:
        shown = "; ".join(loops[:5]) + (f"; ... ({len(loops)} in all)" if len(loops) > 5 else "")
        raise UnsupportedLayerError(
            f"The TFLite model's recurrence is a WHILE loop ({shown}): the converter turned the layer into "
            "per-step ops (what Keras 3 layers, GRU and SimpleRNN become), whose steps rnnlens cannot see. "
            + _HOW
        )
    raise UnsupportedLayerError(f"The TFLite model has no {_FUSED} op (nor a WHILE loop). " + _HOW)


def _batch_axes(prep: Prepared) -> dict[int, int]:
    """Each graph input's batch axis: 1 where it feeds a time-major op directly, else 0."""
    time_major = {c.roles["input"] for lay in prep.graph.layers for c in lay.cells.values() if c.time_major}
    return {t: 1 if t in time_major else 0 for t in prep.graph.inputs}


def _feeds(prep: Prepared, args: Args, kwargs: Kwargs) -> dict[int, np.ndarray]:
    g = prep.graph
    axes = _batch_axes(prep)
    by_name = {**{g.names[i]: i for i in g.inputs}, **g.signature}
    listed = [g.names[i] for i in g.inputs]
    given: dict[int, Any] = {}
    x, rest = (args[0], list(args[1:])) if args else (None, [])
    if isinstance(x, Mapping):
        kwargs = {**x, **kwargs}
        x = None
    positional = ([] if x is None else list(x) if isinstance(x, (list, tuple)) else [x]) + rest
    if len(positional) > len(g.inputs):
        raise InputError(
            f"The TFLite model takes {len(g.inputs)} input(s) ({listed}); received {len(positional)}."
        )
    given.update(zip(g.inputs, positional))
    for name, v in kwargs.items():
        if name not in by_name:
            raise InputError(f"The TFLite model has no input {name!r}; its inputs are {listed}.")
        given[by_name[name]] = v
    missing = [g.names[i] for i in g.inputs if i not in given]
    if missing:
        raise InputError(f"No value for the TFLite model's input(s) {missing}; its inputs are {listed}.")
    feeds = {}
    for t, v in given.items():
        try:
            a = np.asarray(v.numpy() if hasattr(v, "numpy") else v)
            if a.dtype.kind not in "biuf":
                raise TypeError(f"an array of {a.dtype}, not numbers")
            with np.errstate(over="ignore", invalid="ignore"):  # as the model's own cast would
                a = a.astype(g.dtypes[t], copy=False)
        except Exception as e:
            raise InputError(
                f"Input {g.names[t]!r} must be an array of {g.dtypes[t]} with shape {g.shapes[t]}; "
                f"received {type(v).__name__} ({type(e).__name__}: {e})."
            ) from e
        want = g.shapes[t]
        if a.ndim != len(want) or a.ndim < 2 or a.shape[axes[t]] == 0 or a.shape[2:] != want[2:]:
            raise InputError(
                f"Input {g.names[t]!r} has shape {tuple(a.shape)}; the model takes {want} (the batch axis "
                f"({axes[t]}) may have any size, the other of the first two only where the model allows it)."
            )
        feeds[t] = a
    ns = {a.shape[axes[t]] for t, a in feeds.items()}
    if len(ns) > 1:
        raise InputError(f"The inputs have different numbers of samples: {sorted(ns)}.")
    return feeds


def _fields_of(chosen: list[Any], layers: Mapping[str, Any], fields: Any) -> dict[str, Any]:
    """Refuse c and gates (and fields=None) of layers that give h only, then resolve."""
    asked = None if fields is None else ({fields} if isinstance(fields, str) else set(fields))
    for spec in chosen:
        problem = layers[spec.name].problem
        if problem and (asked is None or asked & {"c", "gates"}):
            raise UnsupportedLayerError(
                f"Layer {spec.name!r} ({spec.layer_type}) uses {problem}, which rnnlens' LSTM equations do "
                "not cover, so its c and gates cannot be rebuilt exactly. Ask for fields=('h',) (straight "
                "from the TFLite interpreter), or select other layers with layers=[...]."
            )
    return dict(resolve_fields(chosen, fields))


def capture(model: Any, args: Args, kwargs: Kwargs, options: TraceOptions) -> Captured:
    """TFLite implementation of :meth:`rnnlens.adapters.Adapter.capture` (see the module docstring)."""
    if options.mask is not None:
        raise InputError(
            "mask= is not used for TFLite models: the fused recurrent ops have no valid-step input, so "
            "every step is computed. Trace the samples of each length separately."
        )
    if options.batch_size is not None:
        raise InputError(
            "batch_size= is not used for TFLite models: the interpreter runs the inputs in chunks of the "
            "model's own batch size. Split large inputs yourself, or use rnnlens.extract_to."
        )
    prep = prepare(model)
    _require_layers(prep)
    if not args and not kwargs:
        raise InputError(
            f"No inputs given; the model's inputs are {[prep.graph.names[i] for i in prep.graph.inputs]}."
        )
    layers = {lay.name: lay for lay in prep.graph.layers}
    chosen = select_layers([lay.spec for lay in prep.graph.layers], options.layers)
    want = _fields_of(chosen, layers, options.fields)
    feeds = _feeds(prep, args, kwargs)
    before: list[int] = []
    after: list[int] = []
    consts: list[int] = []
    for spec in chosen:
        b, a, c = needs(layers[spec.name], want[spec.name])
        before, after, consts = before + b, after + a, consts + c
    try:
        run = prep.run(
            feeds,
            _batch_axes(prep),
            list(dict.fromkeys(before)),
            list(dict.fromkeys(after)),
            list(dict.fromkeys(consts)),
        )
    except InputError:
        raise
    except Exception as e:
        raise UnsupportedModelError(
            f"The TFLite interpreter could not run the model ({type(e).__name__}: "
            f"{str(e).strip().splitlines()[0] if str(e).strip() else ''})."
        ) from e
    time_major = {c.output: c.time_major for lay in layers.values() for c in lay.cells.values()}
    time_major |= {c.roles["input"]: c.time_major for lay in layers.values() for c in lay.cells.values()}

    def tensor(t: int, after_invoke: bool) -> np.ndarray:
        parts = (run.after if after_invoke else run.before)[t]
        axis = 1 if time_major.get(t, False) else 0
        whole = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=axis)
        return np.take(whole, np.arange(run.n), axis=axis) if whole.shape[axis] != run.n else whole

    batch: dict[str, LayerBatch] = {
        s.name: (layer_arrays(layers[s.name], want[s.name], tensor, run.constants), None) for s in chosen
    }
    return Captured(chosen, [batch], backend="tflite")
