"""Small PyTorch nets for the conformance suites (PyTorch and ONNX): one recurrent module, packed
when given lengths, and its weights read as reference_rnn arguments (GRU blocks r, z, n
reordered to z, r, n), independently of the adapter's own conversion."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from rnnlens.testing import Built

_MODULES = {"lstm": nn.LSTM, "gru": nn.GRU, "simple": nn.RNN}


def canonical_from_torch(m: Any, kind: str, layer: int, reverse: bool) -> dict[str, Any]:
    """One direction of a torch nn.LSTM/GRU/RNN as reference weights (GRU r,z,n → z,r,n)."""
    sfx = f"_l{layer}" + ("_reverse" if reverse else "")
    get = {
        k: getattr(m, k + sfx).detach().double().numpy()
        for k in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
    }
    if kind == "gru":
        for k, a in get.items():
            r, z, n = np.split(a, 3, axis=0)
            get[k] = np.concatenate([z, r, n], axis=0)
    return {
        "kernel": get["weight_ih"].T,
        "recurrent_kernel": get["weight_hh"].T,
        "bias": get["bias_ih"],
        "recurrent_bias": get["bias_hh"],
    }


def reference_kwargs(m: Any, kind: str, reverse: bool, layer: int = 0) -> dict[str, Any]:
    """One direction of layer ``layer`` of an nn.LSTM/GRU/RNN as reference_rnn keyword arguments."""
    return {**canonical_from_torch(m, kind, layer, reverse), "reverse": reverse}


class Net(nn.Module):
    """One recurrent module; with ``lengths`` the batch is packed (valid steps)."""

    def __init__(self, rnn: Any) -> None:
        super().__init__()
        self.rnn = rnn

    def forward(self, x: Any, lengths: Any = None) -> Any:
        steps = x.shape[1]
        if lengths is not None:
            x = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        out, state = self.rnn(x)
        if lengths is not None:
            out = pad_packed_sequence(out, batch_first=True, total_length=steps)[0]
        return out, state[0] if isinstance(state, tuple) else state


def build_net(kind: str, bidirectional: bool, features: int, units: int, seed: int) -> Built:
    torch.manual_seed(seed)
    net = Net(_MODULES[kind](features, units, batch_first=True, bidirectional=bidirectional)).eval()
    ref = {"forward": reference_kwargs(net.rnn, kind, False)}
    if bidirectional:
        ref["backward"] = reference_kwargs(net.rnn, kind, True)
    return Built(net, "rnn", ref)  # the model is .model, its reference weights .reference
