"""rnnlens' own step loop for ``nn.LSTM``/``nn.GRU`` layers, emitting ``c`` and the gates.

:func:`_emit_layer` runs one layer the way PyTorch's native CPU kernel does, op for op, writing
each step's gates and ``c`` straight into preallocated buffers (:func:`_empty`, backed by huge
pages when large), so ``h`` stays bitwise PyTorch's; :func:`_can_emit` decides, per call and
``strategy``, whether a layer goes through this loop or is reconstructed from the kernel's ``h``.
"""

from __future__ import annotations

import mmap
from typing import Any

import numpy as np
import torch

from ...kinds import KINDS
from .discover import _Config


def _can_emit(input: Any, cfg: _Config, strategy: str) -> bool:
    """Whether to emit c and gates from rnnlens' loop rather than rebuild them from the kernel's h.

    ``"auto"``: on CPU, where the loop costs about what PyTorch's own kernel does; on a GPU the
    fused cuDNN kernel plus reconstruction is faster. PackedSequence inputs always reconstruct.
    """
    if strategy == "reconstruct" or not isinstance(input, torch.Tensor):
        return False
    if not KINDS[cfg.kind].reconstructable:
        return False
    if strategy == "emit":
        return input.dtype in (torch.float16, torch.float32, torch.float64)
    return input.device.type == "cpu" and input.dtype in (torch.float32, torch.float64)


_HUGE = 2 << 20


def _empty(like: torch.Tensor, *shape: int) -> torch.Tensor:
    """``like.new_empty(shape)``, on Linux backed by transparent huge pages when large.

    The emitted c and gates are hundreds of MB; with 4 KiB pages, first-touch page faults
    cost about as much as computing them. 2 MiB pages (``MADV_HUGEPAGE``) make that ~6× cheaper.
    """
    n = int(np.prod(shape))
    dtype = np.dtype(str(like.dtype).removeprefix("torch."))
    nbytes = n * dtype.itemsize
    if nbytes < 4 * _HUGE or like.device.type != "cpu" or not hasattr(mmap, "MADV_HUGEPAGE"):
        return like.new_empty(shape)
    try:
        mm = mmap.mmap(-1, nbytes + _HUGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        mm.madvise(mmap.MADV_HUGEPAGE)
    except (OSError, ValueError, AttributeError):
        return like.new_empty(shape)
    raw = np.frombuffer(mm, dtype=np.uint8)
    start = (-raw.ctypes.data) % _HUGE
    return torch.from_numpy(raw[start : start + nbytes].view(dtype).reshape(shape))


def _emit_layer(
    view: Any, cfg: _Config, layer: int, x: Any, hx: Any
) -> tuple[torch.Tensor, Any, list[torch.Tensor], list[torch.Tensor]]:
    """One layer's recurrence, step by step, emitting c and the gates at every step.

    It performs PyTorch's own CPU cell (``aten/src/ATen/native/RNN.cpp``: ``FullLayer`` with
    the input projection computed for all steps at once, ``LSTMCell``/``GRUCell``) op for op,
    on tensors of the same layout, so ``h`` is bitwise what PyTorch's native kernel computes
    (oneDNN, which PyTorch picks for float32 LSTMs on CPU, rounds differently by ~1e-7). Takes
    and returns what ``view``'s forward would (layout, unbatched, hx); also returns, per
    direction, ``c`` (time, sample, cell_unit) and the gates (time, sample, gate, cell_unit),
    canonical gate order, input time order.
    """
    lstm = cfg.kind == "lstm"
    bd = 0 if cfg.batch_first else 1
    if x.dim() not in (2, 3):
        raise ValueError(f"{cfg.base}: Expected input to be 2D or 3D, got {x.dim()}D instead")
    unbatched = x.dim() == 2
    xb = x.unsqueeze(bd) if unbatched else x
    n = xb.shape[bd]
    d_, u, h_ = cfg.n_dir, cfg.units, cfg.hidden_size
    if hx is None:
        h0 = xb.new_zeros(d_, n, u)
        c0 = xb.new_zeros(d_, n, h_)
    else:
        h0, c0 = hx if lstm else (hx, None)
        if unbatched:
            h0 = h0.unsqueeze(1)
            c0 = None if c0 is None else c0.unsqueeze(1)
    view.check_forward_args(xb, (h0, c0) if lstm else h0, None)  # PyTorch's own checks
    x_tm = xb.transpose(0, 1) if cfg.batch_first else xb
    steps = x_tm.shape[0]
    y = x_tm.new_empty(steps, n, d_ * u)
    n_gates = 4 if lstm else 3
    linear = torch.nn.functional.linear
    cs: list[torch.Tensor] = []
    gs: list[torch.Tensor] = []
    finals_h, finals_c = [], []
    for d in range(d_):
        sfx = f"_l{layer}" + ("_reverse" if d else "")
        w_ih, w_hh = getattr(view, "weight_ih" + sfx), getattr(view, "weight_hh" + sfx)
        b_ih = getattr(view, "bias_ih" + sfx) if cfg.bias else None
        b_hh = getattr(view, "bias_hh" + sfx) if cfg.bias else None
        w_hr = getattr(view, "weight_hr" + sfx).t() if cfg.proj_size else None
        x_in = x_tm.flip(0) if d else x_tm
        # Time-major buffers: each step's gates and c are computed in place in their slot.
        gbuf = _empty(x_tm, steps, n, n_gates, h_)
        out = y[:, :, d * u : (d + 1) * u]
        h = h0[d]
        xw = linear(x_in, w_ih, b_ih)  # the input projection of every step at once, as ATen does
        if lstm:
            cbuf = _empty(x_tm, steps, n, h_)
            c = c0[d]
            for t in range(steps):
                s = steps - 1 - t if d else t
                g = torch.add(linear(h, w_hh, b_hh), xw[t], out=gbuf[s].view(n, 4 * h_))
                i, f, gg, o = g.unsafe_chunk(4, 1)
                i.sigmoid_()
                f.sigmoid_()
                gg.tanh_()
                o.sigmoid_()
                c = torch.mul(f, c, out=cbuf[s]).add_(i * gg)
                h = o * c.tanh()
                if w_hr is not None:
                    h = torch.matmul(h, w_hr)
                out[s] = h
            cs.append(cbuf)
            finals_c.append(c)
        else:
            for t in range(steps):
                s = steps - 1 - t if d else t
                ig = xw[t].unsafe_chunk(3, 1)
                hg = linear(h, w_hh, b_hh).unsafe_chunk(3, 1)
                slot = gbuf[s]
                r = torch.add(hg[0], ig[0], out=slot[:, 1]).sigmoid_()
                z = torch.add(hg[1], ig[1], out=slot[:, 0]).sigmoid_()
                cand = ig[2].add(hg[2].mul_(r)).tanh_()
                slot[:, 2] = cand
                h = (h - cand).mul_(z).add_(cand)
                out[s] = h
        gs.append(gbuf)
        finals_h.append(h)
    h_n = torch.stack(finals_h)
    c_n = torch.stack(finals_c) if lstm else None
    yb = y.transpose(0, 1) if cfg.batch_first else y
    if unbatched:
        yb, h_n = yb.squeeze(bd), h_n.squeeze(1)
        c_n = None if c_n is None else c_n.squeeze(1)
    return yb, ((h_n, c_n) if lstm else h_n), cs, gs
