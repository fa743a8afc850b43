"""The Flax linen cells rnnlens knows, and each one's step written from its own maths in JAX.

A cell's step is computed twice while a model runs: by the cell's own ``__call__`` (what the
model uses) and here, from the same parameters, carry and input, to get the gates the cell does
not return. The two must agree on ``h`` (and ``c``) at every step (checked after the run:
:class:`~rnnlens.errors.ParityError` otherwise), so a subclassed cell with other maths is caught.

Example:
    >>> import flax.linen as nn
    >>> kind_of(nn.OptimizedLSTMCell(4)), kind_of(nn.MGUCell(4)), kind_of(nn.Dense(3))
    ('lstm', 'mgu', None)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["CELL_KINDS", "carry_parts", "kind_of", "step"]

#: linen cell class -> rnnlens kind (checked on the class and its bases, by name and module)
CELL_KINDS: dict[str, str] = {
    "LSTMCell": "lstm",
    "OptimizedLSTMCell": "lstm",
    "GRUCell": "gru",
    "MGUCell": "mgu",
    "SimpleCell": "simple",
}


def kind_of(module: Any) -> str | None:
    """The kind of a linen cell (``None``: not a cell rnnlens knows)."""
    for cls in type(module).__mro__:
        if cls.__module__.startswith("flax.linen") and cls.__name__ in CELL_KINDS:
            return CELL_KINDS[cls.__name__]
    return None


def carry_parts(kind: str, carry: Any) -> tuple[Any, Any]:
    """``(h, c)`` of a cell's carry (``c`` None where the cell has none); LSTM carries ``(c, h)``."""
    if kind == "lstm":
        c, h = carry
        return h, c
    return carry, None


def _dense(a: Any, p: Mapping[str, Any]) -> Any:
    import jax.numpy as jnp

    out = jnp.matmul(a, p["kernel"])
    return out + p["bias"] if "bias" in p else out


def step(kind: str, module: Any, params: Mapping[str, Any], carry: Any, x: Any) -> tuple[Any, Any, Any]:
    """``(h, c, gates)`` of one step of ``module`` (a linen cell of ``kind``) from ``carry`` and
    ``x``: the cell's equations with its own ``gate_fn`` / ``activation_fn`` and parameters;
    ``gates`` is (sample, gate, unit) in rnnlens' order, or None (SimpleCell)."""
    import jax.numpy as jnp

    h, c = carry_parts(kind, carry)
    dtype = jnp.result_type(x, h, *(v for p in params.values() for v in p.values()))
    x, h = x.astype(dtype), h.astype(dtype)
    act = module.activation_fn
    gate = getattr(module, "gate_fn", act)  # SimpleCell has none
    if kind == "lstm":
        z = {k: _dense(x, params["i" + k]) + _dense(h, params["h" + k]) for k in "ifgo"}
        i, f, o = gate(z["i"]), gate(z["f"]), gate(z["o"])
        g = act(z["g"])
        new_c = f * c.astype(dtype) + i * g
        return o * act(new_c), new_c, jnp.stack([i, f, g, o], axis=-2)
    if kind == "gru":
        r = gate(_dense(x, params["ir"]) + _dense(h, params["hr"]))
        zg = gate(_dense(x, params["iz"]) + _dense(h, params["hz"]))
        n = act(_dense(x, params["in"]) + r * _dense(h, params["hn"]))
        return (1.0 - zg) * n + zg * h, None, jnp.stack([zg, r, n], axis=-2)
    if kind == "mgu":
        f = gate(_dense(x, params["if"]) + _dense(h, params["hf"]))
        hn = _dense(h, params["hn"])
        if module.reset_gate:
            hn = hn * f
        n = act(_dense(x, params["in"]) + hn)
        return (1.0 - f) * n + f * h, None, jnp.stack([f, n], axis=-2)
    pre = _dense(x, params["i"]) + _dense(h, params["h"])
    if module.residual:
        pre = pre + h
    return act(pre), None, None
