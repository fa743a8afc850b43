"""rnnlens' own step loop for ``nn.LSTM``/``nn.GRU`` layers, emitting ``c`` and the gates.

:func:`_emit_layer` runs one layer's cell step by step, writing each step's gates, ``c`` and
``h`` straight into preallocated buffers (:func:`_empty`);
:func:`_can_emit` decides, per call and ``strategy``, whether a layer goes through this loop
or is reconstructed from the kernel's ``h``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.nn.utils.rnn import PackedSequence

from ...core.edits import LayerEdits
from ...core.kinds import KINDS
from .discover import _Config
from .emit_fast import onednn_sizes
from .emit_loop import _directions
from .emit_packed import emit_packed
from .quantized import autocast_dtype
from .rebuild_fast import fits, rebuild_layer


def _can_emit(input: Any, cfg: _Config, strategy: str) -> bool:
    """Whether to emit c and gates from rnnlens' loop rather than rebuild them from the kernel's h.

    ``"auto"``: on CPU, where the loop costs about what PyTorch's own kernel does (an LSTM on a
    small batch: :func:`_emit_layer` runs the kernel and rebuilds instead, see
    :data:`REBUILD_MAX_BATCH`); on a GPU the fused cuDNN kernel plus reconstruction is faster.
    A PackedSequence runs the loop on its valid steps (:func:`_emit_packed`).
    """
    if isinstance(input, PackedSequence):
        input = input.data
    if cfg.quantized:  # its loop is fed the kernel's h: the rebuild, done with the kernel's own ops
        return True
    if strategy == "reconstruct" or not isinstance(input, torch.Tensor):
        return False
    if not KINDS[cfg.kind].reconstructable:
        return False
    if autocast_dtype(input.device.type) is not None:  # the kernel computes in autocast's dtype: its h
        return False
    if strategy == "emit":  # float16: the loop's h is not the kernel's (1 ulp off); rebuild from it
        return input.dtype in (torch.float32, torch.float64)
    return input.device.type == "cpu" and input.dtype in (torch.float32, torch.float64)


#: ``strategy="auto"`` rebuilds an LSTM layer's c and gates from the fused kernel's h
#: (:mod:`.rebuild_fast`) instead of running the step loop on batches up to this size, unless
#: the loop's GEMM would be oneDNN's (:func:`.emit_fast.onednn_weight`). There the loop's cost
#: is its ~6 calls a step (~2–3 µs each) and its small-batch GEMMs, and the fused kernel plus
#: one GEMM over all steps is cheaper. Measured (one thread, CPU time, all fields, ratio to the
#: forward pass, rebuild against loop): LSTM(32) b1 T1000: 4.0 against 29.7; LSTM(32) b1 T20:
#: 5.3 / 6.4; LSTM(64) b8 T50: 3.9 / 4.6; LSTM(64) b12 T50: 3.6 / 3.7; LSTM(256) b2 T50:
#: 2.5 / 4.3; LSTM(512) b1 T50: 1.7 / 3.0 — and the loop ahead at LSTM(64) b16 (3.7 / 3.8),
#: LSTM(32) b32 (3.8 / 3.5), LSTM(128) b16 T100 (2.7 / 2.2), LSTM(512) b8 T50 (oneDNN: 2.4 /
#: 1.8). A GRU keeps the loop: PyTorch's CPU GRU is itself a loop of ATen calls, about as many
#: a step as rnnlens' (GRU(64) b8 T100: rebuild 1.8, loop 1.5; GRU(32) b1 T20: 3.5 / 3.1).
REBUILD_MAX_BATCH = 12


def _small(input: Any, cfg: _Config) -> bool:
    """Whether the rebuild from the kernel's h is the faster way to c and gates (see above)."""
    if cfg.kind != "lstm" or not isinstance(input, torch.Tensor) or not fits(cfg, input):
        return False
    unbatched = input.dim() == 2
    n = 1 if unbatched else input.shape[0 if cfg.batch_first else 1]
    steps = input.shape[0 if unbatched or not cfg.batch_first else 1]
    if n > REBUILD_MAX_BATCH:
        return False
    return not onednn_sizes(cfg.hidden_size, n, steps)


def _emit_layer(
    view: Any,
    cfg: _Config,
    layer: int,
    x: Any,
    hx: Any,
    edits: LayerEdits | None = None,
    keep: bool = True,
    strategy: str = "emit",
) -> tuple[Any, Any, list[torch.Tensor], list[tuple[torch.Tensor, ...]]]:
    """One layer's recurrence, step by step, emitting c and the gates at every step.

    The cell is PyTorch's (``aten/src/ATen/native/RNN.cpp``, ``LSTMCell``/``GRUCell``), laid
    out so that nothing is computed or copied twice: the input projection of every step (with
    both biases folded in where the cell allows) is written once into the time-major gate
    buffer, each step adds ``h @ W_hh.T`` in place on its own slot and activates it there, ``c``
    is written into its slot and ``h`` straight into the layer's output. No per-step
    allocation. ``h`` agrees with PyTorch's kernels to within a few 1e-7 (the summation order of
    the biases, NumPy's ``tanh``, oneDNN's GEMM from 256 units: :mod:`.emit_fast`; the tests bound
    it by 1e-6). Takes and returns what ``view``'s forward would
    (layout, unbatched, hx); also returns, per direction, ``c`` (time, sample, cell_unit) and the
    gates as (time, sample, cell_unit) views in canonical order, input time order.

    ``edits`` (:class:`rnnlens.core.edits.LayerEdits`) are applied in place as the loop runs: an
    ``h`` edit at step ``s`` on the output slot (which is also the carried state), a ``c``
    edit on the cell-state slot, before step ``s + 1`` reads them. ``nn.RNN`` layers (no c,
    no gates) run here only for edits. ``keep=False`` (an edited layer whose c and gates are not
    asked for): none are kept, and the c and gates lists come back empty (see :class:`_Slots`).

    ``strategy="auto"``, an unedited LSTM on a small batch (:data:`REBUILD_MAX_BATCH`):
    PyTorch's kernel runs instead and c and the gates are rebuilt from its h at once, with the
    weights as the kernel saw them (:mod:`.rebuild_fast`): h is the kernel's own, c and the
    gates within ~1e-7 of the loop's, in the same layout.
    """
    if cfg.quantized:
        from .quantized_rnn import emit_quantized

        return emit_quantized(view, cfg, layer, x, hx, edits, keep)
    if isinstance(x, PackedSequence):
        return emit_packed(view, cfg, layer, x, hx, edits, keep)
    if strategy == "auto" and edits is None and keep and _small(x, cfg):
        rebuilt = rebuild_layer(view, cfg, layer, x, hx)
        if rebuilt is not None:
            return rebuilt
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
    y, finals_h, finals_c, cs, gs = _directions(view, cfg, layer, x_tm, h0, c0, edits, keep=keep)
    h_n = torch.stack(finals_h)
    c_n = torch.stack(finals_c) if lstm else None
    yb = y.transpose(0, 1) if cfg.batch_first else y
    if unbatched:
        yb, h_n = yb.squeeze(bd), h_n.squeeze(1)
        c_n = None if c_n is None else c_n.squeeze(1)
    return yb, ((h_n, c_n) if lstm else h_n), cs, gs
