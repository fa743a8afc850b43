"""ONNX adapter: run the graph once with ONNX Runtime and read every ``LSTM``/``GRU``/``RNN`` node.

What is traced
--------------
Every ``LSTM``, ``GRU`` and ``RNN`` node of the model's main graph (nodes inside ``If``/
``Loop``/``Scan`` bodies or model-local functions are not): ``direction`` forward, reverse
(the layer's one direction is ``"backward"``) and bidirectional, ``initial_h`` /
``initial_c``, ``sequence_lens`` (it becomes ``States.mask``), GRU
``linear_before_reset`` 1 (PyTorch's form) and 0, and the activations ``Sigmoid``, ``Tanh``,
``Relu``, ``Softsign``, ``Softplus`` and ``HardSigmoid`` (ONNX default alpha 0.2, beta 0.5).
Weights ``W``, ``R``, ``B`` may be initializers, ``Constant`` nodes or computed tensors.
Data types are those ONNX Runtime's CPU kernels run: float32 and float16 (not float64).
``layout=1`` (batch-major) is read correctly, but ONNX Runtime (1.32) refuses to run it: an
:class:`~rnnlens.errors.UnsupportedModelError` that quotes its message.

Samples are in the order of the model's input: when the graph reorders the batch with
``Gather`` before a node (PyTorch exports ``pack_padded_sequence(..., enforce_sorted=False)``
as a sort by length), rnnlens follows the ``Gather`` ops back to the graph input and puts the
samples back (a ``Gather`` that drops or repeats samples gives a warning instead).

* ``h`` of every node comes straight from ONNX Runtime: the node's own ``Y`` output, made a
  graph output of a private copy of the model.
* ``c`` (LSTM) and the gates (LSTM ``i, f, g, o``; GRU ``z, r, n``) are rebuilt from the
  node's weights with :func:`rnnlens.cells.reconstruct_direction` (one batched matmul for the
  gates, an elementwise scan for ``c``) and checked against ``Y`` at every step and against
  the node's own last states ``Y_h`` / ``Y_c``: a mismatch is a
  :class:`~rnnlens.errors.ParityError`, never returned.
* ONNX gate orders are converted: LSTM ``i, o, f, c`` → ``i, f, g, o``; GRU ``z, r, h`` →
  ``z, r, n``. ``B`` holds the input and the recurrent bias; both are kept apart, so a GRU
  with ``linear_before_reset=1`` keeps its recurrent candidate bias inside ``r * (...)``.
* A node rnnlens cannot rebuild exactly (peepholes ``P`` that are not all zero,
  ``input_forget=1``, ``clip``, ``activation_alpha``/``activation_beta`` or other
  activations, an LSTM whose ``g`` and ``h`` activations differ) still gives ``h``: with
  ``fields=None`` the others are left out with a :class:`~rnnlens.errors.RnnLensWarning`;
  asking for ``c`` or gates is an :class:`~rnnlens.errors.UnsupportedLayerError`.
  :func:`describe` lists such nodes with fields ``h`` and the reason in ``notes``.

Names
-----
A layer is named after its node (``node.name``); an unnamed node is ``"<op>_<k>"``, ``k``
counting the nodes of that op in graph order (``"LSTM_0"``, ``"GRU_1"``). A name used twice
gets ``"#1"``, ``"#2"``, ... PyTorch's ``num_layers=2`` exports two nodes: two layers.

Inputs
------
``trace(model, x, *args, **kwargs)`` feeds the graph's inputs (those that are not
initializers): ``x`` is one array for the first input, a list/tuple of arrays for the first
few inputs in graph order, or a dict ``{input name: array}``; further positional arguments
continue the order and keyword arguments are inputs by name (``trace(m, x, lengths=L)``).
Arrays may be NumPy arrays or CPU tensors of any framework; a float array is cast to the
input's float type (float64 → float32), like Keras does. ``mask=`` and ``batch_size=`` are
refused: valid steps come from each node's ``sequence_lens``, and the graph runs once on the
inputs as given. :func:`rnnlens.extract_to` (``rnnlens extract model.onnx data.npy``) splits
the data along its first axis, so it needs a graph whose inputs are batch-first with a free
batch size (``torch.onnx.export(..., dynamic_axes={"x": {0: "batch"}})`` of a
``batch_first=True`` model).

The model
---------
``model`` is an ``onnx.ModelProto`` or a path to a ``.onnx`` file (opened with
:func:`rnnlens.load_model`: ``onnx.load`` and ``onnx.checker``). Neither is modified: the
graph outputs are added to a copy parsed from the model's serialized bytes. The ONNX Runtime
session (``CPUExecutionProvider``) of that copy is cached by the model's content (sha256), so
tracing the same model batch after batch builds it once.

Example:
    >>> import numpy as np, onnx, rnnlens
    >>> from onnx import TensorProto, helper, numpy_helper
    >>> rng = np.random.default_rng(0)
    >>> w = numpy_helper.from_array(rng.normal(size=(1, 16, 3)).astype("float32"), "W")
    >>> r = numpy_helper.from_array(rng.normal(size=(1, 16, 4)).astype("float32"), "R")
    >>> node = helper.make_node("LSTM", ["x", "W", "R"], ["Y"], hidden_size=4, name="enc")
    >>> graph = helper.make_graph(
    ...     [node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, None, 3])],
    ...     [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)], [w, r])
    >>> model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    >>> states = rnnlens.trace(model, np.ones((5, 2, 3), "float32"))  # layout 0: (time, batch, feature)
    >>> states["enc"].h.shape, states["enc"].c.shape, list(states["enc"].gates)
    ((2, 5, 4), (2, 5, 4), ['i', 'f', 'g', 'o'])
"""

