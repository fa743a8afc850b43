"""transformers models with state-space / linear-recurrent mixers: find them, run the model once,
rebuild every step's state.

What is traced (mixers found by what they compute: :mod:`.recognise`), on transformers'
pure-PyTorch path (CPU; no ``mamba_ssm`` / ``fla`` kernels): Mamba, FalconMamba and Jamba mixers
(kind ``mamba``, :mod:`.mamba`), Zamba v1's multi-head Mamba (``mamba_heads``, :mod:`.heads`),
Mamba2 and the Mamba2 layers of hybrids (``mamba2``, :mod:`.mamba2`), RecurrentGemma's
recurrent blocks (``rglru``, :mod:`.rglru`), xLSTM's mLSTM layers (``mlstm``, :mod:`.xlstm`),
RWKV-4 time mixing (``rwkv4``, :mod:`.rwkv`), gated delta-nets (``gated_deltanet``) and Kimi
delta attention (``kimi_delta``, both :mod:`.delta`), MiniMax's lightning attention
(``lightning``, :mod:`.lightning`). A module that keeps a recurrent cache slot of no kind
rnnlens knows is refused by name (``layers=`` picks the others). Fields: ``h`` (the mixer's
output at each step), ``state`` (its recurrent state after each step, in the model's own
layout), ``state_norm`` (the state's L2 norm over its last axis, a row of units) and ``gates``
(the input-dependent step quantities, named per kind). One entry per mixer, named by its module
path (``"backbone.layers.0.mixer"``), in model order; attention and MLP layers are not entries.
:func:`intervene` edits ``state`` as the scan runs (:mod:`.edits`), and what each step writes
into it (``target="write"``) for every kind :func:`rnnlens.decompose` covers.

How: ``trace(model, input_ids, **kwargs)`` calls ``model(input_ids, **kwargs)`` once, in eval
mode under ``torch.no_grad()`` (training flags restored). Each mixer gets an instance
``forward`` that runs its own ``forward`` and keeps what it received and returned, removed
again in a ``finally``: no hook, no weight or buffer is touched, and the model returns what it
returns without rnnlens (delta-rule and multi-head Mamba mixers run a copy of their own
``forward`` whose scan helper is rnnlens' recorder: :mod:`.intercept`; so do Mamba and Mamba2
mixers, whose scan is rnnlens' own: bitwise the helper's for Mamba, within float32 rounding of
the chunked one for Mamba2, :mod:`.mamba_scan`, :mod:`.mamba2_scan`). The states are rebuilt
from the recorded inputs with the mixer's own weights and checked against the mixer's own
output (float32: rtol 1e-4, atol 2e-5).
``attention_mask`` (given as transformers takes it) becomes ``States.mask``; at padded steps
the state is what the model computes (Mamba zeroes padded inputs; the state decays).

A mixer called in decoding mode (one token, continuing a cache) is refused: trace the whole
sequence in one call (a prefill).

Example:
    >>> import torch, rnnlens
    >>> from transformers import MambaConfig, MambaForCausalLM
    >>> model = MambaForCausalLM(MambaConfig(vocab_size=50, hidden_size=8, state_size=4,
    ...                                      num_hidden_layers=2, expand=2))
    >>> states = rnnlens.trace(model, torch.tensor([[1, 2, 3, 4]]))
    >>> list(states), states["backbone.layers.0.mixer"].state.shape
    (['backbone.layers.0.mixer', 'backbone.layers.1.mixer'], (1, 4, 16, 4))
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ...core.cells import DirectionArrays
from ...core.edits import WRITE, LayerEdits
from ...core.kinds import FIELDS_BY_KIND
from ...core.spec import LayerSpec
from ...core.tracing import resolve_fields, select_layers
from ...errors import InputError, UnsupportedLayerError
from ..base import Args, Captured, Edits, Intervened, Kwargs, TraceOptions
from . import delta, heads, lightning, mamba2_check, mamba2_scan, mamba_scan
from .intercept import forward_with
from .mamba import mamba_states
from .mamba import state_shape as mamba_shape
from .mamba2 import mamba2_states
from .mamba2 import state_shape as mamba2_shape
from .recognise import mixers, refuse_unknown
from .rglru import rglru_states
from .rglru import state_shape as rglru_shape
from .rwkv import rwkv_states
from .rwkv import state_shape as rwkv_shape
from .xlstm import mlstm_scan, mlstm_states
from .xlstm import state_shape as xlstm_shape

__all__ = ["capture", "describe", "intervene"]


#: kind -> (the state's per-step shape of a mixer, what its entry's h and state are)
_STATE: dict[str, tuple[Any, str]] = {
    "mamba": (mamba_shape, "h: the mixer output; state: the selective-scan state (d_inner, d_state)"),
    "mamba2": (mamba2_shape, "h: the mixer output; state: the per-head SSM state (head, head_dim, d_state)"),
    "gated_deltanet": (
        delta.state_shape,
        "h: the mixer output; state: the delta-rule state (value head, d_k, d_v)",
    ),
    "kimi_delta": (
        delta.state_shape,
        "h: the mixer output; state: the delta-rule state with per-channel decay (head, d_k, d_v)",
    ),
    "lightning": (
        lightning.state_shape,
        "h: the mixer output; state: the decayed KᵀV memory (head, d_k, d_v)",
    ),
    "mamba_heads": (
        heads.state_shape,
        "h: the mixer output; state: each head's selective-scan state (head, head_dim, d_state)",
    ),
    "mlstm": (
        xlstm_shape,
        "h: the mLSTM layer output; state: the matrix memory C (head, d_qk, d_v); parts n, m",
    ),
    "rwkv4": (rwkv_shape, "h: the time-mixing output; state: the WKV num, den, max (part, unit)"),
    "rglru": (rglru_shape, "h: the recurrent block's output; state: the RG-LRU state (lru_width)"),
}


def _spec(path: str, m: Any, kind: str) -> LayerSpec:
    shape_of, note = _STATE[kind]
    # the mixer's output width: its own hidden_size, else its model config's (xLSTM, RWKV)
    units = int(
        m.hidden_size
        if hasattr(m, "hidden_size")
        else m.config.hidden_size
        if hasattr(m, "config")
        else m.out_proj.out_features
    )
    return LayerSpec(
        path, kind, type(m).__name__, units, ("forward",), FIELDS_BY_KIND[kind],  # type: ignore[arg-type]
        notes=(note,), state_shape=tuple(shape_of(m)), constants=_constants(m, kind),
    )  # fmt: skip


def _constants(m: Any, kind: str) -> dict[str, np.ndarray]:
    """The recurrence's constants :func:`rnnlens.decompose` needs, as the mixer computes them."""
    with torch.no_grad():
        if kind in ("mamba", "mamba2", "mamba_heads"):  # mamba_heads: (head, head_dim, d_state)
            return {"A": (-torch.exp(m.A_log.float())).numpy()}
        if kind == "rglru":  # log a_t = -8 r_t softplus(Λ)
            return {"softplus_lambda": F.softplus(m.rg_lru.recurrent_param).float().numpy()}
        if kind == "lightning":  # the per-head decay of the memory, exp(-slope_rate)
            return {"decay": torch.exp(-m.slope_rate).float().reshape(-1).numpy()}
        if kind == "rwkv4":  # the WKV kernel's per-unit log decay
            return {"decay": (-torch.exp(m.time_decay)).float().numpy()}
    return {}


