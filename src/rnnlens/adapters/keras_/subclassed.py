"""Subclassed ``keras.Model``s (a Python ``call``): the model's own ``call`` run eagerly, with
rnnlens' stand-ins answering for its recurrent layers.

For the one call, each recurrent layer *instance* gets a class whose only change is
``__call__`` (Python looks ``__call__`` up on the type); the original class is put back when
the call ends, also after an error, so the model is left as it was. The stand-ins are the
probe's (:mod:`.probe`): the same sibling / emitter and the same rebuild of the layer's own
return value, so layers above see what the layer itself returns (``return_state`` included).
Each layer sees the mask and ``initial_state`` the model's code gives it.

Entries are named by attribute path (``"gru"``, ``"encoder.lstm"``, ``"blocks.0"``; a layer
of a nested Functional/Sequential model by ``"<attribute>.<layer name>"``); a layer called
several times in one call has one entry per call, ``name``, ``name#1``, ..., except calls that
carry the state on (each starting from the state the previous one ended in: a sequence fed in
pieces), joined along time into the first call's entry (``calls="join"``, the default; not in
``intervene``, whose edits name calls; :func:`~rnnlens.adapters.calllog.join_calls`). A recurrent layer
called inside a ``tf.function`` / ``jax.jit`` of the model's own code cannot be seen step by
step: refused with an :class:`~rnnlens.errors.UnsupportedModelError`.

Functional and Sequential models go on to :mod:`.trace` (this module is where the adapter
dispatches).

Example:
    >>> import numpy as np, keras, rnnlens
    >>> class Net(keras.Model):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.gru = keras.layers.GRU(4, return_sequences=True)
    ...     def call(self, x):
    ...         return self.gru(x)
    >>> net = Net()
    >>> _ = net(np.zeros((1, 5, 3), "float32"))
    >>> rnnlens.trace(net, np.ones((2, 5, 3), "float32"))["gru"].h.shape
    (2, 5, 4)
"""

from __future__ import annotations

import re
import weakref
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from ...core.edits import LayerEdits, check_masked, edit_arrays
from ...core.kinds import KINDS
from ...core.spec import LayerSpec, call_entry
from ...core.tracing import resolve_fields, select_layers
from ...errors import InputError, LayerNotFoundError, UnsupportedLayerError, UnsupportedModelError
from ..base import Args, Captured, Edits, Intervened, Kwargs, TraceOptions
from ..calllog import ATOL, RTOL, join_calls
from . import keras2_objects, opaque, trace
from .probe import Probe, Strategy, choose_strategy, is_recurrent

__all__ = ["capture", "describe", "intervene", "is_subclassed", "recurrent_layers"]

_CALL = re.compile(r"#\d+$")


def _keras():  # type: ignore[no-untyped-def]
    import keras

    return keras


def is_subclassed(model: Any) -> bool:
    """A ``keras.Model`` that is neither Functional nor Sequential (its ``call`` is Python)."""
    k = _keras()
    from keras.src.models.functional import Functional

    return isinstance(model, k.Model) and not isinstance(model, (Functional, k.Sequential))


# --------------------------------------------------------------------------- discovery


def _attributes(layer: Any) -> list[tuple[str, Any]]:
    """A layer's public attributes in the order its sublayers were set (the torch backend keeps
    sublayers in ``_modules``)."""
    k = _keras()
    order = {id(sub): i for i, sub in enumerate(layer._flatten_layers(include_self=False, recursive=False))}
    items = [
        (a, v)
        for a, v in [*vars(layer).items(), *getattr(layer, "_modules", {}).items()]
        if not a.startswith("_")
    ]

    def first(value: Any) -> int:
        leaves = (
            [v for v in k.tree.flatten(value) if isinstance(v, k.layers.Layer)]
            if not isinstance(value, k.layers.Layer)
            else [value]
        )
        return min((order.get(id(v), len(order)) for v in leaves), default=len(order))

    return sorted(items, key=lambda item: first(item[1]))


def _named(path: str, value: Any, seen: set[int]) -> Iterator[tuple[str, Any]]:
    k = _keras()
    if isinstance(value, k.layers.Layer):
        if id(value) in seen:
            return
        seen.add(id(value))
        if is_recurrent(value):
            yield path, value
        elif isinstance(value, k.Model) and not is_subclassed(value):
            for layer in value.layers:  # a nested Functional / Sequential: its layers by name
                yield from _named(f"{path}.{layer.name}", layer, seen)
        else:
            for attr, v in _attributes(value):
                yield from _named(f"{path}.{attr}", v, seen)
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            yield from _named(f"{path}.{i}", v, seen)
    elif isinstance(value, dict):
        for key, v in value.items():
            yield from _named(f"{path}.{key}", v, seen)


