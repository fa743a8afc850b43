"""Reading an ONNX graph: its recurrent nodes, its inputs and its static tensors, before anything runs.

:func:`_analyse` turns a ``ModelProto`` into a :class:`_Prepared`: one :class:`_Node` per
``LSTM``/``GRU``/``RNN``/``DynamicQuantizeLSTM`` node of the main graph, of model-local functions
(inlined) and of ``If`` branches (exposed, :mod:`.subgraphs`) — name, attributes, activations,
the reason its ``c`` and gates cannot be rebuilt if any, the ``Gather`` ops that reorder its
batch — the graph inputs to feed (:class:`_Input`) and the initializer and ``Constant``
tensors. It also holds the ONNX activation functions by their lower-case names and the input
positions of the recurrent ops.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ...core.kinds import KINDS
from ...core.spec import FIELDS_BY_KIND, Kind, LayerSpec
from ...errors import UnsupportedLayerError
from .deps import _onnx
from .runtime import QUANTIZED_THREADS, _session
from .subgraphs import expose_branches, inline, is_recurrent

_KINDS: dict[str, Kind] = {"LSTM": "lstm", "GRU": "gru", "RNN": "simple"}
_DEFAULT_ACTS = {"LSTM": ("sigmoid", "tanh", "tanh"), "GRU": ("sigmoid", "tanh"), "RNN": ("tanh",)}
# input positions of the ONNX recurrent ops
_X, _W, _R, _B, _SEQ_LENS, _H0, _C0, _P = range(8)


# --------------------------------------------------------------------------- activations


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))  # = 1 / (1 + e^-z) without overflow warnings


def _hard_sigmoid(z: np.ndarray) -> np.ndarray:
    return np.clip(0.2 * z + 0.5, 0.0, 1.0)  # ONNX HardSigmoid defaults alpha=0.2, beta=0.5


_ACTIVATIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "sigmoid": _sigmoid,
    "tanh": np.tanh,
    "relu": lambda z: np.maximum(z, 0.0),
    "softsign": lambda z: z / (1.0 + np.abs(z)),
    "softplus": lambda z: np.logaddexp(0.0, z),
    "hardsigmoid": _hard_sigmoid,
}


# --------------------------------------------------------------------------- the graph


@dataclass
class _Node:
    """One recurrent node, read from the graph (nothing run yet)."""

    index: int  # position in graph.node
    name: str  # the layer name
    op: str  # LSTM, GRU, RNN
    hidden: int
    direction: str  # forward, reverse, bidirectional
    layout: int
    linear_before_reset: int
    inputs: tuple[str, ...]  # padded with "" to 8
    activations: tuple[tuple[str, ...], ...]  # per direction, lower case
    problem: str | None  # why c and gates cannot be rebuilt (None: they can)
    outputs: tuple[str, str, str] = ("", "", "")  # Y, Y_h, Y_c in the private copy
    #: index tensors of ``Gather`` ops that reorder the batch between a graph input and this
    #: node, input side first (PyTorch exports ``enforce_sorted=False`` packing this way)
    batch_gathers: tuple[str, ...] = ()
    #: ``DynamicQuantizeLSTM``: the names of ``W_scale``, ``W_zero_point``, ``R_scale``,
    #: ``R_zero_point`` (its ``W``/``R`` are int8, input-major); empty for float nodes
    quant: tuple[str, ...] = ()
    #: a node inside ``If`` branches: (condition, then_branch?, If path) of each enclosing If;
    #: it ran when every condition had that value (:mod:`.subgraphs`)
    runs_if: tuple[tuple[str, bool, str], ...] = ()
    #: LSTM ``clip`` (gate pre-activations clipped to [-clip, clip]) and ``input_forget`` (f = 1 - i)
    clip: float | None = None
    input_forget: bool = False

    @property
    def inner(self) -> bool:
        """Inside an ``If`` branch (its tensors are lifted to the main graph)."""
        return bool(self.runs_if)

    def ran(self, tensor: Callable[[str], Any]) -> bool:
        """Whether the node's branch ran (always, for a main-graph node)."""
        return all(bool(np.asarray(tensor(c)).reshape(-1)[0]) == then for c, then, _ in self.runs_if)

    @property
    def kind(self) -> Kind:
        return _KINDS[self.op]

    @property
    def directions(self) -> tuple[str, ...]:
        return {
            "forward": ("forward",),
            "reverse": ("backward",),
            "bidirectional": ("forward", "backward"),
        }[self.direction]

    @property
    def spec(self) -> LayerSpec:
        fields = FIELDS_BY_KIND[self.kind] if self.problem is None else ("h",)
        notes = [] if self.problem is None else [f"h only: {self.problem}"]
        if self.quant:
            notes.append(
                "quantized: h is the kernel's own (ONNX Runtime on "
                f"{QUANTIZED_THREADS} intra-op thread); c and gates computed with the kernel's arithmetic "
                "(x and h quantized to uint8 as it does, integer products), checked at float32 tolerance"
            )
        if self.runs_if:
            notes.append("inside If branches: traced when its branch runs")
        cell_units = self.hidden if KINDS[self.kind].has_c else None
        layer_type = "DynamicQuantizeLSTM" if self.quant else self.op
        return LayerSpec(
            self.name, self.kind, layer_type, self.hidden, self.directions, fields, cell_units, tuple(notes)
        )


