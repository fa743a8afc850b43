"""ONNX adapter: run the graph once with ONNX Runtime and read every ``LSTM``/``GRU``/``RNN`` node.

What is traced
--------------
Every ``LSTM``, ``GRU`` and ``RNN`` node of the model's main graph, of model-local functions
(inlined with ``onnx.inliner``; such nodes are named as it names them) and of ``If`` branches at
any depth (named by their path, ``"rate_switch/then_branch/inner_if/else_branch/lstm_8k"``;
the branch that runs for the given inputs is traced, see :mod:`.subgraphs`), and ONNX
Runtime's quantized ``com.microsoft.DynamicQuantizeLSTM`` (what ``quantize_dynamic`` writes):
its ``h`` is the kernel's own (run on ``runtime.QUANTIZED_THREADS`` intra-op thread), ``c`` and
gates are computed with the kernel's arithmetic (:mod:`.quantized`: ``x`` and ``h`` quantized to
uint8 as it does, integer products) at the kernel's ``h`` and checked at float32 tolerance.
Nodes inside ``Loop``/``Scan`` bodies (they run once per iteration) are named in an
:class:`~rnnlens.errors.UnsupportedLayerError`; :func:`rnnlens.describe` lists them under its
table. :func:`rnnlens.intervene` and :func:`rnnlens.record` take main-graph nodes only (an edited
quantized node runs with its kernel's arithmetic, :func:`.quantized.quantized_run`).
Supported: ``direction`` forward, reverse
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
  node's weights with :func:`rnnlens.core.rebuild.reconstruct_direction` (one batched matmul for the
  gates, an elementwise scan for ``c``) and checked against ``Y`` at every step and against
  the node's own last states ``Y_h`` / ``Y_c``: a mismatch is a
  :class:`~rnnlens.errors.ParityError`, never returned.
* ONNX gate orders are converted: LSTM ``i, o, f, c`` → ``i, f, g, o``; GRU ``z, r, h`` →
  ``z, r, n``. ``B`` holds the input and the recurrent bias; both are kept apart, so a GRU
  with ``linear_before_reset=1`` keeps its recurrent candidate bias inside ``r * (...)``.
* LSTM peepholes ``P``, ``clip`` and ``input_forget=1`` are rebuilt in ONNX Runtime's order
  (:mod:`rnnlens.core.rebuild_cell`), checked against the node's ``h`` like any other.
* A node rnnlens cannot rebuild exactly (``clip`` on a GRU or RNN,
  ``activation_alpha``/``activation_beta`` or other
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

from collections.abc import Mapping
from typing import Any

import numpy as np

from ...core.spec import Field, LayerSpec
from ...core.tracing import resolve_fields, select_layers
from ...errors import InputError, UnsupportedLayerError
from ..base import Args, Captured, Edits, Intervened, Kwargs, TraceOptions
from . import intervene as onnx_intervene
from .deps import _first_line, _onnx
from .feeds import _feeds, _signature
from .graph import _constant
from .session import _model, _prepare, load_model  # onnx_/__init__.py calls trace._model, trace.load_model
from .states import _batch_of, _check_fields, _lookup, _needs

__all__ = ["capture", "describe", "intervene", "load_model", "weight_arrays"]


def describe(model: Any) -> list[LayerSpec]:
    """The ``LSTM``/``GRU``/``RNN`` nodes of ``model`` (an ``onnx.ModelProto`` or a ``.onnx`` path)."""
    prep = _prepare(model)
    if prep.hidden and not prep.nodes:
        _require_nodes(prep)  # "No recurrent layers." would be wrong: say where they are
    return [n.spec for n in prep.nodes]


def _require_nodes(prep: Any) -> None:
    if prep.nodes:
        return
    if prep.hidden:
        more = f"; ... ({len(prep.hidden)} in all)" if len(prep.hidden) > 5 else ""
        shown = "; ".join(prep.hidden[:5]) + more
        raise UnsupportedLayerError(
            f"The ONNX graph's recurrent nodes are where rnnlens cannot run them: {shown}. rnnlens "
            "traces LSTM/GRU/RNN and DynamicQuantizeLSTM nodes of the main graph, of If branches and "
            "of model-local functions, not those inside Loop/Scan bodies (they run once per "
            "iteration). Export the loop's body as a model of its own, or unroll the loop, and trace that."
        )
    raise UnsupportedLayerError(
        "The ONNX graph has no LSTM, GRU or RNN node. An exporter may have unrolled the recurrence "
        "into MatMul ops: torch.onnx.export(dynamo=True) does so for nn.RNN; export with dynamo=False."
    )


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


def _selection(
    prep: Any, layers: Any, fields: Any
) -> tuple[list[LayerSpec], dict[str, Any], dict[str, tuple[Field, ...]]]:
    """The selected nodes' specs, every node by name, and the fields each selected one gives
    (checked: names, and fields a node cannot rebuild exactly); shared by trace, intervene and
    record."""
    _require_nodes(prep)
    chosen = select_layers([n.spec for n in prep.nodes], layers, other_layers=prep.others)
    nodes = {n.name: n for n in prep.nodes}
    _check_fields([nodes[s.name] for s in chosen], fields)
    return chosen, nodes, dict(resolve_fields(chosen, fields))


def intervene(model: Any, args: Args, kwargs: Kwargs, edits: Edits, options: TraceOptions) -> Intervened:
    """ONNX implementation of :meth:`rnnlens.adapters.Adapter.intervene` (see
    :mod:`.intervene`): outputs are the graph's outputs as a list, in graph order."""
    if not args and not kwargs:
        raise InputError(f"No inputs given; the model's inputs are: {_signature(_prepare(model))}.")
    prep = _prepare(model)
    chosen, nodes, want = _selection(prep, options.layers, options.fields)
    main_graph_only(chosen, nodes, "intervene")
    x, rest = (args[0], args[1:]) if args else (None, ())
    feeds = _feeds(prep, x, rest, kwargs)
    return onnx_intervene.intervene(prep, feeds, edits, chosen, want)


