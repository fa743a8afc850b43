"""PyTorch adapter: run the user's own ``forward`` once and capture every recurrent module it calls.

What is traced
--------------
``nn.LSTM``, ``nn.GRU`` and ``nn.RNN`` (``tanh`` and ``relu``; kind ``"simple"``) with any
``num_layers``, ``bidirectional``, ``batch_first``, ``bias``, ``proj_size`` (LSTM: ``h`` has
``proj_size`` units, ``c`` has ``hidden_size``), user-given ``hx``, unbatched inputs and
``PackedSequence`` inputs; and hand-written loops over ``nn.LSTMCell`` / ``nn.GRUCell`` /
``nn.RNNCell``. A subclass that overrides ``forward`` computes something rnnlens does not
know: it is traced as kind ``"rnn"`` (its per-step outputs as ``h``, with a warning).

Names
-----
A recurrent module is named by its path in ``module.named_modules()`` (``"encoder.rnn"``).
The module passed to :func:`rnnlens.trace` itself, when it is recurrent, is named after its
PyTorch class in lower case (``"lstm"``, ``"gru"``, ``"rnn"``, ``"lstmcell"``, ...).

* ``num_layers > 1``: one entry per layer, ``"<path>.l0"``, ``"<path>.l1"``, ... (a single
  layer module keeps the plain path).
* The same ``nn.LSTM``/``nn.GRU``/``nn.RNN`` called several times in one ``forward``: every
  call is its own entry; the first call has the plain name, later calls add ``"#1"``,
  ``"#2"``, ... at the end (``"decoder.rnn"``, ``"decoder.rnn#1"``, ``"decoder.rnn.l0#1"``).
* A cell (``nn.LSTMCell`` ...) called in a Python loop: every call is one time step; all calls
  of one cell module in one ``forward`` form one entry (plain path) whose time axis has one
  step per call, in call order. ``h`` and ``c`` are the cell's own outputs; the gates come
  from the cell's weights and exactly the ``input`` and ``hx`` each call received. All calls
  must have the same batch size.

States follow rnnlens' semantics: ``h[:, t]`` is the state after reading step ``t``; arrays
are NumPy, ``(sample, time, unit)`` whatever ``batch_first`` is; a backward direction is in
input time order. The valid steps come from ``PackedSequence`` inputs (lengths become
``States.mask``; the time axis is the longest sequence): at padding the state is carried, so
a backward direction shows its initial state at trailing padding, and gates there are NaN.

How it works (and what is touched)
----------------------------------
During the one ``forward`` pass (in eval mode, under ``torch.no_grad()``; every submodule's
``training`` flag is restored afterwards) each recurrent module gets an instance attribute
``forward`` that records its arguments and results, removed again in a ``finally`` (an
instance ``forward`` the user had set is put back). No hooks are registered and no parameter
is touched. The stand-in returns to the model what the module itself returns, so the rest of
``forward`` runs as usual, once.

* ``h`` only: a multi-layer module runs *layer by layer* through PyTorch's own kernel
  (``_VF.lstm`` and friends with that layer's weights, ``num_layers=1``, via the module's own
  ``forward`` on a one-layer view sharing its parameters) instead of in one call: every
  layer's full sequence for the cost of the one forward pass, bitwise what the fused
  multi-layer call returns on CPU. A single-layer module simply runs its own ``forward``.
* ``c`` / gates, ``strategy="emit"`` (the default on CPU): the layers whose ``c`` or gates are
  asked for run in rnnlens' step loop, which performs PyTorch's native CPU cell op for op
  (input projection of all steps in one matmul, then per step one matmul and in-place
  activations written straight into the output buffers): ``h`` is bitwise PyTorch's native
  kernel, within ~1e-7 of the oneDNN kernel PyTorch picks for float32 LSTMs.
* ``strategy="reconstruct"`` (the default off CPU and for ``PackedSequence`` inputs): ``h``
  from the kernel, then :func:`rnnlens.cells.reconstruct_direction` (gates in one batched
  matmul, ``c`` by an elementwise scan, parity-checked against the kernel's ``h``).

If the model modifies a captured tensor in place after the recurrent module returned it
(``out += residual``), rnnlens notices (tensor version counters) and runs the forward once
more, keeping copies; if it modified its own *input* in place, that is an error.

Arguments: ``trace(module, *args, **kwargs)`` calls ``module(*args, **kwargs)``. The
``mask=`` and ``batch_size=`` options of :func:`rnnlens.trace` are not used for PyTorch
(masks come from ``PackedSequence``; the pass runs once on the arguments as given): when the
module's ``forward`` has a parameter of that name they are passed to it, otherwise they are
an :class:`~rnnlens.errors.InputError`.

TorchScript modules run compiled code that cannot be observed step by step: :func:`describe`
lists their recurrent submodules, :func:`trace` refuses them; load the weights into the Python
module with :func:`load_model` (``module=``) and trace that.

Example:
    >>> import torch, rnnlens
    >>> lstm = torch.nn.LSTM(3, 4, num_layers=2, batch_first=True)
    >>> states = rnnlens.trace(lstm, torch.ones(2, 5, 3))
    >>> list(states)
    ['lstm.l0', 'lstm.l1']
    >>> states["lstm.l1"].h.shape, states["lstm.l1"].c.shape, list(states["lstm.l1"].gates)
    ((2, 5, 4), (2, 5, 4), ['i', 'f', 'g', 'o'])
"""

from __future__ import annotations

import inspect
import mmap
import re
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pad_packed_sequence

from ...cells import DirectionArrays, check_parity, gru_gates, lstm_gates
from ...errors import (
    InputError,
    LayerNotFoundError,
    RnnLensError,
    UnsupportedLayerError,
    UnsupportedModelError,
)
from ...spec import FIELDS_BY_KIND, CellWeights, Field, Kind, LayerSpec
from ...tracing import RawDirection, RawLayer, resolve_fields, select_layers, to_direction_arrays
from ..base import Captured, TraceOptions

__all__ = ["capture", "describe"]