@dataclass
class _Input:
    name: str
    dtype: np.dtype
    shape: tuple[int | str | None, ...] | None  # None: rank unknown

    def show(self) -> str:
        dims = "?" if self.shape is None else ", ".join("?" if d is None else str(d) for d in self.shape)
        return f"{self.name}: {self.dtype} [{dims}]"


@dataclass
class _Prepared:
    """A model's recurrent nodes and, on first use, the ONNX Runtime session of its private copy."""

    model: Any  # a private ModelProto parsed from the user's model's bytes (never the user's object)
    nodes: list[_Node]
    others: list[str]  # names of the other nodes
    inputs: list[_Input]  # graph inputs that are not initializers
    static: dict[str, Any]  # initializer / Constant output name → TensorProto or array
    #: recurrent nodes rnnlens cannot run (inside Loop/Scan bodies; foreign recurrent ops), as
    #: "path (op: why)" for errors and describe
    hidden: list[str] = field(default_factory=list)
    _session: Any = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def value(self, name: str) -> np.ndarray | None:
        """A tensor known without running the graph, else None."""
        v = self.static.get(name)
        if v is None:
            return None
        if not isinstance(v, np.ndarray):
            v = self.static[name] = _onnx().numpy_helper.to_array(v)
        return v

    def session(self) -> Any:
        with self._lock:
            if self._session is None:
                self._session = _session(self)
            return self._session


def _attrs(node: Any) -> dict[str, Any]:
    helper = _onnx().helper
    out = {}
    for a in node.attribute:
        v = helper.get_attribute_value(a)
        if isinstance(v, bytes):
            v = v.decode()
        elif isinstance(v, list):
            v = [s.decode() if isinstance(s, bytes) else s for s in v]
        out[a.name] = v
    return out


def _constant(node: Any) -> Any:
    """The value of a ``Constant`` node (TensorProto or array), or None for a sparse one."""
    for a in node.attribute:
        if a.name == "value":
            return a.t
        if a.name == "value_float":
            return np.asarray(a.f, np.float32)
        if a.name == "value_int":
            return np.asarray(a.i, np.int64)
        if a.name == "value_floats":
            return np.asarray(list(a.floats), np.float32)
        if a.name == "value_ints":
            return np.asarray(list(a.ints), np.int64)
    return None


def _analyse(model: Any) -> _Prepared:
    """Read ``model`` (a private copy: functions are inlined and ``If`` branches holding
    recurrent nodes rewritten in place, see :mod:`.subgraphs`)."""
    onnx = _onnx()
    if model.functions:
        inlined = inline(model)
        model.CopyFrom(inlined)
    inners = expose_branches(model)
    graph = model.graph
    static: dict[str, Any] = {t.name: t for t in graph.initializer}
    for n in graph.node:
        if n.op_type == "Constant" and n.domain in ("", "ai.onnx") and n.output:
            value = _constant(n)
            if value is not None:
                static[n.output[0]] = value
    inputs = []
    for vi in graph.input:
        if vi.name in static:
            continue
        t = vi.type.tensor_type
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t.elem_type)) if t.elem_type else np.dtype("O")
        shape = None
        if t.HasField("shape"):
            shape = tuple(
                d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in t.shape.dim
            )
        inputs.append(_Input(vi.name, dtype, shape))
    nodes: list[_Node] = []
    others: list[str] = []
    counts: dict[str, int] = {}
    taken: dict[str, int] = {}

    def unique(name: str) -> str:
        if name in taken:
            taken[name] += 1
            return f"{name}#{taken[name]}"
        taken[name] = 0
        return name

    for i, n in enumerate(graph.node):
        if not is_recurrent(n):
            if n.name:
                others.append(n.name)
            continue
        op = _op(n)
        k = counts.get(op, 0)
        counts[op] = k + 1
        nodes.append(_read_node(i, unique(n.name or f"{op}_{k}"), n, static))
    used = {o for n in graph.node for o in n.output} | {i.name for i in graph.input} | set(static)
    producer = {o: n for n in graph.node for o in n.output if o}
    for node in nodes:
        node.outputs = _output_names(node, graph.node[node.index], used)
        node.batch_gathers = _batch_gathers(node.inputs[_X], 0 if node.layout else 1, producer, static)
    for inner in inners:
        node = _read_node(-1, unique(inner.name), inner.proto, inner.static)
        node.inputs = tuple(inner.lifted(v) for v in node.inputs)
        node.quant = tuple(inner.lifted(v) for v in node.quant)
        node.outputs = (*(inner.lifted(v) for v in inner.proto.output[:3]), "", "")[:3]  # type: ignore[assignment]
        node.runs_if = inner.runs_if
        nodes.append(node)
    return _Prepared(model, nodes, others, inputs, static, hidden=_hidden_recurrent(model))


