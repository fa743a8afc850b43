"""PyTorch adapter: run the user's own ``forward`` once and capture every recurrent module it calls.

What is traced
--------------
``nn.LSTM``, ``nn.GRU`` and ``nn.RNN`` (``tanh`` and ``relu``; kind ``"simple"``) with any
``num_layers``, ``bidirectional``, ``batch_first``, ``bias``, ``proj_size`` (LSTM: ``h`` has
``proj_size`` units, ``c`` has ``hidden_size``), user-given ``hx``, unbatched inputs and
``PackedSequence`` inputs; and hand-written loops over ``nn.LSTMCell`` / ``nn.GRUCell`` /
``nn.RNNCell``. A subclass of ``nn.LSTM``/``nn.GRU``/``nn.RNN`` that overrides ``forward``
(packing its input itself, handling empty sequences, ...) runs its own ``forward`` unchanged;
the ``super().forward(...)`` call inside it (or ``nn.LSTM.forward(self, ...)``) is what is
traced, with every field. A module whose ``forward`` is wrapped by a function that calls the
original (an instance attribute: nnsight's ``NNsight(model)``, accelerate's hooks,
``functools.wraps``; or a class-level patch) is traced through the wrapper to the original,
with every field and the names of the unwrapped model (:mod:`.wrapped`); a wrapper that never
calls the original is an error naming the module and the wrapper. A cell subclass that
overrides ``forward`` computes something rnnlens does not know: its per-step outputs are given
as ``h`` (kind ``"rnn"``).
A module that holds its own weights and calls the fused op itself (``torch._VF.lstm`` /
``gru`` / ``rnn_tanh`` / ``rnn_relu``, ``torch.lstm``; either overload) is traced too, with
every field, under the calling module's path (:mod:`.direct`; ``layers=None`` only, since
such calls are found while running; :func:`describe` cannot list them).

Names
-----
A recurrent module is named by its path in ``module.named_modules()`` (``"encoder.rnn"``).
The module passed to :func:`rnnlens.trace` itself, when it is recurrent, is named after its
PyTorch class in lower case (``"lstm"``, ``"gru"``, ``"rnn"``, ``"lstmcell"``, ...).

* ``num_layers > 1``: one entry per layer, ``"<path>.l0"``, ``"<path>.l1"``, ... (a single
  layer module keeps the plain path).
* The same ``nn.LSTM``/``nn.GRU``/``nn.RNN`` called several times in one ``forward``: calls
  that each start from exactly the state the previous call returned (a decoder fed one token
  at a time: ``y, state = rnn(x, state)``) are joined along time into one entry under the
  first call's name (``trace(..., calls="join")``, the default; one direction, tensor inputs).
  Other calls, and every call with ``calls="each"``, are entries of their own: the first call
  has the plain name, later calls add ``"#1"``, ``"#2"``, ... at the end (``"decoder.rnn"``,
  ``"decoder.rnn#1"``, ``"decoder.rnn.l0#1"``). Interventions name calls this way too.
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

Whatever the model's own ``forward`` changes on itself — a recurrent state it keeps
(``self.hidden = ...``), a counter, buffers, BatchNorm statistics — is put back afterwards, also
after an error (:mod:`.unchanged`). Inputs made under ``torch.inference_mode()`` and calls made
inside it work alike (an inference tensor has no version counter: what is kept of one is copied).

* ``h`` only: a multi-layer module runs *layer by layer* through PyTorch's own kernel
  (``_VF.lstm`` and friends with that layer's weights, ``num_layers=1``, via the module's own
  ``forward`` on a one-layer view sharing its parameters) instead of in one call: every
  layer's full sequence for the cost of the one forward pass, bitwise what the fused
  multi-layer call returns on CPU. A single-layer module simply runs its own ``forward``.
  A bare ``nn.LSTM``/``GRU``/``RNN`` (nothing but PyTorch's own code runs) is its own output,
  with no recording at all (:mod:`.express`, under ``torch.inference_mode()``).
* ``c`` / gates, ``strategy="emit"`` (the default on CPU): the layers whose ``c`` or gates are
  asked for run in rnnlens' step loop, which performs PyTorch's native CPU cell op for op
  (input projection of all steps in one matmul, then per step one matmul and in-place
  activations written straight into the output buffers; an LSTM's ``tanh`` from NumPy, and
  from 256 hidden units a step's ``h @ W_hh.T`` on oneDNN's matmul, both faster there:
  :mod:`.emit_fast`): ``h`` within a few 1e-7 of PyTorch's kernels (the oneDNN kernel PyTorch
  picks for float32 LSTMs, the native one otherwise; a GRU: within ~2e-7 of the native
  kernel). An LSTM on a small batch under ``"auto"`` runs the kernel instead and rebuilds
  ``c`` and the gates of all steps from its ``h`` at once (:mod:`.rebuild_fast`). A
  ``PackedSequence`` runs each step on the samples still in it (:mod:`.emit_packed`).
* ``strategy="reconstruct"`` (the default off CPU): ``h`` from the kernel, then
  :func:`rnnlens.core.rebuild.reconstruct_direction` (gates in one batched matmul, ``c`` by an
  elementwise scan, parity-checked against the kernel's ``h``).

If the model modifies a captured tensor in place after the recurrent module returned it
(``out += residual``), rnnlens notices (tensor version counters) and runs the forward once
more, keeping copies; if it modified its own *input* in place, that is an error.

Arguments: ``trace(module, *args, **kwargs)`` calls ``module(*args, **kwargs)``. The ``mask=``
and ``batch_size=`` options of :func:`rnnlens.trace` are not used for PyTorch (masks come from
``PackedSequence``; the pass runs once on the arguments as given): when the module's ``forward``
has a parameter of that name they are passed to it, otherwise they are an ``InputError``.

TorchScript modules (``torch.jit.script`` / ``torch.jit.trace``; opening a TorchScript file
takes ``unsafe=True``) run compiled code that cannot be observed step by step: :func:`trace`
reads them through their ONNX export, checked against the module's own outputs
(:mod:`.scripted`; needs the ``onnx`` extra); :func:`rnnlens.intervene` and
:func:`rnnlens.record` refuse them: load the weights into the Python module with
:func:`load_model` (``module=``) for those. ``torch.compile``'d modules are traced through the
module they wrap; ``torch.export`` programs (the object, ``ep.module()``, a ``.pt2`` file opened
with ``unsafe=True``) op node by op node, named by the module each node was exported from, edits
included; quantized TorchScript and unrolled programs are refused saying why (:mod:`.forms`).

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
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import torch

from ...core.edits import LayerEdits
from ...core.kinds import KINDS
from ...core.spec import CellWeights, Field, LayerSpec, call_entry
from ...core.tracing import resolve_fields, select_layers
from ...errors import (
    InputError,
    LayerNotFoundError,
    UnsupportedLayerError,
    UnsupportedModelError,
)
from ..base import Args, Captured, Edits, Intervened, Kwargs, TraceOptions
from . import forms
from .calls import _CellCalls, _Plan
from .chains import chain_calls, merge
from .convert import _cell_entry, _generic_seq, _need_x, _seq_layer
from .discover import _config, _require_module, _static_specs, _walk, describe
from .outputs import _outputs
from .record import _Recorder, _run, _tensors
from .trusted import own_code_only
from .unchanged import unchanged
from .weights import _weights

__all__ = ["capture", "describe"]

_CALL_SUFFIX = re.compile(r"#\d+$")


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
    return None if layers is None else [layers] if isinstance(layers, str) else list(layers)


def capture(model: Any, args: Args, kwargs: Kwargs, options: TraceOptions) -> Captured:
    """PyTorch implementation of :meth:`rnnlens.adapters.Adapter.capture` (see :func:`_capture`;
    a TorchScript module goes through its ONNX export, :mod:`.scripted`)."""
    if isinstance(model, torch.jit.ScriptModule):
        from . import scripted

        forms.check_quantized_script(model)
        return scripted.capture(model, args, kwargs, options)
    return _capture(model, args, kwargs, options, {})[0]


def intervene(model: Any, args: Args, kwargs: Kwargs, edits: Edits, options: TraceOptions) -> Intervened:
    """PyTorch implementation of :meth:`rnnlens.adapters.Adapter.intervene`: one forward pass
    in which every edited layer runs rnnlens' step loop with the edits applied in place."""
    # edits name each call ("#k", steps counted per call), so the states keep one entry per call
    captured, output = _capture(model, args, kwargs, replace(options, calls="each"), edits)
    return Intervened(outputs=_outputs(output, copy=not options.outputs_only), captured=captured)


