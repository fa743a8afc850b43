"""The check of rnnlens' Mamba2 readout against the modeling file's own chunked scan, for the
mixers of one forward pass in as few calls of the scan helper as their shapes allow.

:class:`~.mamba2_scan.Scan2Recorder` hands each mixer the readout ``C_t · s_t + D x_t`` of
rnnlens' step-by-step states in place of the chunked scan's output. The check runs the real
helper (``mamba2_scan_forward``, no cache) on the first :data:`CHECK_STEPS` steps of what the
mixer received, as one chunk, and the readout must match it there (a
:class:`~rnnlens.errors.ParityError` otherwise; the chunked and the step-by-step sums round
differently: float32 tolerance). That call is some forty small tensor operations whatever the
steps (0.5 ms a layer on the benchmark's CPU, 15 % of a small mixer's forward), so
:class:`Checks` keeps each mixer's first steps (copies: a few kB) until the forward pass has run
and then checks the mixers that share a helper, a head geometry and a ``time_step_limit`` in
one call: their heads side by side, as one mixer whose ``A_log``, ``D`` and ``dt_bias`` are
every layer's in turn (:class:`_Heads`). The helper treats the heads independently (a head reads
its own ``A``, ``D``, ``dt`` and its group's ``B``, ``C``), so each mixer's part of that output
is what the helper gives that mixer alone; each part is compared with that mixer's readout and
a mismatch names the mixer (the benchmark's four layers: 0.9 ms in one call, 2.3 ms one by
one). The stand-in has only the attributes the six modeling files' helpers
read (:data:`READS`): a helper that reads anything else is run mixer by mixer on the mixer
itself (:class:`_OneChunk`).

Example:
    >>> import torch
    >>> from transformers import Mamba2Config, Mamba2ForCausalLM
    >>> from rnnlens.adapters.hf_.intercept import forward_with
    >>> from rnnlens.adapters.hf_.mamba2_scan import Scan2Recorder
    >>> cfg = Mamba2Config(vocab_size=50, hidden_size=16, state_size=8, num_heads=4, head_dim=8,
    ...                    n_groups=2, num_hidden_layers=2, expand=2, chunk_size=4)
    >>> layers = Mamba2ForCausalLM(cfg).eval().backbone.layers
    >>> checks, x = Checks(), torch.randn(2, 5, 16)
    >>> with torch.no_grad():
    ...     for layer in layers:
    ...         rec = Scan2Recorder(layer.mixer, "mixer", gates=False, checks=checks)
    ...         x = forward_with(layer.mixer, rec.replacements(type(layer.mixer).forward))(layer.mixer, x)
    ...     (len(checks.pending), checks.run(), len(checks.pending))
    (2, 1, 0)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from ...core.cells import check_parity
from ...errors import ParityError

__all__ = ["CHECK_STEPS", "READS", "Checks", "Pending", "check"]

#: leading steps on which the modeling file's own (chunked) scan checks rnnlens' readout
CHECK_STEPS = 8

#: the mixer attributes ``mamba2_scan_forward`` reads (Mamba2, Bamba, NemotronH, Zamba2,
#: Falcon-H1, GraniteMoeHybrid in transformers 5)
READS = (
    "A_log", "D", "dt_bias", "time_step_limit", "chunk_size", "num_heads", "head_dim", "n_groups",
    "ssm_state_size", "intermediate_size", "layer_idx",
)  # fmt: skip


@dataclass
class Pending:
    """One mixer's check: the helper's inputs on the first steps and rnnlens' readout there."""

    helper: Callable[..., torch.Tensor]
    mixer: Any
    name: str
    hs: torch.Tensor
    B: torch.Tensor
    C: torch.Tensor
    dt: torch.Tensor
    readout: torch.Tensor
    kwargs: dict[str, Any] = field(default_factory=dict)


class _OneChunk:
    """The mixer as the check's helper call sees it: its own attributes, but ``chunk_size`` the
    checked steps, so the SSD scan runs them as one chunk instead of padding them to the mixer's
    chunk (the same function, chunked differently: 0.45 instead of 1.0 ms a layer at chunk 32,
    and far less at the 256 of released Mamba2 models). The mixer is not touched."""

    def __init__(self, mixer: Any, steps: int):
        self._mixer, self.chunk_size = mixer, steps

    def __getattr__(self, name: str) -> Any:
        return getattr(self._mixer, name)


