"""The step loop's plain case: one direction of a padded (not packed) LSTM or GRU layer, no
edits, every step's gates and ``c`` kept — what ``rnnlens.trace`` asks of the loop almost always.

The general loop (:func:`.emit_loop._directions`) slices each step's slots and checks for edits
and packed batches at every step; on small shapes, where a step's arithmetic takes a few
microseconds, those Python-level calls were most of the time (an LSTM(64), batch 8, 50 steps:
~20 PyTorch calls per step against the fused kernel's none). Here every step's views are made
at once (``unbind``), and a step is only its arithmetic: for an LSTM six calls (``addmm_``,
the three sigmoids in one, ``tanh`` of the candidate into its own contiguous buffer, ``c``,
``tanh(c)``, ``h``), for a GRU six. The arithmetic is the general loop's, op for op, so the
results are bitwise the same (tested); only the candidate gate (LSTM ``g``, GRU ``n``) is
returned from a buffer of its own instead of the gate slot (``tanh`` of a strided block into a
contiguous buffer is the same kernel and the same bits as the general loop's copy-then-tanh).

An LSTM's two ``tanh`` a step come from NumPy on CPU (:func:`numpy_tanh`: ~6× PyTorch's there,
within 1.4 ulp), in both loops on the same layouts, so the loops stay bitwise alike.

From 256 hidden units and batch 2 (float32 on CPU, oneDNN on) a step's ``h @ W_hh.T`` runs on
oneDNN's matmul with the weight packed once per call, in both loops (:func:`add_hw`,
:func:`mm_hw`): there it is 20–50% faster than MKL's ``addmm_`` / ``mm``. The GEMMs were most
of an all-fields trace of ``LSTM(512)``, batch 64, 100 steps: 1.5× the fused forward with
MKL's, 1.1–1.2× with oneDNN's (one thread).

Example:
    >>> import torch, rnnlens
    >>> lstm = torch.nn.LSTM(3, 4, batch_first=True)
    >>> s = rnnlens.trace(lstm, torch.ones(2, 5, 3))["lstm"]
    >>> s.c.shape, s.gates["g"].shape
    ((2, 5, 4), (2, 5, 4))
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

Empty = Callable[..., torch.Tensor]

#: From these sizes (hidden units and batch) on, an LSTM step's ``h @ W_hh.T`` runs on oneDNN's
#: matmul with the weight packed once per call (:func:`onednn_weight`), below them on MKL's
#: ``addmm_``. Measured for the 100 GEMMs of 100 steps, one thread (AMD EPYC, AVX-512):
#: hidden 512, batch 64: 163 against 202 ms (the fused forward's whole step loop: 173 ms);
#: batch 8: 23 against 40 ms; hidden 256, batch 64: 39 against 43 ms; hidden 128, batch 64:
#: 12.8 against 10.7 ms and batch 1 (any size) slower too — oneDNN's ~20 µs a call.
#: Packing the weight costs a few steps' saving (hidden 512: 1.5 ms, a step saving ~0.4 ms at
#: batch 64 and ~0.17 ms at batch 8; hidden 256: 0.5 ms against ~0.04 and ~0.01 ms), so a call
#: also needs steps × batch ≥ 256 rows from hidden 512, ≥ 1024 below (a recording's one-token
#: calls stay on ``addmm_``).
ONEDNN_MIN_HIDDEN, ONEDNN_MIN_BATCH, ONEDNN_MIN_ROWS = 256, 2, (1024, 256)


def onednn_sizes(hidden: int, n: int, steps: int) -> bool:
    """Whether a layer of ``hidden`` units on batches of ``n`` over ``steps`` steps is large
    enough for oneDNN's GEMM to pay (the sizes above)."""
    return (
        hidden >= ONEDNN_MIN_HIDDEN and n >= ONEDNN_MIN_BATCH and n * steps >= ONEDNN_MIN_ROWS[hidden >= 512]
    )