def recurrent_layers(model: Any) -> tuple[list[tuple[str, Any]], list[str]]:
    """(attribute path, layer) of every recurrent layer, and the paths of the other layers;
    a layer reachable only through private attributes is named by its Keras name."""
    seen: set[int] = {id(model)}
    found = [item for attr, v in _attributes(model) for item in _named(attr, v, seen)]
    for _, layer in found:  # a Bidirectional's own direction layers are part of it
        if is_recurrent(layer):
            seen.update(id(sub) for sub in layer._flatten_layers(include_self=False, recursive=True))
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if id(layer) not in seen and is_recurrent(layer):
            seen.add(id(layer))
            found.append((layer.name, layer))
    rec = [(p, layer) for p, layer in found if is_recurrent(layer)]
    others = [p for p, layer in found if not is_recurrent(layer)]
    return rec, others


def describe(model: Any) -> list[LayerSpec]:
    """Every recurrent layer of a Keras model (each call of a subclassed model's layer is an
    entry of its own at trace time: ``name#k``)."""
    model = _keras3(model)
    if not is_subclassed(model):
        return trace.describe(model)
    _require_built(model)
    return [trace._spec(name, layer) for name, layer in recurrent_layers(model)[0]]


def _require_built(model: Any) -> None:
    if not model.built:
        raise UnsupportedModelError(
            f"Model {model.name!r} ({type(model).__name__}) has not been built, so it has no trained "
            "weights yet. Call it on data (or fit it) first."
        )


# --------------------------------------------------------------------------- the probe


class CallProbe(Probe):
    """The probe for a subclassed model: runs ``model(*args, **kwargs)`` eagerly with every
    recurrent layer's ``__call__`` answered by :meth:`Probe._call_recurrent`; ``entries``:
    ``(entry, layer)`` of the last run, in call order."""

    entries: list[tuple[str, str]]
    layers: list[Any]  # the recurrent layers answered for

    def _compile(self) -> Callable[[Any, Any, Any], dict[str, Any]]:
        if _keras().backend.backend() == "torch":
            import torch

            def eager(inputs: Any, mask: Any, edits: Any) -> dict[str, Any]:
                with torch.inference_mode():
                    return self._run(inputs, mask, edits)

            return eager
        return self._run

    def _run_model(self, model: Any, inputs: Any, mask: Any, captured: dict[str, Any]) -> Any:
        from keras.src.backend import set_keras_mask

        args, kwargs = inputs
        args = list(args)
        if mask is not None:
            args[0] = _keras().ops.convert_to_tensor(args[0])
            set_keras_mask(args[0], _keras().ops.convert_to_tensor(mask))
        if "training" in getattr(model, "_call_context_args", ()):
            kwargs = {**kwargs, "training": False}
        self.entries = []
        counts: dict[str, int] = {}
        probe = self

        refused: list[UnsupportedModelError] = []

        def __call__(layer: Any, *a: Any, **kw: Any) -> Any:
            refusal = _compiled_call(layer, a, kw)
            if refusal is not None:
                refused.append(refusal)
                raise refusal
            base = probe.names[id(layer)]
            entry = call_entry(base, counts.get(base, 0))
            counts[base] = counts.get(base, 0) + 1
            probe.entries.append((entry, base))
            return probe._call_entry(layer, entry, base, list(a), kw, captured)

        installed = []
        try:
            for layer in self.layers:
                cls = type(layer)
                stand_in = type(cls.__name__, (cls,), {"__call__": __call__, "__module__": cls.__module__})
                stand_in.__qualname__ = cls.__qualname__
                object.__setattr__(layer, "__class__", stand_in)
                installed.append((layer, cls))
            return model(*args, **kwargs)
        except Exception:
            if refused:  # TensorFlow wraps it in a StagingError: the refusal itself
                raise refused[0] from None
            raise
        finally:
            for layer, cls in installed:
                object.__setattr__(layer, "__class__", cls)

    def _call_entry(
        self, layer: Any, entry: str, base: str, args: list[Any], kwargs: dict[str, Any], captured: Any
    ) -> Any:
        """:meth:`Probe._call_recurrent` with the captured keys (and edits) named by ``entry``."""
        subs = [s for s, owner in self._owner.items() if owner == base]
        if base in self.targets:
            self.targets[entry] = self.targets[base]
        self.names[id(layer)] = entry
        for s in subs:
            self._owner[s] = entry
        try:
            return self._call_recurrent(layer, args, dict(kwargs), captured)
        finally:
            self.names[id(layer)] = base
            for s in subs:
                self._owner[s] = base


