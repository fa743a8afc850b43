"""The recurrent ops of a ``.tflite`` flatbuffer, read with the schema module TensorFlow ships.

Parsing runs no code from the file: :func:`analyse` reads the flatbuffer with
``tensorflow.lite.python.schema_py_generated`` (the object API) and finds, in the main subgraph,

* ``UNIDIRECTIONAL_SEQUENCE_LSTM`` ops (what a Keras 2 / ``tf_keras`` LSTM converts to): one
  forward direction each, or, where two of them follow the pattern a Keras ``Bidirectional``
  layer converts to (``REVERSE_V2`` on the time axis before and after one of them, both outputs
  joined by ``CONCATENATION``), one layer with a forward and a backward direction;
* ``BIDIRECTIONAL_SEQUENCE_LSTM`` ops (both directions in one op, no auxiliary input);
* ``UNIDIRECTIONAL_SEQUENCE_RNN`` ops (a simple RNN: ``h`` only);
* ``WHILE`` loops (a recurrent layer converted op by op: Keras 3 layers, GRU, SimpleRNN), which
  rnnlens cannot see into: :attr:`Graph.loops`.

Each LSTM direction is a :class:`Cell`: the tensor indices of its weights by role (TFLite's
input order, ``lstm_shared.h``), its state tensors, its output, and ``problem``: why rnnlens
cannot rebuild its ``c`` and gates exactly (quantized weights, layer normalisation, CIFG,
projection clipping, ...), or None.

Example:
    >>> ROLES[:4]
    ('input', 'input_to_input', 'input_to_forget', 'input_to_cell')
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ...core.optional import require
from ...core.spec import Kind, LayerSpec

__all__ = ["ROLES", "Cell", "Graph", "Layer", "analyse", "schema"]

#: the inputs of UNIDIRECTIONAL_SEQUENCE_LSTM, in order (one direction of BIDIRECTIONAL_SEQUENCE_LSTM
#: uses roles 1-17 the same way)
ROLES = (
    "input",
    "input_to_input", "input_to_forget", "input_to_cell", "input_to_output",
    "recurrent_to_input", "recurrent_to_forget", "recurrent_to_cell", "recurrent_to_output",
    "cell_to_input", "cell_to_forget", "cell_to_output",
    "input_bias", "forget_bias", "cell_bias", "output_bias",
    "projection", "projection_bias",
    "h0", "c0",
    "input_norm", "forget_norm", "cell_norm", "output_norm",
)  # fmt: skip
_FLOAT32, _TYPES = 0, {0: "float32", 1: "float16", 2: "int32", 3: "uint8", 4: "int64", 9: "int8", 7: "int16"}
#: TFLite's ActivationFunctionType: the LSTM's g and c activation, the RNN's output activation
ACTIVATIONS = {0: "linear", 1: "relu", 2: "relu_n1_to_1", 3: "relu6", 4: "tanh", 5: "sign_bit"}


def schema() -> Any:
    """TensorFlow's generated flatbuffer schema module (imports TensorFlow's lite package)."""
    return require("tensorflow.lite.python.schema_py_generated", purpose="Reading a .tflite model")


@dataclass
class Cell:
    """One direction of a fused op as the interpreter runs it."""

    op: int  #: operator index in the main subgraph
    roles: dict[str, int]  #: tensor index by role (absent: the op has no such input)
    output: int  #: tensor index of the per-step output
    out_slice: slice  #: the columns of ``output`` that are this direction's (merged BIDIRECTIONAL)
    time_major: bool
    activation: str
    #: the op reads its own input back to front (BIDIRECTIONAL_SEQUENCE_LSTM's backward half)
    op_reverse: bool = False
    #: the op's input is the layer's input reversed in time by a REVERSE_V2 (Keras' Bidirectional)
    graph_reverse: bool = False
    problem: str | None = None
    #: int8 weights with float activations (dynamic-range quantization): weight scale per tensor
    hybrid: dict[int, float] = field(default_factory=dict)
    asymmetric: bool = False  #: the hybrid kernel quantizes x and h with a zero point
    cell_clip: float | None = None  #: ``c`` is clipped to [-cell_clip, cell_clip] (0 in the file: None)
    cell_units: int = 0
    units: int = 0


@dataclass
class Layer:
    """A traced layer: one op (or a Keras Bidirectional pair of ops) and its directions."""

    name: str
    op_type: str
    kind: Kind
    cells: dict[str, Cell]  #: direction name -> cell

    @property
    def problem(self) -> str | None:
        return next((c.problem for c in self.cells.values() if c.problem), None)

    @property
    def spec(self) -> LayerSpec:
        cell = next(iter(self.cells.values()))
        fields: tuple[Any, ...] = ("h",) if self.problem or self.kind == "simple" else ("h", "c", "gates")
        return LayerSpec(
            self.name,
            self.kind,
            self.op_type,
            cell.units,
            tuple(self.cells),
            fields,
            cell_units=cell.cell_units,
            notes=() if self.problem is None else (f"h only: {self.problem}",),
        )


@dataclass
class Graph:
    """What :func:`analyse` found in a model's main subgraph."""

    layers: list[Layer]
    loops: list[str]  #: WHILE loops, "WHILE 'name' (body subgraph k)"
    inputs: list[int]  #: the subgraph's input tensors
    names: dict[int, str]  #: tensor index -> name
    shapes: dict[int, tuple[int, ...]]
    dtypes: dict[int, str]
    signature: dict[str, int] = field(default_factory=dict)  #: signature input name -> tensor


