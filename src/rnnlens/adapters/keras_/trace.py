"""Keras 3 adapter: find recurrent layers, check inputs, run one probe pass
(:mod:`rnnlens.adapters.keras_.probe`), and hand NumPy arrays to the backend-independent core.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from ...core.edits import LayerEdits, check_masked, edit_arrays
from ...core.kinds import KINDS
from ...core.spec import FIELDS_BY_KIND, CellWeights, Field, Kind, LayerSpec
from ...core.tracing import RawDirection, RawLayer, resolve_fields, select_layers, to_direction_arrays
from ...errors import InputError, LayerNotFoundError, UnsupportedLayerError, UnsupportedModelError
from ..base import Captured, Edits, Intervened, TraceOptions
from . import conv as keras_conv
from .numpy_ops import numpy_fn
from .probe import cell_kind, choose_strategy, is_model, is_recurrent, probe_for

__all__ = ["capture", "describe"]

DEFAULT_BATCH_SIZE = 1024


# --------------------------------------------------------------------------- discovery


def _keras():  # type: ignore[no-untyped-def]
    import keras

    return keras


def _walk(model: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(path, layer) for every layer, nested models expanded in place, model order."""
    for layer in model.layers:
        path = f"{prefix}{layer.name}"
        if is_model(layer):
            yield from _walk(layer, prefix=f"{path}/")
        else:
            yield path, layer


def _short_names(paths: list[str]) -> list[str]:
    """A layer's own name where it is unique, its nested path otherwise."""
    leaves = [p.rsplit("/", 1)[-1] for p in paths]
    return [leaf if leaves.count(leaf) == 1 else p for p, leaf in zip(paths, leaves)]


def _recurrent_layers(model: Any) -> tuple[list[tuple[str, Any]], list[str]]:
    """Named recurrent layers, and the names of all other layers."""
    walked = list(_walk(model))
    names = _short_names([p for p, _ in walked])
    rec = [(n, layer) for n, (_, layer) in zip(names, walked) if is_recurrent(layer)]
    others = [n for n, (_, layer) in zip(names, walked) if not is_recurrent(layer)]
    return rec, others


def _spec(name: str, layer: Any) -> LayerSpec:
    k = _keras()
    if isinstance(layer, k.layers.Bidirectional):
        inner = layer.forward_layer
        directions: tuple[str, ...] = ("forward", "backward")
        layer_type = f"Bidirectional({type(inner).__name__}, merge_mode={layer.merge_mode!r})"
    else:
        inner = layer
        directions = ("backward",) if layer.go_backwards else ("forward",)
        layer_type = type(layer).__name__
    kind = cell_kind(inner.cell)
    if kind == "convlstm":
        return keras_conv.conv_spec(name, layer_type, directions, inner.cell)
    units = getattr(inner.cell, "units", None)
    if units is None:
        size = inner.cell.output_size if hasattr(inner.cell, "output_size") else inner.cell.state_size
        units = size if isinstance(size, int) else int(np.prod(np.atleast_1d(size)[-1]))
    notes = ("unknown cell: per-step outputs only",) if not KINDS[kind].known else ()
    return LayerSpec(
        name=name,
        kind=kind,
        layer_type=layer_type,
        units=int(units),
        directions=directions,
        fields=FIELDS_BY_KIND[kind],
        cell_units=int(units) if KINDS[kind].has_c else None,
        notes=notes,
    )


def describe(model: Any) -> list[LayerSpec]:
    """Every recurrent layer of a Keras model, in model order."""
    _require_graph(model)
    rec, _ = _recurrent_layers(model)
    return [_spec(name, layer) for name, layer in rec]


