"""Lightning attention (MiniMax's ``MiniMaxLightningAttention``: kind ``lightning``): the decayed
``KᵀV`` memory of every head at every step.

The full forward computes the memory block by block (``block_size`` tokens at once) and keeps
only the last; the decode path steps it token by token. :func:`lightning_states` repeats the
mixer's computation on what it received, with its own weights and the modeling file's
``apply_mask_to_padding_states``, stepping the memory across block boundaries,

    [q, k, v] = act(W_qkv x)   (per head),   S_t = exp(-λ) S_{t-1} + k_tᵀ v_t,   o_t = q_t S_t
    out = W_out (σ(W_gate x) ⊙ norm(o))

(``λ`` the head's fixed ``slope_rate``: no input-dependent gate), keeping every ``S_t`` (head,
d_k, d_v), and checks the output it rebuilds against the mixer's own (block and step sums round
differently: float32 tolerance). Gates: the keys ``k`` (head, d_k) and values ``v`` (head, d_v)
each step writes, ``k_tᵀ v_t`` (padded steps' zeroed, as the mixer computes them; what
:func:`rnnlens.decompose` reads and ``Edit(target="write")`` edits: the step's own output
reads the memory formed from the edited write).

Example:
    >>> from types import SimpleNamespace
    >>> state_shape(SimpleNamespace(num_attention_heads=2, head_dim=8))
    (2, 8, 8)
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ...core.cells import DirectionArrays
from ...core.edits import Op
from . import edits

__all__ = ["lightning_states", "state_shape"]


def state_shape(mixer: Any) -> tuple[int, int, int]:
    return int(mixer.num_attention_heads), int(mixer.head_dim), int(mixer.head_dim)


def lightning_states(
    mixer: Any,
    hidden_states: torch.Tensor,
    attention_mask: Any,
    out: torch.Tensor,
    *,
    name: str,
    gates: bool,
    ops: dict[int, list[Op]] | None = None,
    writes: dict[int, list[Op]] | None = None,
) -> tuple[DirectionArrays, torch.Tensor]:
    """The mixer's output ``h`` and its memory (sample, time, head, d_k, d_v) at every step,
    checked against its own output ``out``; and the output rebuilt (with ``ops``, the edits
    of the memory by step, carried forward; ``writes``, the edits of each step's write
    ``k_tᵀ v_t`` before the memory is formed from it)."""
    mod = sys.modules[type(mixer).__module__]
    n, t, _ = hidden_states.shape
    heads, d = mixer.num_attention_heads, mixer.head_dim
    qkv = mixer.act_fn(F.linear(hidden_states, mixer.qkv_proj.weight, mixer.qkv_proj.bias))
    qkv = mod.apply_mask_to_padding_states(qkv, attention_mask).reshape(n, t, heads, 3 * d)
    q, k, v = (x.transpose(1, 2) for x in torch.split(qkv, d, dim=3))  # (n, heads, t, d)
    ratio = torch.exp(-mixer.slope_rate).float()  # (heads, 1, 1)
    # every step's write k_tᵀ v_t at once; the loop is then one in-place update per step
    states = torch.einsum("nhtd,nhte->nthde", k.float(), v.float()).contiguous()
    unedited = {}
    for i in range(t):
        if writes and i in writes:  # step i's write, before the carried memory is added to it
            edits.apply(states[:, i], writes[i])
        if i:
            states[:, i].add_(states[:, i - 1] * ratio)
        if ops and i in ops:
            unedited[i] = states[:, i].clone()  # step i's own output reads the memory as computed
            edits.apply(states[:, i], ops[i])
    o = torch.einsum("nhtd,nthde->nhte", q.float(), states)
    for i, mem in unedited.items():
        o[:, :, i] = torch.einsum("nhd,nhde->nhe", q[:, :, i].float(), mem)
    o = o.to(v.dtype)
    o = o.transpose(1, 2).reshape(n, t, heads * d)
    o = type(mixer.norm).forward(mixer.norm, o)
    o = torch.sigmoid(F.linear(hidden_states, mixer.output_gate.weight, mixer.output_gate.bias)) * o
    rebuilt = F.linear(o, mixer.out_proj.weight, mixer.out_proj.bias)
    h = edits.check_unedited(
        out,
        rebuilt,
        ops,
        layer=name,
        what="the mixer output rebuilt from every step's memory",
        writes=writes,
    )
    arrays = DirectionArrays(h=h, state=states.cpu().numpy())
    if gates:
        arrays.gates = tuple(np.ascontiguousarray(x.transpose(1, 2).float().cpu().numpy()) for x in (k, v))
    return arrays, rebuilt