def onednn_weight(w: torch.Tensor, n: int, steps: int) -> torch.Tensor | None:
    """The recurrent weight ``w`` (gates × unit) packed for oneDNN's matmul on batches of ``n``
    where that is the faster GEMM over ``steps`` steps (float32 on CPU, oneDNN on, the sizes
    above); else ``None``."""
    if (
        not onednn_sizes(w.shape[1], n, steps)
        or w.dtype != torch.float32
        or w.device.type != "cpu"
        or not torch._C._get_mkldnn_enabled()
        or not hasattr(torch.ops.mkldnn, "_linear_pointwise")
    ):
        return None
    try:
        return torch.ops.mkldnn._reorder_linear_weight(w.contiguous(), n)
    except (RuntimeError, AttributeError):
        return None


def numpy_tanh(t: torch.Tensor) -> bool:
    """Whether the loops take ``tanh`` from NumPy for tensors like ``t`` (float32/float64 on CPU).

    PyTorch's float32 ``tanh`` is correctly rounded but slow (~3.5 ns a value on one core, 5×
    its ``sigmoid``): an LSTM step's two ``tanh`` were ~0.35× of the fused forward on
    ``LSTM(128)``, batch 64, 1000 steps and ``LSTM(32)``, batch 512. NumPy's SIMD ``tanh``
    (within 1.4 ulp of float64's, measured) is ~6× faster there; the fused oneDNN kernel's own
    ``tanh`` is an approximation of its own, so neither is the kernel's bits anyway."""
    return t.device.type == "cpu" and t.dtype in (torch.float32, torch.float64)


def tanh_into(src: torch.Tensor, out: torch.Tensor, fast: bool) -> torch.Tensor:
    """``out = tanh(src)``: NumPy's where ``fast`` (:func:`numpy_tanh`), else PyTorch's. Both loops
    call it on the same layouts (a gate block's rows into a contiguous buffer; ``c`` into a
    contiguous one), so they round alike."""
    if fast:
        np.tanh(src.numpy(), out=out.numpy())
        return out
    return torch.tanh(src, out=out)


def add_hw(slot: torch.Tensor, h: torch.Tensor, w_t: torch.Tensor, packed: torch.Tensor | None) -> None:
    """``slot += h @ W.T``: MKL's ``addmm_`` on ``w_t`` (unit × gates), or oneDNN's matmul on the
    ``packed`` weight (:func:`onednn_weight`) and an add (oneDNN's matmul writes no ``out=``)."""
    if packed is None:
        slot.addmm_(h, w_t)
    else:
        slot.add_(torch.ops.mkldnn._linear_pointwise(h.contiguous(), packed, None, "none", [], ""))


def mm_hw(
    out: torch.Tensor,
    h: torch.Tensor,
    w_t: torch.Tensor,
    packed: torch.Tensor | None,
    bias: torch.Tensor | None,
) -> None:
    """``out = h @ W.T + bias`` (a GRU step's recurrent part; ``bias`` is ``0, 0, b_hn``: see
    :func:`gru_bias`), as :func:`add_hw` chooses the GEMM."""
    if packed is None:
        if bias is None:
            torch.mm(h, w_t, out=out)
        else:
            torch.addmm(bias, h, w_t, out=out)
    else:
        out.copy_(torch.ops.mkldnn._linear_pointwise(h.contiguous(), packed, None, "none", [], ""))
        if bias is not None:
            out.add_(bias)


def gru_bias(b_hh: torch.Tensor | None, h_: int) -> torch.Tensor | None:
    """The recurrent GEMM's bias of a GRU step: ``b_hn`` on the ``n`` block, zeros on ``r`` and
    ``z`` (whose ``b_hh`` is in the input projection). Adding 0 changes no bit, and the GEMM
    adding ``b_hn`` saves a step's separate add on a strided block (~4 µs on GRU(64), batch 16)."""
    if b_hh is None:
        return None
    return torch.cat([b_hh.new_zeros(2 * h_), b_hh[2 * h_ :]])


