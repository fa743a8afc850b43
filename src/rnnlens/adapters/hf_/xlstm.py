"""xLSTM (mLSTM layers, the xLSTM-7B layout): the matrix memory ``C`` of every step, with its
normaliser ``n`` and stabiliser ``m``.

transformers runs mLSTM chunkwise (or, below a chunk, with a step loop) and returns only the
last state. :func:`mlstm_states` runs the modeling file's own single-step function
(``mlstm_recurrent_step_native``) over what the layer's backend received (queries, keys,
values, gate pre-activations, initial state), keeping every step's ``C`` (head, d_qk, d_v),
``n`` (head, d_qk) and ``m`` (head, 1), and checks the per-step outputs against the backend's
own (chunkwise and step-wise sums round differently: float32 tolerance). Gates: ``i`` and ``f``
(pre-activations, per head), ``o`` (the output gate after its activation, per unit), and the
keys ``k`` (head, d_qk) and values ``v`` (head, d_v) the backend received: step t writes
``exp(i_t − m_t) k_t ⊗ v_t`` into ``C`` (what :func:`rnnlens.decompose` reads).

``Edit(target="write")`` edits that write *as stored*, stabilised by ``m_t``: the stabiliser
``m_t`` and the normaliser ``n_t`` stay as the step computed them (the edit is of the memory's
content, ``C`` only, as a state edit is), so ``scale=α`` scales the real write
``exp(i_t) k_t ⊗ v_t`` by α, and ``set=`` / ``add=`` values are in the stored (stabilised)
units of ``C_t``. The step's own output reads the edited ``C_t`` (with ``n_t`` as computed).

Example:
    >>> from types import SimpleNamespace
    >>> from rnnlens.adapters.hf_.xlstm import state_shape
    >>> state_shape(SimpleNamespace(config=SimpleNamespace(num_heads=2), qk_dim=64, v_dim=64))
    (2, 32, 32)
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np
import torch

from ...core.cells import DirectionArrays
from ...core.edits import Op
from . import edits

__all__ = ["mlstm_scan", "mlstm_states", "state_shape"]


def state_shape(layer: Any) -> tuple[int, int, int]:
    heads = int(layer.config.num_heads)
    return heads, int(layer.qk_dim) // heads, int(layer.v_dim) // heads


def _o_gate(layer: Any, x: torch.Tensor) -> torch.Tensor:
    if layer.config.weight_mode == "single":
        pre = layer.ogate_preact(x)
    else:
        pre = torch.tensor_split(
            layer.qkv_opreact(x), (layer.qk_dim, 2 * layer.qk_dim, 2 * layer.qk_dim + layer.v_dim), dim=-1
        )[3]
    return layer.ogate_act_fn(pre)


def mlstm_states(
    layer: Any, call: dict[str, Any], x: torch.Tensor, out: torch.Tensor, *, name: str, gates: bool
) -> DirectionArrays:
    """``call``: what the backend received (``query``, ``key``, ``value``, ``igate``, ``fgate``,
    ``c_initial``...) and returned (``h``, (batch, head, time, d_v)), and ``scan`` when the run
    already made it (an edited layer); ``x`` the layer's input, ``out`` its output."""
    cs, ns, ms, _, _ = call.get("scan") or mlstm_scan(layer, call, name=name)
    i_pre, f_pre = call["igate"], call["fgate"]
    arrays = DirectionArrays(
        h=out.detach().float().numpy(), state=cs.numpy(), parts={"n": ns.numpy(), "m": ms.numpy()}
    )
    if gates:
        arrays.gates = (
            np.ascontiguousarray(i_pre.transpose(1, 2).float().numpy()),
            np.ascontiguousarray(f_pre.transpose(1, 2).float().numpy()),
            np.ascontiguousarray(_o_gate(layer, x).float().numpy()),
            *(np.ascontiguousarray(call[key].transpose(1, 2).float().numpy()) for key in ("key", "value")),
        )
    return arrays