from __future__ import annotations

import hashlib
import os
import threading
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ...cells import DirectionArrays, carry_forward, check_parity, reconstruct_direction
from ...errors import (
    InputError,
    ModelFileError,
    RnnLensWarning,
    UnsupportedLayerError,
    UnsupportedModelError,
    suggest,
)
from ...spec import FIELDS_BY_KIND, CellWeights, Field, Kind, LayerSpec
from ...tracing import resolve_fields, select_layers
from ..base import Captured, TraceOptions

__all__ = ["capture", "describe", "load_model", "weight_arrays"]

_KINDS: dict[str, Kind] = {"LSTM": "lstm", "GRU": "gru", "RNN": "simple"}
_N_GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}
_DEFAULT_ACTS = {"LSTM": ("sigmoid", "tanh", "tanh"), "GRU": ("sigmoid", "tanh"), "RNN": ("tanh",)}
# input positions of the ONNX recurrent ops
_X, _W, _R, _B, _SEQ_LENS, _H0, _C0, _P = range(8)
# ONNX LSTM blocks i, o, f, c → canonical i, f, g(=c), o; GRU z, r, h is already z, r, n
_LSTM_ORDER = (0, 2, 3, 1)
_CACHE_SIZE = 4


def _onnx() -> Any:
    try:
        import onnx
    except ImportError as e:
        from ...errors import MissingDependencyError

        raise MissingDependencyError(
            f"ONNX models need the optional package 'onnx', which is not installed ({e}). "
            "Install it with: pip install 'rnnlens[onnx]'"
        ) from None
    return onnx