def describe(model: Any) -> list[LayerSpec]:
    """The state-space / linear-recurrent mixers of a transformers model, in model order."""
    return [_spec(path, m, kind) for path, m, kind in mixers(model)]


@dataclass
class _Calls:
    """What one mixer received and returned in the forward pass."""

    kind: str
    module: Any
    calls: list[dict[str, Any]] = field(default_factory=list)
    edits: LayerEdits | None = None  # rnnlens.intervene: this mixer's state edits
    gates: bool = True
    name: str = ""


def _mamba_stand_in(m: Any, rec: _Calls, checks: mamba2_check.Checks) -> Any:
    def forward(*args: Any, **kwargs: Any) -> Any:  # the arguments as the model passes them
        hidden_states = args[0] if args else kwargs["hidden_states"]
        attention_mask = kwargs.get("attention_mask", args[2] if len(args) > 2 else None)
        cache = kwargs.get("cache", kwargs.get("cache_params", args[1] if len(args) > 1 else None))
        # Mamba's scan starts from zero unless it decodes one token; Mamba2's continues a cache
        continues = hidden_states.shape[1] == 1 or rec.kind in ("mamba2", "lightning")
        if continues and cache is not None and _has_state(cache, m.layer_idx) is not False:
            raise UnsupportedLayerError(
                f"Mixer {type(m).__name__} was called in decoding mode (continuing a cache): rnnlens "
                "traces whole sequences from their start. Pass the full input_ids in one call (no "
                "past cache)."
            )
        scan: Any = None
        fast = _FAST.get(rec.kind)
        if rec.edits is None and fast is not None and fast[0](m):
            # the states come out of this forward pass, from what its scan helper receives
            later = {"checks": checks} if rec.kind == "mamba2" else {}  # checked after the pass
            scan = fast[1](m, rec.name, gates=rec.gates, **later)
            if "cache_params" in kwargs:  # the deprecated name the unwrapped forward no longer maps
                kwargs["cache"] = kwargs.pop("cache_params")
            full = forward_with(m, scan.replacements(type(m).forward))(m, *args, **kwargs)
        else:
            full = type(m).forward(m, *args, **kwargs)
        out = full[0] if isinstance(full, tuple) else full  # lightning: (output, memory)
        call = {"x": hidden_states, "mask": attention_mask, "out": out}
        if scan is not None and scan.used:
            call["arrays"] = DirectionArrays(
                h=out.detach().float().numpy(),
                state=scan.states.numpy(),
                gates=scan.gate_arrays() if rec.gates else None,
            )
        else:
            call["x"], call["out"] = hidden_states.clone(), out.clone()
        rec.calls.append(call)
        if rec.edits is None:
            return full
        # edited: the states are rebuilt now with the edits, and the rest of the model gets the
        # output computed from them instead of the mixer's own
        n, t = hidden_states.shape[:2]
        ops = rec.edits.steps("forward", "state", t, n)
        more = {"writes": rec.edits.steps("forward", WRITE + "state", t, n)} if rec.kind in _WRITES else {}
        call["arrays"], edited = _REBUILD[rec.kind](
            m, call["x"], attention_mask, call["out"], name=rec.edits.spec.name, gates=rec.gates, ops=ops,
            **more,
        )  # fmt: skip
        return (edited.to(out.dtype), *full[1:]) if isinstance(full, tuple) else edited.to(out.dtype)

    return forward


