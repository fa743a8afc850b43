"""The gates of an ``nn.LSTMCell`` called in a Python loop, in PyTorch, in a few bulk ops.

(A trace keeps each call's gates as the call computes them, :mod:`.cell_emit`; this rebuild is
for the passes that do not: a recording, a model that changed a captured tensor, a cell whose
first call differs from PyTorch's, a call of another shape, dtype or device.)

A cell loop records each call's input, state and outputs (:mod:`.record`); the gates of every
step then come from two GEMMs over all calls (``x @ W_ih.T + b``, then ``h_prev @ W_hh.T``
added in place), one sigmoid and one tanh, and are checked against the cell's own outputs —
``c`` against ``f * c_prev + i * g`` and ``h`` against ``o * tanh(c)``, within
:func:`rnnlens.core.cells.tolerance` — all on PyTorch's kernels, where the NumPy path
(:func:`rnnlens.core.cells.lstm_gates` and :func:`~rnnlens.core.cells.check_parity`) makes a
dozen full-size temporaries on one core (it took 2.4× the loop's own forward pass on an
``LSTMCell(32, 64)``, batch 64, 100 steps). Returns ``None`` where it does not apply (an
unbatched call, a dtype other than float32/float64) or where a check fails: the NumPy path then
runs and raises its :class:`~rnnlens.errors.ParityError` with the details.

Example:
    >>> import torch
    >>> from rnnlens.adapters.torch_.cell_gates import lstm_cell_gates
    >>> cell = torch.nn.LSTMCell(3, 4)
    >>> x, state, calls = torch.randn(5, 2, 3), (torch.zeros(2, 4), torch.zeros(2, 4)), []
    >>> with torch.no_grad():
    ...     for t in range(5):
    ...         out = cell(x[t], state)
    ...         calls.append((x[t], state, out))
    ...         state = out
    >>> gates = lstm_cell_gates(cell, *map(list, zip(*calls)))
    >>> [g.shape for g in gates]
    [(2, 5, 4), (2, 5, 4), (2, 5, 4), (2, 5, 4)]
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ...core.cells import tolerance
from .emit_loop import _empty

__all__ = ["lstm_cell_gates"]


def _off(got: torch.Tensor, expected: torch.Tensor, rtol: float, atol: float, bound: torch.Tensor) -> bool:
    """Whether ``got`` is off ``expected`` by more than ``atol + rtol * |expected|`` anywhere
    (NaN compares as not off, as in :func:`rnnlens.core.cells.check_parity`). ``got`` is
    overwritten; ``bound`` is scratch of the same shape."""
    torch.abs(expected, out=bound).mul_(rtol).add_(atol)
    return bool(got.sub_(expected).abs_().gt_(bound).any())


def lstm_cell_gates(
    cell: Any, xs: list[Any], hxs: list[Any], outs: list[Any]
) -> tuple[np.ndarray, ...] | None:
    """Gates ``i, f, g, o`` (sample, time, unit) of every call, checked; None: use the NumPy path."""
    h_out = [o[0] for o in outs]
    if not xs or any(x.dim() != 2 for x in xs) or h_out[0].dtype not in (torch.float32, torch.float64):
        return None
    n, units = h_out[0].shape
    steps = len(xs)
    with torch.inference_mode():
        zeros = h_out[0].new_zeros(n, units)
        h_prev = torch.stack([zeros if hx is None else hx[0] for hx in hxs])
        x = torch.stack(xs).view(steps * n, -1)
        w_ih, w_hh = cell.weight_ih.detach(), cell.weight_hh.detach()
        # the returned gates: a reused buffer once an earlier result is dropped (no fresh pages)
        gates = _empty(h_out[0], steps, n, 4, units)
        z = gates.view(steps * n, 4 * units)
        if cell.bias:
            torch.addmm(cell.bias_ih.detach() + cell.bias_hh.detach(), x, w_ih.t(), out=z)
        else:
            torch.mm(x, w_ih.t(), out=z)
        z.addmm_(h_prev.view(steps * n, units), w_hh.t())
        del h_prev, x
        # a copy (a strided tanh is ~8x slower); never the view itself, which .contiguous() returns
        # where it already counts as contiguous (one step of one sample): sigmoid_ would hit it
        g_pre = gates[:, :, 2].clone(memory_format=torch.contiguous_format)
        gates.sigmoid_()
        gates[:, :, 2] = g_pre.tanh_()
        i, f, g, o = gates.unbind(2)
        c = torch.stack([o[1] for o in outs])
        rtol, atol = tolerance(np.dtype(str(c.dtype).removeprefix("torch.")))
        # c = f * c_prev + i * g, then h = o * tanh(c): two scratch buffers for both checks
        got = torch.mul(f, torch.stack([zeros if hx is None else hx[1] for hx in hxs]))
        if _off(got.addcmul_(i, g), c, rtol, atol, g_pre):
            return None
        h = torch.stack(h_out)
        if _off(torch.tanh(c, out=got).mul_(o), h, rtol, atol, g_pre):
            return None
        arr = gates.numpy()
    return tuple(arr[:, :, k].transpose(1, 0, 2) for k in range(4))