def _ort() -> Any:
    try:
        import onnxruntime
    except ImportError as e:
        from ...errors import MissingDependencyError

        raise MissingDependencyError(
            f"Tracing an ONNX model needs the optional package 'onnxruntime', which is not installed "
            f"({e}). Install it with: pip install 'rnnlens[onnx]'"
        ) from None
    return onnxruntime


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
        notes = () if self.problem is None else (f"h only: {self.problem}",)
        cell_units = self.hidden if self.kind == "lstm" else None
        return LayerSpec(
            self.name, self.kind, self.op, self.hidden, self.directions, fields, cell_units, notes
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
    onnx = _onnx()
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
    for i, n in enumerate(graph.node):
        if n.op_type not in _KINDS or n.domain not in ("", "ai.onnx"):
            if n.name:
                others.append(n.name)
            continue
        k = counts.get(n.op_type, 0)
        counts[n.op_type] = k + 1
        name = n.name or f"{n.op_type}_{k}"
        if name in taken:
            taken[name] += 1
            name = f"{name}#{taken[name]}"
        else:
            taken[name] = 0
        nodes.append(_read_node(i, name, n, static))
    used = {o for n in graph.node for o in n.output} | {i.name for i in graph.input} | set(static)
    producer = {o: n for n in graph.node for o in n.output if o}
    for node in nodes:
        node.outputs = _output_names(node, graph.node[node.index], used)
        node.batch_gathers = _batch_gathers(node.inputs[_X], 0 if node.layout else 1, producer, static)
    return _Prepared(model, nodes, others, inputs, static)


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
    op = n.op_type
    a = _attrs(n)
    inputs = tuple(n.input) + ("",) * (8 - len(n.input))
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
        hidden = int(dims[-1])
    n_act = len(_DEFAULT_ACTS[op])
    given = [s.lower() for s in a.get("activations", [])]
    acts = given or list(_DEFAULT_ACTS[op]) * n_dir
    if len(acts) == n_act and n_dir == 2:
        acts = acts * 2
    per_dir = tuple(tuple(acts[d * n_act : (d + 1) * n_act]) for d in range(n_dir))
    problems = []
    if op != "RNN":
        if "clip" in a:
            problems.append(f"clip={a.get('clip')} (clipped pre-activations)")
        if int(a.get("input_forget", 0)):
            problems.append("input_forget=1 (coupled input and forget gates)")
        if a.get("activation_alpha") or a.get("activation_beta"):
            problems.append("activation_alpha/activation_beta")
        unknown = sorted({f for d in per_dir for f in d if f not in _ACTIVATIONS})
        if unknown or len(acts) != n_act * n_dir:
            problems.append(f"activations {a.get('activations')} (rnnlens knows {sorted(_ACTIVATIONS)})")
        elif op == "LSTM" and any(d[1] != d[2] for d in per_dir):
            problems.append(f"different g and h activations {[d[1:] for d in per_dir]}")
        if op == "LSTM" and inputs[_P]:
            p = static.get(inputs[_P])
            if p is None:
                problems.append("peepholes P computed in the graph")
            else:
                pv = p if isinstance(p, np.ndarray) else _onnx().numpy_helper.to_array(p)
                if np.any(pv != 0):
                    problems.append("peepholes P (c feeds the gates; not in rnnlens' LSTM equations)")
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
    )


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
        proto = graph.node[node.index]
        n_out = 3 if node.op == "LSTM" else 2
        del proto.output[:]
        proto.output.extend(node.outputs[:n_out])
        for name in (*node.outputs, *node.inputs, *node.batch_gathers):
            expose(name)
    options = ort.SessionOptions()
    options.log_severity_level = 4  # rnnlens raises its own errors
    try:
        return ort.InferenceSession(copy.SerializeToString(), options, providers=["CPUExecutionProvider"])
    except Exception as e:
        raise UnsupportedModelError(
            f"ONNX Runtime cannot run this model ({type(e).__name__}: {_first_line(str(e))}). "
            "Check that it runs with onnxruntime.InferenceSession on the CPU provider."
        ) from e


_CACHE: OrderedDict[str, _Prepared] = OrderedDict()
_CACHE_LOCK = threading.Lock()


def _model(model: Any) -> Any:
    """The ``ModelProto`` of ``model`` (a path is opened with :func:`rnnlens.load_model`)."""
    if isinstance(model, (str, os.PathLike)):
        return load_model(model)
    onnx = _onnx()
    if not isinstance(model, onnx.ModelProto):
        raise UnsupportedModelError(
            f"Expected an onnx.ModelProto or a path to a .onnx file; received "
            f"{type(model).__module__}.{type(model).__name__}. Load the model with onnx.load(path) "
            "or pass the path."
        )
    return model


