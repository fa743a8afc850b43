"""From what the recording run stored to rnnlens' arrays, and the messages for what went wrong.

The conversion turns each recorded :class:`~.calls._SeqCall` layer or
:class:`~.calls._CellCalls` entry into per-direction :class:`~rnnlens.core.cells.DirectionArrays`
(``(sample, time, unit)``, input time order, mask from ``PackedSequence`` lengths), using the
emitted ``c`` and gates where the step loop produced them and reconstructing them otherwise;
the error helpers describe what a recurrent module expects and what it was given.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch.nn.utils.rnn import PackedSequence, pad_packed_sequence

from ...core.cells import DirectionArrays, check_parity, gru_gates, lstm_gates
from ...core.kinds import KINDS
from ...core.spec import Field, LayerSpec
from ...core.tracing import RawDirection, RawLayer, to_direction_arrays
from ...errors import InputError, UnsupportedLayerError
from ..base import Args
from .bfloat16 import lstm_parts, native_parts, onednn_bfloat16, refusal
from .calls import _CellCalls, _Plan, _SeqCall
from .cell_gates import lstm_cell_gates
from .discover import _Config
from .quantized import autocast_dtype
from .weights import _np

# --------------------------------------------------------------------------- errors


def _show(v: Any) -> str:
    if isinstance(v, PackedSequence):
        return f"a PackedSequence of {tuple(v.data.shape)[-1]} features, batch {int(v.batch_sizes[0])}"
    if isinstance(v, torch.Tensor):
        return f"a tensor of shape {tuple(v.shape)}, dtype {v.dtype}"
    if isinstance(v, (tuple, list)):
        return f"a {type(v).__name__} of " + ", ".join(_show(o) for o in v)
    return f"a {type(v).__name__}"


def _expected(cfg: _Config) -> str:
    dtype = "floats of the module's dtype"
    if cfg.cell:
        return (
            f"input (batch, {cfg.input_size}) or ({cfg.input_size},) and hx (batch, {cfg.hidden_size}), "
            f"{dtype}"
        )
    layout = "(batch, time, {0})" if cfg.batch_first else "(time, batch, {0})"
    h = f"({cfg.num_layers * cfg.n_dir}, batch, {cfg.units})"
    hx = f"(h0 {h}, c0 ({cfg.num_layers * cfg.n_dir}, batch, {cfg.hidden_size}))" if cfg.base == "LSTM" else h
    return (
        f"input {layout.format(cfg.input_size)} (batch_first={cfg.batch_first}; input_size="
        f"{cfg.input_size}), an unbatched (time, {cfg.input_size}) tensor, or a PackedSequence, and "
        f"optionally hx {hx}; {dtype}"
    )


def _input_error(
    e: Exception, active: list[tuple[_Plan, Any]], model: Any, args: Args, kwargs: dict[str, Any]
) -> InputError:
    if active:
        plan, got = active[-1]
        return InputError(
            f"Recurrent module {plan.name!r} ({plan.cfg.base}) could not run on what the model passed "
            f"it: {type(e).__name__}: {e} -- it expects {_expected(plan.cfg)}; it received {_show(got)}. "
            "Check the feature size, the layout (batch_first) and the dtype of the input you gave."
        )
    given = ", ".join([_show(a) for a in args] + [f"{k}={_show(v)}" for k, v in kwargs.items()])
    return InputError(
        f"{type(model).__name__}.forward failed on the arguments given to trace ({given}): "
        f"{type(e).__name__}: {e} -- rnnlens.trace(module, *args, **kwargs) calls module(*args, "
        "**kwargs) exactly as given; pass the arguments that forward expects."
    )


# --------------------------------------------------------------------------- conversion


def _batch_major(obj: Any, cfg: _Config, unbatched: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """A sequence in the caller's format as (sample, time, feature) and its mask (packed only)."""
    if isinstance(obj, PackedSequence):
        padded, lengths = pad_packed_sequence(obj, batch_first=True)
        mask = np.arange(padded.shape[1])[None, :] < lengths.numpy()[:, None]
        return _np(padded), mask
    a = _np(obj)
    if unbatched:
        return a[None], None
    return (a if cfg.batch_first else a.transpose(1, 0, 2)), None


