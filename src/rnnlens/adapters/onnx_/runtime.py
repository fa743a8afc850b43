"""The ONNX Runtime session rnnlens runs: a copy of the analysed model (:class:`.graph._Prepared`)
in which every tensor rnnlens may need is a graph output, on the ``CPUExecutionProvider``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ...errors import UnsupportedModelError
from .deps import _first_line, _onnx, _ort

if TYPE_CHECKING:  # the analysis that asks for a session is its caller, never imported here
    from .graph import _Prepared

#: intra-op threads of a session that runs a ``DynamicQuantizeLSTM``: its kernel quantizes h per
#: block of ceil(batch / threads) samples (:mod:`.quantized`), so rnnlens fixes the count (one: one
#: block, the same numbers on every machine) to compute c and gates as the kernel did
QUANTIZED_THREADS = 1

__all__ = ["_session"]


def _session(prep: _Prepared) -> Any:
    """ONNX Runtime session of a copy with every tensor rnnlens may need made a graph output."""
    onnx, ort = _onnx(), _ort()
    copy = onnx.ModelProto()
    copy.CopyFrom(prep.model)
    graph = copy.graph
    outputs = {o.name for o in graph.output}
    feeds = {i.name for i in prep.inputs}

    def expose(name: str) -> None:
        if name and name not in outputs and name not in feeds and name not in prep.static:
            graph.output.append(onnx.ValueInfoProto(name=name))
            outputs.add(name)

    for node in prep.nodes:
        if node.index >= 0:  # a main-graph node (one in If branches has its names already)
            proto = graph.node[node.index]
            n_out = 3 if node.op == "LSTM" else 2
            del proto.output[:]
            proto.output.extend(node.outputs[:n_out])
        conds = (c for c, _, _ in node.runs_if)
        for name in (*node.outputs, *node.inputs, *node.batch_gathers, *node.quant, *conds):
            expose(name)
    options = ort.SessionOptions()
    options.log_severity_level = 4  # rnnlens raises its own errors
    if any(node.quant for node in prep.nodes):  # its h depends on the thread count
        options.intra_op_num_threads = QUANTIZED_THREADS
    try:
        return ort.InferenceSession(copy.SerializeToString(), options, providers=["CPUExecutionProvider"])
    except Exception as e:
        raise UnsupportedModelError(
            f"ONNX Runtime cannot run this model ({type(e).__name__}: {_first_line(str(e))}). "
            "Check that it runs with onnxruntime.InferenceSession on the CPU provider."
        ) from e
