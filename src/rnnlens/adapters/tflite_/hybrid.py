"""The hybrid (dynamic-range quantized) LSTM kernel's arithmetic, for ``c`` and the gates.

A ``.tflite`` file converted with ``optimizations=[tf.lite.Optimize.DEFAULT]`` keeps int8 weights
(one scale per tensor) and float32 activations; the kernel (``lstm_eval.cc``, hybrid path)
quantizes each sample's ``x_t`` and ``h_{t-1}`` to int8 at every step (symmetric: scale
``max|v| / 127``, values rounded half away from zero and clipped to ±127; asymmetric, what the
converter writes: scale ``(max - min) / 255`` with a zero point), multiplies in integers and scales
the products back:

    z = b + (s_x · s_W) (q(x_t) · W_q) + (s_h · s_R) (q(h_{t-1}) · R_q)

then the float LSTM step (sigmoid, the fused activation, ``cell_clip``). A float rebuild from the
dequantized weights differs from the kernel by the quantization of ``x`` and ``h`` (about 1e-2),
so :func:`hybrid_direction` computes that arithmetic: ``h_{t-1}`` is the kernel's own ``h`` (known
for every step once it has run), so the products of all steps are computed at once and only the
``c`` scan loops over time. The rebuilt ``h`` is checked against the kernel's at float32 tolerance.

Example:
    >>> q, s = quantize_rows(np.array([[0.5, -1.0, 0.25]], np.float32))
    >>> q.tolist(), bool(s[0] == np.float32(1.0) / np.float32(127))
    ([[64, -127, 32]], True)
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ...core.cells import DirectionArrays, check_parity

__all__ = ["hybrid_direction", "quantize_rows", "quantize_rows_asymmetric"]

_F32 = np.float32


def quantize_rows(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """TFLite's ``SymmetricQuantizeFloats`` of every row (last axis) of ``a``: int values, scales."""
    a = np.asarray(a, _F32)
    amax = np.max(np.abs(a), axis=-1)
    zero = amax == 0
    safe = np.where(zero, _F32(1), amax).astype(_F32)
    scale = np.where(zero, _F32(1), safe / _F32(127)).astype(_F32)
    inv = (_F32(127) / safe).astype(_F32)
    v = (a * inv[..., None]).astype(_F32).astype(np.float64)
    q = np.clip(np.sign(v) * np.floor(np.abs(v) + 0.5), -127, 127)
    q[zero] = 0
    return q.astype(np.int64), scale


def quantize_rows_asymmetric(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """TFLite's ``AsymmetricQuantizeFloats`` of every row: ``q - zero_point`` (ints) and scales."""
    a = np.asarray(a, _F32)
    rmin = np.minimum(0.0, a.min(axis=-1)).astype(np.float64)
    rmax = np.maximum(0.0, a.max(axis=-1)).astype(np.float64)
    same = rmin == rmax
    scale = np.where(same, 1.0, (rmax - rmin) / 255.0)
    from_min, from_max = -128 - rmin / scale, 127 - rmax / scale
    zp = np.where(128 + np.abs(rmin / scale) < 127 + np.abs(rmax / scale), from_min, from_max)
    zp = np.where(zp <= -128, -128, np.where(zp >= 127, 127, np.sign(zp) * np.floor(np.abs(zp) + 0.5)))
    zp = np.where(same, 0, zp)
    scale32 = scale.astype(_F32)
    inv = (_F32(1) / scale32).astype(_F32)
    v = (zp[..., None].astype(_F32) + (a * inv[..., None]).astype(_F32)).astype(_F32).astype(np.float64)
    q = np.clip(np.sign(v) * np.floor(np.abs(v) + 0.5), -128, 127)
    q[same] = 0
    return (q - zp[..., None]).astype(np.int64), scale32


def _products(q: np.ndarray, scale: np.ndarray, w: np.ndarray, w_scale: float) -> np.ndarray:
    """``(s_v · s_W) · (q(v) · W_q)`` per row, in float32 as the kernel scales its int32 sums."""
    dots = (q @ np.asarray(w, np.int64).T).astype(_F32)  # exact integer sums
    return (dots * (scale * _F32(w_scale)).astype(_F32)[..., None]).astype(_F32)


def hybrid_direction(
    weights: dict[str, tuple[np.ndarray, float]],
    biases: dict[str, np.ndarray],
    activation: Callable[[np.ndarray], np.ndarray],
    cell_clip: float | None,
    x: np.ndarray,
    seq: np.ndarray,
    h0: np.ndarray,
    c0: np.ndarray | None,
    *,
    reverse: bool,
    asymmetric: bool,
    layer: str,
) -> DirectionArrays:
    """``h``, ``c`` and gates (i, f, g, o) of one direction, ``x`` and ``seq`` (sample, time, ·) in
    input order; ``weights["input_to_forget"] = (int8 array, scale)`` etc."""
    flip = (lambda a: a[:, ::-1]) if reverse else (lambda a: a)
    xs, hs = flip(np.asarray(x, _F32)), flip(np.asarray(seq, _F32))
    n, t = hs.shape[:2]
    h_prev = np.concatenate([np.asarray(h0, _F32)[:, None], hs[:, :-1]], axis=1)
    quantize = quantize_rows_asymmetric if asymmetric else quantize_rows
    qx, sx = quantize(xs)
    qh, sh = quantize(h_prev)
    z = {}
    for g in ("input", "forget", "cell", "output"):
        acc = np.broadcast_to(np.asarray(biases[g], _F32), (n, t, biases[g].shape[-1])).astype(_F32)
        acc = (acc + _products(qx, sx, *weights[f"input_to_{g}"])).astype(_F32)
        z[g] = (acc + _products(qh, sh, *weights[f"recurrent_to_{g}"])).astype(_F32)
    with np.errstate(over="ignore"):
        i, f, o = (np.asarray(1 / (1 + np.exp(-z[g])), _F32) for g in ("input", "forget", "output"))
    g_ = np.asarray(activation(z["cell"]), _F32)
    c = np.empty_like(g_)
    prev = np.zeros((n, g_.shape[-1]), _F32) if c0 is None else np.asarray(c0, _F32)
    for s in range(t):
        cur = (f[:, s] * prev + i[:, s] * g_[:, s]).astype(_F32)
        if cell_clip:
            cur = np.clip(cur, -cell_clip, cell_clip)
        c[:, s] = prev = cur
    rebuilt = (o * np.asarray(activation(c), _F32)).astype(_F32)
    check_parity(hs, rebuilt, None, layer=layer, what="the hybrid kernel's arithmetic, o * act(c),")
    return DirectionArrays(h=flip(hs), c=flip(c), gates=tuple(flip(a) for a in (i, f, g_, o)))