def _state(h: Any, d: int, unbatched: bool) -> np.ndarray | None:
    if h is None:
        return None
    a = _np(h[d])
    return a[None] if unbatched else a


def _need_x(fields: Sequence[str]) -> bool:
    return "c" in fields or "gates" in fields


def _check_dtype(t: Any, name: str, fields: Sequence[str]) -> None:
    data = t.data if isinstance(t, PackedSequence) else t
    if isinstance(data, torch.Tensor) and data.dtype == torch.bfloat16 and _need_x(fields):
        how = " (under torch.autocast)" if autocast_dtype(data.device.type) is not None else ""
        raise UnsupportedLayerError(
            f"Layer {name!r} runs in bfloat16{how}: PyTorch's kernel (oneDNN on CPU) rounds its gates "
            "and states to bfloat16 where rnnlens does not reproduce it, so c and gates would not be "
            "the kernel's. Ask for fields=('h',) (the kernel's own h, as float32), or trace a float32 "
            "copy (copy.deepcopy(model).float()) with float32 inputs outside autocast."
        )


def _half(out: Any, call: _SeqCall, name: str, fields: Sequence[str]) -> bool:
    """Whether this layer's c and gates are computed by :mod:`.bfloat16` (a bfloat16 LSTM on the
    oneDNN kernel; a float16 or bfloat16 LSTM / GRU on the native one); a half-precision layer it
    cannot compute them for is refused."""
    data = out.data if isinstance(out, PackedSequence) else out
    if not (isinstance(data, torch.Tensor) and _need_x(fields)):
        return False
    cfg = call.plan.cfg
    autocast = autocast_dtype(data.device.type) is not None
    # (a float32 GRU under autocast returns float32, its inner ops computed in autocast's dtype)
    if data.dtype not in (torch.bfloat16, torch.float16) and not (autocast and cfg.kind == "gru"):
        return False
    how = "under torch.autocast, " if autocast else ""
    weight = getattr(call.plan.module, "weight_ih_l0", None)
    if cfg.kind not in ("lstm", "gru") or cfg.quantized:
        raise refusal(name, f"({how}{cfg.base})", "its kernel")
    if call.packed or cfg.proj_size:
        raise refusal(name, f"({how}a PackedSequence or proj_size)", "PyTorch's native kernel")
    if data.device.type != "cpu" or not isinstance(weight, torch.Tensor) or weight.device.type != "cpu":
        raise refusal(name, f"({how}on {data.device.type})", "The GPU kernel")
    return True


def _half_parts(
    call: _SeqCall, layer: int, d: int, x: np.ndarray, h: np.ndarray, h0s: Any, c0s: Any, name: str
) -> tuple[np.ndarray, ...]:
    """One direction's ``(h, c, gates...)`` of a half-precision layer (:mod:`.bfloat16`), ``h``
    the kernel's: a bfloat16 LSTM on oneDNN by its arithmetic, the rest by the native ops."""
    module, unbatched = call.plan.module, call.unbatched
    h0, c0 = _state(h0s, d, unbatched), _state(c0s, d, unbatched)
    out = call.outputs[layer]
    if call.plan.cfg.kind == "lstm" and out.dtype == torch.bfloat16 and onednn_bfloat16():
        _, *rest = lstm_parts(module, layer, d == 1, x, h, h0, c0, name=name)
        return (h, *rest)
    x_in = call.inputs[layer]  # as the kernel saw it: its layout decides the GEMM's rounding
    batch_first = call.plan.cfg.batch_first and not unbatched
    x_tm = x_in.unsqueeze(1) if unbatched else (x_in.transpose(0, 1) if batch_first else x_in)
    dtypes = (x_in.dtype if h0s is None else h0s.dtype, out.dtype)
    _, *rest = native_parts(module, layer, d == 1, x_tm, h, h0, c0, dtypes, name=name)
    return (h, *rest)