def _name(t: Any) -> str:
    n = t.name
    return n.decode() if isinstance(n, bytes) else str(n or "")


def analyse(content: bytes) -> Graph:
    """The recurrent ops of the ``.tflite`` flatbuffer ``content`` (see the module docstring)."""
    s = schema()
    model = s.ModelT.InitFromPackedBuf(content, 0)
    ops = {v: k for k, v in vars(s.BuiltinOperator).items() if not k.startswith("_")}
    sg = model.subgraphs[0]
    tensors = list(sg.tensors or [])
    names = {i: _name(t) for i, t in enumerate(tensors)}
    shapes = {
        i: tuple(int(d) for d in (t.shape if t.shape is not None else ())) for i, t in enumerate(tensors)
    }
    dtypes = {i: _TYPES.get(int(t.type), f"type {t.type}") for i, t in enumerate(tensors)}
    scales = {
        i: [float(v) for v in t.quantization.scale]
        for i, t in enumerate(tensors)
        if t.quantization is not None and t.quantization.scale is not None
    }

    def op_name(o: Any) -> str:
        code = model.operatorCodes[o.opcodeIndex]
        return str(ops.get(max(int(code.builtinCode), int(code.deprecatedBuiltinCode)), "CUSTOM"))

    def const(i: int) -> np.ndarray | None:
        data = model.buffers[tensors[i].buffer].data if i >= 0 else None
        if data is None or dtypes[i] not in ("int32", "int64"):
            return None
        return np.frombuffer(bytes(bytearray(data)), dtypes[i]).reshape(shapes[i])

    operators = list(sg.operators or [])
    kinds = [op_name(o) for o in operators]
    producer = {
        int(t): k for k, o in enumerate(operators) for t in (o.outputs if o.outputs is not None else [])
    }
    consumers: dict[int, list[int]] = {}
    for k, o in enumerate(operators):
        for t in o.inputs if o.inputs is not None else []:
            consumers.setdefault(int(t), []).append(k)

    def reversed_on(t: int, axis: int) -> int | None:
        """The tensor ``t`` reverses along ``axis`` with REVERSE_V2 (or None)."""
        k = producer.get(t)
        if k is None or kinds[k] != "REVERSE_V2":
            return None
        a = const(int(operators[k].inputs[1]))
        return int(operators[k].inputs[0]) if a is not None and a.reshape(-1).tolist() == [axis] else None

    layers: list[Layer] = []
    loops: list[str] = []
    for k, (o, kind) in enumerate(zip(operators, kinds)):
        ins = [int(v) for v in (o.inputs if o.inputs is not None else [])]
        outs = [int(v) for v in (o.outputs if o.outputs is not None else [])]
        opts = o.builtinOptions
        if kind == "WHILE":
            body = model.subgraphs[opts.bodySubgraphIndex]
            label = _name(body).removesuffix("_body") or "while"
            # tf_keras names the body just "while_body": the loop's tensors keep the layer's scope
            scopes = [names[t].rsplit("/", 1)[0] for t in [*ins, *outs] if t >= 0 and "/" in names[t]]
            where = f", layer scope {scopes[0]!r}" if "/" not in label and scopes else ""
            loops.append(f"WHILE {label!r} (body subgraph {opts.bodySubgraphIndex}{where})")
        elif kind == "UNIDIRECTIONAL_SEQUENCE_LSTM":
            roles = dict(zip(ROLES, ins))
            cell = Cell(
                k, roles, outs[0], slice(None), bool(opts.timeMajor), _act(opts.fusedActivationFunction)
            )
            _lstm_problem(cell, opts, shapes, dtypes, scales)
            layers.append(Layer(_layer_name(names[outs[0]]), kind, "lstm", {"forward": cell}))
        elif kind == "BIDIRECTIONAL_SEQUENCE_LSTM":
            layers.append(_bidirectional(k, ins, outs, opts, shapes, dtypes, names, scales))
        elif kind == "UNIDIRECTIONAL_SEQUENCE_RNN":
            roles = dict(zip(("input", "weights", "recurrent", "bias", "h0"), ins))
            cell = Cell(
                k, roles, outs[0], slice(None), bool(opts.timeMajor), _act(opts.fusedActivationFunction)
            )
            cell.units = cell.cell_units = shapes[roles["weights"]][0]
            layers.append(Layer(_layer_name(names[outs[0]]), kind, "simple", {"forward": cell}))
    layers = _pair_bidirectional(layers, operators, kinds, consumers, reversed_on, names)
    counts: Counter[str] = Counter()
    for lay in layers:  # unnamed layers: lstm_0, lstm_1, ..., rnn_0, ... in graph order
        if not lay.name:
            family = "rnn" if lay.kind == "simple" else "lstm"
            lay.name = f"{family}_{counts[family]}"
            counts[family] += 1
    seen: Counter[str] = Counter()
    for lay in layers:  # a name used twice gets "#1", "#2", ... (as ONNX nodes do)
        k = seen[lay.name]
        seen[lay.name] += 1
        lay.name = f"{lay.name}#{k}" if k else lay.name
    signature: dict[str, int] = {}
    for sd in model.signatureDefs or []:
        if not signature:  # the first signature (serving_default)
            signature = {_name(t): int(t.tensorIndex) for t in sd.inputs or []}
    inputs = [int(i) for i in (sg.inputs if sg.inputs is not None else [])]
    return Graph(layers, loops, inputs, names, shapes, dtypes, signature)