def _prepare(model: Any) -> _Prepared:
    proto = _model(model)
    try:
        data = proto.SerializeToString()
    except Exception as e:  # protobuf refuses messages over 2 GiB
        raise UnsupportedModelError(
            f"Could not serialize the ONNX model ({type(e).__name__}: {_first_line(str(e))}); models "
            "over 2 GiB must keep their weights as external data, which rnnlens does not support yet."
        ) from e
    key = hashlib.sha256(data).hexdigest()
    with _CACHE_LOCK:
        if key in _CACHE:
            _CACHE.move_to_end(key)
            return _CACHE[key]
    own = _onnx().ModelProto()
    own.ParseFromString(data)
    prep = _analyse(own)
    with _CACHE_LOCK:
        _CACHE[key] = prep
        while len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)
    return prep


# --------------------------------------------------------------------------- public


def describe(model: Any) -> list[LayerSpec]:
    """The ``LSTM``/``GRU``/``RNN`` nodes of ``model`` (an ``onnx.ModelProto`` or a ``.onnx`` path)."""
    return [n.spec for n in _prepare(model).nodes]


def load_model(path: str | os.PathLike[str]) -> Any:
    """Open a ``.onnx`` file with ``onnx.load`` and validate it with ``onnx.checker``.

    Raises :class:`~rnnlens.errors.ModelFileError` for a file that is not a valid ONNX model.
    """
    onnx = _onnx()
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"No model file at {str(path)!r}.")
    try:
        model = onnx.load(str(p))
    except Exception as e:  # protobuf's DecodeError, or a missing external-data file
        raise ModelFileError(
            f"Could not read {p.name} as an ONNX model ({type(e).__name__}: {_first_line(str(e))}). "
            "The file may be truncated or corrupt; export it again (torch.onnx.export, tf2onnx)."
        ) from e
    try:
        # The path form also checks models whose weights live in external data files.
        onnx.checker.check_model(str(p))
    except Exception as e:
        raise ModelFileError(
            f"{p.name} is not a valid ONNX model: onnx.checker says {type(e).__name__}: "
            f"{_first_line(str(e))}. The file may be truncated or corrupt; export it again."
        ) from e
    return model


def weight_arrays(model: Any) -> list[np.ndarray]:
    """Every initializer and ``Constant`` tensor of the main graph, in graph order (for hashing)."""
    proto = _model(model)
    to_array = _onnx().numpy_helper.to_array
    out = [np.asarray(to_array(t)) for t in proto.graph.initializer]
    for n in proto.graph.node:
        if n.op_type == "Constant":
            v = _constant(n)
            if v is not None:
                out.append(np.asarray(v if isinstance(v, np.ndarray) else to_array(v)))
    return out


