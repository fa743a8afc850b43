"""Write edits (``target="write"``) on one call of a PyTorch ``nn.LSTMCell`` / ``nn.GRUCell``:
the step's gates computed again from the cell's own weights and the call's input and state,
checked against what the cell returned (its ``h``, and ``c``), and the state formed again from
the edited write,

    LSTM:  c = f ⊙ c_in + w,  h = o ⊙ tanh(c),  w = i ⊙ g (edited)
    GRU:   h = z ⊙ h_in + w,  w = (1 − z) ⊙ n (edited)

in the cell's dtype. The returned tensors are overwritten in place (the loop carries them).

Example:
    >>> import numpy as np, torch
    >>> from rnnlens.core.edits import Op
    >>> cell = torch.nn.GRUCell(3, 2)
    >>> x, h = torch.randn(4, 3), torch.randn(4, 2)
    >>> out = cell(x, h)
    >>> own = out.clone()
    >>> edit_write(cell, "gru", x, h, out, [Op(slice(0, 2), "scale", np.asarray(1.0))], layer="cell")
    >>> bool(torch.allclose(out, own, atol=1e-6))  # an edit that changes nothing
    True
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from ...core.cells import check_parity
from ...core.edits import Op
from .emit_loop import _apply

__all__ = ["edit_write"]


def edit_write(
    cell: Any, kind: str, x: torch.Tensor, hx: Any, out: Any, ops: Sequence[Op], *, layer: str
) -> None:
    """Edit the write of the cell call ``out = cell(x, hx)`` by ``ops`` (a batch of samples;
    ``x`` (sample, feature)); ``out`` (the LSTM's ``(h, c)``, the GRU's ``h``) is overwritten."""
    with torch.no_grad():
        n, units = x.shape[0], cell.hidden_size
        lstm = kind == "lstm"
        if hx is None:
            zeros = x.new_zeros(n, units)
            hx = (zeros, zeros) if lstm else zeros
        h_in = hx[0] if lstm else hx
        gi = F.linear(x, cell.weight_ih, cell.bias_ih)
        gh = F.linear(h_in, cell.weight_hh, cell.bias_hh)
        h_out = out[0] if lstm else out
        if lstm:
            i, f, g, o = (gi + gh).chunk(4, 1)
            i, f, g, o = i.sigmoid(), f.sigmoid(), g.tanh(), o.sigmoid()
            w = i * g
            c = f * hx[1] + w
            _check(h_out, o * c.tanh(), layer)
            _apply(w, list(ops))
            c = f * hx[1] + w
            out[1].copy_(c)
            h_out.copy_(o * c.tanh())
            return
        i_r, i_z, i_n = gi.chunk(3, 1)
        h_r, h_z, h_n = gh.chunk(3, 1)
        r, z = (i_r + h_r).sigmoid(), (i_z + h_z).sigmoid()
        cand = (i_n + r * h_n).tanh()
        w = (1 - z) * cand
        _check(h_out, z * h_in + w, layer)
        _apply(w, list(ops))
        h_out.copy_(z * h_in + w)


def _check(own: torch.Tensor, ours: torch.Tensor, layer: str) -> None:
    """The step rebuilt from the cell's weights against the cell's own ``h`` (float tolerance)."""
    check_parity(
        own.detach().cpu().numpy()[:, None], ours.detach().cpu().numpy()[:, None], None, layer=layer,
        what="the cell's step rebuilt from its weights (for a write edit)",
    )  # fmt: skip