def main_graph_only(chosen: list[LayerSpec], nodes: Mapping[str, Any], what: str) -> None:
    """Refuse layers inside ``If`` branches for ``what`` (trace alone follows the branches)."""
    inner = [s.name for s in chosen if nodes[s.name].inner]
    if inner:
        raise UnsupportedLayerError(
            f"Layers {inner} sit inside If branches: rnnlens.trace follows the branch that runs, but "
            f"{what} does not yet. Select main-graph layers with layers=[...], or trace."
        )


def capture(model: Any, args: Args, kwargs: Kwargs, options: TraceOptions) -> Captured:
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
    chosen, nodes, want = _selection(prep, layers, fields)
    feeds = _feeds(prep, x, rest, kwargs)
    session = prep.session()

    needs = {s.name: _needs(nodes[s.name], want[s.name]) for s in chosen}
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

    tensor = _lookup(got, feeds, prep)
    chosen = _ran(chosen, nodes, tensor, named=layers is not None)
    batch = {s.name: _batch_of(nodes[s.name], want[s.name], tensor) for s in chosen}
    return Captured(chosen, [batch], backend="onnx")


def _ran(chosen: list[LayerSpec], nodes: Mapping[str, Any], tensor: Any, *, named: bool) -> list[LayerSpec]:
    """The chosen layers whose ``If`` branch ran; a layer asked for by name that did not run
    (or no layer at all) is an error, as a torch module forward did not call."""
    ran = [s for s in chosen if nodes[s.name].ran(tensor)]
    skipped = [nodes[s.name] for s in chosen if s not in ran]
    if skipped and (named or not ran):
        node = skipped[0]
        where = next(
            f"the {'then' if then else 'else'}_branch of If {path!r}"
            for c, then, path in node.runs_if
            if bool(np.asarray(tensor(c)).reshape(-1)[0]) != then
        )
        raise UnsupportedLayerError(
            f"Layer {node.name!r} sits in {where}, which did not run for these inputs, so it has no "
            f"states. Layers that ran: {[s.name for s in ran]}. Give inputs that take that branch, "
            "or select the layers that ran with layers=[...]."
        )
    return ran
