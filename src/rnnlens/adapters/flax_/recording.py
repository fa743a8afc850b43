"""Recording a Flax model across calls: ``model(x, ...)`` inside the ``with rnnlens.record(model)``
block (the bound linen module, or the nnx module, called by the user's own loop), each call
traced and then run as itself, so what it returns is exactly what it returns without recording.

A linen module's calls are seen through Flax's own method interception
(:func:`flax.linen.intercept_methods`, for the block); an nnx module's class is, for the block, a
subclass whose only change is ``__call__`` (put back when the block ends, also after an error;
the model runs with its own class). Calls on traced values (inside the user's ``jax.jit``) pass
through unrecorded. A call continues the previous call of a layer when it starts from the carry
that call ended in (one direction, no ``seq_lengths``; rtol 1e-5, atol 1e-6: the fed-back carry
is the model's own, rnnlens' the same cell's in another compiled function).

Example:
    >>> import jax, numpy as np, flax.linen as nn, rnnlens
    >>> rnn = nn.RNN(nn.GRUCell(4), return_carry=True)
    >>> x = np.ones((2, 6, 3), "float32")
    >>> model = rnn.bind(rnn.init(jax.random.key(0), x))
    >>> with rnnlens.record(model) as rec:
    ...     carry, _ = model(x[:, :4])
    ...     carry, _ = model(x[:, 4:], initial_carry=carry)  # continues the stream
    >>> rec.states["cell"].h.shape, [c.name for c in rec.calls]
    ((2, 6, 4), ['cell', 'cell#1'])
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from ...errors import InputError
from ..base import Captured, TraceOptions
from ..calllog import JoiningLog
from .nnx import is_nnx
from .run import capture, split_model

__all__ = ["FlaxRecording"]


class FlaxRecording(JoiningLog):
    """See the module docstring."""

    backend_name = "flax"

    def __init__(self, model: Any, options: TraceOptions):
        if options.mask is not None:
            raise InputError("mask= is not used by rnnlens.record: Flax calls take seq_lengths= themselves.")
        if not is_nnx(model):
            split_model(model)  # an unbound module fails here, before the block
        self.model = model
        self.wanted_c = "c" in (options.fields or ("h", "c", "gates"))
        fields = options.fields
        if fields is not None and "c" not in fields:  # c joins calls: recorded, dropped at the end
            fields = (*fields, "c")
        self.options = replace(options, fields=fields, batch_size=None)
        super().__init__()
        self.calls: list[Captured] = []
        self.busy = False
        self._undo: Any = None

    def start(self) -> None:
        model, rec = self.model, self
        if not is_nnx(model):
            import flax.linen as nn

            def intercept(next_fun: Any, args: Any, kwargs: Any, context: Any) -> Any:
                if context.module is not model or context.method_name != "__call__":
                    return next_fun(*args, **kwargs)
                return rec.call(lambda: next_fun(*args, **kwargs), args, kwargs)

            ctx = nn.intercept_methods(intercept)
            ctx.__enter__()
            self._undo = lambda: ctx.__exit__(None, None, None)
            return
        cls = type(model)

        def __call__(self: Any, *args: Any, **kwargs: Any) -> Any:
            def run() -> Any:
                self.__class__ = cls  # the model runs as itself
                try:
                    return self(*args, **kwargs)
                finally:
                    self.__class__ = recorded

            return rec.call(run, args, kwargs)

        recorded = type(cls.__name__, (cls,), {"__call__": __call__, "__module__": cls.__module__,
                                               "__qualname__": cls.__qualname__})  # fmt: skip
        model.__class__ = recorded

        def undo() -> None:
            model.__class__ = cls

        self._undo = undo

    def stop(self) -> None:
        if self._undo is not None:
            undo, self._undo = self._undo, None
            undo()

    def call(self, run: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        import jax

        leaves = jax.tree_util.tree_leaves((args, kwargs))
        if self.busy or not args or any(isinstance(v, jax.core.Tracer) for v in leaves):
            return run()
        self.busy = True
        try:
            if is_nnx(self.model):
                cls, self.model.__class__ = type(self.model), type(self.model).__mro__[1]
                try:
                    self.calls.append(capture(self.model, args, kwargs, self.options)[1])
                finally:
                    self.model.__class__ = cls
            else:
                self.calls.append(capture(self.model, args, kwargs, self.options)[1])
            out = run()
        finally:
            self.busy = False
        if self.on_call is not None:
            self.on_call()
        return out
