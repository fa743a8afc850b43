"""What an intervention changes: :class:`Edit` (the public description), checked once against the
model's layers (:func:`plan_edits`), and resolved per call into per-step operations
(:meth:`LayerEdits.steps`) once the call's length and batch are known.

Semantics (the README's "Interventions"): an edit at step ``t`` replaces the state *after* the
layer has read step ``t`` and before step ``t + 1`` reads it. An ``h`` edit changes the layer's
output at ``t`` (layers above see it) and the carried state; a ``c`` edit changes only the
carried cell state (``h_t`` stays as computed; later steps differ). Steps count in input time
order for every direction. ``set``, ``add`` and ``scale`` apply in that order within one edit;
several edits compose in the order given.

``target="write"`` edits what step ``t`` *wrote* instead: the term the step adds to its linear
state (an LSTM's ``c_t = f ⊙ c_{t-1} + i ⊙ g`` — the write ``i ⊙ g``; a GRU's
``h_t = z ⊙ h_{t-1} + (1 − z) ⊙ n`` — the write ``(1 − z) ⊙ n``; an MGU's ``(1 − f) ⊙ n``;
a Mamba mixer's ``state_t = exp(A dt_t) ⊙ state_{t-1} + (dt_t B_t) x_t`` per channel and state
dim; a Mamba2 mixer's ``(dt_t x_t) ⊗ B_t`` per head; a multi-head Mamba's (Zamba) ``(dt_t B_t)
x_t`` per head; a lightning-attention memory's ``k_tᵀ v_t``; a delta-rule mixer's (gated
delta-net, Kimi) ``β_t k_t v_tᵀ``, its state ``S_t = (I − β_t k_t k_tᵀ) diag(d_t) S_{t-1} + w_t``
carried on through the rule; an mLSTM's ``exp(i_t − m_t) k_t ⊗ v_t`` into ``C``, stabilised
(``m_t`` and the normaliser ``n_t`` kept as computed); an RWKV-4's ``exp(k_t − max_t)·(v_t, 1)``
into its ``num`` and ``den`` parts (units 0, 1; ``max_t`` kept; its output at ``t`` reads the
state before ``t``); an RG-LRU's ``(x_t i_t) sqrt(1 − a_t²)``: the terms of
:func:`rnnlens.decompose`), before the state and the output at ``t`` are computed
from it: an LSTM's ``h_t`` and a mixer's output at ``t`` read the edited state. A write edit and
a state edit at one step: the write is edited first.

Example:
    >>> from rnnlens import Edit
    >>> Edit("lstm.l0", 3, units=[1, 2], scale=0)  # doctest: +NORMALIZE_WHITESPACE
    Edit(layer='lstm.l0', step=3, field='h', units=[1, 2], direction=None, set=None, add=None,
         scale=0, target='state')
    >>> Edit("lstm.l0", 3, field="c", target="write", scale=2).target  # step 3 writes twice as much
    'write'
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from ..errors import FieldNotAvailableError, LayerNotFoundError, OptionError, OptionTypeError
from .kinds import KINDS
from .spec import LayerSpec

__all__ = ["LINEAR", "WRITE", "Edit", "LayerEdits", "Op", "check_masked", "edit_arrays", "plan_edits"]

Mode = Literal["set", "add", "scale"]
_CALL = re.compile(r"#\d+$")


@dataclass(frozen=True)
class Edit:
    """One change to a recurrent layer's state.

    Args:
        layer: the layer's name, as in :func:`rnnlens.describe` / ``States``.
        step: an input time step (negative counts from the end) or a ``slice`` of steps.
        field: ``"h"`` (the output and the carried state) or ``"c"`` (LSTM cell state only);
            ``"state"`` for state-space mixers (their carried state, edited as ``c`` is: the
            output at ``step`` reads the state as computed, later steps the edited one;
            ``units`` index its first dimension: Mamba channels, Mamba2 / gated delta-net / mLSTM
            heads (mLSTM: its memory C), RG-LRU units, RWKV-4 parts num, den, max).
        units: ``None`` (every unit), an int, a list of ints or a ``slice``.
        direction: ``"forward"``/``"backward"``; ``None``: every direction of the layer.
        set: replace by this value: a scalar or an array broadcastable to (sample, n_units).
        add: add this value (same shapes as ``set``).
        scale: multiply by this value (same shapes; ``scale=0`` ablates).
        target: ``"state"`` (the state after the step) or ``"write"`` (what the step wrote into
            its linear state: ``field="c"`` of an LSTM, ``field="h"`` of a GRU or an MGU,
            ``field="state"`` of a Mamba, Mamba2, multi-head Mamba, lightning, gated delta-net,
            Kimi delta, mLSTM (its C), RWKV-4 (parts num, den) or RG-LRU mixer; see the module
            doc).
    """

    layer: str
    step: int | slice
    field: str = "h"
    units: int | Sequence[int] | slice | None = None
    direction: str | None = None
    set: Any = None
    add: Any = None
    scale: Any = None
    target: str = "state"


#: the ``field_name`` under which :meth:`LayerEdits.steps` gives the write edits of a field
WRITE = "write:"
#: kind -> the field its steps write into, a state linear in the previous one (the module doc)
LINEAR = {
    "lstm": "c", "gru": "h", "mgu": "h", "mamba": "state", "mamba2": "state", "rglru": "state",
    "mamba_heads": "state", "lightning": "state", "gated_deltanet": "state", "kimi_delta": "state",
    "mlstm": "state", "rwkv4": "state",
}  # fmt: skip


def _key(edit: Edit) -> str:
    return edit.field if edit.target == "state" else WRITE + edit.field


@dataclass(frozen=True)
class Op:
    """One operation on a (sample, unit) state at one step: ``state[:, units] <mode>= value``."""

    units: slice | np.ndarray
    mode: Mode
    value: np.ndarray  # broadcastable to (sample, n_units), in the state's dtype at apply time


@dataclass
class LayerEdits:
    """Every edit of one layer, checked against its spec; steps resolved per call."""

    spec: LayerSpec
    edits: list[tuple[Edit, tuple[str, ...], slice | np.ndarray, int]] = field(default_factory=list)
    #: (direction, field) whose write edits an adapter asked for (:meth:`steps` with ``write:<field>``)
    writes_applied: set[tuple[str, str]] = field(default_factory=set)

    def fields(self) -> set[str]:
        """The fields edited (``write:<field>`` for write edits)."""
        return {_key(e) for e, _, _, _ in self.edits}

    def unapplied_writes(self) -> list[Edit]:
        """The write edits no adapter asked for (it does not implement them for this layer)."""
        return [
            e for e, dirs, _, _ in self.edits
            if e.target == "write" and any((d, e.field) not in self.writes_applied for d in dirs)
        ]  # fmt: skip

    def steps(
        self,
        direction: str,
        field_name: str,
        n_steps: int,
        n_samples: int,
        mask: np.ndarray | None = None,
        first: int = 0,
    ) -> dict[int, list[Op]]:
        """The operations on ``field_name`` of ``direction``, by input time step, for one call
        of ``n_steps`` steps and ``n_samples`` samples; ``mask`` (sample, time) refuses edits at
        masked steps (their state is carried, not computed, so an edit there has no meaning),
        naming the samples counted from ``first``. ``field_name`` ``write:c`` / ``write:h``: the
        ``target="write"`` edits of that field (an adapter asking for them applies them)."""
        if field_name.startswith(WRITE):
            self.writes_applied.add((direction, field_name[len(WRITE) :]))
        out: dict[int, list[Op]] = {}
        tail = tuple(self.spec.state_shape or ())[1:] if field_name.removeprefix(WRITE) == "state" else ()
        for edit, directions, units, width in self.edits:
            if _key(edit) != field_name or direction not in directions:
                continue
            values = {
                mode: _value(edit, mode, getattr(edit, mode), n_samples, width, tail)
                for mode in ("set", "add", "scale")
                if getattr(edit, mode) is not None
            }  # one array per edit, shared by its steps
            for t in _resolve_steps(edit, n_steps):
                if mask is not None and not bool(np.all(mask[:, t])):
                    bad = (np.flatnonzero(~mask[:, t]) + first).tolist()[:10]
                    raise OptionError(
                        f"Edit on {edit.layer!r} at step {t}: that step is masked for sample(s) {bad}; "
                        "the state there is carried, not computed. Edit valid steps only, or trace a "
                        "batch without those samples."
                    )
                for mode, value in values.items():
                    out.setdefault(t, []).append(Op(units, mode, value))  # type: ignore[arg-type]
        return out

    def uniform(
        self, direction: str, field_name: str, n_steps: int, n_samples: int
    ) -> tuple[range, list[Op]] | None:
        """When every edit of ``field_name`` on ``direction`` covers the same steps: those steps
        and the operations applied at each of them (what :meth:`steps` gives every step, built
        once); None when the edits cover different steps, or none."""
        covered: set[range] = set()
        ops: list[Op] = []
        for edit, directions, units, width in self.edits:
            if _key(edit) != field_name or direction not in directions:
                continue
            covered.add(_resolve_steps(edit, n_steps))
            for mode in ("set", "add", "scale"):
                value = getattr(edit, mode)
                if value is not None:
                    ops.append(Op(units, mode, _value(edit, mode, value, n_samples, width)))  # type: ignore[arg-type]
        return (covered.pop(), ops) if len(covered) == 1 else None

    def ops_at(self, direction: str, field_name: str, step: int, n_samples: int) -> list[Op]:
        """The operations at one ``step`` of a loop whose length is not known yet (a cell
        called once per step): steps count from 0; negative steps cannot be resolved."""
        if field_name.startswith(WRITE):
            self.writes_applied.add((direction, field_name[len(WRITE) :]))
        out: list[Op] = []
        for edit, directions, units, width in self.edits:
            if _key(edit) != field_name or direction not in directions:
                continue
            if step in _open_steps(edit):
                for mode in ("set", "add", "scale"):
                    value = getattr(edit, mode)
                    if value is not None:
                        out.append(Op(units, mode, _value(edit, mode, value, n_samples, width)))  # type: ignore[arg-type]
        return out


def edit_arrays(
    edits: LayerEdits, direction: str, n_steps: int, n_samples: int, *, writes: bool = False
) -> np.ndarray:
    """The edits of one direction as dense affine maps ``state' = a * state + b`` per step:
    (sample, time, [a_h, b_h(, a_c, b_c)] × unit), input time order, ``a = 1, b = 0`` where
    nothing is edited. For adapters whose loop runs compiled (the edit enters as an input).
    ``writes``: the adapter applies write edits too: for an LSTM or GRU, ``[a_w, b_w]`` of the
    write into its linear state (``c``, ``h``) follow."""
    spec = edits.spec
    fields: list[str] = ["h", "c"] if KINDS[spec.kind].has_c else ["h"]
    linear = {"lstm": "c", "gru": "h"}.get(spec.kind)
    if writes and linear is not None:
        fields.append(WRITE + linear)
    widths = {"h": int(spec.units), "c": int(spec.cell_units or spec.units)}
    blocks = []
    for f in fields:
        width = widths[f.removeprefix(WRITE)]
        a = np.ones((n_samples, n_steps, width))
        b = np.zeros((n_samples, n_steps, width))
        for t, ops in edits.steps(direction, f, n_steps, n_samples).items():
            for op in ops:
                v = np.broadcast_to(op.value, (n_samples, a[:, t, op.units].shape[1]))
                if op.mode == "set":
                    a[:, t, op.units] = 0.0
                    b[:, t, op.units] = v
                elif op.mode == "add":
                    b[:, t, op.units] += v
                else:
                    a[:, t, op.units] *= v
                    b[:, t, op.units] *= v
        blocks += [a, b]
    return np.concatenate(blocks, axis=-1)


def check_masked(edits: LayerEdits, mask: Any, n_steps: int, n_samples: int, first: int = 0) -> None:
    """Refuse edits at masked steps once the layer's (sample, time) ``mask`` is known (for
    samples ``first …`` of the call); see :meth:`LayerEdits.steps`."""
    if mask is None:
        return
    m = np.asarray(mask, bool)
    if m.ndim == 3:
        m = m[..., 0]
    for d in edits.spec.directions:
        for f in ("h", "c") if KINDS[edits.spec.kind].has_c else ("h",):
            edits.steps(d, f, n_steps, n_samples, mask=m, first=first)
            _write_steps(edits, d, f, n_steps, n_samples, m, first)


def _write_steps(edits: LayerEdits, d: str, f: str, n_steps: int, n: int, mask: Any, first: int) -> None:
    """Refuse write edits at masked steps without marking them applied."""
    applied = set(edits.writes_applied)
    edits.steps(d, WRITE + f, n_steps, n, mask=mask, first=first)
    edits.writes_applied = applied


def _open_steps(edit: Edit) -> range:
    s = edit.step
    if isinstance(s, slice):
        bounds = (s.start or 0, 2**62 if s.stop is None else s.stop, s.step or 1)
    else:
        bounds = (int(s), int(s) + 1, 1)
    if min(bounds) < 0:
        raise OptionError(
            f"Edit step {s} on {edit.layer!r} counts from the end, but {edit.layer!r} is a cell called "
            "once per step, so the loop's length is not known while it runs. Use steps counted from 0."
        )
    return range(*bounds)


def plan_edits(edits: Edit | Sequence[Edit], specs: Sequence[LayerSpec]) -> dict[str, LayerEdits]:
    """Check ``edits`` against the model's layers (names, fields, directions, units, values) before
    anything runs; returns them grouped by layer, in the order given."""
    if isinstance(edits, Edit):
        edits = [edits]
    if isinstance(edits, (str, bytes)) or not isinstance(edits, Sequence):
        raise OptionTypeError(
            f"edits must be an rnnlens.Edit or a list of them; received {type(edits).__name__}"
        )
    if not edits:
        raise OptionError("edits is empty; give at least one rnnlens.Edit(layer, step, ...).")
    by_name: Mapping[str, LayerSpec] = {s.name: s for s in specs}
    out: dict[str, LayerEdits] = {}
    for edit in edits:
        if not isinstance(edit, Edit):
            raise OptionTypeError(f"edits must contain rnnlens.Edit objects; received {type(edit).__name__}")
        if not isinstance(edit.layer, str):
            raise OptionTypeError(f"Edit layer must be a layer name (str); received {edit.layer!r}")
        # "name#k": the k-th call of layer "name" (unless a layer is named so: ONNX duplicates)
        spec = by_name.get(edit.layer) or by_name.get(_CALL.sub("", edit.layer))
        if spec is None:
            raise LayerNotFoundError(edit.layer, list(by_name))
        out.setdefault(edit.layer, LayerEdits(spec)).edits.append(_check(edit, spec))
    return out


def _check(edit: Edit, spec: LayerSpec) -> tuple[Edit, tuple[str, ...], slice | np.ndarray, int]:
    kind = KINDS[spec.kind]
    if edit.target not in ("state", "write"):
        raise OptionError(f"Edit target must be 'state' or 'write'; received {edit.target!r}")
    if edit.target == "write":
        _check_write(edit, spec)
    if kind.state_dims:  # a state-space mixer: what it carries is its state; h is only its output
        if edit.field != "state":
            raise FieldNotAvailableError(
                f"Layer {spec.name!r} ({spec.layer_type}) carries its state, not h (h is the mixer's "
                "output at each step): edit field='state' (units index its first state dimension, "
                f"{kind.state_dims[0]!r})."
            )
    elif edit.field not in ("h", "c"):
        raise OptionError(f"Edit field must be 'h' or 'c'; received {edit.field!r}")
    if edit.field == "c" and not kind.has_c:
        raise FieldNotAvailableError(
            f"Layer {spec.name!r} ({spec.layer_type}) has no cell state c; edit field='h' instead."
        )
    if not kind.known:
        raise FieldNotAvailableError(
            f"Layer {spec.name!r} ({spec.layer_type}) computes something rnnlens does not know the "
            "equations of, so its state cannot be edited step by step."
        )
    if edit.direction is None:
        directions = tuple(spec.directions)
    elif edit.direction in spec.directions:
        directions = (edit.direction,)
    else:
        raise OptionError(
            f"Layer {spec.name!r} has directions {list(spec.directions)}; received {edit.direction!r}"
        )
    if all(getattr(edit, m) is None for m in ("set", "add", "scale")):
        raise OptionError(f"Edit on {spec.name!r} changes nothing: give set=, add= or scale=.")
    if not isinstance(edit.step, (int, np.integer, slice)) or isinstance(edit.step, bool):
        raise OptionTypeError(f"Edit step must be an int or a slice; received {edit.step!r}")
    if edit.field == "state":
        width = int((spec.state_shape or (spec.units,))[0])
    else:
        width = int(spec.cell_units or spec.units) if edit.field == "c" else int(spec.units)
    return edit, directions, _units(edit, spec, width), width


def _check_write(edit: Edit, spec: LayerSpec) -> None:
    linear = LINEAR.get(spec.kind)
    if linear is None:
        raise FieldNotAvailableError(
            f"Edit(target='write') on {spec.name!r} ({spec.layer_type}): write edits are implemented "
            "for LSTM (field='c'), GRU and MGU (field='h') layers and Mamba, Mamba2, multi-head Mamba, "
            "lightning-attention, gated delta-net, Kimi delta, mLSTM, RWKV-4 and RG-LRU mixers "
            "(field='state'), whose state is linear in the previous state; edit this layer's state "
            "instead (target='state')."
        )
    if spec.kind == "mlstm" and edit.field == "n":
        raise FieldNotAvailableError(
            f"Edit(target='write') on {spec.name!r}: an mLSTM's write edits edit its memory C "
            "(field='state'); its normaliser n keeps its writes exp(i − m) k (the edit changes what "
            "the memory holds, not the input mass n counts), so n has no write edits of its own."
        )
    if edit.field != linear:
        raise FieldNotAvailableError(
            f"Edit(target='write') on {spec.name!r}: a {spec.kind.upper()} writes into its "
            f"{linear!r} (field={linear!r}); {edit.field!r} is not a sum of writes."
        )
    if spec.kind == "rwkv4":
        _check_rwkv_parts(edit, spec)


def _check_rwkv_parts(edit: Edit, spec: LayerSpec) -> None:
    """An RWKV-4 write edit selects num / den (parts 0, 1): max is no sum of writes."""
    every = edit.units is None and edit.set is None and edit.add is None  # scale: max's 0 stays 0
    try:
        parts = set(np.arange(3)[edit.units].ravel().tolist()) if edit.units is not None else {0, 1, 2}
    except (IndexError, TypeError):
        return  # reported with the units' own message
    if 2 in parts and not every:
        raise FieldNotAvailableError(
            f"Edit(target='write') on {spec.name!r}: an RWKV-4 block writes into its num and den "
            "parts (units 0 and 1); part 2, max, is the running maximum that stabilises them, not a "
            "sum of writes: select units=[0], [1] or [0, 1]."
        )


def _units(edit: Edit, spec: LayerSpec, width: int) -> slice | np.ndarray:
    u = edit.units
    if u is None:
        return slice(0, width)
    if isinstance(u, slice):
        idx = np.arange(width)[u]
        if idx.size == 0:
            raise OptionError(f"Edit units {u} select no unit of {spec.name!r} ({width} units)")
        return u
    if isinstance(u, (int, np.integer)) and not isinstance(u, bool):
        idx = np.array([int(u)])
    else:
        try:
            idx = np.asarray(list(u), dtype=np.int64)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise OptionTypeError(
                f"Edit units must be None, an int, a list of ints or a slice; received {u!r}"
            ) from None
    bad = idx[(idx < -width) | (idx >= width)]
    if bad.size:
        raise OptionError(
            f"Edit units {bad.tolist()} out of range for {spec.name!r}.{edit.field} ({width} units)"
        )
    return idx % width


def _resolve_steps(edit: Edit, n_steps: int) -> range:
    s = edit.step
    if isinstance(s, slice):
        r = range(n_steps)[s]
        if not r:
            raise OptionError(
                f"Edit steps {s} select no step of {edit.layer!r} ({n_steps} steps in this call)"
            )
        return r
    t = int(s)
    if not -n_steps <= t < n_steps:
        raise OptionError(f"Edit step {t} is out of range for {edit.layer!r}: this call has {n_steps} steps")
    return range(t % n_steps, t % n_steps + 1)


def _value(
    edit: Edit, mode: str, value: Any, n_samples: int, width: int, tail: tuple[int, ...] = ()
) -> np.ndarray:
    """The edit's value as an array broadcastable to (sample, unit) — for a ``state`` edit to
    (sample, unit, *the rest of the state's shape), a (sample, unit) array applying to all of it."""
    n_units = width if edit.units is None else int(np.arange(width)[_as_index(edit.units)].size)
    try:
        arr = np.asarray(value, dtype=np.float64)
        if tail and arr.ndim == 2:
            arr = arr.reshape(arr.shape + (1,) * len(tail))
        np.broadcast_to(arr, (n_samples, n_units, *tail))
    except (TypeError, ValueError):
        rest = "".join(f", {d}" for d in tail)
        raise OptionError(
            f"Edit {mode}= on {edit.layer!r} must be a scalar or an array broadcastable to (sample, unit"
            f"{', ...' if tail else ''}) = ({n_samples}, {n_units}{rest}); received shape {np.shape(value)}"
        ) from None
    if not np.all(np.isfinite(arr)):
        raise OptionError(f"Edit {mode}= on {edit.layer!r} contains NaN or infinity")
    return arr


def _as_index(u: Any) -> Any:
    if isinstance(u, (int, np.integer)):
        return [int(u)]
    return u if isinstance(u, slice) else list(u)