def _compiled_call(layer: Any, args: Any, kwargs: Any) -> UnsupportedModelError | None:
    """The refusal of a recurrent layer called on symbolic values (in the model's own compiled
    code), or None for an eager call."""
    k = _keras()
    backend = k.backend.backend()
    compiled = False
    if backend == "tensorflow":
        import tensorflow as tf

        compiled = not tf.executing_eagerly()
    elif backend == "jax":
        import jax

        compiled = any(isinstance(v, jax.core.Tracer) for v in k.tree.flatten((args, kwargs)))
    if compiled or any(isinstance(v, k.KerasTensor) for v in k.tree.flatten((args, kwargs))):
        return UnsupportedModelError(
            f"Recurrent layer {layer.name!r} is called inside compiled code (a tf.function or jax.jit "
            "in the model's own call), where rnnlens cannot see its steps. Call it eagerly: remove the "
            "decorator (or run the undecorated function) for tracing; the numbers are the same."
        )
    return None


_PROBES: weakref.WeakKeyDictionary[Any, dict[Any, CallProbe]] = weakref.WeakKeyDictionary()


def _probe_for(
    model: Any,
    recurrent: list[tuple[str, Any]],
    targets: Mapping[str, Any],
    emit: frozenset[str],
    edited: frozenset[tuple[str, str]],
) -> CallProbe:
    key = (tuple(id(layer) for _, layer in recurrent), tuple(sorted(targets.items())), emit, edited)
    per_model = _PROBES.setdefault(model, {})
    if key not in per_model:
        probe = CallProbe(model, recurrent, targets, emit, edited)
        probe.outputs = True  # the model's own return value comes back with every run
        probe.layers = [layer for _, layer in recurrent]
        per_model[key] = probe
    return per_model[key]


# --------------------------------------------------------------------------- trace / intervene


def capture(model: Any, args: Args, kwargs: Kwargs, options: TraceOptions) -> Captured:
    """:meth:`~rnnlens.adapters.Adapter.capture` for every Keras model: a subclassed model takes
    its ``call``'s own arguments (``trace(model, x, states=s)``), a graph model one ``x``."""
    model = _keras3(model)
    if not is_subclassed(model):
        _one_input(args, kwargs)
        return trace.capture(model, args[0], options)
    return _capture(model, args, kwargs, options, {})[0]


def intervene(model: Any, args: Args, kwargs: Kwargs, edits: Edits, options: TraceOptions) -> Intervened:
    """:meth:`~rnnlens.adapters.Adapter.intervene` for every Keras model (edits name a later call
    of a subclassed model's layer ``name#k``)."""
    model = _keras3(model)
    if not is_subclassed(model):
        _one_input(args, kwargs)
        return trace.intervene(model, args[0], edits, options)
    captured, outputs = _capture(model, args, kwargs, options, edits)
    return Intervened(outputs=outputs, captured=captured)


def _keras3(model: Any) -> Any:
    """``model`` as a Keras 3 model: an opaque TensorFlow graph refused, a tf_keras model converted."""
    error = opaque.refusal(model)
    if error is not None:
        raise error
    return keras2_objects.as_keras3(model)


def _one_input(args: Args, kwargs: Kwargs) -> None:
    if len(args) != 1 or kwargs:
        raise InputError(
            "A Keras model takes one x (use a list or dict for several inputs); received "
            f"{len(args)} positional and {sorted(kwargs)} keyword input argument(s)."
        )