class _Heads:
    """Mixers of one geometry as one mixer with all their heads, for one call of the helper:
    only :data:`READS` (anything else the helper reads is an ``AttributeError``)."""

    __slots__ = READS

    def __init__(self, mixers: list[Any], steps: int, width: int):
        first = mixers[0]
        self.A_log = torch.cat([m.A_log for m in mixers])
        self.D = torch.cat([m.D for m in mixers])
        self.dt_bias = torch.cat([m.dt_bias for m in mixers])
        self.time_step_limit = first.time_step_limit
        self.chunk_size = steps
        self.num_heads = sum(int(m.num_heads) for m in mixers)
        self.n_groups = sum(int(m.n_groups) for m in mixers)
        self.head_dim, self.ssm_state_size = first.head_dim, first.ssm_state_size
        self.intermediate_size, self.layer_idx = width, None


def _key(item: Pending) -> tuple[Any, ...] | None:
    """What mixers must share to be checked in one call (None: checked alone)."""
    m = item.mixer
    if any(v is not None for v in item.kwargs.values()) or not hasattr(m, "time_step_limit"):
        return None
    heads = int(m.num_heads)
    if any(getattr(m, a).shape != (heads,) for a in ("A_log", "D", "dt_bias")):
        return None
    return (
        item.helper, type(m), int(m.head_dim), int(m.ssm_state_size), heads // int(m.n_groups),
        tuple(m.time_step_limit), tuple(sorted(item.kwargs)), item.hs.shape[:2], item.hs.device,
        *(t.dtype for t in (item.hs, item.B, item.C, item.dt, m.A_log, m.D, m.dt_bias)),
    )  # fmt: skip


def _compare(item: Pending, own: torch.Tensor) -> None:
    k = item.readout.shape[1]
    if own.dtype != item.readout.dtype:
        raise ParityError(
            f"Layer {item.name!r}: the mixer's own scan returns {own.dtype}, rnnlens' readout of every "
            f"step's state {item.readout.dtype}; rnnlens cannot stand in for this scan helper."
        )
    check_parity(
        own.float().numpy(), item.readout.float().numpy(), None, layer=item.name,
        what=f"the readout of every step's state against the mixer's own scan on the first {k} steps",
    )  # fmt: skip


def _alone(item: Pending) -> None:
    k = item.hs.shape[1]
    own = item.helper(_OneChunk(item.mixer, k), item.hs, item.B, item.C, item.dt, None, **item.kwargs)
    _compare(item, own)


def _together(items: list[Pending]) -> bool:
    """One helper call for ``items`` (one :func:`_key`); False where the helper reads more."""
    widths = [i.readout.shape[-1] for i in items]
    first = items[0]
    heads = _Heads([i.mixer for i in items], first.hs.shape[1], sum(widths))
    inputs = (torch.cat([getattr(i, a) for i in items], dim=-1) for a in ("hs", "B", "C", "dt"))
    try:
        own = first.helper(heads, *inputs, None, **first.kwargs)
    except AttributeError:
        return False
    for item, part in zip(items, own.split(widths, dim=-1), strict=True):
        _compare(item, part)
    return True


def check(items: list[Pending]) -> int:
    """Check ``items``; the number of helper calls it took."""
    groups: dict[Any, list[Pending]] = {}
    for n, item in enumerate(items):
        groups.setdefault(_key(item) or n, []).append(item)
    calls = 0
    with torch.no_grad():  # the stacked parameters are a check's, not the model's
        for group in groups.values():
            if len(group) > 1 and _together(group):
                calls += 1
                continue
            for item in group:
                _alone(item)
                calls += 1
    return calls


class Checks:
    """The checks of one forward pass, run together when it has run (see the module doc)."""

    def __init__(self) -> None:
        self.pending: list[Pending] = []

    def add(self, item: Pending) -> None:
        self.pending.append(item)

    def run(self) -> int:
        """Check every pending mixer (:class:`~rnnlens.errors.ParityError` for the first that
        fails); the number of helper calls it took."""
        items, self.pending = self.pending, []
        return check(items)
