"""Backend-independent steps of a trace: choosing layers and fields, turning what an adapter
captured into states, and joining batches into one :class:`~rnnlens.core.states.States`.

An adapter's job ends at :class:`RawLayer`: the layer's input and, per direction, the
kernel's per-step output, the initial state and the weights, as NumPy arrays.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TypedDict

import numpy as np

from ..errors import (
    FieldNotAvailableError,
    LayerNotFoundError,
    OptionError,
    RnnLensWarning,
    UnsupportedLayerError,
    suggest,
)
from .cells import DirectionArrays, split_emitted
from .kinds import KINDS
from .rebuild import reconstruct_direction
from .spec import ALL_FIELDS, GATE_NAMES, CellWeights, Field, LayerSpec
from .states import DirectionStates, Gates, LayerStates, States

__all__ = ["RawDirection", "RawLayer", "assemble", "resolve_fields", "select_layers"]


class _Wanted(TypedDict):
    """What both ways of getting c and gates (emitted, rebuilt) are asked for."""

    reverse: bool
    want_c: bool
    want_gates: bool


@dataclass
class RawDirection:
    """One direction as the kernel ran it. ``seq`` is in input time order."""

    seq: np.ndarray
    h0: np.ndarray | None = None
    c0: np.ndarray | None = None
    reverse: bool = False
    weights: CellWeights | None = None
    #: what an emitting probe returned: ``h, (c,) gate...`` arrays, (sample, time, unit), input order
    parts: tuple[np.ndarray, ...] | None = None
    #: the probe already carried ``c`` and set the gates to NaN at masked steps (no copies here)
    settled: bool = False


@dataclass
class RawLayer:
    """What an adapter captured for one layer in one batch."""

    x: np.ndarray | None
    mask: np.ndarray | None
    directions: dict[str, RawDirection] = field(default_factory=dict)


def select_layers(
    specs: Sequence[LayerSpec],
    layers: str | Iterable[str] | None,
    *,
    other_layers: Iterable[str] = (),
) -> list[LayerSpec]:
    """The specs named by ``layers`` (all when None), in model order.

    ``other_layers`` are the model's non-recurrent layer names, so that asking for one of
    them says "not recurrent" instead of "not found".
    """
    if layers is None:
        if not specs:
            raise UnsupportedLayerError(
                "The model has no recurrent layer rnnlens can trace (LSTM, GRU, SimpleRNN, "
                "Bidirectional, or a keras.layers.RNN / torch.nn.RNNBase). "
                "Check that you passed the model that contains them."
            )
        return list(specs)
    names = [layers] if isinstance(layers, str) else list(layers)
    if not names:
        raise OptionError("layers=[] selects nothing; pass None for every recurrent layer.")
    by_name = {s.name: s for s in specs}
    others = set(other_layers)
    for name in names:
        if name in by_name:
            continue
        if name in others:
            raise UnsupportedLayerError(
                f"Layer {name!r} is not a recurrent layer rnnlens can trace. "
                f"Recurrent layers: {list(by_name)}."
            )
        raise LayerNotFoundError(name, list(by_name))
    wanted = set(names)
    return [s for s in specs if s.name in wanted]


def resolve_fields(
    specs: Sequence[LayerSpec], fields: str | Iterable[str] | None
) -> dict[str, tuple[Field, ...]]:
    """Fields to compute per layer. ``None`` means every field each layer has.

    ``h`` is always included (it is computed anyway). Asking explicitly for a field that a
    known cell does not have (``c`` of a GRU) is an error; a layer with an unknown cell
    gives ``h`` and a warning.
    """
    if fields is not None:
        asked = [fields] if isinstance(fields, str) else list(fields)
        for f in asked:
            if f not in ALL_FIELDS:
                hint = suggest(f, ALL_FIELDS)
                raise FieldNotAvailableError(
                    f"Unknown field {f!r}. Expected a subset of {list(ALL_FIELDS)}."
                    + (f" Did you mean {hint!r}?" if hint else "")
                )
    out: dict[str, tuple[Field, ...]] = {}
    for s in specs:
        want: set[str]
        if fields is None:
            want = set(s.fields)
        else:
            want = {"h", *asked}
            missing = want - set(s.fields)
            if missing and not KINDS[s.kind].known:
                want = {"h"}
            elif missing:
                raise FieldNotAvailableError(
                    f"Layer {s.name!r} ({s.layer_type}) has no {sorted(missing)}: it gives "
                    f"{list(s.fields)}. Drop {sorted(missing)} from fields, or select layers "
                    "that have them with layers=[...]."
                )
        if not KINDS[s.kind].known and (fields is None or len(want) < len({"h", *asked})):
            warnings.warn(
                f"Layer {s.name!r} ({s.layer_type}) has a cell rnnlens does not know: it gives "
                "per-step h (the layer's outputs) only; c and gates need an LSTM, GRU or "
                "SimpleRNN cell.",
                RnnLensWarning,
                stacklevel=3,
            )
        out[s.name] = tuple(f for f in ALL_FIELDS if f in want)
    return out


def to_direction_arrays(
    spec: LayerSpec, raw: RawLayer, fields: tuple[Field, ...]
) -> dict[str, DirectionArrays]:
    """Reconstruct every direction of one layer (one batch)."""
    out: dict[str, DirectionArrays] = {}
    want_c, want_gates = "c" in fields, "gates" in fields
    for name, d in raw.directions.items():
        if not KINDS[spec.kind].known or (d.weights is None and d.parts is None):
            out[name] = DirectionArrays(h=d.seq)
            continue
        h0 = d.h0 if d.h0 is not None else np.zeros((d.seq.shape[0], spec.units), d.seq.dtype)
        wanted: _Wanted = {"reverse": d.reverse, "want_c": want_c, "want_gates": want_gates}
        if d.parts is not None:
            out[name] = split_emitted(spec.kind, d.parts, h0, d.c0, raw.mask, settled=d.settled, **wanted)
        elif d.weights is not None:
            args = (d.weights, raw.x, d.seq, h0, d.c0, raw.mask)
            out[name] = reconstruct_direction(*args, layer=spec.name, **wanted)
    return out


def assemble(
    specs: Sequence[LayerSpec],
    batches: Sequence[dict[str, tuple[dict[str, DirectionArrays], np.ndarray | None]]],
    *,
    backend: str,
) -> States:
    """Join per-batch results (concatenating along ``sample``) into :class:`States`."""
    if len(batches) == 1:
        return _assemble_one(specs, batches[0], backend)
    layers: dict[str, LayerStates] = {}
    for spec in specs:
        parts = [b[spec.name] for b in batches]
        masks = [m for _, m in parts]
        mask = None if masks[0] is None else _cat([m for m in masks if m is not None])
        directions: dict[str, DirectionStates] = {}
        for dname in parts[0][0]:
            arrs = [p[0][dname] for p in parts]
            h = _cat([a.h for a in arrs])
            c = None if arrs[0].c is None else _cat([a.c for a in arrs if a.c is not None])
            g = None
            if arrs[0].gates is not None:
                names = GATE_NAMES[spec.kind]
                g = Gates(
                    [_cat([a.gates[k] for a in arrs if a.gates is not None]) for k in range(len(names))],
                    names,
                )
            st = None if arrs[0].state is None else _cat([a.state for a in arrs if a.state is not None])
            named = {k: _cat([(a.parts or {})[k] for a in arrs]) for k in arrs[0].parts or {}}
            norm = (
                None
                if arrs[0].state_norm is None
                else _cat([a.state_norm for a in arrs if a.state_norm is not None])
            )
            directions[dname] = DirectionStates(
                dname, h, c, g, mask, layer=spec.name, state=st, state_parts=named, state_norm=norm
            )
        layers[spec.name] = LayerStates(spec, directions, mask)
    return States(layers, backend=backend)


def _assemble_one(
    specs: Sequence[LayerSpec],
    batch: dict[str, tuple[dict[str, DirectionArrays], np.ndarray | None]],
    backend: str,
) -> States:
    """:func:`assemble` of one batch: its arrays as they are (nothing to join; a fifth of a
    small model's fixed cost was the joining's lists)."""
    layers: dict[str, LayerStates] = {}
    for spec in specs:
        arrays, mask = batch[spec.name]
        directions: dict[str, DirectionStates] = {}
        for dname, a in arrays.items():
            g = None if a.gates is None else Gates(a.gates, GATE_NAMES[spec.kind])
            directions[dname] = DirectionStates(
                dname, a.h, a.c, g, mask, layer=spec.name, state=a.state, state_parts=a.parts,
                state_norm=a.state_norm,
            )  # fmt: skip
        layers[spec.name] = LayerStates(spec, directions, mask)
    return States(layers, backend=backend)


def _cat(arrays: list[np.ndarray]) -> np.ndarray:
    return arrays[0] if len(arrays) == 1 else np.concatenate(arrays, axis=0)
