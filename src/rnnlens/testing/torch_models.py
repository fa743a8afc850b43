"""Small PyTorch models to trace in tests (rnnlens' own and downstream projects').

Each covers a way recurrent modules are used in real code: an encoder-decoder that calls its
decoder twice, a hand-written loop over a cell, a model that packs variable-length batches.
:func:`lstm_float64` is an independent reference for LSTMs (each layer an ``nn.LSTMCell`` in
float64, stepped in a Python loop, its gates from the same weights), the oracle rnnlens' own
tests and the peer benchmark hold every tool's numbers against. Importing this module imports
torch.

Example:
    >>> import torch, rnnlens
    >>> from rnnlens.testing.torch_models import EncoderDecoder
    >>> model = EncoderDecoder(features=3, hidden=4)
    >>> list(rnnlens.trace(model, torch.zeros(2, 5, 3), fields=("h",)))  # the 2nd call continues the 1st
    ['encoder.l0', 'encoder.l1', 'decoder']
    >>> list(rnnlens.trace(model, torch.zeros(2, 5, 3), fields=("h",), calls="each"))
    ['encoder.l0', 'encoder.l1', 'decoder', 'decoder#1']
    >>> layers = lstm_float64(cells_of(model.encoder), torch.zeros(2, 5, 3))
    >>> len(layers), layers[1]["c"].shape, sorted(layers[0])
    (2, (2, 5, 4), ['c', 'f', 'g', 'h', 'i', 'o'])
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

__all__ = ["CellLoop", "EncoderDecoder", "PackedClassifier", "cells_of", "lstm_float64"]


class EncoderDecoder(nn.Module):
    """A 2-layer LSTM encoder; a GRU decoder run twice (teacher-forced, then on its own output)."""

    def __init__(self, features: int = 3, hidden: int = 4):
        super().__init__()
        self.encoder = nn.LSTM(features, hidden, num_layers=2, batch_first=True)
        self.decoder = nn.GRU(hidden, hidden, batch_first=True)
        self.head = nn.Linear(hidden, features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        enc, (h, _) = self.encoder(x)
        first, h_dec = self.decoder(enc, h[-1:].contiguous())
        second, _ = self.decoder(torch.tanh(first), h_dec)
        return self.head(second)


class CellLoop(nn.Module):
    """A Python loop over an ``nn.LSTMCell`` (or ``GRUCell`` / ``RNNCell``): one call per step.

    ``decay`` scales the state between steps (``h = decay * h``), so the ``hx`` a call receives
    differs from the previous call's output, as in models that reset or mix their state.
    """

    def __init__(self, features: int = 3, hidden: int = 4, cell: str = "lstm", decay: float = 1.0):
        super().__init__()
        cls = {"lstm": nn.LSTMCell, "gru": nn.GRUCell, "rnn": nn.RNNCell}[cell]
        self.cell = cls(features, hidden)
        self.kind = cell
        self.decay = decay

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hx = None
        outputs = []
        for t in range(x.shape[1]):
            out = self.cell(x[:, t], hx)
            h = out[0] if self.kind == "lstm" else out
            outputs.append(h)
            hx = (out[0] * self.decay, out[1]) if self.kind == "lstm" else out * self.decay
        return torch.stack(outputs, dim=1)


class PackedClassifier(nn.Module):
    """A bidirectional LSTM over a padded batch with lengths, packed the usual way."""

    def __init__(self, features: int = 3, hidden: int = 4, classes: int = 2):
        super().__init__()
        self.rnn = nn.LSTM(features, hidden, batch_first=True, bidirectional=True)
        self.out = nn.Linear(2 * hidden, classes)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        seq, (h, _) = self.rnn(packed)
        pad_packed_sequence(seq, batch_first=True)
        return self.out(torch.cat([h[0], h[1]], dim=-1))


def cells_of(lstm: nn.LSTM) -> list[nn.LSTMCell]:
    """One ``nn.LSTMCell`` per layer of a unidirectional ``lstm``, holding that layer's weights."""
    cells = []
    for k in range(lstm.num_layers):
        cell = nn.LSTMCell(lstm.input_size if k == 0 else lstm.hidden_size, lstm.hidden_size)
        with torch.no_grad():
            for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                getattr(cell, name).copy_(getattr(lstm, f"{name}_l{k}"))
        cells.append(cell)
    return cells


def lstm_float64(cells: Sequence[nn.LSTMCell], x: torch.Tensor) -> list[dict[str, np.ndarray]]:
    """For each cell of a stack fed ``x`` (batch, time, features) from zero states: its ``h``,
    ``c`` and gates ``i``, ``f``, ``g``, ``o`` (after their activations), each (batch, time,
    unit), in float64. The cells are copied, not changed."""
    out = []
    seq = x.double()
    with torch.no_grad():
        for cell in cells:
            c64 = copy.deepcopy(cell).double()
            h = c = torch.zeros(seq.shape[0], cell.hidden_size, dtype=torch.float64)
            hs, cs, gates = [], [], []
            for t in range(seq.shape[1]):
                pre = seq[:, t] @ c64.weight_ih.T + c64.bias_ih + h @ c64.weight_hh.T + c64.bias_hh
                i, f, g, o = pre.chunk(4, 1)
                gates.append(torch.stack([i.sigmoid(), f.sigmoid(), g.tanh(), o.sigmoid()]))
                h, c = c64(seq[:, t], (h, c))
                hs.append(h)
                cs.append(c)
            seq = torch.stack(hs, 1)
            g4 = torch.stack(gates, 2).numpy()  # (gate, sample, time, unit)
            out.append({"h": seq.numpy(), "c": torch.stack(cs, 1).numpy(), **dict(zip("ifgo", g4))})
    return out