def _require_graph(model: Any) -> None:
    k = _keras()
    if not isinstance(model, k.Model):
        if is_recurrent(model):
            raise UnsupportedModelError(
                f"Got a bare {type(model).__name__} layer; rnnlens traces a model. Wrap it: "
                "keras.Sequential([keras.Input(shape=(time, features)), layer])."
            )
        raise UnsupportedModelError(f"Expected a keras.Model; received {type(model).__name__}.")
    from keras.src.models.functional import Functional

    if not isinstance(model, (Functional, k.Sequential)):
        raise UnsupportedModelError(
            f"{type(model).__name__} is a subclassed keras.Model: its call() is Python code, so "
            "rnnlens cannot see which tensors reach its recurrent layers. Build the recurrent "
            "part as a Functional or Sequential model (it can share the trained layers) and "
            "trace that."
        )
    if not model.built:
        raise UnsupportedModelError(
            f"Model {model.name!r} has not been built, so it has no trained weights yet. "
            "Call it on data (or fit it) first, or give it a keras.Input."
        )


# --------------------------------------------------------------------------- weights


def _cell_weights(cell: Any, kind: Kind) -> CellWeights | None:
    if kind in ("rnn", "convlstm"):  # ConvLSTM: always emitted, its kernels are convolutions
        return None
    k = _keras()
    kernel = k.ops.convert_to_numpy(cell.kernel)
    recurrent = k.ops.convert_to_numpy(cell.recurrent_kernel)
    bias = k.ops.convert_to_numpy(cell.bias) if cell.use_bias else None
    reset_after = bool(getattr(cell, "reset_after", True))
    recurrent_bias = None
    if kind == "gru" and reset_after and bias is not None:
        bias, recurrent_bias = bias[0], bias[1]  # Keras keeps (input, recurrent) rows
    # Keras' gate order: LSTM i,f,c,o and GRU z,r,h — already rnnlens' canonical order.
    recurrent_activation = getattr(cell, "recurrent_activation", None) or cell.activation
    return CellWeights(
        kind=kind,
        kernel=kernel,
        recurrent_kernel=recurrent,
        bias=bias,
        recurrent_bias=recurrent_bias,
        activation=numpy_fn(cell.activation),
        recurrent_activation=numpy_fn(recurrent_activation),
        reset_after=reset_after,
    )


# --------------------------------------------------------------------------- inputs


def _input_specs(model: Any) -> list[Any] | None:
    try:
        return list(model.inputs)
    except (AttributeError, ValueError):
        return None


def _prepare_inputs(model: Any, x: Any) -> tuple[Any, int]:
    """Check ``x`` against the model's inputs; return it as NumPy arrays and the batch size."""
    specs = _input_specs(model)
    if isinstance(x, Mapping):
        items = list(x.items())
        arrays = {key: _as_array(v, key) for key, v in items}
        flat = list(arrays.values())
        if specs is not None:
            names = [s.name for s in specs]
            missing = [n for n in names if n not in arrays]
            if missing:
                raise InputError(f"x is missing input(s) {missing}; the model's inputs are {names}.")
            flat = [arrays[n] for n in names]
            x = {n: a for n, a in zip(names, flat)}
        else:
            x = arrays
    elif isinstance(x, (list, tuple)) and not _looks_like_one_array(x, specs):
        flat = [_as_array(v, f"x[{i}]") for i, v in enumerate(x)]
        x = flat
    else:
        flat = [_as_array(x, "x")]
        x = flat[0]
    if specs is not None:
        if len(specs) != len(flat):
            raise InputError(
                f"The model takes {len(specs)} input(s) {[s.name for s in specs]}; received {len(flat)}. "
                "Pass a list or dict with one array per input."
            )
        converted = [_check_one(a, s) for a, s in zip(flat, specs)]
        if isinstance(x, dict):
            x = dict(zip(x.keys(), converted))
        elif isinstance(x, list):
            x = converted
        else:
            x = converted[0]
        flat = converted
    sizes = {a.shape[0] for a in flat}
    if len(sizes) != 1:
        raise InputError(f"All inputs must have the same number of samples; received {sorted(sizes)}.")
    n = sizes.pop()
    if n == 0:
        raise InputError("x has 0 samples (an empty batch); pass at least one sequence.")
    return x, n