def capture(model: Any, args: tuple[Any, ...], kwargs: Mapping[str, Any], options: TraceOptions) -> Captured:
    """ONNX implementation of :meth:`rnnlens.adapters.Adapter.capture`: one ONNX Runtime run
    of a copy of ``model``.

    ``args`` and ``kwargs`` are the graph's inputs (see the module docstring); ``strategy``
    is ``"auto"`` or ``"reconstruct"`` (what ONNX always does: ``h`` from ONNX Runtime, ``c``
    and gates rebuilt and checked).
    """
    layers, fields = options.layers, options.fields
    if options.mask is not None:
        raise InputError(
            "mask= is not used for ONNX models: each LSTM/GRU/RNN node takes its valid steps from its "
            "sequence_lens input, computed by the graph. Feed the lengths as the graph input that "
            "produces it (trace(model, x, lengths=...)); without sequence_lens every step is valid."
        )
    if options.batch_size is not None:
        raise InputError(
            "batch_size= is not used for ONNX models: the graph runs once on the inputs as given (rnnlens "
            "cannot know which axis of each input is the batch). Split large inputs yourself and trace "
            "each part, or use rnnlens.extract_to."
        )
    if not args and not kwargs:
        raise InputError(f"No inputs given; the model's inputs are: {_signature(_prepare(model))}.")
    x, rest = (args[0], args[1:]) if args else (None, ())
    prep = _prepare(model)
    if not prep.nodes:
        raise UnsupportedLayerError(
            "The ONNX graph has no LSTM, GRU or RNN node (nodes inside If/Loop/Scan bodies and "
            "functions are not searched). An exporter may have unrolled the recurrence into MatMul "
            "ops: torch.onnx.export(dynamo=True) does so for nn.RNN; export with dynamo=False."
        )
    specs = {n.name: n.spec for n in prep.nodes}
    chosen = select_layers(list(specs.values()), layers, other_layers=prep.others)
    nodes = {n.name: n for n in prep.nodes}
    _check_fields([nodes[s.name] for s in chosen], fields)
    want = resolve_fields(chosen, fields)
    feeds = _feeds(prep, x, rest, kwargs)
    session = prep.session()

    needs: dict[str, list[str]] = {}
    for s in chosen:
        node = nodes[s.name]
        rebuild = node.kind in ("lstm", "gru") and len(want[s.name]) > 1
        names = [node.outputs[0], node.outputs[1], node.inputs[_SEQ_LENS], node.inputs[_H0]]
        if node.op == "LSTM":
            names += [node.outputs[2], node.inputs[_C0]]
        if rebuild:
            names += [node.inputs[_X], node.inputs[_W], node.inputs[_R], node.inputs[_B]]
        needs[s.name] = [n for n in [*names, *node.batch_gathers] if n]
    fetch = list(
        dict.fromkeys(n for ns in needs.values() for n in ns if n not in feeds and n not in prep.static)
    )
    try:
        results = session.run(fetch, feeds)
    except Exception as e:
        raise InputError(
            f"ONNX Runtime could not run the model on these inputs ({type(e).__name__}: "
            f"{_first_line(str(e))}). The model's inputs are: {_signature(prep)}."
        ) from e
    got: dict[str, np.ndarray] = dict(zip(fetch, results))

    def tensor(name: str) -> np.ndarray | None:
        if not name:
            return None
        if name in got:
            return got[name]
        if name in feeds:
            return feeds[name]
        return prep.value(name)

    batch = {
        s.name: _input_order(nodes[s.name], *_node_states(nodes[s.name], want[s.name], tensor), tensor)
        for s in chosen
    }
    return Captured(chosen, [batch], backend="onnx")


# --------------------------------------------------------------------------- per node


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


def _cell_weights(node: _Node, d: int, w: np.ndarray, r: np.ndarray, b: np.ndarray | None) -> CellWeights:
    """Direction ``d`` of the node's ``W``, ``R``, ``B`` in canonical gate order."""
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
        activation=_ACTIVATIONS[acts[1]],
        recurrent_activation=_ACTIVATIONS[acts[0]],
        # linear_before_reset=1 is r * (h U_n + Rb_n) (Keras reset_after, PyTorch);
        # 0 is (r * h) U_n + Rb_n, what cells computes for reset_after=False
        reset_after=bool(node.linear_before_reset),
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
    rebuild = node.kind in ("lstm", "gru") and len(fields) > 1
    x = w = r = b = None
    if rebuild:
        x = tensor(node.inputs[_X])
        assert x is not None
        x = x if batch_major else x.transpose(1, 0, 2)
        w, r, b = tensor(node.inputs[_W]), tensor(node.inputs[_R]), tensor(node.inputs[_B])
    out: dict[str, DirectionArrays] = {}
    for d, direction in enumerate(node.directions):
        reverse = direction == "backward"
        seq = y[:, :, d]
        h0 = h0s[:, d] if h0s is not None else np.zeros((n, node.hidden), y.dtype)
        c0 = c0s[:, d] if c0s is not None else None
        if rebuild:
            assert w is not None and r is not None
            arrays = reconstruct_direction(
                _cell_weights(node, d, w, r, b),
                x,
                seq,
                h0,
                c0,
                mask,
                reverse=reverse,
                want_c=node.kind == "lstm",  # for the Y_c check even when only gates are asked
                want_gates="gates" in fields,
                layer=node.name,
            )
        else:
            flip = (lambda a: a[:, ::-1]) if reverse else (lambda a: a)
            arrays = DirectionArrays(
                h=flip(carry_forward(flip(seq), None if mask is None else flip(mask), h0))
            )
        _check_last(node, arrays.h, y_h, d, reverse, started, "h", "Y_h")
        if arrays.c is not None:
            _check_last(node, arrays.c, y_c, d, reverse, started, "c", "Y_c")
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
    )


