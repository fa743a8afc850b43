"""Per-node states: ``h`` from ONNX Runtime's ``Y``, ``c`` and gates rebuilt from the node's weights.

:func:`_node_states` turns the tensors of one recurrent node into a
:class:`~rnnlens.core.cells.DirectionArrays` per direction (rebuilding ``c`` and gates with
:func:`~rnnlens.core.rebuild.reconstruct_direction` from :func:`_cell_weights`, the weights in canonical
gate order) and checks the last step against the node's own ``Y_h`` / ``Y_c``
(:func:`_check_last`); :func:`_input_order` puts the samples back in the order of the graph's
inputs, and :func:`_check_fields` refuses or warns about fields a node cannot give.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from ...core.cells import DirectionArrays, carry_forward, check_parity
from ...core.kinds import KINDS
from ...core.rebuild import reconstruct_direction
from ...core.spec import CellWeights, Field
from ...errors import RnnLensWarning, UnsupportedLayerError
from .graph import _ACTIVATIONS, _B, _C0, _H0, _P, _R, _SEQ_LENS, _W, _X, _Node
from .half import float32_direction
from .quantized import QuantizedCell, QuantizedWeights, quantized_direction
from .runtime import QUANTIZED_THREADS

_N_GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}
# ONNX LSTM blocks i, o, f, c → canonical i, f, g(=c), o; GRU z, r, h is already z, r, n
_LSTM_ORDER = (0, 2, 3, 1)


def _check_fields(nodes: Sequence[_Node], fields: str | Iterable[str] | None) -> None:
    asked = None if fields is None else ({fields} if isinstance(fields, str) else set(fields))
    for node in nodes:
        if node.problem is None or node.kind == "simple":
            continue
        if asked is None:
            warnings.warn(
                f"Layer {node.name!r} ({node.op}) gives h only: {node.problem}. rnnlens cannot rebuild "
                "its c and gates exactly; h comes straight from ONNX Runtime.",
                RnnLensWarning,
                stacklevel=4,
            )
        elif asked & {"c", "gates"}:
            raise UnsupportedLayerError(
                f"Layer {node.name!r} ({node.op}) uses {node.problem}, which rnnlens' equations do not "
                f"cover, so its {sorted(asked & {'c', 'gates'})} cannot be rebuilt exactly. Ask for "
                "fields=('h',) (straight from ONNX Runtime), or select other layers with layers=[...]."
            )


def _cell_weights(
    node: _Node, d: int, w: np.ndarray, r: np.ndarray, b: np.ndarray | None, p: np.ndarray | None = None
) -> CellWeights:
    """Direction ``d`` of the node's ``W``, ``R``, ``B`` (and LSTM peepholes ``P``, ONNX order
    i, o, f) in canonical gate order."""
    h = node.hidden
    if node.op == "LSTM":
        idx = np.concatenate([np.arange(k * h, (k + 1) * h) for k in _LSTM_ORDER])
    else:
        idx = np.arange(_N_GATES[node.op] * h)
    width = len(idx)
    acts = node.activations[d]
    return CellWeights(
        kind=node.kind,
        kernel=w[d][idx].T,
        recurrent_kernel=r[d][idx].T,
        bias=None if b is None else b[d][:width][idx],
        recurrent_bias=None if b is None else b[d][width:][idx],
        activation=_ACTIVATIONS[acts[1] if len(acts) > 1 else acts[0]],  # an RNN has one: f
        recurrent_activation=_ACTIVATIONS[acts[0]],
        # linear_before_reset=1 is r * (h U_n + Rb_n) (Keras reset_after, PyTorch);
        # 0 is (r * h) U_n + Rb_n, what cells computes for reset_after=False
        reset_after=bool(node.linear_before_reset),
        peepholes=None if p is None or not np.any(p[d]) else np.asarray(p[d]).reshape(3, h)[[0, 2, 1]],
        clip=node.clip,
        input_forget=node.input_forget,
    )


def _node_states(
    node: _Node, fields: tuple[Field, ...], tensor: Callable[[str], np.ndarray | None]
) -> tuple[dict[str, DirectionArrays], np.ndarray | None]:
    batch_major = node.layout == 1
    y = tensor(node.outputs[0])
    assert y is not None
    # Y: [time, direction, batch, unit] (layout 0) or [batch, time, direction, unit] (layout 1)
    y = y if batch_major else y.transpose(2, 0, 1, 3)
    n, t = y.shape[:2]

    def state(name: str) -> np.ndarray | None:  # [direction, batch, unit] / [batch, direction, unit]
        v = tensor(name)
        return None if v is None else (v if batch_major else v.transpose(1, 0, 2))

    lens = tensor(node.inputs[_SEQ_LENS])
    mask = None if lens is None else np.arange(t)[None, :] < np.asarray(lens).reshape(-1)[:, None]
    started = np.ones(n, bool) if lens is None else np.asarray(lens).reshape(-1) > 0
    y_h, y_c = state(node.outputs[1]), state(node.outputs[2])
    h0s, c0s = state(node.inputs[_H0]), state(node.inputs[_C0])
    rebuild = KINDS[node.kind].reconstructable and len(fields) > 1
    x = w = r = b = p = None
    if rebuild:
        x = tensor(node.inputs[_X])
        assert x is not None
        x = x if batch_major else x.transpose(1, 0, 2)
        w, r, b = tensor(node.inputs[_W]), tensor(node.inputs[_R]), tensor(node.inputs[_B])
        p = tensor(node.inputs[_P]) if node.op == "LSTM" and node.inputs[_P] else None
    tol = None
    out: dict[str, DirectionArrays] = {}
    for d, direction in enumerate(node.directions):
        reverse = direction == "backward"
        seq = y[:, :, d]
        h0 = h0s[:, d] if h0s is not None else np.zeros((n, node.hidden), y.dtype)
        c0 = c0s[:, d] if c0s is not None else None
        if rebuild and node.quant:
            assert x is not None
            cell = quantized_cell(node, d, w, r, b, p, tensor)
            arrays = quantized_direction(cell, x, seq, h0, c0, lens, reverse=reverse, layer=node.name)
        elif rebuild and y.dtype == np.float16:  # run in float32 by the kernel (.half)
            assert w is not None and r is not None and x is not None
            arrays = float32_direction(
                _cell_weights(node, d, w, r, b, p), x, seq, h0, c0, mask, reverse=reverse, layer=node.name
            )
            if "gates" not in fields:
                arrays.gates = None
        elif rebuild:
            assert w is not None and r is not None
            arrays = reconstruct_direction(
                _cell_weights(node, d, w, r, b, p),
                x,
                seq,
                h0,
                c0,
                mask,
                reverse=reverse,
                want_c=KINDS[node.kind].has_c,  # for the Y_c check even when only gates are asked
                want_gates="gates" in fields,
                layer=node.name,
                tol=tol,
            )
        else:
            flip = (lambda a: a[:, ::-1]) if reverse else (lambda a: a)
            arrays = DirectionArrays(
                h=flip(carry_forward(flip(seq), None if mask is None else flip(mask), h0))
            )
        _check_last(node, arrays.h, y_h, d, reverse, started, "h", "Y_h", None)
        if arrays.c is not None:
            _check_last(node, arrays.c, y_c, d, reverse, started, "c", "Y_c", tol)
            if "c" not in fields:
                arrays.c = None
        out[direction] = arrays
    return out, mask


def _input_order(
    node: _Node,
    arrays: dict[str, DirectionArrays],
    mask: np.ndarray | None,
    tensor: Callable[[str], np.ndarray | None],
) -> tuple[dict[str, DirectionArrays], np.ndarray | None]:
    """Put the samples back in the order of the graph's inputs where ``Gather`` ops reordered
    the batch before the node (``node.batch_gathers``)."""
    if not node.batch_gathers:
        return arrays, mask
    n = next(iter(arrays.values())).h.shape[0]
    order = np.arange(n)
    for name in node.batch_gathers:
        idx = tensor(name)
        idx = None if idx is None else np.asarray(idx).reshape(-1).astype(np.int64)
        if (
            idx is None
            or len(idx) != n
            or not np.array_equal(np.sort(np.where(idx < 0, idx + n, idx)), order)
        ):
            warnings.warn(
                f"Layer {node.name!r}: the graph selects samples with Gather before this node (not a "
                "reordering of the whole batch), so its states follow the node's own batch, which is "
                "not the order of the model's input.",
                RnnLensWarning,
                stacklevel=4,
            )
            return arrays, mask
        order = order[np.where(idx < 0, idx + n, idx)]
    inverse = np.argsort(order)  # node sample j is input sample order[j]

    def back(a: np.ndarray | None) -> np.ndarray | None:
        return None if a is None else a[inverse]

    for d in arrays.values():
        d.h = d.h[inverse]
        d.c = back(d.c)
        if d.gates is not None:
            d.gates = tuple(g[inverse] for g in d.gates)
    return arrays, back(mask)


def _check_last(
    node: _Node,
    seq: np.ndarray,
    final: np.ndarray | None,
    d: int,
    reverse: bool,
    started: np.ndarray,
    what: str,
    output: str,
    tol: tuple[float, float] | None,
) -> None:
    """The state after the last step must be the node's own ``Y_h`` / ``Y_c``."""
    if final is None:
        return
    last = seq[:, 0] if reverse else seq[:, -1]
    check_parity(
        final[:, d][started][:, None],
        last[started][:, None],
        None,
        layer=node.name,
        what=f"{what} after the last step (vs the node's own {output})",
        tol=tol,
    )