_SEQ_KINDS: dict[str, Kind] = {"LSTM": "lstm", "GRU": "gru", "RNN": "simple"}
_CELL_KINDS: dict[str, Kind] = {"LSTMCell": "lstm", "GRUCell": "gru", "RNNCell": "simple"}
_CLASSES: tuple[tuple[Any, str], ...] = (
    (nn.LSTM, "LSTM"),
    (nn.GRU, "GRU"),
    (nn.RNN, "RNN"),
    (nn.LSTMCell, "LSTMCell"),
    (nn.GRUCell, "GRUCell"),
    (nn.RNNCell, "RNNCell"),
)
_CALL_SUFFIX = re.compile(r"#\d+$")
_LAYER_OF = re.compile(r"_l(\d+)(?:_reverse)?$")

# --------------------------------------------------------------------------- discovery


@dataclass(frozen=True)
class _Config:
    """A recurrent module's static configuration, read once before the forward pass."""

    base: str  # the torch class it behaves as: LSTM, GRU, RNN, LSTMCell, GRUCell, RNNCell
    kind: Kind
    input_size: int
    hidden_size: int
    proj_size: int = 0
    num_layers: int = 1
    bidirectional: bool = False
    batch_first: bool = False
    bias: bool = True
    nonlinearity: str = "tanh"
    scripted: bool = False

    @property
    def cell(self) -> bool:
        return self.base.endswith("Cell")

    @property
    def units(self) -> int:
        return self.proj_size or self.hidden_size

    @property
    def directions(self) -> tuple[str, ...]:
        return ("forward", "backward") if self.bidirectional else ("forward",)

    @property
    def n_dir(self) -> int:
        return 2 if self.bidirectional else 1

    @property
    def expanded(self) -> bool:
        """One entry per layer (a known multi-layer module)."""
        return not self.cell and self.kind != "rnn" and self.num_layers > 1


def _config(m: Any) -> _Config | None:
    if isinstance(m, torch.jit.ScriptModule):
        return _script_config(m)
    for cls, base in _CLASSES:
        if isinstance(m, cls):
            standard = type(m).forward is cls.forward and "forward" not in vars(m)
            kinds = _CELL_KINDS if base.endswith("Cell") else _SEQ_KINDS
            kind: Kind = kinds[base] if standard else "rnn"
            if base.endswith("Cell"):
                return _Config(
                    base,
                    kind,
                    int(m.input_size),
                    int(m.hidden_size),
                    bias=bool(m.bias),
                    nonlinearity=str(getattr(m, "nonlinearity", "tanh")),
                )
            nonlinearity = "relu" if getattr(m, "mode", "") == "RNN_RELU" else "tanh"
            return _Config(
                base,
                kind,
                int(m.input_size),
                int(m.hidden_size),
                int(m.proj_size),
                int(m.num_layers),
                bool(m.bidirectional),
                bool(m.batch_first),
                bool(m.bias),
                nonlinearity,
            )
    return None


def _script_config(m: Any) -> _Config | None:
    """A TorchScript submodule's configuration, read from its parameters (describe only)."""
    base = getattr(m, "original_name", None)
    if base not in _SEQ_KINDS and base not in _CELL_KINDS:
        return None
    params = dict(m.named_parameters(recurse=False))
    gates = {"LSTM": 4, "GRU": 3, "RNN": 1}[base.replace("Cell", "")]
    nonlinearity = str(getattr(m, "nonlinearity", "tanh"))
    if base in _CELL_KINDS:
        w = params["weight_ih"]
        return _Config(
            base,
            _CELL_KINDS[base],
            int(w.shape[1]),
            int(w.shape[0]) // gates,
            bias="bias_ih" in params,
            nonlinearity=nonlinearity,
            scripted=True,
        )
    w = params["weight_ih_l0"]
    hr = params.get("weight_hr_l0")
    return _Config(
        base,
        _SEQ_KINDS[base],
        int(w.shape[1]),
        int(w.shape[0]) // gates,
        proj_size=0 if hr is None else int(hr.shape[0]),
        num_layers=sum(1 for k in params if re.fullmatch(r"weight_ih_l\d+", k)),
        bidirectional="weight_ih_l0_reverse" in params,
        batch_first=bool(getattr(m, "batch_first", False)),
        bias="bias_ih_l0" in params,
        nonlinearity=nonlinearity,
        scripted=True,
    )


def _walk(root: Any) -> tuple[list[tuple[str, Any, _Config]], list[str]]:
    """(name, module, config) of every recurrent module in ``named_modules`` order; other paths."""
    recurrent: list[tuple[str, Any, _Config]] = []
    others: list[str] = []
    for path, m in root.named_modules():
        cfg = _config(m)
        if cfg is None:
            if path:
                others.append(path)
        else:
            recurrent.append((path or cfg.base.lower(), m, cfg))
    return recurrent, others


def _static_specs(name: str, cfg: _Config) -> list[LayerSpec]:
    fields = FIELDS_BY_KIND[cfg.kind]
    cell_units = cfg.hidden_size if cfg.kind == "lstm" else None
    notes: list[str] = []
    if cfg.kind == "rnn":
        notes.append("forward is overridden: per-step outputs only")
    if cfg.proj_size:
        notes.append(f"proj_size={cfg.proj_size}: h has {cfg.proj_size} units, c {cfg.hidden_size}")
    if cfg.scripted:
        notes.append("TorchScript: describe only; trace the Python module")
    if cfg.cell:
        notes.append("one time step per call; the calls in one forward pass form the time axis")
        return [
            LayerSpec(name, cfg.kind, cfg.base, cfg.units, ("forward",), fields, cell_units, tuple(notes))
        ]
    if not cfg.expanded:
        return [
            LayerSpec(name, cfg.kind, cfg.base, cfg.units, cfg.directions, fields, cell_units, tuple(notes))
        ]
    return [
        LayerSpec(
            f"{name}.l{layer}",
            cfg.kind,
            f"{cfg.base} layer {layer}/{cfg.num_layers}",
            cfg.units,
            cfg.directions,
            fields,
            cell_units,
            tuple(notes),
        )
        for layer in range(cfg.num_layers)
    ]


def _require_module(model: Any) -> None:
    if not isinstance(model, nn.Module):
        raise UnsupportedModelError(
            f"Expected a torch.nn.Module; received {type(model).__module__}.{type(model).__name__}. "
            "Load a model file with rnnlens.load_model first."
        )


