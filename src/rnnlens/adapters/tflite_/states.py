"""Per-direction states of a fused TFLite op: ``h`` from the interpreter, ``c`` and gates rebuilt.

``h`` of every step is the op's own output tensor, read from rnnlens' interpreter
(:mod:`.runtime`). ``c`` and the gates ``i, f, g, o`` are rebuilt from the op's own weight tensors
(read from the same interpreter after ``invoke``, so weights a ``DEQUANTIZE`` op computes are
the values the op used) with :func:`~rnnlens.core.rebuild.reconstruct_direction`, checked against
that ``h`` at every step and against the op's state tensors after the last step (its
``output_state`` and ``cell_state`` variables): a mismatch is a
:class:`~rnnlens.errors.ParityError`. TFLite's LSTM equations, per direction (float kernel,
``lstm_eval.cc``)::

    i = σ(W_i x + R_i h + p_i ⊙ c_prev + b_i)      f = σ(W_f x + R_f h + p_f ⊙ c_prev + b_f)
    g = act(W_c x + R_c h + b_c)                   c = clip(f ⊙ c_prev + i ⊙ g, ±cell_clip)
    o = σ(W_o x + R_o h + p_o ⊙ c + b_o)           h = P (o ⊙ act(c))   (P: the projection, if any)

with ``act`` the op's fused activation (tanh for a converted Keras LSTM) and ``cell_clip`` where
the op sets one (the converter sets 10 on every Keras LSTM, which Keras itself does not clip).
Peepholes ``p`` and a projection ``P`` without bias are covered (a projection without peepholes
or cell clip); what is not (:attr:`.graph.Cell.problem`) gives ``h`` only. A hybrid op (int8
weights, float activations) is rebuilt with its kernel's arithmetic (:mod:`.hybrid`).

Example:
    >>> _to_batch_major(np.zeros((5, 2, 4)), time_major=True).shape
    (2, 5, 4)
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ...core.cells import DirectionArrays, carry_forward, check_parity
from ...core.rebuild import reconstruct_direction
from ...core.spec import CellWeights, Field
from .graph import Cell, Layer
from .hybrid import hybrid_direction

__all__ = ["layer_arrays", "needs"]


def _sigmoid(a: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):  # exp(-a) overflows to inf for large -a: sigmoid 0, as TFLite's
        return np.asarray(1.0 / (1.0 + np.exp(-a)), dtype=a.dtype)


_FUNCTIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "tanh": np.tanh,
    "linear": lambda a: a,
    "relu": lambda a: np.maximum(a, 0),
    "relu6": lambda a: np.clip(a, 0, 6),
    "relu_n1_to_1": lambda a: np.clip(a, -1, 1),
}
_GATES = ("input", "forget", "cell", "output")


def _to_batch_major(a: np.ndarray, *, time_major: bool) -> np.ndarray:
    return a.transpose(1, 0, *range(2, a.ndim)) if time_major else a


def needs(layer: Layer, fields: tuple[Field, ...]) -> tuple[list[int], list[int], list[int]]:
    """The tensors read ``before`` invoke (initial states), ``after`` it (outputs, inputs, final
    states) and once (weights) for ``layer`` and ``fields``."""
    before, after, consts = [], [], []
    rebuild = len(fields) > 1
    for cell in layer.cells.values():
        states = [cell.roles[r] for r in ("h0", "c0") if cell.roles.get(r, -1) >= 0]
        before += states
        after += [cell.output, *states]
        if rebuild:
            after.append(cell.roles["input"])
            consts += [v for k, v in cell.roles.items() if v >= 0 and k not in ("input", "h0", "c0")]
    return list(dict.fromkeys(before)), list(dict.fromkeys(after)), list(dict.fromkeys(consts))


def _weights(cell: Cell, const: dict[int, np.ndarray]) -> CellWeights:
    """The cell's weights in rnnlens' canonical form (gate blocks i, f, g, o)."""

    def get(role: str) -> np.ndarray | None:
        t = cell.roles.get(role, -1)
        return None if t < 0 else np.asarray(const[t], np.float32)

    def blocks(prefix: str) -> np.ndarray:
        return np.concatenate([np.asarray(get(f"{prefix}_{g}")) for g in _GATES], axis=0).T

    biases = [get(f"{g}_bias") for g in _GATES]
    peep = [get(f"cell_to_{g}") for g in ("input", "forget", "output")]
    proj = get("projection")
    return CellWeights(
        kind="lstm",
        kernel=blocks("input_to"),
        recurrent_kernel=blocks("recurrent_to"),
        bias=None if all(b is None for b in biases) else np.concatenate(
            [b if b is not None else np.zeros(cell.cell_units, np.float32) for b in biases]
        ),
        recurrent_bias=None,
        activation=_FUNCTIONS[cell.activation],
        recurrent_activation=_sigmoid,
        peepholes=None if all(p is None for p in peep) else np.stack(
            [p if p is not None else np.zeros(cell.cell_units, np.float32) for p in peep]
        ),
        projection=None if proj is None else proj.T,
        cell_clip=cell.cell_clip,
    )  # fmt: skip


def layer_arrays(
    layer: Layer,
    fields: tuple[Field, ...],
    tensor: Callable[[int, bool], np.ndarray],
    const: dict[int, np.ndarray],
) -> dict[str, DirectionArrays]:
    """Every direction of ``layer``: ``tensor(index, after)`` is a tensor over all samples, read
    before (``after=False``: the initial states) or after invoke."""
    out: dict[str, DirectionArrays] = {}
    rebuild = len(fields) > 1 and layer.kind == "lstm"
    for direction, cell in layer.cells.items():
        seq = _to_batch_major(tensor(cell.output, True), time_major=cell.time_major)[..., cell.out_slice]
        reverse = cell.op_reverse or cell.graph_reverse
        if cell.graph_reverse:  # the op ran on x reversed in time: back to the layer's input order
            seq = seq[:, ::-1]
        h_role = "h0"
        h0 = tensor(cell.roles[h_role], False)
        c0 = tensor(cell.roles["c0"], False) if "c0" in cell.roles else None
        if rebuild:
            x = _to_batch_major(tensor(cell.roles["input"], True), time_major=cell.time_major)
            if cell.graph_reverse:
                x = x[:, ::-1]
        if rebuild and cell.hybrid:
            arrays = _hybrid(cell, const, x, seq, h0, c0, reverse=reverse, layer=layer.name)
        elif rebuild:
            arrays = reconstruct_direction(
                _weights(cell, const), x, np.ascontiguousarray(seq), h0, c0, None,
                reverse=reverse, want_c=True, want_gates="gates" in fields, layer=layer.name,
            )  # fmt: skip
        else:
            arrays = DirectionArrays(h=carry_forward(np.ascontiguousarray(seq), None, h0))
        _check_last(layer.name, arrays.h, tensor(cell.roles[h_role], True), reverse, "h", "output_state")
        if arrays.c is not None:
            _check_last(layer.name, arrays.c, tensor(cell.roles["c0"], True), reverse, "c", "cell_state")
            if "c" not in fields:
                arrays.c = None
        out[direction] = arrays
    return out


def _hybrid(
    cell: Cell,
    const: dict[int, np.ndarray],
    x: np.ndarray,
    seq: np.ndarray,
    h0: np.ndarray,
    c0: np.ndarray | None,
    *,
    reverse: bool,
    layer: str,
) -> DirectionArrays:
    """One direction of a hybrid (int8-weight) op, with the kernel's arithmetic (:mod:`.hybrid`)."""
    weights = {
        f"{p}_{g}": (const[cell.roles[f"{p}_{g}"]], cell.hybrid[cell.roles[f"{p}_{g}"]])
        for p in ("input_to", "recurrent_to")
        for g in _GATES
    }
    biases = {
        g: const[t] if (t := cell.roles.get(f"{g}_bias", -1)) >= 0 else np.zeros(cell.cell_units, np.float32)
        for g in _GATES
    }
    return hybrid_direction(
        weights, biases, _FUNCTIONS[cell.activation], cell.cell_clip, x, seq, h0, c0,
        reverse=reverse, asymmetric=cell.asymmetric, layer=layer,
    )  # fmt: skip


def _check_last(layer: str, seq: np.ndarray, final: np.ndarray, reverse: bool, what: str, state: str) -> None:
    """The state after the op's last step must be the op's own state variable."""
    last = seq[:, 0] if reverse else seq[:, -1]
    check_parity(
        np.asarray(final)[:, None], last[:, None], None, layer=layer,
        what=f"{what} after the last step (vs the op's own {state} tensor)",
    )  # fmt: skip
