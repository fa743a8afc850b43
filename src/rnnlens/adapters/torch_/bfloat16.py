"""``c`` and gates of half-precision ``nn.LSTM`` / ``nn.GRU`` layers on CPU (bfloat16 or float16
modules, ``torch.autocast("cpu", dtype=torch.bfloat16)``), computed as PyTorch's kernel computes them.

**bfloat16 LSTM, oneDNN** (``mkldnn_rnn``: CPU with bfloat16 support, oneDNN enabled, tensor
input, no ``proj_size``) — :func:`lstm_parts`. Measured against that kernel, op for op: the bias
is ``b_ih + b_hh`` summed in bfloat16; the gate pre-activations are float32 (bfloat16 ``x``,
``h`` and weights, float32 accumulation); the activations and the new ``c`` are float32,
``h = o * tanh(c)`` from that float32 ``c`` and then rounded to bfloat16, and ``c`` is carried
(and returned as ``c_n``) rounded to bfloat16. Under autocast the input, state and weights are
first rounded to bfloat16. Redone here fed the kernel's own ``h_{t-1}``: ``c`` as the kernel
carries it, float32 gates; its ``h`` must agree with the kernel's within one bfloat16 rounding
of ``h`` and of ``c`` (``u = 2**-8``): ``|h - h_kernel| <= u (|h_kernel| + |c|) + 1e-6`` — the
``c`` term for a ``c`` on a bfloat16 tie, which the kernel's float32 sums may round the other way
(measured: the rounded ``h`` bitwise the kernel's except at rare ties, ``c_n`` bitwise).

**Everything else** (GRUs, float16, oneDNN off) runs PyTorch's native kernel, every op rounded
to the dtype — :func:`native_parts` performs the very ops on the same tensors (measured: h and
``c_n`` bitwise). A ``PackedSequence`` or ``proj_size`` (other op sequences) is refused by the
caller, offering ``fields=('h',)``.

>>> import torch
>>> lstm = torch.nn.LSTM(3, 4).to(torch.bfloat16)
>>> x = torch.randn(5, 2, 3).to(torch.bfloat16)
>>> with torch.no_grad():
...     y, (h_n, c_n) = lstm(x)
>>> xs, seq = x.float().numpy().swapaxes(0, 1), y.float().numpy().swapaxes(0, 1)
>>> parts = lstm_parts(lstm, 0, False, xs, seq, None, None)
>>> bool((parts[1][:, -1] == c_n[0].float().numpy()).all()) or not onednn_bfloat16()
True
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ...errors import ParityError, UnsupportedLayerError

__all__ = ["lstm_parts", "native_parts", "onednn_bfloat16", "refusal"]

#: a bfloat16 rounding (unit roundoff 2**-8), and float32 slack for values near 0
TOLERANCE = (2.0**-8, 1e-6)


def onednn_bfloat16() -> bool:
    """Whether PyTorch runs bfloat16 LSTMs on CPU through oneDNN here."""
    try:
        return bool(torch._C._get_mkldnn_enabled() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def refusal(name: str, why: str, engine: str) -> UnsupportedLayerError:
    """The error for a bfloat16 layer whose c and gates rnnlens cannot compute as ``engine`` does."""
    return UnsupportedLayerError(
        f"Layer {name!r} runs in bfloat16 {why}: {engine} rounds its gates and states to bfloat16 "
        "where rnnlens does not reproduce it, so c and gates would not be the kernel's (rnnlens "
        "computes them for nn.LSTM on PyTorch's oneDNN CPU kernel: tensor inputs, no proj_size). Ask for "
        "fields=('h',) (the kernel's own h, as float32), or trace a float32 copy "
        "(copy.deepcopy(model).float()) with float32 inputs outside autocast."
    )


def _bf16(a: Any) -> torch.Tensor:
    """float32 values rounded to bfloat16 (as autocast casts them; exact for bfloat16 ones)."""
    t = a if isinstance(a, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(a, np.float32))
    return t.detach().to(torch.bfloat16).float()


def lstm_parts(
    module: Any,
    layer: int,
    reverse: bool,
    x: np.ndarray,
    seq: np.ndarray,
    h0: np.ndarray | None,
    c0: np.ndarray | None,
    *,
    name: str = "lstm",
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One direction: ``(h, c, i, f, g, o)`` (sample, time, unit), input order; ``x`` and ``seq``
    (the kernel's h of this direction) (sample, time, ·) as float32 arrays, checked against ``seq``."""
    sfx = f"_l{layer}" + ("_reverse" if reverse else "")
    w_ih = getattr(module, "weight_ih" + sfx).detach().to(torch.bfloat16)
    w_hh = getattr(module, "weight_hh" + sfx).detach().to(torch.bfloat16)
    n, t, _ = seq.shape
    hidden = w_hh.shape[1]
    if module.bias:
        b = getattr(module, "bias_ih" + sfx).detach().to(torch.bfloat16)
        b = (b + getattr(module, "bias_hh" + sfx).detach().to(torch.bfloat16)).float()
    else:
        b = torch.zeros(4 * hidden)
    with torch.no_grad(), torch.autocast("cpu", enabled=False):  # float32 here, whatever the caller's
        xs = _bf16(x).transpose(0, 1)  # (time, sample, feature)
        kernel_h = torch.from_numpy(np.ascontiguousarray(seq, np.float32)).transpose(0, 1)
        pre_x = xs @ w_ih.float().t() + b
        u = w_hh.float().t()
        h = _bf16(np.zeros((n, hidden), np.float32) if h0 is None else h0)
        c = _bf16(np.zeros((n, hidden), np.float32) if c0 is None else c0)
        hs = torch.empty(t, n, hidden)
        cs = torch.empty(t, n, hidden)
        gates = torch.empty(4, t, n, hidden)
        for s in range(t - 1, -1, -1) if reverse else range(t):
            pre = pre_x[s] + h @ u
            i, f, g, o = pre.chunk(4, 1)
            i, f, g, o = i.sigmoid(), f.sigmoid(), g.tanh(), o.sigmoid()
            c_new = f * c + i * g
            hs[s] = o * c_new.tanh()  # from the float32 c
            c = c_new.to(torch.bfloat16).float()  # carried in bfloat16
            cs[s] = c
            for k, v in enumerate((i, f, g, o)):
                gates[k, s] = v
            h = kernel_h[s]  # the kernel's own h feeds the next step
    out = [a.transpose(0, 1).numpy() for a in (hs, cs, *gates)]
    # h rounds to bfloat16 (u |h|); where the float32 c sits on a bfloat16 tie the kernel's sums
    # may round the other way: c then differs by one rounding, which moves h by at most u |c|
    expected = np.asarray(seq, np.float32)
    err = np.abs(out[0] - expected)
    bound = TOLERANCE[0] * (np.abs(expected) + np.abs(out[1])) + TOLERANCE[1]
    if (err > bound).any():
        sample, step, unit = (int(v) for v in np.argwhere(err > bound)[0])
        raise ParityError(
            f"Layer {name!r}: o * tanh(c) with PyTorch's oneDNN bfloat16 LSTM arithmetic does not reproduce "
            f"the kernel's own h (max error {float(err.max()):.3g} beyond one bfloat16 rounding of h and c; "
            f"first at sample {sample}, step {step}, unit {unit}); this build or CPU computes it otherwise. "
            "Ask for fields=('h',): h is the kernel's own."
        )
    return out[0], out[1], out[2], out[3], out[4], out[5]


