"""``c`` and gates of ONNX Runtime's ``com.microsoft.DynamicQuantizeLSTM``, computed as its kernel does.

The kernel (``UniDirectionalLstm::ComputeImpl`` with ``GemmWeights<uint8_t>``, ``ComputeGemm`` in
``rnn_helpers.cc``) quantizes activations on the fly before each integer GEMM:

- ``x W``: once for the whole (direction's) input — ``max(lengths)`` steps of every sample, read
  back to front per sample for the reverse direction — with one uint8 scale and zero point;
- ``h R``: at every step, ``h_{t-1}`` of a block of samples with its own scale and zero point;
  the kernel splits the batch in blocks of ``ceil(batch / threads)`` samples when
  ``batch > 4 or (batch >= 2 and hidden <= 256)`` (:func:`row_blocks`; rnnlens runs quantized
  graphs with one thread, so one block);

each as ``GetQuantizationParameter`` (range widened to hold 0, ``scale = (max - min) / 255``, zero
point ``round_half_even(clip(-min / scale, 0, 255))``, float32) and ``MlasQuantizeLinear``
(``clip(round_half_even(v / scale) + zero_point, 0, 255)``), then an exact integer product with the
int8/uint8 weights less their zero point, dequantized by ``scale_a * scale_w`` (per tensor or per
column) in float32. The fused bias ``Wb + Rb``, peepholes, clip and activations follow as in the float
LSTM. Fed the kernel's own ``h`` as ``h_{t-1}``, the quantization here sees the kernel's very
float32 values, so every rounding lands where the kernel's did and ``c`` agrees with the kernel's
``Y_c`` to float32 rounding (measured 1.5e-7), checked at the float32 tolerance of float nodes.

>>> scale, zero = quantization_parameters(np.array([-1.0, 0.5, 3.0], np.float32))
>>> float(scale), float(zero), quantize(np.array([-1.0, 3.0], np.float32), scale, zero).tolist()
(0.01568627543747425, 64.0, [0.0, 255.0])
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from ...core.cells import DirectionArrays, carry_forward, check_parity, tolerance
from ...core.edits import Op
from ...core.steploop import apply_ops
from ...errors import ParityError

__all__ = [
    "QuantizedCell",
    "QuantizedWeights",
    "quantization_parameters",
    "quantize",
    "quantized_direction",
    "quantized_run",
    "row_blocks",
]

_F32 = np.float32


def quantization_parameters(a: np.ndarray) -> tuple[np.float32, np.float32]:
    """ONNX Runtime's ``GetQuantizationParameter`` for uint8: ``(scale, zero_point)`` in float32."""
    lo = _F32(min(float(a.min()), 0.0)) if a.size else _F32(0)
    hi = _F32(max(float(a.max()), 0.0)) if a.size else _F32(0)
    if hi == lo:
        return _F32(1.0), _F32(0.0)
    scale = _F32((hi - lo) / _F32(255.0))
    zero = _F32(np.rint(np.clip(_F32(_F32(0.0) - _F32(lo / scale)), 0.0, 255.0)))
    return scale, zero


def quantize(a: np.ndarray, scale: np.float32, zero: np.float32) -> np.ndarray:
    """``MlasQuantizeLinear`` to uint8 values (as float32): divide, round half to even, shift, saturate."""
    return np.clip(np.rint(np.asarray(a, _F32) / scale) + zero, 0.0, 255.0)