def describe(model: Any) -> list[LayerSpec]:
    """Every recurrent submodule of ``model`` (``num_layers`` expanded, cells listed), static.

    Lists what the module *contains*; :func:`trace` returns what ``forward`` *calls*
    (modules called twice get a second entry ``"#1"``; modules never called get none).
    """
    _require_module(model)
    recurrent, _ = _walk(model)
    return [spec for name, _, cfg in recurrent for spec in _static_specs(name, cfg)]


# --------------------------------------------------------------------------- weights


def _np(t: torch.Tensor) -> np.ndarray:
    t = t.detach()
    if t.dtype == torch.bfloat16:  # NumPy has no bfloat16
        t = t.float()
    return t.cpu().numpy()


def _torch_fn(fn: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[np.ndarray], np.ndarray]:
    """A torch elementwise function as NumPy → NumPy (zero-copy in, multithreaded)."""

    def apply(a: np.ndarray) -> np.ndarray:
        if not a.flags.writeable or any(s < 0 for s in a.strides):
            a = np.array(a)
        return fn(torch.from_numpy(a)).numpy()

    return apply


_SIGMOID = _torch_fn(torch.sigmoid)
_TANH = _torch_fn(torch.tanh)
_RELU = _torch_fn(torch.relu)


def _weights(m: Any, cfg: _Config, layer: int, reverse: bool) -> CellWeights | None:
    """One direction of one layer in canonical gate order (GRU: PyTorch's r,z,n → z,r,n)."""
    if cfg.kind == "rnn":
        return None
    sfx = "" if cfg.cell else f"_l{layer}" + ("_reverse" if reverse else "")
    w_ih, w_hh = _np(getattr(m, "weight_ih" + sfx)), _np(getattr(m, "weight_hh" + sfx))
    b_ih = _np(getattr(m, "bias_ih" + sfx)) if cfg.bias else None
    b_hh = _np(getattr(m, "bias_hh" + sfx)) if cfg.bias else None
    projection = _np(getattr(m, "weight_hr" + sfx)).T if cfg.proj_size else None
    if cfg.kind == "gru":
        h = cfg.hidden_size
        order = np.r_[h : 2 * h, 0:h, 2 * h : 3 * h]
        w_ih, w_hh = w_ih[order], w_hh[order]
        b_ih = None if b_ih is None else b_ih[order]
        b_hh = None if b_hh is None else b_hh[order]
    return CellWeights(
        kind=cfg.kind,
        kernel=w_ih.T,
        recurrent_kernel=w_hh.T,
        bias=b_ih,
        recurrent_bias=b_hh,
        activation=_RELU if cfg.nonlinearity == "relu" else _TANH,
        recurrent_activation=_SIGMOID,
        reset_after=True,
        projection=projection,
    )


# --------------------------------------------------------------------------- capture


@dataclass
class _Plan:
    """What to record for one recurrent module, decided before the forward pass."""

    name: str
    module: Any
    cfg: _Config
    record: bool  # some entry of this module is selected
    loop: bool  # run layer by layer (inner layers are needed)
    emit: frozenset[int] = frozenset()  # layers whose c or gates are wanted
    strategy: str = "auto"


@dataclass
class _SeqCall:
    """One call of an nn.LSTM / GRU / RNN; tensors in the caller's own format."""

    plan: _Plan
    index: int
    packed: bool = False
    unbatched: bool = False
    inputs: dict[int, Any] = field(default_factory=dict)
    outputs: dict[int, Any] = field(default_factory=dict)
    hx: dict[int, Any] = field(default_factory=dict)
    raw_output: Any = None  # kind "rnn": what the module returned
    c: dict[int, list[torch.Tensor]] = field(default_factory=dict)  # emitted: per direction
    gates: dict[int, list[torch.Tensor]] = field(default_factory=dict)


@dataclass
class _CellCalls:
    """Every call of one cell module (one time step each)."""

    plan: _Plan
    xs: list[Any] = field(default_factory=list)
    hxs: list[Any] = field(default_factory=list)
    outs: list[Any] = field(default_factory=list)


def _tensors(obj: Any) -> Iterable[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, PackedSequence):
        yield obj.data
    elif isinstance(obj, (tuple, list)):
        for o in obj:
            yield from _tensors(o)