# --------------------------------------------------------------------------- inputs


def _signature(prep: _Prepared) -> str:
    return "; ".join(i.show() for i in prep.inputs) or "none"


def _array(v: Any) -> np.ndarray:
    if hasattr(v, "detach"):  # torch
        v = v.detach().cpu().numpy()
    elif hasattr(v, "numpy") and not isinstance(v, np.ndarray):  # TensorFlow, JAX
        v = v.numpy()
    return np.asarray(v)


def _feeds(prep: _Prepared, x: Any, args: Sequence[Any], kwargs: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """``{input name: array}`` from ``x``, ``*args`` and ``**kwargs``, checked against the graph."""
    names = [i.name for i in prep.inputs]
    given: dict[str, Any] = {}
    if isinstance(x, Mapping):
        if args:
            raise InputError(
                "Pass the model's inputs either as one dict {name: array} or positionally, not both; "
                f"received a dict and {len(args)} more positional argument(s)."
            )
        given.update(x)
    else:
        positional = [*(x if isinstance(x, (list, tuple)) else [] if x is None else [x]), *args]
        if len(positional) > len(names):
            raise InputError(
                f"Received {len(positional)} positional input(s); the model has {len(names)}: "
                f"{_signature(prep)}. A list or tuple x means several inputs; pass one array for one input."
            )
        given.update(zip(names, positional))
    for k, v in kwargs.items():
        if k in given:
            raise InputError(f"Input {k!r} is given twice (positionally and by name). Pass it once.")
        given[k] = v
    for k in given:
        if k not in names:
            hint = suggest(str(k), names)
            raise InputError(
                f"The model has no input named {k!r}. Expected inputs: {_signature(prep)}."
                + (f" Did you mean {hint!r}?" if hint else "")
            )
    missing = [n for n in names if n not in given]
    if missing:
        raise InputError(
            f"Missing model input(s) {missing}. The model's inputs are: {_signature(prep)}; pass them "
            "positionally in this order, by name (trace(model, x, name=array)) or as a dict."
        )
    return {i.name: _convert(i, given[i.name]) for i in prep.inputs}


def _convert(spec: _Input, value: Any) -> np.ndarray:
    a = _array(value)
    want = spec.dtype
    if a.dtype != want and want != np.dtype("O"):
        same_kind = (a.dtype.kind == "f" and want.kind == "f") or (
            a.dtype.kind in "iub" and want.kind in "iu"
        )
        if not same_kind:
            raise InputError(
                f"Input {spec.name!r} has dtype {a.dtype}; the model expects {want} "
                f"({spec.show()}). Convert it, e.g. x.astype({str(want)!r})."
            )
        a = a.astype(want)
    if spec.shape is not None:
        bad = a.ndim != len(spec.shape) or any(
            isinstance(d, int) and d > 0 and d != s for d, s in zip(spec.shape, a.shape)
        )
        if bad:
            raise InputError(
                f"Input {spec.name!r} has shape {a.shape}; the model expects {spec.show()} "
                "(? and names are free). Check the axis order: an exported PyTorch model without "
                "batch_first takes (time, batch, feature)."
            )
    return np.ascontiguousarray(a)


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else "no message"
