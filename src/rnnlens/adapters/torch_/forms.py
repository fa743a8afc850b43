"""The forms a PyTorch model is run in besides a plain ``nn.Module``: ``torch.compile`` and
``torch.export``.

* ``torch.compile(model)`` returns an ``OptimizedModule`` wrapping the model (``_orig_mod``):
  rnnlens traces the wrapped module itself (the same weights, the same code), so Dynamo never
  compiles rnnlens' step loop and entries carry the uncompiled module's names.
* A quantized TorchScript module (``torch.jit.script`` / ``trace`` of a model quantized with
  ``torch.ao.quantization``) runs int8 kernels (``quantized::...``) that neither its ONNX export
  nor rnnlens' step loop reproduce: it is refused, naming its quantized submodules, with what to
  do instead (:func:`check_quantized_script`).
* ``torch.export.export(model, args)`` returns an ``ExportedProgram``; ``ep.module()`` is a
  graph module whose code calls ``aten.lstm`` / ``gru`` / ``rnn_tanh`` / ``rnn_relu`` with the
  weights as arguments. Those calls are traced like any direct recurrent op call
  (:mod:`.direct`), each named by the path of the module it was exported from (the node's
  ``nn_module_stack``). A program whose recurrence was decomposed into gate operations has no
  recurrent op left to see, and is refused saying how to export it so that it is not.

Example:
    >>> import torch
    >>> from rnnlens.adapters.torch_.forms import exported_paths
    >>> lstm = torch.nn.LSTM(3, 4)
    >>> ep = torch.export.export(lstm, (torch.zeros(5, 2, 3),))
    >>> exported_paths(ep.module())
    ['lstm']
"""

from __future__ import annotations

import re
from typing import Any

import torch

from ...core.spec import LayerSpec
from ...errors import UnsupportedLayerError, UnsupportedModelError
from .discover import _SEQ_KINDS, _Config, _static_specs

__all__ = [
    "check_exported",
    "check_quantized_script",
    "check_recordable",
    "describe_exported",
    "exported_paths",
    "is_exported",
    "plain",
]

_QUANTIZED_OP = re.compile(r"quantized::\w+|aten::quantized_\w+")
_RECURRENT = ("lstm", "gru", "rnn_tanh", "rnn_relu")
_BASES = {"lstm": ("LSTM", 4), "gru": ("GRU", 3), "rnn_tanh": ("RNN", 1), "rnn_relu": ("RNN", 1)}
#: ops a recurrence decomposed into gate operations leaves behind
_GATE_OPS = ("sigmoid", "tanh", "lstm_cell", "gru_cell", "rnn_tanh_cell", "rnn_relu_cell")


def plain(model: Any) -> Any:
    """The ``nn.Module`` to run: a compiled module's original, an exported program's module."""
    if type(model).__name__ == "OptimizedModule" and isinstance(
        getattr(model, "_orig_mod", None), torch.nn.Module
    ):
        return plain(model._orig_mod)
    if isinstance(model, torch.export.ExportedProgram):
        return model.module()
    return model


def _recurrent_nodes(model: Any) -> list[Any]:
    return [
        n
        for n in model.graph.nodes
        if n.op == "call_function"
        and isinstance(n.target, torch._ops.OpOverload)
        and n.target.namespace == "aten"
        and n.target._opname in _RECURRENT
    ]


def is_exported(model: Any) -> bool:
    """Whether ``model`` is a graph module made by ``torch.export`` (its nodes record the
    module each came from)."""
    return isinstance(model, torch.fx.GraphModule) and any(
        "nn_module_stack" in n.meta for n in model.graph.nodes if n.op == "call_function"
    )


def exported_paths(model: Any) -> list[str] | None:
    """The module path of every recurrent op node of an exported graph module, in graph (call)
    order; None for any other module."""
    if not is_exported(model):
        return None
    out = []
    for n in _recurrent_nodes(model):
        stack = list((n.meta.get("nn_module_stack") or {}).values())
        path, cls = stack[-1] if stack else ("", n.target._opname)
        if not path:  # the exported module itself: named after its class, as a module is
            name = cls if isinstance(cls, str) else cls.__qualname__
            path = name.rsplit(".", 1)[-1].lower()
        out.append(str(path))
    return out


