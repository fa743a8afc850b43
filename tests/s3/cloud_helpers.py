"""A tiny real PyTorch model and data for the object-storage tests."""

from __future__ import annotations

import numpy as np

MODEL = """
import torch

class Net(torch.nn.Module):
    def __init__(self, hidden=5):
        super().__init__()
        torch.manual_seed(3)
        self.rnn = torch.nn.LSTM(3, hidden, num_layers=2, batch_first=True)

    def forward(self, x):
        return self.rnn(x)[0]
"""


def model():  # type: ignore[no-untyped-def]
    """Two stacked LSTM layers (h, c and gates), the same weights in every process."""
    import torch

    torch.manual_seed(3)
    return torch.nn.LSTM(3, 5, num_layers=2, batch_first=True)


def data(n: int, time: int = 6, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, time, 3)).astype("float32")
