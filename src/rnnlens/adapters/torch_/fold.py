"""Edits of ``h`` that fix units to constants over a range of steps, run on PyTorch's own kernel.

An edit that sets unit ``j`` of ``h`` to ``v`` after every step of ``[a, b]`` (an ablation:
``scale=0``, or ``set=v``) changes what the later steps read in one way only: they see ``v``
where the kernel would have carried ``h_j``. That is the same as the layer with the column
``j`` of its recurrent weights zeroed and ``v · W_hh[:, j]`` added to its recurrent bias
(GRU: ``b_hn`` too, which sits inside ``r ⊙ (W_hn h + b_hn)``, so the fold is exact there as
well). So such a layer runs as three calls of the fused kernel: steps ``[0, a]`` with the
model's weights, ``(a, b]`` with the folded ones, and ``(b, T)`` with the model's weights
again, from the edited state; the edited units of the output and of the state handed on are
set to ``v`` (their values inside the folded run are never read: only the folded weights see
them, at zero). Samples with different edits run as separate groups.

An ablation scan of ``U`` units then costs about ``U`` plain forward passes of the layer (the
benchmark's scan of 16 units: 1.77× the 16 plain passes with the step loop, 1.1–1.2× folded).
It applies to one-direction ``nn.LSTM`` / ``nn.GRU`` / tanh ``nn.RNN`` layers, and to ``h``
edits whose every edited step has the same (sample, unit) pattern of "set to a constant" and
"unchanged", on contiguous steps; anything else (``c`` edits, adds, partial scales, gaps, both
directions, packed input) returns None and runs the step loop. The fold reorders one sum per
gate (the constant's product joins the bias before the GEMM, not inside it): agreement is
within float32 rounding, tested against the float64 NumPy reference and the step loop. A step
``a = 0`` whose initial state already holds the constants (``h0 = 0``, ablated to 0) runs
folded from the start: one kernel call per group.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ...core.edits import LayerEdits
from .discover import _Config
from .emit_loop import _empty

__all__ = ["run_folded"]


def run_folded(view: Any, cfg: _Config, layer: int, x: Any, hx: Any, edits: LayerEdits) -> Any:
    """``(y, final)`` of one layer with ``edits`` applied, as ``type(view).forward`` returns
    them; None when the edits cannot be folded (see the module docstring)."""
    if not _eligible(view, cfg, x, edits):
        return None
    batch_first = bool(cfg.batch_first)
    t_axis, s_axis = (1, 0) if batch_first else (0, 1)
    n_steps, n = int(x.shape[t_axis]), int(x.shape[s_axis])
    width = cfg.units
    pattern = _pattern(edits, n_steps, n, width)
    if pattern is None:
        return None
    (a, b), zero, value = pattern
    lstm = cfg.kind == "lstm"
    h0, c0 = _initial(hx, lstm, n, cfg, x)
    weights = list(view._flat_weights)
    names = list(view._flat_weights_names)
    w_index = next(i for i, nm in enumerate(names) if nm.startswith("weight_hh"))
    b_index = next((i for i, nm in enumerate(names) if nm.startswith("bias_hh")), None)
    if b_index is None and np.any(value[zero] != 0):
        return None  # a constant needs a bias to go into
    keys, members = _groups(zero, value)
    like = {"dtype": x.dtype, "device": x.device}
    y = _empty(x, *_out_shape(x, batch_first, n_steps, width))
    h_n = torch.empty((1, n, width), **like)
    c_n = torch.empty((1, n, cfg.hidden_size), **like) if lstm else None
    for (cols, values), rows in zip(keys, members):
        idx = torch.as_tensor(rows, device=x.device)
        consts = torch.as_tensor(values, dtype=x.dtype, device=x.device)
        block = _block(rows)  # the group's samples as one slice, when they are consecutive
        state = _rows(h0, c0, block, idx)
        if block is not None:
            xs, out = x.narrow(s_axis, *block), y.narrow(s_axis, *block)
        else:  # written here, then scattered into y
            xs = x.index_select(s_axis, idx)
            out = torch.empty((*xs.shape[:-1], width), **like)
        if len(cols) == 0:  # these samples are not edited: the layer as it is
            state = _segment(cfg, weights, xs, state, view, out, t_axis, 0, n_steps)
        else:
            col = torch.from_numpy(cols).to(x.device)
            folded = _fold(weights, w_index, b_index, col, consts)
            # [0, a] as the model; (a, b] folded; (b, T) as the model from the edited state. Step
            # a's own reading of the state needs the model's weights, unless what it reads in the
            # edited units already is the constants (h0 = 0 and an ablation to 0, say)
            lo = 0
            if a > 0 or not torch.equal(state[0][:, :, col], consts.expand_as(state[0][:, :, col])):
                state = _segment(cfg, weights, xs, state, view, out, t_axis, 0, a + 1)
                lo = a + 1
            state = _segment(cfg, folded, xs, state, view, out, t_axis, lo, b + 1)
            out.narrow(t_axis, a, b - a + 1)[..., col] = consts  # the edited units' outputs
            state[0][:, :, col] = consts  # and the h carried on
            if b + 1 < n_steps:
                state = _segment(cfg, weights, xs, state, view, out, t_axis, b + 1, n_steps)
        if block is None:
            y.index_copy_(s_axis, idx, out)
        if len(members) == 1:  # one edit for every sample: the final state as the kernel left it
            h_n, c_n = state
        else:
            _put(h_n, state[0], block, idx)
            if c_n is not None:
                _put(c_n, state[1], block, idx)
    return y, ((h_n, c_n) if lstm else h_n)


def _fold(weights: list[Any], w_index: int, b_index: int | None, col: Any, consts: Any) -> list[Any]:
    """The layer's weights with the recurrent columns ``col`` zeroed and their constants'
    contribution moved into the recurrent bias."""
    folded = list(weights)
    w = weights[w_index]
    if b_index is not None:
        folded[b_index] = weights[b_index] + w.index_select(1, col) @ consts
    fw = w.clone()
    fw[:, col] = 0
    folded[w_index] = fw
    return folded


def _block(rows: list[int]) -> tuple[int, int] | None:
    """``(start, length)`` when ``rows`` are consecutive, else None."""
    return (rows[0], len(rows)) if rows[-1] - rows[0] == len(rows) - 1 else None


def _rows(h0: Any, c0: Any, block: tuple[int, int] | None, idx: Any) -> tuple[Any, Any]:
    """A group's rows of the initial state (views when the group is one block)."""
    if block:
        return h0.narrow(1, *block), None if c0 is None else c0.narrow(1, *block)
    return h0.index_select(1, idx), None if c0 is None else c0.index_select(1, idx)


