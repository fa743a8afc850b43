"""RecurrentGemma (Griffin) recurrent blocks: the RG-LRU state at every step and its gates.

The ``rg_lru`` submodule returns its state ``h_t`` at every step (transformers keeps only the
last in ``rg_lru.recurrent_states``): that output *is* :attr:`state`, the module's own
numbers. Its gates are recomputed from the input it received with its own weights,

    r_t = σ(W_a x_t + b_a),  i_t = σ(W_x x_t + b_x),  a_t = exp(-8 r_t softplus(Λ))
    h_t = a_t ⊙ h_{t-1} + sqrt(1 - a_t²) ⊙ (i_t ⊙ x_t)    (a_t = 0 and no sqrt where a segment starts)

and checked by rebuilding ``h`` from them (:class:`~rnnlens.errors.ParityError` otherwise).
``h`` of the entry is the recurrent block's output.

Example:
    >>> from types import SimpleNamespace
    >>> from rnnlens.adapters.hf_.rglru import state_shape
    >>> state_shape(SimpleNamespace(lru_width=16))
    (16,)
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ...core.cells import DirectionArrays
from ...core.edits import Op
from . import edits

__all__ = ["rglru_states", "state_shape"]


def state_shape(block: Any) -> tuple[int]:
    return (int(block.lru_width),)


def rglru_states(
    lru: Any, activations: torch.Tensor, position_ids: torch.Tensor, h0: Any, state: torch.Tensor,
    out: torch.Tensor | None, *, name: str, gates: bool, ops: dict[int, list[Op]] | None = None,
    writes: dict[int, list[Op]] | None = None,
) -> tuple[DirectionArrays, torch.Tensor]:  # fmt: skip
    """``state`` is what ``lru`` returned for ``activations``; its gates are rebuilt and checked.
    Returns the arrays (``h`` = ``out``, the block's output, when given) and the ``lru`` output
    rebuilt (with ``ops``, the state edits by step: each step's output is its state as
    computed, the edited state is carried; with ``writes``, the edits of each step's write
    ``(x i) sqrt(1 - a²)`` before the state is formed from it; :mod:`.edits`)."""
    n, t, width = activations.shape
    heads, block = lru.num_attention_heads, lru.block_width
    reset = position_ids[:, :, None] == 0
    x = activations.reshape(n * t, heads, block).permute(1, 0, 2)
    i_gate = torch.sigmoid(
        torch.baddbmm(lru.input_gate_bias[:, None, :], x, lru.input_gate_weight)
        .transpose(0, 1)
        .reshape(n, t, width)
    )
    r_gate = torch.sigmoid(
        torch.baddbmm(lru.recurrent_gate_bias[:, None, :], x, lru.recurrent_gate_weight)
        .transpose(0, 1)
        .reshape(n, t, width)
    )
    log_a = -8.0 * r_gate * F.softplus(lru.recurrent_param)
    a = torch.exp(log_a)
    multiplier = torch.sqrt(1 - torch.exp(2 * log_a))
    multiplier = reset + ~reset * multiplier
    normalized = activations * i_gate * multiplier.type(activations.dtype)
    a = a * ~reset
    s = torch.zeros((n, width), dtype=torch.float32) if h0 is None else h0.float()
    rebuilt = torch.empty_like(state, dtype=torch.float32)
    carried = rebuilt.clone() if ops else rebuilt
    for k in range(t):
        w = normalized[:, k].float()
        if writes and k in writes:
            w = w.clone()
            edits.apply(w, writes[k])
        s = a[:, k].float() * s + w
        rebuilt[:, k] = s
        if ops and k in ops:
            s = s.clone()
            edits.apply(s, ops[k])
            carried[:, k] = s
        elif ops:
            carried[:, k] = s
    own = state.detach().float().numpy()
    edits.check_unedited(
        state, rebuilt, ops, layer=name, what="the RG-LRU state rebuilt from its gates", writes=writes
    )
    got = own if not (ops or writes) else carried.numpy()
    h = np.empty(0, np.float32) if out is None else out.detach().float().numpy()
    arrays = DirectionArrays(h=h, state=got)
    if gates:
        arrays.gates = (
            np.ascontiguousarray(r_gate.float().numpy()),
            np.ascontiguousarray(i_gate.float().numpy()),
            np.ascontiguousarray(activations.float().numpy()),
        )
    return arrays, rebuilt.to(state.dtype)
