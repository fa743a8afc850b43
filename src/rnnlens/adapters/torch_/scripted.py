"""TorchScript modules, traced through ONNX: their compiled ``forward`` cannot be observed step
by step, but PyTorch's own exporter turns it into a graph whose recurrent nodes rnnlens reads.

:func:`capture` exports the scripted (or ``torch.jit.trace``-d) module with
``torch.onnx.export(..., dynamo=False)`` for the arguments given (in memory; nothing is
written), runs the ONNX adapter on the export, and checks that the export's outputs are the
module's own (run once on the same arguments; float tolerance rtol 1e-4, atol 1e-5): a
mismatch is a :class:`~rnnlens.errors.ParityError`, never states of a graph that computes
something else. Each recurrent node is named after the submodule layer whose weights it holds
(``"rnn.l0"``, as :func:`rnnlens.describe` lists them), matched by value; a node matching no
submodule keeps its ONNX name. Needs the ``onnx`` extra (onnx, onnxruntime).

Example:
    >>> import torch, rnnlens
    >>> compiled = torch.jit.trace(torch.nn.GRU(3, 4, num_layers=2), torch.zeros(5, 2, 3))
    >>> list(rnnlens.trace(compiled, torch.zeros(5, 2, 3)))
    ['gru.l0', 'gru.l1']
"""

from __future__ import annotations

import dataclasses
import io
import warnings
from typing import Any

import numpy as np
import torch

from ...core.optional import require
from ...errors import ParityError, UnsupportedModelError
from ..base import Args, Captured, Kwargs, TraceOptions
from ..onnx_ import trace as onnx_trace
from ..onnx_.graph import _W
from ..onnx_.session import _prepare
from .discover import _walk
from .weights import _np

__all__ = ["capture"]

# ONNX gate blocks in torch's order: LSTM i, o, f, c -> i, f, g(c), o; GRU z, r, h -> r, z, n
_TORCH_ORDER = {"LSTM": (0, 2, 3, 1), "GRU": (1, 0, 2), "RNN": (0,)}


def _unsupported(why: str) -> UnsupportedModelError:
    return UnsupportedModelError(
        f"rnnlens traces a TorchScript module through its ONNX export, and {why}. Load the weights "
        "into the Python module and trace that: rnnlens.load_model(path, module=MyModel(...), "
        "unsafe=True)."
    )


def _export(model: Any, args: Args) -> bytes:
    if not all(isinstance(a, torch.Tensor) for a in args):
        raise _unsupported("its export takes tensor arguments only")
    buf = io.BytesIO()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            names = [f"input_{k}" for k in range(len(args))]
            # a file-like object works (the stubs say paths only)
            torch.onnx.export(model, args, buf, dynamo=False, input_names=names)  # type: ignore[arg-type]
    except Exception as e:
        raise _unsupported(f"torch.onnx.export failed ({type(e).__name__}: {str(e).strip()})") from e
    return buf.getvalue()


def _names(prep: Any, model: Any) -> dict[str, str]:
    """ONNX node name -> the describe name of the submodule layer holding the same weights."""
    layers: list[tuple[str, str, np.ndarray]] = []  # (describe name, base, weight_ih)
    for path, m, cfg in _walk(model)[0]:
        params = dict(m.named_parameters(recurse=False))
        for k in range(cfg.num_layers):
            w = params.get(f"weight_ih_l{k}") if not cfg.cell else params.get("weight_ih")
            if w is not None:
                name = f"{path}.l{k}" if cfg.expanded else path
                layers.append((name, cfg.base.replace("Cell", ""), _np(w)))
    out: dict[str, str] = {}
    for node in prep.nodes:
        w = prep.value(node.inputs[_W])  # [direction, gates * hidden, input]
        if w is None:
            continue
        blocks = np.split(np.asarray(w)[0], len(_TORCH_ORDER[node.op]), axis=0)
        ours = np.concatenate([blocks[k] for k in _TORCH_ORDER[node.op]], axis=0)
        match = [
            n
            for n, base, wi in layers
            if base == node.op and wi.shape == ours.shape and np.array_equal(wi, ours)
        ]
        if len(match) == 1 and match[0] not in out.values():
            out[node.name] = match[0]
    return out


def capture(model: Any, args: Args, kwargs: Kwargs, options: TraceOptions) -> Captured:
    """Trace a TorchScript module through its ONNX export (see the module docstring)."""
    purpose = "Tracing a TorchScript module (through its ONNX export)"
    onnx = require("onnx", purpose=purpose)
    require("onnxruntime", purpose=purpose)
    if kwargs:
        raise _unsupported("its export takes positional arguments only")
    proto = onnx.load_from_string(_export(model, args))
    prep = _prepare(proto)  # analysed once (the trace below finds it in the cache)
    to_torch = _names(prep, model)
    to_onnx = {v: k for k, v in to_torch.items()}
    layers = None if options.layers is None else tuple(to_onnx.get(n, n) for n in options.layers)
    captured = onnx_trace.capture(
        proto, tuple(_np(a) for a in args), {}, dataclasses.replace(options, layers=layers)
    )
    _check_outputs(model, args, prep)
    specs = [dataclasses.replace(s, name=to_torch.get(s.name, s.name)) for s in captured.specs]
    batches = [{to_torch.get(k, k): v for k, v in b.items()} for b in captured.batches]
    return Captured(specs, batches, backend="torch")


def _check_outputs(model: Any, args: Args, prep: Any) -> None:
    """The export's outputs must be what the module itself returns."""
    with torch.no_grad():
        own = model(*args)
    mine = [o for o in _flat(own)]
    feeds = {i.name: _np(a) for i, a in zip(prep.inputs, args)}
    got = prep.session().run([o.name for o in prep.model.graph.output], feeds)
    if len(got) != len(mine) or any(
        g.shape != m.shape or not np.allclose(g, m, rtol=1e-4, atol=1e-5) for g, m in zip(got, mine)
    ):
        raise ParityError(
            "The ONNX export of this TorchScript module does not return what the module itself returns "
            "on these arguments, so its recurrent nodes are not the module's computation. Load the "
            "weights into the Python module and trace that: rnnlens.load_model(path, "
            "module=MyModel(...), unsafe=True)."
        )


def _flat(obj: Any) -> list[np.ndarray]:
    if isinstance(obj, torch.Tensor):
        return [_np(obj)]
    if isinstance(obj, (tuple, list)):
        return [a for o in obj for a in _flat(o)]
    if isinstance(obj, dict):
        return [a for o in obj.values() for a in _flat(o)]
    return []