def _op(n: Any) -> str:
    """The float op a recurrent node computes (``DynamicQuantizeLSTM`` is an ``LSTM``)."""
    return "LSTM" if n.op_type == "DynamicQuantizeLSTM" else n.op_type


#: recurrent ops rnnlens does not read (other quantized forms, ONNX Runtime's attention LSTM)
_FOREIGN_RECURRENT = {"QLinearLSTM", "DynamicQuantizeGRU", "AttnLSTM"}


def _hidden_recurrent(model: Any) -> list[str]:
    """Recurrent nodes outside what rnnlens runs (after functions are inlined and ``If``
    branches exposed): those in ``Loop`` / ``Scan`` bodies, at any depth, and foreign
    recurrent ops, as ``"path (op)"``."""
    onnx = _onnx()
    found: list[str] = []

    def walk(nodes: Any, path: str, looped: bool) -> None:
        for k, n in enumerate(nodes):
            label = n.name or f"{n.op_type}_{k}"
            if n.op_type in _FOREIGN_RECURRENT or (looped and is_recurrent(n)):
                why = "runs once per iteration of a Loop/Scan" if looped else "op not supported"
                found.append(f"{path}{label} ({n.domain + '.' if n.domain else ''}{n.op_type}: {why})")
            for a in n.attribute:
                inside = looped or n.op_type != "If"
                if a.type == onnx.AttributeProto.GRAPH:
                    walk(a.g.node, f"{path}{label}/{a.name}/", inside)
                elif a.type == onnx.AttributeProto.GRAPHS:
                    for j, g in enumerate(a.graphs):
                        walk(g.node, f"{path}{label}/{a.name}[{j}]/", inside)

    walk(model.graph.node, "", False)
    return found


_SAME_SHAPE = {
    "Identity",
    "Cast",
    "Relu",
    "Tanh",
    "Sigmoid",
    "Dropout",
    "Neg",
    "Abs",
    "Add",
    "Sub",
    "Mul",
    "Div",
}


def _batch_gathers(
    name: str, axis: int, producer: Mapping[str, Any], static: Mapping[str, Any]
) -> tuple[str, ...]:
    """Walk from a recurrent node's input back towards the graph inputs along the batch axis
    and collect the index tensors of ``Gather`` ops that reorder it (input side first).

    Only ops whose effect on that axis is certain are followed (``Transpose``, ``Gather``,
    ``Reshape`` keeping the leading dims, ``Squeeze``/``Unsqueeze`` with static axes,
    elementwise ops, earlier recurrent nodes); the walk stops at anything else.
    """
    found: list[str] = []
    seen: set[str] = set()
    while name and name in producer and name not in seen and name not in static:
        seen.add(name)
        n = producer[name]
        a = _attrs(n)
        op = n.op_type
        if op in _KINDS:  # an earlier recurrent node: its Y has the batch of its X
            layout = int(a.get("layout", 0))
            if list(n.output).index(name) != 0 or axis != (0 if layout else 2):
                break
            name, axis = n.input[0], 0 if layout else 1
        elif op == "Transpose" and "perm" in a:
            name, axis = n.input[0], int(a["perm"][axis])
        elif op == "Gather":
            g_axis = int(a.get("axis", 0))
            if n.input[0] in static:  # an embedding lookup: the batch comes from the indices
                if axis < g_axis:
                    break
                name, axis = n.input[1], axis - g_axis
            elif axis == g_axis and n.input[1] not in static:  # a runtime reordering of the batch
                found.append(n.input[1])
                name = n.input[0]
            elif axis < g_axis:
                name = n.input[0]
            else:
                break
        elif op == "Reshape":
            shape = static.get(n.input[1]) if len(n.input) > 1 else None
            if shape is None:
                break
            dims = shape if isinstance(shape, np.ndarray) else _onnx().numpy_helper.to_array(shape)
            if not (len(dims) > axis and np.all(np.asarray(dims[: axis + 1]) == 0)):
                break
            name = n.input[0]
        elif op in ("Squeeze", "Unsqueeze"):
            axes = a.get("axes")
            if axes is None and len(n.input) > 1 and n.input[1] in static:
                v = static[n.input[1]]
                axes = list(v if isinstance(v, np.ndarray) else _onnx().numpy_helper.to_array(v))
            if axes is None or any(int(k) < 0 for k in axes):
                break
            if op == "Squeeze":
                for k in sorted(int(k) for k in axes):
                    axis += k <= axis
            else:
                if axis in axes:
                    break
                axis -= sum(int(k) < axis for k in axes)
            name = n.input[0]
        elif op in _SAME_SHAPE:
            name = next((i for i in n.input if i and i not in static), "")
        else:
            break
    return tuple(reversed(found))


