"""The recording forward pass: instance ``forward`` stand-ins that capture every recurrent call.

:class:`_Recorder` builds, per :class:`~.calls._Plan`, a stand-in ``forward`` that runs the
module (its own ``forward``, layer by layer through one-layer views sharing its parameters, or
the emitting step loop) and stores its inputs, ``hx`` and outputs, copied or watched for
in-place changes; :func:`_run` installs the stand-ins as instance attributes, calls the model
once under ``torch.no_grad()``, removes them again and turns a failing call into an
:class:`~rnnlens.errors.InputError`.
"""

from __future__ import annotations

import contextlib
import os
import re
import weakref
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch.nn.utils.rnn import PackedSequence

from ...core.edits import WRITE
from ...core.kinds import KINDS
from ...errors import InputError, RnnLensError, UnsupportedLayerError
from ..base import Args
from . import direct, forms, wrapped
from .calls import _CellCalls, _Plan, _SeqCall
from .cell_emit import GruCellGates, LstmCellGates
from .cell_write import edit_write
from .convert import _input_error
from .discover import _Config, base_class, genuine_forward
from .emit import _can_emit, _emit_layer
from .emit_loop import _apply
from .fold import run_folded

_LAYER_OF = re.compile(r"_l(\d+)(?:_reverse)?$")
_PACKAGE = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))) + os.sep


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
    if cfg.quantized:
        from .quantized_rnn import layer_view

        return layer_view(m, cfg, layer)
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
        self.output: Any = None  # what the model returned
        #: called after each recorded call (a recording that writes to a store as it goes)
        self.on_call: Callable[[], None] | None = None
        #: an LSTMCell whose gates are asked for computes them in its call (:mod:`.cell_emit`)
        self.cell_gates = not clone

    # ---- bookkeeping
    def keep(self, obj: Any) -> Any:
        """What to store of a tensor the model's own code also holds (copy or watch it). An
        inference tensor (made under ``torch.inference_mode()``) has no version counter to
        watch: it is copied."""
        if obj is None:  # no hx given
            return None
        if not self.clone:  # the common cases, per step in a cell loop: a tensor, a tuple of them
            # (an inference tensor's _version raises: it is copied below; no is_inference calls)
            try:
                if isinstance(obj, torch.Tensor):
                    self.watched.append((obj, obj._version))
                    return obj
                if type(obj) is tuple:
                    versions = [(t, t._version) for t in obj if isinstance(t, torch.Tensor)]
                    if len(versions) == len(obj):
                        self.watched.extend(versions)
                        return obj
            except RuntimeError:
                pass
        if isinstance(obj, torch.Tensor):
            return obj.clone()
        if self.clone or any(t.is_inference() for t in _tensors(obj)):
            return _clone(obj)
        self.watched.extend((t, t._version) for t in _tensors(obj))
        return obj

    def tampered(self) -> bool:
        return any(t._version != v for t, v in self.watched)

    # ---- stand-ins
    def stand_in(self, plan: _Plan) -> Callable[..., Any]:
        m, cfg = plan.module, plan.cfg
        original = m.forward  # bound: the class forward, or the user's own instance attribute
        if not KINDS[cfg.kind].known:
            return self._generic(plan, original)
        # PyTorch's, also where a wrapper patched the class; a quantized module's is its class's own
        own = type(m).forward if cfg.quantized else genuine_forward(base_class(cfg))
        if own is None:
            raise UnsupportedLayerError(
                f"{plan.name!r}: {base_class(cfg).__name__}.forward is replaced by "
                f"{wrapped.describe_wrapper(base_class(cfg).forward)}, and rnnlens finds no PyTorch "
                "forward behind it (no __wrapped__). Import rnnlens before patching, or set "
                "__wrapped__ on the patch (functools.wraps)."
            )
        if cfg.cell:
            inner = self._cell(plan, own)
        else:
            views = [m]
            if cfg.num_layers > 1 and plan.record and (plan.loop or plan.emit):
                views = [_layer_view(m, cfg, layer) for layer in range(cfg.num_layers)]
            inner = self._seq(plan, own, views)
        if cfg.wrapped:
            watch = plan.record or bool(plan.edits)
            return wrapped.through(plan.name, m, cfg, original, direct.unwatched(inner), watch)
        return inner

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

    def _cell_calls(self, plan: _Plan, emit: Any = None) -> _CellCalls:
        key = id(plan.module)
        if key not in self.cells:
            self.cells[key] = _CellCalls(plan, emitted=emit)
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
        active, keep = self.active, self.keep
        edits = plan.edits_for(0, 0)  # a cell has one layer and all its calls are one entry
        emit = None
        if plan.record and plan.emit and edits is None and self.cell_gates and not plan.cfg.quantized:
            kind = {"LSTMCell": LstmCellGates, "GRUCell": GruCellGates}.get(plan.cfg.base)
            emit = None if kind is None else kind(m)

        def forward(input: Any, hx: Any = None) -> Any:
            # (called per step of a cell loop: the work per call is kept to the bookkeeping itself)
            active.append((plan, input))
            out = None if emit is None else emit(input, hx, cls_forward)
            if out is None:
                out = cls_forward(m, input, hx)
            active.pop()
            if edits is not None:
                step = len(self._cell_calls(plan).xs)
                self._cell_calls(plan).computed[step] = _clone(out)  # for the parity check
                out = _edit_cell_output(plan, edits, step, out, input, hx)
            if plan.record:
                calls = self.cells.get(id(m)) or self._cell_calls(plan, emit)
                calls.xs.append(keep(input))
                calls.hxs.append(keep(hx))
                calls.outs.append(keep(out))
                if self.on_call is not None:
                    self.on_call()
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
            # (each check skipped when it cannot matter: a recording calls this per token)
            emit = plan.emit if plan.emit and _can_emit(input, cfg, plan.strategy) else frozenset()
            number = self.counts.get(id(m), 0)
            edits = {}
            if plan.edits:
                edits = {k: e for k in range(cfg.num_layers) if (e := plan.edits_for(k, number)) is not None}
            if edits:
                _check_editable(plan, input)
                emit = emit | frozenset(edits)
            call = _SeqCall(plan, -1, packed, unbatched)
            if not plan.loop and not emit:  # the module's own call: all it gives is needed
                out = cls_forward(m, input, hx)
                call.inputs, call.outputs = {top: input}, {top: out[0]}
            else:
                finals = []
                x = input
                for layer, view in enumerate(views):
                    hx_l = _hx_slice(hx, layer, cfg.n_dir)
                    folded = None
                    if (
                        layer in edits
                        and layer not in plan.emit
                        and not packed
                        and len(views) == cfg.num_layers
                        and not cfg.quantized
                    ):
                        # h fixed to constants on a range of steps: the fused kernel, weights folded
                        folded = run_folded(view, cfg, layer, x, hx_l, edits[layer])
                    if folded is not None:
                        y, final = folded
                    elif layer in emit:
                        keep = layer in plan.emit  # its c or gates are asked for, not only edited
                        y, final, cs, gs = _emit_layer(
                            view, cfg, layer, x, hx_l, edits.get(layer), keep, plan.strategy
                        )
                        if keep:
                            call.c[layer], call.gates[layer] = cs, gs
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
            call.final = self.keep(out[1]) if isinstance(out, (tuple, list)) and len(out) > 1 else None
            kept_hx = self.keep(hx)
            if cfg.num_layers == 1:  # the whole hx is the one layer's (as _hx_slice gives it)
                whole = tuple(kept_hx) if isinstance(kept_hx, list) else kept_hx
                call.hx = {layer: whole for layer in call.inputs}
            else:
                call.hx = {layer: _hx_slice(kept_hx, layer, cfg.n_dir) for layer in call.inputs}
            first = min(call.inputs)
            call.inputs[first] = self.keep(call.inputs[first])
            call.outputs[top] = self.keep(call.outputs[top])
            if self.on_call is not None:
                self.on_call()
            return out

        return forward