def _act(code: int) -> str:
    return ACTIVATIONS.get(int(code), f"activation {code}")


def _layer_name(tensor: str) -> str:
    """The output tensor's name where the converter kept one, else "" (numbered later): ``tfl.*``
    and a graph output's ``StatefulPartitionedCall:0`` are the converter's, not the layer's."""
    generic = not tensor or tensor.startswith("tfl.") or "PartitionedCall" in tensor
    return "" if generic else tensor


def _lstm_problem(
    cell: Cell,
    opts: Any,
    shapes: dict[int, tuple[int, ...]],
    dtypes: dict[int, str],
    scales: dict[int, list[float]],
) -> None:
    """Fill in the cell's sizes and ``problem``: what rnnlens' LSTM equations do not cover."""
    r = {k: v for k, v in cell.roles.items() if v >= 0}
    cell.cell_units = shapes[r["input_to_forget"]][0]
    cell.units = shapes[r["projection"]][0] if "projection" in r else cell.cell_units
    weights = [v for k, v in r.items() if k.startswith(("input_to", "recurrent_to"))]
    why = []
    hybrid = dtypes[r["input"]] == "float32" and all(
        dtypes[v] == "int8" and len(scales.get(v, [])) == 1 for v in weights
    )
    others = [v for k, v in r.items() if k not in ("input", "h0", "c0") and v not in weights]
    if hybrid and all(dtypes[v] == "float32" for v in others):
        cell.hybrid = {v: scales[v][0] for v in weights}
        cell.asymmetric = bool(getattr(opts, "asymmetricQuantizeInputs", False))
        if any(k.startswith(("cell_to", "projection")) or k.endswith("_norm") for k in r):
            why.append("peepholes, a projection or layer normalisation with int8 weights")
    elif any(dtypes[v] != "float32" for v in weights) or dtypes[r["input"]] != "float32":
        types = sorted({dtypes[v] for v in [*weights, r["input"]]})
        why.append(f"quantized weights or inputs ({', '.join(types)}: the integer kernel)")
    if "input_to_input" not in r:
        why.append("coupled input and forget gates (CIFG)")
    if any(k.endswith("_norm") for k in r):
        why.append("layer normalisation")
    if float(opts.cellClip or 0) > 0:
        cell.cell_clip = float(opts.cellClip)  # the converter sets 10 on every Keras LSTM
    if float(opts.projClip or 0) > 0 or "projection_bias" in r:
        why.append("a projection bias or clip")
    if "projection" in r and (any(k.startswith("cell_to") for k in r) or cell.cell_clip):
        why.append("peepholes or cell clipping together with a projection")
    if getattr(opts, "diagonalRecurrentTensors", False):
        why.append("diagonal recurrent weights")
    if cell.activation not in ("tanh", "linear", "relu", "relu6", "relu_n1_to_1"):
        why.append(f"the {cell.activation}")
    cell.problem = "; ".join(why) or None


