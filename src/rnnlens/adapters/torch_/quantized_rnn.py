"""PyTorch's dynamically quantized ``LSTM`` / ``GRU`` (``quantize_dynamic``), stepped with its own ops.

``torch.ao.quantization.quantize_dynamic(model, {nn.LSTM, nn.GRU}, dtype=torch.qint8)`` (or
``dtype=torch.float16``) swaps each layer for ``torch.ao.nn.quantized.dynamic.LSTM`` / ``GRU``,
whose forward is ``torch.quantized_lstm`` / ``quantized_gru`` (``aten/src/ATen/native/RNN.cpp``):
per layer and direction, on CPU,

- ``x W_ih + b_ih``: one ``packed_w_ih->apply_dynamic(x, reduce_range)`` on the whole sequence;
- every step, ``h W_hh + b_hh``: ``packed_w_hh->apply_dynamic(h_{t-1}, reduce_range)``, then the
  float32 cell of ``LSTMCell`` / ``GRUCell`` (``gates = linear_hh(h).add_(x_proj[t])``, chunked,
  activated in place; LSTM ``c = (f * c).add_(i * g)``, ``h = o * tanh(c)``; GRU
  ``n = tanh(x_n + r * (h W_hn + b_hn))``, ``h = (h - n) * z + n``).

``apply_dynamic`` is the engine's dynamic linear (fbgemm on x86, also behind the ``x86``
engine; oneDNN, QNNPACK): it takes the activation's min and max (widened to hold 0), chooses a
uint8 scale and zero point (``ChooseQuantizationParams``; ``reduce_range``: 7 bits, the dynamic
RNN's default), quantizes (fbgemm: ``fma(x, 1 / scale, zero_point)`` rounded half to even),
multiplies with the int8 weights in int32 and dequantizes with the bias (fbgemm:
``fma(acc, scale_x * scale_w, bias)``). rnnlens does not re-derive that: it calls the very op,
``torch.ops.quantized.linear_dynamic`` (``linear_dynamic_fp16`` for float16 weights) on the
module's own packed weights, so each step computes what the kernel's step computes, whatever
the engine. Fed the kernel's own ``h_{t-1}`` (:func:`emit_quantized` without edits), the loop's
``h`` is checked against the kernel's at float32 tolerance (measured: bitwise equal); ``c`` and
the gates are the loop's. With edits the loop runs on its own (edited) states.

A one-layer view (:func:`layer_view`) runs the kernel layer by layer, so every layer's ``h``
is the kernel's: bitwise what the stacked call returns (tested).

>>> import torch, warnings, rnnlens
>>> with warnings.catch_warnings():
...     warnings.simplefilter("ignore")
...     model = torch.ao.quantization.quantize_dynamic(
...         torch.nn.Sequential(torch.nn.LSTM(3, 4)), {torch.nn.LSTM}, dtype=torch.qint8)
>>> layer = rnnlens.trace(model, torch.randn(5, 2, 3))["0"]
>>> layer.c.shape, list(layer.gates)
((2, 5, 4), ['i', 'f', 'g', 'o'])
"""

from __future__ import annotations

from functools import partial
from typing import Any

import numpy as np
import torch
from torch.nn.utils.rnn import PackedSequence

from ...core.cells import check_parity, tolerance
from ...core.edits import WRITE, LayerEdits
from ...errors import ParityError, UnsupportedLayerError
from .discover import _Config
from .emit_loop import _apply, _ops
from .weights import _np

__all__ = ["emit_quantized", "layer_view", "linears"]


def layer_view(m: Any, cfg: _Config, layer: int) -> Any:
    """A one-layer stand-in for layer ``layer`` of ``m`` sharing its packed parameters (the
    module objects themselves, not copies); only its class ``forward`` is ever called."""
    view = object.__new__(type(m))
    d = view.__dict__
    d.update(vars(m))
    d.pop("forward", None)
    mods = dict(d["_modules"])
    own = list(m._all_weight_values)[layer * cfg.n_dir : (layer + 1) * cfg.n_dir]
    holder = object.__new__(torch.nn.ModuleList)  # no __init__: nothing is registered anywhere
    holder.__dict__.update(vars(m._all_weight_values))
    holder.__dict__["_modules"] = {str(k): p for k, p in enumerate(own)}
    mods["_all_weight_values"] = holder
    d["_modules"] = mods
    d["num_layers"] = 1
    if layer > 0:
        d["input_size"] = cfg.n_dir * cfg.hidden_size
    return view