def _check_editable(plan: _Plan, input: Any) -> None:
    if isinstance(input, PackedSequence):
        input = input.data
    if isinstance(input, torch.Tensor) and input.dtype == torch.bfloat16:
        raise UnsupportedLayerError(
            f"{plan.name!r} runs in bfloat16: edits are not implemented for bfloat16 layers (rnnlens "
            "traces them, but does not yet replay oneDNN's bfloat16 arithmetic with an edit). Trace it "
            "(every field), or edit a float32 copy of the model (model.float())."
        )
    if not isinstance(input, torch.Tensor) or input.dtype not in (
        torch.float16,
        torch.float32,
        torch.float64,
    ):
        raise UnsupportedLayerError(
            f"{plan.name!r}: edits need a floating-point input tensor; received "
            f"{getattr(input, 'dtype', type(input).__name__)}."
        )


def _edit_cell_output(plan: _Plan, edits: Any, step: int, out: Any, input: Any, hx: Any) -> Any:
    """A cell call is one step: edit its returned h (and c) in place, as the loop will carry them
    (an LSTM's or GRU's write first: :mod:`.cell_write`)."""
    lstm = plan.cfg.kind == "lstm"
    h, c = (out[0], out[1]) if lstm else (out, None)
    unbatched = h.dim() == 1
    if plan.cfg.kind in ("lstm", "gru"):
        ops = edits.ops_at("forward", WRITE + ("c" if lstm else "h"), step, 1 if unbatched else h.shape[0])
        if ops:
            one = (lambda a: a.unsqueeze(0)) if unbatched else (lambda a: a)
            state = None if hx is None else tuple(map(one, hx)) if lstm else one(hx)
            edit_write(plan.module, plan.cfg.kind, one(input), state,
                       (one(h), one(c)) if lstm else one(h), ops, layer=plan.name)  # fmt: skip
    for field_name, state in (("h", h), ("c", c)):
        if state is not None:
            ops = edits.ops_at("forward", field_name, step, 1 if unbatched else h.shape[0])
            _apply(state.unsqueeze(0) if unbatched else state, ops)
    return out


