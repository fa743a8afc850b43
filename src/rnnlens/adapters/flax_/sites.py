"""Where the cells of a linen model run, found by Flax's own method interception.

While a model is traced under :func:`flax.linen.intercept_methods`, :class:`Interceptor` sees
every ``nn.Bidirectional``, ``nn.RNN`` and cell call. A plain ``nn.RNN`` call of a trace runs
in rnnlens' own scan (:mod:`.scan`): its steps leave the compiled function as outputs. Every
other cell call (one step, inside ``nn.RNN``'s scan during an intervention, the user's own
``nn.scan`` or a Python loop, an nnx cell) runs the cell's own ``__call__`` unchanged, computes
the gates from the cell's parameters (:mod:`.cells`) and hands the step to the host through one
ordered ``io_callback``: the host records it and returns the carry, edited where an intervention
asks (:mod:`.host`). A :class:`Site` is one sequence of steps: one ``nn.RNN`` call, or every
direct call of one cell.

Example:
    >>> import flax.linen as nn
    >>> module_path(nn.LSTMCell(4))  # an unbound module (here: the root) is named by its class
    'LSTMCell'
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np

from ...errors import UnsupportedLayerError
from .cells import carry_parts, kind_of, step
from .entries import Site
from .host import on_step
from .nnx import nnx_kind, nnx_step
from .scan import plain, scan_rnn

__all__ = ["Interceptor", "module_path"]


def module_path(module: Any) -> str:
    """A linen module's path from the root, ``/``-joined (the root: its class name)."""
    if hasattr(type(module), "_rnnlens_path"):  # an nnx module of a traced copy
        return str(type(module)._rnnlens_path)
    path = tuple(module.path) if module.scope is not None else ()
    return "/".join(str(p) for p in path) or type(module).__name__


@dataclass
class _RnnCall:
    layer: str | None  # the Bidirectional's name, or None (the cell's path names the layer)
    call: int | None
    direction: str
    steps: int
    reverse: bool
    lengths: Any
    layer_type: str
    site: int | None = None


