"""Interventions on ONNX models: each edited ``LSTM``/``GRU``/``RNN`` node is run by rnnlens'
NumPy step loop (:func:`rnnlens.core.steploop.run_direction`) from its own weights, with the edits
applied after their steps, and the rest of the graph runs in ONNX Runtime on what it returns.

The edited nodes are taken in graph order. For each, ONNX Runtime runs a private copy of the
graph in which the nodes already edited are removed and their outputs (``Y``, ``Y_h``, ``Y_c``)
are graph inputs fed with the loop's values; it returns the node's inputs (``X``, weights,
``sequence_lens``, initial states). A last run of the copy with every edited node removed gives
the model's outputs and the states of the other nodes (as :func:`rnnlens.trace` reads them).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from ...core.cells import DirectionArrays
from ...core.edits import LayerEdits
from ...core.spec import Field
from ...core.steploop import run_direction
from ...errors import InputError, UnsupportedLayerError
from ..base import Edits, Intervened
from .deps import _first_line, _onnx, _ort
from .feeds import _signature
from .graph import _B, _C0, _H0, _P, _R, _SEQ_LENS, _W, _X, _Node, _Prepared
from .half import widened
from .quantized import quantized_run
from .runtime import QUANTIZED_THREADS
from .states import _batch_of, _cell_weights, _input_order, _lookup, _needs, quantized_cell

__all__ = ["cut_run", "edited_node", "intervene"]


def cut_run(
    prep: _Prepared, removed: Sequence[_Node], fetch: Sequence[str], feeds: Mapping[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """Run a copy of the graph without the ``removed`` nodes (their outputs fed from ``feeds``)
    and return ``fetch``. Names already in ``feeds`` or static are returned as they are."""
    onnx, ort = _onnx(), _ort()
    copy = onnx.ModelProto()
    copy.CopyFrom(prep.model)
    graph = copy.graph
    for node in prep.nodes:  # the private copy's output names (see runtime._session)
        if node.index < 0:
            continue
        proto = graph.node[node.index]
        del proto.output[:]
        proto.output.extend(node.outputs[: 3 if node.op == "LSTM" else 2])
    cut = {n.index for n in removed}
    fed = {name for n in removed for name in n.outputs if name}
    for index in sorted(cut, reverse=True):
        del graph.node[index]
    kept_outputs = [o for o in graph.output if o.name not in fed]
    del graph.output[:]
    graph.output.extend(kept_outputs)
    for name in sorted(fed):
        elem = onnx.helper.np_dtype_to_tensor_dtype(feeds[name].dtype)
        graph.input.append(onnx.helper.make_tensor_value_info(name, elem, None))
    have = {o.name for o in graph.output}
    inputs = {i.name for i in graph.input}
    wanted = [f for f in dict.fromkeys(fetch) if f and f not in feeds and f not in prep.static]
    for name in wanted:
        if name not in have and name not in inputs:
            graph.output.append(onnx.ValueInfoProto(name=name))
            have.add(name)
    options = ort.SessionOptions()
    options.log_severity_level = 4
    if any(n.quant for n in prep.nodes):  # a quantized node's h depends on the thread count
        options.intra_op_num_threads = QUANTIZED_THREADS
    run_feeds = {k: v for k, v in feeds.items() if k in inputs or k in fed}
    try:
        results = []
        if wanted:  # everything may be known already (a graph that is one edited node)
            session = ort.InferenceSession(
                copy.SerializeToString(), options, providers=["CPUExecutionProvider"]
            )
            results = session.run(wanted, run_feeds)
    except Exception as e:
        raise InputError(
            f"ONNX Runtime could not run the edited model ({type(e).__name__}: {_first_line(str(e))}). "
            f"The model's inputs are: {_signature(prep)}."
        ) from e
    got = dict(zip(wanted, results))
    for name in fetch:
        if name and name not in got:
            v = feeds.get(name)
            got[name] = v if v is not None else prep.value(name)  # type: ignore[assignment]
    return got


def edited_node(
    node: _Node, edits: LayerEdits, fields: tuple[Field, ...], tensor: Callable[[str], np.ndarray | None]
) -> tuple[dict[str, np.ndarray], dict[str, DirectionArrays], np.ndarray | None]:
    """The node run by the step loop with ``edits``: its outputs ``{Y, Y_h(, Y_c)}`` as ONNX
    Runtime would write them (zeros past ``sequence_lens``) and its states per direction."""
    if node.problem is not None:
        raise UnsupportedLayerError(
            f"Layer {node.name!r} ({node.op}) uses {node.problem}, which rnnlens' step loop does not "
            "compute, so it cannot be edited exactly."
        )
    if node.layout == 1:
        raise UnsupportedLayerError(
            f"Layer {node.name!r}: layout=1 nodes cannot be edited (ONNX Runtime refuses them)."
        )
    x = tensor(node.inputs[_X])
    w, r, b = tensor(node.inputs[_W]), tensor(node.inputs[_R]), tensor(node.inputs[_B])
    p = tensor(node.inputs[_P]) if node.op == "LSTM" and node.inputs[_P] else None
    if x is None or w is None or r is None:
        raise UnsupportedLayerError(f"Layer {node.name!r}: its input or weights could not be computed.")
    xb = np.ascontiguousarray(x.transpose(1, 0, 2))  # (time, batch, feature) -> batch-major
    n, t = xb.shape[:2]
    lens = tensor(node.inputs[_SEQ_LENS])
    mask = None if lens is None else np.arange(t)[None, :] < np.asarray(lens).reshape(-1)[:, None]
    h0s, c0s = tensor(node.inputs[_H0]), tensor(node.inputs[_C0])
    lstm = node.op == "LSTM"
    y = np.zeros((t, len(node.directions), n, node.hidden), x.dtype)
    y_h = np.zeros((len(node.directions), n, node.hidden), x.dtype)
    y_c = np.zeros_like(y_h)
    states: dict[str, DirectionArrays] = {}
    for d, direction in enumerate(node.directions):
        h0 = np.zeros((n, node.hidden), x.dtype) if h0s is None else h0s[d]
        c0 = None if c0s is None else c0s[d]
        ops_h = edits.steps(direction, "h", t, n, mask=mask)
        ops_c = edits.steps(direction, "c", t, n, mask=mask) if lstm else {}
        ops_w = edits.steps(direction, "write:" + ("c" if lstm else "h"), t, n, mask=mask)
        if node.quant:  # the quantized kernel's arithmetic (.quantized)
            cell = quantized_cell(node, d, w, r, b, p, tensor)
            arrays, seq_q, y_h[d], y_c[d] = quantized_run(
                cell, xb, h0, c0, lens, reverse=direction == "backward", edits_h=ops_h, edits_c=ops_c,
                edits_w=ops_w,
            )  # fmt: skip
            y[:, d] = seq_q.transpose(1, 0, 2)
            states[direction] = DirectionArrays(
                h=arrays.h,
                c=arrays.c if "c" in fields else None,
                gates=arrays.gates if "gates" in fields else None,
            )
            continue
        cw, xd = _cell_weights(node, d, w, r, b, p), xb
        if x.dtype == np.float16:  # ONNX Runtime runs float16 nodes in float32 (.half)
            cw, xd = widened(cw), xb.astype(np.float32)
            h0, c0 = h0.astype(np.float32), None if c0 is None else c0.astype(np.float32)
        res = run_direction(
            cw, xd, h0, c0, mask,
            reverse=direction == "backward", edits_h=ops_h, edits_c=ops_c, edits_w=ops_w,
        )  # fmt: skip
        seq = res.arrays.h if mask is None else np.where(mask[..., None], res.arrays.h, 0)
        y[:, d] = seq.transpose(1, 0, 2)
        y_h[d] = res.h_last
        if lstm and res.c_last is not None:
            y_c[d] = res.c_last
        arrays = res.arrays
        dtype = x.dtype  # float16: the loop's float32 states rounded as the node outputs them, as traced
        states[direction] = DirectionArrays(
            h=arrays.h.astype(dtype),
            c=arrays.c.astype(dtype) if "c" in fields and arrays.c is not None else None,
            gates=tuple(g.astype(dtype) for g in arrays.gates)
            if "gates" in fields and arrays.gates is not None
            else None,
        )
    outputs = {node.outputs[0]: y, node.outputs[1]: y_h}
    if lstm:
        outputs[node.outputs[2]] = y_c
    return outputs, states, mask


def intervene(
    prep: _Prepared,
    feeds: dict[str, np.ndarray],
    edits: Edits,
    chosen: Sequence[Any],
    want: Mapping[str, tuple[Field, ...]],
) -> Intervened:
    """Run the edited model: its outputs (a list, in graph output order, as
    ``InferenceSession.run`` returns them) and the states of the ``chosen`` layers."""
    from ..base import Captured

    nodes = {n.name: n for n in prep.nodes}
    for name in edits:
        if name not in nodes:
            raise UnsupportedLayerError(f"Layer {name!r} cannot be edited (a layer called several times?).")
    edited = sorted((nodes[name] for name in edits), key=lambda n: n.index)
    known: dict[str, np.ndarray] = {}
    loop_states: dict[str, tuple[dict[str, DirectionArrays], np.ndarray | None, Callable[[str], Any]]] = {}
    for k, node in enumerate(edited):
        need = [node.inputs[i] for i in (_X, _W, _R, _B, _SEQ_LENS, _H0, _C0)] + list(node.batch_gathers)
        need += list(node.quant)
        got = cut_run(prep, edited[:k], need, feeds | known)
        tensor = _lookup(got, feeds | known, prep)
        fields = want.get(node.name, ("h", "c", "gates"))
        outs, states, mask = edited_node(node, edits[node.name], fields, tensor)
        known.update(outs)
        loop_states[node.name] = (states, mask, tensor)
    rest = [s.name for s in chosen if s.name not in edits]
    need = [o.name for o in prep.model.graph.output]
    need += [n for name in rest for n in _needs(nodes[name], want[name])]
    got = cut_run(prep, edited, need, feeds | known)
    tensor = _lookup(got, feeds | known, prep)
    batch = {}
    for s in chosen:
        if s.name in loop_states:
            states, mask, t_lookup = loop_states[s.name]
            batch[s.name] = _input_order(nodes[s.name], states, mask, t_lookup)
        else:
            batch[s.name] = _batch_of(nodes[s.name], want[s.name], tensor)
    outputs = [tensor(o.name) for o in prep.model.graph.output]
    return Intervened(outputs=outputs, captured=Captured(list(chosen), [batch], backend="onnx"))