def _output_names(node: _Node, proto: Any, used: set[str]) -> tuple[str, str, str]:
    """``Y``, ``Y_h`` (and LSTM ``Y_c``): the node's own names, fresh ones where it left them out."""
    n_out = 3 if node.op == "LSTM" else 2
    names = list(proto.output[:n_out]) + [""] * (n_out - len(proto.output))
    for k in range(n_out):
        if not names[k]:
            base = f"rnnlens__{node.index}__{('Y', 'Y_h', 'Y_c')[k]}"
            fresh, j = base, 0
            while fresh in used:
                j += 1
                fresh = f"{base}_{j}"
            used.add(fresh)
            names[k] = fresh
    return (names[0], names[1], names[2] if n_out == 3 else "")


def _read_node(index: int, name: str, n: Any, static: Mapping[str, Any]) -> _Node:
    op = _op(n)
    a = _attrs(n)
    given_inputs = tuple(n.input) + ("",) * (12 - len(n.input))
    inputs = given_inputs[:8]
    quant = given_inputs[8:12] if n.op_type == "DynamicQuantizeLSTM" else ()
    direction = str(a.get("direction", "forward"))
    if direction not in ("forward", "reverse", "bidirectional"):
        raise UnsupportedLayerError(
            f"Node {name!r} ({op}) has direction={direction!r}; ONNX allows 'forward', 'reverse' or "
            "'bidirectional'. The model is invalid; re-export it."
        )
    n_dir = 2 if direction == "bidirectional" else 1
    hidden = a.get("hidden_size")
    if hidden is None:
        r = static.get(inputs[_R])
        dims = None if r is None else (r.shape if isinstance(r, np.ndarray) else tuple(r.dims))
        if dims is None:
            raise UnsupportedLayerError(
                f"Node {name!r} ({op}) has no hidden_size attribute and its R input {inputs[_R]!r} is "
                "computed in the graph, so rnnlens cannot tell its number of units. Re-export the model "
                "with hidden_size set (every common exporter sets it)."
            )
        hidden = int(dims[1] if n.op_type == "DynamicQuantizeLSTM" else dims[-1])
    n_act = len(_DEFAULT_ACTS[op])
    given = [s.lower() for s in a.get("activations", [])]
    acts = given or list(_DEFAULT_ACTS[op]) * n_dir
    if len(acts) == n_act and n_dir == 2:
        acts = acts * 2
    per_dir = tuple(tuple(acts[d * n_act : (d + 1) * n_act]) for d in range(n_dir))
    problems = []
    if op == "RNN" and "clip" in a:
        problems.append(f"clip={a.get('clip')} (clipped pre-activations)")
    if op == "GRU" and "clip" in a:
        problems.append(f"clip={a.get('clip')} (clipped pre-activations of a GRU)")
    if op != "RNN":
        if op == "GRU" and int(a.get("input_forget", 0)):
            problems.append("input_forget=1 on a GRU")
        if a.get("activation_alpha") or a.get("activation_beta"):
            problems.append("activation_alpha/activation_beta")
        unknown = sorted({f for d in per_dir for f in d if f not in _ACTIVATIONS})
        if unknown or len(acts) != n_act * n_dir:
            problems.append(f"activations {a.get('activations')} (rnnlens knows {sorted(_ACTIVATIONS)})")
        elif op == "LSTM" and any(d[1] != d[2] for d in per_dir):
            problems.append(f"different g and h activations {[d[1:] for d in per_dir]}")
    # LSTM peepholes P, clip and input_forget are in rnnlens' equations (rebuild_cell, steploop)
    clip = a.get("clip") if op == "LSTM" else None
    return _Node(
        index=index,
        name=name,
        op=op,
        hidden=int(hidden),
        direction=direction,
        layout=int(a.get("layout", 0)),
        linear_before_reset=int(a.get("linear_before_reset", 0)),
        inputs=inputs,
        activations=per_dir,
        problem="; ".join(problems) or None,
        quant=quant,
        clip=None if clip is None else float(clip),
        input_forget=op == "LSTM" and bool(int(a.get("input_forget", 0))),
    )
