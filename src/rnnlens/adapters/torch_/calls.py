"""The plain records passed between the stages of a torch capture.

:class:`_Plan` is what ``capture`` decides for each recurrent module before the forward pass
(whether to record it, run it layer by layer, emit ``c`` and gates); :class:`_SeqCall` and
:class:`_CellCalls` are what the recording run (``record``) stores of each call, in the
caller's own tensor format, for the conversion (``convert``) to read afterwards. They hold
data only, so that both sides can import them without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from ...core.edits import LayerEdits
from ...core.spec import call_entry
from .discover import _Config


@dataclass
class _Plan:
    """What to record for one recurrent module, decided before the forward pass."""

    name: str
    module: Any
    cfg: _Config
    record: bool  # some entry of this module is selected
    loop: bool  # run layer by layer (inner layers are needed)
    emit: frozenset[int] = frozenset()  # layers whose c or gates are wanted (a cell: its gates)
    strategy: str = "auto"
    # interventions: entry name ("lstm.l0", "lstm.l0#1" for the second call) -> its edits
    edits: dict[str, LayerEdits] = field(default_factory=dict)
    layer_names: dict[int, str] = field(default_factory=dict)  # layer index -> entry name

    def edits_for(self, layer: int, call: int) -> LayerEdits | None:
        name = self.layer_names.get(layer)
        if name is None or not self.edits:
            return None
        return self.edits.get(call_entry(name, call))


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
    final: Any = None  # the module's returned final state (h_n or (h_n, c_n)), for recordings
    c: dict[int, list[torch.Tensor]] = field(default_factory=dict)  # emitted: per direction
    gates: dict[int, list[tuple[torch.Tensor, ...]]] = field(default_factory=dict)


@dataclass
class _CellCalls:
    """Every call of one cell module (one time step each)."""

    plan: _Plan
    xs: list[Any] = field(default_factory=list)
    hxs: list[Any] = field(default_factory=list)
    outs: list[Any] = field(default_factory=list)
    computed: dict[int, Any] = field(default_factory=dict)  # edited steps: the output before the edit
    emitted: Any = None  # a cell_emit.LstmCellGates that kept each call's gates (or None)
