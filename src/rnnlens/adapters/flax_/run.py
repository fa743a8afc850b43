"""Running a Flax model under rnnlens: its inputs checked, the model compiled once per input
shape (with :class:`~.sites.Interceptor` inside), run, and its steps turned into states.

A linen model is ``module.bind(variables)``: :meth:`flax.linen.Module.unbind` gives back the
module and its variables; an nnx model is split (``nnx.split``) into its graph and state. The
arrays are passed to the compiled function as they are (never copied into it, never changed).

Example:
    >>> split_batches(({"a": 1},), {}, None)
    [(({'a': 1},), {})]
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ...core.edits import LayerEdits, plan_edits
from ...core.kinds import KINDS
from ...core.spec import LayerSpec
from ...core.tracing import resolve_fields, select_layers
from ...errors import InputError, OptionError, RnnLensError, UnsupportedModelError
from ..base import Captured, LayerBatch, TraceOptions
from ..calllog import join_calls
from .entries import Site
from .host import Run, active, direction_arrays
from .nnx import is_nnx, traced_copy
from .sites import Interceptor

__all__ = ["abstract_specs", "capture", "model_parts", "site_specs", "split_batches", "split_model"]

_cache_lock = threading.Lock()
#: id(model) -> {input signature: compiled}; dropped with the model
_CACHE: dict[int, dict[Any, _Compiled]] = {}


@dataclass
class _Compiled:
    fn: Any  # (state, arrays) -> (outputs, {site index: stacked step arrays})
    sites: list[Site]
    fast: bool  # plain nn.RNN calls run in rnnlens' scan (else: every step through the host)
    gates: bool = True  # the scan computes the gates (else: h and c, the cell's own, only)


def model_parts(model: Any) -> tuple[Any, Any, Any]:
    """``(static, state, call)``: what does not change between runs (the linen module, the nnx
    graph definition), the arrays (variables, nnx state), and ``call(sites, state, args, kwargs,
    stacked)``, which runs the model with every recurrent call traced into ``sites`` (plain
    ``nn.RNN`` calls by rnnlens' scan, their steps left in ``stacked``, where it is a dict)."""
    if is_nnx(model):
        from flax import nnx

        graphdef, state = nnx.split(model)

        def call_nnx(sites: list[Site], state: Any, args: Any, kwargs: Any, stacked: Any = None) -> Any:
            with traced_copy(graphdef, state, Interceptor(sites, stacked)) as copy:  # nnx: the host's path
                return copy(*args, **kwargs)

        return graphdef, state, call_nnx
    import flax.linen as nn

    module, variables = split_model(model)

    def call_linen(
        sites: list[Site], variables: Any, args: Any, kwargs: Any, stacked: Any = None, gates: bool = True
    ) -> Any:
        with nn.intercept_methods(Interceptor(sites, stacked, gates)):
            return module.apply(variables, *args, **kwargs)

    return module, variables, call_linen


def split_model(model: Any) -> tuple[Any, Any]:
    """``(module, variables)`` of a bound linen module; a clear error for anything else."""
    import flax.linen as nn

    if isinstance(model, nn.Module):
        if model.scope is None:
            raise UnsupportedModelError(
                f"This {type(model).__name__} has no variables: pass the module bound to them, "
                "model.bind(variables) (as model.init / a checkpoint gives them)."
            )
        return model.unbind()
    raise UnsupportedModelError(
        f"rnnlens traces Flax linen modules bound to their variables (module.bind(variables)); received "
        f"{type(model).__module__}.{type(model).__name__}, or a flax.nnx Module."
    )


def _array(value: Any, where: str) -> Any:
    import jax

    if value is None:
        raise InputError(f"{where} is None; give an array (sample, time, feature).")
    if isinstance(value, jax.Array):
        dtype = np.dtype(value.dtype)
    else:
        try:
            value = np.asarray(value)
        except (TypeError, ValueError) as e:  # ragged lists
            raise InputError(f"{where} is not a rectangular array: {e}") from None
        dtype = value.dtype
    if dtype.kind not in "biuf":
        raise InputError(f"{where} has dtype {dtype}; Flax cells take numbers (float, int or bool).")
    return value


def _signature(args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> tuple[list[Any], Any, Any]:
    """The dynamic leaves (arrays), the structure and the key of the compiled function."""
    import jax

    if not args:
        raise InputError("No input given: rnnlens.trace(model, x).")
    args = (_array(args[0], "x") if not isinstance(args[0], (dict, tuple)) else args[0], *args[1:])
    leaves, tree = jax.tree_util.tree_flatten((args, dict(kwargs)))
    dynamic: list[Any] = []
    statics: list[tuple[Any, ...]] = []
    for leaf in leaves:
        if isinstance(leaf, (np.ndarray, np.generic, jax.Array)):
            leaf = _array(leaf, "An input")
            dynamic.append(leaf)
            statics.append(("array", tuple(np.shape(leaf)), str(leaf.dtype)))
        else:
            try:
                hash(leaf)
            except TypeError:
                raise InputError(f"Input {leaf!r} is neither an array nor a hashable constant.") from None
            dynamic.append(None)
            statics.append(("static", type(leaf).__name__, leaf))
    return dynamic, tree, (tree, tuple(statics))


def _compiled(
    model: Any, call: Any, tree: Any, dynamic: list[Any], key: Any, fast: bool, gates: bool = True
) -> _Compiled:
    import jax

    gates = gates or not fast or is_nnx(model)
    key = (key, fast, gates)
    with _cache_lock:
        per_model = _CACHE.get(id(model))
        if per_model is None:
            per_model = _CACHE[id(model)] = {}
            weakref.finalize(model, _CACHE.pop, id(model), None)
        found = per_model.get(key)
        if found is not None:
            return found
    sites: list[Site] = []
    statics = [d for d in dynamic]

    def fn(state: Any, arrays: list[Any]) -> Any:
        sites.clear()  # a retrace makes the same sites in the same order
        it = iter(arrays)
        leaves = [next(it) if s is not None else _static(key, i) for i, s in enumerate(statics)]
        args, kwargs = jax.tree_util.tree_unflatten(tree, leaves)
        stacked: dict[int, Any] | None = {} if fast else None
        extra = {} if gates else {"gates": False}
        return call(sites, state, args, kwargs, stacked, **extra), stacked or {}

    compiled = _Compiled(jax.jit(fn), sites, fast, gates)
    with _cache_lock:
        per_model[key] = compiled
    return compiled


def _static(key: Any, i: int) -> Any:
    return key[0][0][1][i][2]


def _specs(sites: list[Site]) -> list[LayerSpec]:
    by_entry: dict[str, list[Site]] = {}
    for s in sites:
        by_entry.setdefault(s.entry, []).append(s)
    out = []
    for entry, group in by_entry.items():
        s = group[0]
        directions = tuple(sorted({g.direction for g in group}, key=("forward", "backward").index))
        notes = tuple(f"{g.direction}: cell {g.cell!r} ({g.cell_type})" for g in group)
        out.append(LayerSpec(entry, s.kind, s.layer_type, s.units, directions, KINDS[s.kind].fields,  # type: ignore[arg-type]
                             cell_units=s.units, notes=notes))  # fmt: skip
    return out


def site_specs(model: Any) -> list[LayerSpec] | None:
    """The layers of the model's latest compiled trace, or None if it has not been traced."""
    with _cache_lock:
        per_model = _CACHE.get(id(model))
        compiled = list(per_model.values()) if per_model else []
    return _specs(compiled[-1].sites) if compiled else None


def forget(model: Any, compiled: _Compiled) -> None:
    """Drop one compiled function of ``model`` from the cache."""
    with _cache_lock:
        per_model = _CACHE.get(id(model), {})
        for k in [k for k, v in per_model.items() if v is compiled]:
            del per_model[k]


def abstract_specs(model: Any, x: np.ndarray) -> list[LayerSpec] | None:
    """The layers found by tracing the model abstractly (no computation) on ``x``, or None where
    the model does not take ``x``."""
    import jax

    _, state, call = model_parts(model)
    sites: list[Site] = []
    try:
        jax.eval_shape(lambda state, x: call(sites, state, (x,), {}), state, x)
    except Exception:  # another input: the caller falls back on the parameters
        return None
    return _specs(sites) or None


def split_batches(
    args: tuple[Any, ...], kwargs: Mapping[str, Any], batch_size: int | None
) -> list[tuple[tuple[Any, ...], dict[str, Any]]]:
    """The inputs in pieces of ``batch_size`` samples (every array with the samples of ``x``)."""
    x = args[0] if args else None
    n = int(np.shape(x)[0]) if isinstance(x, np.ndarray) and np.ndim(x) else None
    if batch_size is None or n is None or n <= batch_size:
        return [(tuple(args), dict(kwargs))]

    def cut(v: Any, lo: int) -> Any:
        native = isinstance(v, np.ndarray) or type(v).__module__.startswith("jax")
        return v[lo : lo + batch_size] if native and np.ndim(v) and np.shape(v)[0] == n else v

    return [
        (tuple(cut(a, lo) for a in args), {k: cut(v, lo) for k, v in kwargs.items()})
        for lo in range(0, n, batch_size)
    ]


def _run_once(
    model: Any,
    args: tuple[Any, ...],
    kwargs: Mapping[str, Any],
    edits: Mapping[str, LayerEdits] | None,
    gates: bool = True,
) -> tuple[Any, Run]:
    import jax

    static, variables, call = model_parts(model)
    dynamic, tree, key = _signature(args, kwargs)
    key = (key, static if is_nnx(model) else None)  # an nnx module's graph may change
    # edits go to the host step by step; a trace runs plain nn.RNN calls in rnnlens' scan
    compiled = _compiled(model, call, tree, dynamic, key, fast=edits is None, gates=gates)
    arrays = [d for d in dynamic if d is not None]
    given = edits
    try:
        if edits is not None:  # the edits were planned on describe(): plan them on these sites
            jax.eval_shape(compiled.fn, variables, arrays)
            planned = [e for le in edits.values() for e, *_ in le.edits]
            edits = plan_edits(planned, _specs(compiled.sites))
        try:
            outputs, run = _attempt(compiled, variables, arrays, edits)
        except jax.errors.UnexpectedTracerError:
            if not compiled.fast:
                raise
            # an nn.RNN inside another transform (the user's nn.scan, a vmap): its steps cannot
            # leave the compiled function as its outputs, so they go through the host
            forget(model, compiled)
            compiled = _compiled(model, call, tree, dynamic, key, fast=False)
            outputs, run = _attempt(compiled, variables, arrays, edits)
    except RnnLensError:
        raise
    except Exception as e:  # the model refused these inputs
        if "vmap` ordered IO callback" in str(e):
            raise UnsupportedModelError(
                "A recurrent cell of this model runs inside the model's own vmap (nn.vmap / jax.vmap): "
                "rnnlens cannot record its steps there. Trace the module the vmap wraps, with the "
                "vmapped axis as a batch axis."
            ) from None
        raise InputError(f"The Flax model could not run on these inputs: {type(e).__name__}: {e}") from None
    if run.error is not None:
        raise run.error
    for name, le in (edits or {}).items():  # the write edits the host applied, told to the caller's plan
        if given is not None and name in given:
            given[name].writes_applied |= le.writes_applied
    return outputs, run


def _attempt(
    compiled: _Compiled, variables: Any, arrays: list[Any], edits: Mapping[str, LayerEdits] | None
) -> tuple[Any, Run]:
    import jax

    run = Run(compiled.sites, edits)
    with active(run):
        outputs, stacked = compiled.fn(variables, arrays)
        jax.block_until_ready(outputs)
        jax.effects_barrier()
    run.stacked = {i: {k: np.asarray(v) for k, v in d.items()} for i, d in stacked.items()}
    return outputs, run


def capture(
    model: Any,
    args: tuple[Any, ...],
    kwargs: Mapping[str, Any],
    options: TraceOptions,
    edits: Mapping[str, LayerEdits] | None = None,
) -> tuple[list[Any], Captured]:
    """Run the model (in ``batch_size`` pieces) and capture the selected layers: the model's
    outputs per piece (NumPy) and the :class:`Captured` states."""
    import jax

    if options.mask is not None:
        raise OptionError(
            "Flax models take their valid steps as nn.RNN's seq_lengths (pass seq_lengths=... to the "
            "model's call), not mask=."
        )
    outputs: list[Any] = []
    batches: list[dict[str, LayerBatch]] = []
    chosen: list[LayerSpec] = []
    layer_of: dict[str, str] = {}
    for piece_args, piece_kwargs in split_batches(args, kwargs, options.batch_size):
        gates = options.fields is None or "gates" in options.fields  # else no rnnlens step is needed
        out, run = _run_once(model, piece_args, piece_kwargs, edits, gates)
        outputs.append(jax.tree_util.tree_map(np.asarray, out))
        specs = _specs(run.sites)
        chosen = select_layers(specs, options.layers)
        fields = resolve_fields(chosen, options.fields)
        batch: dict[str, LayerBatch] = {}
        for spec in chosen:
            directions, mask = {}, None
            for index, site in enumerate(run.sites):
                if site.entry == spec.name:
                    f = fields[spec.name]
                    arrays, mask = direction_arrays(run, index, want_c="c" in f, want_gates="gates" in f)
                    directions[site.direction] = arrays
                    layer_of[spec.name] = site.layer
            batch[spec.name] = (directions, mask)
        batches.append(batch)
    if options.calls == "join" and edits is None:  # edits name calls as planned: name#k
        chosen, batches = join_calls(chosen, batches, layer_of, rtol=0.0, atol=0.0)
    return outputs, Captured(chosen, batches, backend="flax")
