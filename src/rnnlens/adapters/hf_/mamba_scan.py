"""Mamba's states from the forward pass itself: the mixer's scan helper replaced by rnnlens' own.

transformers' ``MambaMixer.forward`` (also FalconMamba's and Jamba's) hands the selective scan
to one function of its modeling file, ``mamba_scan_forward(module, hidden_states, time_step, B,
C, gate, cache)``. :class:`ScanRecorder` stands in for it in a copy of the mixer's ``forward``
(:mod:`.intercept`: the class and the modeling file are untouched): it runs the same
recurrence with the same float operations in the same order (the helper's sequential path,
``s_t = exp(A dt_t) ⊙ s_{t-1} + dt_t B_t x_t``), writing every step's state into one
preallocated buffer instead of keeping only the last, and returns the same output — so the
states come out of the model's one forward pass, without a second scan.

Checked: the helper itself is run on the first :data:`CHECK_STEPS` steps (no cache) and its
output must equal the recorder's there (the recurrence is the same at every step, and the
helper sees no mask); the cache is updated as the helper updates it. Where the helper would
do something else (a cache asking for intermediate states), the helper runs as it is and
:attr:`ScanRecorder.used` stays False (the caller then rebuilds the states the usual way).

Example:
    >>> import torch
    >>> from transformers import MambaConfig, MambaForCausalLM
    >>> from rnnlens.adapters.hf_.intercept import forward_with
    >>> model = MambaForCausalLM(MambaConfig(vocab_size=50, hidden_size=8, state_size=4,
    ...                                      num_hidden_layers=1, expand=2)).eval()
    >>> mixer = model.backbone.layers[0].mixer
    >>> rec = ScanRecorder(mixer, "mixer", gates=True)
    >>> with torch.no_grad():
    ...     x = torch.randn(2, 5, 8)
    ...     out = forward_with(mixer, rec.replacements(type(mixer).forward))(mixer, x)
    ...     own = mixer(x)
    >>> rec.used, rec.states.shape, bool(torch.equal(out, own))
    (True, torch.Size([2, 5, 16, 4]), True)
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ...core.cells import check_parity
from .intercept import HelperRecorder

__all__ = ["CHECK_STEPS", "ScanRecorder", "available"]

#: leading steps on which the modeling file's own scan checks rnnlens' scan
CHECK_STEPS = 8


class ScanRecorder(HelperRecorder):
    """Stands in for ``mamba_scan_forward`` in one call of one mixer (see the module doc)."""

    helper = "mamba_scan_forward"

    def __call__(self, module: Any, hidden_states: torch.Tensor, time_step: torch.Tensor,
                 B: torch.Tensor, C: torch.Tensor, gate: torch.Tensor, cache: Any,
                 **kwargs: Any) -> torch.Tensor:  # fmt: skip
        keep = cache.get_recurrent_states_to_keep(module.layer_idx) if cache is not None else 0
        if module is not self.mixer or keep or hidden_states.shape[-1] == 1:
            return self._real(module, hidden_states, time_step, B, C, gate, cache, **kwargs)
        out, states, last = self._scan(hidden_states, time_step, B, C, gate)
        k = min(CHECK_STEPS, hidden_states.shape[-1])
        own = self._real(module, hidden_states[..., :k], time_step[..., :k], B[:, :k], C[:, :k],
                         gate[..., :k], None, **kwargs)  # fmt: skip
        check_parity(
            own.float().transpose(1, 2).numpy(), out[..., :k].float().transpose(1, 2).numpy(), None,
            layer=self.name, what=f"rnnlens' scan against the mixer's own on the first {k} steps",
        )  # fmt: skip
        if cache is not None:  # as the helper leaves it: the last state
            cache.update_recurrent_state(last, module.layer_idx)
        self.states, self.used = states, True
        return out

    def _scan(self, hs: torch.Tensor, time_step: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
              gate: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
        """The helper's sequential path (``mamba_selective_scan``), every state kept, laid out
        (sample, time, d_inner, d_state); the same elementwise operations on the same values."""
        m = self.mixer
        dtype = hs.dtype
        A = -torch.exp(m.A_log.float())
        dt = time_step
        if m.dt_proj.bias is not None:
            dt = dt + m.dt_proj.bias.float().to(dt.dtype)[..., None]
        dt = F.softplus(dt).transpose(1, 2).contiguous()  # (b, t, d)
        u = hs.transpose(1, 2)  # (b, t, d)
        d_a = torch.exp(A[None, None] * dt[..., None])  # (b, t, d, n)
        states = dt[..., None] * B[:, :, None, :].float()
        states.mul_(u[..., None].float())  # deltaB_u: the write of every step
        tmp = torch.empty_like(states[:, 0])
        steps, decays = states.unbind(1), d_a.unbind(1)  # the views once: indexing costs as much
        for i in range(1, len(steps)):  # a multiply, then an add, as the helper rounds them
            torch.mul(decays[i], steps[i - 1], out=tmp)
            steps[i].add_(tmp)
        y = torch.matmul(states.to(dtype), C[..., None].to(dtype))[..., 0].transpose(1, 2)  # (b, d, t)
        y = y + hs * m.D.float()[None, :, None]
        y = (y * F.silu(gate)).contiguous()
        if self.gates:
            self.parts = {"dt": dt, "B": B, "C": C, "x": u}
        return y, states, states[:, -1].clone()

    def gate_arrays(self) -> tuple[np.ndarray, ...]:
        """``dt``, ``B``, ``C``, ``x`` (sample, time, ...) as float32 NumPy."""
        return tuple(np.ascontiguousarray(self.parts[g].float().numpy()) for g in ("dt", "B", "C", "x"))


available = ScanRecorder.available
