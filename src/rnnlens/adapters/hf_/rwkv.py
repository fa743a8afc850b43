"""RWKV-4 time mixing (``RwkvSelfAttention``): the WKV state of every step.

transformers' CPU path (``rwkv_linear_attention_cpu``) runs the WKV recurrence step by step and
keeps only the last state. :func:`rwkv_states` repeats it on what the block received (its
token-shift input and initial state, as the block got them), with the block's own weights,
keeping every step's ``num``, ``den`` and ``max`` (the numerically stable form: the real
numerator is ``num · exp(max)``), and checks the block output it rebuilds against the block's
own. ``state`` is (sample, time, part, unit) with parts ``num, den, max``; gates ``r``
(receptance, after its sigmoid), ``k``, ``v``.

``Edit(target="write")`` edits step t's writes into ``num`` and ``den``, ``exp(k_t − max_t)·
(v_t, 1)`` as stored (stabilised by ``max_t``, which the edit leaves as computed: ``scale=α``
scales the real writes ``exp(k_t)·(v_t, 1)`` by α; ``set=`` / ``add=`` are in stored units),
the terms :func:`rnnlens.decompose` reads; units index the parts (0 ``num``, 1 ``den``; the
``max`` part is a running maximum, not a sum of writes: selecting it is refused). The WKV output
at step t reads the state *before* t (and the token itself through ``time_first``), so a write
edit at t changes the outputs from t + 1 on.

Example:
    >>> from types import SimpleNamespace
    >>> from rnnlens.adapters.hf_.rwkv import state_shape
    >>> state_shape(SimpleNamespace(attention_hidden_size=16))
    (3, 16)
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ...core.cells import DirectionArrays
from ...core.edits import Op
from . import edits

__all__ = ["PARTS", "rwkv_states", "state_shape"]

PARTS = ("num", "den", "max")


def state_shape(block: Any) -> tuple[int, int]:
    return len(PARTS), int(block.attention_hidden_size)


def rwkv_states(
    block: Any,
    hidden: torch.Tensor,
    shift0: Any,
    state0: Any,
    out: torch.Tensor,
    *,
    name: str,
    gates: bool,
    ops: dict[int, list[Op]] | None = None,
    writes: dict[int, list[Op]] | None = None,
) -> tuple[DirectionArrays, torch.Tensor]:
    """``shift0``: the last token of the previous call (or None), ``state0``: (num, den, max)
    before the call (or None: zeros and -1e38, as the kernel starts). Returns the arrays and
    the block output rebuilt; ``ops`` edit (num, den, max) after each step (units index the
    part), carried to the next step; ``writes`` edit each step's writes ``exp(k − max)·(v, 1)``
    into num and den (parts 0, 1; the max part writes nothing) before they are added
    (:mod:`.edits`)."""
    shifted = type(block.time_shift).forward(block.time_shift, hidden)
    if shift0 is not None:
        shifted[:, 0] = shift0
    mix = lambda m: hidden * m + shifted * (1 - m)  # noqa: E731
    key = F.linear(mix(block.time_mix_key), block.key.weight)
    value = F.linear(mix(block.time_mix_value), block.value.weight)
    receptance = torch.sigmoid(F.linear(mix(block.time_mix_receptance), block.receptance.weight))
    n, t, width = key.shape
    if state0 is None:
        num = torch.zeros((n, width), dtype=torch.float32)
        den = torch.zeros((n, width), dtype=torch.float32)
        mx = torch.zeros((n, width), dtype=torch.float32) - 1e38
    else:
        num, den, mx = (s.clone() for s in state0)
    decay = -torch.exp(block.time_decay)
    first = block.time_first
    wkv = torch.zeros_like(key)
    states = torch.empty((n, t, 3, width), dtype=torch.float32)
    for k in range(t):
        kk, vv = key[:, k].float(), value[:, k]
        m_out = torch.maximum(mx, kk + first)
        e1, e2 = torch.exp(mx - m_out), torch.exp(kk + first - m_out)
        wkv[:, k] = ((e1 * num + e2 * vv) / (e1 * den + e2)).to(wkv.dtype)
        m_state = torch.maximum(mx + decay, kk)
        e1, e2 = torch.exp(mx + decay - m_state), torch.exp(kk - m_state)
        w_num, w_den = e2 * vv, e2
        if writes and k in writes:  # the max part is no sum of writes: its row stays 0
            w = torch.stack([w_num, w_den, torch.zeros_like(w_den)], dim=1)
            edits.apply(w, writes[k])
            w_num, w_den = w[:, 0], w[:, 1]
        num, den, mx = e1 * num + w_num, e1 * den + w_den, m_state
        states[:, k, 0], states[:, k, 1], states[:, k, 2] = num, den, mx
        if ops and k in ops:
            edits.apply(states[:, k], ops[k])
            num, den, mx = states[:, k, 0].clone(), states[:, k, 1].clone(), states[:, k, 2].clone()
    rebuilt = F.linear(receptance * wkv, block.output.weight)
    # the steps up to the first edit are the mixer's own
    # a step's output reads the state before it: a write edit changes the outputs after it
    later = {k + 1: v for k, v in (writes or {}).items()}
    what = "the block output rebuilt from every step's state"
    h = edits.check_unedited(out, rebuilt, ops, layer=name, what=what, writes=later)
    arrays = DirectionArrays(h=h, state=states.numpy())
    if gates:
        arrays.gates = tuple(np.ascontiguousarray(g.float().numpy()) for g in (receptance, key, value))
    return arrays, rebuilt