def _intercept_stand_in(m: Any, rec: _Calls) -> Any:
    """Delta-rule and multi-head Mamba mixers: their own forward, their scan helper recorded."""

    def forward(*args: Any, **kwargs: Any) -> Any:
        if "cache_params" in kwargs:  # the deprecated name the unwrapped forward no longer maps
            kwargs["cache"] = kwargs.pop("cache_params")
        hidden_states = args[0] if args else kwargs["hidden_states"]
        mask = kwargs.get("attention_mask", args[2] if len(args) > 2 else None)
        ops = writes = None
        if rec.edits is not None:
            n, t = hidden_states.shape[0], hidden_states.shape[1]
            ops = rec.edits.steps("forward", "state", t, n)
            writes = rec.edits.steps("forward", WRITE + "state", t, n)
        scanner: Any = (
            heads.HeadScan(m, rec.name, ops, rec.gates, writes)
            if rec.kind == "mamba_heads"
            else delta.DeltaScan(rec.kind, rec.name, ops, rec.gates, writes)
        )
        env = inspect.unwrap(type(m).forward).__globals__
        out = forward_with(m, scanner.replacements(env))(m, *args, **kwargs)
        rec.calls.append({"mask": mask, "out": out, "arrays": scanner.arrays(out)})
        return out

    return forward