def _capture(
    model: Any,
    args: Args,
    kwargs: Kwargs,
    options: TraceOptions,
    edits: Edits,
) -> tuple[Captured, Any]:
    """PyTorch implementation of :meth:`rnnlens.adapters.Adapter.capture`: calls
    ``model(*args, **kwargs)`` once.

    ``strategy`` says how ``c`` and gates of ``nn.LSTM``/``nn.GRU`` are obtained (both exact):
    ``"emit"``: rnnlens' step loop emits them; ``"reconstruct"``: ``h`` from PyTorch's fused
    kernel, gates rebuilt in one batched matmul and ``c`` by a scan, checked against ``h``;
    ``"auto"`` (default): emit on CPU (padded or packed inputs), reconstruct elsewhere.
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
        forms.check_quantized_script(model)
        raise UnsupportedModelError(
            f"{type(model).__name__} is a TorchScript module: its forward runs compiled code, which "
            "rnnlens cannot edit step by step (rnnlens.trace reads it through its ONNX export). Load "
            "the weights into the Python module and intervene on that: "
            "rnnlens.load_model(path, module=MyModel(...), unsafe=True)."
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
    forms.check_exported(model)
    planned = _plans(model, layers, fields, strategy, edits)
    # eval mode by each module's flag, not model.eval() (an exported program's module refuses it);
    # the flags, and whatever forward changes on the model (its state, buffers), are put back
    # PyTorch's own code only (a bare nn.LSTM): nothing to put back but the flags, no direct calls
    own = own_code_only(model, args, kwargs)
    direct = None if own else planned.direct
    with unchanged(model, own_code_only=own) as snapshot:
        for m in model.modules():
            if m.training:  # (set only where it changes: a module's __setattr__ is not free)
                m.training = False
        # (an inference tensor has no version counter; the recorder copies what it keeps of one)
        given = [(t, t._version) for t in _tensors([*args, *kwargs.values()]) if not t.is_inference()]
        rec = _run(model, args, kwargs, planned.plans, clone=False, planner=direct)
        if rec.tampered():  # the model changed a captured tensor in place: run again, keeping copies
            changed = [tuple(t.shape) for t, v in given if t._version != v]
            if changed:
                raise UnsupportedModelError(
                    f"forward modified its own input tensor(s) of shape {changed} in place after a "
                    "recurrent module read them, so rnnlens can neither use what it captured nor run "
                    "forward again on the original input. Pass a copy (x.clone()) for rnnlens to "
                    "trace, or avoid in-place operations on the input in forward."
                )
            snapshot.restore()  # the second run starts from the model as it was
            for m in model.modules():
                m.training = False
            planned = _plans(model, layers, fields, strategy, edits)  # fresh: direct plans again
            direct = None if own else planned.direct
            rec = _run(model, args, kwargs, planned.plans, clone=True, planner=direct)
    return _captured(rec, planned, join=options.calls == "join"), rec.output


@dataclass
class _Planned:
    """What ``_plans`` decided: the plans and what the conversion afterwards needs."""

    plans: list[_Plan]
    static_fields: dict[str, tuple[Field, ...]]
    names: list[str] | None
    static: list[tuple[LayerSpec, str]]
    fields: Any = None
    strategy: str = "auto"
    edits: Any = None  # the edits (an exported program's op nodes are edited as they run)

    def direct(self, name: str, module: Any) -> _Plan | None:
        """The plan of a direct ``torch._VF`` call found while running (:mod:`.direct`), named
        ``name``; None when ``layers=`` did not select it (its layers' names are checked
        before running, so only ``layers=None`` selects one)."""
        cfg = _config(module)
        assert cfg is not None
        specs = _static_specs(name, cfg)
        entries = _layer_names(name, cfg).values()
        own_edits = {k: e for k, e in (self.edits or {}).items() if _CALL_SUFFIX.sub("", k) in entries}
        if self.names is not None:  # selected by name: only an exported program's are known before
            mine = {s.name: self.static_fields[s.name] for s in specs if s.name in self.static_fields}
            if not mine and not own_edits:
                return None
        else:
            mine = dict(resolve_fields(specs, self.fields))
            self.static_fields.update(mine)
        plan = _plan_for(name, module, cfg, mine, self.strategy, own_edits)
        self.plans.append(plan)
        return plan


def _plans(model: Any, layers: Any, fields: Any, strategy: str, edits: Edits) -> _Planned:
    """Validate names and fields and decide, per recurrent module, what to record (before running)."""
    recurrent, others = _walk(model)
    static = [(spec, name) for name, _, cfg in recurrent for spec in _static_specs(name, cfg)]
    if not recurrent and forms.is_exported(model):  # its op nodes: named and selected like modules
        static = [(spec, spec.name) for spec in forms.describe_exported(model)]
    names = _names(layers)
    # Validate names and fields before running anything: "#k" selects a later call of a module.
    stripped = None if names is None else list(dict.fromkeys(_CALL_SUFFIX.sub("", n) for n in names))
    # no recurrent module: the forward pass may still call torch._VF's ops directly (.direct)
    chosen = (
        []
        if not static and names is None
        else select_layers([s for s, _ in static], stripped, other_layers=others)
    )
    static_fields = resolve_fields(chosen, fields)
    owner = {s.name: module_name for s, module_name in static}
    plans = []
    for name, m, cfg in recurrent:
        mine = {s.name: static_fields[s.name] for s in chosen if owner[s.name] == name}
        entries = _layer_names(name, cfg).values()
        own_edits = {key: e for key, e in edits.items() if _CALL_SUFFIX.sub("", key) in entries}
        if own_edits and cfg.scripted:
            raise UnsupportedModelError(
                f"Recurrent submodule {name!r} is TorchScript (compiled): it cannot be edited."
            )
        if cfg.scripted:
            continue
        plans.append(_plan_for(name, m, cfg, mine, strategy, own_edits))
    return _Planned(plans, dict(static_fields), names, static, fields, strategy, edits)


def _layer_names(name: str, cfg: Any) -> dict[int, str]:
    """Layer index -> entry name: every layer of a multi-layer module, else the top one."""
    if not cfg.expanded:
        return {cfg.num_layers - 1: name}
    return {k: s.name for k, s in enumerate(_static_specs(name, cfg))}


def _plan_for(
    name: str,
    m: Any,
    cfg: Any,
    mine: Mapping[str, tuple[Field, ...]],
    strategy: str,
    own_edits: dict[str, LayerEdits],
) -> _Plan:
    """What to record of one module, given the fields of its selected entries (``mine``)."""
    layer_names = _layer_names(name, cfg)
    loop = cfg.expanded and any(n != f"{name}.l{cfg.num_layers - 1}" or _need_x(f) for n, f in mine.items())
    emit = frozenset(
        int(n.rsplit(".l", 1)[1]) if cfg.expanded else 0
        for n, f in mine.items()
        if (("gates" in f) if cfg.cell else _need_x(f)) and KINDS[cfg.kind].reconstructable
    )
    return _Plan(
        name,
        m,
        cfg,
        record=bool(mine) or bool(own_edits),
        loop=loop or (bool(own_edits) and cfg.expanded),
        emit=emit,
        strategy=strategy,
        edits=own_edits,
        layer_names=layer_names,
    )


def _captured(rec: _Recorder, planned: _Planned, *, join: bool = False) -> Captured:
    """The selected entries of a recording run, converted (reconstructing where needed);
    ``join``: calls of one module that chain become one entry (:mod:`.chains`)."""
    static_fields, names, static, plans = planned.static_fields, planned.names, planned.static, planned.plans
    if join:
        original = rec.entries
        rec.entries = [merge(c) if len(c) > 1 else c[0] for c in chain_calls(rec.entries)]
        try:
            return _captured(rec, planned)
        finally:
            rec.entries = original
    entries = _entries(rec, static_fields)
    dynamic = [spec for spec, _ in entries]
    if not dynamic and not static:
        raise UnsupportedLayerError(
            "The model has no recurrent layer rnnlens can trace: no nn.LSTM/GRU/RNN module (or "
            "subclass), no nn.LSTMCell/GRUCell/RNNCell called in a loop, and forward called no "
            "recurrent op (torch._VF.lstm/gru/rnn_tanh/rnn_relu) itself. A recurrence written with "
            "other layers (h = tanh(Linear(x) + Linear(h)) in a Python loop) has no recurrent op "
            "rnnlens can see: write it with nn.RNNCell (the same weights: weight_ih, weight_hh) to "
            "trace it. Check that you passed the model that contains them."
        )
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
        for layer, base in enumerate(specs):
            if base.name not in static_fields:
                continue
            name = call_entry(base.name, entry.index)
            spec = base if name == base.name else replace(base, name=name)
            f = static_fields[base.name]
            if not KINDS[plan.cfg.kind].known:
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
                f"No traced layer named {name!r}: {base!r} is traced as {calls} in this forward pass "
                "(calls that continue the previous call's state are joined into one entry; pass "
                f"calls='each' for one entry per call). Expected one of {available}."
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
