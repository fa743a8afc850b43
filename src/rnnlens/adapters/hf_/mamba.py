"""Mamba and FalconMamba mixers: every step's SSM state, rebuilt from what the mixer received.

transformers' pure-PyTorch path (``MambaMixer.forward`` without ``mamba_ssm``) runs the
selective scan step by step but keeps only the last state. :func:`mamba_states` repeats the
mixer's own computation on the input it received, with its own weights and the modeling file's
own helper functions (``apply_mask_to_padding_states``, ``causal_conv1d_fn``), keeping the state
of every step, and checks the mixer output it rebuilds from those states against what the
mixer returned (:class:`~rnnlens.errors.ParityError` otherwise):

    dt = softplus(W_dt · dt_low + b_dt),  A = -exp(A_log)
    s_t = exp(A dt_t) ⊙ s_{t-1} + dt_t B_t x_t,   y_t = s_t C_t + D x_t,   out = W_out (y ⊙ silu(z))

(``(dt_t B_t) x_t``: the write of step ``t``, what ``Edit(target="write")`` edits).

FalconMamba also RMS-normalises ``dt_low``, ``B`` and ``C`` (its weightless norms).

Example:
    >>> from types import SimpleNamespace
    >>> from rnnlens.adapters.hf_.mamba import state_shape
    >>> state_shape(SimpleNamespace(intermediate_size=32, ssm_state_size=4))
    (32, 4)
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

__all__ = ["mamba_states", "state_shape"]


def state_shape(mixer: Any) -> tuple[int, int]:
    return int(mixer.intermediate_size), int(mixer.ssm_state_size)


def _call(m: Any, x: torch.Tensor) -> torch.Tensor:
    """A submodule's own forward, without its hooks (rnnlens runs nothing the user hooked)."""
    return type(m).forward(m, x)


def mamba_states(
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
    """The mixer's output ``h``, its SSM state (sample, time, d_inner, d_state) and, when asked,
    its ``dt``, ``B``, ``C`` at every step, checked against the mixer's own output ``out``; and
    the output tensor rebuilt from them. ``ops``: edits of the state by step; ``writes``: edits
    of each step's write ``(dt B) x`` before the state is formed from it (:mod:`.edits`)."""
    mod = sys.modules[type(mixer).__module__]
    falcon = hasattr(mixer, "b_layernorm")
    dtype = hidden_states.dtype
    hs = mod.apply_mask_to_padding_states(hidden_states, attention_mask)
    projected = F.linear(hs, mixer.in_proj.weight, mixer.in_proj.bias).transpose(1, 2)
    x, z = projected.chunk(2, dim=1)
    x = mod.causal_conv1d_fn(
        x, mixer.conv1d.weight.squeeze(1), mixer.conv1d.bias, activation=mixer.activation
    )
    x = mod.apply_mask_to_padding_states(x.transpose(1, 2), attention_mask)  # (b, t, d)
    low, B, C = torch.split(
        F.linear(x, mixer.x_proj.weight, mixer.x_proj.bias),
        [mixer.time_step_rank, mixer.ssm_state_size, mixer.ssm_state_size],
        dim=-1,
    )
    if falcon:
        low, B, C = _call(mixer.dt_layernorm, low), _call(mixer.b_layernorm, B), _call(mixer.c_layernorm, C)
    dt = mixer.dt_proj.weight @ low.transpose(1, 2)  # (b, d, t), as the mixer computes it
    if mixer.dt_proj.bias is not None:
        dt = dt + mixer.dt_proj.bias.float()[..., None]
    dt = F.softplus(dt)
    A = -torch.exp(mixer.A_log.float())
    u = x.transpose(1, 2)  # (b, d, t)
    d_a = torch.exp(A[None, :, None, :] * dt[:, :, :, None])  # (b, d, t, n)
    d_bu = dt[:, :, :, None] * B[:, None, :, :].float() * u[:, :, :, None].float()
    t = u.shape[2]
    # the state's input of every step at once; the loop is then two in-place ops per step
    states = d_bu.permute(0, 2, 1, 3).contiguous()  # (n, t, d, d_state)
    d_a = d_a.permute(0, 2, 1, 3)
    unedited = {}
    for i in range(t):
        if writes and i in writes:  # step i's write, before the carried state is added to it
            edits.apply(states[:, i], writes[i])
        if i:
            states[:, i].add_(states[:, i - 1] * d_a[:, i])
        if ops and i in ops:
            unedited[i] = states[:, i].clone()  # step i's own output reads the state as computed
            edits.apply(states[:, i], ops[i])
    y = torch.matmul(states.to(dtype), C[:, :, :, None])[..., 0]  # (n, t, d)
    for i, s in unedited.items():
        y[:, i] = torch.matmul(s.to(dtype), C[:, i, :, None])[..., 0]
    y = y.transpose(1, 2)
    y = y + u * mixer.D.float()[None, :, None]
    y = y * F.silu(z)
    rebuilt = F.linear(y.transpose(1, 2).to(dtype), mixer.out_proj.weight, mixer.out_proj.bias)
    # the steps up to the first edit are the mixer's own
    h = edits.check_unedited(
        out, rebuilt, ops, layer=name, what="the mixer output rebuilt from every step's state", writes=writes
    )
    arrays = DirectionArrays(h=h, state=states.float().numpy())
    if gates:
        arrays.gates = tuple(np.ascontiguousarray(g.float().numpy()) for g in (dt.transpose(1, 2), B, C, x))
    return arrays, rebuilt