def _put(final: Any, part: Any, block: tuple[int, int] | None, idx: Any) -> None:
    """A group's final state into its rows of the whole batch's."""
    if block:
        final.narrow(1, *block).copy_(part)
    else:
        final.index_copy_(1, idx, part)


def _segment(
    cfg: _Config, weights: list[Any], xs: Any, state: Any, view: Any, out: Any, t_axis: int, lo: int, hi: int
) -> Any:
    """Steps ``lo..hi-1`` on the fused kernel, their outputs written into ``out``; the state after."""
    if hi <= lo:
        return state
    seg, state = _run(cfg, weights, xs.narrow(t_axis, lo, hi - lo), state, view, t_axis == 1)
    out.narrow(t_axis, lo, hi - lo).copy_(seg)
    return state


def _eligible(view: Any, cfg: _Config, x: Any, edits: LayerEdits) -> bool:
    if cfg.n_dir != 1 or cfg.cell or not isinstance(x, torch.Tensor) or x.dim() != 3:
        return False
    if cfg.kind not in ("lstm", "gru", "simple") or (cfg.kind == "simple" and cfg.nonlinearity != "tanh"):
        return False  # ("rnn": a module of unknown forward, never run on the kernel here)
    if edits.fields() != {"h"} or x.dtype not in (torch.float32, torch.float64):
        return False  # (half precision: the step loop, as before)
    return len(getattr(view, "_flat_weights", ())) in (2, 3, 4, 5) and not getattr(view, "training", False)


