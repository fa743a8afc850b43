"""Multi-head Mamba mixers (Zamba v1's ``ZambaMambaMixer``: kind ``mamba_heads``): every step's
state of every head, from what the mixer hands ``mamba_selective_scan`` once per head.

The mixer splits its inner channels into heads, each with its own ``x_proj`` / ``dt_proj``, and
runs the Mamba selective scan once per head (keeping only the last state).
:class:`HeadScan` stands in for ``mamba_selective_scan`` (:mod:`.intercept`): it calls the real
helper, then runs each head's recurrence step by step on the same inputs,

    dt = softplus(dt + b_dt),  s_t = exp(A dt_t) ⊙ s_{t-1} + dt_t B_t x_t,
    y_t = s_t C_t + D x_t,  y_t ⊙ silu(z_t)

keeping every state (head, head_dim, d_state), and checks ``y`` against the helper's own
output. Gates: ``dt`` (per head and channel, after its softplus), ``B`` and ``C`` (per head and
state dim), and the scan's input ``x`` (per head and channel; the write of a step is
``dt_t B_t x_t``, what :func:`rnnlens.decompose` reads and ``Edit(target="write")`` edits,
before the state is formed from it: the step's own output reads the edited state).

Example:
    >>> from types import SimpleNamespace
    >>> state_shape(SimpleNamespace(n_mamba_heads=2, mamba_head_dim=8, ssm_state_size=4))
    (2, 8, 4)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ...core.cells import DirectionArrays
from ...core.edits import Op
from ...errors import UnsupportedLayerError
from . import edits

__all__ = ["HeadScan", "state_shape"]


def state_shape(mixer: Any) -> tuple[int, int, int]:
    return int(mixer.n_mamba_heads), int(mixer.mamba_head_dim), int(mixer.ssm_state_size)


class HeadScan:
    """Stands in for ``mamba_selective_scan`` during one ``forward`` (one call per head)."""

    def __init__(
        self, mixer: Any, name: str, ops: dict[int, list[Op]] | None, gates: bool,
        writes: dict[int, list[Op]] | None = None,
    ) -> None:  # fmt: skip
        self.heads = int(mixer.n_mamba_heads)
        self.name, self.ops, self.gates, self.writes = name, ops, gates, writes
        self.pieces: list[tuple[torch.Tensor, ...]] = []

    def replacements(self, env: dict[str, Any]) -> dict[str, Any]:
        scan = self._wrap(env["mamba_selective_scan"])
        return {"mamba_selective_scan": scan, "mamba_selective_state_update": self._decode}

    def _decode(self, *args: Any, **kwargs: Any) -> Any:
        raise UnsupportedLayerError(
            f"Mixer {self.name!r} was called in decoding mode (continuing a cache): rnnlens traces "
            "whole sequences from their start. Pass the full input_ids in one call (no past cache)."
        )

    def _wrap(self, helper: Any) -> Callable[..., Any]:
        def recorded(
            u: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
            D: Any = None, z: Any = None, delta_bias: Any = None, delta_softplus: bool = False,
            return_last_state: bool = False, **kwargs: Any,
        ) -> Any:  # fmt: skip
            own = helper(
                u,
                dt,
                A,
                B,
                C,
                D=D,
                z=z,
                delta_bias=delta_bias,
                delta_softplus=delta_softplus,
                return_last_state=return_last_state,
                **kwargs,
            )
            head = len(self.pieces)
            y, states, dt_used, last = self._scan(head, u, dt, A, B, C, D, z, delta_bias, delta_softplus)
            own_y = own[0] if return_last_state else own
            what = f"head {head}'s scan output rebuilt from each step's state"
            edits.check_unedited(
                own_y, y, self.ops, layer=self.name, what=what, time_axis=2, writes=self.writes
            )
            b_t, c_t = B.transpose(1, 2).float(), C.transpose(1, 2).float()
            self.pieces.append((states, dt_used.transpose(1, 2), b_t, c_t, u.transpose(1, 2)))
            if not (self.ops or self.writes):
                return own
            y = y.to(own_y.dtype)
            return (y, last) if return_last_state else y

        return recorded

    def _scan(
        self, head: int, u: Any, dt: Any, A: Any, B: Any, C: Any, D: Any, z: Any, bias: Any, softplus: bool
    ) -> Any:
        if bias is not None:
            dt = dt + bias.to(dt.dtype)[..., None]
        if softplus:
            dt = F.softplus(dt)
        n, d, t = u.shape
        B, C = B.transpose(1, 2).float(), C.transpose(1, 2).float()  # (n, t, d_state)
        d_a = torch.exp(A[None, :, None, :] * dt[:, :, :, None]).float()  # (n, d, t, d_state)
        d_bu = dt[:, :, :, None].float() * B[:, None] * u[:, :, :, None].float()
        s = torch.zeros((n, d, A.shape[-1]), dtype=torch.float32, device=u.device)
        states = torch.empty((n, t, d, A.shape[-1]), dtype=torch.float32, device=u.device)
        y = torch.empty((n, d, t), dtype=torch.float32, device=u.device)
        for i in range(t):
            w = d_bu[:, :, i]
            if self.writes and i in self.writes:  # step i's write, before the state is formed
                w = self._edited(head, w, self.writes[i])
            s = d_a[:, :, i] * s + w
            y[:, :, i] = torch.matmul(s.to(u.dtype), C[:, i, :, None].to(u.dtype))[..., 0]
            if self.ops and i in self.ops:
                s = self._edited(head, s, self.ops[i])
            states[:, i] = s
        if D is not None:
            y = y + u * D[None, :, None]
        if z is not None:
            y = y * F.silu(z)
        return y, states, dt, s

    def _edited(self, head: int, s: torch.Tensor, ops: list[Op]) -> torch.Tensor:
        """``s`` (head ``head``'s state or write) edited: the edit sees every head's; this one's kept."""
        full = torch.zeros((s.shape[0], self.heads, *s.shape[1:]), dtype=s.dtype, device=s.device)
        full[:, head] = s
        edits.apply(full, ops)
        return full[:, head].clone()

    def arrays(self, out: torch.Tensor) -> DirectionArrays:
        """``out`` (the mixer's output) as ``h``; states (sample, time, head, head_dim, d_state)."""
        if len(self.pieces) != self.heads:
            raise UnsupportedLayerError(
                f"Mixer {self.name!r} ran {len(self.pieces)} head scans for {self.heads} heads; rnnlens "
                "traces one scan per head (one whole sequence)."
            )
        arrays = DirectionArrays(
            h=out.detach().float().cpu().numpy(),
            state=torch.stack([p[0] for p in self.pieces], dim=2).cpu().numpy(),
        )
        if self.gates:
            arrays.gates = tuple(
                np.ascontiguousarray(torch.stack([p[i] for p in self.pieces], dim=2).float().cpu().numpy())
                for i in (1, 2, 3, 4)
            )
        return arrays