def _clone(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.clone()
    if isinstance(obj, PackedSequence):
        return PackedSequence(obj.data.clone(), obj.batch_sizes, obj.sorted_indices, obj.unsorted_indices)
    if isinstance(obj, (tuple, list)):
        return type(obj)(_clone(o) for o in obj)
    return obj


def _hx_slice(hx: Any, layer: int, n_dir: int) -> Any:
    if hx is None:
        return None
    rows = slice(layer * n_dir, (layer + 1) * n_dir)
    if isinstance(hx, (tuple, list)):
        return tuple(h[rows] for h in hx)
    return hx[rows]


def _layer_view(m: Any, cfg: _Config, layer: int) -> Any:
    """A one-layer stand-in for layer ``layer`` of ``m`` sharing its parameters (not a copy).

    Only its class ``forward`` is ever called (never ``__call__``, so no hooks run): PyTorch's
    own argument handling and kernel, with ``num_layers=1`` and that layer's weights.
    """
    view = object.__new__(type(m))
    d = view.__dict__
    d.update(vars(m))
    d.pop("forward", None)
    names = [n for n in m._flat_weights_names if int(_LAYER_OF.search(n).group(1)) == layer]  # type: ignore[union-attr]
    flat = [getattr(m, n) for n in names]
    d["num_layers"] = 1
    if layer > 0:
        d["input_size"] = cfg.n_dir * cfg.units
    d["_flat_weights_names"] = names
    d["_flat_weights"] = flat
    d["_flat_weight_refs"] = [weakref.ref(w) if w is not None else None for w in flat]
    half = len(names) // cfg.n_dir
    d["_all_weights"] = [names[i * half : (i + 1) * half] for i in range(cfg.n_dir)]
    return view


class _Recorder:
    """Instance-level ``forward`` stand-ins that record each recurrent module's calls."""

    def __init__(self, plans: Sequence[_Plan], *, clone: bool):
        self.plans = list(plans)
        self.clone = clone
        self.entries: list[_SeqCall | _CellCalls] = []
        self.counts: dict[int, int] = {}
        self.cells: dict[int, _CellCalls] = {}
        self.active: list[tuple[_Plan, Any]] = []
        self.watched: list[tuple[torch.Tensor, int]] = []

    # ---- bookkeeping
    def keep(self, obj: Any) -> Any:
        """What to store of a tensor the model's own code also holds (copy or watch it)."""
        if self.clone:
            return _clone(obj)
        self.watched.extend((t, t._version) for t in _tensors(obj))
        return obj

    def tampered(self) -> bool:
        return any(t._version != v for t, v in self.watched)

    # ---- stand-ins
    def stand_in(self, plan: _Plan) -> Callable[..., Any]:
        m, cfg = plan.module, plan.cfg
        original = m.forward  # bound: the class forward, or the user's own instance attribute
        if cfg.kind == "rnn":
            return self._generic(plan, original)
        if cfg.cell:
            return self._cell(plan, type(m).forward)
        views = [m]
        if cfg.num_layers > 1 and plan.record and (plan.loop or plan.emit):
            views = [_layer_view(m, cfg, layer) for layer in range(cfg.num_layers)]
        return self._seq(plan, type(m).forward, views)

    def _generic(self, plan: _Plan, original: Callable[..., Any]) -> Callable[..., Any]:
        def forward(*args: Any, **kwargs: Any) -> Any:
            self.active.append((plan, args[0] if args else next(iter(kwargs.values()), None)))
            out = original(*args, **kwargs)
            self.active.pop()
            if plan.record:
                if plan.cfg.cell:
                    calls = self._cell_calls(plan)
                    calls.outs.append(self.keep(out))
                else:
                    call = self._new_call(plan)
                    call.raw_output = self.keep(out)
            return out

        return forward

    def _cell_calls(self, plan: _Plan) -> _CellCalls:
        key = id(plan.module)
        if key not in self.cells:
            self.cells[key] = _CellCalls(plan)
            self.entries.append(self.cells[key])
        return self.cells[key]

    def _count(self, plan: _Plan) -> int:
        key = id(plan.module)
        index = self.counts.get(key, 0)
        self.counts[key] = index + 1
        return index

    def _new_call(self, plan: _Plan) -> _SeqCall:
        call = _SeqCall(plan, self._count(plan))
        self.entries.append(call)
        return call

    def _cell(self, plan: _Plan, cls_forward: Callable[..., Any]) -> Callable[..., Any]:
        m = plan.module

        def forward(input: Any, hx: Any = None) -> Any:
            self.active.append((plan, input))
            out = cls_forward(m, input, hx)
            self.active.pop()
            if plan.record:
                calls = self._cell_calls(plan)
                calls.xs.append(self.keep(input))
                calls.hxs.append(self.keep(hx))
                calls.outs.append(self.keep(out))
            return out

        return forward

    def _seq(self, plan: _Plan, cls_forward: Callable[..., Any], views: list[Any]) -> Callable[..., Any]:
        m, cfg = plan.module, plan.cfg
        top = cfg.num_layers - 1

        def forward(input: Any, hx: Any = None) -> Any:
            self.active.append((plan, input))
            if not plan.record:
                out = cls_forward(m, input, hx)
                self.active.pop()
                return out
            packed = isinstance(input, PackedSequence)
            unbatched = not packed and isinstance(input, torch.Tensor) and input.dim() == 2
            emit = plan.emit if _can_emit(input, cfg, plan.strategy) else frozenset()
            call = _SeqCall(plan, -1, packed, unbatched)
            if not plan.loop and not emit:  # the module's own call: all it gives is needed
                out = cls_forward(m, input, hx)
                call.inputs, call.outputs = {top: input}, {top: out[0]}
            else:
                finals = []
                x = input
                for layer, view in enumerate(views):
                    hx_l = _hx_slice(hx, layer, cfg.n_dir)
                    if layer in emit:
                        y, final, call.c[layer], call.gates[layer] = _emit_layer(view, cfg, layer, x, hx_l)
                    else:
                        y, final = cls_forward(view, x, hx_l)
                    call.inputs[layer], call.outputs[layer] = x, y
                    finals.append(final)
                    x = y
                if cfg.kind == "lstm":
                    hidden: Any = tuple(torch.cat([f[k] for f in finals], 0) for k in range(2))
                else:
                    hidden = torch.cat(finals, 0)
                out = (y, hidden)
            self.active.pop()
            call.index = self._count(plan)
            self.entries.append(call)
            kept_hx = self.keep(hx)
            call.hx = {layer: _hx_slice(kept_hx, layer, cfg.n_dir) for layer in call.inputs}
            first = min(call.inputs)
            call.inputs[first] = self.keep(call.inputs[first])
            call.outputs[top] = self.keep(call.outputs[top])
            return out

        return forward


def _can_emit(input: Any, cfg: _Config, strategy: str) -> bool:
    """Whether to emit c and gates from rnnlens' loop rather than rebuild them from the kernel's h.

    ``"auto"``: on CPU, where the loop costs about what PyTorch's own kernel does; on a GPU the
    fused cuDNN kernel plus reconstruction is faster. PackedSequence inputs always reconstruct.
    """
    if strategy == "reconstruct" or cfg.kind not in ("lstm", "gru") or not isinstance(input, torch.Tensor):
        return False
    if strategy == "emit":
        return input.dtype in (torch.float16, torch.float32, torch.float64)
    return input.device.type == "cpu" and input.dtype in (torch.float32, torch.float64)


_HUGE = 2 << 20


def _empty(like: torch.Tensor, *shape: int) -> torch.Tensor:
    """``like.new_empty(shape)``, on Linux backed by transparent huge pages when large.

    The emitted c and gates are hundreds of MB; with 4 KiB pages, first-touch page faults
    cost about as much as computing them. 2 MiB pages (``MADV_HUGEPAGE``) make that ~6× cheaper.
    """
    n = int(np.prod(shape))
    dtype = np.dtype(str(like.dtype).removeprefix("torch."))
    nbytes = n * dtype.itemsize
    if nbytes < 4 * _HUGE or like.device.type != "cpu" or not hasattr(mmap, "MADV_HUGEPAGE"):
        return like.new_empty(shape)
    try:
        mm = mmap.mmap(-1, nbytes + _HUGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        mm.madvise(mmap.MADV_HUGEPAGE)
    except (OSError, ValueError, AttributeError):
        return like.new_empty(shape)
    raw = np.frombuffer(mm, dtype=np.uint8)
    start = (-raw.ctypes.data) % _HUGE
    return torch.from_numpy(raw[start : start + nbytes].view(dtype).reshape(shape))


def _emit_layer(
    view: Any, cfg: _Config, layer: int, x: Any, hx: Any
) -> tuple[torch.Tensor, Any, list[torch.Tensor], list[torch.Tensor]]:
    """One layer's recurrence, step by step, emitting c and the gates at every step.

    It performs PyTorch's own CPU cell (``aten/src/ATen/native/RNN.cpp``: ``FullLayer`` with
    the input projection computed for all steps at once, ``LSTMCell``/``GRUCell``) op for op,
    on tensors of the same layout, so ``h`` is bitwise what PyTorch's native kernel computes
    (oneDNN, which PyTorch picks for float32 LSTMs on CPU, rounds differently by ~1e-7). Takes
    and returns what ``view``'s forward would (layout, unbatched, hx); also returns, per
    direction, ``c`` (time, sample, cell_unit) and the gates (time, sample, gate, cell_unit),
    canonical gate order, input time order.
    """
    lstm = cfg.kind == "lstm"
    bd = 0 if cfg.batch_first else 1
    if x.dim() not in (2, 3):
        raise ValueError(f"{cfg.base}: Expected input to be 2D or 3D, got {x.dim()}D instead")
    unbatched = x.dim() == 2
    xb = x.unsqueeze(bd) if unbatched else x
    n = xb.shape[bd]
    d_, u, h_ = cfg.n_dir, cfg.units, cfg.hidden_size
    if hx is None:
        h0 = xb.new_zeros(d_, n, u)
        c0 = xb.new_zeros(d_, n, h_)
    else:
        h0, c0 = hx if lstm else (hx, None)
        if unbatched:
            h0 = h0.unsqueeze(1)
            c0 = None if c0 is None else c0.unsqueeze(1)
    view.check_forward_args(xb, (h0, c0) if lstm else h0, None)  # PyTorch's own checks
    x_tm = xb.transpose(0, 1) if cfg.batch_first else xb
    steps = x_tm.shape[0]
    y = x_tm.new_empty(steps, n, d_ * u)
    n_gates = 4 if lstm else 3
    linear = torch.nn.functional.linear
    cs: list[torch.Tensor] = []
    gs: list[torch.Tensor] = []
    finals_h, finals_c = [], []
    for d in range(d_):
        sfx = f"_l{layer}" + ("_reverse" if d else "")
        w_ih, w_hh = getattr(view, "weight_ih" + sfx), getattr(view, "weight_hh" + sfx)
        b_ih = getattr(view, "bias_ih" + sfx) if cfg.bias else None
        b_hh = getattr(view, "bias_hh" + sfx) if cfg.bias else None
        w_hr = getattr(view, "weight_hr" + sfx).t() if cfg.proj_size else None
        x_in = x_tm.flip(0) if d else x_tm
        # Time-major buffers: each step's gates and c are computed in place in their slot.
        gbuf = _empty(x_tm, steps, n, n_gates, h_)
        out = y[:, :, d * u : (d + 1) * u]
        h = h0[d]
        xw = linear(x_in, w_ih, b_ih)  # the input projection of every step at once, as ATen does
        if lstm:
            cbuf = _empty(x_tm, steps, n, h_)
            c = c0[d]
            for t in range(steps):
                s = steps - 1 - t if d else t
                g = torch.add(linear(h, w_hh, b_hh), xw[t], out=gbuf[s].view(n, 4 * h_))
                i, f, gg, o = g.unsafe_chunk(4, 1)
                i.sigmoid_()
                f.sigmoid_()
                gg.tanh_()
                o.sigmoid_()
                c = torch.mul(f, c, out=cbuf[s]).add_(i * gg)
                h = o * c.tanh()
                if w_hr is not None:
                    h = torch.matmul(h, w_hr)
                out[s] = h
            cs.append(cbuf)
            finals_c.append(c)
        else:
            for t in range(steps):
                s = steps - 1 - t if d else t
                ig = xw[t].unsafe_chunk(3, 1)
                hg = linear(h, w_hh, b_hh).unsafe_chunk(3, 1)
                slot = gbuf[s]
                r = torch.add(hg[0], ig[0], out=slot[:, 1]).sigmoid_()
                z = torch.add(hg[1], ig[1], out=slot[:, 0]).sigmoid_()
                cand = ig[2].add(hg[2].mul_(r)).tanh_()
                slot[:, 2] = cand
                h = (h - cand).mul_(z).add_(cand)
                out[s] = h
        gs.append(gbuf)
        finals_h.append(h)
    h_n = torch.stack(finals_h)
    c_n = torch.stack(finals_c) if lstm else None
    yb = y.transpose(0, 1) if cfg.batch_first else y
    if unbatched:
        yb, h_n = yb.squeeze(bd), h_n.squeeze(1)
        c_n = None if c_n is None else c_n.squeeze(1)
    return yb, ((h_n, c_n) if lstm else h_n), cs, gs


_MISSING = object()


def _run(
    model: Any, args: tuple[Any, ...], kwargs: dict[str, Any], plans: Sequence[_Plan], *, clone: bool
) -> _Recorder:
    rec = _Recorder(plans, clone=clone)
    installed: list[tuple[Any, Any]] = []
    try:
        for plan in plans:
            stand_in = rec.stand_in(plan)
            installed.append((plan.module, vars(plan.module).get("forward", _MISSING)))
            vars(plan.module)["forward"] = stand_in
        with torch.no_grad():
            model(*args, **kwargs)
    except RnnLensError:
        raise
    except (RuntimeError, ValueError, TypeError, IndexError) as e:
        raise _input_error(e, rec.active, model, args, kwargs) from e
    finally:
        for m, previous in reversed(installed):
            if previous is _MISSING:
                vars(m).pop("forward", None)
            else:
                vars(m)["forward"] = previous
    return rec


# --------------------------------------------------------------------------- errors


def _show(v: Any) -> str:
    if isinstance(v, PackedSequence):
        return f"a PackedSequence of {tuple(v.data.shape)[-1]} features, batch {int(v.batch_sizes[0])}"
    if isinstance(v, torch.Tensor):
        return f"a tensor of shape {tuple(v.shape)}, dtype {v.dtype}"
    if isinstance(v, (tuple, list)):
        return f"a {type(v).__name__} of " + ", ".join(_show(o) for o in v)
    return f"a {type(v).__name__}"


def _expected(cfg: _Config) -> str:
    dtype = "floats of the module's dtype"
    if cfg.cell:
        return (
            f"input (batch, {cfg.input_size}) or ({cfg.input_size},) and hx (batch, {cfg.hidden_size}), "
            f"{dtype}"
        )
    layout = "(batch, time, {0})" if cfg.batch_first else "(time, batch, {0})"
    h = f"({cfg.num_layers * cfg.n_dir}, batch, {cfg.units})"
    hx = f"(h0 {h}, c0 ({cfg.num_layers * cfg.n_dir}, batch, {cfg.hidden_size}))" if cfg.base == "LSTM" else h
    return (
        f"input {layout.format(cfg.input_size)} (batch_first={cfg.batch_first}; input_size="
        f"{cfg.input_size}), an unbatched (time, {cfg.input_size}) tensor, or a PackedSequence, and "
        f"optionally hx {hx}; {dtype}"
    )


def _input_error(
    e: Exception, active: list[tuple[_Plan, Any]], model: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> InputError:
    if active:
        plan, got = active[-1]
        return InputError(
            f"Recurrent module {plan.name!r} ({plan.cfg.base}) could not run on what the model passed "
            f"it: {type(e).__name__}: {e} -- it expects {_expected(plan.cfg)}; it received {_show(got)}. "
            "Check the feature size, the layout (batch_first) and the dtype of the input you gave."
        )
    given = ", ".join([_show(a) for a in args] + [f"{k}={_show(v)}" for k, v in kwargs.items()])
    return InputError(
        f"{type(model).__name__}.forward failed on the arguments given to trace ({given}): "
        f"{type(e).__name__}: {e} -- rnnlens.trace(module, *args, **kwargs) calls module(*args, "
        "**kwargs) exactly as given; pass the arguments that forward expects."
    )


# --------------------------------------------------------------------------- conversion


def _batch_major(obj: Any, cfg: _Config, unbatched: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """A sequence in the caller's format as (sample, time, feature) and its mask (packed only)."""
    if isinstance(obj, PackedSequence):
        padded, lengths = pad_packed_sequence(obj, batch_first=True)
        mask = np.arange(padded.shape[1])[None, :] < lengths.numpy()[:, None]
        return _np(padded), mask
    a = _np(obj)
    if unbatched:
        return a[None], None
    return (a if cfg.batch_first else a.transpose(1, 0, 2)), None


def _state(h: Any, d: int, unbatched: bool) -> np.ndarray | None:
    if h is None:
        return None
    a = _np(h[d])
    return a[None] if unbatched else a


def _need_x(fields: Sequence[str]) -> bool:
    return "c" in fields or "gates" in fields


def _check_dtype(t: Any, name: str, fields: Sequence[str]) -> None:
    data = t.data if isinstance(t, PackedSequence) else t
    if isinstance(data, torch.Tensor) and data.dtype == torch.bfloat16 and _need_x(fields):
        raise UnsupportedLayerError(
            f"Layer {name!r} runs in bfloat16, which NumPy cannot hold: rnnlens can return its h "
            "(as float32) but not c or gates. Ask for fields=('h',), or trace a float32 copy "
            "(copy.deepcopy(model).float()) with float32 inputs."
        )


def _seq_layer(
    spec: LayerSpec, call: _SeqCall, layer: int, fields: tuple[Field, ...], weights: Callable[..., Any]
) -> tuple[dict[str, DirectionArrays], np.ndarray | None]:
    cfg = call.plan.cfg
    out = call.outputs[layer]
    _check_dtype(out, spec.name, fields)
    seq, mask = _batch_major(out, cfg, call.unbatched)
    u = cfg.units
    emitted = layer in call.gates  # by the loop: nothing to reconstruct
    x = None
    if _need_x(fields) and not emitted:
        x = _batch_major(call.inputs[layer], cfg, call.unbatched)[0]
    hx = call.hx.get(layer)
    h0s, c0s = (hx[0], hx[1]) if isinstance(hx, tuple) else (hx, None)
    raw = RawLayer(x=x, mask=mask)
    for d, direction in enumerate(cfg.directions):
        h = seq[:, :, d * u : (d + 1) * u]
        parts = None
        if emitted:  # (time, sample, gate, unit) buffers: zero-copy (sample, time, unit) views
            gates = _np(call.gates[layer][d]).transpose(1, 0, 2, 3)
            cs = [_np(call.c[layer][d]).transpose(1, 0, 2)] if cfg.kind == "lstm" else []
            parts = (h, *cs, *(gates[:, :, k] for k in range(gates.shape[2])))
        raw.directions[direction] = RawDirection(
            seq=h,
            h0=_state(h0s, d, call.unbatched),
            c0=_state(c0s, d, call.unbatched),
            reverse=d == 1,
            weights=weights(call.plan, layer, d == 1),
            parts=parts,
        )
    return to_direction_arrays(spec, raw, fields), mask


def _generic_seq(spec: LayerSpec, call: _SeqCall) -> tuple[dict[str, DirectionArrays], np.ndarray | None]:
    """Kind "rnn": the module's own output sequence as h, split into directions."""
    cfg = call.plan.cfg
    out = call.raw_output
    if isinstance(out, (tuple, list)) and not isinstance(out, PackedSequence):
        out = out[0] if out else None
    width = cfg.n_dir * cfg.units
    ok = isinstance(out, PackedSequence) or (
        isinstance(out, torch.Tensor) and out.dim() in (2, 3) and out.shape[-1] == width
    )
    if not ok:
        raise UnsupportedLayerError(
            f"Layer {spec.name!r} ({type(call.plan.module).__name__}) overrides forward and returned "
            f"{_show(call.raw_output)}; rnnlens expected its output sequence with {width} features "
            "first. Select other layers with layers=[...], or trace the nn.LSTM/GRU/RNN it wraps."
        )
    seq, mask = _batch_major(out, cfg, isinstance(out, torch.Tensor) and out.dim() == 2)
    u = cfg.units
    arrays = {
        direction: DirectionArrays(h=seq[:, :, d * u : (d + 1) * u])
        for d, direction in enumerate(cfg.directions)
    }
    return arrays, mask


def _stack(items: list[Any], name: str, what: str) -> np.ndarray:
    """Per-call (batch, unit) tensors (or unbatched (unit,)) as (sample, time, unit)."""
    ts = [t if t.dim() == 2 else t[None] for t in items]
    sizes = sorted({int(t.shape[0]) for t in ts})
    if len(sizes) > 1:
        raise UnsupportedLayerError(
            f"Cell {name!r} was called with {what} of batch sizes {sizes} in one forward pass; rnnlens "
            "stacks the calls of one cell into one sequence, which needs the same batch at every "
            "call. Trace with fixed-size batches, or select other layers with layers=[...]."
        )
    return _np(torch.stack(ts, dim=1))


def _cell_entry(
    spec: LayerSpec, calls: _CellCalls, fields: tuple[Field, ...], weights: Callable[..., Any]
) -> tuple[dict[str, DirectionArrays], np.ndarray | None]:
    cfg, name = calls.plan.cfg, spec.name
    lstm = cfg.base == "LSTMCell"
    outs = calls.outs
    if cfg.kind == "rnn":
        outs = [o[0] if isinstance(o, (tuple, list)) else o for o in outs]
        if not all(isinstance(o, torch.Tensor) and o.shape[-1] == cfg.units for o in outs):
            raise UnsupportedLayerError(
                f"Cell {name!r} ({type(calls.plan.module).__name__}) overrides forward and does not "
                f"return its hidden state ({cfg.units} features) first; rnnlens cannot trace it. "
                "Select other layers with layers=[...]."
            )
        return {"forward": DirectionArrays(h=_stack(outs, name, "outputs"))}, None
    for o in outs:
        _check_dtype(o[0] if lstm else o, name, fields)
    h = _stack([o[0] for o in outs] if lstm else outs, name, "outputs")
    result = DirectionArrays(h=h)
    if lstm and "c" in fields:
        result.c = _stack([o[1] for o in outs], name, "outputs")
    if "gates" in fields and cfg.kind in ("lstm", "gru"):
        w = weights(calls.plan, 0, False)
        x = _stack(calls.xs, name, "inputs")

        def prev(k: int) -> np.ndarray:
            given = [hx if hx is None else (hx[k] if lstm else hx) for hx in calls.hxs]
            zero = np.zeros((h.shape[0], cfg.hidden_size), h.dtype)
            cols = [zero if g is None else _stack([g], name, "hx")[:, 0] for g in given]
            return np.stack(cols, axis=1)

        h_prev = prev(0)
        if lstm:
            gates = lstm_gates(w, np.ascontiguousarray(x), h_prev)
            c = result.c if result.c is not None else _stack([o[1] for o in outs], name, "outputs")
            i, f, g, o = (gates[:, :, k] for k in range(4))
            check_parity(c, f * prev(1) + i * g, None, layer=name, what="f * c_prev + i * g")
            check_parity(h, o * w.activation(c), None, layer=name, what="o * tanh(c)")
        else:
            gates = gru_gates(w, np.ascontiguousarray(x), h_prev)
            z, n = gates[:, :, 0], gates[:, :, 2]
            check_parity(h, z * h_prev + (1 - z) * n, None, layer=name, what="z * h_prev + (1 - z) * n")
        result.gates = tuple(gates[:, :, k] for k in range(gates.shape[2]))
    return {"forward": result}, None


# --------------------------------------------------------------------------- trace


def _accepts(model: Any, name: str) -> bool:
    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False
    return name in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def _option(model: Any, name: str, value: Any, kwargs: dict[str, Any], why: str) -> None:
    if value is None:
        return
    if _accepts(model, name):
        kwargs[name] = value
        return
    raise InputError(
        f"{name}= is not used for PyTorch modules: {why} {type(model).__name__}.forward has no "
        f"{name!r} parameter to pass it to, so rnnlens refuses it rather than ignore it."
    )


def _names(layers: str | Iterable[str] | None) -> list[str] | None:
    if layers is None:
        return None
    return [layers] if isinstance(layers, str) else list(layers)


def capture(model: Any, args: tuple[Any, ...], kwargs: Mapping[str, Any], options: TraceOptions) -> Captured:
    """PyTorch implementation of :meth:`rnnlens.adapters.Adapter.capture`: calls
    ``model(*args, **kwargs)`` once.

    ``strategy`` says how ``c`` and gates of ``nn.LSTM``/``nn.GRU`` are obtained (both exact):
    ``"emit"``: rnnlens' step loop emits them; ``"reconstruct"``: ``h`` from PyTorch's fused
    kernel, gates rebuilt in one batched matmul and ``c`` by a scan, checked against ``h``;
    ``"auto"`` (default): emit on CPU, reconstruct elsewhere and for PackedSequence inputs.
    See the module docstring for names, semantics and what is (temporarily) touched.
    """
    layers, fields, mask, batch_size, strategy = (
        options.layers,
        options.fields,
        options.mask,
        options.batch_size,
        options.strategy,
    )
    kwargs = dict(kwargs)
    _require_module(model)
    if isinstance(model, torch.jit.ScriptModule):
        raise UnsupportedModelError(
            f"{type(model).__name__} is a TorchScript module: its forward runs compiled code, which "
            "rnnlens cannot observe step by step. Load the weights into the Python module and trace "
            "that: rnnlens.load_model(path, module=MyModel(...), unsafe=True). describe() works "
            "on TorchScript modules."
        )
    _option(
        model,
        "mask",
        mask,
        kwargs,
        "the valid steps come from the PackedSequence the model passes to its recurrent modules "
        "(torch.nn.utils.rnn.pack_padded_sequence).",
    )
    _option(
        model,
        "batch_size",
        batch_size,
        kwargs,
        "the forward pass runs once on the arguments as given; split large inputs yourself and "
        "call trace per batch.",
    )
    recurrent, others = _walk(model)
    static = [(spec, name) for name, _, cfg in recurrent for spec in _static_specs(name, cfg)]
    names = _names(layers)
    # Validate names and fields before running anything: "#k" selects a later call of a module.
    stripped = None if names is None else list(dict.fromkeys(_CALL_SUFFIX.sub("", n) for n in names))
    chosen = select_layers([s for s, _ in static], stripped, other_layers=others)
    static_fields = resolve_fields(chosen, fields)
    owner = {s.name: module_name for s, module_name in static}
    plans = []
    for name, m, cfg in recurrent:
        mine = {s.name: static_fields[s.name] for s in chosen if owner[s.name] == name}
        if mine and cfg.scripted:
            raise UnsupportedModelError(
                f"Recurrent submodule {name!r} is TorchScript (compiled), so rnnlens cannot observe it. "
                "Build the model from Python modules and load the weights into it "
                "(load_model(path, module=...)), or select other layers with layers=[...]."
            )
        if cfg.scripted:
            continue
        loop = cfg.expanded and any(
            n != f"{name}.l{cfg.num_layers - 1}" or _need_x(f) for n, f in mine.items()
        )
        emit = frozenset(
            int(n.rsplit(".l", 1)[1]) if cfg.expanded else 0
            for n, f in mine.items()
            if _need_x(f) and not cfg.cell and cfg.kind in ("lstm", "gru")
        )
        plans.append(_Plan(name, m, cfg, record=bool(mine), loop=loop, emit=emit, strategy=strategy))

    flags = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        given = [(t, t._version) for t in _tensors([*args, *kwargs.values()])]
        rec = _run(model, args, kwargs, plans, clone=False)
        if rec.tampered():  # the model changed a captured tensor in place: run again, keeping copies
            changed = [tuple(t.shape) for t, v in given if t._version != v]
            if changed:
                raise UnsupportedModelError(
                    f"forward modified its own input tensor(s) of shape {changed} in place after a "
                    "recurrent module read them, so rnnlens can neither use what it captured nor run "
                    "forward again on the original input. Pass a copy (x.clone()) for rnnlens to "
                    "trace, or avoid in-place operations on the input in forward."
                )
            rec = _run(model, args, kwargs, plans, clone=True)
    finally:
        for m, flag in flags:
            m.training = flag

    entries = _entries(rec, static_fields)
    dynamic = [spec for spec, _ in entries]
    if not dynamic and names is None:
        raise UnsupportedLayerError(
            "forward did not call any of the selected recurrent modules "
            f"{[p.name for p in plans if p.record]} with these arguments, so there are no states to "
            "return. Check the arguments, or that "
            "the recurrent modules are called through module(...)."
        )
    selected = _select_dynamic(dynamic, names, static)
    builders = dict(entries)
    weights_cache: dict[tuple[int, int, bool], CellWeights | None] = {}

    def weights(plan: _Plan, layer: int, reverse: bool) -> CellWeights | None:
        key = (id(plan.module), layer, reverse)
        if key not in weights_cache:
            weights_cache[key] = _weights(plan.module, plan.cfg, layer, reverse)
        return weights_cache[key]

    batch = {spec.name: builders[spec](weights) for spec in selected}
    return Captured(selected, [batch], backend="torch")


def _entries(
    rec: _Recorder, static_fields: Mapping[str, tuple[Field, ...]]
) -> list[tuple[LayerSpec, Callable[..., Any]]]:
    """Every traced entry in call order: its spec (with its dynamic name) and a builder."""
    out: list[tuple[LayerSpec, Callable[..., Any]]] = []
    for entry in rec.entries:
        plan = entry.plan
        specs = _static_specs(plan.name, plan.cfg)
        if isinstance(entry, _CellCalls):
            spec = specs[0]
            if spec.name in static_fields:
                f = static_fields[spec.name]
                out.append((spec, lambda w, spec=spec, entry=entry, f=f: _cell_entry(spec, entry, f, w)))
            continue
        suffix = f"#{entry.index}" if entry.index else ""
        for layer, base in enumerate(specs):
            if base.name not in static_fields:
                continue
            spec = LayerSpec(
                base.name + suffix,
                base.kind,
                base.layer_type,
                base.units,
                base.directions,
                base.fields,
                base.cell_units,
                base.notes,
            )
            f = static_fields[base.name]
            if plan.cfg.kind == "rnn":
                out.append((spec, lambda w, spec=spec, entry=entry: _generic_seq(spec, entry)))
            else:
                real = layer if plan.cfg.expanded else plan.cfg.num_layers - 1
                out.append(
                    (
                        spec,
                        lambda w, spec=spec, entry=entry, real=real, f=f: _seq_layer(spec, entry, real, f, w),
                    )
                )
    return out


def _select_dynamic(
    dynamic: list[LayerSpec], names: list[str] | None, static: list[tuple[LayerSpec, str]]
) -> list[LayerSpec]:
    if names is None:
        return dynamic
    available = [s.name for s in dynamic]
    for name in names:
        if name in available:
            continue
        base = _CALL_SUFFIX.sub("", name)
        calls = [n for n in available if _CALL_SUFFIX.sub("", n) == base]
        err = LayerNotFoundError(name, available)
        if calls:
            msg = (
                f"No traced layer named {name!r}: {base!r} was called {len(calls)} time(s) in this "
                f"forward pass, traced as {calls}. Expected one of {available}."
            )
        else:
            msg = (
                f"No traced layer named {name!r}: recurrent layer {base!r} exists but forward did not "
                f"call it with these arguments, so it has no states. Traced layers: {available}."
            )
        err.args = (msg,)
        raise err
    wanted = set(names)
    return [s for s in dynamic if s.name in wanted]