def lstm_steps(
    g: torch.Tensor,
    c_buf: torch.Tensor,
    out: torch.Tensor,
    w_hh: tuple[torch.Tensor, torch.Tensor | None],
    h: torch.Tensor,
    c: torch.Tensor,
    h_: int,
    order: range,
    w_hr_t: torch.Tensor | None,
    empty: Empty,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Run the steps ``order`` of one LSTM direction. ``g`` (time, sample, 4·h_) holds each step's
    input projection in i, f, o, g order and is activated in place; ``c_buf`` (time, sample, h_)
    and ``out`` (time, sample, unit) receive c and h; ``w_hh`` is the recurrent weight as
    :func:`add_hw` takes it (``w_t``, ``packed``). Returns the final h and c and the candidate
    gate ``g`` (time, sample, h_)."""
    steps, n = g.shape[0], g.shape[1]
    cand = empty(g, steps, n, h_)
    slots, sig = g.unbind(0), g[:, :, : 3 * h_].unbind(0)
    i_, f_, o_, g_ = (part.unbind(0) for part in g.unsafe_chunk(4, 2))
    cands, cells, outs = cand.unbind(0), c_buf.unbind(0), out.unbind(0)
    tmp = g.new_empty(n, h_)
    addcmul, mul, mm = torch.Tensor.addcmul_, torch.mul, torch.mm
    w_hh_t, packed = w_hh
    linear = torch.ops.mkldnn._linear_pointwise if packed is not None else None
    fast = numpy_tanh(g)
    if fast:  # NumPy views made once (tanh_into's, per step, cost ~2 µs)
        g_np, cand_np, cell_np, tmp_np = g.numpy()[:, :, 3 * h_ :], cand.numpy(), c_buf.numpy(), tmp.numpy()
    for s in order:
        if linear is None:
            slots[s].addmm_(h, w_hh_t)
        else:
            slots[s].add_(linear(h if h.is_contiguous() else h.contiguous(), packed, None, "none", [], ""))
        sig[s].sigmoid_()
        if fast:
            np.tanh(g_np[s], out=cand_np[s])
        else:
            torch.tanh(g_[s], out=cands[s])
        c = addcmul(mul(f_[s], c, out=cells[s]), i_[s], cands[s])
        if fast:
            np.tanh(cell_np[s], out=tmp_np)
        else:
            torch.tanh(c, out=tmp)
        h = mul(tmp, o_[s], out=outs[s]) if w_hr_t is None else mm(tmp.mul_(o_[s]), w_hr_t, out=outs[s])
    return h, c, cand


def gru_steps(
    g: torch.Tensor,
    out: torch.Tensor,
    w_hh: tuple[torch.Tensor, torch.Tensor | None],
    b_h: torch.Tensor | None,
    h: torch.Tensor,
    h_: int,
    order: range,
    empty: Empty,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the steps ``order`` of one GRU direction. ``g`` (time, sample, 3·h_) holds each step's
    input projection in r, z, n order (r and z with both biases); r and z are activated in place;
    ``w_hh`` and ``b_h`` as :func:`mm_hw` takes them. ``h = lerp(n, h, z)`` (``n + z·(h − n)``:
    one call for the kernel's three, within an ulp of them). Returns the final h and the
    candidate ``n`` (time, sample, h_)."""
    steps, n = g.shape[0], g.shape[1]
    cand = empty(g, steps, n, h_)
    rz, nn_ = g[:, :, : 2 * h_].unbind(0), g[:, :, 2 * h_ :].unbind(0)
    r_, z_ = (part.unbind(0) for part in g[:, :, : 2 * h_].unsafe_chunk(2, 2))
    cands, outs = cand.unbind(0), out.unbind(0)
    hg = g.new_empty(n, 3 * h_)
    hg_rz, hn = hg[:, : 2 * h_], hg[:, 2 * h_ :]
    mm, addmm, tanh, lerp = torch.mm, torch.addmm, torch.tanh, torch.lerp
    w_hh_t, packed = w_hh
    linear = torch.ops.mkldnn._linear_pointwise if packed is not None else None
    for s in order:
        if linear is not None:
            hg.copy_(linear(h if h.is_contiguous() else h.contiguous(), packed, None, "none", [], ""))
            if b_h is not None:
                hg.add_(b_h)
        elif b_h is None:
            mm(h, w_hh_t, out=hg)
        else:
            addmm(b_h, h, w_hh_t, out=hg)
        rz[s].add_(hg_rz).sigmoid_()
        nt = tanh(nn_[s].addcmul_(r_[s], hn), out=cands[s])
        h = lerp(nt, h, z_[s], out=outs[s])
    return h, cand
