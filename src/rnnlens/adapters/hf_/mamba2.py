"""Mamba2 mixers (Mamba2, and the Mamba2 layers of hybrids: Bamba, NemotronH, Zamba2, ...):
every step's per-head SSM state.

transformers' pure-PyTorch path runs Mamba2 chunk by chunk (``segment_sum``), so states exist
only at chunk boundaries. :func:`mamba2_states` runs the per-head recurrence step by step on
what the mixer received, with its own weights and the modeling file's helpers,

    dt = clamp(softplus(dt_raw + dt_bias), time_step_limit),  A = -exp(A_log)
    s_t = exp(A dt_t) s_{t-1} + dt_t x_t ⊗ B_t,   y_t = s_t C_t + D x_t,   out = W_out norm(y, z)

(per head; ``B``, ``C`` shared by the heads of a group; Falcon-H1 adds its muP multipliers
around ``in_proj`` and may gate without the norm), and checks the mixer output rebuilt
from those states against the mixer's own (the chunked and the step-by-step sums round
differently: float32 tolerance).

Example:
    >>> from types import SimpleNamespace
    >>> from rnnlens.adapters.hf_.mamba2 import state_shape
    >>> state_shape(SimpleNamespace(num_heads=4, head_dim=8, ssm_state_size=16))
    (4, 8, 16)
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

__all__ = ["mamba2_states", "state_shape"]


def state_shape(mixer: Any) -> tuple[int, int, int]:
    return int(mixer.num_heads), int(mixer.head_dim), int(mixer.ssm_state_size)


def mamba2_states(
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
    """The mixer's output ``h``, its state (sample, time, head, head_dim, d_state) and, when
    asked, ``dt`` (per head), ``B`` and ``C`` (per group and state dim) at every step.
    ``ops``: edits of the state by step; ``writes``: edits of each step's write
    ``(dt x) ⊗ B`` before the state is formed from it (:mod:`.edits`)."""
    mod = sys.modules[type(mixer).__module__]
    dtype = hidden_states.dtype
    n, t, _ = hidden_states.shape
    heads, p, d_state, groups = mixer.num_heads, mixer.head_dim, mixer.ssm_state_size, mixer.n_groups
    hs = mod.apply_mask_to_padding_states(hidden_states, attention_mask)
    if hasattr(mixer, "mup_vector"):  # Falcon-H1: muP multipliers around in_proj
        hs = hs * mixer.ssm_in_multiplier
    projected = F.linear(hs, mixer.in_proj.weight, mixer.in_proj.bias)
    if hasattr(mixer, "mup_vector"):
        projected = projected * mixer.mup_vector
    d_mlp = (projected.shape[-1] - 2 * mixer.intermediate_size - 2 * groups * d_state - heads) // 2
    if d_mlp:
        raise ValueError(f"{name}: a Mamba2 mixer with a gated MLP in in_proj is not supported")
    z, xbc, dt = projected.split([mixer.intermediate_size, mixer.conv_dim, heads], dim=-1)
    xbc = mod.causal_conv1d_fn(
        xbc.transpose(1, 2), mixer.conv1d.weight.squeeze(1), mixer.conv1d.bias, activation=mixer.activation
    )
    xbc = mod.apply_mask_to_padding_states(xbc.transpose(1, 2), attention_mask)
    x, B, C = torch.split(xbc, [mixer.intermediate_size, groups * d_state, groups * d_state], dim=-1)
    limit = getattr(mixer, "time_step_limit", (0.0, float("inf")))
    dt = torch.clamp(F.softplus(dt + mixer.dt_bias.to(dt.dtype)), min=limit[0], max=limit[1])
    A = -torch.exp(mixer.A_log.float())
    xh = x.float().reshape(n, t, heads, p)
    Bg, Cg = B.float().reshape(n, t, groups, d_state), C.float().reshape(n, t, groups, d_state)
    Bh = Bg.repeat_interleave(heads // groups, dim=2)
    Ch = Cg.repeat_interleave(heads // groups, dim=2)
    # every step's input to the state at once; the loop is then two in-place ops per step
    d_a = torch.exp(dt.float() * A)[:, :, :, None, None]  # (n, t, heads, 1, 1)
    states = (dt[..., None].float() * xh)[..., None] * Bh[:, :, :, None, :]  # (n, t, heads, p, d_state)
    unedited = {}
    for k in range(t):
        if writes and k in writes:  # step k's write, before the carried state is added to it
            edits.apply(states[:, k], writes[k])
        if k:
            states[:, k].addcmul_(states[:, k - 1], d_a[:, k])  # as mamba2_scan rounds it
        if ops and k in ops:
            unedited[k] = states[:, k].clone()  # step k's own output reads the state as computed
            edits.apply(states[:, k], ops[k])
    ys = torch.einsum("bthpn,bthn->bthp", states, Ch)
    for k, s in unedited.items():
        ys[:, k] = torch.einsum("bhpn,bhn->bhp", s, Ch[:, k])
    ys = ys + mixer.D.float()[None, None, :, None] * xh
    y = ys.reshape(n, t, heads * p)
    if getattr(mixer, "mamba_rms_norm", True):
        y = type(mixer.norm).forward(mixer.norm, y.to(dtype), z)
    else:  # Falcon-H1 without its gated norm: the gate alone
        y = y * F.silu(z)
    rebuilt = F.linear(y.to(dtype), mixer.out_proj.weight, mixer.out_proj.bias)
    # the steps up to the first edit are the mixer's own
    h = edits.check_unedited(
        out, rebuilt, ops, layer=name, what="the mixer output rebuilt from every step's state", writes=writes
    )
    arrays = DirectionArrays(h=h, state=states.numpy())
    if gates:
        arrays.gates = tuple(np.ascontiguousarray(g.float().numpy()) for g in (dt, Bg, Cg, xh))
    return arrays, rebuilt
