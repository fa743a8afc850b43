"""Recording a Keras model across calls: ``model(x)`` and ``model.predict(x)`` inside the
``with rnnlens.record(model)`` block, each call traced and the model's own outputs returned.

For the block, ``predict`` is an instance attribute and the model's class a subclass whose only
change is ``__call__`` (Python looks ``__call__`` up on the type); both are put back when the
block ends, also after an error. Each call is first traced on its inputs (the probe reads a
stateful layer's current state and never advances it), then the model runs as itself, so what
the call returns is exactly what it returns without recording. Calls inside the call (Keras'
``predict`` calls the model), calls on symbolic tensors (graph building) and rnnlens' own probe
pass through unrecorded.

A call continues the previous call of a layer when the layer started from the state that call
ended in: its ``h0`` (and ``c0``) equal the previous call's last ``h`` (``c``) within rnnlens'
stated agreement with Keras' kernels (rtol 1e-5, atol 1e-6: the fed-back state is Keras', while
rnnlens' ``c`` comes from its probe, in another summation order). One direction and no masked
steps are needed to join.

A subclassed model's call is traced with the arguments it was given (``model(x, states=s,
return_state=True)``, the text-generation loop); a graph model takes its inputs alone.

Example:
    >>> import numpy as np, keras, rnnlens
    >>> x_in = keras.Input((None, 3))
    >>> model = keras.Model(x_in, keras.layers.GRU(4, return_sequences=True, name="gru")(x_in))
    >>> with rnnlens.record(model) as rec:
    ...     y = model.predict(np.zeros((2, 5, 3), "float32"), verbose=0)
    >>> rec.states["gru"].h.shape
    (2, 5, 4)
"""

from __future__ import annotations

from typing import Any

from ...errors import InputError
from ..base import Captured, TraceOptions
from ..calllog import JoiningLog
from . import subclassed

__all__ = ["KerasRecording"]

_MISSING = object()


class KerasRecording(JoiningLog):
    """See the module docstring."""

    backend_name = "keras"

    def __init__(self, model: Any, options: TraceOptions):
        if options.mask is not None:
            raise InputError("mask= is not used by rnnlens.record: each call's inputs carry their own.")
        self.model = model
        self.wanted_c = "c" in (options.fields or ("h", "c", "gates"))
        fields = options.fields
        if fields is not None and "c" not in fields:  # c joins calls: recorded, dropped at the end
            fields = (*fields, "c")
        # one sample batch per call: the calls' arrays are joined along time, not split
        self.options = TraceOptions(
            layers=options.layers, fields=fields, strategy=options.strategy, batch_size=2**62
        )
        subclassed.describe(model)  # a model rnnlens cannot trace fails here, before the block
        super().__init__()
        self.calls: list[Captured] = []
        self.busy = False
        self.installed: list[tuple[str, Any]] = []

    # ------------------------------------------------------------------ install / remove

    def start(self) -> None:
        model, rec = self.model, self
        cls = type(model)
        own_predict = vars(model).get("predict", _MISSING)
        bound_predict = model.predict

        def predict(x: Any, *args: Any, **kwargs: Any) -> Any:  # batch_size, verbose...: no effect
            return rec.call(lambda: bound_predict(x, *args, **kwargs), x, {})

        def __call__(self: Any, *args: Any, **kwargs: Any) -> Any:
            x = args[0] if args else kwargs.get("inputs")
            extra = {k: v for k, v in kwargs.items() if k != "inputs"}
            return rec.call(lambda: cls.__call__(self, *args, **kwargs), x, extra, args[1:])

        recorded = type(cls.__name__, (cls,), {"__call__": __call__, "__module__": cls.__module__})
        recorded.__qualname__ = cls.__qualname__
        model.__class__ = recorded
        self.installed.append(("__class__", cls))
        vars(model)["predict"] = predict
        self.installed.append(("predict", own_predict))

    def stop(self) -> None:
        for name, previous in reversed(self.installed):
            if name == "__class__":
                self.model.__class__ = previous
            elif previous is _MISSING:
                vars(self.model).pop(name, None)
            else:
                vars(self.model)[name] = previous
        self.installed.clear()

    # ------------------------------------------------------------------ one call

    def call(self, run: Any, x: Any, kwargs: dict[str, Any], more_args: tuple[Any, ...] = ()) -> Any:
        if self.busy or x is None or not _concrete(x):
            return run()
        if kwargs.get("training"):
            raise InputError(
                "rnnlens.record: this call runs the model with training=True (dropout, batch "
                "statistics), which rnnlens' trace does not reproduce; record inference calls."
            )
        other = sorted(k for k in kwargs if k != "training")
        own = subclassed.is_subclassed(self.model)  # its call's own arguments are traced with x
        if not own and (other or more_args):
            raise InputError(
                f"rnnlens.record: model(x, ...) was called with {other or 'more positional arguments'}, "
                "which rnnlens' trace of x alone would not reproduce; call model(x) (several inputs "
                "as one list or dict)."
            )
        self.busy = True
        try:
            args, kw = (
                ((x, *more_args), {k: v for k, v in kwargs.items() if k != "training"}) if own else ((x,), {})
            )
            self.calls.append(subclassed.capture(self.model, args, kw, self.options))
            out = run()
        finally:
            self.busy = False
        if self.on_call is not None:
            self.on_call()
        return out


def _concrete(x: Any) -> bool:
    """Whether the call's inputs are values (not symbolic tensors of a graph being built)."""
    import keras

    leaves = keras.tree.flatten(x)
    if any(isinstance(leaf, keras.KerasTensor) for leaf in leaves):
        return False
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        return bool(tf.executing_eagerly())
    if backend == "jax":
        import jax

        return not any(isinstance(leaf, jax.core.Tracer) for leaf in leaves)
    return True