def linears(m: Any, index: int) -> tuple[Any, Any]:
    """The kernel's ``linear_ih`` and ``linear_hh`` of direction-layer ``index``: the engine's
    own dynamic linear on the module's packed weights (bias included)."""
    kind, _tensors, _doubles, ints, packed = m._all_weight_values[index].param.__getstate__()[0]
    w_ih, w_hh = packed
    if kind == "quantized_dynamic":
        reduce_range = bool(ints[0]) if ints else False
        op = torch.ops.quantized.linear_dynamic
        return (lambda a: op(a, w_ih, reduce_range)), (lambda a: op(a, w_hh, reduce_range))
    if kind == "quantized_fp16":
        op16 = torch.ops.quantized.linear_dynamic_fp16
        return (lambda a: op16(a, w_ih)), (lambda a: op16(a, w_hh))
    raise UnsupportedLayerError(f"Unknown quantized cell parameters {kind!r}; ask for fields=('h',).")


def _lstm_step(
    gates: torch.Tensor, c: torch.Tensor, write: Any = None
) -> tuple[torch.Tensor, torch.Tensor, tuple[Any, ...]]:
    """``LSTMCell`` on CPU (``RNN.cpp``), op for op: ``gates`` is ``linear_hh(h).add_(x_proj)``;
    ``write`` (given a write edit) edits the write ``i * g`` in place before ``c`` is formed."""
    i, f, g, o = gates.unsafe_chunk(4, 1)
    i, f, g, o = i.sigmoid_(), f.sigmoid_(), g.tanh_(), o.sigmoid_()
    w = i * g
    if write is not None:
        write(w)
    cy = (f * c).add_(w)
    return o * cy.tanh(), cy, (i, f, g, o)


def _gru_step(ig: torch.Tensor, hg: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, tuple[Any, ...]]:
    """``GRUCell`` on CPU, op for op (``ig``: the step's input projection, ``hg``: ``linear_hh(h)``)."""
    i_r, i_z, i_n = ig.unsafe_chunk(3, 1)
    h_r, h_z, h_n = hg.unsafe_chunk(3, 1)
    r = h_r.add_(i_r).sigmoid_()
    z = h_z.add_(i_z).sigmoid_()
    n = i_n.add(h_n.mul_(r)).tanh_()
    return (h - n).mul_(z).add_(n), (z, r, n)  # canonical order z, r, n