def _seq_layer(
    spec: LayerSpec, call: _SeqCall, layer: int, fields: tuple[Field, ...], weights: Callable[..., Any]
) -> tuple[dict[str, DirectionArrays], np.ndarray | None]:
    cfg = call.plan.cfg
    out = call.outputs[layer]
    bf16 = _half(out, call, spec.name, fields)  # c and gates as the half-precision kernel computes them
    if not bf16:
        _check_dtype(out, spec.name, fields)
    seq, mask = _batch_major(out, cfg, call.unbatched)
    u = cfg.units
    emitted = layer in call.gates  # by the loop: nothing to reconstruct
    x = None
    if _need_x(fields) and not emitted:
        x = _batch_major(call.inputs[layer], cfg, call.unbatched)[0]
    hx = call.hx.get(layer)
    h0s, c0s = (hx[0], hx[1]) if isinstance(hx, tuple) else (hx, None)
    raw = RawLayer(x=x, mask=mask)
    # the weights are read to rebuild c and gates, or to carry h over padding; not otherwise
    read = not emitted and (_need_x(fields) or mask is not None)
    for d, direction in enumerate(cfg.directions):
        h = seq[:, :, d * u : (d + 1) * u]
        parts = None
        if emitted:  # (time, sample, unit) buffers: zero-copy (sample, time, unit) views
            gates = [_np(g).transpose(1, 0, 2) for g in call.gates[layer][d]]
            cs = [_np(call.c[layer][d]).transpose(1, 0, 2)] if KINDS[cfg.kind].has_c else []
            parts = (h, *cs, *gates)
        elif bf16:
            assert x is not None
            parts = _half_parts(call, layer, d, x, h, h0s, c0s, spec.name)
        raw.directions[direction] = RawDirection(
            seq=h,
            h0=_state(h0s, d, call.unbatched),
            c0=_state(c0s, d, call.unbatched),
            reverse=d == 1,
            weights=weights(call.plan, layer, d == 1) if read else None,
            parts=parts,
            settled=emitted and call.packed,  # the packed loop carried c and NaN-ed the gates
        )
    return to_direction_arrays(spec, raw, fields), mask


def _generic_seq(spec: LayerSpec, call: _SeqCall) -> tuple[dict[str, DirectionArrays], np.ndarray | None]:
    """Kind "rnn": the module's own output sequence as h, split into directions."""
    cfg = call.plan.cfg
    out = call.raw_output
    if isinstance(out, (tuple, list)) and not isinstance(out, PackedSequence):
        out = out[0] if out else None
    width = cfg.n_dir * cfg.units
    ok = isinstance(out, PackedSequence) or (
        isinstance(out, torch.Tensor) and out.dim() in (2, 3) and out.shape[-1] == width
    )
    if not ok:
        raise UnsupportedLayerError(
            f"Layer {spec.name!r} ({type(call.plan.module).__name__}) overrides forward and returned "
            f"{_show(call.raw_output)}; rnnlens expected its output sequence with {width} features "
            "first. Select other layers with layers=[...], or trace the nn.LSTM/GRU/RNN it wraps."
        )
    seq, mask = _batch_major(out, cfg, isinstance(out, torch.Tensor) and out.dim() == 2)
    u = cfg.units
    arrays = {
        direction: DirectionArrays(h=seq[:, :, d * u : (d + 1) * u])
        for d, direction in enumerate(cfg.directions)
    }
    return arrays, mask


def _stack(items: list[Any], name: str, what: str) -> np.ndarray:
    """Per-call (batch, unit) tensors (or unbatched (unit,)) as (sample, time, unit)."""
    ts = [t if t.dim() == 2 else t[None] for t in items]
    sizes = sorted({int(t.shape[0]) for t in ts})
    if len(sizes) > 1:
        raise UnsupportedLayerError(
            f"Cell {name!r} was called with {what} of batch sizes {sizes} in one forward pass; rnnlens "
            "stacks the calls of one cell into one sequence, which needs the same batch at every "
            "call. Trace with fixed-size batches, or select other layers with layers=[...]."
        )
    return _np(torch.stack(ts, dim=1))