def _looks_like_one_array(x: Sequence[Any], specs: list[Any] | None) -> bool:
    """A nested list of numbers or strings for a single-input model (``[[1, 3, 2, 0, 0]]``,
    ``["a review", "another"]``; NumPy scalars such as ``list(np.array([...]))``'s count as values)."""
    if specs is not None and len(specs) > 1:
        return False
    return not any(hasattr(v, "shape") and hasattr(v, "dtype") and not isinstance(v, np.generic) for v in x)


def _as_array(v: Any, what: str) -> np.ndarray:
    if hasattr(v, "numpy") and not isinstance(v, np.ndarray):
        v = v.numpy()
    try:
        a = np.asarray(v)
    except ValueError as e:  # ragged nested lists
        raise InputError(
            f"{what} could not be turned into an array ({e}). Sequences of different lengths must be "
            "padded to one length (keras.utils.pad_sequences) and masked."
        ) from None
    if a.dtype.kind not in "biufUSO":
        raise InputError(
            f"{what} has dtype {a.dtype}; expected numbers (float for features, int for token ids), "
            "or strings for a model that takes text."
        )
    return a


_AXIS_NAMES = {0: "sample", 1: "time"}


def _check_one(a: np.ndarray, spec: Any) -> np.ndarray:
    shape = tuple(spec.shape)
    name = getattr(spec, "name", "input")
    if a.ndim != len(shape):
        hint = ""
        if a.ndim == len(shape) - 1:
            hint = " Add the missing axis, e.g. x[None] for one sequence or x[..., None] for one feature."
        raise InputError(
            f"Input {name!r} has rank {a.ndim} (shape {a.shape}); the model expects rank {len(shape)}, "
            f"shape {shape} (None = any size).{hint}"
        )
    for axis, (want, got) in enumerate(zip(shape, a.shape)):
        if axis == 0 or want is None or want == got:
            continue
        label = _AXIS_NAMES.get(axis, "feature" if axis == len(shape) - 1 else f"axis {axis}")
        raise InputError(
            f"Input {name!r} has {label} size {got} (shape {a.shape}); the model expects {want} "
            f"(shape {shape})."
        )
    if str(spec.dtype) == "string" or a.dtype.kind in "USO":
        if str(spec.dtype) != "string" or a.dtype.kind not in "USO":
            text = str(spec.dtype) == "string"
            raise InputError(
                f"Input {name!r} has dtype {a.dtype}; expected {'strings' if text else 'numbers'} "
                f"(the model's input is {spec.dtype})."
            )
        if a.dtype.kind == "O" and not all(isinstance(v, (str, bytes)) for v in a.reshape(-1)):
            raise InputError(f"Input {name!r} holds objects that are not strings; the model takes text.")
        return a.astype(str) if a.dtype.kind == "O" else a  # text goes to the model as given
    want_dtype = np.dtype(spec.dtype) if spec.dtype is not None else a.dtype
    integral = a.dtype.kind != "f" or bool(np.isfinite(a).all() and (a == np.round(a)).all())
    if want_dtype.kind in "iu" and not integral:
        raise InputError(
            f"Input {name!r} has dtype {a.dtype} with non-integer values; the model expects "
            f"{want_dtype} (token ids). Pass integer ids."
        )
    # float64 data narrows to the model's float32 here, as Keras itself does
    return a.astype(want_dtype, copy=False)


# --------------------------------------------------------------------------- trace


def capture(model: Any, x: Any, options: TraceOptions) -> Captured:
    """Keras implementation of :meth:`rnnlens.adapters.Adapter.capture` (``x``: the model's
    input: an array, or a list/dict for several inputs; options validated by the core)."""
    return _capture(model, x, options, {})[0]


def intervene(model: Any, x: Any, edits: Edits, options: TraceOptions) -> Intervened:
    """Keras implementation of :meth:`rnnlens.adapters.Adapter.intervene`: the probe's walk with
    every edited layer run by the emitter, whose step applies that step's edit (as an affine map
    ``a * state + b`` fed in beside the step's input), so layers above see the edited output."""
    captured, outputs = _capture(model, x, options, edits)
    return Intervened(outputs=outputs, captured=captured)