def row_blocks(batch: int, hidden: int, threads: int) -> int:
    """Samples per block of the kernel's recurrent GEMM (``SetNumThreads`` and ``num_seq_to_compute``)."""
    if batch > 4 or (batch >= 2 and hidden <= 256):
        return -(-batch // max(threads, 1))
    return batch


class QuantizedWeights:
    """One direction's integer ``W`` / ``R`` ([input, 4 * unit], ONNX gate order i, o, f, c) less
    their zero point, and their scales (one, or one per column)."""

    def __init__(self, q: np.ndarray, scale: np.ndarray, zero: np.ndarray | None) -> None:
        z = 0.0 if zero is None else float(np.asarray(zero).reshape(-1)[0])  # constant per direction
        self.q = np.asarray(q).astype(np.float64) - z  # integer-valued: float64 products are exact
        self.scale = np.asarray(scale, _F32).reshape(-1)

    def product(self, a: np.ndarray) -> np.ndarray:
        """``a @ W`` as the kernel computes it: ``a`` quantized with its own parameters, the integer
        product, dequantized in float32."""
        scale, zero = quantization_parameters(a)
        acc = (quantize(a, scale, zero).astype(np.float64) - float(zero)) @ self.q
        return acc.astype(_F32) * (scale * self.scale).astype(_F32)


@dataclass
class QuantizedCell:
    """One direction of a ``DynamicQuantizeLSTM`` node: ``bias`` is ``[Wb, Rb]``, ``peepholes``
    ``[i, o, f]`` (ONNX order, like the gate blocks of ``w`` and ``r``: i, o, f, c), ``acts`` the
    node's (f, g, h) activations, ``threads`` the session's intra-op threads."""

    w: QuantizedWeights
    r: QuantizedWeights
    bias: np.ndarray | None
    peepholes: np.ndarray | None
    acts: tuple[Callable[[np.ndarray], np.ndarray], ...]
    clip: float | None = None
    input_forget: bool = False
    threads: int = 1


def _kernel_order(a: np.ndarray, lengths: np.ndarray, reverse: bool) -> np.ndarray:
    """(sample, time, …) in input order → (time, sample, …) in the kernel's processing order
    (``ReverseSequence``: each sample's first ``length`` steps back to front, the rest in place)."""
    out = np.array(a.swapaxes(0, 1))
    if reverse:
        for b, n in enumerate(lengths):
            out[:n, b] = a[b, :n][::-1]
    return out


def _edit(state: np.ndarray, ops: Mapping[int, list[Op]] | None, at: np.ndarray, live: np.ndarray) -> None:
    """Apply the edits of input step ``at[b]`` to each live sample ``b`` (in place)."""
    if not ops:
        return
    for s in np.unique(at[live]):
        if int(s) not in ops:
            continue
        rows = np.flatnonzero(live & (at == s))
        if rows.size == len(state):
            apply_ops(state, ops[int(s)])
            continue
        part = state[rows]
        per_row = [Op(op.units, op.mode, _rows(op.value, rows, len(state))) for op in ops[int(s)]]
        apply_ops(part, per_row)
        state[rows] = part


def _rows(value: np.ndarray, rows: np.ndarray, n: int) -> np.ndarray:
    v = np.asarray(value)
    return v[rows] if v.ndim == 2 and v.shape[0] == n else v


def _loop(
    cell: QuantizedCell,
    x: np.ndarray,
    h0: np.ndarray,
    c0: np.ndarray | None,
    lens: np.ndarray,
    reverse: bool,
    teacher: np.ndarray | None = None,
    edits_h: Mapping[int, list[Op]] | None = None,
    edits_c: Mapping[int, list[Op]] | None = None,
    edits_w: Mapping[int, list[Op]] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(h, c, gates)`` at every step the kernel runs, (step, sample, unit) / (gate, step, sample,
    unit) in its processing order, float64 (NaN where a sample has ended). ``h_{t-1}`` is
    ``teacher`` (the kernel's own ``Y``, kernel order) when given, else the loop's own (edited).
    ``edits_w``: edits of the write ``i ⊙ g`` into ``c`` (``target="write"``), by input step."""
    n = x.shape[0]
    hidden = cell.r.q.shape[0]
    steps = int(lens.max()) if n else 0
    xs = _kernel_order(np.asarray(x, _F32), lens, reverse)[:steps]
    pre_x = cell.w.product(xs.reshape(-1, xs.shape[-1])).reshape(steps, n, 4 * hidden)
    fused = None if cell.bias is None else (cell.bias[: 4 * hidden] + cell.bias[4 * hidden :]).astype(_F32)
    p = None if cell.peepholes is None else np.asarray(cell.peepholes, np.float64).reshape(3, hidden)
    f_act, g_act, h_act = cell.acts
    clip = cell.clip
    block = row_blocks(n, hidden, cell.threads)
    gates = np.full((4, steps, n, hidden), np.nan)
    cs = np.full((steps, n, hidden), np.nan)
    hs = np.full((steps, n, hidden), np.nan)
    c_prev = np.zeros((n, hidden)) if c0 is None else np.asarray(c0, np.float64)
    h_prev = np.asarray(h0, _F32)
    for j in range(steps):
        pre = pre_x[j].copy()
        for s in range(0, n, block):
            pre[s : s + block] += cell.r.product(h_prev[s : s + block])
        if fused is not None:
            pre = pre + fused
        i, o, f, g = (pre[:, k * hidden : (k + 1) * hidden].astype(np.float64) for k in range(4))
        if p is not None:
            i, f = i + p[0] * c_prev, f + p[2] * c_prev
        if clip is not None:  # o waits for its peephole (on the new c)
            i, f, g = (np.clip(v, -clip, clip) for v in (i, f, g))
        i = f_act(i)
        f = 1.0 - i if cell.input_forget else f_act(f)
        g = g_act(g)
        live = j < lens
        at = np.where(reverse, lens - 1 - j, j)  # the input step of kernel step j, per sample
        w = i * g
        _edit(w, edits_w, at, live)  # the write, edited before c (and h through o's peephole) read it
        c = f * c_prev + w
        if p is not None:
            o = o + p[1] * c
        o = f_act(o if clip is None else np.clip(o, -clip, clip))
        h = o * h_act(c)
        _edit(h, edits_h, at, live)
        _edit(c, edits_c, at, live)
        for k, v in enumerate((i, f, g, o)):
            gates[k, j][live] = v[live]
        cs[j][live], hs[j][live] = c[live], h[live]
        c_prev = np.where(live[:, None], c, c_prev)
        # the kernel feeds h after a sample's end as zeros (its Y there)
        h_prev = teacher[j] if teacher is not None else np.where(live[:, None], h, 0.0).astype(_F32)
    return hs, cs, gates


def _input_order(a: np.ndarray, lens: np.ndarray, t: int, reverse: bool) -> np.ndarray:
    """(step, sample, unit) kernel order → (sample, time, unit) input order, NaN past each length."""
    out = np.full((a.shape[1], t, a.shape[2]), np.nan)
    for b, m in enumerate(lens):
        out[b, :m] = a[:m, b][::-1] if reverse else a[:m, b]
    return out


def _carried(a: np.ndarray, lens: np.ndarray, initial: np.ndarray, reverse: bool) -> np.ndarray:
    """Fill the steps past each length (input order) with the carried state: the last (forward)
    or the initial one (reverse: those steps come first)."""
    for b, m in enumerate(lens):
        if m < a.shape[1]:
            a[b, m:] = a[b, m - 1] if m and not reverse else initial[b]
    return a


def _lengths(n: int, t: int, lengths: np.ndarray | None) -> np.ndarray:
    return np.full(n, t, int) if lengths is None else np.asarray(lengths).reshape(-1).astype(int)


def quantized_direction(
    cell: QuantizedCell,
    x: np.ndarray,
    seq: np.ndarray,
    h0: np.ndarray,
    c0: np.ndarray | None,
    lengths: np.ndarray | None,
    *,
    reverse: bool,
    layer: str,
) -> DirectionArrays:
    """One direction traced: the kernel's ``h`` (``seq``, the direction's raw ``Y``, zeros after
    each sample's length) carried, ``c`` and the gates i, f, g, o (canonical order, NaN at padded
    steps), (sample, time, unit) in input order, checked against ``seq``."""
    n, t, _ = seq.shape
    dtype = seq.dtype
    lens = _lengths(n, t, lengths)
    ys = _kernel_order(np.asarray(seq, _F32), lens, reverse)
    hs, cs, gates = _loop(cell, x, h0, c0, lens, reverse, teacher=ys)
    steps = hs.shape[0]
    try:
        check_parity(
            ys[:steps].swapaxes(0, 1),
            np.nan_to_num(hs.swapaxes(0, 1)).astype(_F32),
            np.arange(steps)[None, :] < lens[:, None],
            layer=layer,
            what="o * act(c) with the quantized kernel's arithmetic",
            tol=tolerance(np.dtype(np.float32)),
        )
    except ParityError as e:
        raise ParityError(
            f"{str(e).split('. The cell probably')[0]}. rnnlens reproduces ONNX Runtime's MLAS "
            "DynamicQuantizeLSTM kernel with exact 32-bit integer sums; MLAS's int8 kernel for x86 "
            "CPUs without VNNI can saturate its 16-bit partial sums (models quantized without "
            "reduce_range), and other builds or versions may round elsewhere. Ask for fields=('h',): "
            "h is the kernel's own."
        ) from None
    c_init = np.zeros((n, seq.shape[2])) if c0 is None else np.asarray(c0)
    c = _carried(_input_order(cs, lens, t, reverse), lens, c_init, reverse)
    valid = np.arange(t)[None, :] < lens[:, None]
    mask = None if valid.all() else valid
    flip = (lambda a: a[:, ::-1]) if reverse else (lambda a: a)
    h = flip(carry_forward(flip(np.asarray(seq)), None if mask is None else flip(mask), np.asarray(h0)))
    return DirectionArrays(
        h=h, c=c.astype(dtype), gates=tuple(_input_order(g, lens, t, reverse).astype(dtype) for g in gates)
    )


def quantized_run(
    cell: QuantizedCell,
    x: np.ndarray,
    h0: np.ndarray,
    c0: np.ndarray | None,
    lengths: np.ndarray | None,
    *,
    reverse: bool,
    edits_h: Mapping[int, list[Op]] | None = None,
    edits_c: Mapping[int, list[Op]] | None = None,
    edits_w: Mapping[int, list[Op]] | None = None,
) -> tuple[DirectionArrays, np.ndarray, np.ndarray, np.ndarray]:
    """One direction run as the kernel runs it on its own ``h``, with ``edits_h`` / ``edits_c``
    (by input step) applied after their steps and ``edits_w`` to their steps' writes ``i ⊙ g``
    before ``c`` is formed: the states (h and c carried past each length),
    the direction's ``Y`` (sample, time, unit; zeros past each length, as the kernel writes it),
    ``Y_h`` and ``Y_c`` (zeros for an empty sample)."""
    n, t, _ = x.shape
    hidden = cell.r.q.shape[0]
    dtype = np.asarray(x).dtype
    lens = _lengths(n, t, lengths)
    hs, cs, gates = _loop(cell, x, h0, c0, lens, reverse, edits_h=edits_h, edits_c=edits_c, edits_w=edits_w)
    h_seq = _input_order(hs, lens, t, reverse)
    y = np.nan_to_num(h_seq).astype(dtype)
    c_init = np.zeros((n, hidden)) if c0 is None else np.asarray(c0)
    c = _carried(_input_order(cs, lens, t, reverse), lens, c_init, reverse)
    h = _carried(h_seq, lens, np.asarray(h0), reverse)
    last = np.where(reverse, 0, np.maximum(lens - 1, 0))
    empty = (lens == 0)[:, None]
    y_h = np.where(empty, 0.0, h[np.arange(n), last]).astype(dtype)
    y_c = np.where(empty, 0.0, c[np.arange(n), last]).astype(dtype)
    arrays = DirectionArrays(
        h=h.astype(dtype),
        c=c.astype(dtype),
        gates=tuple(_input_order(g, lens, t, reverse).astype(dtype) for g in gates),
    )
    return arrays, y, y_h, y_c
