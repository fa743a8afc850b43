"""Delta-rule mixers: gated delta-nets (Qwen3-Next, Qwen3.5, OLMo-Hybrid, ...: kind
``gated_deltanet``) and Kimi delta attention (Kimi Linear, Bailing, GLM-5-Next, ...: kind
``kimi_delta``) — every step's state, from what the mixer hands its scan helper.

Each of these mixers calls one helper of its modeling file for the recurrence
(``torch_chunk_gated_delta_rule`` / ``chunk_kimi_delta_attention``, chunk by chunk, keeping only
the last state), whatever its projections (fused or split, beta scaled to [0, 2] or not).
:class:`DeltaScan` stands in for that helper (:mod:`.intercept`): it calls the real one, then
runs the rule step by step on the same queries, keys, values and gates,

    S_t = d_t ⊙ S_{t-1} + k_t ⊗ β_t (v_t - k_tᵀ (d_t ⊙ S_{t-1})),   o_t = S_tᵀ q_t / sqrt(d_k)

(per value head; ``q``, ``k`` L2-normalised with the modeling file's own ``l2norm`` when the
mixer asks for it; ``d_t = exp(g_t)``, one number per head for a gated delta-net, one per key
channel for Kimi), keeping every ``S_t`` (head, d_k, d_v), and checks ``o`` against the helper's
own output. Gates: ``beta`` (the write strength, as the helper gets it), ``g`` (the log
decay: per head, or per head and key channel), ``k`` (the keys the rule uses, L2-normalised if
the mixer asks for it, per key head) and ``v`` (the values, per value head): the write of a step
is ``β_t k_t ⊗ v_t`` (:mod:`rnnlens.analysis.decompose_delta`), what ``Edit(target="write")``
edits: ``S_t = (I − β_t k_t k_tᵀ) diag(d_t) S_{t-1} + edited write``, read by step t's output
and carried on through the rule.

Example:
    >>> import torch
    >>> q = k = torch.nn.functional.normalize(torch.ones(1, 2, 1, 2), dim=-1)
    >>> v, g, beta = torch.ones(1, 2, 1, 2), torch.zeros(1, 2, 1), torch.ones(1, 2, 1)
    >>> out, states, _, _ = scan(q, k, v, g, beta, None, None, 0)
    >>> states.shape, round(float(states[0, 1, 0, 0, 0]), 4)  # v written once, then kept
    (torch.Size([1, 2, 1, 2, 2]), 0.7071)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from ...core.cells import DirectionArrays
from ...core.edits import Op
from ...errors import UnsupportedLayerError
from . import edits

__all__ = ["HELPERS", "DeltaScan", "scan", "state_shape"]

#: kind -> the scan helpers of the modeling file its mixers call
HELPERS = {
    "gated_deltanet": ("torch_chunk_gated_delta_rule", "torch_recurrent_gated_delta_rule"),
    "kimi_delta": ("chunk_kimi_delta_attention", "recurrent_kimi_delta_attention"),
}


def state_shape(mixer: Any) -> tuple[int, int, int]:
    """(value head, d_k, d_v), from the mixer's own attributes (their names vary by family)."""

    def first(*names: str) -> int:
        return int(next(getattr(mixer, a) for a in names if hasattr(mixer, a)))

    return first("num_v_heads", "num_heads"), first("head_k_dim", "head_dim"), first("head_v_dim", "head_dim")