@dataclass
class Interceptor:
    """The interceptor of one trace; ``sites`` is filled as the model is traced (once per
    compiled shape) and indexes the host's records. With ``stacked`` (a dict), plain ``nn.RNN``
    calls run in rnnlens' scan (:mod:`.scan`) and leave their stacked steps there, by site index,
    for the compiled function to return; every other cell call goes through the host."""

    sites: list[Site]
    stacked: dict[int, dict[str, Any]] | None = None
    gates: bool = True  # rnnlens' scan computes the gates (and checks its step against the cell's)
    _quiet: int = 0
    _calls: Counter[str] = field(default_factory=Counter)
    _stack: list[Any] = field(default_factory=list)
    _direct: dict[str, int] = field(default_factory=dict)

    def __call__(self, next_fun: Any, args: Any, kwargs: Any, context: Any) -> Any:
        """linen's method interceptor (:func:`flax.linen.intercept_methods`)."""
        if context.method_name != "__call__":
            return next_fun(*args, **kwargs)
        return self.intercept(context.module, next_fun, args, kwargs)

    def intercept(self, module: Any, next_fun: Any, args: Any, kwargs: Any) -> Any:
        """One ``__call__`` of a linen or nnx module: the recurrent ones are traced."""
        if self._quiet:  # a cell inside rnnlens' own scan
            return next_fun(*args, **kwargs)
        role = _role(module)
        if role == "Bidirectional":
            name = module_path(module)
            call = self._calls[name]
            self._calls[name] += 1
            inner = type(getattr(module.forward_rnn, "cell", module.forward_rnn)).__name__
            self._stack.append(("bi", name, call, f"Bidirectional({inner})"))
            try:
                return next_fun(*args, **kwargs)
            finally:
                self._stack.pop()
        if role == "RNN":
            return self._rnn(module, next_fun, args, kwargs)
        kind = kind_of(module) or nnx_kind(module)
        if kind is None:
            return next_fun(*args, **kwargs)
        return self._cell(kind, module, next_fun, args, kwargs)

    def _rnn(self, module: Any, next_fun: Any, args: Any, kwargs: Any) -> Any:
        inputs = args[0] if args else kwargs["inputs"]
        time_major = kwargs.get("time_major") or module.time_major
        reverse = module.reverse if kwargs.get("reverse") is None else kwargs["reverse"]
        axis = 0 if time_major else inputs.ndim - (module.cell.num_feature_axes + 1)
        bi = self._stack[-1] if self._stack and self._stack[-1][0] == "bi" else None
        self._stack.append(
            _RnnCall(
                layer=bi[1] if bi else None,
                call=bi[2] if bi else None,
                direction="backward" if reverse else "forward",
                steps=int(inputs.shape[axis]),
                reverse=bool(reverse),
                lengths=kwargs.get("seq_lengths"),
                layer_type=bi[3] if bi else f"RNN({type(module.cell).__name__})",
            )
        )
        try:
            if self.stacked is not None and plain(module, args, kwargs):
                out, index, arrays = scan_rnn(module, args, kwargs, self._register, self._quieted, self.gates)
                self.stacked[index] = arrays
                return out
            return next_fun(*args, **kwargs)
        finally:
            self._stack.pop()

    def _register(self, cell: Any, h: Any) -> int:
        return self._site(kind_of(cell) or "", cell, h)[0]

    @contextmanager
    def _quieted(self) -> Iterator[None]:
        self._quiet += 1
        try:
            yield
        finally:
            self._quiet -= 1

    def _site(self, kind: str, module: Any, h: Any) -> tuple[int, Any]:
        """The site of this cell call (made on the first trace of it) and its seq_lengths."""
        path = module_path(module)
        units = int(h.shape[-1])
        top = self._stack[-1] if self._stack else None
        if h.ndim != 2:
            raise UnsupportedLayerError(
                f"Cell {path!r} runs on carries of shape {tuple(h.shape)}; rnnlens traces cells with one "
                "batch axis, (sample, unit)."
            )
        if isinstance(top, _RnnCall):
            if top.site is None:
                layer = top.layer or path
                call = top.call
                if call is None:
                    call = self._calls[layer]
                    self._calls[layer] += 1
                cell_type = type(module).__name__
                site = Site(layer, top.direction, path, cell_type, top.layer_type, kind, units, call,
                            top.steps, top.reverse, top.lengths is not None,
                            _activation(kind, module))  # fmt: skip
                self.sites.append(site)
                top.site = len(self.sites) - 1
            return top.site, top.lengths
        if path not in self._direct:
            cell_type = type(module).__name__
            site = Site(path, "forward", path, cell_type, cell_type, kind, units, 0, None, False, False,
                        _activation(kind, module))  # fmt: skip
            self.sites.append(site)
            self._direct[path] = len(self.sites) - 1
        return self._direct[path], None

    def _cell(self, kind: str, module: Any, next_fun: Any, args: Any, kwargs: Any) -> Any:
        import jax
        import jax.numpy as jnp
        from jax.experimental import io_callback

        carry = args[0] if args else kwargs["carry"]
        x = args[1] if len(args) > 1 else kwargs["inputs"]
        new_carry, y = next_fun(*args, **kwargs)
        h_in, c_in = carry_parts(kind, carry)
        h_out, c_out = carry_parts(kind, new_carry)
        index, lengths = self._site(kind, module, h_out)
        if hasattr(type(module), "_rnnlens_path"):  # nnx
            my_h, my_c, gates = nnx_step(kind, module, carry, x)
        else:
            my_h, my_c, gates = step(kind, module, module.variables.get("params", {}), carry, x)
        has_c = c_out is not None
        operands = [h_in, h_out, my_h]
        if has_c:
            operands += [c_in, c_out, my_c]
        n = h_out.shape[0]
        operands.append(jnp.zeros((n, 0, h_out.shape[1]), h_out.dtype) if gates is None else gates)
        operands.append(jnp.zeros((n, 0)) if lengths is None else jnp.reshape(lengths, (n, 1)))
        # one operand and one result per step: each array a callback moves costs more than its bytes
        wide = jnp.promote_types(h_out.dtype, jnp.float32)  # lengths stay exact
        layout = tuple((tuple(a.shape[1:]), str(np.dtype(a.dtype))) for a in operands)
        packed = jnp.concatenate(
            [jnp.reshape(a, (n, math.prod(a.shape[1:]))).astype(wide) for a in operands], 1
        )
        width = h_out.shape[1] + (c_out.shape[1] if has_c else 0)
        back = io_callback(partial(on_step, index, has_c, layout), jax.ShapeDtypeStruct((n, width), wide),
                           packed, ordered=True)  # fmt: skip
        h_new = back[:, : h_out.shape[1]].astype(h_out.dtype)
        if not has_c:
            return h_new, h_new if y is h_out else y
        return (back[:, h_out.shape[1] :].astype(c_out.dtype), h_new), h_new


def _activation(kind: str, module: Any) -> Any:
    """An LSTM cell's ``activation_fn`` (the host forms ``h`` from an edited ``c`` with it)."""
    return getattr(module, "activation_fn", None) if kind == "lstm" else None


def _role(module: Any) -> str | None:
    """``"RNN"`` or ``"Bidirectional"`` for Flax's own (linen or nnx), else None."""
    for cls in type(module).__mro__:
        if cls.__module__.startswith(("flax.linen", "flax.nnx")) and cls.__name__ in ("RNN", "Bidirectional"):
            return cls.__name__
    return None