def _has_state(cache: Any, layer: int) -> bool | None:
    """Whether ``cache`` holds a recurrent state for ``layer`` already (None: cannot tell)."""
    if hasattr(cache, "linear_cache"):  # MiniMax: a list with [] for layers not filled yet
        kept = cache.linear_cache
        return layer < len(kept) and isinstance(kept[layer], torch.Tensor)
    get = getattr(cache, "get_recurrent_state", None)
    if get is None:
        return None
    return get(layer, state_idx=0) is not None


def _rwkv_stand_in(block: Any, rec: _Calls) -> Any:
    def forward(hidden: Any, state: Any = None, use_cache: bool = False) -> Any:
        lid = block.layer_id
        shift0 = None
        state0 = None
        if state is not None:  # the model's state, before this block updates it in place
            shift0 = state[1][:, :, lid].clone()
            state0 = tuple(s[:, :, lid].clone() for s in state[2:])
        out = type(block).forward(block, hidden, state=state, use_cache=use_cache)
        call = {"x": hidden.clone(), "shift0": shift0, "state0": state0, "out": out[0].clone()}
        rec.calls.append(call)
        if rec.edits is None:
            return out
        n, t = hidden.shape[:2]  # edited: the model goes on with the edited states' output
        ops = rec.edits.steps("forward", "state", t, n)
        writes = rec.edits.steps("forward", WRITE + "state", t, n)
        call["arrays"], edited = rwkv_states(
            block, call["x"], shift0, state0, call["out"], name=rec.edits.spec.name, gates=rec.gates,
            ops=ops, writes=writes,
        )  # fmt: skip
        return (edited.to(out[0].dtype), *out[1:])

    return forward


def _mlstm_stand_in(layer: Any, rec: _Calls) -> tuple[Any, Any]:
    backend = layer.mlstm_backend
    pending: dict[str, Any] = {}

    def backend_forward(**kwargs: Any) -> Any:
        out = type(backend).forward(backend, **kwargs)
        h = out[0] if isinstance(out, tuple) else out
        pending.update({k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in kwargs.items()})
        pending["h"] = h.clone()
        if rec.edits is None:
            return out
        n, _, t, _ = h.shape  # edited: the layer goes on with the edited memory's outputs
        ops = rec.edits.steps("forward", "state", t, n)
        writes = rec.edits.steps("forward", WRITE + "state", t, n)
        pending["scan"] = mlstm_scan(layer, pending, name=rec.edits.spec.name, ops=ops, writes=writes)
        edited_h, final = pending["scan"][3].to(h.dtype), pending["scan"][4]
        return (edited_h, final) if isinstance(out, tuple) else edited_h

    def layer_forward(x: Any, state: Any = None) -> Any:
        if state is not None and x.shape[1] == 1:
            raise UnsupportedLayerError(
                "An xLSTM layer was called in decoding mode (one token, continuing a cache): rnnlens "
                "traces whole sequences from their start. Pass the full input_ids in one call."
            )
        out = type(layer).forward(layer, x, state)
        rec.calls.append({**pending, "x": x.clone(), "out": out[0].clone()})
        pending.clear()
        return out

    return layer_forward, backend_forward


