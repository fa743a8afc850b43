"""The step loop's plain case (:mod:`rnnlens.adapters.torch_.emit_fast`) against the general loop
it replaces for unedited, unpacked layers: bitwise the same h, c and gates. The general loop
runs when a layer is edited; an edit that multiplies the last step by 1 changes no bit."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import rnnlens

CONFIGS = [
    (nn.LSTM, {}),
    (nn.LSTM, {"bidirectional": True, "num_layers": 2}),
    (nn.LSTM, {"proj_size": 3, "bias": False}),
    (nn.GRU, {}),
    (nn.GRU, {"bidirectional": True, "num_layers": 2, "batch_first": False}),
    (nn.GRU, {"bias": False}),
]


@pytest.mark.parametrize(("cls", "options"), CONFIGS)
def test_plain_loop_is_bitwise_the_general_loop(cls: Any, options: dict[str, Any]) -> None:
    torch.manual_seed(3)
    options = {"batch_first": True, **options}
    m = cls(5, 6, **options).eval()
    x = torch.randn(4, 9, 5) if options["batch_first"] else torch.randn(9, 4, 5)
    plain = rnnlens.trace(m, x, strategy="emit")
    names = list(plain)
    # an edit on every layer: all of them run the general loop (edits work per layer and step)
    edits = [rnnlens.Edit(name, -1, scale=1.0) for name in names]
    general = rnnlens.intervene(m, x, edits).states
    for name in names:
        a, b = plain[name], general[name]
        np.testing.assert_array_equal(a.h, b.h)
        if cls is nn.LSTM:
            np.testing.assert_array_equal(a.c, b.c)
        assert list(a.gates) == list(b.gates)
        for gate in a.gates:
            np.testing.assert_array_equal(a.gates[gate], b.gates[gate], err_msg=f"{name} {gate}")
