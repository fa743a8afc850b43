"""An ``nn.LSTMCell`` (or ``nn.GRUCell``) call computed op for op as PyTorch's CPU kernel does, gates kept.

Called in place of the cell in a traced Python loop when the gates are asked for, so they come
from the step itself instead of a second pass of GEMMs over every recorded call
(:mod:`.cell_gates`). PyTorch's ``lstm_cell`` on CPU (``aten/src/ATen/native/RNN.cpp``,
``LSTMCell::operator()``) is ``gates = linear(h, W_hh, b_hh) + linear(x, W_ih, b_ih)``, in-place
``sigmoid``/``tanh`` on the four chunks, ``c' = f * c + i * g``, ``h' = o * tanh(c')``: the same
ops here give bitwise the same ``h'`` and ``c'``, and the first call checks that against the cell
itself (``torch.equal``); anything else — another batch size, dtype or device, an unbatched call,
a cell without bias, a first call that differs — hands the cell back to PyTorch for the rest of the
pass (:meth:`LstmCellGates.__call__` returns None) and the gates come from the recorded calls as
before. The user's loop sees exactly what the cell returns, or the cell's own result.

Example:
    >>> import torch
    >>> from rnnlens.adapters.torch_.cell_emit import LstmCellGates
    >>> cell = torch.nn.LSTMCell(3, 4)
    >>> x, state, emit = torch.randn(5, 2, 3), (torch.zeros(2, 4), torch.zeros(2, 4)), LstmCellGates(cell)
    >>> with torch.no_grad():
    ...     for t in range(5):
    ...         ours = emit(x[t], state, torch.nn.LSTMCell.forward)
    ...         own = cell(x[t], state)
    ...         assert all(torch.equal(a, b) for a, b in zip(ours, own))
    ...         state = ours
    >>> [g.shape for g in emit.gates()]
    [(2, 5, 4), (2, 5, 4), (2, 5, 4), (2, 5, 4)]
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .emit_loop import _empty

__all__ = ["GruCellGates", "LstmCellGates"]

#: each cell's step count in its last traced pass: the next pass's first buffer holds as many
_HINT: weakref.WeakKeyDictionary[Any, int] = weakref.WeakKeyDictionary()
_FIRST = 64  # steps the first buffer holds when no earlier pass says
_DTYPES = (torch.float32, torch.float64)


class LstmCellGates:
    """The stand-in step of one ``nn.LSTMCell`` for one traced pass; :meth:`gates` afterwards."""

    lstm = True
    width = 4  # gates per unit

    def __init__(self, cell: Any):
        self.cell = cell
        self.on = True  # False: PyTorch's own cell for the rest of the pass, gates rebuilt later
        self.steps = 0
        self.buf: torch.Tensor | None = None  # (capacity, batch, 4 * hidden): the activated gates
        self.shape: Any = None  # the first call's (x.shape, h.shape, dtype): every call must match

    def __call__(self, x: Any, hx: Any, own: Callable[..., Any]) -> Any:
        """``cell(x, hx)`` with its gates kept; None: call the cell itself (and from now on)."""
        if not self.on:
            return None
        if not self.lstm:
            h, c = hx, None
        else:
            try:
                h, c = (None, None) if hx is None else hx
            except (TypeError, ValueError):
                return self._off()
        if self.shape is None:
            return self._first(x, h, c, own)
        if (
            type(x) is not torch.Tensor
            or (x.shape, x.dtype) != self.shape[0]
            or (h is not None and (type(h) is not torch.Tensor or (h.shape, h.dtype) != self.shape[1]))
            or (c is not None and (type(c) is not torch.Tensor or (c.shape, c.dtype) != self.shape[1]))
        ):
            return self._off()
        return self._step(x, h, c)

    def _first(self, x: Any, h: Any, c: Any, own: Callable[..., Any]) -> Any:
        cell = self.cell
        state = [t for t in (h, c) if t is not None]
        if (
            type(x) is not torch.Tensor
            or x.dim() != 2
            or x.dtype not in _DTYPES
            or x.device.type != "cpu"
            or not cell.bias
            or (self.lstm and len(state) == 1)
            or any(type(t) is not torch.Tensor or t.shape != (x.shape[0], cell.hidden_size) for t in state)
            or any(t.dtype != x.dtype or t.device != x.device for t in state)
            or cell.weight_ih.dtype != x.dtype
        ):
            return self._off()
        self.shape = ((x.shape, x.dtype), ((x.shape[0], cell.hidden_size), x.dtype))
        ours = self._step(x, h, c)
        theirs = own(cell, x, None if h is None else (h, c) if self.lstm else h)
        pairs = zip(ours, theirs) if self.lstm else [(ours, theirs)]
        if not all(torch.equal(a, b) for a, b in pairs):
            self.steps = 0
            self._off()
            return theirs
        return ours

    def _off(self) -> None:
        self.on = False
        self.buf = None
        return None

    def _step(self, x: torch.Tensor, h: Any, c: Any) -> Any:
        """One call into the next row of the buffer; the cell's return value."""
        cell = self.cell
        n, units = x.shape[0], cell.hidden_size
        buf = self.buf
        if buf is None:
            buf = self.buf = _empty(x, _HINT.get(cell, _FIRST), n, self.width * units)
        elif self.steps == buf.shape[0]:  # full: twice the room (the hint makes this rare)
            grown = _empty(x, 2 * self.steps, n, self.width * units)
            grown[: self.steps] = buf
            buf = self.buf = grown
        if h is None:
            h = c = x.new_zeros(n, units)
        if not self.lstm:
            self.steps += 1
            return _gru(cell, x, h, buf[self.steps - 1])
        # PyTorch's order: linear_hh(h).add_(linear_ih(x)), each chunk activated in place
        gh = F.linear(h, cell.weight_hh, cell.bias_hh)
        gates = torch.add(gh, F.linear(x, cell.weight_ih, cell.bias_ih), out=buf[self.steps])
        self.steps += 1
        i, f, g, o = gates.unsafe_chunk(4, 1)
        i.sigmoid_()
        f.sigmoid_()
        g.tanh_()
        o.sigmoid_()
        c_next = (f * c).add_(i * g)
        return o * c_next.tanh(), c_next

    def gates(self) -> tuple[np.ndarray, ...] | None:
        """Gates ``i, f, g, o`` (sample, time, unit) of every call, or None where the cell ran
        as itself at some call (the recorded calls rebuild them)."""
        if not self.on or self.buf is None:
            return None
        _HINT[self.cell] = self.steps
        arr = self.buf[: self.steps].numpy()
        arr = arr.reshape(self.steps, arr.shape[1], self.width, -1)
        return tuple(arr[:, :, k].transpose(1, 0, 2) for k in range(self.width))


class GruCellGates(LstmCellGates):
    """The same for an ``nn.GRUCell``: gates ``z, r, n`` (post-activation, as
    :func:`rnnlens.core.cells.gru_gates` gives them)."""

    lstm = False
    width = 3


def _gru(cell: Any, x: torch.Tensor, h: torch.Tensor, row: torch.Tensor) -> torch.Tensor:
    """PyTorch's CPU ``gru_cell`` (``GRUCell::operator()``): ``r``, ``z``, ``n`` written into
    ``row`` (as ``z, r, n``), the new ``h`` returned."""
    i_r, i_z, i_n = F.linear(x, cell.weight_ih, cell.bias_ih).unsafe_chunk(3, 1)
    h_r, h_z, h_n = F.linear(h, cell.weight_hh, cell.bias_hh).unsafe_chunk(3, 1)
    z_, r_, n_ = row.unsafe_chunk(3, 1)
    r = torch.add(h_r, i_r, out=r_).sigmoid_()
    z = torch.add(h_z, i_z, out=z_).sigmoid_()
    n = torch.add(i_n, h_n.mul_(r), out=n_).tanh_()
    return (h - n).mul_(z).add_(n)