def _rglru_stand_in(block: Any, rec: _Calls) -> tuple[Any, Any]:
    lru = block.rg_lru
    pending: dict[str, Any] = {}

    def lru_forward(activations: Any, position_ids: Any) -> Any:
        if activations.shape[1] == 1 and lru.recurrent_states is not None:
            raise UnsupportedLayerError(
                "A RecurrentGemma block was called in decoding mode (one token, continuing its "
                "state): rnnlens traces whole sequences. Pass the full input_ids in one call."
            )
        h0 = None if lru.recurrent_states is None else lru.recurrent_states.clone()
        state = type(lru).forward(lru, activations, position_ids)
        pending.update(x=activations.clone(), pos=position_ids.clone(), h0=h0, state=state.clone())
        if rec.edits is None:
            return state
        n, t = activations.shape[:2]  # edited: the block goes on with the edited states' output
        ops = rec.edits.steps("forward", "state", t, n)
        writes = rec.edits.steps("forward", WRITE + "state", t, n)
        pending["arrays"], edited = rglru_states(
            lru, pending["x"], pending["pos"], h0, pending["state"], None,
            name=rec.edits.spec.name, gates=rec.gates, ops=ops, writes=writes,
        )  # fmt: skip
        return edited

    def block_forward(*args: Any, **kwargs: Any) -> Any:
        out = type(block).forward(block, *args, **kwargs)
        first = out[0] if isinstance(out, tuple) else out
        call = {**pending, "out": first.clone()}
        if "arrays" in call:
            call["arrays"].h = call["out"].detach().float().numpy()
        rec.calls.append(call)
        pending.clear()
        return out

    return block_forward, lru_forward


#: kinds whose states come out of the forward pass (:mod:`.mamba_scan`, :mod:`.mamba2_scan`)
_FAST: dict[str, tuple[Any, Any]] = {
    "mamba": (mamba_scan.available, mamba_scan.ScanRecorder),
    "mamba2": (mamba2_scan.available, mamba2_scan.Scan2Recorder),
}
_REBUILD = {"mamba": mamba_states, "mamba2": mamba2_states, "lightning": lightning.lightning_states}
#: kinds of :data:`_REBUILD` whose rebuild applies write edits (``target="write"``; RG-LRU too)
_WRITES = {"mamba", "mamba2", "lightning"}
#: kinds whose scan helper is recorded as the mixer runs (:mod:`.intercept`)
_INTERCEPTED = {"gated_deltanet", "kimi_delta", "mamba_heads"}
#: kinds whose states rnnlens.intervene edits
_EDITABLE = {*_REBUILD, *_INTERCEPTED, "rglru", "mlstm", "rwkv4"}


def capture(model: Any, args: Args, kwargs: Kwargs, options: TraceOptions) -> Captured:
    """Run ``model(*args, **kwargs)`` once and rebuild every selected mixer's states."""
    return _run(model, args, kwargs, options, {})[0]


def intervene(model: Any, args: Args, kwargs: Kwargs, edits: Edits, options: TraceOptions) -> Intervened:
    """One forward pass in which each edited mixer's state is edited as its scan runs (carried
    forward) and the rest of the model gets the output of the edited states."""
    from ..torch_.trace import _outputs

    for name, e in edits.items():
        if e.spec.kind not in _EDITABLE:
            raise UnsupportedLayerError(
                f"Layer {name!r} ({e.spec.layer_type}): editing {e.spec.kind} states is not supported "
                f"yet; rnnlens edits the states of {sorted(_EDITABLE)} mixers."
            )
    captured, output = _run(model, args, kwargs, options, edits)
    return Intervened(outputs=_outputs(output), captured=captured)


