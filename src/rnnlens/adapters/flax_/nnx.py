"""flax.nnx modules: their cells' steps in JAX, and a private copy of the model whose cells,
``nnx.RNN`` and ``nnx.Bidirectional`` report to the :class:`~.sites.Interceptor`.

nnx has no method interception, so the model is split (``nnx.split``) and merged again inside
the compiled function: that merged *copy* gets, per recurrent module, a subclass whose
``__call__`` goes through the interceptor (its path is a class attribute, so the copies
``nnx.scan`` makes inside ``nnx.RNN`` keep it). The user's model is never touched.

Example:
    >>> from flax import nnx
    >>> nnx_kind(nnx.OptimizedLSTMCell(3, 4, rngs=nnx.Rngs(0))), nnx_kind(nnx.Linear(2, 2, rngs=nnx.Rngs(0)))
    ('lstm', None)
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["NNX_KINDS", "input_widths", "is_nnx", "nnx_kind", "nnx_step", "traced_copy"]

NNX_KINDS = {"LSTMCell": "lstm", "OptimizedLSTMCell": "lstm", "GRUCell": "gru", "SimpleCell": "simple"}
_local = threading.local()
_subclasses: dict[tuple[type, str], type] = {}


def is_nnx(model: Any) -> bool:
    """Whether ``model`` is a flax.nnx module (looks at the class only)."""
    return any(c.__module__.startswith("flax.nnx") and c.__name__ == "Module" for c in type(model).__mro__)


def nnx_kind(module: Any) -> str | None:
    """The kind of an nnx cell (None: not a cell rnnlens knows)."""
    for cls in type(module).__mro__:
        if cls.__module__.startswith("flax.nnx") and cls.__name__ in NNX_KINDS:
            return NNX_KINDS[cls.__name__]
    return None


def _value(v: Any) -> Any:
    from flax import nnx

    return v[...] if isinstance(v, nnx.Variable) else v


def _linear(a: Any, layer: Any) -> Any:
    import jax.numpy as jnp

    out = jnp.matmul(a, _value(layer.kernel))
    bias = getattr(layer, "bias", None)
    return out if bias is None or _value(bias) is None else out + _value(bias)


def nnx_step(kind: str, module: Any, carry: Any, x: Any) -> tuple[Any, Any, Any]:
    """``(h, c, gates)`` of one step of an nnx cell, from its own equations and parameters."""
    import jax.numpy as jnp

    act = module.activation_fn
    gate = getattr(module, "gate_fn", act)
    if kind == "lstm":
        c, h = carry
        if hasattr(module, "dense_i"):  # OptimizedLSTMCell: fused i, f, g, o
            zi, zf, zg, zo = jnp.split(_linear(x, module.dense_i) + _linear(h, module.dense_h), 4, axis=-1)
        else:
            zi, zf, zg, zo = (
                _linear(x, getattr(module, a)) + _linear(h, getattr(module, b))
                for a, b in (("ii", "hi"), ("if_", "hf"), ("ig", "hg"), ("io", "ho"))
            )
        i, f, g, o = gate(zi), gate(zf), act(zg), gate(zo)
        new_c = f * c + i * g
        return o * act(new_c), new_c, jnp.stack([i, f, g, o], axis=-2)
    h = carry
    if kind == "gru":
        xr, xz, xn = jnp.split(_linear(x, module.dense_i), 3, axis=-1)
        hr, hz, hn = jnp.split(_linear(h, module.dense_h), 3, axis=-1)
        r, z = gate(xr + hr), gate(xz + hz)
        n = act(xn + r * hn)
        return (1.0 - z) * n + z * h, None, jnp.stack([z, r, n], axis=-2)
    pre = _linear(x, module.dense_i) + _linear(h, module.dense_h)
    return act(pre + h if module.residual else pre), None, None


def _traced_class(cls: type, path: str) -> type:
    """A subclass of ``cls`` whose ``__call__`` reports to the interceptor of the current trace."""
    key = (cls, path)
    if key not in _subclasses:

        def __call__(self: Any, *args: Any, **kwargs: Any) -> Any:
            interceptor = getattr(_local, "interceptor", None)
            call = super(sub, self).__call__  # type: ignore[arg-type, misc]
            if interceptor is None:
                return call(*args, **kwargs)
            return interceptor.intercept(self, call, args, kwargs)

        body = {"__call__": __call__, "_rnnlens_path": path, "__module__": cls.__module__,
                "__qualname__": cls.__qualname__}  # fmt: skip
        sub = type(cls.__name__, (cls,), body)
        _subclasses[key] = sub
    return _subclasses[key]


@contextmanager
def traced_copy(graphdef: Any, state: Any, interceptor: Any) -> Iterator[Any]:
    """A copy of the model (merged from ``graphdef`` and ``state``) whose recurrent modules
    report to ``interceptor`` while the context is open."""
    from flax import nnx

    copy = nnx.merge(graphdef, state)
    for path, module in nnx.iter_modules(copy):
        if nnx_kind(module) is not None or isinstance(module, (nnx.RNN, nnx.Bidirectional)):
            name = "/".join(str(p) for p in path) or type(module).__name__
            object.__setattr__(module, "__class__", _traced_class(type(module), name))
    _local.interceptor = interceptor
    try:
        yield copy
    finally:
        _local.interceptor = None


def input_widths(model: Any) -> list[int]:
    """The input widths of the model's cells (to trace it abstractly before a first trace)."""
    from flax import nnx

    out: list[int] = []
    for _, module in nnx.iter_modules(model):
        width = getattr(module, "in_features", None)
        if nnx_kind(module) is not None and isinstance(width, int) and width not in out:
            out.append(width)
    return out