def _pattern(edits: LayerEdits, n_steps: int, n: int, width: int) -> Any:
    """``((a, b), zero, value)``: the edited steps ``a..b`` (contiguous) and, shared by all of
    them, which (sample, unit) are set (``zero``) to ``value``; None if the edits are another
    kind (adds or scales that leave a unit live, or edits on different steps)."""
    found = edits.uniform("forward", "h", n_steps, n)
    if found is None:
        return None
    steps, ops = found
    if len(steps) > 1 and steps.step != 1:
        return None
    scale, add = _compose(ops, n, width)
    zero = scale == 0
    if not np.all((scale == 1) | zero) or np.any(add[~zero] != 0) or not np.all(np.isfinite(add)):
        return None
    return (steps[0], steps[-1]), zero, np.where(zero, add, 0.0)


Groups = tuple[list[tuple[np.ndarray, np.ndarray]], list[list[int]]]


def _groups(zero: np.ndarray, value: np.ndarray) -> Groups:
    """Samples with the same edit (the same units set to the same constants), in order of
    first appearance: ``([(units, constants)], [sample indices])``."""
    rows = np.concatenate([np.packbits(zero, axis=1), np.where(zero, value, 0.0).view(np.uint8)], axis=1)
    index: dict[bytes, int] = {}
    keys: list[tuple[np.ndarray, np.ndarray]] = []
    members: list[list[int]] = []
    for s, row in enumerate(rows):
        g = index.setdefault(row.tobytes(), len(keys))
        if g == len(keys):
            cols = np.flatnonzero(zero[s])
            keys.append((cols, value[s, cols]))
            members.append([])
        members[g].append(s)
    return keys, members


def _compose(ops: Any, n: int, width: int) -> Any:
    """The edits of one step as ``h ← h · scale + add`` per (sample, unit)."""
    scale, add = np.ones((n, width)), np.zeros((n, width))
    for op in ops:
        v = np.broadcast_to(np.asarray(op.value, dtype=np.float64), (n, _count(op.units, width)))
        u = op.units
        if op.mode == "set":
            scale[:, u], add[:, u] = 0.0, v
        elif op.mode == "add":
            add[:, u] = add[:, u] + v
        else:
            scale[:, u], add[:, u] = scale[:, u] * v, add[:, u] * v
    return scale, add


def _count(units: Any, width: int) -> int:
    return len(range(width)[units]) if isinstance(units, slice) else len(units)


def _initial(hx: Any, lstm: bool, n: int, cfg: _Config, x: Any) -> tuple[Any, Any]:
    if hx is None:
        h0 = torch.zeros((1, n, cfg.units), dtype=x.dtype, device=x.device)
        c0 = torch.zeros((1, n, cfg.hidden_size), dtype=x.dtype, device=x.device) if lstm else None
        return h0, c0
    return (hx[0], hx[1]) if lstm else (hx, None)


def _out_shape(x: Any, batch_first: bool, n_steps: int, width: int) -> tuple[int, ...]:
    n = int(x.shape[0 if batch_first else 1])
    return (n, n_steps, width) if batch_first else (n_steps, n, width)


def _run(cfg: _Config, weights: list[Any], x: Any, state: Any, view: Any, batch_first: bool) -> Any:
    """One call of PyTorch's fused kernel (the op ``nn.LSTM.forward`` calls) on one layer."""
    bias = bool(view.bias)
    if cfg.kind == "lstm":
        y, h, c = torch._VF.lstm(x, (state[0], state[1]), weights, bias, 1, 0.0, False, False, batch_first)
        return y, (h, c)
    op = torch._VF.gru if cfg.kind == "gru" else torch._VF.rnn_tanh
    y, h = op(x, state[0], weights, bias, 1, 0.0, False, False, batch_first)
    return y, (h, None)
