"""Mamba2's states from the forward pass itself: every step's state computed from what the
mixer's scan helper receives, while the helper computes the mixer's output as it always does.

transformers' Mamba2 mixers (Mamba2, Bamba, NemotronH, Zamba2, Falcon-H1, GraniteMoeHybrid) hand
their scan to ``mamba2_scan_forward(module, hidden_states, B, C, dt, cache)``, which runs it
chunk by chunk (SSD) and keeps states only at chunk boundaries. :class:`Scan2Recorder` stands in
for it in a copy of the mixer's ``forward`` (:mod:`.intercept`): it calls the real helper (the
mixer's output, and its cache, are the model's own) and computes every step's state from the
helper's inputs, ``s_t = exp(dt_t A) s_{t-1} + dt_t x_t ⊗ B_t`` step by step in one buffer,
without re-running the projections. The readout ``C_t · s_t + D x_t`` of
every step is checked against the helper's output (a
:class:`~rnnlens.errors.ParityError` otherwise; the chunked and the step-by-step sums round
differently: float32 tolerance).

Example:
    >>> import torch
    >>> from transformers import Mamba2Config, Mamba2ForCausalLM
    >>> from rnnlens.adapters.hf_.intercept import forward_with
    >>> cfg = Mamba2Config(vocab_size=50, hidden_size=16, state_size=8, num_heads=4, head_dim=8,
    ...                    n_groups=2, num_hidden_layers=1, expand=2, chunk_size=4)
    >>> mixer = Mamba2ForCausalLM(cfg).eval().backbone.layers[0].mixer
    >>> rec = Scan2Recorder(mixer, "mixer", gates=True)
    >>> with torch.no_grad():
    ...     out = forward_with(mixer, rec.replacements(type(mixer).forward))(mixer, torch.randn(2, 5, 16))
    >>> rec.used, tuple(rec.states.shape)
    (True, (2, 5, 4, 8, 8))
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ...core.buffers import empty
from ...core.cells import check_parity
from .intercept import HelperRecorder

__all__ = ["Scan2Recorder", "available"]


class Scan2Recorder(HelperRecorder):
    """Stands in for ``mamba2_scan_forward`` in one call of one mixer (see the module doc)."""

    helper = "mamba2_scan_forward"

    def __call__(self, module: Any, hidden_states: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                 dt: torch.Tensor, cache: Any, **kwargs: Any) -> torch.Tensor:  # fmt: skip
        out = self._real(module, hidden_states, B, C, dt, cache, **kwargs)
        keep = cache.get_recurrent_states_to_keep(module.layer_idx) if cache is not None else 0
        if module is not self.mixer or keep or hidden_states.shape[1] == 1:
            return out
        states, y = self._states(hidden_states, B, C, dt)
        check_parity(
            out.float().numpy(), y.numpy(), None, layer=self.name,
            what="the readout of every step's state against the mixer's own scan output",
        )  # fmt: skip
        self.states, self.used = states, True
        return out

    def _states(self, hs: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                dt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
        """Every state (n, T, head, head_dim, d_state) and the readout (n, T, head × head_dim)."""
        m = self.mixer
        n, t, _ = hs.shape
        heads, p, d_state, groups = m.num_heads, m.head_dim, m.ssm_state_size, m.n_groups
        limit = getattr(m, "time_step_limit", (0.0, float("inf")))
        dt = torch.clamp(F.softplus(dt + m.dt_bias.to(dt.dtype)), min=limit[0], max=limit[1]).float()
        A = -torch.exp(m.A_log.float())
        x = hs.float().reshape(n, t, heads, p)
        Bg, Cg = B.float().reshape(n, t, groups, d_state), C.float().reshape(n, t, groups, d_state)
        Bh = Bg.repeat_interleave(heads // groups, dim=2)
        Ch = Cg.repeat_interleave(heads // groups, dim=2)
        # the writes, then carried step by step in place (on CPU faster than carrying blocks of
        # steps with batched products); in a reused buffer (rnnlens.core.buffers): a fresh one's
        # first-touch page faults cost about as much as the scan
        shape = (n, t, heads, p, d_state)
        cpu = x.device.type == "cpu"
        states = torch.from_numpy(empty(shape, np.float32)) if cpu else x.new_empty(shape)
        torch.mul((dt[..., None] * x)[..., None], Bh[:, :, :, None, :], out=states)
        d_a = torch.exp(dt * A)[..., None, None].unbind(1)
        steps = states.unbind(1)  # the views once (indexing costs as much as a step's arithmetic)
        tmp = torch.empty_like(steps[0])
        for k in range(1, t):  # a multiply, then an add: rounded as the decode and the edit loop
            torch.mul(steps[k - 1], d_a[k], out=tmp)
            steps[k].add_(tmp)
        y = torch.matmul(states, Ch[..., None])[..., 0] + m.D.float()[None, None, :, None] * x
        if self.gates:
            self.parts = {"dt": dt, "B": Bg, "C": Cg, "x": x}
        return states, y.reshape(n, t, heads * p)

    def gate_arrays(self) -> tuple[np.ndarray, ...]:
        """``dt``, ``B``, ``C``, ``x`` (sample, time, ...) as float32 NumPy."""
        return tuple(np.ascontiguousarray(self.parts[g].numpy()) for g in ("dt", "B", "C", "x"))


available = Scan2Recorder.available