def scan(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, beta: torch.Tensor,
    s0: torch.Tensor | None, ops: dict[int, list[Op]] | None, t0: int,
    l2norm: Callable[..., torch.Tensor] | None = None, scale: float | None = None,
    writes: dict[int, list[Op]] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
    """The rule step by step: outputs (batch, time, head, d_v), every state (batch, time, head,
    d_k, d_v), the last, and the keys it used (batch, time, key head, d_k; L2-normalised if
    asked). ``q``, ``k`` (batch, time, key head, d_k), ``v`` (…, value head,
    d_v), ``g`` (…, head) or (…, head, d_k), ``beta`` (…, head); ``ops`` by absolute step,
    this call starting at ``t0`` (edits after a step's output read its state, carried);
    ``writes`` by absolute step: edits of the write ``β_t k_t v_tᵀ`` (the term not read from
    ``S_{t-1}``), before the state is formed and read."""
    q, k, v, beta, g = (x.transpose(1, 2).to(torch.float32) for x in (q, k, v, beta, g))
    if l2norm is not None:  # per key row: the same before or after the grouping below
        q, k = l2norm(q, dim=-1, eps=1e-6), l2norm(k, dim=-1, eps=1e-6)
    keys = k.transpose(1, 2)  # the keys the rule writes with, per key head
    heads = v.shape[1]
    if k.shape[1] != heads:  # grouped: each key head serves consecutive value heads
        q = q.repeat_interleave(heads // k.shape[1], dim=1)
        k = k.repeat_interleave(heads // k.shape[1], dim=1)
    q = q * (scale if scale is not None else 1 / (q.shape[-1] ** 0.5))
    n, _, t, d_k = k.shape
    s = torch.zeros((n, heads, d_k, v.shape[-1]), device=v.device) if s0 is None else s0.float().clone()
    states = torch.empty((n, t, heads, d_k, v.shape[-1]), dtype=torch.float32, device=v.device)
    out = torch.empty_like(v)
    per_channel = g.dim() == 4
    for i in range(t):
        decay = g[:, :, i].exp()
        s = s * (decay[..., None] if per_channel else decay[..., None, None])
        kv = (s * k[:, :, i, :, None]).sum(dim=-2)
        delta = (v[:, :, i] - kv) * beta[:, :, i, None]
        s = s + k[:, :, i, :, None] * delta[:, :, None, :]
        if writes and t0 + i in writes:  # the write β k vᵀ replaced by its edit: add the change
            w = k[:, :, i, :, None] * (v[:, :, i] * beta[:, :, i, None])[:, :, None, :]
            edited = w.clone()
            edits.apply(edited, writes[t0 + i])
            s = s + (edited - w)
        out[:, :, i] = (s * q[:, :, i, :, None]).sum(dim=-2)  # read before an edit of this step
        if ops and t0 + i in ops:
            s = s.clone()
            edits.apply(s, ops[t0 + i])
        states[:, i] = s
    return out.transpose(1, 2), states, s, keys


class DeltaScan:
    """Stands in for a delta-rule mixer's scan helpers during one ``forward`` (every call of
    them in that forward: a chunked prefill may be followed by step-wise calls)."""

    def __init__(
        self, kind: str, name: str, ops: dict[int, list[Op]] | None, gates: bool,
        writes: dict[int, list[Op]] | None = None,
    ) -> None:  # fmt: skip
        self.kind, self.name, self.ops, self.gates, self.writes = kind, name, ops, gates, writes
        self.t = 0
        self.carry: torch.Tensor | None = None
        self.pieces: list[tuple[torch.Tensor, ...]] = []

    def replacements(self, env: dict[str, Any]) -> dict[str, Any]:
        """The helpers of the modeling file ``env`` (its globals) wrapped; its ``l2norm`` used."""
        return {h: self._wrap(env[h], env.get("l2norm")) for h in HELPERS[self.kind] if h in env}

    def _wrap(self, helper: Any, l2: Any) -> Callable[..., Any]:
        def recorded(*args: Any, **kwargs: Any) -> Any:
            # transformers passes q, k, v by position and the rest by name (chunk and step
            # helpers differ in their later positions)
            if len(args) > 5:
                raise UnsupportedLayerError(
                    f"Mixer {self.name!r} called its scan helper with {len(args)} positional arguments; "
                    "rnnlens knows calls with query, key, value (g, beta) by position, the rest by name."
                )
            a = {**dict(zip(("query", "key", "value", "g", "beta"), args)), **kwargs}
            extra = a
            if a.get("initial_state") is not None and self.carry is None:
                raise UnsupportedLayerError(
                    f"Mixer {self.name!r} was called in decoding mode (continuing a cache): rnnlens "
                    "traces whole sequences from their start. Pass the full input_ids in one call "
                    "(no past cache)."
                )
            own, own_state = helper(*args, **kwargs)
            use_l2 = a.get("use_qk_l2norm_in_kernel", extra.get("use_qk_l2norm_in_kernel", False))
            out, states, last, keys = scan(
                a["query"],
                a["key"],
                a["value"],
                a["g"],
                a["beta"],
                self.carry,
                self.ops,
                self.t,
                l2norm=l2 if use_l2 else None,
                scale=a.get("scale", extra.get("scale")),
                writes=self.writes,
            )
            shifted = {k - self.t: v for k, v in (self.ops or {}).items() if k >= self.t}
            shifted_writes = {k - self.t: v for k, v in (self.writes or {}).items() if k >= self.t}
            what = "the delta-rule outputs rebuilt from each step's state"
            edits.check_unedited(own, out, shifted or None, layer=self.name, what=what, writes=shifted_writes)
            gates = (a["beta"], a["g"], keys, a["value"])
            self.pieces.append((states, *(x.detach().float() for x in gates)))
            self.t += out.shape[1]
            self.carry = last
            if not (self.ops or self.writes):
                return own, own_state
            final = last if own_state is not None else None
            return out.to(own.dtype), final

        return recorded

    def arrays(self, out: torch.Tensor) -> DirectionArrays:
        """The mixer's output ``out`` as ``h``, every state, the gates (if asked)."""
        states = torch.cat([p[0] for p in self.pieces], dim=1)
        arrays = DirectionArrays(h=out.detach().float().cpu().numpy(), state=states.cpu().numpy())
        if self.gates:
            arrays.gates = tuple(
                np.ascontiguousarray(torch.cat([p[i] for p in self.pieces], dim=1).cpu().numpy())
                for i in (1, 2, 3, 4)
            )
        return arrays
