"""Gated delta-net mixers (Qwen3-Next's linear-attention layers): every step's state.

transformers' pure-PyTorch path runs the gated delta rule chunk by chunk and keeps only the
last state. :func:`gdn_states` repeats the mixer's computation on what it received, with its
own weights and the modeling file's helpers, and runs the rule step by step,

    S_t = exp(g_t) S_{t-1} + k_t ⊗ β_t (v_t - k_tᵀ exp(g_t) S_{t-1}),   o_t = S_tᵀ q_t / sqrt(d_k)

(per value head; ``q`` and ``k`` L2-normalised), keeping every ``S_t`` (head, d_k, d_v), and
checks the mixer output rebuilt from them against the mixer's own. Gates: ``beta`` (the write
strength, after its sigmoid) and ``g`` (the log decay), per value head.

Example:
    >>> from types import SimpleNamespace
    >>> from rnnlens.adapters.hf_.gdn import state_shape
    >>> state_shape(SimpleNamespace(num_v_heads=4, head_k_dim=8, head_v_dim=8))
    (4, 8, 8)
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

__all__ = ["gdn_states", "state_shape"]


def state_shape(mixer: Any) -> tuple[int, int, int]:
    return int(mixer.num_v_heads), int(mixer.head_k_dim), int(mixer.head_v_dim)


def gdn_states(
    mixer: Any,
    hidden_states: torch.Tensor,
    attention_mask: Any,
    out: torch.Tensor,
    *,
    name: str,
    gates: bool,
    ops: dict[int, list[Op]] | None = None,
) -> tuple[DirectionArrays, torch.Tensor]:
    mod = sys.modules[type(mixer).__module__]
    hs = mod.apply_mask_to_padding_states(hidden_states, attention_mask)
    qkvz = F.linear(hs, mixer.in_proj_qkvz.weight, mixer.in_proj_qkvz.bias)
    ba = F.linear(hs, mixer.in_proj_ba.weight, mixer.in_proj_ba.bias)
    query, key, value, z, b, a = mixer.fix_query_key_value_ordering(qkvz, ba)
    query, key, value = (x.reshape(x.shape[0], x.shape[1], -1) for x in (query, key, value))
    mixed = mod.causal_conv1d_fn(
        torch.cat((query, key, value), dim=-1).transpose(1, 2),
        mixer.conv1d.weight.squeeze(1),
        mixer.conv1d.bias,
        activation=mixer.activation,
    ).transpose(1, 2)
    query, key, value = torch.split(mixed, [mixer.key_dim, mixer.key_dim, mixer.value_dim], dim=-1)
    n, t, _ = query.shape
    query = query.reshape(n, t, -1, mixer.head_k_dim)
    key = key.reshape(n, t, -1, mixer.head_k_dim)
    value = value.reshape(n, t, -1, mixer.head_v_dim)
    beta = b.sigmoid()
    g = -mixer.A_log.float().exp() * F.softplus(a.float() + mixer.dt_bias)
    heads = value.shape[2]
    if key.shape[2] != heads:
        query = query.repeat_interleave(heads // key.shape[2], dim=2)
        key = key.repeat_interleave(heads // key.shape[2], dim=2)
    q, k, v, bt, dec = (x.transpose(1, 2).to(torch.float32) for x in (query, key, value, beta, g))
    q, k = mod.l2norm(q, dim=-1, eps=1e-6), mod.l2norm(k, dim=-1, eps=1e-6)
    q = q / (q.shape[-1] ** 0.5)
    s = torch.zeros((n, heads, mixer.head_k_dim, mixer.head_v_dim), dtype=torch.float32)
    states = torch.empty((n, t, heads, mixer.head_k_dim, mixer.head_v_dim), dtype=torch.float32)
    core = torch.zeros_like(v)
    for i in range(t):
        s = s * dec[:, :, i].exp()[..., None, None]
        kv = (s * k[:, :, i].unsqueeze(-1)).sum(dim=-2)
        delta = (v[:, :, i] - kv) * bt[:, :, i].unsqueeze(-1)
        s = s + k[:, :, i].unsqueeze(-1) * delta.unsqueeze(-2)
        core[:, :, i] = (s * q[:, :, i].unsqueeze(-1)).sum(dim=-2)  # read before an edit of step i
        if ops and i in ops:
            edits.apply(s, ops[i])
        states[:, i] = s
    core = core.transpose(1, 2).contiguous().to(hidden_states.dtype)
    shape = z.shape
    normed = type(mixer.norm).forward(
        mixer.norm, core.reshape(-1, core.shape[-1]), z.reshape(-1, z.shape[-1])
    )
    rebuilt = F.linear(normed.reshape(shape).reshape(n, t, -1), mixer.out_proj.weight, mixer.out_proj.bias)
    # the steps up to the first edit are the mixer's own
    h = edits.check_unedited(
        out, rebuilt, ops, layer=name, what="the mixer output rebuilt from every step's state"
    )
    arrays = DirectionArrays(h=h, state=states.numpy())
    if gates:
        arrays.gates = (np.ascontiguousarray(beta.float().numpy()), np.ascontiguousarray(g.float().numpy()))
    return arrays, rebuilt
