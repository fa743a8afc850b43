"""``c`` and the gates of a plain ``nn.LSTM`` layer rebuilt from the fused kernel's own ``h`` in
a few whole-array operations, during the recording (the weights as the kernel saw them): what
``strategy="auto"`` does on small batches on CPU, in place of the step loop
(:func:`rnnlens.adapters.torch_.emit._emit_layer` decides: :data:`.emit.REBUILD_MAX_BATCH`).

On small batches (an ``LSTM(32)``, batch 1, 20 steps: a step's arithmetic is a few hundred
values) the step loop's cost is its calls, ~2–3 µs each for PyTorch, six a step, its small-batch
GEMMs and its per-call set-up: the fused oneDNN kernel runs the same steps in less time than
the loop's calls alone. Here the kernel runs (its ``h`` is exact by definition) and everything
else is done for all steps at once: the pre-activations of every step in two GEMMs
(``x_t @ W_ih.T + b_ih + b_hh``, then ``+= h_{t-1} @ W_hh.T``, ``h_{t-1}`` the kernel's), the
activations on the whole array, ``c`` by a scan (:mod:`.rebuild_scan`: two NumPy calls a step,
or one numba call), then
the check that the kernel's ``h`` is ``o * tanh(c)`` within :func:`rnnlens.core.cells.tolerance`
— a :class:`~rnnlens.errors.ParityError` otherwise, as for every rebuild. The arrays are
written in the input's layout, so the conversion copies nothing.

Only the plain case: float32/float64 on CPU, no ``proj_size``, no ``PackedSequence``, no edits;
anything else runs the step loop. ``h`` is the kernel's own; c and the gates agree with the
step loop's to ~1e-7 (float32, measured; ``tests/adapters/test_torch_rebuild_fast.py``).

Example:
    >>> import torch, rnnlens
    >>> lstm = torch.nn.LSTM(3, 4, batch_first=True)
    >>> s = rnnlens.trace(lstm, torch.ones(2, 5, 3))["lstm"]  # a small batch: rebuilt
    >>> s.c.shape, list(s.gates)
    ((2, 5, 4), ['i', 'f', 'g', 'o'])
"""

from __future__ import annotations

import functools
import math
from typing import Any

import numpy as np
import torch

from ...core.buffers import MIN_BYTES, empty
from ...core.cells import check_parity, tolerance
from .discover import _Config, base_class, genuine_forward
from .rebuild_scan import scan

__all__ = ["fits", "plain_weights", "rebuild_arrays", "rebuild_layer", "rebuild_parts"]


def fits(cfg: _Config, x: torch.Tensor) -> bool:
    """Whether :func:`rebuild_layer` takes this layer: a plain LSTM layer (no ``proj_size``, not
    quantized, not a cell) on a float32/float64 CPU tensor (not packed)."""
    return (
        cfg.kind == "lstm"
        and not cfg.cell
        and not cfg.quantized
        and not cfg.proj_size
        and x.dim() in (2, 3)
        and x.device.type == "cpu"
        and x.dtype in (torch.float32, torch.float64)
    )


def rebuild_layer(
    view: Any, cfg: _Config, layer: int, x: torch.Tensor, hx: Any
) -> tuple[Any, Any, list[torch.Tensor], list[tuple[torch.Tensor, ...]]] | None:
    """Layer ``layer`` (its module or one-layer view ``view``) run by PyTorch's own ``forward``,
    then its c and gates rebuilt from the output: what :func:`.emit._emit_layer` returns
    (output, final state, per direction ``c`` and the gates as (time, sample, unit) tensors).
    ``None`` where the weights are not plain tensors of ``x``'s dtype (the loop runs instead)."""
    if not plain_weights(view, cfg, layer, x.dtype):
        return None
    y, final = genuine_forward(base_class(cfg))(view, x, hx)
    parts = rebuild_parts(view, cfg, layer, x, y, hx, cfg.batch_first, f"{cfg.base} layer {layer}")
    return y, final, [p[0] for p in parts], [p[1:] for p in parts]


