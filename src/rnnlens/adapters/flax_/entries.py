"""What rnnlens records of a Flax model: one :class:`Site` per sequence of one cell's steps.

Example:
    >>> Site("enc", "forward", "enc", "LSTMCell", "RNN(LSTMCell)", "lstm", 4, 1, 6, False, False).entry
    'enc#1'
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ...core.spec import call_entry

__all__ = ["Site"]


@dataclass(frozen=True)
class Site:
    """One sequence of one cell's steps: a layer's direction in one call."""

    layer: str
    direction: str
    cell: str  # the cell's module path (where its parameters live)
    cell_type: str
    layer_type: str
    kind: str
    units: int
    call: int
    #: the length of an ``nn.RNN`` call; None: a cell called directly, one step per call
    steps: int | None
    reverse: bool
    lengths: bool  # an nn.RNN call with seq_lengths
    #: an LSTM cell's ``activation_fn`` (``h = o ⊙ act(c)``, for write edits); None otherwise
    activation: Any = field(default=None, compare=False, repr=False)

    @property
    def entry(self) -> str:
        return call_entry(self.layer, self.call)