def emit_quantized(
    view: Any, cfg: _Config, layer: int, x: Any, hx: Any, edits: LayerEdits | None = None, keep: bool = True
) -> tuple[Any, Any, list[torch.Tensor], list[tuple[torch.Tensor, ...]]]:
    """One layer of a quantized module, as :func:`.emit._emit_layer` returns it: the output and
    final state (the kernel's own without edits), and per direction ``c`` and the gates
    (time, sample, unit), input time order, canonical gate order."""
    if isinstance(x, PackedSequence):
        raise UnsupportedLayerError(
            f"Layer {cfg.base} layer {layer} is dynamically quantized and was given a PackedSequence: "
            "rnnlens computes c and gates (and edits) of quantized layers on padded tensors only. Ask "
            "for fields=('h',) (the kernel's own h), or pass the padded tensor."
        )
    lstm = cfg.kind == "lstm"
    kernel = None
    if edits is None:  # the kernel's own run: its h is what the loop is fed and checked against
        kernel = type(view).forward(view, x, hx)
    view.check_forward_args(x, hx if hx is not None else _zeros(x, cfg, lstm), None)
    x_tm = x.transpose(0, 1) if cfg.batch_first else x
    steps, n = x_tm.shape[0], x_tm.shape[1]
    h0, c0 = _initial(hx, x_tm, cfg, lstm)
    ys: list[torch.Tensor] = []
    finals_h: list[torch.Tensor] = []
    finals_c: list[Any] = []
    cs: list[torch.Tensor] = []
    gs: list[tuple[torch.Tensor, ...]] = []
    teacher = None if kernel is None else (kernel[0].transpose(0, 1) if cfg.batch_first else kernel[0])
    for d in range(cfg.n_dir):
        linear_ih, linear_hh = linears(view, d)
        x_proj = linear_ih(x_tm)
        own = None if teacher is None else teacher[:, :, d * cfg.hidden_size : (d + 1) * cfg.hidden_size]
        direction = cfg.directions[d]
        eh = _ops(edits, direction, "h", steps, n, None)
        ec = _ops(edits, direction, "c", steps, n, None)
        ew = _ops(edits, direction, WRITE + ("c" if lstm else "h"), steps, n, None)  # the writes
        h: Any = h0[d]
        c: Any = c0[d] if c0 is not None else None
        y = x_tm.new_empty(steps, n, cfg.hidden_size)
        c_all = x_tm.new_empty(steps, n, cfg.hidden_size) if lstm else None
        g_all = x_tm.new_empty(4 if lstm else 3, steps, n, cfg.hidden_size)
        cache: dict[int, Any] = {}
        order = range(steps - 1, -1, -1) if d else range(steps)
        for s in order:
            write = partial(_apply, ops=ew[s], cache=cache) if s in ew else None
            if lstm:
                h_s, c_s, gates = _lstm_step(linear_hh(h).add_(x_proj[s]), c, write)
            else:
                h_s, gates = _gru_step(x_proj[s], linear_hh(h), h)
                c_s = None
                if write is not None:  # h = z ⊙ h_{t-1} + (1 − z) ⊙ n, its write edited
                    z, _, cand = gates
                    w = (1 - z) * cand
                    write(w)
                    h_s = z * h + w
            if s in eh:
                _apply(h_s, eh[s], cache)
            if c_s is not None and s in ec:
                _apply(c_s, ec[s], cache)
            y[s] = h_s
            if c_all is not None:
                c_all[s] = c_s
            for k, g in enumerate(gates):
                g_all[k, s] = g
            h = h_s if own is None else own[s]  # the kernel's h feeds the next step when there is one
            c = c_s
        ys.append(y)
        finals_h.append(y[0] if d else y[-1])
        finals_c.append(c)
        if keep:
            if c_all is not None:
                cs.append(c_all)
            gs.append(tuple(g_all))
        if own is not None:
            _check(own, y, cfg, layer)
    if kernel is not None:
        if lstm:  # the kernel's c_n against the loop's, too
            _check(kernel[1][1], torch.stack(finals_c), cfg, layer, "c_n")
        return kernel[0], kernel[1], cs, gs
    out = torch.cat(ys, 2)
    out = out.transpose(0, 1) if cfg.batch_first else out
    h_n = torch.stack(finals_h)
    return out, ((h_n, torch.stack(finals_c)) if lstm else h_n), cs, gs


def _zeros(x: torch.Tensor, cfg: _Config, lstm: bool) -> Any:
    n = x.shape[0 if cfg.batch_first else 1]
    z = x.new_zeros(cfg.n_dir, n, cfg.hidden_size)
    return (z, z) if lstm else z


def _initial(hx: Any, x_tm: torch.Tensor, cfg: _Config, lstm: bool) -> tuple[Any, Any]:
    if hx is None:
        z = x_tm.new_zeros(cfg.n_dir, x_tm.shape[1], cfg.hidden_size)
        return z, (z if lstm else None)
    return (hx[0], hx[1]) if lstm else (hx, None)


def _check(expected: torch.Tensor, got: torch.Tensor, cfg: _Config, layer: int, what: str = "h") -> None:
    """The loop fed the kernel's h against the kernel's own ``what`` (float32 tolerance)."""
    e, g = _np(expected), _np(got)
    if e.ndim == 2:
        e, g = e[:, None], g[:, None]
    try:
        check_parity(
            np.ascontiguousarray(e.swapaxes(0, 1)) if what == "h" else e,
            np.ascontiguousarray(g.swapaxes(0, 1)) if what == "h" else g,
            None,
            layer=f"{cfg.base} layer {layer}",
            what=f"{what} from the quantized kernel's own linear ops, step by step",
            tol=tolerance(np.dtype(np.float32)),
        )
    except ParityError as err:
        raise ParityError(
            f"{str(err).split('. The cell probably')[0]}. rnnlens steps the dynamically quantized "
            "kernel with its own linear_dynamic op; this engine or build computes the cell otherwise. "
            "Ask for fields=('h',): h is the kernel's own."
        ) from None
