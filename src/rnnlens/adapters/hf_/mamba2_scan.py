"""Mamba2's states from the forward pass itself: the mixer's chunked scan replaced by rnnlens'
step-by-step scan, whose readout is the mixer's scan output.

transformers' Mamba2 mixers (Mamba2, Bamba, NemotronH, Zamba2, Falcon-H1, GraniteMoeHybrid) hand
their scan to ``mamba2_scan_forward(module, hidden_states, B, C, dt, cache)``, which runs it
chunk by chunk (SSD) and keeps states only at chunk boundaries. :class:`Scan2Recorder` stands in
for it in a copy of the mixer's ``forward`` (:mod:`.intercept`: the class and the modeling file
are untouched). From the helper's inputs it computes every step's state,
``s_t = exp(dt_t A) s_{t-1} + dt_t x_t ⊗ B_t``, step by step in one buffer (one ``addcmul`` a
step: the decode step's multiply and add, fused where the CPU fuses them, so within a
rounding of it), and returns the readout
``C_t · s_t + D x_t`` of every step as the scan's output — so the chunked scan does not run
beside rnnlens' (it was half the cost of the plain forward of the benchmark's model).

Checked (:mod:`.mamba2_check`): the helper itself runs on the first :data:`CHECK_STEPS` steps
(no cache; as one chunk) and its output must match the readout there (a
:class:`~rnnlens.errors.ParityError` otherwise; the chunked and the step-by-step sums round
differently: float32 tolerance) — at once, or, given a :class:`~.mamba2_check.Checks`, with
the forward pass's other mixers once it has run (one helper call for them all). The
recurrence is the same at every step and the helper sees no mask (the mixer zeroes padded
inputs before it), as for Mamba (:mod:`.mamba_scan`). The mixer's output is therefore its own
within float32 rounding (summed step by step, not chunk by chunk), and the cache is left as
the helper leaves it (the last state). Where the helper would do something else (continuing a
cached state, keeping intermediate states, packed sequences) it runs as it is and
:attr:`Scan2Recorder.used` stays False (the caller then rebuilds the states the usual way).

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
from .intercept import HelperRecorder
from .mamba2_check import CHECK_STEPS, Checks, Pending, check

__all__ = ["CHECK_STEPS", "Scan2Recorder", "available"]


def _from_zero(module: Any, cache: Any, kwargs: dict[str, Any]) -> bool:
    """Whether the helper would scan the whole sequence from a zero state with nothing
    position-dependent (no cached state, no intermediate states kept, no packed sequences):
    then its output at every step is the readout of rnnlens' recurrence."""
    if any(kwargs.get(k) is not None for k in ("seq_idx", "cu_seqlens")):
        return False
    if cache is None:
        return True
    if cache.get_recurrent_states_to_keep(module.layer_idx):
        return False
    return cache.get_recurrent_state(module.layer_idx, state_idx=0) is None


class Scan2Recorder(HelperRecorder):
    """Stands in for ``mamba2_scan_forward`` in one call of one mixer (see the module doc)."""

    helper = "mamba2_scan_forward"

    def __init__(self, mixer: Any, name: str, *, gates: bool, checks: Checks | None = None):
        super().__init__(mixer, name, gates=gates)
        self.checks = checks

    def __call__(self, module: Any, hidden_states: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                 dt: torch.Tensor, cache: Any, **kwargs: Any) -> torch.Tensor:  # fmt: skip
        if module is not self.mixer or hidden_states.shape[1] == 1 or not _from_zero(module, cache, kwargs):
            return self._real(module, hidden_states, B, C, dt, cache, **kwargs)
        # the mixer hands over views of its convolution's (channel, time) output: one contiguous
        # copy each, or every product below reads them across time (about twice as slow)
        hs, B, C = hidden_states.contiguous(), B.contiguous(), C.contiguous()
        states, y = self._states(hs, B, C, dt)
        k = min(CHECK_STEPS, hs.shape[1])
        h0, b0, c0, dt0, y0 = (v[:, :k].clone() for v in (hs, B, C, dt, y))  # the mixer may reuse y
        item = Pending(self._real, module, self.name, h0, b0, c0, dt0, y0, kwargs)
        if self.checks is None:
            check([item])
        else:  # checked with the forward pass's other mixers once it has run (mamba2_check)
            self.checks.add(item)
        if cache is not None:  # as the helper leaves it: the last state
            cache.update_recurrent_state(states[:, -1].clone(), module.layer_idx)
        self.states, self.used = states, True
        return y

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
        # the writes, then carried step by step in place (on CPU faster than carrying blocks of
        # steps with batched products); in a reused buffer (rnnlens.core.buffers): a fresh one's
        # first-touch page faults cost about as much as the scan. The heads of a group are one
        # axis of the buffer, so B and C broadcast over them (no per-head copies)
        shape = (n, t, heads, p, d_state)
        cpu = x.device.type == "cpu"
        states = torch.from_numpy(empty(shape, np.float32)) if cpu else x.new_empty(shape)
        by_group = (n, t, groups, heads // groups, p)
        torch.mul((dt[..., None] * x).view(by_group)[..., None], Bg[:, :, :, None, None, :],
                  out=states.view(*by_group, d_state))  # fmt: skip
        d_a = torch.exp(dt * A)[..., None, None].unbind(1)
        steps = states.unbind(1)  # the views once (indexing costs as much as a step's arithmetic)
        for k in range(1, t):  # one op a step (a multiply, then an add, cost 1.6x as much)
            steps[k].addcmul_(steps[k - 1], d_a[k])
        # C_t · s_t, a group's heads and head_dim as one axis (einsum: a few large products)
        read = torch.einsum("btgqn,btgn->btgq", states.view(n, t, groups, -1, d_state), Cg)
        y = read.reshape(n, t, heads, p) + m.D.float()[None, None, :, None] * x
        if self.gates:
            self.parts = {"dt": dt, "B": Bg, "C": Cg, "x": x}
        return states, y.reshape(n, t, heads * p)

    def gate_arrays(self) -> tuple[np.ndarray, ...]:
        """``dt``, ``B``, ``C``, ``x`` (sample, time, ...) as float32 NumPy."""
        return tuple(np.ascontiguousarray(self.parts[g].numpy()) for g in ("dt", "B", "C", "x"))


available = Scan2Recorder.available
