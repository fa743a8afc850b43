"""A module's weights as NumPy :class:`~rnnlens.core.spec.CellWeights`, for reconstruction.

:func:`_weights` reads one direction of one layer of an ``nn.LSTM``/``GRU``/``RNN`` (or a
cell) into rnnlens' canonical gate order (GRU: PyTorch's ``r, z, n`` become ``z, r, n``), with
torch's own elementwise activations wrapped as NumPy → NumPy functions; :func:`_np` is the
tensor → NumPy conversion every other module uses (bfloat16 goes through float32).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from ...core.kinds import KINDS
from ...core.rebuild_ops import absmax_of
from ...core.spec import CellWeights
from .discover import _Config


def _np(t: torch.Tensor) -> np.ndarray:
    t = t.detach()
    if t.dtype == torch.bfloat16:  # NumPy has no bfloat16
        t = t.float()
    return t.cpu().numpy()


def _torch_fn(fn: Callable[..., torch.Tensor]) -> Callable[[np.ndarray], np.ndarray]:
    """A torch elementwise function as NumPy → NumPy (zero-copy in, multithreaded)."""

    def apply(a: np.ndarray) -> np.ndarray:
        if not a.flags.writeable or any(s < 0 for s in a.strides):
            a = np.array(a)
        return fn(torch.from_numpy(a)).numpy()

    def inplace(a: np.ndarray) -> None:  # on a writeable view: no allocation, no copy back
        t = torch.from_numpy(a)
        fn(t, out=t)

    def into(out: np.ndarray, a: np.ndarray) -> None:  # out = fn(a), written by PyTorch
        fn(_tensor(a), out=torch.from_numpy(out))

    apply.inplace = inplace  # type: ignore[attr-defined]  # used by rnnlens.core.rebuild
    apply.into = into  # type: ignore[attr-defined]
    return apply


def _tensor(a: np.ndarray) -> torch.Tensor:
    if not a.flags.writeable or any(s < 0 for s in a.strides):
        a = np.array(a)
    return torch.from_numpy(a)


def _matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """PyTorch's GEMM on NumPy arrays (zero-copy in), on PyTorch's own thread pool."""
    return torch.matmul(_tensor(a), _tensor(b)).numpy()


def _into(out: np.ndarray, a: np.ndarray, b: np.ndarray, bias: np.ndarray | None, accumulate: bool) -> None:
    """``out = a @ b (+ bias)`` or ``out += a @ b``, written by PyTorch's ``addmm`` into ``out``
    (a writeable NumPy view): no temporary, no copy back."""
    o = torch.from_numpy(out)
    at, bt = _tensor(a), _tensor(b)
    if accumulate:
        o.addmm_(at, bt)
    elif bias is not None:
        torch.addmm(_tensor(bias), at, bt, out=o)
    else:
        torch.mm(at, bt, out=o)


_matmul.into = _into  # type: ignore[attr-defined]  # used by rnnlens.core.rebuild


class _Elementwise:
    """:class:`~rnnlens.core.spec.Elementwise` on PyTorch's kernels: both cores, where NumPy's use
    one (measured: the rebuild's ``c`` scan and parity check take about half the time)."""

    def mul(self, out: np.ndarray, a: np.ndarray, b: np.ndarray) -> None:
        torch.mul(_tensor(a), _tensor(b), out=torch.from_numpy(out))

    def addcmul(self, out: np.ndarray, a: np.ndarray, b: np.ndarray) -> None:
        torch.from_numpy(out).addcmul_(_tensor(a), _tensor(b))

    def sub(self, out: np.ndarray, a: np.ndarray, b: np.ndarray) -> None:
        torch.sub(_tensor(a), _tensor(b), out=torch.from_numpy(out))

    def submul(self, out: np.ndarray, c: np.ndarray, a: np.ndarray, b: np.ndarray) -> None:
        torch.addcmul(_tensor(c), _tensor(a), _tensor(b), value=-1, out=torch.from_numpy(out))

    def absmax(self, a: np.ndarray) -> float:
        lo, hi = torch.aminmax(_tensor(a))  # one pass (10x faster than vector_norm(inf)); NaN propagates
        return absmax_of(float(lo), float(hi))


_ELEMENTWISE = _Elementwise()

_SIGMOID = _torch_fn(torch.sigmoid)
_TANH = _torch_fn(torch.tanh)
_RELU = _torch_fn(torch.relu)


def _weights(m: Any, cfg: _Config, layer: int, reverse: bool) -> CellWeights | None:
    """One direction of one layer in canonical gate order (GRU: PyTorch's r,z,n → z,r,n)."""
    if not KINDS[cfg.kind].known or cfg.quantized:  # (quantized: int8 packed, stepped by .quantized_rnn)
        return None
    sfx = "" if cfg.cell else f"_l{layer}" + ("_reverse" if reverse else "")
    w_ih, w_hh = _np(getattr(m, "weight_ih" + sfx)), _np(getattr(m, "weight_hh" + sfx))
    b_ih = _np(getattr(m, "bias_ih" + sfx)) if cfg.bias else None
    b_hh = _np(getattr(m, "bias_hh" + sfx)) if cfg.bias else None
    projection = _np(getattr(m, "weight_hr" + sfx)).T if cfg.proj_size else None
    if cfg.kind == "gru":
        h = cfg.hidden_size
        order = np.r_[h : 2 * h, 0:h, 2 * h : 3 * h]
        w_ih, w_hh = w_ih[order], w_hh[order]
        b_ih = None if b_ih is None else b_ih[order]
        b_hh = None if b_hh is None else b_hh[order]
    return CellWeights(
        kind=cfg.kind,
        kernel=w_ih.T,
        recurrent_kernel=w_hh.T,
        bias=b_ih,
        recurrent_bias=b_hh,
        activation=_RELU if cfg.nonlinearity == "relu" else _TANH,
        recurrent_activation=_SIGMOID,
        reset_after=True,
        projection=projection,
        matmul=_matmul,
        elementwise=_ELEMENTWISE,
    )
