"""Small linen models for the Flax tests, and their weights read as the NumPy reference takes them
(read from the parameter tree here, independently of the adapter)."""

from __future__ import annotations

from functools import cache
from typing import Any

import flax.linen as nn
import jax
import numpy as np

CELLS = {
    "lstm": nn.LSTMCell,
    "optimized_lstm": nn.OptimizedLSTMCell,
    "gru": nn.GRUCell,
    "mgu": nn.MGUCell,
    "simple": nn.SimpleCell,
}


def reference_weights(kind: str, p: Any) -> dict[str, Any]:
    """``reference_rnn`` keyword arguments of one cell's parameters (canonical gate order)."""

    def cat(names: list[str], what: str) -> np.ndarray:
        return np.concatenate([np.asarray(p[n][what]) for n in names], axis=-1)

    if kind in ("lstm", "optimized_lstm"):
        return {"kernel": cat(["ii", "if", "ig", "io"], "kernel"),
                "recurrent_kernel": cat(["hi", "hf", "hg", "ho"], "kernel"),
                "recurrent_bias": cat(["hi", "hf", "hg", "ho"], "bias")}  # fmt: skip
    if kind == "gru":
        u = np.asarray(p["hn"]["bias"]).shape[0]
        return {"kernel": cat(["iz", "ir", "in"], "kernel"), "bias": cat(["iz", "ir", "in"], "bias"),
                "recurrent_kernel": cat(["hz", "hr", "hn"], "kernel"),
                "recurrent_bias": np.concatenate([np.zeros(2 * u), np.asarray(p["hn"]["bias"])])}  # fmt: skip
    if kind == "mgu":  # no reference_rnn kind: tests compare MGU with their own NumPy loop
        return {}
    return {"kernel": np.asarray(p["i"]["kernel"]), "bias": np.asarray(p["i"]["bias"]),
            "recurrent_kernel": np.asarray(p["h"]["kernel"])}  # fmt: skip


class Uni(nn.Module):
    kind: str
    units: int

    @nn.compact
    def __call__(self, x: Any, seq_lengths: Any = None) -> Any:
        rnn = nn.RNN(CELLS[self.kind](self.units, name="rnn"), return_carry=True)
        return rnn(x, seq_lengths=seq_lengths)


class Bi(nn.Module):
    kind: str
    units: int

    @nn.compact
    def __call__(self, x: Any, seq_lengths: Any = None) -> Any:
        cell = CELLS[self.kind]
        bi = nn.Bidirectional(nn.RNN(cell(self.units, name="fwd")), nn.RNN(cell(self.units, name="bwd")),
                              return_carry=True, name="bi")  # fmt: skip
        return bi(x, seq_lengths=seq_lengths)


@cache
def build(
    kind: str, bidirectional: bool, features: int, units: int, seed: int
) -> tuple[Any, str, dict[str, Any]]:
    """A bound model (cached: its compiled functions are reused across tests), its layer and the
    reference weights per direction."""
    module = (Bi if bidirectional else Uni)(kind, units)
    x = np.zeros((1, 2, features), np.float32)
    variables = module.init(jax.random.key(seed), x)
    params = variables["params"]
    if bidirectional:
        ref = {"forward": reference_weights(kind, params["fwd"]),
               "backward": {**reference_weights(kind, params["bwd"]), "reverse": True}}  # fmt: skip
        return module.bind(variables), "bi", ref
    return module.bind(variables), "rnn", {"forward": reference_weights(kind, params["rnn"])}


def h_of(carry: Any) -> np.ndarray:
    """The h of a cell's carry (LSTM: ``(c, h)``)."""
    return np.asarray(carry[1] if isinstance(carry, tuple) else carry)