def _cell_entry(
    spec: LayerSpec, calls: _CellCalls, fields: tuple[Field, ...], weights: Callable[..., Any]
) -> tuple[dict[str, DirectionArrays], np.ndarray | None]:
    cfg, name = calls.plan.cfg, spec.name
    lstm = cfg.base == "LSTMCell"
    outs = calls.outs
    if not KINDS[cfg.kind].known:
        outs = [o[0] if isinstance(o, (tuple, list)) else o for o in outs]
        if not all(isinstance(o, torch.Tensor) and o.shape[-1] == cfg.units for o in outs):
            raise UnsupportedLayerError(
                f"Cell {name!r} ({type(calls.plan.module).__name__}) overrides forward and does not "
                f"return its hidden state ({cfg.units} features) first; rnnlens cannot trace it. "
                "Select other layers with layers=[...]."
            )
        return {"forward": DirectionArrays(h=_stack(outs, name, "outputs"))}, None
    for o in outs:
        _check_dtype(o[0] if lstm else o, name, fields)
    h = _stack([o[0] for o in outs] if lstm else outs, name, "outputs")
    result = DirectionArrays(h=h)
    if lstm and "c" in fields:
        result.c = _stack([o[1] for o in outs], name, "outputs")
    if "gates" in fields and calls.emitted is not None and not calls.computed:
        result.gates = calls.emitted.gates()  # kept by each call (None: rebuilt below)
        if result.gates is not None:
            return {"forward": result}, None
    if "gates" in fields and lstm and not calls.computed:
        fast = lstm_cell_gates(calls.plan.module, calls.xs, calls.hxs, outs)
        if fast is not None:  # (None: unbatched, another dtype, or off: the NumPy path says why)
            result.gates = fast
            return {"forward": result}, None
    if "gates" in fields and KINDS[cfg.kind].reconstructable:
        w = weights(calls.plan, 0, False)
        x = _stack(calls.xs, name, "inputs")

        def prev(k: int) -> np.ndarray:
            """Each call's given state (zeros where hx was None), stacked once."""
            given = [hx if hx is None else (hx[k] if lstm else hx) for hx in calls.hxs]
            if all(g is not None for g in given):
                return _stack(given, name, "hx")
            zero = np.zeros((h.shape[0], cfg.hidden_size), h.dtype)
            cols = [zero if g is None else _stack([g], name, "hx")[:, 0] for g in given]
            return np.stack(cols, axis=1)

        h_prev = prev(0)
        # at edited steps the parity check is against what the cell computed before the edit
        edited = bool(calls.computed)
        computed = [calls.computed.get(k, o) for k, o in enumerate(outs)] if edited else outs
        h_cell = _stack([o[0] for o in computed] if lstm else computed, name, "outputs") if edited else h
        if lstm:
            gates = lstm_gates(w, np.ascontiguousarray(x), h_prev)
            c = result.c if result.c is not None and not edited else None
            if c is None:
                c = _stack([o[1] for o in computed], name, "outputs")
            i, f, g, o = (gates[:, :, k] for k in range(4))
            check_parity(c, f * prev(1) + i * g, None, layer=name, what="f * c_prev + i * g")
            check_parity(h_cell, o * w.activation(c), None, layer=name, what="o * tanh(c)")
        else:
            gates = gru_gates(w, np.ascontiguousarray(x), h_prev)
            z, n = gates[:, :, 0], gates[:, :, 2]
            check_parity(h_cell, z * h_prev + (1 - z) * n, None, layer=name, what="z * h_prev + (1 - z) * n")
        result.gates = tuple(gates[:, :, k] for k in range(gates.shape[2]))
    return {"forward": result}, None
