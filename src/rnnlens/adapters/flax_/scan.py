"""An ``nn.RNN`` call run by rnnlens' own scan, its states returned by the compiled function.

``nn.RNN.__call__`` flips the inputs (``reverse``), makes the initial carry, scans its cell with
Flax's lifted :func:`flax.linen.transforms.scan` and picks the outputs and final carry. Here
the same steps run with the RNN's own transform settings (``split_rngs``, ``unroll``, ...) and
the cell's own ``__call__`` at each step; the scan also returns the cell's carries, stacked over
time, as outputs of the compiled function: no host callback per step. rnnlens' step from the
cell's maths (for the gates, and to check against the cell's own h and c) then runs on all steps
at once. The model gets the outputs and carry that ``nn.RNN`` would give it, built as
``nn.RNN`` builds them.

Only plain calls take this path (:func:`plain`): a linen cell rnnlens knows, one batch axis,
one feature axis, an array input; the rest are traced step by step through the host.

Example:
    >>> import flax.linen as nn
    >>> plain(nn.RNN(nn.GRUCell(3)), (), {"inputs": None})  # not an array: the host's path
    False
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from typing import Any

from .cells import carry_parts, kind_of, step

__all__ = ["STACKED", "plain", "scan_rnn"]

#: what :func:`scan_rnn` returns of a call: the cell's own ``h_model`` / ``c_model`` and rnnlens'
#: ``h_ours`` / ``c_ours`` and ``gates`` (time, sample, ...), the initial ``h0`` / ``c0``, and
#: ``lengths`` (``seq_lengths``, where given); the ``c`` ones only for a cell with c
STACKED = ("h_model", "h_ours", "c_model", "c_ours", "gates", "h0", "c0", "lengths")


def plain(module: Any, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> bool:
    """Whether rnnlens' scan can run this ``nn.RNN`` call (else the host's per-step path)."""
    import jax

    inputs = args[0] if args else kwargs.get("inputs")
    cell = getattr(module, "cell", None)
    return (
        isinstance(inputs, jax.Array)
        and inputs.ndim == 3
        and kind_of(cell) is not None
        and getattr(cell, "num_feature_axes", 1) == 1
        and getattr(module, "scope", None) is not None
        and not module.variable_axes  # the cell's parameters the same at every step
        and module.variable_broadcast == "params"
        and set(kwargs) <= _KWARGS
    )


_KWARGS = {"inputs", "initial_carry", "init_key", "seq_lengths", "return_carry", "time_major", "reverse",
           "keep_order"}  # fmt: skip


def scan_rnn(
    module: Any,
    args: tuple[Any, ...],
    kwargs: Mapping[str, Any],
    register: Callable[[Any, Any], int],
    quiet: Callable[[], AbstractContextManager[Any]],
    gates: bool = True,
) -> tuple[Any, int, dict[str, Any]]:
    """Run one plain ``nn.RNN`` call (a bound module, inside its own method context):
    ``(what nn.RNN returns, the site's index, the stacked step arrays)``. ``register(cell, h0)``
    makes (or finds) the call's site; the cell's calls inside the scan run under ``quiet()``
    (not intercepted). Without ``gates`` only the cell's own h and c are returned (no rnnlens
    step: nothing to check it against)."""
    import jax
    import jax.numpy as jnp
    from flax.linen import transforms
    from flax.linen.recurrent import _select_last_carry, flip_sequences

    inputs = args[0] if args else kwargs["inputs"]
    option = {k: kwargs.get(k) for k in ("return_carry", "time_major", "reverse", "keep_order")}
    return_carry, time_major, reverse, keep_order = (
        getattr(module, k) if v is None else v for k, v in option.items()
    )
    seq_lengths = kwargs.get("seq_lengths")
    time_axis = 0 if time_major else 1
    cell = module.cell
    kind = kind_of(cell)
    assert kind is not None  # plain()
    if reverse:
        inputs = flip_sequences(inputs, seq_lengths, num_batch_dims=1, time_major=time_major)
    carry = kwargs.get("initial_carry")
    if carry is None:
        key = kwargs.get("init_key")
        shape = inputs.shape[:time_axis] + inputs.shape[time_axis + 1 :]
        carry = cell.initialize_carry(jax.random.key(0) if key is None else key, shape)
    index = register(cell, carry_parts(kind, carry)[0])
    slice_carry = seq_lengths is not None and return_carry

    def scan_fn(cell: Any, carry: Any, x: Any) -> Any:
        new_carry, y = cell(carry, x)
        return new_carry, (new_carry if slice_carry else None, y, carry_parts(kind, new_carry))

    scan = transforms.scan(
        scan_fn,
        in_axes=time_axis,
        out_axes=(0, time_axis, 0),  # the carries kept: (time, sample, unit), as a scan stacks them
        unroll=module.unroll,
        variable_axes=module.variable_axes,
        variable_broadcast=module.variable_broadcast,
        variable_carry=module.variable_carry,
        split_rngs=module.split_rngs,
    )
    h0, c0 = carry_parts(kind, carry)
    with quiet():
        last, (carries, outputs, (h_model, c_model)) = scan(cell, carry, inputs)
    stacked = {"h_model": h_model, "h0": h0}
    if c_model is not None:
        stacked.update(c_model=c_model, c0=c0)
    if seq_lengths is not None:
        stacked["lengths"] = jnp.asarray(seq_lengths)
    carry = _select_last_carry(carries, jnp.asarray(seq_lengths)) if slice_carry else last
    if reverse and keep_order:
        outputs = flip_sequences(outputs, seq_lengths, num_batch_dims=1, time_major=time_major)
    result = (carry, outputs) if return_carry else outputs
    if gates:
        _gates(kind, cell, stacked, jnp.moveaxis(inputs, time_axis, 0))
    return result, index, stacked


def _gates(kind: str, cell: Any, stacked: dict[str, Any], inputs: Any) -> None:
    """rnnlens' step on every step at once (time first): ``h_ours``, ``c_ours``, ``gates``."""
    import jax.numpy as jnp

    h_model, h0 = stacked["h_model"], stacked["h0"]
    c_model, c0 = stacked.get("c_model"), stacked.get("c0")
    # the gates from the cell's maths, all steps at once (the carry each step started from is
    # known now): one large product instead of one per step inside the scan
    steps, n = h_model.shape[:2]
    flat = lambda a: jnp.reshape(a, (steps * n, *a.shape[2:]))  # noqa: E731
    h_in = jnp.concatenate([h0[None].astype(h_model.dtype), h_model], axis=0)[:steps]
    carry_in: Any = flat(h_in)
    if c_model is not None and c0 is not None:
        c_in = jnp.concatenate([c0[None].astype(c_model.dtype), c_model], axis=0)[:steps]
        carry_in = (flat(c_in), carry_in)
    x = flat(inputs)
    my_h, my_c, gates = step(kind, cell, cell.variables.get("params", {}), carry_in, x)
    unflat = lambda a: jnp.reshape(a, (steps, n, *a.shape[1:]))  # noqa: E731
    stacked["h_ours"] = unflat(my_h)
    if my_c is not None:
        stacked["c_ours"] = unflat(my_c)
    no_gates = jnp.zeros((steps, n, 0, h0.shape[-1]), h_model.dtype)  # SimpleCell
    stacked["gates"] = no_gates if gates is None else unflat(gates)
