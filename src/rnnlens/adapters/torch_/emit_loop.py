"""The step loop behind :func:`rnnlens.adapters.torch_.emit._emit_layer` and
:func:`~rnnlens.adapters.torch_.emit_packed.emit_packed`: every direction of one layer, step by
step, writing the gates, ``c`` and ``h`` into preallocated buffers (:func:`_empty`), with edits
applied as the states are computed and, for a ``PackedSequence``, only the samples each step has.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ...core.buffers import empty
from ...core.edits import WRITE, LayerEdits, Op
from .discover import _Config
from .emit_fast import add_hw, gru_bias, gru_steps, lstm_steps, mm_hw, numpy_tanh, onednn_weight, tanh_into


def _empty(like: torch.Tensor, *shape: int) -> torch.Tensor:
    """``like.new_empty(shape)``: the emitted buffers, written once, in place; large ones are
    reused across calls once dropped (:mod:`rnnlens.core.buffers`: their first-touch page faults
    were a third of an all-fields trace).

    (Round 1 backed them with transparent huge pages, ``MADV_HUGEPAGE``. Measured again on the
    2-core VM, interleaved, that made all-fields tracing 2.2–3.1× the fused forward with
    spreads up to 7× — huge-page faults stall there — so it is gone.)
    """
    dtype = _NUMPY_OF.get(like.dtype)
    if like.device.type != "cpu" or dtype is None:  # bfloat16, a GPU: PyTorch's allocator
        return like.new_empty(shape)
    return torch.from_numpy(empty(shape, dtype))


_NUMPY_OF = {torch.float16: np.float16, torch.float32: np.float32, torch.float64: np.float64}


_Tensors = list[torch.Tensor]
#: output, final h and c per direction, c and the gates per direction
Loop = tuple[torch.Tensor, _Tensors, _Tensors, _Tensors, list[tuple[torch.Tensor, ...]]]


def _directions(
    view: Any,
    cfg: _Config,
    layer: int,
    x_tm: torch.Tensor,
    h0: torch.Tensor,
    c0: torch.Tensor | None,
    edits: LayerEdits | None,
    batch_sizes: list[int] | None = None,
    mask: np.ndarray | None = None,
    keep: bool = True,
) -> Loop:
    """Every direction's loop over time-major ``x_tm`` (time, sample, feature): the output
    (time, sample, directions × unit), final h and c per direction, c and the gates per direction.

    ``batch_sizes`` (a PackedSequence's, samples sorted by decreasing length): step ``s`` runs
    only the first ``batch_sizes[s]`` samples; the others keep their state (carried after a
    sample's last step; ``h0`` until a backward direction reaches its last step), so the states
    are carried in buffers of their own instead of read from the previous step's output slot.
    At the steps a sample does not run, its c is its carried state and its gates NaN (its row
    of the output is left unwritten: the packed output has no such row). ``mask``
    (sample, time), in the order ``edits`` count samples, refuses edits at steps not all run.
    """
    lstm = cfg.kind == "lstm"
    packed = batch_sizes is not None
    d_, u, h_ = cfg.n_dir, cfg.units, cfg.hidden_size
    steps, n = x_tm.shape[0], x_tm.shape[1]
    sizes = batch_sizes if batch_sizes is not None else [n] * steps
    x2d = x_tm.reshape(steps * n, x_tm.shape[2])
    y = _empty(x_tm, steps, n, d_ * u)
    cs: list[torch.Tensor] = []
    gs: list[tuple[torch.Tensor, ...]] = []
    finals_h, finals_c = [], []
    for d in range(d_):
        sfx = f"_l{layer}" + ("_reverse" if d else "")
        w_ih, w_hh = getattr(view, "weight_ih" + sfx), getattr(view, "weight_hh" + sfx)
        b_ih = getattr(view, "bias_ih" + sfx) if cfg.bias else None
        b_hh = getattr(view, "bias_hh" + sfx) if cfg.bias else None
        # MKL is ~20% faster on a row-major right operand (an LSTM's is made with its rows reordered)
        w_hh_t = w_hh.t().contiguous() if not lstm else w_hh.t()
        order = range(steps - 1, -1, -1) if d else range(steps)
        direction = cfg.directions[d]
        eh = _ops(edits, direction, "h", steps, n, mask)
        ec = _ops(edits, direction, "c", steps, n, mask)
        ew = _ops(edits, direction, WRITE + ("c" if lstm else "h"), steps, n, mask)  # GRU: h's writes
        cache: dict[int, Any] = {}
        out = y[:, :, d * u : (d + 1) * u]
        h = h0[d].clone() if packed else h0[d]
        if lstm:
            # Rows reordered to i, f, o, g once per layer: the three sigmoids are one call per step.
            # (index_select, not w[ifog]: the same copy at a fifth of the cost on small layers)
            ifog = _ifog(h_, w_ih.device)
            w_ih = torch.index_select(w_ih, 0, ifog)
            # one GEMM for every step of the plain and the edited loop alike (bitwise the same)
            w_hh_p = None if packed else onednn_weight(torch.index_select(w_hh, 0, ifog), n, steps)
            if w_hh_p is None:
                w_hh_t = torch.index_select(w_hh_t, 1, ifog)
            bias = None if b_ih is None or b_hh is None else torch.index_select(b_ih + b_hh, 0, ifog)
            slots = _Slots(x_tm, x2d, w_ih, bias, 4 * h_, h_, keep=keep, reverse=bool(d))
            w_hr_t = getattr(view, "weight_hr" + sfx).t() if cfg.proj_size else None
            tmp = x_tm.new_empty(n, h_)
            tg = x_tm.new_empty(n, h_)
            assert c0 is not None
            c = c0[d].clone() if packed else c0[d]
            fast = not packed and keep and not (eh or ec or ew)
            np_tanh = numpy_tanh(x_tm)
            if fast:  # the plain case: per-step views made at once, only arithmetic per step
                assert slots.c is not None
                h, c, cand = lstm_steps(
                    slots.g, slots.c, out, (w_hh_t, w_hh_p), h, c, h_, order, w_hr_t, _empty
                )
            for s in order if not fast else ():
                b = sizes[s]
                g = slots.gate(s)[:b]
                add_hw(g, h[:b], w_hh_t, w_hh_p)
                i, f, o, gg = g.unsafe_chunk(4, 1)
                g[:, : 3 * h_].sigmoid_()
                gt = tanh_into(gg, tg[:b], np_tanh)  # (as lstm_steps: the block's rows, contiguous out)
                if keep:
                    gg.copy_(gt)
                if s in ew:  # the step's write i ⊙ g edited before it enters c (and h)
                    wr = i * gt
                    _apply(wr, ew[s], cache)
                    c_s = torch.mul(f, c[:b], out=slots.cell(s)[:b]).add_(wr)
                else:
                    c_s = torch.mul(f, c[:b], out=slots.cell(s)[:b]).addcmul_(i, gt)
                if w_hr_t is None:  # tanh into contiguous scratch: a strided out= is ~6x slower
                    h_s = torch.mul(tanh_into(c_s, tmp[:b], np_tanh), o, out=out[s, :b])
                else:
                    h_s = torch.mm(tanh_into(c_s, tmp[:b], np_tanh).mul_(o), w_hr_t, out=out[s, :b])
                if s in eh:
                    _apply(h_s, eh[s], cache)
                if s in ec:
                    _apply(c_s, ec[s], cache)
                h, c = _carry(h, h_s, b, packed), _carry(c, c_s, b, packed)
                if b < n and keep:  # the samples past their end (or before it, backward): carried, NaN
                    slots.cell(s)[b:] = c[b:]
                    slots.gate(s)[b:] = float("nan")
            finals_c.append(c)
            if keep:
                assert slots.c is not None
                cs.append(slots.c)
                i_, f_, o_, g_ = slots.g.unsafe_chunk(4, 2)
                gs.append((i_, f_, cand if fast else g_, o_))  # canonical order: i, f, g, o
        elif cfg.kind == "simple":
            bias = None if b_ih is None or b_hh is None else b_ih + b_hh
            slots = _Slots(x_tm, x2d, w_ih, bias, h_, 0, keep=False, reverse=bool(d))
            act = torch.relu_ if cfg.nonlinearity == "relu" else torch.tanh_
            scratch = x_tm.new_empty(n, h_) if d_ > 1 else None  # out[s] is strided: see _tanh_into
            for s in order:
                b = sizes[s]
                if scratch is None:
                    h_s = act(torch.addmm(slots.gate(s)[:b], h[:b], w_hh_t, out=out[s, :b]))
                else:
                    pre = torch.addmm(slots.gate(s)[:b], h[:b], w_hh_t, out=scratch[:b])
                    h_s = out[s, :b].copy_(act(pre))
                if s in eh:
                    _apply(h_s, eh[s], cache)
                h = _carry(h, h_s, b, packed)
            if keep:
                gs.append(())
        else:
            # r and z take both biases; n's recurrent part is scaled by r, so b_hn stays with it.
            bias = b_ih
            if b_ih is not None and b_hh is not None:
                bias = torch.cat([b_ih[: 2 * h_] + b_hh[: 2 * h_], b_ih[2 * h_ :]])
            slots = _Slots(x_tm, x2d, w_ih, bias, 3 * h_, 0, keep=keep, reverse=bool(d))
            hg = x_tm.new_empty(n, 3 * h_)
            tg = x_tm.new_empty(n, h_)
            b_h = gru_bias(b_hh, h_)  # b_hn, added by the recurrent GEMM
            w_hh_p = None if packed else onednn_weight(w_hh, n, steps)  # (as for an LSTM)
            fast = not packed and keep and not (eh or ew)
            if fast:  # the plain case (see emit_fast)
                h, cand = gru_steps(slots.g, out, (w_hh_t, w_hh_p), b_h, h, h_, order, _empty)
            for s in order if not fast else ():
                b = sizes[s]
                g, hg_s = slots.gate(s)[:b], hg[:b]
                mm_hw(hg_s, h[:b], w_hh_t, w_hh_p, b_h)
                rz, nn_ = g[:, : 2 * h_], g[:, 2 * h_ :]
                rz.add_(hg_s[:, : 2 * h_]).sigmoid_()
                r, z = rz.unsafe_chunk(2, 1)
                hn = hg_s[:, 2 * h_ :]
                cand = _tanh_into(nn_.addcmul_(r, hn), tg[:b], keep)
                if s in ew:  # the step's write (1 − z) ⊙ n edited before it enters h
                    wr = (1 - z) * cand
                    _apply(wr, ew[s], cache)
                    h_s = torch.mul(z, h[:b], out=out[s, :b]).add_(wr)
                else:
                    h_s = torch.lerp(cand, h[:b], z, out=out[s, :b])  # (as gru_steps)
                if s in eh:
                    _apply(h_s, eh[s], cache)
                h = _carry(h, h_s, b, packed)
                if b < n and keep:
                    slots.gate(s)[b:] = float("nan")
            if keep:
                r_, z_, n_ = slots.g.unsafe_chunk(3, 2)
                gs.append((z_, r_, cand if fast else n_))  # canonical order: z, r, n
        finals_h.append(h)
    return y, finals_h, finals_c, cs, gs


_IFOG: dict[tuple[int, Any], torch.Tensor] = {}


def _ifog(h_: int, device: Any) -> torch.Tensor:
    """The row order i, f, o, g of PyTorch's i, f, g, o gate blocks (kept: a pure function of
    the size, made once instead of four tensor ops per layer and call)."""
    key = (h_, device)
    if key not in _IFOG:
        _IFOG[key] = torch.arange(4 * h_, device=device).view(4, h_)[[0, 1, 3, 2]].flatten()
    return _IFOG[key]


def _carry(state: torch.Tensor, new: torch.Tensor, b: int, packed: bool) -> torch.Tensor:
    """The state the next step reads: the step's own output slot, or (packed) the carried
    state buffer with the rows that ran replaced."""
    if not packed:
        return new
    state[:b] = new
    return state


def _ops(
    edits: LayerEdits | None, direction: str, field: str, steps: int, n: int, mask: np.ndarray | None
) -> dict[int, list[Op]]:
    return {} if edits is None else edits.steps(direction, field, steps, n, mask=mask)


def _apply(state: torch.Tensor, ops: list[Op], cache: dict[int, Any] | None = None) -> None:
    """``state[:, units] = / += / *= value`` for each op, in order, in place. ``cache`` keeps
    each value's tensor across the steps of one loop (an edit's value is one array)."""
    for op in ops:
        key = id(op.value)
        if cache is not None and key in cache:
            value = cache[key][1]
        else:
            value = torch.as_tensor(op.value, dtype=state.dtype, device=state.device)
            if cache is not None:
                cache[key] = (op.value, value)  # holding op.value keeps its id unique
        units = op.units if isinstance(op.units, slice) else torch.as_tensor(op.units, device=state.device)
        if op.mode == "set":
            state[:, units] = value
        else:
            part = state[:, units]
            state[:, units] = part + value if op.mode == "add" else part * value


def _tanh_into(block: torch.Tensor, scratch: torch.Tensor, keep: bool) -> torch.Tensor:
    """``tanh`` of a gate block (a strided column block of the step's slot) computed on a
    contiguous copy: PyTorch's vectorised tanh runs only on contiguous memory, and the strided
    one measured 8× slower (0.6 against 0.08 ms for 1024 × 128). The result stays within an ulp
    of the strided kernel's (tested: h ≤ 1e-6 from PyTorch's). Written back when the gates are
    kept; returns the contiguous result."""
    torch.tanh(scratch.copy_(block), out=scratch)
    if keep:
        block.copy_(scratch)
    return scratch


class _Slots:
    """Each step's gate slot (its input projection, then activated in place) and ``c`` slot.

    Kept (``keep``): time-major buffers of every step — the returned gates and ``c`` — with the
    input projection of all steps in one GEMM. Not kept (an edited layer whose c and gates are
    not asked for, e.g. an ablation scan): a block of 16 steps' projections, made as the loop
    reaches it, and two ``c`` slots used in turn, so a scan of a large batch writes no
    (time, sample, 4 × unit) buffer it would throw away (its first-touch page faults cost more
    than its GEMM)."""

    BLOCK = 16

    def __init__(
        self, x_tm: torch.Tensor, x2d: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None,
        width: int, cell: int, *, keep: bool, reverse: bool,
    ) -> None:  # fmt: skip
        steps, n = x_tm.shape[0], x_tm.shape[1]
        self.keep, self.reverse, self.steps, self.n = keep, reverse, steps, n
        self.x2d, self.w_t, self.bias = x2d, w.t().contiguous(), bias
        self.lo = self.hi = 0
        if keep:
            self.g = _empty(x_tm, steps, n, width)
            _project(x2d, self.w_t, bias, self.g.view(steps * n, width))
            self.c = _empty(x_tm, steps, n, cell) if cell else None
        else:
            self.g = _empty(x_tm, min(steps, self.BLOCK), n, width)
            self.c = _empty(x_tm, 2, n, cell) if cell else None

    def gate(self, s: int) -> torch.Tensor:
        if self.keep:
            return self.g[s]
        if not self.lo <= s < self.hi:  # the next block, in processing order
            lo, hi = (
                (max(0, s - self.BLOCK + 1), s + 1) if self.reverse else (s, min(self.steps, s + self.BLOCK))
            )
            n = self.n
            _project(
                self.x2d[lo * n : hi * n], self.w_t, self.bias, self.g[: hi - lo].view((hi - lo) * n, -1)
            )
            self.lo, self.hi = lo, hi
        return self.g[s - self.lo]

    def cell(self, s: int) -> torch.Tensor:
        assert self.c is not None
        return self.c[s] if self.keep else self.c[s % 2]


def _project(x2d: torch.Tensor, w_t: torch.Tensor, bias: torch.Tensor | None, out: torch.Tensor) -> None:
    """The input projection ``x @ w_t + bias`` of every row of ``x2d`` in one GEMM, into the
    (rows, width) ``out``."""
    if bias is None:
        torch.mm(x2d, w_t, out=out)
    else:
        torch.addmm(bias, x2d, w_t, out=out)