_MISSING = object()


def _install(rec: _Recorder, plans: Sequence[_Plan], *, watched: bool = True) -> list[tuple[Any, Any]]:
    """Put each plan's stand-in ``forward`` on its module (an instance attribute); returns what
    :func:`_uninstall` needs to put everything back as it was. ``watched``: the pass may run
    under the direct-call mode (:func:`_run`), which the stand-ins step out of; a recording
    never installs it, so its stand-ins are called as they are (per token, every call counts)."""
    installed: list[tuple[Any, Any]] = []
    try:
        for plan in plans:
            stand_in = rec.stand_in(plan)
            installed.append((plan.module, vars(plan.module).get("forward", _MISSING)))
            vars(plan.module)["forward"] = direct.unwatched(stand_in) if watched else stand_in
    except BaseException:
        _uninstall(installed)
        raise
    return installed


def _uninstall(installed: list[tuple[Any, Any]]) -> None:
    for m, previous in reversed(installed):
        if previous is _MISSING:
            vars(m).pop("forward", None)
        else:
            vars(m)["forward"] = previous


def _run(
    model: Any,
    args: Args,
    kwargs: dict[str, Any],
    plans: Sequence[_Plan],
    *,
    clone: bool,
    planner: Callable[[str, Any], _Plan | None] | None = None,
) -> _Recorder:
    """One recording forward pass; ``planner(name, module)`` plans a direct ``torch._VF``
    recurrent call (:mod:`.direct`), or says None to let it run unrecorded."""
    rec = _Recorder(plans, clone=clone)
    installed = _install(rec, plans, watched=planner is not None)  # (no planner: no mode to step out of)
    watch = _direct_watch(rec, model, planner) if planner is not None else contextlib.nullcontext()
    try:
        with torch.no_grad(), watch:
            rec.output = model(*args, **kwargs)
    except RnnLensError:
        raise
    except AssertionError as e:
        if not str(e).startswith("Guard failed"):
            raise
        raise InputError(
            f"The exported program refuses these inputs ({e}): torch.export specialized it to the "
            "shapes it was exported with. Pass inputs of those shapes (extract_to: batch_size= the "
            "exported batch), or export with dynamic shapes (torch.export.export(..., "
            "dynamic_shapes=...) with torch.export.Dim)."
        ) from e
    except (RuntimeError, ValueError, TypeError, IndexError, AttributeError, KeyError) as e:
        if _raised_by_rnnlens(e, rec.active):
            raise RnnLensError(
                f"rnnlens' own recording of {type(model).__name__}.forward failed ({type(e).__name__}: "
                f"{e}); the model and its arguments are not the cause. This is a defect in rnnlens: "
                "please report it with the model's class and the input shapes."
            ) from e
        raise _input_error(e, rec.active, model, args, kwargs) from e
    finally:
        _uninstall(installed)
    return rec