def check_exported(model: Any) -> None:
    """Refuse an exported program whose recurrence was unrolled into gate operations."""
    if not is_exported(model) or _recurrent_nodes(model):
        return
    gates = sorted(
        {
            n.target._opname
            for n in model.graph.nodes
            if n.op == "call_function"
            and isinstance(n.target, torch._ops.OpOverload)
            and n.target._opname in _GATE_OPS
        }
    )
    if not gates:
        return  # no recurrence at all: the usual "no recurrent layer" error follows
    raise UnsupportedLayerError(
        f"This torch.export program has no recurrent op (aten.lstm/gru/rnn_tanh/rnn_relu): its "
        f"recurrence was unrolled into gate operations ({', '.join(gates)}), whose steps rnnlens "
        "cannot tell apart exactly. Export the model with its nn.LSTM/nn.GRU/nn.RNN modules and do "
        "not decompose the program (no ep.run_decompositions(), no export_for_inference with a "
        "decomposition table), or trace the Python module you exported."
    )


def describe_exported(model: Any) -> list[LayerSpec]:
    """The entries of an exported graph module, read from its recurrent op nodes (their
    arguments and the shapes of their weights) without running it; a module called twice is
    listed once, as for a module."""
    out: list[LayerSpec] = []
    seen: set[str] = set()
    for node, path in zip(_recurrent_nodes(model), exported_paths(model) or []):
        if path in seen:
            continue
        seen.add(path)
        a = list(node.args)
        if node.target._overloadname == "data":  # (data, batch_sizes, hx, params, bias, layers, ...)
            params, bias, layers, bidir, batch_first = a[3], a[4], a[5], a[8], False
        else:  # (input, hx, params, bias, layers, dropout, train, bidirectional, batch_first)
            params, bias, layers, bidir, batch_first = a[2], a[3], a[4], a[7], a[8]
        base, gates = _BASES[node.target._opname]
        w_ih, w_hh = (p.meta["val"] for p in params[:2])
        hidden = int(w_ih.shape[0]) // gates
        units = int(w_hh.shape[1])  # proj_size when the LSTM projects h
        cfg = _Config(
            base, _SEQ_KINDS[base], int(w_ih.shape[1]), hidden, units if units != hidden else 0,
            int(layers), bool(bidir), bool(batch_first), bool(bias),
            "relu" if node.target._opname == "rnn_relu" else "tanh",
        )  # fmt: skip
        out.extend(_static_specs(path, cfg))
    return out


def check_quantized_script(model: Any) -> None:
    """Refuse a TorchScript module that runs quantized kernels, naming its quantized submodules."""
    if not isinstance(model, torch.jit.ScriptModule):
        return
    # packed parameters live in private children (lstm._all_weight_values.0, fc._packed_params)
    packed = sorted(
        {
            ".".join(path.split(".")[: next(k for k, p in enumerate(path.split(".")) if p.startswith("_"))])
            for path, m in model.named_modules()
            if "Packed" in getattr(m, "original_name", "") and "._" in f".{path}"
        }
    )
    try:
        ops = sorted({op for op in _QUANTIZED_OP.findall(str(model.inlined_graph))})
    except RuntimeError:  # a module without a forward graph
        ops = []
    if not packed and not ops:
        return
    kinds = dict(model.named_modules())
    names = ", ".join(f"{p or '(root)'} ({getattr(kinds.get(p), 'original_name', '?')})" for p in packed)
    raise UnsupportedModelError(
        f"This TorchScript module is quantized: {names or 'its graph'} run{'s' if len(packed) == 1 else ''} "
        f"int8 kernels ({', '.join(ops) or 'packed quantized parameters'}). rnnlens cannot trace or edit "
        "them exactly: a quantized kernel's rounding is neither in the module's ONNX export nor in "
        "rnnlens' float step loop. Trace the float model from before quantization (the nn.Module "
        "you passed to torch.ao.quantization.quantize_dynamic / convert, before torch.jit.script "
        "or torch.jit.trace); its states are what the int8 model approximates."
    )


def check_recordable(model: Any) -> None:
    """Refuse to record an exported program: a recording follows recurrent modules across the
    calls of the user's loop, and a program has none (its graph calls the fused op itself)."""
    if isinstance(model, torch.export.ExportedProgram) or is_exported(model):
        raise UnsupportedModelError(
            "rnnlens.record follows a model's recurrent modules across the calls of your loop; a "
            "torch.export program has none (its graph calls the fused recurrent op). Trace each call "
            "instead (rnnlens.trace(program, x) traces every recurrent op of it), or record the "
            "Python module you exported."
        )