def _bidirectional(
    k: int, ins: list[int], outs: list[int], opts: Any,
    shapes: dict[int, tuple[int, ...]], dtypes: dict[int, str], names: dict[int, str],
    scales: dict[int, list[float]],
) -> Layer:  # fmt: skip
    """One BIDIRECTIONAL_SEQUENCE_LSTM op: forward roles 1-17, backward 18-34, states 35-38."""
    merged = bool(opts.mergeOutputs)
    cells = {}
    for d, (first, h0, c0, out) in enumerate(((1, 35, 36, 0), (18, 37, 38, 1))):
        roles = {"input": ins[0], **dict(zip(ROLES[1:18], ins[first : first + 17]))}
        roles["h0"], roles["c0"] = ins[h0], ins[c0]
        cell = Cell(
            k,
            roles,
            outs[0 if merged else out],
            slice(None),
            bool(opts.timeMajor),
            _act(opts.fusedActivationFunction),
        )
        cell.op_reverse = d == 1
        _lstm_problem(cell, opts, shapes, dtypes, scales)
        if merged:
            cell.out_slice = slice(0, cell.units) if d == 0 else slice(cell.units, None)
        cells["backward" if d else "forward"] = cell
    aux = [v for v in ins[39:] if v >= 0]
    if aux:
        for cell in cells.values():
            cell.problem = "; ".join(filter(None, [cell.problem, "an auxiliary input"]))
    return Layer(_layer_name(names[outs[0]]), "BIDIRECTIONAL_SEQUENCE_LSTM", "lstm", cells)


def _pair_bidirectional(
    layers: list[Layer], operators: list[Any], kinds: list[str], consumers: dict[int, list[int]],
    reversed_on: Any, names: dict[int, str],
) -> list[Layer]:  # fmt: skip
    """Join the two UNIDIRECTIONAL_SEQUENCE_LSTM ops of a converted Keras ``Bidirectional`` layer:
    the backward op reads ``REVERSE_V2(x)``, its output is reversed back, and both are concatenated."""
    by_output = {
        lay.cells["forward"].output: lay for lay in layers if lay.op_type == "UNIDIRECTIONAL_SEQUENCE_LSTM"
    }
    out: list[Layer] = []
    used: set[int] = set()
    for lay in layers:
        if id(lay) in used:
            continue
        cell = lay.cells.get("forward")
        if lay.op_type != "UNIDIRECTIONAL_SEQUENCE_LSTM" or cell is None:
            out.append(lay)
            continue
        axis = 0 if cell.time_major else 1
        source = reversed_on(cell.roles["input"], axis)
        back = [c for c in consumers.get(cell.output, []) if kinds[c] == "REVERSE_V2"]
        partner = None
        if source is not None and len(back) == 1:
            undone = int(operators[back[0]].outputs[0])
            if reversed_on(undone, axis) == cell.output:
                for c in consumers.get(undone, []):
                    if kinds[c] != "CONCATENATION":
                        continue
                    joined = [int(v) for v in operators[c].inputs]
                    fw = by_output.get(joined[0]) if len(joined) == 2 and joined[1] == undone else None
                    if fw is not None and fw is not lay and fw.cells["forward"].roles["input"] == source:
                        partner = (fw, c)
        if partner is None:
            out.append(lay)
            continue
        fw, concat = partner
        used.add(id(fw))
        cell.graph_reverse = True
        concat_name = names[int(operators[concat].outputs[0])]
        name = concat_name.rsplit("/", 1)[0] if "/" in concat_name else fw.name
        pair = Layer(name, "Bidirectional(UNIDIRECTIONAL_SEQUENCE_LSTM)", "lstm",
                     {"forward": fw.cells["forward"], "backward": cell})  # fmt: skip
        out = [x for x in out if x is not fw]
        out.append(pair)
    return sorted(out, key=lambda lay: min(c.op for c in lay.cells.values()))