# where a module's input can fail PyTorch's checks (a shape, a dtype): the module's input is to blame
_COMPUTES = frozenset({"emit.py", "emit_loop.py", "emit_packed.py", "fold.py"})


def _raised_by_rnnlens(e: BaseException, active: list[Any]) -> bool:
    """Whether ``e`` was raised in rnnlens' own bookkeeping (its innermost Python frame is
    rnnlens' code, outside the step loop a recurrent module's input runs through)."""
    tb = e.__traceback__
    code = None
    while tb is not None:
        code = tb.tb_frame.f_code
        tb = tb.tb_next
    if code is None or not os.path.abspath(code.co_filename).startswith(_PACKAGE):
        return False
    if code.co_name == "__torch_function__":  # the direct-call mode passing the model's own op on
        return False
    return not (active and os.path.basename(code.co_filename) in _COMPUTES)


def _direct_watch(rec: _Recorder, model: Any, planner: Callable[[str, Any], _Plan | None]) -> Any:
    """The mode that routes direct recurrent op calls through recorded stand-ins (one plan and
    one meta-device module per weight set, kept for later calls: they chain and count as one
    module's calls)."""
    paths: dict[int, str] = {}  # module -> path, built at the first direct call (most models make none)
    graph = forms.exported_paths(model)  # an exported program: its op nodes' paths, in call order
    count = [0]
    routes: dict[tuple[Any, ...], tuple[Callable[..., Any] | None, Any]] = {}
    names: dict[str, int] = {}

    def route(call: direct.DirectCall, func: Any, args: Args) -> Any:
        if call.train and call.dropout > 0 and call.num_layers > 1:
            raise UnsupportedLayerError(
                f"A direct torch._VF.{call.base.lower()} call ran in training mode with dropout="
                f"{call.dropout} between its layers, which rnnlens cannot reproduce. Call it with "
                "train=self.training (rnnlens traces in eval mode)."
            )
        key = call.key()
        node = count[0]
        count[0] += 1
        if key not in routes:
            if not paths:
                paths.update((id(m), p or type(model).__name__.lower()) for p, m in model.named_modules())
            path = (
                graph[node]
                if graph is not None and node < len(graph)
                else direct.caller(paths) or f"vf_{call.base.lower()}"
            )
            k = names.get(path, 0)
            names[path] = k + 1
            module = direct.module_for(call)
            plan = planner(path if k == 0 else f"{path}.vf{k}", module)
            routes[key] = (None if plan is None else rec.stand_in(plan), module)
        stand_in, _ = routes[key]
        if stand_in is None:  # not selected: the op runs as the model called it
            return func(*args)
        return direct.op_result(call, stand_in(call.input, direct.user_order(call)))

    return direct.DirectCalls(lambda: bool(rec.active), route)
