"""rnnlens' step loop on a ``PackedSequence``: each step runs only the samples still in it.

PyTorch packs samples sorted by decreasing length, so the samples at step ``t`` are the first
``batch_sizes[t]`` of the sorted batch. The loop (:func:`.emit_loop._directions`) runs on the sorted,
zero-padded time-major batch, step ``t`` on its first ``batch_sizes[t]`` rows; the output is
packed again and the final states put back in the caller's order (``unsorted_indices``), as
``nn.LSTM.forward`` does with ``permute_hidden``. ``c`` and the gates come back in the caller's
order as well: at the steps a sample does not have, its c carried and its gates NaN, written by
the loop (the conversion then copies nothing but carries ``h``). An edit at a step some sample
does not have is refused.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.nn.utils.rnn import PackedSequence

from ...core.edits import LayerEdits, Op
from .discover import _Config
from .emit_loop import _directions


class _SortedEdits:
    """``edits`` with per-sample values reordered to the packed (sorted) sample order."""

    def __init__(self, edits: LayerEdits, order: np.ndarray):
        self.edits, self.order = edits, order
        self.cache: dict[int, np.ndarray] = {}

    def steps(self, direction: str, field: str, steps: int, n: int, mask: Any = None) -> dict[int, list[Op]]:
        out = self.edits.steps(direction, field, steps, n, mask=mask)
        return {s: [self._sorted(op, n) for op in ops] for s, ops in out.items()}

    def _sorted(self, op: Op, n: int) -> Op:
        v = op.value
        if v.ndim != 2 or v.shape[0] != n or n == 1:  # one value for every sample
            return op
        if id(v) not in self.cache:  # one array per edit, shared by its steps
            self.cache[id(v)] = v[self.order]
        return Op(op.units, op.mode, self.cache[id(v)])


def emit_packed(
    view: Any,
    cfg: _Config,
    layer: int,
    x: PackedSequence,
    hx: Any,
    edits: LayerEdits | None,
    keep: bool = True,
) -> tuple[PackedSequence, Any, list[torch.Tensor], list[tuple[torch.Tensor, ...]]]:
    """What ``view``'s forward returns for a packed ``x`` — the packed output and ``(h_n, c_n)``
    (or ``h_n``) in the caller's order — and, per direction, c and the gates as (time, sample,
    unit) tensors in the caller's sample order."""
    lstm = cfg.kind == "lstm"
    data, sizes_t = x.data, x.batch_sizes
    sizes = [int(b) for b in sizes_t]
    steps, n = len(sizes), sizes[0]
    d_, u, h_ = cfg.n_dir, cfg.units, cfg.hidden_size
    sort, unsort = x.sorted_indices, x.unsorted_indices
    c0: torch.Tensor | None
    if hx is None:
        h0, c0 = data.new_zeros(d_, n, u), data.new_zeros(d_, n, h_)
    else:
        h0, c0 = hx if lstm else (hx, None)
        if sort is not None:  # the caller's order -> sorted, as nn.LSTM's permute_hidden
            h0 = h0.index_select(1, sort)
            c0 = None if c0 is None else c0.index_select(1, sort)
    view.check_forward_args(data, (h0, c0) if lstm else h0, sizes_t)  # PyTorch's own checks
    # the packed rows' places in the (time, sample) grid: step t holds sorted samples 0..b_t-1
    rows = torch.cat([torch.arange(b) + t * n for t, b in enumerate(sizes)]).to(data.device)
    x_tm = data.new_zeros(steps * n, data.shape[1])
    x_tm[rows] = data
    x_tm = x_tm.view(steps, n, -1)
    valid = np.arange(n)[:, None] < np.asarray(sizes)[None, :]  # (sorted sample, time)
    mask, order = valid, np.arange(n)
    if sort is not None and unsort is not None:
        order = sort.cpu().numpy()
        mask = valid[unsort.cpu().numpy()]  # the caller's order, as the edits count samples
    sorted_edits: Any = None if edits is None else _SortedEdits(edits, order)
    y, finals_h, finals_c, cs, gs = _directions(
        view, cfg, layer, x_tm, h0, c0, sorted_edits, batch_sizes=sizes, mask=mask, keep=keep
    )
    out = PackedSequence(y.view(steps * n, -1)[rows], sizes_t, sort, unsort)
    h_n = torch.stack(finals_h)
    c_n = torch.stack(finals_c) if lstm else None
    if unsort is not None:
        h_n = h_n.index_select(1, unsort)
        c_n = None if c_n is None else c_n.index_select(1, unsort)
        cs = [c.index_select(1, unsort) for c in cs]
        gs = [tuple(g.index_select(1, unsort) for g in gates) for gates in gs]
    return out, ((h_n, c_n) if lstm else h_n), cs, gs
