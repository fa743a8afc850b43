"""Recurrent nodes inside ``If`` branches and model-local functions, made visible to one run.

ONNX Runtime returns only the main graph's tensors, so a node two ``If`` levels deep (a
streaming model that switches on its sample rate) cannot simply be fetched. :func:`inline`
inlines model-local functions (``onnx.inliner``); :func:`expose_branches` then rewrites the
private copy (never the user's model) so that every tensor rnnlens reads of a recurrent node
inside ``If`` branches, at any depth, leaves each enclosing ``If`` as an extra output: the
branch holding the node passes it through an ``Identity``, the other branch gives an empty
tensor of the same type, and each ``If``'s condition is lifted the same way. One run then
gives every node of the branch that ran, and the conditions say which branch that was.

Nodes inside ``Loop`` / ``Scan`` bodies run once per iteration and are not exposed (they stay
in :func:`rnnlens.adapters.onnx_.graph._hidden_recurrent`'s list, named in the error).

Example:
    >>> from rnnlens.adapters.onnx_.subgraphs import expose_branches
    >>> import onnx
    >>> expose_branches(onnx.ModelProto())
    []
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .deps import _onnx

#: recurrent ops rnnlens reads: (domain, op type)
RECURRENT = {
    *((domain, op) for domain in ("", "ai.onnx") for op in ("LSTM", "GRU", "RNN")),
    ("com.microsoft", "DynamicQuantizeLSTM"),
}


def is_recurrent(node: Any) -> bool:
    return (node.domain, node.op_type) in RECURRENT


@dataclass
class _Val:
    """A tensor of a branch on its way up to the main graph: ``name`` is its name in the scope
    it has reached so far (the main graph's name once :func:`expose_branches` returns)."""

    name: str
    elem: int  # ONNX element type


@dataclass
class Inner:
    """A recurrent node inside ``If`` branches, with its tensors lifted to the main graph."""

    name: str  # the path: "<if node>/<then_branch|else_branch>/.../<node>"
    proto: Any  # the node (in the private copy; missing outputs filled in)
    static: dict[str, Any]  # initializers and Constant values visible in its branch
    slots: dict[str, _Val] = field(default_factory=dict)  # local tensor name -> lifted
    #: (condition, branch taken is then_branch, If node path) of every enclosing If, outer first
    conds: list[tuple[_Val, bool, str]] = field(default_factory=list)

    def lifted(self, local: str) -> str:
        """The main-graph name of one of the node's tensors ("" stays "")."""
        return self.slots[local].name if local else ""

    @property
    def runs_if(self) -> tuple[tuple[str, bool, str], ...]:
        return tuple((v.name, then, where) for v, then, where in self.conds)


def inline(model: Any) -> Any:
    """``model`` with its model-local functions inlined (the same object when it has none)."""
    if not model.functions:
        return model
    import onnx.inliner

    return onnx.inliner.inline_local_functions(model)


def _contains_recurrent(node: Any) -> bool:
    onnx = _onnx()
    for a in node.attribute:
        graphs = [a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)
        for g in graphs:
            if any(is_recurrent(n) or _contains_recurrent(n) for n in g.node):
                return True
    return False


def _types(model: Any) -> dict[str, int]:
    """Element type of every tensor whose type is known (shape inference over all subgraphs)."""
    onnx = _onnx()
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    except Exception:  # inference is only a help here: unknown types fall back below
        inferred = model
    out: dict[str, int] = {}

    def walk(g: Any) -> None:
        for vi in itertools.chain(g.input, g.output, g.value_info):
            if vi.type.tensor_type.elem_type:
                out[vi.name] = vi.type.tensor_type.elem_type
        for t in g.initializer:
            out[t.name] = t.data_type
        for n in g.node:
            for a in n.attribute:
                if a.type == onnx.AttributeProto.TENSOR and n.op_type == "Constant" and n.output:
                    out[n.output[0]] = a.t.data_type
                for sub in [a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs):
                    walk(sub)

    walk(inferred.graph)
    return out


def expose_branches(model: Any) -> list[Inner]:
    """Rewrite ``model`` (a private copy) in place so that the tensors of every recurrent node
    inside ``If`` branches are main-graph outputs of the ``If`` nodes; return those nodes."""
    if not any(_contains_recurrent(n) for n in model.graph.node if n.op_type == "If"):
        return []
    types = _types(model)
    taken = {t for t in _names(model.graph)}
    counter = itertools.count()

    def fresh(base: str) -> str:
        while True:
            name = f"rnnlens__{base}__{next(counter)}"
            if name not in taken:
                taken.add(name)
                return name

    inners: list[Inner] = []
    _walk(model.graph, "", [], 0, {}, types, fresh, inners)
    return inners


def _names(g: Any) -> Iterator[str]:
    onnx = _onnx()
    yield from (v.name for v in itertools.chain(g.input, g.output, g.value_info, g.initializer))
    for n in g.node:
        yield from n.output
        for a in n.attribute:
            for sub in [a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs):
                yield from _names(sub)


def _float_type(node: Any, types: dict[str, int]) -> int:
    """The node's float type T (X, Y, ...): from any of its float tensors, else float32."""
    onnx = _onnx()
    for name in (node.input[0], *node.output):
        if name in types:
            return types[name]
    return int(onnx.TensorProto.FLOAT)


def _slot_type(node: Any, k: int, local: str, types: dict[str, int]) -> int:
    if local in types:
        return types[local]
    if k == 4:  # sequence_lens
        return int(_onnx().TensorProto.INT32)
    return _float_type(node, types)


def _walk(
    graph: Any,
    path: str,
    conds: list[tuple[_Val, bool, str]],
    depth: int,
    outer_static: dict[str, Any],
    types: dict[str, int],
    fresh: Any,
    inners: list[Inner],
) -> list[_Val]:
    """Expose the recurrent nodes of ``graph`` (a branch when ``depth > 0``) and of the ``If``
    nodes in it; return the values this graph must pass up to its parent."""
    onnx = _onnx()
    static = dict(outer_static)
    static.update({t.name: t for t in graph.initializer})
    for n in graph.node:
        if n.op_type == "Constant" and n.output:
            for a in n.attribute:
                if a.name == "value":
                    static[n.output[0]] = a.t
    up: list[_Val] = []
    for k, n in enumerate(graph.node):
        label = n.name or f"{n.op_type}_{k}"
        if depth and is_recurrent(n):
            n_out = 3 if "LSTM" in n.op_type else 2
            while len(n.output) < n_out:
                n.output.append("")
            for j in range(n_out):
                if not n.output[j]:
                    n.output[j] = fresh("out")
            inner = Inner(f"{path}{label}", n, static, conds=list(conds))
            for j, local in enumerate(n.input):
                if local and local not in inner.slots:
                    inner.slots[local] = _Val(local, _slot_type(n, j, local, types))
            for local in n.output:
                inner.slots.setdefault(local, _Val(local, _float_type(n, types)))
            up.extend(inner.slots.values())
            inners.append(inner)
        elif n.op_type == "If" and _contains_recurrent(n):
            cond = _Val(n.input[0], int(onnx.TensorProto.BOOL))
            given = {a.name: a.g for a in n.attribute}
            branches = {name: given[name] for name in ("then_branch", "else_branch") if name in given}
            lifted = {
                name: _walk(
                    g, f"{path}{label}/{name}/", [*conds, (cond, name == "then_branch", f"{path}{label}")],
                    depth + 1, static, types, fresh, inners,
                )
                for name, g in branches.items()
            }  # fmt: skip
            for holder, values in lifted.items():
                for v in values:
                    for name, g in branches.items():
                        local = fresh("branch")
                        if name == holder:
                            g.node.append(onnx.helper.make_node("Identity", [v.name], [local]))
                        else:  # the branch that does not hold the value gives an empty one
                            empty = onnx.helper.make_tensor(local, v.elem, [0], np.zeros(0).tolist())
                            g.node.append(onnx.helper.make_node("Constant", [], [local], value=empty))
                        g.output.append(onnx.helper.make_tensor_value_info(local, v.elem, None))
                    v.name = fresh("lifted")
                    n.output.append(v.name)
                    up.append(v)
            if depth:
                up.append(cond)
    return up