def _capture(
    model: Any, args: Args, kwargs: Kwargs, options: TraceOptions, edits: Mapping[str, LayerEdits]
) -> tuple[Captured, Any]:
    if not args:
        raise InputError("Pass the model's input x (then any further arguments its call takes).")
    _require_built(model)
    if kwargs.get("training"):
        raise InputError("training=True (dropout, batch statistics) is not traced; rnnlens runs inference.")
    recurrent, others = recurrent_layers(model)
    specs_all = [trace._spec(name, layer) for name, layer in recurrent]
    asked = None if options.layers is None else list(options.layers)
    stripped = None if asked is None else list(dict.fromkeys(_CALL.sub("", n) for n in asked))
    specs = select_layers(specs_all, stripped, other_layers=others)
    wanted = resolve_fields(specs, options.fields)
    layer_by_name = dict(recurrent)
    for name, le in edits.items():
        base = _CALL.sub("", name)
        if base not in layer_by_name:
            raise LayerNotFoundError(name, [s.name for s in specs_all])
        if KINDS[le.spec.kind].feature_maps:
            raise UnsupportedLayerError(
                f"Layer {name!r} ({le.spec.layer_type}): editing ConvLSTM states is not supported yet."
            )
        wanted.setdefault(base, ("h",))
    x, n = trace._prepare_inputs(model, args[0])
    user_mask = options.mask
    steps = trace._time_steps(x)
    if user_mask is not None and (
        user_mask.shape[0] != n or (steps is not None and user_mask.shape[1] != steps)
    ):
        raise InputError(f"mask has shape {user_mask.shape}; x has (sample, time) = {(n, steps)}.")
    trace._check_stateful(recurrent, n)
    weights = {name: trace._weights_by_direction(layer_by_name[name]) for name in wanted}
    edited_bases = {_CALL.sub("", name) for name in edits}
    strategy: Strategy = options.strategy  # type: ignore[assignment]
    emit = frozenset(n for n in wanted if _emits(layer_by_name[n], wanted[n], strategy)) | edited_bases
    edited = frozenset(
        (name, d) for name in edits for d in trace._directions(layer_by_name[_CALL.sub("", name)])
    )
    probe = _probe_for(model, recurrent, wanted, emit, edited)
    if edits and steps is None:
        raise InputError("Cannot tell the edited layer's number of steps from the input.")
    affine = {
        f"{name}|{d}": edit_arrays(le, d, int(steps or 0), n, writes=True)
        for name, le in edits.items()
        for d in trace._directions(layer_by_name[_CALL.sub("", name)])
    }
    more = len(args) > 1 or bool(kwargs)  # per-call arguments (states, flags): one batch
    size = options.batch_size
    step = (
        n if more or (size is None and n <= trace.DEFAULT_BATCH_SIZE) else (size or trace.DEFAULT_BATCH_SIZE)
    )
    order: list[tuple[str, str]] | None = None
    first: list[tuple[str, str]] = []
    batches, outputs = [], []
    for start in range(0, n, step):
        sl = slice(start, min(start + step, n))
        inputs = ((trace._slice(x, sl), *args[1:]), dict(kwargs))
        mask = None if user_mask is None else user_mask[sl]
        captured = trace.run_probe(probe, inputs, mask, {k: a[sl] for k, a in affine.items()}, edits)
        if order is None:
            first = list(probe.entries)
            order = [(e, b) for e, b in first if b in wanted and (asked is None or b in asked or e in asked)]
            _check_asked(asked, probe.entries)
            _check_edits(edits, probe.entries)
        elif probe.entries != first:
            raise UnsupportedModelError(
                "The model called its recurrent layers differently from batch to batch."
            )
        for name, le in edits.items():
            check_masked(le, captured.get(f"{name}|mask"), int(steps or 0), n, sl.start)
        outputs.append(captured.get("|outputs"))
        batches.append(
            {
                entry: trace._layer_arrays(
                    _renamed(specs_all, base, entry), captured, weights[base], wanted[base], base in emit
                )
                for entry, base in order
            }
        )
    specs_out = [_renamed(specs_all, base, entry) for entry, base in order or []]
    if options.calls == "join" and not edits:  # calls that carry the state on: one entry along time
        specs_out, batches = join_calls(specs_out, batches, dict(order or []), rtol=RTOL, atol=ATOL)
    backend = f"keras/{_keras().backend.backend()}"
    return Captured(specs_out, batches, backend=backend), trace._join_outputs(outputs)


def _emits(layer: Any, fields: tuple[str, ...], strategy: Strategy) -> bool:
    """Whether ``layer`` runs through the emitter (as :func:`.trace.capture` decides it)."""
    kind = KINDS[trace._spec("", layer).kind]
    wants = kind.feature_maps or "c" in fields or "gates" in fields
    subs = trace._directions(layer).values()
    return bool(kind.gates) and wants and all(choose_strategy(s, strategy) == "emit" for s in subs)


def _renamed(specs: list[LayerSpec], base: str, entry: str) -> LayerSpec:
    s = next(s for s in specs if s.name == base)
    return LayerSpec(entry, s.kind, s.layer_type, s.units, s.directions, s.fields, s.cell_units, s.notes)


def _check_asked(asked: list[str] | None, entries: list[tuple[str, str]]) -> None:
    made = {e for e, _ in entries}
    for name in asked or []:
        if _CALL.search(name) and name not in made:
            raise LayerNotFoundError(name, sorted(made))


def _check_edits(edits: Mapping[str, Any], entries: list[tuple[str, str]]) -> None:
    made = {e for e, _ in entries}
    for name in edits:
        if name not in made:
            raise LayerNotFoundError(name, sorted(made))