def mlstm_scan(
    layer: Any, call: dict[str, Any], *, name: str, ops: dict[int, list[Op]] | None = None,
    writes: dict[int, list[Op]] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, tuple[torch.Tensor, ...]]:  # fmt: skip
    """Every step's C, n, m and the backend's outputs h (batch, head, time, d_v) rebuilt, checked
    against the backend's own h, and the final (C, n, m). ``ops`` edit C after each step's own
    output has read it (the edited C is carried; :mod:`.edits`); ``writes`` edit the stabilised
    write ``exp(i_t − m_t) k_t ⊗ v_t`` of C before C is formed and read (:func:`_edited_step`)."""
    step = sys.modules[type(layer).__module__].mlstm_recurrent_step_native
    q, k, v, i_pre, f_pre = (call[key] for key in ("query", "key", "value", "igate", "fgate"))
    n, heads, t, dqk = q.shape
    dv = v.shape[-1]
    dtype_state = getattr(torch, layer.config.inference_state_dtype)
    if call.get("c_initial") is not None:
        c, nn_, m = call["c_initial"], call["n_initial"], call["m_initial"]
    else:
        c = torch.zeros((n, heads, dqk, dv), dtype=dtype_state)
        nn_ = torch.zeros((n, heads, dqk), dtype=dtype_state)
        m = torch.zeros((n, heads, 1), dtype=dtype_state)
    cs = torch.empty((n, t, heads, dqk, dv), dtype=torch.float32)
    ns = torch.empty((n, t, heads, dqk), dtype=torch.float32)
    ms = torch.empty((n, t, heads, 1), dtype=torch.float32)
    hs = torch.empty((n, heads, t, dv), dtype=torch.float32)
    for s in range(t):
        before = (c, m)
        h, (c, nn_, m) = step(
            query=q[:, :, s], key=k[:, :, s], value=v[:, :, s], igate=i_pre[:, :, s, None],
            fgate=f_pre[:, :, s, None], cstate=c, nstate=nn_, mstate=m, eps=layer.config.eps,
            dtype_state=dtype_state,
        )  # fmt: skip
        if writes and s in writes:  # the step again, its write edited (n and m as computed)
            qkv = (q[:, :, s], k[:, :, s], v[:, :, s])
            gates = (i_pre[:, :, s, None], f_pre[:, :, s, None])
            h, c = _edited_step(layer, qkv, *gates, before, (nn_, m), writes[s])
        if ops and s in ops:
            c = c.clone()
            edits.apply(c, ops[s])
        cs[:, s], ns[:, s], ms[:, s], hs[:, :, s] = c, nn_, m, h
    what = "the mLSTM outputs rebuilt from every step's state"
    edits.check_unedited(call["h"], hs, ops, layer=name, what=what, time_axis=2, writes=writes)
    return cs, ns, ms, hs, (c, nn_, m)


def _edited_step(
    layer: Any, qkv: tuple[torch.Tensor, ...], i_pre: torch.Tensor, f_pre: torch.Tensor,
    before: tuple[torch.Tensor, torch.Tensor], after: tuple[torch.Tensor, torch.Tensor], ops: list[Op],
) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """One step's output and C with its write edited: ``before`` = (C_{t-1}, m_{t-1}), ``after``
    = (n_t, m_t) as the step computed them (the edit changes neither the normaliser nor the
    stabiliser); ``C_t = f'_t C_{t-1} + edited(i'_t k_t ⊗ v_t)`` and the output read from it with
    ``mlstm_recurrent_step_native``'s operations, in its dtypes."""
    q, k, v = qkv
    (c_old, m_old), (n_new, m_new) = before, after
    dtype_state, dtype_qkv = c_old.dtype, q.dtype
    f_act = torch.exp(torch.nn.functional.logsigmoid(f_pre) + m_old.to(dtype_state) - m_new)
    i_act = torch.exp(i_pre - m_new)
    write = (i_act[:, :, :, None] * (k[:, :, :, None] @ v[:, :, None, :])).to(dtype_state)
    edits.apply(write, ops)
    c = (f_act[:, :, :, None] * c_old.to(dtype_state) + write).to(dtype_state)
    q_scaled = q * (q.shape[-1] ** (-0.5))
    h_num = (q_scaled[:, :, None, :] @ c.to(dtype=dtype_qkv)).squeeze(2).to(dtype=dtype_state)
    qn = (q_scaled[:, :, None, :] @ n_new[:, :, :, None].to(dtype=dtype_qkv)).squeeze(2)
    denom = (torch.maximum(qn.abs(), torch.exp(-m_new)) + layer.config.eps).to(dtype=dtype_state)
    return (h_num / denom).to(dtype=dtype_qkv), c