def _needs(node: _Node, fields: tuple[Field, ...]) -> list[str]:
    """The tensors :func:`_node_states` reads for ``node`` and ``fields``."""
    rebuild = KINDS[node.kind].reconstructable and len(fields) > 1
    names = [node.outputs[0], node.outputs[1], node.inputs[_SEQ_LENS], node.inputs[_H0]]
    if node.op == "LSTM":
        names += [node.outputs[2], node.inputs[_C0]]
    if rebuild:
        names += [node.inputs[_X], node.inputs[_W], node.inputs[_R], node.inputs[_B], *node.quant]
        if node.op == "LSTM":
            names.append(node.inputs[_P])
    conds = [c for c, _, _ in node.runs_if]
    return [n for n in [*names, *node.batch_gathers, *conds] if n]


def quantized_cell(
    node: _Node, d: int, w: Any, r: Any, b: Any, p: Any, tensor: Callable[[str], Any]
) -> QuantizedCell:
    """Direction ``d`` of a ``DynamicQuantizeLSTM`` node, for :mod:`.quantized`."""
    w_scale, w_zero, r_scale, r_zero = (tensor(n) for n in node.quant)
    dirs = np.asarray(w).shape[0]

    def per_direction(v: Any) -> Any:  # a scale or zero point: one per direction, or per column
        return None if v is None else np.asarray(v).reshape(dirs, -1)[d]

    return QuantizedCell(
        QuantizedWeights(np.asarray(w)[d], per_direction(w_scale), per_direction(w_zero)),
        QuantizedWeights(np.asarray(r)[d], per_direction(r_scale), per_direction(r_zero)),
        None if b is None else np.asarray(b)[d],
        None if p is None or not np.any(p[d]) else np.asarray(p)[d],
        tuple(_ACTIVATIONS[a] for a in node.activations[d]),
        clip=node.clip,
        input_forget=node.input_forget,
        threads=QUANTIZED_THREADS,
    )


def _batch_of(
    node: _Node, fields: tuple[Field, ...], tensor: Callable[[str], np.ndarray | None]
) -> tuple[dict[str, DirectionArrays], np.ndarray | None]:
    """One node's captured arrays (samples in the model input's order)."""
    return _input_order(node, *_node_states(node, fields, tensor), tensor)


def _lookup(
    got: Mapping[str, Any], feeds: Mapping[str, Any], prep: Any
) -> Callable[[str], np.ndarray | None]:
    """A tensor by name: what a run returned, else what was fed, else what the graph holds."""

    def tensor(name: str) -> np.ndarray | None:
        if not name:
            return None
        if got.get(name) is not None:
            return got[name]
        if name in feeds:
            return feeds[name]
        return prep.value(name)

    return tensor