def plain_weights(m: Any, cfg: _Config, layer: int, dtype: torch.dtype) -> bool:
    """Whether layer ``layer``'s weights in ``m`` (its module or one-layer view) are plain CPU
    tensors of ``dtype``, as :func:`rebuild_parts` needs them."""
    for name in _names(layer, cfg.n_dir, cfg.bias):
        t = _param(m, name)
        if not (isinstance(t, torch.Tensor) and t.dtype == dtype and t.is_cpu):
            return False
    return True


@functools.lru_cache(maxsize=256)
def _names(layer: int, n_dir: int, bias: bool) -> tuple[str, ...]:
    """The weights' names of layer ``layer``, direction by direction (``weight_ih``,
    ``weight_hh``, then the biases where there are)."""
    kinds = ("weight_ih", "weight_hh", *(("bias_ih", "bias_hh") if bias else ()))
    return tuple(f"{k}_l{layer}{'_reverse' if d else ''}" for d in range(n_dir) for k in kinds)


def _param(m: Any, name: str) -> Any:
    params = m.__dict__.get("_parameters")  # (Module.__getattr__ costs ~1 µs more)
    return params[name] if params is not None and name in params else getattr(m, name, None)


def rebuild_parts(
    m: Any,
    cfg: _Config,
    layer: int,
    x: torch.Tensor,
    y: torch.Tensor,
    hx: Any,
    batch_first: bool,
    name: str,
) -> list[tuple[torch.Tensor, ...]]:
    """Per direction, ``(c, i, f, g, o)`` as (time, sample, unit) tensors (views of
    :func:`rebuild_arrays`' arrays)."""
    return [
        tuple(torch.from_numpy(a.transpose(1, 0, 2)) for a in parts)
        for parts in rebuild_arrays(m, cfg, layer, x, y, hx, batch_first, name)
    ]


def rebuild_arrays(
    m: Any,
    cfg: _Config,
    layer: int,
    x: torch.Tensor,
    y: torch.Tensor,
    hx: Any,
    batch_first: bool,
    name: str,
) -> list[tuple[np.ndarray, ...]]:
    """Per direction, ``(c, i, f, g, o)`` as (sample, time, unit) arrays, rebuilt from the
    kernel's output ``y`` of layer ``layer`` of module ``m`` on input ``x`` (as the layer
    received them: ``batch_first`` layout, or unbatched ``(time, feature)``) and ``hx`` (that
    layer's, or ``None``), checked against ``y`` (a :class:`~rnnlens.errors.ParityError`
    otherwise). The weights: plain tensors of ``x``'s dtype on CPU (:func:`rebuild_layer`
    checks). ``c`` and ``g`` are views of contiguous time-major buffers (the scan's steps
    contiguous); ``i``, ``f``, ``o`` views of the pre-activation buffer, in the input's layout."""
    if x.dim() == 2:  # unbatched: one sample, (time, ·) is sample-major already
        x, y, batch_first = x[None], y[None], True
        hx = None if hx is None else tuple(t[:, None] for t in hx)
    xn = x.detach()
    if not xn.is_contiguous():
        xn = xn.contiguous()
    n, steps = (xn.shape[0], xn.shape[1]) if batch_first else (xn.shape[1], xn.shape[0])
    h_, u = cfg.hidden_size, cfg.units
    h0s, c0s = hx if hx is not None else (None, None)
    rows = n * steps
    x2d = xn.view(rows, xn.shape[2])
    dt = np.float64 if x.dtype == torch.float64 else np.float32  # (fits: one of the two)
    y = y.detach()
    y_np = y.numpy()
    y_tm = y_np.transpose(1, 0, 2) if batch_first else y_np  # (time, sample, ·) views
    lay = (n, steps) if batch_first else (steps, n)
    names = _names(layer, cfg.n_dir, cfg.bias)
    k = len(names) // cfg.n_dir
    out: list[tuple[np.ndarray, ...]] = []
    for d in range(cfg.n_dir):
        w_ih, w_hh, *b = (_param(m, nm).detach() for nm in names[d * k : (d + 1) * k])
        h_tm = y_tm[:, :, d * u : (d + 1) * u]
        g_np = _empty((rows, 4 * h_), dt)
        g_t = torch.from_numpy(g_np)
        if b:  # (one sum: both go in first; NumPy's add, IEEE's as torch's, has less set-up)
            bias = torch.from_numpy(np.add(b[0].numpy(), b[1].numpy()))
            torch.addmm(bias, x2d, w_ih.t(), out=g_t)
        else:
            torch.mm(x2d, w_ih.t(), out=g_t)
        # h_{t-1} of every step, the kernel's, in the input's layout (processing order: reverse)
        # (a GEMM over every row, the first step's from h0: a GEMM over the kernel's own rows
        # shifted one step skips that buffer but rounds otherwise in float64, MKL's blocking
        # depending on the rows)
        hp_np = _empty((*lay, u), dt)
        hp = hp_np.transpose(1, 0, 2) if batch_first else hp_np
        hp[steps - 1 if d else 0] = 0 if h0s is None else h0s[d].detach().numpy()
        if d:
            hp[:-1] = h_tm[1:]
        else:
            hp[1:] = h_tm[:-1]
        g_t.addmm_(torch.from_numpy(hp_np).view(rows, u), w_hh.t())  # + h U, in place: no temporary
        del hp, hp_np
        g = g_np.reshape(*lay, 4 * h_)
        if batch_first:
            g = g.transpose(1, 0, 2)  # time-major views
        c0 = None if c0s is None else c0s[d].detach().numpy()
        c, cand, got = _lstm(g, g_t, c0, d, steps, n, h_)
        _check(h_tm, got, name)
        i, f, o = g[:, :, :h_], g[:, :, h_ : 2 * h_], g[:, :, 3 * h_ :]
        out.append(tuple(a.transpose(1, 0, 2) for a in (c, i, f, cand, o)))
    return out