def _run(model: Any, args: Args, kwargs: Kwargs, options: TraceOptions, edits: Edits) -> tuple[Captured, Any]:
    if options.mask is not None or options.batch_size is not None:
        raise InputError(
            "mask= and batch_size= are not used for transformers models: pass attention_mask= as "
            "the model takes it (it becomes States.mask), and split large inputs yourself."
        )
    refuse_unknown(model, options.layers)
    found = mixers(model)
    specs = [_spec(path, m, kind) for path, m, kind in found]
    chosen = select_layers(specs, options.layers)
    fields = resolve_fields(chosen, options.fields)
    wanted = {s.name for s in chosen}
    recs = {path: _Calls(kind, m, name=path) for path, m, kind in found if path in wanted or path in edits}
    for path in wanted:
        recs[path].gates = "gates" in fields[path]
    for name, e in edits.items():
        recs[name].edits = e
        recs[name].gates = name not in fields or "gates" in fields[name]
    installed: list[Any] = []
    checks = mamba2_check.Checks()
    flags = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        for rec in recs.values():
            m = rec.module
            if rec.kind in _REBUILD:
                vars(m)["forward"] = _mamba_stand_in(m, rec, checks)
                installed.append(m)
            elif rec.kind in _INTERCEPTED:
                vars(m)["forward"] = _intercept_stand_in(m, rec)
                installed.append(m)
            elif rec.kind == "rwkv4":
                vars(m)["forward"] = _rwkv_stand_in(m, rec)
                installed.append(m)
            elif rec.kind == "mlstm":
                layer_forward, backend_forward = _mlstm_stand_in(m, rec)
                vars(m)["forward"] = layer_forward
                vars(m.mlstm_backend)["forward"] = backend_forward
                installed += [m, m.mlstm_backend]
            else:
                block_forward, lru_forward = _rglru_stand_in(m, rec)
                vars(m)["forward"] = block_forward
                vars(m.rg_lru)["forward"] = lru_forward
                installed += [m, m.rg_lru]
        with torch.no_grad():
            output = model(*args, **kwargs)
            checks.run()  # the Mamba2 mixers' readouts, in one helper call per geometry
    finally:
        for m in installed:
            vars(m).pop("forward", None)
        for m, flag in flags:
            m.training = flag
    batch = {}
    with torch.no_grad():
        for s in chosen:
            batch[s.name] = _arrays(s, recs[s.name], fields[s.name])
    return Captured(chosen, [batch], backend="transformers"), output


def _arrays(spec: LayerSpec, rec: _Calls, fields: tuple[str, ...]) -> Any:
    if len(rec.calls) != 1:
        raise UnsupportedLayerError(
            f"Mixer {spec.name!r} was called {len(rec.calls)} times in one forward pass; rnnlens "
            "traces one call per mixer (one whole sequence)."
        )
    call = rec.calls[0]
    gates = "gates" in fields
    if rec.kind in _INTERCEPTED:
        arrays = call["arrays"]
        mask = None if call["mask"] is None else np.asarray(call["mask"].bool().numpy())
    elif rec.kind in _REBUILD:
        arrays = call.get("arrays")  # an edited mixer's: built during the run
        if arrays is None:
            arrays, _ = _REBUILD[rec.kind](
                rec.module, call["x"], call["mask"], call["out"], name=spec.name, gates=gates
            )
        mask = None if call["mask"] is None else np.asarray(call["mask"].bool().numpy())
    elif rec.kind == "mlstm":
        arrays = mlstm_states(rec.module, call, call["x"], call["out"], name=spec.name, gates=gates)
        mask = None
    elif rec.kind == "rwkv4" and "arrays" in call:  # an edited block's: built during the run
        arrays = call["arrays"]
        mask = None
    elif rec.kind == "rwkv4":
        arrays, _ = rwkv_states(
            rec.module, call["x"], call["shift0"], call["state0"], call["out"], name=spec.name, gates=gates
        )
        mask = None
    elif "arrays" in call:  # an edited block's: built during the run
        arrays = call["arrays"]
        mask = None
    else:
        arrays, _ = rglru_states(
            rec.module.rg_lru,
            call["x"],
            call["pos"],
            call["h0"],
            call["state"],
            call["out"],
            name=spec.name,
            gates=gates,
        )
        mask = None
    if "state_norm" in fields and arrays.state is not None:
        s = arrays.state
        norm = torch.linalg.vector_norm(torch.from_numpy(s), dim=-1)  # one pass, no squared copy
        arrays.state_norm = norm.numpy().reshape(s.shape[0], s.shape[1], -1)
    if "state" not in fields:
        arrays.state = None
        arrays.parts = None
    return {"forward": arrays}, mask