def _capture(
    model: Any, x: Any, options: TraceOptions, edits: Mapping[str, LayerEdits]
) -> tuple[Captured, Any]:
    _require_graph(model)
    recurrent, others = _recurrent_layers(model)
    specs_all = [_spec(name, layer) for name, layer in recurrent]
    specs = select_layers(specs_all, options.layers, other_layers=others)
    wanted = resolve_fields(specs, options.fields)
    layer_by_name = dict(recurrent)
    for name, le in edits.items():
        if "#" in name:
            raise LayerNotFoundError(name, [s.name for s in specs_all])
        if KINDS[le.spec.kind].feature_maps:
            raise UnsupportedLayerError(
                f"Layer {name!r} ({le.spec.layer_type}): editing ConvLSTM states is not supported yet."
            )
        wanted.setdefault(name, ("h",))  # recorded for its mask, even when not returned
    x, n = _prepare_inputs(model, x)
    user_mask = options.mask
    if user_mask is not None:
        steps = _time_steps(x)
        if user_mask.shape[0] != n or (steps is not None and user_mask.shape[1] != steps):
            raise InputError(
                f"mask has shape {user_mask.shape}; x has (sample, time) = {(n, steps)}. Pass one "
                "bool per sample and step."
            )
    _check_stateful(recurrent, n)
    weights = {s.name: _weights_by_direction(layer_by_name[s.name]) for s in specs}
    emit = frozenset(
        s.name
        for s in specs
        if KINDS[s.kind].gates  # kinds with gates can be emitted
        # ConvLSTM is always emitted (h too): Keras has no faster kernel for it to reuse
        and (KINDS[s.kind].feature_maps or "c" in wanted[s.name] or "gates" in wanted[s.name])
        and all(
            choose_strategy(sub, options.strategy) == "emit"  # type: ignore[arg-type]
            for sub in _directions(layer_by_name[s.name]).values()
        )
    ) | frozenset(edits)
    edited = frozenset((name, d) for name in edits for d in _directions(layer_by_name[name]))
    probe = probe_for(model, recurrent, wanted, emit, edited)
    time_of = {name: _layer_time(layer_by_name[name], x) for name in edits}
    affine = {  # every sample's edits as affine maps, built once and sliced per batch
        f"{name}|{d}": edit_arrays(le, d, time_of[name], n, writes=True)
        for name, le in edits.items()
        for d in _directions(layer_by_name[name])
    }
    batch_size = options.batch_size
    step = n if batch_size is None and n <= DEFAULT_BATCH_SIZE else (batch_size or DEFAULT_BATCH_SIZE)
    batches, outputs = [], []
    for start in range(0, n, step):
        sl = slice(start, min(start + step, n))
        arrays = {key: a[sl] for key, a in affine.items()}
        captured = run_probe(
            probe, _slice(x, sl), None if user_mask is None else user_mask[sl], arrays, edits
        )
        for name, le in edits.items():
            check_masked(le, captured.get(f"{name}|mask"), time_of[name], n, sl.start)
        outputs.append(captured.get("|outputs"))
        batches.append(
            {
                s.name: _layer_arrays(s, captured, weights[s.name], wanted[s.name], s.name in emit)
                for s in specs
            }
        )
    return Captured(specs, batches, backend=f"keras/{_keras().backend.backend()}"), _join_outputs(outputs)


def run_probe(probe: Any, inputs: Any, mask: Any, arrays: Mapping[str, Any], edits: Edits) -> Any:
    """One probe run; a failure of an edited run is put down to the edits' steps."""
    try:
        return probe(inputs, mask, arrays)
    except (ValueError, TypeError) as e:
        if not edits:
            raise
        raise InputError(
            f"The edited run failed: {e}. Do the edits' steps match the layer's time axis?"
        ) from e