#: unit roundoff of the half-precision dtypes (float32 slack added near 0)
_ROUNDOFF = {torch.bfloat16: 2.0**-8, torch.float16: 2.0**-11}


def native_parts(
    module: Any,
    layer: int,
    reverse: bool,
    x_tm: torch.Tensor,
    seq: np.ndarray,
    h0: np.ndarray | None,
    c0: np.ndarray | None,
    dtypes: tuple[Any, Any],
    *,
    name: str = "rnn",
) -> tuple[np.ndarray, ...]:
    """One direction of a half-precision ``nn.LSTM`` / ``nn.GRU`` on PyTorch's native CPU kernel:
    ``(h, c, i, f, g, o)`` / ``(h, z, r, n)`` (sample, time, unit), input order.

    The native kernel (``RNN.cpp``: the input projection of all steps with ``at::linear``, then per
    step ``LSTMCell`` / ``GRUCell``'s ops, each rounding to the dtype) is run op for op on the same
    tensors — ``x_tm`` is the layer's input as the kernel sees it, (time, sample, feature) with its
    memory layout (the GEMM's rounding follows it) — fed the kernel's own ``h_{t-1}``, under the
    caller's autocast (it casts the kernel's inner ops too); LSTM's ``c`` is carried by the loop.
    Measured bitwise the kernel's h (and ``c_n``); checked within one rounding of the output dtype.
    ``dtypes``: those of the kernel's ``h0`` and output (a float32 GRU under autocast keeps float32
    states)."""
    import torch.nn.functional as F

    lstm = type(module).__name__ == "LSTM" or isinstance(module, torch.nn.LSTM)
    sfx = f"_l{layer}" + ("_reverse" if reverse else "")
    w_ih, w_hh = getattr(module, "weight_ih" + sfx), getattr(module, "weight_hh" + sfx)
    b_ih = getattr(module, "bias_ih" + sfx) if module.bias else None
    b_hh = getattr(module, "bias_hh" + sfx) if module.bias else None
    n, t, _ = seq.shape
    hidden = w_hh.shape[1]
    with torch.no_grad():
        kernel_h = torch.from_numpy(np.ascontiguousarray(seq.swapaxes(0, 1), np.float32)).to(dtypes[1])

        def initial(a: np.ndarray | None) -> torch.Tensor:
            v = torch.zeros(n, hidden) if a is None else torch.from_numpy(np.asarray(a, np.float32))
            return v.to(dtypes[0])

        h, c = initial(h0), initial(c0)
        projected = F.linear(x_tm, w_ih, b_ih)
        hs = torch.empty(t, n, hidden)
        cs = torch.empty(t, n, hidden)
        gates = torch.empty(4 if lstm else 3, t, n, hidden)
        for s in range(t - 1, -1, -1) if reverse else range(t):
            if lstm:
                i, f, g, o = F.linear(h, w_hh, b_hh).add_(projected[s]).unsafe_chunk(4, 1)
                i, f, g, o = i.sigmoid_(), f.sigmoid_(), g.tanh_(), o.sigmoid_()
                c = (f * c).add_(i * g)
                hs[s], cs[s] = (o * c.tanh()).float(), c.float()
                step: tuple[torch.Tensor, ...] = (i, f, g, o)
            else:
                i_r, i_z, i_n = projected[s].unsafe_chunk(3, 1)
                h_r, h_z, h_n = F.linear(h, w_hh, b_hh).unsafe_chunk(3, 1)
                r = h_r.add_(i_r).sigmoid_()
                z = h_z.add_(i_z).sigmoid_()
                n_ = i_n.add(h_n.mul_(r)).tanh_()
                hs[s] = (h - n_).mul_(z).add_(n_).float()
                step = (z, r, n_)
            for k, v in enumerate(step):
                gates[k, s] = v.float()
            h = kernel_h[s]
    out = [a.transpose(0, 1).numpy() for a in (hs, *([cs] if lstm else []), *gates)]
    expected = np.asarray(seq, np.float32)
    err = np.abs(out[0] - expected)
    roundoff = _ROUNDOFF.get(projected.dtype, 2.0**-8)
    if (err > roundoff * np.abs(expected) + TOLERANCE[1]).any():
        raise ParityError(
            f"Layer {name!r}: PyTorch's native {projected.dtype} {'LSTM' if lstm else 'GRU'} ops, fed the "
            f"kernel's h, do not reproduce it (max error {float(err.max()):.3g} beyond one rounding); this "
            "build or CPU computes it otherwise (oneDNN?). Ask for fields=('h',): h is the kernel's own."
        )
    return tuple(out)