def _empty(shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    """:func:`rnnlens.core.buffers.empty` (large buffers reused), NumPy's own below its size."""
    return np.empty(shape, dtype) if math.prod(shape) * 8 < MIN_BYTES else empty(shape, dtype)


def _check(h: np.ndarray, got: np.ndarray, name: str) -> None:
    """:func:`rnnlens.core.cells.check_parity` of ``got`` (``o * tanh(c)``) against the
    kernel's ``h``, both time-major: the same arithmetic and verdict with fewer temporaries (the
    message from ``check_parity`` where it fails)."""
    rtol, atol = tolerance(h.dtype)
    err = np.subtract(got, h)
    np.abs(err, out=err)
    bound = np.abs(h)
    bound *= rtol
    bound += atol
    if np.greater(err, bound).any():
        check_parity(h.transpose(1, 0, 2), got.transpose(1, 0, 2), None, layer=name, what="o * tanh(c)")


def _lstm(
    g: np.ndarray,
    g_t: torch.Tensor,
    c0: np.ndarray | None,
    d: int,
    steps: int,
    n: int,
    h_: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Activate the pre-activations ``g`` (time-major views of ``g_t``) in place and return ``c``,
    the candidate ``g`` (both contiguous, time-major) and ``o * tanh(c)`` (for the check)."""
    dt = g.dtype
    cand = _empty((steps, n, h_), dt)  # (rnnlens.core.buffers: large ones reused once dropped)
    np.tanh(g[:, :, 2 * h_ : 3 * h_], out=cand)  # before the sigmoid overwrites the block
    torch.sigmoid(g_t, out=g_t)  # i, f, o (and g's block, unused: one contiguous call)
    i, f, o = g[:, :, :h_], g[:, :, h_ : 2 * h_], g[:, :, 3 * h_ :]
    c = _empty((steps, n, h_), dt)
    np.multiply(i, cand, out=c)  # i * g of every step, then c_t = f_t * c_{t-1} + i_t * g_t
    scan(c, f, c0, reverse=bool(d))  # c_t = f_t * c_{t-1} + i_t * g_t (:mod:`.rebuild_scan`)
    h = _empty((steps, n, h_), dt)
    np.tanh(c, out=h)
    h *= o
    return c, cand, h