def _layer_time(layer: Any, x: Any) -> int:
    """The time length the layer reads: its static input shape where known, else the model input's."""
    try:
        t = layer.input.shape[1]
    except (AttributeError, ValueError, IndexError, TypeError):
        t = None
    if t is None:
        t = _time_steps(x)
    if t is None:
        raise InputError("Cannot tell the edited layer's number of steps from the input.")
    return int(t)


def _join_outputs(parts: list[Any]) -> Any:
    from keras import tree

    if not parts or parts[0] is None:
        return None
    if len(parts) == 1:
        return parts[0]
    return tree.map_structure(lambda *a: np.concatenate(a, axis=0), *parts)


def _time_steps(x: Any) -> int | None:
    """The time axis of the (first) input, where it has one."""
    first = next(iter(x.values())) if isinstance(x, dict) else x[0] if isinstance(x, list) else x
    return int(first.shape[1]) if getattr(first, "ndim", 0) >= 2 else None


def _slice(x: Any, sl: slice) -> Any:
    if isinstance(x, dict):
        return {key: v[sl] for key, v in x.items()}
    if isinstance(x, list):
        return [v[sl] for v in x]
    return x[sl]


def _check_stateful(recurrent: list[tuple[str, Any]], n: int) -> None:
    k = _keras()
    for name, layer in recurrent:
        inner = layer.forward_layer if isinstance(layer, k.layers.Bidirectional) else layer
        if inner.stateful and inner.states is not None:
            size = int(_keras().ops.shape(inner.states[0])[0])
            if size != n:
                raise InputError(
                    f"Layer {name!r} is stateful with batch size {size}; received {n} samples. "
                    f"Pass exactly {size} sequences (its current state belongs to them)."
                )


def _directions(layer: Any) -> dict[str, Any]:
    """The RNN layer running each direction of ``layer``."""
    if isinstance(layer, _keras().layers.Bidirectional):
        return {"forward": layer.forward_layer, "backward": layer.backward_layer}
    return {"backward" if layer.go_backwards else "forward": layer}


def _weights_by_direction(layer: Any) -> dict[str, tuple[CellWeights | None, bool]]:
    return {
        d: (_cell_weights(sub.cell, cell_kind(sub.cell)), bool(sub.go_backwards))
        for d, sub in _directions(layer).items()
    }


def _layer_arrays(  # type: ignore[no-untyped-def]
    spec: LayerSpec,
    captured: dict[str, np.ndarray],
    weights: dict[str, tuple[CellWeights | None, bool]],
    fields: tuple[Field, ...],
    emitted: bool,
):
    name = spec.name
    mask = captured.get(f"{name}|mask")
    if mask is not None:
        mask = mask.astype(bool, copy=False)
        if mask.ndim == 3:
            mask = mask[..., 0]
    raw = RawLayer(x=captured.get(f"{name}|x"), mask=mask)
    for direction, (w, reverse) in weights.items():
        # Keras returns a backward run in processing order; emitted parts come time-major.
        to_input = (lambda a: a[:, ::-1]) if reverse else (lambda a: a)
        parts = None
        if emitted:
            n_parts = KINDS[spec.kind].n_emitted
            if KINDS[spec.kind].feature_maps:
                n_parts = keras_conv.n_parts(fields)
                keras_conv.check_parity(captured, f"{name}|{direction}|", layer=name)
            parts = tuple(
                to_input(captured[f"{name}|{direction}|emit{k}"].swapaxes(0, 1)) for k in range(n_parts)
            )
            seq = parts[0]
        else:
            seq = to_input(captured[f"{name}|{direction}|seq"])
        raw.directions[direction] = RawDirection(
            seq=seq,
            h0=captured.get(f"{name}|{direction}|h0"),
            c0=captured.get(f"{name}|{direction}|c0"),
            reverse=reverse,
            weights=w,
            parts=parts,
        )
    arrays = to_direction_arrays(spec, raw, fields)
    for direction, d in raw.directions.items():
        arrays[direction].initial = (d.h0, d.c0)
    return arrays, mask
