"""One table of the recurrent cell kinds rnnlens knows: a new kind is one entry here (and, if
its gates can be rebuilt, one gate function in :mod:`rnnlens.core.cells`).

Each entry says what the core needs to know without asking "which kind is this?": its gate
names, the fields it has, whether rnnlens knows its equations, whether it has a cell state,
whether its gates can be rebuilt from (x, h_prev), whether its states are feature maps, and how
many arrays an emitting probe returns per step (``h``, ``c`` where it has one, each gate).

Example:
    >>> from rnnlens.core.kinds import KINDS
    >>> KINDS["lstm"].gates, KINDS["lstm"].fields, KINDS["lstm"].n_emitted
    (('i', 'f', 'g', 'o'), ('h', 'c', 'gates'), 6)
    >>> KINDS["rnn"].known
    False
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["FIELDS_BY_KIND", "GATE_NAMES", "KINDS", "CellKind", "Field", "Kind"]

#: ``lstm``, ``gru`` and ``simple`` are cells rnnlens knows the equations of; ``rnn`` is any
#: other recurrent layer: its per-step outputs are available, its internals are not.
#: ``convlstm`` (Keras ConvLSTM1D/2D/3D) is an LSTM whose states are feature maps.
#: ``mamba`` (Mamba / FalconMamba selective SSM mixers) and ``rglru`` (RecurrentGemma's
#: real-gated linear recurrent unit) are state-space / linear-recurrent mixers: ``h`` is the
#: mixer's output at each step, ``state`` its recurrent state.
Kind = Literal[
    "lstm", "gru", "mgu", "simple", "rnn", "convlstm", "mamba", "mamba2", "rglru", "rwkv4", "mlstm",
    "gated_deltanet", "kimi_delta", "lightning", "mamba_heads",
]  # fmt: skip
Field = Literal["h", "c", "gates", "state", "state_norm"]


@dataclass(frozen=True)
class CellKind:
    """What the core knows about one kind of cell."""

    name: Kind
    #: canonical gate names, in the order rnnlens stores them (post-activation values)
    gates: tuple[str, ...]
    #: whether rnnlens knows the equations (else only per-step ``h``, the layer's outputs)
    known: bool = True
    #: whether it has a cell state ``c``
    has_c: bool = False
    #: whether gates (and ``c``) can be rebuilt from the layer's input and ``h_prev``
    reconstructable: bool = False
    #: whether ``h``, ``c`` and gates are feature maps (``(*spatial, channels)`` per step)
    feature_maps: bool = False
    #: whether it has a recurrent ``state`` apart from ``h`` (state-space mixers), and the
    #: names of its dimensions after ``sample, time``
    state_dims: tuple[str, ...] = ()

    @property
    def fields(self) -> tuple[Field, ...]:
        out: list[Field] = ["h"]
        if self.has_c:
            out.append("c")
        if self.gates:
            out.append("gates")
        if self.state_dims:
            # state_norm: the L2 norm over the state's last axis, one value per remaining
            # position (a unit row: 16x smaller than Mamba's state, and what the viewer shows)
            out += ["state", "state_norm"]
        return tuple(out)

    @property
    def n_emitted(self) -> int:
        """Arrays an emitting probe returns per step: ``h``, ``c`` (if any), then each gate."""
        return 1 + int(self.has_c) + len(self.gates)


KINDS: dict[str, CellKind] = {
    k.name: k
    for k in (
        CellKind("lstm", ("i", "f", "g", "o"), has_c=True, reconstructable=True),
        CellKind("gru", ("z", "r", "n"), reconstructable=True),
        # minimal gated unit (Flax's MGUCell): forget gate and candidate, h = (1 - f) n + f h
        CellKind("mgu", ("f", "n")),
        CellKind("simple", ()),
        CellKind("rnn", (), known=False),
        CellKind("convlstm", ("i", "f", "g", "o"), has_c=True, feature_maps=True),
        # step size dt (per channel), input and output projections B, C (per state dim), the
        # scan's input x (per channel): the write of a step is dt x B
        CellKind("mamba", ("dt", "B", "C", "x"), state_dims=("channel", "d_state")),
        # per-head step size dt, per-group input and output projections B, C, the scan's input x
        # (head, head_dim): the write of a step is dt x ⊗ B
        CellKind("mamba2", ("dt", "B", "C", "x"), state_dims=("head", "head_dim", "d_state")),
        # recurrence gate (before a = exp(-8 r softplus(Λ))), input gate and the block's input x,
        # per LRU unit: the write of a step is sqrt(1 - a²) (i x)
        CellKind("rglru", ("r", "i", "x"), state_dims=("unit",)),
        # receptance (after its sigmoid), key, value; the WKV state's parts num, den, max
        CellKind("rwkv4", ("r", "k", "v"), state_dims=("part", "unit")),
        # input and forget gate pre-activations (per head), output gate (per unit), and the key
        # (head, d_qk) and value (head, d_v) each step writes into C (decompose reads them)
        CellKind("mlstm", ("i", "f", "o", "k", "v"), state_dims=("head", "d_qk", "d_v")),
        # write strength beta (after its sigmoid) and log decay g, per value head; the keys k
        # (per key head, as the rule uses them) and values v: the write of a step is beta k ⊗ v
        CellKind("gated_deltanet", ("beta", "g", "k", "v"), state_dims=("head", "d_k", "d_v")),
        # write strength beta and log decay g per head and key channel (Kimi delta attention), k, v
        CellKind("kimi_delta", ("beta", "g", "k", "v"), state_dims=("head", "d_k", "d_v")),
        # decayed KᵀV memory with a fixed per-head decay: no input-dependent gate; the key
        # (head, d_k) and value (head, d_v) each step writes into it (decompose reads them)
        CellKind("lightning", ("k", "v"), state_dims=("head", "d_k", "d_v")),
        # Zamba v1's multi-head Mamba: dt per head and channel, B and C per head and state dim,
        # the scan's input x per head and channel: the write of a step is dt x B
        CellKind("mamba_heads", ("dt", "B", "C", "x"), state_dims=("head", "head_dim", "d_state")),
    )
}

#: Canonical gate names per kind (a view of :data:`KINDS`).
GATE_NAMES: dict[str, tuple[str, ...]] = {name: k.gates for name, k in KINDS.items()}
#: The fields each kind has (a view of :data:`KINDS`).
FIELDS_BY_KIND: dict[str, tuple[Field, ...]] = {name: k.fields for name, k in KINDS.items()}
